//! How many round trips each mutating RPC makes to PostgreSQL, counted from sqlx's own
//! statement log while whole returns run through the suite over gRPC: a change is a few
//! round trips (its reads, one batch of writes, COMMIT), not one per row it touches. sqlx
//! queues BEGIN and sends it with the transaction's first statement, so BEGIN is no round
//! trip of its own and is not in the log.
//!
//! PostgreSQL only: sqlx logs a PostgreSQL statement in the task that awaits it (inside the
//! call's `grpc.request` span), but a SQLite statement on the connection's own thread, where
//! no request span is current, so there is nothing to attribute on SQLite. (SQLite's writes
//! are one hop per batch to its writer thread, which `write_batch` tests on both backends.)

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use returns::stories::Stage;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Most round trips one call of each RPC may make, COMMIT included: every RPC the whole
/// returns below call is rebuilt on deferred writes (reads merged, every write in one batch
/// with the key); docs/performance.md lists them.
const BOUNDS: &[(&str, usize)] = &[
    ("/returns.disputes.v1.DisputeService/RecordOrder", 4),
    // The order read, then the writes as one self-checking statement outside any
    // transaction (no BEGIN, no COMMIT).
    ("/returns.disputes.v1.DisputeService/OpenDispute", 2),
    ("/returns.disputes.v1.DisputeService/AcceptOffer", 3),
    ("/returns.disputes.v1.DisputeService/RecordReturnEvent", 4),
    // The authorisation read before the transaction (to take the carrier's serial), then
    // the authorisation locked, the batch, COMMIT: 4; one more with a free return (the quota
    // upsert); and the call that uses up its process's block of a carrier's serials (one in
    // a hundred) takes the next block first, in a transaction of its own: two more.
    ("/returns.labels.v1.ReturnLabelService/CreateReturnLabel", 6),
    // Relayed: the order's lock, the inbox, the capture's lock, the balance and return
    // reports in one read, then the refund row, its ledger entry and the key in one batch.
    ("/returns.refunds.v1.RefundService/CreateRefund", 6),
    // The inbox, the capture's lock, the gated refunds' lock, the order's return reports
    // (only when a gate may open), the batch (the report, the refunds, the ledger), COMMIT.
    ("/returns.refunds.v1.RefundService/RecordReturnProgress", 6),
    // Relayed: the authorisation's lock, the inbox, the upsert (the reply is built from what
    // was written, not read back), COMMIT.
    ("/returns.labels.v1.ReturnLabelService/AuthoriseReturn", 4),
    // The label's lock, its scans and latest pickup in one read, the batch, COMMIT.
    ("/returns.labels.v1.ReturnLabelService/RecordInspection", 4),
    // The label's lock, the carrier's event id, a pickup's confirmation or closing when the
    // scan says so, the label's scans and latest pickup in one read, the batch (the scan,
    // the label, the outbox), COMMIT.
    (
        "/returns.labels.v1.ReturnLabelService/ReportTrackingEvent",
        6,
    ),
];

/// Round trips of each finished call, by RPC path.
type Counts = Arc<Mutex<BTreeMap<String, Vec<usize>>>>;

/// Counts sqlx's statement events (one per statement awaited) inside each `grpc.request`
/// span.
struct CountStatements {
    finished: Counts,
}

/// Kept on a `grpc.request` span: its RPC and the statements seen so far.
struct Call {
    method: String,
    statements: usize,
}

struct MethodField(Option<String>);

impl Visit for MethodField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "rpc.method" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for CountStatements
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attributes.metadata().name() != "grpc.request" {
            return;
        }
        let mut method = MethodField(None);
        attributes.record(&mut method);
        if let (Some(method), Some(span)) = (method.0, ctx.span(id)) {
            span.extensions_mut().insert(Call {
                method,
                statements: 0,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(call) = span.extensions_mut().get_mut::<Call>() {
                call.statements += 1;
                return;
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if let Some(call) = span.extensions_mut().remove::<Call>() {
            self.finished
                .lock()
                .expect("counts lock")
                .entry(call.method)
                .or_default()
                .push(call.statements);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_a_handful_of_round_trips_on_postgres() {
    if std::env::var(returns_platform::testing::POSTGRES_URL_VAR).is_err() {
        return;
    }
    let finished = Counts::default();
    tracing_subscriber::registry()
        .with(CountStatements {
            finished: finished.clone(),
        })
        .try_init()
        .expect("the only subscriber in this test binary");

    let suite = support::RunningSuite::start().await;
    let mut stage = Stage::connect(suite.addresses, suite.context.issuer.clone())
        .await
        .expect("connect");
    for n in 0..3 {
        stage.whole_return(n).await.expect("a whole return");
    }
    stage.wait_until_quiet().await.expect("quiet");
    suite.stop().await.expect("stops");

    let counts = finished.lock().expect("counts lock").clone();
    for (method, bound) in BOUNDS {
        let calls = counts
            .get(*method)
            .unwrap_or_else(|| panic!("no call of {method} was seen; saw {counts:?}"));
        let most = calls.iter().copied().max().unwrap_or(0);
        assert!(
            most >= 2,
            "{method}: {calls:?} round trips per call; a change is at least a write and its \
             COMMIT, so the counting is broken"
        );
        assert!(
            most <= *bound,
            "{method} made {most} round trips in one call (bound {bound}); every RPC: {counts:?}"
        );
    }
}
