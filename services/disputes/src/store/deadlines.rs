//! The `deadlines` table: durable deadlines written in the transaction that starts them, and
//! the claims of the deadline worker. `fired`: 0 pending, 1 fired, 2 superseded (the dispute
//! moved on before it fell due).

use returns_domain::ids::DisputeId;
use returns_domain::negotiation as n;
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database};

/// A deadline row that has fallen due.
#[derive(Debug, Clone)]
pub struct DueDeadline {
    pub dispute_id: DisputeId,
    pub kind: n::DeadlineKind,
    pub due_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct DeadlineRow {
    #[sqlx(try_from = "String")]
    dispute_id: DisputeId,
    kind: String,
    due_at: i64,
}

impl DeadlineRow {
    fn into_due(self) -> Result<DueDeadline, ApiError> {
        Ok(DueDeadline {
            dispute_id: self.dispute_id,
            kind: n::DeadlineKind::parse(&self.kind).map_err(ApiError::internal)?,
            due_at: self.due_at,
        })
    }
}

/// Whether the dispute may already have pending deadlines to supersede.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    /// A new dispute: nothing to supersede.
    None,
    Some,
}

/// Adds to the change's writes what makes the deadline of the dispute's new state the only
/// pending one: any other is stale.
pub(super) fn schedule_deadline(
    batch: &mut WriteBatch,
    dispute: &n::Dispute,
    now: Timestamp,
    pending: Pending,
) {
    let id = dispute.id.to_string();
    let deadline = dispute.deadline();
    if pending == Pending::Some {
        // Never the row the insert below may add or keep: two statements of one batch must
        // not touch the same row.
        batch
            .push(
                "UPDATE deadlines SET fired = 2 WHERE dispute_id = $1 AND fired = 0 \
                 AND NOT (kind = $2 AND due_at = $3)",
            )
            .bind(id.clone())
            .bind(deadline.map(|(kind, _)| kind.code()).unwrap_or(""))
            .bind(deadline.map(|(_, due)| to_unix_micros(due)).unwrap_or(0));
    }
    if let Some((kind, due)) = deadline {
        batch
            .push(
                "INSERT INTO deadlines (dispute_id, kind, due_at, fired, created_at) \
                 VALUES ($1, $2, $3, 0, $4) ON CONFLICT (dispute_id, kind, due_at) DO NOTHING",
            )
            .bind(id)
            .bind(kind.code())
            .bind(to_unix_micros(due))
            .bind(to_unix_micros(now));
    }
}

/// Pending deadlines due at `now`, the earliest first.
pub async fn due_deadlines(
    db: &Database,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<DueDeadline>, ApiError> {
    sqlx::query_as::<_, DeadlineRow>(
        "SELECT dispute_id, kind, due_at FROM deadlines WHERE fired = 0 AND due_at <= $1 \
         ORDER BY due_at LIMIT $2",
    )
    .bind(to_unix_micros(now))
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .into_iter()
    .map(DeadlineRow::into_due)
    .collect()
}

/// Claims a due deadline inside `tx`: true when it was still pending (and is now fired).
pub async fn claim_deadline(tx: &mut Tx, deadline: &DueDeadline) -> Result<bool, ApiError> {
    let updated = sqlx::query(
        "UPDATE deadlines SET fired = 1 \
         WHERE dispute_id = $1 AND kind = $2 AND due_at = $3 AND fired = 0",
    )
    .bind(deadline.dispute_id.to_string())
    .bind(deadline.kind.code())
    .bind(deadline.due_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}
