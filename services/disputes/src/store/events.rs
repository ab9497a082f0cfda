//! The `dispute_events` table: a dispute's append-only history (rows are inserted, never
//! updated or deleted), each entry a versioned document numbered by its sequence.

use returns_domain::ids::{DisputeId, EventId};
use returns_domain::negotiation as n;
use returns_domain::time::to_unix_micros;
use returns_platform::paging::{Cursor, PageRequest};
use returns_platform::write_batch::WriteBatch;
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

/// Where a change's history entries are numbered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Numbering {
    /// A new dispute: 1, 2, ...
    FromOne,
    /// After the dispute's last entry, read by the insert itself (no separate MAX read): the
    /// caller holds the dispute's row lock, so no other writer appends meanwhile.
    AfterLast,
}

/// Adds `history` to the change's writes as one multi-row insert.
pub(super) fn append_events(
    batch: &mut WriteBatch,
    dispute_id: &DisputeId,
    history: &[n::DisputeEvent],
    numbering: Numbering,
) -> Result<(), ApiError> {
    if history.is_empty() {
        return Ok(());
    }
    // $1 is the dispute; each entry then binds ten values. Every sequence of one statement is
    // computed from the same last entry (all rows see the table as it was before the insert).
    let first = match numbering {
        Numbering::FromOne => "0",
        Numbering::AfterLast => {
            "(SELECT COALESCE(MAX(sequence), 0) FROM dispute_events WHERE dispute_id = $1)"
        }
    };
    let mut sql = String::from(
        "INSERT INTO dispute_events (dispute_id, event_id, sequence, event_type, actor_id, \
         actor_role, occurred_at, from_state, to_state, data, schema_version) VALUES ",
    );
    for i in 0..history.len() {
        let p = 2 + i * 10;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "($1, ${}, {first} + ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            p,
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9
        ));
    }
    batch.push(&sql).bind(dispute_id.to_string());
    for (offset, event) in (1_i64..).zip(history) {
        batch
            .bind(event.id.to_string())
            .bind(offset)
            .bind(event.kind.code())
            .bind(event.actor.id.clone())
            .bind(event.actor.role.code())
            .bind(to_unix_micros(event.at))
            .bind(event.from.map(|s| s.code()))
            .bind(event.to.code())
            .bind(DISPUTE_EVENT.write(event)?)
            .bind(DISPUTE_EVENT.current);
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
    db.fetch_all(
        sqlx::query_as::<_, EventRow>(
            "SELECT event_id, sequence, data, schema_version FROM dispute_events \
             WHERE dispute_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        )
        .bind(dispute_id.to_string())
        .bind(after_sequence)
        .bind(page.fetch_limit()),
    )
    .await?
    .into_iter()
    .map(EventRow::into_stored)
    .collect()
}
