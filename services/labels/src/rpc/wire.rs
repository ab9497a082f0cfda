//! Wire messages of the labels service built from stored rows and the directory, and the
//! request parts only this service parses (countries, addresses, coordinates). Everything
//! generic (money, ids, vocabularies, timestamps) goes through `returns_proto::convert`.

use returns_domain::dispute::Role;
use returns_proto::common::v1 as common;
use returns_proto::convert::{FieldError, WireEnum, micros_to_proto, required_text};
use returns_proto::labels::v1 as pb;
use sqlx::AnyConnection;

use crate::directory::{self, Carrier, Directory, TrackingScheme};
use crate::store;
use crate::store::authorisations::AuthorisationRow;
use crate::store::labels::LabelRow;
use crate::store::locations::LocationRow;
use crate::store::pickups::PickupRow;
use crate::store::tracking::EventRow;
use returns_platform::ApiError;

/// The longest name, street, city or id text a request may carry here.
pub const MAX_TEXT: usize = 200;

/// An ISO 3166-1 alpha-2 code.
pub fn country_code(field: &str, value: &str) -> Result<String, FieldError> {
    if directory::is_country_code(value) {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            format!("{value:?} is not an ISO 3166-1 alpha-2 code (two uppercase letters)"),
        ))
    }
}

/// Refuses an address outside the order's delivery country, naming both countries.
pub fn in_delivery_country(field: &str, given: &str, delivery: &str) -> Result<(), FieldError> {
    if given == delivery {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be {delivery}, the order's delivery country, not {given}"),
        ))
    }
}

/// A required postal address: name, first line, city and a country code.
pub fn address(
    field: &str,
    value: Option<&common::Address>,
) -> Result<common::Address, FieldError> {
    let address = value.ok_or_else(|| FieldError::required(field))?;
    required_text(&format!("{field}.name"), &address.name, MAX_TEXT)?;
    required_text(&format!("{field}.line1"), &address.line1, MAX_TEXT)?;
    required_text(&format!("{field}.city"), &address.city, MAX_TEXT)?;
    country_code(&format!("{field}.country_code"), &address.country_code)?;
    Ok(address.clone())
}

/// An optional address, checked like [`address`] when present.
pub fn optional_address(
    field: &str,
    value: Option<&common::Address>,
) -> Result<Option<common::Address>, FieldError> {
    value.map(|a| address(field, Some(a))).transpose()
}

/// A latitude/longitude pair in range.
pub fn coordinates(field: &str, latitude: f64, longitude: f64) -> Result<(f64, f64), FieldError> {
    if (-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude) {
        Ok((latitude, longitude))
    } else {
        Err(FieldError::new(field, "latitude/longitude out of range"))
    }
}

/// Degrees as stored (microdegrees: no floating-point columns in the portable set).
pub fn to_e6(degrees: f64) -> i64 {
    (degrees * 1_000_000.0).round() as i64
}

pub fn from_e6(micro_degrees: i64) -> f64 {
    micro_degrees as f64 / 1_000_000.0
}

/// Postal codes compare without spaces, hyphens and case ("sw1a 1aa" finds "SW1A 1AA").
pub fn normalise_postal_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

pub fn carrier_message(directory: &Directory, carrier: &Carrier) -> pb::Carrier {
    let country = directory.country(&carrier.country);
    pb::Carrier {
        code: carrier.code.clone(),
        name: carrier.name.clone(),
        country_code: carrier.country.clone(),
        country_name: country.map(|c| c.name.clone()).unwrap_or_default(),
        service_types: carrier.service_types.iter().map(|s| s.to_wire()).collect(),
        phone: carrier.phone.clone(),
        tracking_format: match carrier.tracking {
            TrackingScheme::UpuS10 { .. } => pb::TrackingFormat::UpuS10,
            TrackingScheme::Proprietary { .. } => pb::TrackingFormat::Proprietary,
        }
        .into(),
        website: carrier.website.clone(),
        return_postage: country.map(|c| c.postage().into()),
    }
}

pub fn authorisation_message(auth: &AuthorisationRow) -> Result<pb::ReturnAuthorisation, ApiError> {
    Ok(pb::ReturnAuthorisation {
        order_id: auth.order_id.to_string(),
        dispute_id: auth.dispute_id.clone(),
        buyer_id: auth.buyer_id.to_string(),
        seller_id: auth.seller_id.to_string(),
        destination_country: auth.destination_country.clone(),
        item_value: Some(auth.item_value().into()),
        delivered_at: auth.delivered_at.and_then(micros_to_proto),
        free_return: auth.is_free_return_listing(),
        postage_payer: auth.postage_payer()?.map_or(0, WireEnum::to_wire),
        ship_by: auth.ship_by.and_then(micros_to_proto),
        reason: auth.reason.to_wire(),
        return_to: auth.return_to.clone().map(|a| a.0),
        authorised_at: micros_to_proto(auth.authorised_at),
        label_id: auth.label_id.clone().unwrap_or_default(),
    })
}

pub fn event_message(event: &EventRow) -> pb::TrackingEvent {
    pb::TrackingEvent {
        carrier_event_id: event.carrier_event_id.clone(),
        label_id: event.label_id.to_string(),
        tracking_number: event.tracking_number.clone(),
        r#type: event.kind.to_wire(),
        occurred_at: micros_to_proto(event.occurred_at),
        location: event.location.clone(),
        provider_code: event.provider_code.clone(),
        received_at: micros_to_proto(event.received_at),
        details: event.details.clone(),
    }
}

pub fn pickup_message(pickup: &PickupRow) -> pb::Pickup {
    pb::Pickup {
        pickup_id: pickup.pickup_id.clone(),
        label_id: pickup.label_id.to_string(),
        provider_code: pickup.provider_code.clone(),
        window_start: micros_to_proto(pickup.window_start),
        window_end: micros_to_proto(pickup.window_end),
        address: Some(pickup.address.0.clone()),
        status: pickup.status.to_wire(),
        confirmation_reference: pickup.confirmation_reference.clone(),
        instructions: pickup.instructions.clone(),
        created_at: micros_to_proto(pickup.created_at),
        updated_at: micros_to_proto(pickup.updated_at),
    }
}

/// A stored location; `distance_meters` when the search was from a point.
pub fn location_message(
    location: &LocationRow,
    distance_meters: Option<i64>,
) -> pb::DropOffLocation {
    pb::DropOffLocation {
        location_id: location.location_id.clone(),
        provider_code: location.provider_code.clone(),
        country_code: location.country_code.clone(),
        name: location.name.clone(),
        kind: location.kind.to_wire(),
        address: Some(location.address.0.clone()),
        latitude: from_e6(location.latitude_e6),
        longitude: from_e6(location.longitude_e6),
        opening_hours: location.opening_hours.clone(),
        distance_meters,
        active: location.active != 0,
        updated_at: micros_to_proto(location.updated_at),
    }
}

/// The wire label with its scans (oldest first) and latest pickup, read on `conn` (inside
/// the transaction that changed it, or a pooled connection).
pub async fn label_message(
    conn: &mut AnyConnection,
    label: &LabelRow,
) -> Result<pb::ReturnLabel, ApiError> {
    let (events, pickup) = store::tracking::journey(conn, &label.label_id).await?;
    Ok(label_message_with(label, &events, pickup.as_ref()))
}

/// The wire label of one just issued: no scans and no pickup yet, so nothing to read.
pub fn new_label_message(label: &LabelRow) -> pb::ReturnLabel {
    label_message_with(label, &[], None)
}

/// The wire label of `label` with its scans (in journey order) and latest pickup.
pub fn label_message_with(
    label: &LabelRow,
    events: &[store::tracking::EventRow],
    pickup: Option<&store::pickups::PickupRow>,
) -> pb::ReturnLabel {
    pb::ReturnLabel {
        label_id: label.label_id.to_string(),
        order_id: label.order_id.to_string(),
        dispute_id: label.dispute_id.clone(),
        buyer_id: label.buyer_id.to_string(),
        seller_id: label.seller_id.to_string(),
        method: label.method.to_wire(),
        provider_code: label.provider_code.clone(),
        tracking_number: label.tracking_number.clone(),
        ship_by: micros_to_proto(label.ship_by),
        paid_by: label.paid_by.to_wire(),
        postage: Some(label.postage().into()),
        free_return: label.is_free_return(),
        qr_payload: label.qr_payload.clone(),
        status: label.status.to_wire(),
        sender: Some(label.sender.0.clone()),
        return_to: label.return_to.clone().map(|a| a.0),
        inspection: label.inspection.clone().map(|i| i.0),
        created_at: micros_to_proto(label.created_at),
        updated_at: micros_to_proto(label.updated_at),
        pickup: pickup.map(pickup_message),
        tracking_events: events.iter().map(event_message).collect(),
        accepted_at: label.accepted_at.and_then(micros_to_proto),
        delivered_at: label.delivered_at.and_then(micros_to_proto),
        voided_at: label.voided_at.and_then(micros_to_proto),
    }
}

/// The inspection record of a seller's finding, as kept on the label.
pub fn inspection_message(
    seller_id: &str,
    result: returns_domain::returns::InspectionResult,
    notes: &str,
    evidence_uris: &[String],
    at: returns_domain::time::Timestamp,
) -> pb::Inspection {
    pb::Inspection {
        result: result.to_wire(),
        notes: notes.to_owned(),
        inspected_by: Some(common::Actor {
            id: seller_id.to_owned(),
            role: Role::Seller.to_wire(),
        }),
        inspected_at: Some(returns_proto::convert::timestamp_to_proto(at)),
        evidence_uris: evidence_uris.to_vec(),
    }
}
