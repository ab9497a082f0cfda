//! Rows of the labels database and their conversion to wire messages; rows stay private to
//! this service (docs/architecture.md "Crates and what each may import").

use prost::Message;
use returns_domain::dispute::{DisputeReason, PostagePayer};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::returns::{InspectionResult, Journey, LabelStatus, TrackingEventType};
use returns_domain::time::{Timestamp, from_unix_micros, to_unix_micros};
use returns_platform::ApiError;
use returns_platform::db::column;
use returns_proto::common::v1 as common;
use returns_proto::convert::timestamp_to_proto;
use returns_proto::labels::v1 as pb;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

/// A stored instant back to a timestamp; a value outside chrono's range is corrupt data.
pub fn instant(micros: i64) -> Result<Timestamp, ApiError> {
    from_unix_micros(micros).ok_or_else(|| corrupt(format!("instant {micros} out of range")))
}

fn opt_instant(micros: Option<i64>) -> Result<Option<Timestamp>, ApiError> {
    micros.map(instant).transpose()
}

fn proto_ts(micros: Option<i64>) -> Result<Option<prost_types::Timestamp>, ApiError> {
    Ok(opt_instant(micros)?.map(timestamp_to_proto))
}

/// An internal error for data the database should never hold.
pub fn corrupt(what: String) -> ApiError {
    ApiError::internal(std::io::Error::other(format!("corrupt labels row: {what}")))
}

pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    M::decode(bytes).map_err(ApiError::internal)
}

pub fn money_to_proto(money: &Money) -> common::Money {
    common::Money {
        currency_code: money.currency.to_string(),
        minor_units: money.minor_units,
    }
}

pub fn payer_to_proto(payer: PostagePayer) -> common::PostagePayer {
    match payer {
        PostagePayer::Seller => common::PostagePayer::Seller,
        PostagePayer::Platform => common::PostagePayer::Platform,
        PostagePayer::Buyer => common::PostagePayer::Buyer,
    }
}

pub fn reason_to_proto(reason: DisputeReason) -> common::DisputeReason {
    common::DisputeReason::from_str_name(&format!("DISPUTE_REASON_{}", reason.code()))
        .unwrap_or(common::DisputeReason::Unspecified)
}

pub fn status_to_proto(status: LabelStatus) -> pb::LabelStatus {
    pb::LabelStatus::from_str_name(&format!("LABEL_STATUS_{}", status.code()))
        .unwrap_or(pb::LabelStatus::Unspecified)
}

pub fn event_type_to_proto(kind: TrackingEventType) -> pb::TrackingEventType {
    pb::TrackingEventType::from_str_name(&format!("TRACKING_EVENT_TYPE_{}", kind.code()))
        .unwrap_or(pb::TrackingEventType::Unspecified)
}

pub fn inspection_to_proto(result: InspectionResult) -> pb::InspectionResult {
    pb::InspectionResult::from_str_name(&format!("INSPECTION_RESULT_{}", result.code()))
        .unwrap_or(pb::InspectionResult::Unspecified)
}

/// A return authorisation as stored.
#[derive(Debug, Clone)]
pub struct AuthorisationRow {
    pub order_id: String,
    pub dispute_id: String,
    pub buyer_id: String,
    pub seller_id: String,
    pub destination_country: String,
    pub item_value: Money,
    pub delivered_at: Option<Timestamp>,
    pub free_return: bool,
    pub postage_payer: Option<PostagePayer>,
    pub ship_by: Option<Timestamp>,
    pub reason: DisputeReason,
    pub return_to: Option<common::Address>,
    pub authorised_at: Timestamp,
    pub label_id: Option<String>,
}

impl AuthorisationRow {
    pub fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
        let currency: String = column(row, "item_value_currency")?;
        let payer: Option<String> = column(row, "postage_payer")?;
        let reason: String = column(row, "reason")?;
        let return_to: Option<Vec<u8>> = column(row, "return_to")?;
        Ok(AuthorisationRow {
            order_id: column(row, "order_id")?,
            dispute_id: column(row, "dispute_id")?,
            buyer_id: column(row, "buyer_id")?,
            seller_id: column(row, "seller_id")?,
            destination_country: column(row, "destination_country")?,
            item_value: Money::new(
                CurrencyCode::parse(&currency).map_err(|e| corrupt(e.to_string()))?,
                column(row, "item_value_minor")?,
            ),
            delivered_at: opt_instant(column(row, "delivered_at")?)?,
            free_return: column::<i64>(row, "free_return")? != 0,
            postage_payer: payer
                .map(|p| PostagePayer::parse(&p).map_err(|e| corrupt(e.to_string())))
                .transpose()?,
            ship_by: opt_instant(column(row, "ship_by")?)?,
            reason: DisputeReason::parse(&reason).map_err(|e| corrupt(e.to_string()))?,
            return_to: return_to.map(|b| decode(&b)).transpose()?,
            authorised_at: instant(column(row, "authorised_at")?)?,
            label_id: column(row, "label_id")?,
        })
    }

    pub fn to_proto(&self) -> pb::ReturnAuthorisation {
        pb::ReturnAuthorisation {
            order_id: self.order_id.clone(),
            dispute_id: self.dispute_id.clone(),
            buyer_id: self.buyer_id.clone(),
            seller_id: self.seller_id.clone(),
            destination_country: self.destination_country.clone(),
            item_value: Some(money_to_proto(&self.item_value)),
            delivered_at: self.delivered_at.map(timestamp_to_proto),
            free_return: self.free_return,
            postage_payer: self
                .postage_payer
                .map_or(common::PostagePayer::Unspecified, payer_to_proto)
                .into(),
            ship_by: self.ship_by.map(timestamp_to_proto),
            reason: reason_to_proto(self.reason).into(),
            return_to: self.return_to.clone(),
            authorised_at: Some(timestamp_to_proto(self.authorised_at)),
            label_id: self.label_id.clone().unwrap_or_default(),
        }
    }
}

/// Loads an order's authorisation; `lock` is `db.for_update()` inside write transactions.
pub async fn load_authorisation(
    conn: &mut AnyConnection,
    order_id: &str,
    lock: &str,
) -> Result<Option<AuthorisationRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT * FROM return_authorisations WHERE order_id = $1{lock}"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(AuthorisationRow::from_row).transpose()
}

/// A label as stored.
#[derive(Debug, Clone)]
pub struct LabelRow {
    pub label_id: String,
    pub order_id: String,
    pub dispute_id: String,
    pub buyer_id: String,
    pub seller_id: String,
    pub method: String,
    pub provider_code: String,
    pub tracking_number: String,
    pub ship_by: i64,
    pub paid_by: PostagePayer,
    pub postage: Money,
    pub free_return: bool,
    pub quota_month: Option<String>,
    pub qr_payload: String,
    pub status: LabelStatus,
    pub status_at: Option<i64>,
    pub sender: Vec<u8>,
    pub return_to: Option<Vec<u8>>,
    pub inspection: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    pub accepted_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub voided_at: Option<i64>,
}

impl LabelRow {
    pub fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
        let paid_by: String = column(row, "paid_by")?;
        let currency: String = column(row, "postage_currency")?;
        let status: String = column(row, "status")?;
        Ok(LabelRow {
            label_id: column(row, "label_id")?,
            order_id: column(row, "order_id")?,
            dispute_id: column(row, "dispute_id")?,
            buyer_id: column(row, "buyer_id")?,
            seller_id: column(row, "seller_id")?,
            method: column(row, "method")?,
            provider_code: column(row, "provider_code")?,
            tracking_number: column(row, "tracking_number")?,
            ship_by: column(row, "ship_by")?,
            paid_by: PostagePayer::parse(&paid_by).map_err(|e| corrupt(e.to_string()))?,
            postage: Money::new(
                CurrencyCode::parse(&currency).map_err(|e| corrupt(e.to_string()))?,
                column(row, "postage_minor")?,
            ),
            free_return: column::<i64>(row, "free_return")? != 0,
            quota_month: column(row, "quota_month")?,
            qr_payload: column(row, "qr_payload")?,
            status: LabelStatus::parse(&status).map_err(|e| corrupt(e.to_string()))?,
            status_at: column(row, "status_at")?,
            sender: column(row, "sender")?,
            return_to: column(row, "return_to")?,
            inspection: column(row, "inspection")?,
            created_at: column(row, "created_at")?,
            updated_at: column(row, "updated_at")?,
            accepted_at: column(row, "accepted_at")?,
            delivered_at: column(row, "delivered_at")?,
            voided_at: column(row, "voided_at")?,
        })
    }

    pub fn journey(&self) -> Result<Journey, ApiError> {
        Ok(Journey {
            status: self.status,
            status_at: opt_instant(self.status_at)?,
            accepted_at: opt_instant(self.accepted_at)?,
            delivered_at: opt_instant(self.delivered_at)?,
        })
    }

    /// Writes the mutable parts back (status, journey, inspection, timestamps).
    pub async fn save(&self, conn: &mut AnyConnection) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE return_labels SET status = $1, status_at = $2, accepted_at = $3, \
             delivered_at = $4, voided_at = $5, inspection = $6, updated_at = $7 \
             WHERE label_id = $8",
        )
        .bind(self.status.code())
        .bind(self.status_at)
        .bind(self.accepted_at)
        .bind(self.delivered_at)
        .bind(self.voided_at)
        .bind(self.inspection.clone())
        .bind(self.updated_at)
        .bind(&self.label_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub fn method_proto(&self) -> pb::ReturnMethod {
        pb::ReturnMethod::from_str_name(&format!("RETURN_METHOD_{}", self.method))
            .unwrap_or(pb::ReturnMethod::Unspecified)
    }

    /// The wire label with its scans (oldest first) and current pickup.
    pub async fn to_proto(&self, conn: &mut AnyConnection) -> Result<pb::ReturnLabel, ApiError> {
        let events = sqlx::query(
            "SELECT * FROM tracking_events WHERE label_id = $1 \
             ORDER BY occurred_at, received_at, carrier_event_id",
        )
        .bind(&self.label_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let pickup = sqlx::query(
            "SELECT * FROM pickups WHERE label_id = $1 ORDER BY created_at DESC, pickup_id DESC",
        )
        .bind(&self.label_id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(pickup_from_row)
        .transpose()?;
        Ok(pb::ReturnLabel {
            label_id: self.label_id.clone(),
            order_id: self.order_id.clone(),
            dispute_id: self.dispute_id.clone(),
            buyer_id: self.buyer_id.clone(),
            seller_id: self.seller_id.clone(),
            method: self.method_proto().into(),
            provider_code: self.provider_code.clone(),
            tracking_number: self.tracking_number.clone(),
            ship_by: proto_ts(Some(self.ship_by))?,
            paid_by: payer_to_proto(self.paid_by).into(),
            postage: Some(money_to_proto(&self.postage)),
            free_return: self.free_return,
            qr_payload: self.qr_payload.clone(),
            status: status_to_proto(self.status).into(),
            sender: Some(decode(&self.sender)?),
            return_to: self.return_to.as_deref().map(decode).transpose()?,
            inspection: self.inspection.as_deref().map(decode).transpose()?,
            created_at: proto_ts(Some(self.created_at))?,
            updated_at: proto_ts(Some(self.updated_at))?,
            pickup,
            tracking_events: events,
            accepted_at: proto_ts(self.accepted_at)?,
            delivered_at: proto_ts(self.delivered_at)?,
            voided_at: proto_ts(self.voided_at)?,
        })
    }
}

/// Loads a label by a column (`label_id` or `tracking_number`).
pub async fn load_label(
    conn: &mut AnyConnection,
    by: &str,
    value: &str,
    lock: &str,
) -> Result<Option<LabelRow>, ApiError> {
    let column_name = match by {
        "tracking_number" => "tracking_number",
        _ => "label_id",
    };
    let row = sqlx::query(&format!(
        "SELECT * FROM return_labels WHERE {column_name} = $1{lock}"
    ))
    .bind(value)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(LabelRow::from_row).transpose()
}

pub fn event_from_row(row: &AnyRow) -> Result<pb::TrackingEvent, ApiError> {
    let kind: String = column(row, "type")?;
    let kind = TrackingEventType::parse(&kind).map_err(|e| corrupt(e.to_string()))?;
    Ok(pb::TrackingEvent {
        carrier_event_id: column(row, "carrier_event_id")?,
        label_id: column(row, "label_id")?,
        tracking_number: column(row, "tracking_number")?,
        r#type: event_type_to_proto(kind).into(),
        occurred_at: proto_ts(Some(column(row, "occurred_at")?))?,
        location: column(row, "location")?,
        provider_code: column(row, "provider_code")?,
        received_at: proto_ts(Some(column(row, "received_at")?))?,
        details: column(row, "details")?,
    })
}

pub fn pickup_from_row(row: &AnyRow) -> Result<pb::Pickup, ApiError> {
    let status: String = column(row, "status")?;
    let address: Vec<u8> = column(row, "address")?;
    Ok(pb::Pickup {
        pickup_id: column(row, "pickup_id")?,
        label_id: column(row, "label_id")?,
        provider_code: column(row, "provider_code")?,
        window_start: proto_ts(Some(column(row, "window_start")?))?,
        window_end: proto_ts(Some(column(row, "window_end")?))?,
        address: Some(decode(&address)?),
        status: pb::PickupStatus::from_str_name(&format!("PICKUP_STATUS_{status}"))
            .unwrap_or(pb::PickupStatus::Unspecified)
            .into(),
        confirmation_reference: column(row, "confirmation_reference")?,
        instructions: column(row, "instructions")?,
        created_at: proto_ts(Some(column(row, "created_at")?))?,
        updated_at: proto_ts(Some(column(row, "updated_at")?))?,
    })
}

/// Now as stored.
pub fn micros(at: Timestamp) -> i64 {
    to_unix_micros(at)
}
