//! The settlement worker's own statements: its leases, the scan for due refunds, the next
//! instants it must wake at, and the attempt log (one row per provider call).

use returns_domain::ids::RefundId;
use returns_platform::db::{Tx, column};
use returns_platform::{ApiError, Database};

/// Releases the leases `worker_id` held before it restarted (never another worker's: that
/// replica may be talking to the provider right now). Returns how many.
pub async fn release_own_leases(db: &Database, worker_id: &str) -> Result<u64, ApiError> {
    Ok(db
        .execute_write(
            sqlx::query(
                "UPDATE refunds SET lease_until = NULL, claimed_by = NULL, version = version + 1 \
         WHERE lease_until IS NOT NULL AND status IN ('PENDING', 'SUBMITTED') \
         AND claimed_by = $1",
            )
            .bind(worker_id),
        )
        .await?)
}

/// The condition of [`due_refund_ids`], shared with [`any_due`].
const DUE: &str = "status IN ('PENDING', 'SUBMITTED') AND next_attempt_at <= $1 \
     AND (retry_after IS NULL OR retry_after <= $2) \
     AND (lease_until IS NULL OR lease_until <= $2)";

/// Whether any refund is due (see [`due_refund_ids`]), read on the pool: most passes find
/// none, and the claim is a write transaction (on SQLite a turn on the writer).
pub async fn any_due(db: &Database, now_us: i64, wall_us: i64) -> Result<bool, ApiError> {
    let due = sqlx::query(&format!("SELECT 1 AS due FROM refunds WHERE {DUE} LIMIT 1"))
        .bind(now_us)
        .bind(wall_us)
        .fetch_optional(db.pool())
        .await?;
    Ok(due.is_some())
}

/// Refunds due by the business clock (`now_us`), not backing off and not leased by the wall
/// clock (`wall_us`), oldest first, locked (skipping locked rows on PostgreSQL).
pub async fn due_refund_ids(
    db: &Database,
    tx: &mut Tx,
    now_us: i64,
    wall_us: i64,
    batch: i64,
) -> Result<Vec<RefundId>, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT refund_id FROM refunds WHERE {DUE} \
         ORDER BY next_attempt_at, refund_id LIMIT $3{}",
        db.for_update_skip_locked()
    ))
    .bind(now_us)
    .bind(wall_us)
    .bind(batch)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            column::<String>(row, "refund_id")?
                .parse()
                .map_err(ApiError::internal)
        })
        .collect()
}

/// The earliest business instant after `now_us` at which an open refund becomes due.
pub async fn next_due_after(db: &Database, now_us: i64) -> Result<Option<i64>, ApiError> {
    let row = sqlx::query(
        "SELECT MIN(next_attempt_at) AS due FROM refunds \
         WHERE status IN ('PENDING', 'SUBMITTED') AND next_attempt_at > $1",
    )
    .bind(now_us)
    .fetch_one(db.pool())
    .await?;
    column(&row, "due")
}

/// The earliest wall instant after `wall_us` at which a refund due by `now_us` but backing
/// off may be retried.
pub async fn next_retry_after(
    db: &Database,
    now_us: i64,
    wall_us: i64,
) -> Result<Option<i64>, ApiError> {
    let row = sqlx::query(
        "SELECT MIN(retry_after) AS retry FROM refunds \
         WHERE status IN ('PENDING', 'SUBMITTED') AND next_attempt_at <= $1 \
         AND retry_after > $2",
    )
    .bind(now_us)
    .bind(wall_us)
    .fetch_one(db.pool())
    .await?;
    column(&row, "retry")
}

/// One provider call of a refund, as the attempt log keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub refund_id: &'a RefundId,
    pub kind: &'a str,
    pub worker: &'a str,
    pub idempotency_key: &'a str,
    pub at_micros: i64,
    pub outcome: &'a str,
    pub provider_reference: &'a str,
    pub error: &'a str,
}

pub async fn insert_attempt(tx: &mut Tx, attempt: Attempt<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO refund_attempts (attempt_id, refund_id, kind, worker, idempotency_key, \
         started_at, finished_at, outcome, provider_reference, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(attempt.refund_id.to_string())
    .bind(attempt.kind)
    .bind(attempt.worker)
    .bind(attempt.idempotency_key)
    .bind(attempt.at_micros)
    .bind(attempt.at_micros)
    .bind(attempt.outcome)
    .bind(attempt.provider_reference)
    .bind(attempt.error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
