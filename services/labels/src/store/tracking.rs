//! `tracking_events`: carrier scans, keyed by the carrier's own event id (its idempotency
//! key, scoped by carrier).

use returns_domain::ids::LabelId;
use returns_domain::returns::{PickupStatus, TrackingEventType};
use returns_platform::ApiError;
use returns_platform::write_batch::WriteBatch;
use returns_proto::common::v1 as common;
use sqlx::AnyConnection;

use super::pickups::PickupRow;
use super::{Encoded, corrupt};

const COLUMNS: &str = "provider_code, carrier_event_id, label_id, tracking_number, type, \
     occurred_at, location, details, received_at";

/// A scan as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub provider_code: String,
    pub carrier_event_id: String,
    #[sqlx(try_from = "String")]
    pub label_id: LabelId,
    pub tracking_number: String,
    #[sqlx(rename = "type", try_from = "String")]
    pub kind: TrackingEventType,
    pub occurred_at: i64,
    pub location: String,
    pub details: String,
    pub received_at: i64,
}

/// The scan a carrier reported under `carrier_event_id`, if any.
pub async fn find(
    conn: &mut AnyConnection,
    provider_code: &str,
    carrier_event_id: &str,
) -> Result<Option<EventRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tracking_events WHERE provider_code = $1 AND carrier_event_id = $2"
    ))
    .bind(provider_code)
    .bind(carrier_event_id)
    .fetch_optional(conn)
    .await?)
}

/// Records a scan, pushed into `batch` (the transaction's deferred writes).
pub fn insert(batch: &mut WriteBatch, event: &EventRow) {
    batch
        .push(&format!(
            "INSERT INTO tracking_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(event.provider_code.clone())
        .bind(event.carrier_event_id.clone())
        .bind(event.label_id.to_string())
        .bind(event.tracking_number.clone())
        .bind(event.kind.code().to_owned())
        .bind(event.occurred_at)
        .bind(event.location.clone())
        .bind(event.details.clone())
        .bind(event.received_at);
}

impl EventRow {
    /// Where the scan goes in a label's journey: carrier time, then arrival, then the event
    /// id's bytes. Sorted in Rust rather than by the database, so ties come out the same on
    /// both backends (a PostgreSQL collation can order text otherwise) and a scan not yet
    /// written takes its place among those read.
    pub fn journey_order(&self) -> (i64, i64, &[u8]) {
        (
            self.occurred_at,
            self.received_at,
            self.carrier_event_id.as_bytes(),
        )
    }
}

/// A label's scans in carrier time order (whatever order they arrived in) and its latest
/// pickup, in one statement: everything a label's wire message shows besides the label row.
/// One row per scan, each carrying the pickup's columns; a label without scans still gets
/// one row, for its pickup.
pub async fn journey(
    conn: &mut AnyConnection,
    label_id: &LabelId,
) -> Result<(Vec<EventRow>, Option<PickupRow>), ApiError> {
    let rows: Vec<JourneyRow> = sqlx::query_as(
        "SELECT e.provider_code, e.carrier_event_id, e.tracking_number, e.type, e.occurred_at, \
         e.location, e.details, e.received_at, \
         p.pickup_id AS p_pickup_id, p.provider_code AS p_provider_code, \
         p.window_start AS p_window_start, p.window_end AS p_window_end, \
         p.address AS p_address, p.status AS p_status, \
         p.confirmation_reference AS p_confirmation_reference, \
         p.instructions AS p_instructions, p.created_at AS p_created_at, \
         p.updated_at AS p_updated_at \
         FROM (SELECT $1 AS label_id) k \
         LEFT JOIN tracking_events e ON e.label_id = k.label_id \
         LEFT JOIN (SELECT * FROM pickups WHERE label_id = $1 \
                    ORDER BY created_at DESC, pickup_id DESC LIMIT 1) p ON 1 = 1",
    )
    .bind(label_id.to_string())
    .fetch_all(conn)
    .await?;
    let mut pickup = None;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if pickup.is_none() {
            pickup = row.pickup(label_id)?;
        }
        if let Some(event) = row.event(label_id)? {
            events.push(event);
        }
    }
    events.sort_by(|a, b| a.journey_order().cmp(&b.journey_order()));
    Ok((events, pickup))
}

/// A row of [`journey`]: a scan's columns (NULL for a label without scans) beside the latest
/// pickup's (`p_`, NULL without a pickup).
#[derive(sqlx::FromRow)]
struct JourneyRow {
    provider_code: Option<String>,
    carrier_event_id: Option<String>,
    tracking_number: Option<String>,
    #[sqlx(rename = "type")]
    kind: Option<String>,
    occurred_at: Option<i64>,
    location: Option<String>,
    details: Option<String>,
    received_at: Option<i64>,
    p_pickup_id: Option<String>,
    p_provider_code: Option<String>,
    p_window_start: Option<i64>,
    p_window_end: Option<i64>,
    p_address: Option<Encoded<common::Address>>,
    p_status: Option<String>,
    p_confirmation_reference: Option<String>,
    p_instructions: Option<String>,
    p_created_at: Option<i64>,
    p_updated_at: Option<i64>,
}

/// A column the schema declares NOT NULL, NULL in a joined row that has the rest of its side.
fn present<T>(value: Option<T>, column: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| corrupt(format!("{column} is NULL")))
}

impl JourneyRow {
    fn event(&self, label_id: &LabelId) -> Result<Option<EventRow>, ApiError> {
        let Some(carrier_event_id) = self.carrier_event_id.clone() else {
            return Ok(None);
        };
        let kind = present(self.kind.clone(), "tracking_events.type")?;
        Ok(Some(EventRow {
            provider_code: present(self.provider_code.clone(), "tracking_events.provider_code")?,
            carrier_event_id,
            label_id: *label_id,
            tracking_number: present(
                self.tracking_number.clone(),
                "tracking_events.tracking_number",
            )?,
            kind: TrackingEventType::try_from(kind).map_err(|e| corrupt(e.to_string()))?,
            occurred_at: present(self.occurred_at, "tracking_events.occurred_at")?,
            location: present(self.location.clone(), "tracking_events.location")?,
            details: present(self.details.clone(), "tracking_events.details")?,
            received_at: present(self.received_at, "tracking_events.received_at")?,
        }))
    }

    fn pickup(&self, label_id: &LabelId) -> Result<Option<PickupRow>, ApiError> {
        let Some(pickup_id) = self.p_pickup_id.clone() else {
            return Ok(None);
        };
        let status = present(self.p_status.clone(), "pickups.status")?;
        Ok(Some(PickupRow {
            pickup_id,
            label_id: *label_id,
            provider_code: present(self.p_provider_code.clone(), "pickups.provider_code")?,
            window_start: present(self.p_window_start, "pickups.window_start")?,
            window_end: present(self.p_window_end, "pickups.window_end")?,
            address: present(self.p_address.clone(), "pickups.address")?,
            status: PickupStatus::try_from(status).map_err(|e| corrupt(e.to_string()))?,
            confirmation_reference: present(
                self.p_confirmation_reference.clone(),
                "pickups.confirmation_reference",
            )?,
            instructions: present(self.p_instructions.clone(), "pickups.instructions")?,
            created_at: present(self.p_created_at, "pickups.created_at")?,
            updated_at: present(self.p_updated_at, "pickups.updated_at")?,
        }))
    }
}
