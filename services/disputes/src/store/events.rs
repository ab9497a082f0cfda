//! The `dispute_events` table: a dispute's append-only history (rows are inserted, never
//! updated or deleted), each entry a versioned document numbered by its sequence.

use returns_domain::ids::{DisputeId, EventId};
use returns_domain::negotiation as n;
use returns_domain::time::to_unix_micros;
use returns_platform::db::Tx;
use returns_platform::paging::{Cursor, PageRequest};
use returns_platform::{ApiError, Database};

use super::document::DISPUTE_EVENT;

/// A history entry with its place in the dispute's history.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// 1 for the opening entry, then +1 per entry.
    pub sequence: i64,
    pub event: n::DisputeEvent,
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    #[sqlx(try_from = "String")]
    event_id: EventId,
    sequence: i64,
    data: String,
    schema_version: i64,
}

impl EventRow {
    fn into_stored(self) -> Result<StoredEvent, ApiError> {
        Ok(StoredEvent {
            sequence: self.sequence,
            event: DISPUTE_EVENT.read(
                &self.event_id.to_string(),
                self.schema_version,
                &self.data,
            )?,
        })
    }
}

/// Appends `history` after the dispute's last entry.
pub async fn append_events(
    tx: &mut Tx,
    dispute_id: &DisputeId,
    history: &[n::DisputeEvent],
) -> Result<(), ApiError> {
    let id = dispute_id.to_string();
    // The next sequence is read by the insert itself (no separate MAX read): the caller holds
    // the dispute's row lock, so no other writer appends to this history meanwhile.
    for event in history {
        sqlx::query(
            "INSERT INTO dispute_events (event_id, dispute_id, sequence, event_type, actor_id, \
             actor_role, occurred_at, from_state, to_state, data, schema_version) \
             SELECT $1, $2, CAST(COALESCE(MAX(sequence), 0) + 1 AS BIGINT), $3, $4, $5, $6, $7, \
             $8, $9, $10 FROM dispute_events WHERE dispute_id = $2",
        )
        .bind(event.id.to_string())
        .bind(&id)
        .bind(event.kind.code())
        .bind(&event.actor.id)
        .bind(event.actor.role.code())
        .bind(to_unix_micros(event.at))
        .bind(event.from.map(|s| s.code()))
        .bind(event.to.code())
        .bind(DISPUTE_EVENT.write(event)?)
        .bind(DISPUTE_EVENT.current)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The keyset of a history entry. A history is ordered by its sequence (entries of one
/// transaction share an instant), so the cursor's sort key is the sequence number; the
/// entry's id rides along as the tie-breaker the token format requires.
pub fn event_cursor(stored: &StoredEvent) -> Cursor {
    Cursor {
        sort_key: stored.sequence,
        id: stored.event.id.to_string(),
    }
}

/// One page of a dispute's history, oldest first; fetches one more than the page
/// (`page.finish` trims it). Served by the (dispute_id, sequence) unique index.
pub async fn list_events(
    db: &Database,
    dispute_id: &DisputeId,
    page: &PageRequest,
) -> Result<Vec<StoredEvent>, ApiError> {
    let after_sequence = page.after.as_ref().map_or(0, |cursor| cursor.sort_key);
    sqlx::query_as::<_, EventRow>(
        "SELECT event_id, sequence, data, schema_version FROM dispute_events \
         WHERE dispute_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(dispute_id.to_string())
    .bind(after_sequence)
    .bind(page.fetch_limit())
    .fetch_all(db.pool())
    .await?
    .into_iter()
    .map(EventRow::into_stored)
    .collect()
}
