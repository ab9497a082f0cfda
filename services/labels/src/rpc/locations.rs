//! The partner directory and drop-off locations: listing carriers, carriers publishing their
//! locations, buyers finding them (nearest first from a point, or by provider and id).

use returns_domain::returns::{self as rules, LocationKind, ServiceType};
use returns_domain::time::to_unix_micros;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::paging::{Cursor, PageRequest};
use returns_platform::{ApiError, Caller};
use returns_proto::convert::{self, FieldError};
use returns_proto::labels::v1 as pb;

use super::wire::{self, carrier_message, country_code, location_message, to_e6};
use super::{LabelGrpc, caller_carrier};
use crate::directory::Carrier;
use crate::store::locations::{LocationFilter, LocationKey, LocationRow};
use crate::store::{self, Encoded};

/// The most locations one UpsertDropOffLocations may carry.
const MAX_LOCATIONS_PER_UPSERT: usize = 500;

impl LabelGrpc {
    /// ListCarriers: the directory (in memory), filtered, paged after the last carrier code.
    pub(super) fn carriers(
        &self,
        req: pb::ListCarriersRequest,
    ) -> Result<pb::ListCarriersResponse, ApiError> {
        if !req.country_code.is_empty() {
            country_code("country_code", &req.country_code)?;
        }
        let service: Option<ServiceType> =
            convert::optional_enum_value("service_type", req.service_type)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            &[&req.country_code, service.map_or("", |s| s.code())],
        )?;
        let matching: Vec<&Carrier> = self
            .directory
            .carriers()
            .iter()
            .filter(|c| req.country_code.is_empty() || c.country == req.country_code)
            .filter(|c| service.is_none_or(|s| c.service_types.contains(&s)))
            .collect();
        let start = match &page.after {
            None => 0,
            Some(after) => {
                matching
                    .iter()
                    .position(|c| c.code == after.id)
                    .ok_or_else(|| {
                        FieldError::new("page_token", "names a carrier no longer listed")
                    })?
                    + 1
            }
        };
        let mut rows: Vec<&Carrier> = matching
            .into_iter()
            .skip(start)
            .take(usize::try_from(page.fetch_limit()).unwrap_or(usize::MAX))
            .collect();
        let next_page_token = page.finish(&mut rows, |c| Cursor {
            sort_key: 0,
            id: c.code.clone(),
        });
        Ok(pb::ListCarriersResponse {
            carriers: rows
                .into_iter()
                .map(|c| carrier_message(&self.directory, c))
                .collect(),
            next_page_token,
        })
    }

    /// UpsertDropOffLocations: a carrier publishes (adds or replaces) its own locations.
    pub(super) async fn publish_locations(
        &self,
        caller: &Caller,
        req: pb::UpsertDropOffLocationsRequest,
    ) -> Result<pb::UpsertDropOffLocationsResponse, ApiError> {
        let own = caller_carrier(caller)?;
        let request_id = convert::request_id(&req.request_id)?;
        let provider = convert::required_text("provider_code", &req.provider_code, wire::MAX_TEXT)?;
        if provider != own {
            return Err(ApiError::PermissionDenied(format!(
                "carrier {own} may only publish its own locations, not {provider}'s"
            )));
        }
        let carrier = self.directory.carrier(&provider).ok_or_else(|| {
            FieldError::new(
                "provider_code",
                format!("{provider} is not in the carrier directory"),
            )
        })?;
        if !carrier.offers_drop_off() {
            return Err(ApiError::precondition(
                "drop_off_partners_only",
                format!(
                    "{} offers pickup only and has no drop-off locations",
                    carrier.code
                ),
            ));
        }
        if req.locations.is_empty() || req.locations.len() > MAX_LOCATIONS_PER_UPSERT {
            return Err(FieldError::new(
                "locations",
                format!("must hold 1 to {MAX_LOCATIONS_PER_UPSERT} locations"),
            )
            .into());
        }
        let rows = &req
            .locations
            .iter()
            .enumerate()
            .map(|(i, location)| location_row(carrier, i, location))
            .collect::<Result<Vec<_>, _>>()?;
        let key = RequestKey::new("UpsertDropOffLocations", caller, request_id.as_str(), &req);
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let at = to_unix_micros(self.now());
            let mut inserted = 0;
            let mut updated = 0;
            let mut locations = Vec::with_capacity(rows.len());
            for row in rows {
                let row = LocationRow {
                    updated_at: at,
                    ..row.clone()
                };
                let exists = store::locations::exists(
                    &mut tx,
                    &row.provider_code,
                    &row.location_id,
                    self.db.for_update(),
                )
                .await?;
                if exists {
                    updated += 1;
                } else {
                    inserted += 1;
                }
                store::locations::upsert(&mut tx, &row).await?;
                locations.push(location_message(&row, None));
            }
            let response = pb::UpsertDropOffLocationsResponse {
                locations,
                inserted_count: inserted,
                updated_count: updated,
            };
            Ok((tx, response))
        })
        .await
    }

    /// ListDropOffLocations: a country's active locations, nearest first from a point when
    /// one is given (the whole matching set is ranked in memory: distance is not a column),
    /// otherwise in (provider, location) order by keyset.
    pub(super) async fn find_locations(
        &self,
        req: pb::ListDropOffLocationsRequest,
    ) -> Result<pb::ListDropOffLocationsResponse, ApiError> {
        let country = country_code("country_code", &req.country_code)?;
        self.partners(&country)?;
        let point = match (req.latitude, req.longitude) {
            (Some(lat), Some(lon)) => Some(wire::coordinates("latitude", lat, lon)?),
            (None, None) => None,
            _ => {
                return Err(
                    FieldError::new("longitude", "latitude and longitude go together").into(),
                );
            }
        };
        let kind: Option<LocationKind> = convert::optional_enum_value("kind", req.kind)?;
        let postal_code = wire::normalise_postal_code(&req.postal_code);
        let filter = LocationFilter {
            country_code: &country,
            postal_code: (!postal_code.is_empty()).then_some(postal_code.as_str()),
            provider_code: (!req.provider_code.is_empty()).then_some(req.provider_code.as_str()),
            kind,
        };
        let from = point.map_or_else(String::new, |(lat, lon)| format!("{lat},{lon}"));
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            &[
                &country,
                &postal_code,
                &req.provider_code,
                kind.map_or("", |k| k.code()),
                &from,
            ],
        )?;
        let after = page.after.as_ref().map(location_key).transpose()?;
        let mut conn = self.conn().await?;
        let mut ranked: Vec<(i64, LocationRow)> = match point {
            None => store::locations::list(&mut conn, &filter, after, Some(page.fetch_limit()))
                .await?
                .into_iter()
                .map(|row| (0, row))
                .collect(),
            Some((lat, lon)) => {
                let mut all: Vec<(i64, LocationRow)> =
                    store::locations::list(&mut conn, &filter, None, None)
                        .await?
                        .into_iter()
                        .map(|row| (distance_meters(lat, lon, &row), row))
                        .collect();
                // Equal distances keep the (provider, location) order of the query.
                all.sort_by_key(|(distance, _)| *distance);
                let start = match (&page.after, after) {
                    (Some(cursor), Some(key)) => all
                        .iter()
                        .position(|(distance, row)| {
                            (
                                *distance,
                                row.provider_code.as_str(),
                                row.location_id.as_str(),
                            ) > (cursor.sort_key, key.provider_code, key.location_id)
                        })
                        .unwrap_or(all.len()),
                    _ => 0,
                };
                all.into_iter()
                    .skip(start)
                    .take(usize::try_from(page.fetch_limit()).unwrap_or(usize::MAX))
                    .collect()
            }
        };
        conn.done();
        let next_page_token = page.finish(&mut ranked, |(distance, row)| Cursor {
            sort_key: *distance,
            id: location_cursor_id(row),
        });
        Ok(pb::ListDropOffLocationsResponse {
            locations: ranked
                .iter()
                .map(|(distance, row)| location_message(row, point.map(|_| *distance)))
                .collect(),
            next_page_token,
        })
    }
}

/// A published location checked against its carrier, as it will be stored (`updated_at` is
/// set in the transaction).
fn location_row(
    carrier: &Carrier,
    index: usize,
    location: &pb::DropOffLocation,
) -> Result<LocationRow, ApiError> {
    let field = |name: &str| format!("locations[{index}].{name}");
    convert::required_text(&field("location_id"), &location.location_id, wire::MAX_TEXT)?;
    convert::required_text(&field("name"), &location.name, wire::MAX_TEXT)?;
    if location.country_code != carrier.country {
        return Err(FieldError::new(
            field("country_code"),
            format!("{} serves {} only", carrier.code, carrier.country),
        )
        .into());
    }
    wire::coordinates(&field("latitude"), location.latitude, location.longitude)?;
    if !location.provider_code.is_empty() && location.provider_code != carrier.code {
        return Err(FieldError::new(
            field("provider_code"),
            "must be empty or the request's provider_code",
        )
        .into());
    }
    let kind: LocationKind = convert::enum_value(&field("kind"), location.kind)?;
    let address = wire::address(&field("address"), location.address.as_ref())?;
    Ok(LocationRow {
        provider_code: carrier.code.clone(),
        location_id: location.location_id.clone(),
        country_code: location.country_code.clone(),
        name: location.name.clone(),
        kind,
        postal_code: wire::normalise_postal_code(&address.postal_code),
        address: Encoded(address),
        latitude_e6: to_e6(location.latitude),
        longitude_e6: to_e6(location.longitude),
        opening_hours: location.opening_hours.clone(),
        active: i64::from(location.active),
        updated_at: 0,
    })
}

fn distance_meters(lat: f64, lon: f64, row: &LocationRow) -> i64 {
    rules::haversine_meters(
        lat,
        lon,
        wire::from_e6(row.latitude_e6),
        wire::from_e6(row.longitude_e6),
    )
    .round() as i64
}

/// The cursor id of a location: its provider code, length-prefixed, then its id (either may
/// hold any character).
fn location_cursor_id(row: &LocationRow) -> String {
    format!(
        "{}:{}{}",
        row.provider_code.len(),
        row.provider_code,
        row.location_id
    )
}

fn location_key(cursor: &Cursor) -> Result<LocationKey<'_>, ApiError> {
    let bad = || {
        FieldError::new(
            "page_token",
            "is not a token from a previous page of this list",
        )
    };
    let (length, rest) = cursor.id.split_once(':').ok_or_else(bad)?;
    let length: usize = length.parse().map_err(|_| bad())?;
    let provider_code = rest.get(..length).ok_or_else(bad)?;
    let location_id = rest.get(length..).ok_or_else(bad)?;
    Ok(LocationKey {
        provider_code,
        location_id,
    })
}
