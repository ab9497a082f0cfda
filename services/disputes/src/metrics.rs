//! The disputes service's own metrics: disputes by state, and the deadline worker's backlog
//! (deadlines due now and overdue by the suite's business clock), read from the database at
//! each collection. RPC, outbox and pool metrics come from the platform.

use returns_domain::negotiation::{DeadlineKind, DisputeState};
use returns_domain::time::to_unix_micros;
use returns_platform::db::column;
use returns_platform::metrics::{KeyValue, Points};
use returns_platform::{ApiError, Application, Database, SuiteContext};

/// A pending deadline this long past due (business time) means the deadline worker is
/// behind: it is woken by every commit and clock move, and polls every 5 s otherwise.
pub const OVERDUE_AFTER_MICROS: i64 = 60 * 1_000_000;

/// Registers the service's gauges on `app`'s meter, over its database.
pub fn register(app: &Application, context: &SuiteContext) {
    let Some(db) = app.database().cloned() else {
        return;
    };
    let metrics = app.metrics();
    let by_state =
        metrics.gauge_readings("returns.dispute.count", "{dispute}", "Disputes by state");
    let due = metrics.gauge_readings(
        "returns.deadline.due",
        "{deadline}",
        "Deadlines due by the business clock and not yet fired, by kind",
    );
    let overdue = metrics.gauge_readings(
        "returns.deadline.overdue",
        "{deadline}",
        "Deadlines due over a minute ago (business clock) and not yet fired, by kind",
    );
    let clock = context.clock.clone();
    metrics.refresh_before_collect(move || {
        let (db, by_state, due, overdue) =
            (db.clone(), by_state.clone(), due.clone(), overdue.clone());
        let now = to_unix_micros(clock.now());
        async move {
            match disputes_by_state(&db).await {
                Ok(points) => by_state.set(points),
                Err(error) => {
                    tracing::warn!(%error, "cannot count disputes for metrics");
                    by_state.set(Vec::new());
                }
            }
            match deadlines_due(&db, now).await {
                Ok((due_points, overdue_points)) => {
                    due.set(due_points);
                    overdue.set(overdue_points);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot count deadlines for metrics");
                    due.set(Vec::new());
                    overdue.set(Vec::new());
                }
            }
        }
    });
}

/// Every state, 0 when empty (an index-only count over `disputes_by_state`).
async fn disputes_by_state(db: &Database) -> Result<Points, ApiError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM disputes GROUP BY state")
        .fetch_all(db.pool())
        .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for row in &rows {
        counts.push((column::<String>(row, "state")?, column::<i64>(row, "n")?));
    }
    Ok(DisputeState::ALL
        .iter()
        .map(|state| {
            let n = counts
                .iter()
                .find(|(code, _)| code == state.code())
                .map_or(0, |(_, n)| *n);
            (n, vec![KeyValue::new("state", state.code())])
        })
        .collect())
}

/// Due and overdue pending deadlines per kind at business instant `now` (over the
/// `deadlines_pending` partial index).
async fn deadlines_due(db: &Database, now: i64) -> Result<(Points, Points), ApiError> {
    let rows = sqlx::query(
        "SELECT kind, COUNT(*) AS due, COUNT(CASE WHEN due_at <= $2 THEN 1 END) AS overdue \
         FROM deadlines WHERE fired = 0 AND due_at <= $1 GROUP BY kind",
    )
    .bind(now)
    .bind(now.saturating_sub(OVERDUE_AFTER_MICROS))
    .fetch_all(db.pool())
    .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for row in &rows {
        counts.push((
            column::<String>(row, "kind")?,
            column::<i64>(row, "due")?,
            column::<i64>(row, "overdue")?,
        ));
    }
    let of = |kind: &DeadlineKind| {
        counts
            .iter()
            .find(|(code, _, _)| code == kind.code())
            .map_or((0, 0), |(_, due, overdue)| (*due, *overdue))
    };
    let attributes = |kind: &DeadlineKind| vec![KeyValue::new("kind", kind.code())];
    Ok((
        DeadlineKind::ALL
            .iter()
            .map(|kind| (of(kind).0, attributes(kind)))
            .collect(),
        DeadlineKind::ALL
            .iter()
            .map(|kind| (of(kind).1, attributes(kind)))
            .collect(),
    ))
}
