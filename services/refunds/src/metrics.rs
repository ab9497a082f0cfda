//! The refunds service's own metrics: refunds by status (read from the database at each
//! collection), and what the settlement worker sees: provider calls by kind and outcome, and
//! settlement latency, from a refund's release to its final outcome on the business clock.
//! RPC, outbox and pool metrics come from the platform.

use returns_domain::refund::RefundStatus;
use returns_platform::db::column;
use returns_platform::metrics::{Counter, Histogram, KeyValue, Points};
use returns_platform::{ApiError, Application, Database};

use crate::store::RefundRow;

/// Bucket bounds of the settlement latency, in seconds: from an hour (instant wallets) to
/// the 15 business days (three weeks of calendar time) a card refund may take, and beyond.
const SETTLEMENT_BOUNDS_S: &[f64] = &[
    3600.0,
    6.0 * 3600.0,
    86_400.0,
    2.0 * 86_400.0,
    3.0 * 86_400.0,
    5.0 * 86_400.0,
    7.0 * 86_400.0,
    10.0 * 86_400.0,
    14.0 * 86_400.0,
    21.0 * 86_400.0,
    30.0 * 86_400.0,
    45.0 * 86_400.0,
];

/// Registers the refunds-by-status gauge on `app`'s meter, over its database.
pub fn register(app: &Application) {
    let Some(db) = app.database().cloned() else {
        return;
    };
    let by_status =
        app.metrics()
            .gauge_readings("returns.refund.count", "{refund}", "Refunds by status");
    app.metrics().refresh_before_collect(move || {
        let (db, by_status) = (db.clone(), by_status.clone());
        async move {
            match refunds_by_status(&db).await {
                Ok(points) => by_status.set(points),
                Err(error) => {
                    tracing::warn!(%error, "cannot count refunds for metrics");
                    by_status.set(Vec::new());
                }
            }
        }
    });
}

/// Every status, 0 when empty.
async fn refunds_by_status(db: &Database) -> Result<Points, ApiError> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM refunds GROUP BY status")
        .fetch_all(db.pool())
        .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for row in &rows {
        counts.push((column::<String>(row, "status")?, column::<i64>(row, "n")?));
    }
    Ok(RefundStatus::ALL
        .iter()
        .map(|status| {
            let n = counts
                .iter()
                .find(|(code, _)| code == status.code())
                .map_or(0, |(_, n)| *n);
            (n, vec![KeyValue::new("status", status.code())])
        })
        .collect())
}

/// The settlement worker's instruments.
#[derive(Debug, Clone)]
pub struct SettlementMetrics {
    provider_calls: Counter<u64>,
    settlement: Histogram<f64>,
}

impl SettlementMetrics {
    /// The instruments on `app`'s meter.
    pub fn new(app: &Application) -> Self {
        let meter = app.metrics().meter();
        SettlementMetrics {
            provider_calls: meter
                .u64_counter("returns.refund.provider.calls")
                .with_unit("{call}")
                .with_description(
                    "Payment provider calls by kind (submit, status) and recorded outcome",
                )
                .build(),
            settlement: meter
                .f64_histogram("returns.refund.settlement.duration")
                .with_unit("s")
                .with_description(
                    "From a refund's release to its final outcome, on the business clock",
                )
                .with_boundaries(SETTLEMENT_BOUNDS_S.to_vec())
                .build(),
        }
    }

    /// One provider call of `kind` whose `outcome` was just committed for `refund`, at
    /// business instant `now_micros`; a final outcome also records the settlement latency.
    pub fn attempt(&self, kind: &'static str, outcome: &str, refund: &RefundRow, now_micros: i64) {
        self.provider_calls.add(
            1,
            &[
                KeyValue::new("kind", kind),
                KeyValue::new("outcome", outcome.to_string()),
            ],
        );
        if matches!(outcome, "succeeded" | "failed") {
            let released = refund.released_at.unwrap_or(refund.created_at);
            let seconds = now_micros.saturating_sub(released).max(0) as f64 / 1_000_000.0;
            self.settlement.record(
                seconds,
                &[
                    KeyValue::new("outcome", outcome.to_string()),
                    KeyValue::new("payment_method", refund.method.code()),
                ],
            );
        }
    }
}
