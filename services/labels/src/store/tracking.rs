//! `tracking_events`: carrier scans, keyed by the carrier's own event id (its idempotency
//! key, scoped by carrier).

use returns_domain::ids::LabelId;
use returns_domain::returns::TrackingEventType;
use returns_platform::ApiError;
use returns_platform::db::Tx;
use sqlx::AnyConnection;

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

pub async fn insert(tx: &mut Tx, event: &EventRow) -> Result<(), ApiError> {
    sqlx::query(&format!(
        "INSERT INTO tracking_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&event.provider_code)
    .bind(&event.carrier_event_id)
    .bind(event.label_id.to_string())
    .bind(&event.tracking_number)
    .bind(event.kind.code())
    .bind(event.occurred_at)
    .bind(&event.location)
    .bind(&event.details)
    .bind(event.received_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A label's scans in carrier time order, whatever order they arrived in.
pub async fn for_label(
    conn: &mut AnyConnection,
    label_id: &LabelId,
) -> Result<Vec<EventRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tracking_events WHERE label_id = $1 \
         ORDER BY occurred_at, received_at, carrier_event_id"
    ))
    .bind(label_id.to_string())
    .fetch_all(conn)
    .await?)
}
