//! Metrics of one service: an OpenTelemetry meter provider with the service as its own
//! resource (`service.name = returns-<service>`), read on demand for the Prometheus text
//! format on the admin port's `/metrics`, and pushed over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! What every service gets from here, through the server bootstrap: `rpc.server.duration`
//! for every RPC (a tower layer around the whole stack, so refusals by auth and the edge
//! count too), the outbox (pending, oldest pending age, dead per destination, deliveries by
//! outcome) and the database pool. Services add their own instruments on the same meter.
//!
//! Gauges that need a query are refreshed right before each collection (and periodically
//! when OTLP export is on): OpenTelemetry's callbacks are synchronous, so the query runs
//! first and the callback reports what it found.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use tokio::net::TcpListener;

use crate::Database;
use crate::db::column;

// What services need to record their own measurements, without depending on
// OpenTelemetry's crates themselves.
pub use opentelemetry::KeyValue;
pub use opentelemetry::metrics::{Counter, Histogram};

/// The `service.name` of a service's traces and metrics: `returns-disputes` and so on, the
/// same in the launcher as in the separate binaries.
pub fn resource_name(service: &str) -> String {
    format!("returns-{service}")
}

/// How long one collection may spend on its queries before it reports what it has.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often query-backed gauges are refreshed for OTLP export (a scrape refreshes them
/// itself).
const EXPORT_REFRESH_EVERY: Duration = Duration::from_secs(15);

/// A time counter of SQLite's writer, read from its stats.
type WriterTime = fn(&crate::db::GroupCommitStats) -> Duration;
/// A counter read from a database's statistics: its name, unit, description and reader.
type StatsCount<Stats> = (&'static str, &'static str, &'static str, fn(&Stats) -> u64);

/// Bucket bounds of `rpc.server.duration`, in milliseconds: the SDK's defaults start at
/// 5 ms, where most of this suite's calls end, so the low end is finer.
const RPC_DURATION_BOUNDS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// One service's metrics: cheap to clone, shared by its server, workers and admin port.
#[derive(Clone)]
pub struct ServiceMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkMeterProvider,
    meter: Meter,
    scrape: SharedReader,
    refreshers: Mutex<Vec<Refresh>>,
    /// Whether an OTLP exporter reads this provider too (then gauges refresh on a timer).
    exporting: bool,
}

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMetrics")
            .field("exporting", &self.inner.exporting)
            .finish_non_exhaustive()
    }
}

/// The manual reader, shared between the provider (which owns its reader) and the scrape.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot collect metrics: {0}")]
pub struct CollectError(String);

impl ServiceMetrics {
    /// A meter provider for `service` (`disputes`, ...). With `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// set it also exports over OTLP/gRPC (on the tokio runtime, which must be running); if
    /// that exporter cannot be built, the error is logged and `/metrics` still works.
    pub fn new(service: &str) -> ServiceMetrics {
        let resource = crate::telemetry::resource(resource_name(service));
        let scrape = SharedReader(Arc::new(ManualReader::builder().build()));
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(scrape.clone());
        let mut exporting = false;
        if crate::telemetry::otlp_endpoint().is_some()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            match opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
            {
                Ok(exporter) => {
                    // The runtime-driven reader exports from a tokio task: the tonic exporter
                    // needs a reactor, which the SDK's thread-based reader does not have.
                    let reader =
                        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                            exporter,
                            opentelemetry_sdk::runtime::Tokio,
                        )
                        .build();
                    builder = builder.with_reader(reader);
                    exporting = true;
                }
                Err(error) => {
                    tracing::error!(%error, service, "cannot build the OTLP metric exporter; metrics stay on /metrics only");
                }
            }
        }
        let provider = builder.build();
        let meter = provider.meter("returns");
        ServiceMetrics {
            inner: Arc::new(Inner {
                provider,
                meter,
                scrape,
                refreshers: Mutex::new(Vec::new()),
                exporting,
            }),
        }
    }

    /// The service's meter, for its own instruments.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// Whether an OTLP exporter reads these metrics too.
    pub fn exporting(&self) -> bool {
        self.inner.exporting
    }

    /// Runs `refresh` before every collection (a scrape, or the OTLP timer): where a gauge
    /// backed by a query runs that query and stores what [`Readings`] report.
    pub fn refresh_before_collect<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let refresh: Refresh = Arc::new(move || Box::pin(refresh()));
        if let Ok(mut refreshers) = self.inner.refreshers.lock() {
            refreshers.push(refresh);
        }
    }

    /// Runs every registered refresh, together, for at most a few seconds.
    pub async fn refresh(&self) {
        let refreshers: Vec<Refresh> = match self.inner.refreshers.lock() {
            Ok(refreshers) => refreshers.clone(),
            Err(_) => return,
        };
        let all = futures::future::join_all(refreshers.iter().map(|refresh| refresh()));
        if tokio::time::timeout(REFRESH_TIMEOUT, all).await.is_err() {
            tracing::warn!("metric queries took over 5 s; reporting the previous readings");
        }
    }

    /// A gauge whose points are whatever its [`Readings`] last stored.
    pub fn gauge_readings(
        &self,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Readings {
        let readings = Readings::default();
        let observed = readings.clone();
        self.inner
            .meter
            .i64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |gauge| observed.observe(gauge))
            .build();
        readings
    }

    /// The Prometheus text exposition (format 0.0.4) of everything the service records,
    /// after refreshing the query-backed gauges.
    pub async fn render(&self) -> Result<String, CollectError> {
        self.refresh().await;
        let mut collected = ResourceMetrics::default();
        self.inner
            .scrape
            .collect(&mut collected)
            .map_err(|error| CollectError(error.to_string()))?;
        Ok(prometheus_text(&collected))
    }

    /// Flushes the OTLP exporter (if any) and stops the provider: what a stopping server
    /// does, so the last interval's measurements are not lost. Blocks, so it runs off the
    /// async workers (the runtime-driven reader needs one to flush).
    pub async fn shutdown(&self) {
        if !self.inner.exporting {
            return;
        }
        let provider = self.inner.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            eprintln!("flushing metrics at exit failed: {error}");
        }
    }

    /// Refreshes the query-backed gauges every few seconds for the OTLP reader, which
    /// collects on its own timer; runs while the server runs.
    pub async fn refresh_forever(self) {
        let mut tick = tokio::time::interval(EXPORT_REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }

    /// `rpc.server.duration` around a server's whole stack.
    pub fn rpc_layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            duration: self
                .inner
                .meter
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("Duration of inbound RPCs, until the status is sent")
                .with_boundaries(RPC_DURATION_BOUNDS_MS.to_vec())
                .build(),
        }
    }

    /// `returns.outbox.deliveries`: delivery attempts by destination and outcome
    /// (`delivered`, `retrying`, `dead`), counted by the relay.
    pub fn outbox_deliveries(&self) -> Counter<u64> {
        self.inner
            .meter
            .u64_counter("returns.outbox.deliveries")
            .with_unit("{delivery}")
            .with_description("Outbox delivery attempts by destination and outcome")
            .build()
    }

    /// The connections of the database pool, in use and idle, read at collection time
    /// (`db.client.connection.count` and `.max`, the OpenTelemetry database conventions);
    /// on SQLite also its one writer (see [`Metrics::observe_writer`]), on PostgreSQL its
    /// combined writes (see [`Metrics::observe_combined_writes`]).
    pub fn observe_pool(&self, service: &'static str, db: &Database) {
        self.observe_writer(service, db);
        self.observe_combined_writes(service, db);
        let counted = db.clone();
        self.inner
            .meter
            .i64_observable_gauge("db.client.connection.count")
            .with_unit("{connection}")
            .with_description("Connections of the database pool by state")
            .with_callback(move |gauge| {
                let size = i64::from(counted.pool().size());
                let idle = i64::try_from(counted.idle_connections())
                    .unwrap_or(i64::MAX)
                    .min(size);
                for (state, count) in [("used", size - idle), ("idle", idle)] {
                    gauge.observe(
                        count,
                        &[
                            KeyValue::new("db.client.connection.state", state),
                            KeyValue::new("db.client.connection.pool.name", service),
                        ],
                    );
                }
            })
            .build();
        let pool = db.pool().clone();
        self.inner
            .meter
            .i64_observable_gauge("db.client.connection.max")
            .with_unit("{connection}")
            .with_description("Most connections the database pool opens")
            .with_callback(move |gauge| {
                gauge.observe(
                    i64::from(pool.options().get_max_connections()),
                    &[KeyValue::new("db.client.connection.pool.name", service)],
                );
            })
            .build();
    }

    /// SQLite's group commit, the capacity bound of a SQLite service's writes: seconds its one
    /// writer was held (`returns.db.writer.busy`; its rate is the writer's utilisation, near
    /// 1 it is saturated), seconds writers waited for a turn (`.wait`), transactions
    /// committed and COMMITs issued (`.transactions`, `.batches`). Nothing on PostgreSQL.
    fn observe_writer(&self, service: &'static str, db: &Database) {
        if db.group_commit_stats().is_none() {
            return;
        }
        let pool = [KeyValue::new("db.client.connection.pool.name", service)];
        let times: [(&str, &str, WriterTime); 2] = [
            (
                "returns.db.writer.busy",
                "Time SQLite's one writer was held by write transactions",
                |stats| stats.held,
            ),
            (
                "returns.db.writer.wait",
                "Time write transactions waited for their turn on SQLite's writer",
                |stats| stats.waited,
            ),
        ];
        for (name, description, read) in times {
            let (db, attributes) = (db.clone(), pool.clone());
            self.inner
                .meter
                .f64_observable_counter(name)
                .with_unit("s")
                .with_description(description)
                .with_callback(move |counter| {
                    if let Some(stats) = db.group_commit_stats() {
                        counter.observe(read(&stats).as_secs_f64(), &attributes);
                    }
                })
                .build();
        }
        let counts: [StatsCount<crate::db::GroupCommitStats>; 2] = [
            (
                "returns.db.writer.transactions",
                "{transaction}",
                "Write transactions made durable by SQLite's group commit",
                |stats| stats.transactions,
            ),
            (
                "returns.db.writer.batches",
                "{batch}",
                "COMMITs of SQLite's group commit (one fsync each)",
                |stats| stats.batches,
            ),
        ];
        self.observe_counts(db, &pool, counts, Database::group_commit_stats);
    }

    /// Counters read at collection time from `stats` of `db` (none while it has none).
    fn observe_counts<Stats: 'static, const N: usize>(
        &self,
        db: &Database,
        attributes: &[KeyValue],
        counts: [StatsCount<Stats>; N],
        stats: fn(&Database) -> Option<Stats>,
    ) {
        for (name, unit, description, read) in counts {
            let (db, attributes) = (db.clone(), attributes.to_vec());
            self.inner
                .meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |counter| {
                    if let Some(stats) = stats(&db) {
                        counter.observe(read(&stats), &attributes);
                    }
                })
                .build();
        }
    }

    /// PostgreSQL's combined writes (`returns_platform::combined_writes`): statements run
    /// for transactions of one batch alone (`returns.db.combined.statements`), batches
    /// committed in a statement shared with others (`.members`; against the statements, how
    /// much sharing the load brings) and shared statements that failed and whose members ran
    /// again alone (`.fallbacks`; a steady rate means changes colliding on the same rows).
    /// Nothing on SQLite.
    fn observe_combined_writes(&self, service: &'static str, db: &Database) {
        if db.combined_write_stats().is_none() {
            return;
        }
        let pool = [KeyValue::new("db.client.connection.pool.name", service)];
        let counts: [StatsCount<crate::db::CombinedWriteStats>; 3] = [
            (
                "returns.db.combined.statements",
                "{statement}",
                "Statements run for PostgreSQL transactions of one write batch alone",
                |stats| stats.statements,
            ),
            (
                "returns.db.combined.members",
                "{transaction}",
                "Transactions committed in a statement shared with others",
                |stats| stats.combined_members,
            ),
            (
                "returns.db.combined.fallbacks",
                "{statement}",
                "Shared statements that failed; their transactions ran again alone",
                |stats| stats.fallbacks,
            ),
        ];
        self.observe_counts(db, &pool, counts, Database::combined_write_stats);
    }

    /// The outbox of `db` per destination: pending, oldest pending age (wall clock) and
    /// dead, from two grouped counts that each match one of the outbox's partial indexes.
    pub fn observe_outbox(&self, service: &'static str, db: &Database) {
        let pending = self.gauge_readings(
            "returns.outbox.pending",
            "{message}",
            "Outbox messages waiting for delivery, by destination",
        );
        let oldest = self.gauge_readings(
            "returns.outbox.oldest_pending.age",
            "s",
            "Age of the oldest outbox message waiting for delivery, by destination",
        );
        let dead = self.gauge_readings(
            "returns.outbox.dead",
            "{message}",
            "Dead outbox messages waiting for an operator, by destination",
        );
        let db = db.clone();
        self.refresh_before_collect(move || {
            let (db, pending, oldest, dead) =
                (db.clone(), pending.clone(), oldest.clone(), dead.clone());
            async move {
                match outbox_by_destination(&db, service).await {
                    Ok(rows) => {
                        let now = crate::outbox::wall_micros();
                        let by = |f: &dyn Fn(&OutboxRow) -> i64| {
                            rows.iter()
                                .map(|row| {
                                    (
                                        f(row),
                                        vec![KeyValue::new("destination", row.destination.clone())],
                                    )
                                })
                                .collect::<Vec<_>>()
                        };
                        pending.set(by(&|row| row.pending));
                        dead.set(by(&|row| row.dead));
                        oldest.set(by(&|row| {
                            row.oldest_pending
                                .map_or(0, |created| now.saturating_sub(created).max(0) / 1_000_000)
                        }));
                    }
                    Err(error) => {
                        tracing::warn!(%error, service, "cannot read the outbox for metrics");
                        for readings in [&pending, &oldest, &dead] {
                            readings.set(Vec::new());
                        }
                    }
                }
            }
        });
    }
}

/// The latest points of a query-backed gauge: stored by a refresh, reported by the gauge's
/// callback at collection time.
#[derive(Debug, Clone, Default)]
pub struct Readings(Arc<Mutex<Points>>);

/// A gauge's points: each value with its attributes.
pub type Points = Vec<(i64, Vec<KeyValue>)>;

impl Readings {
    /// Replaces the points (a point missing now is not reported any more).
    pub fn set(&self, points: Points) {
        if let Ok(mut current) = self.0.lock() {
            *current = points;
        }
    }

    fn observe(&self, gauge: &dyn AsyncInstrument<i64>) {
        if let Ok(points) = self.0.lock() {
            for (value, attributes) in points.iter() {
                gauge.observe(*value, attributes);
            }
        }
    }
}

/// One destination's line of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutboxRow {
    destination: String,
    pending: i64,
    dead: i64,
    oldest_pending: Option<i64>,
}

/// Every other service is a destination (reported as 0 until something is sent there), plus
/// any destination found in the table.
async fn outbox_by_destination(
    db: &Database,
    service: &str,
) -> Result<Vec<OutboxRow>, crate::ApiError> {
    let mut rows: BTreeMap<String, OutboxRow> = ["disputes", "labels", "refunds"]
        .into_iter()
        .filter(|destination| *destination != service)
        .map(|destination| {
            (
                destination.to_string(),
                OutboxRow {
                    destination: destination.to_string(),
                    pending: 0,
                    dead: 0,
                    oldest_pending: None,
                },
            )
        })
        .collect();
    let blank = |destination: &str| OutboxRow {
        destination: destination.to_string(),
        pending: 0,
        dead: 0,
        oldest_pending: None,
    };
    for row in sqlx::query(
        "SELECT destination, COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox \
         WHERE delivered_at IS NULL AND dead_at IS NULL GROUP BY destination",
    )
    .fetch_all(db.pool())
    .await?
    {
        let destination: String = column(&row, "destination")?;
        let entry = rows
            .entry(destination.clone())
            .or_insert_with(|| blank(&destination));
        entry.pending = column(&row, "pending")?;
        entry.oldest_pending = column(&row, "oldest")?;
    }
    for row in sqlx::query(
        "SELECT destination, COUNT(*) AS dead FROM outbox \
         WHERE dead_at IS NOT NULL AND discarded_at IS NULL AND delivered_at IS NULL \
         GROUP BY destination",
    )
    .fetch_all(db.pool())
    .await?
    {
        let destination: String = column(&row, "destination")?;
        rows.entry(destination.clone())
            .or_insert_with(|| blank(&destination))
            .dead = column(&row, "dead")?;
    }
    Ok(rows.into_values().collect())
}

// ---------------------------------------------------------------------------------------
// rpc.server.duration

type Body = tonic::body::Body;

/// Records `rpc.server.duration` for every call through the stack it wraps.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    duration: Histogram<f64>,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around a server's stack.
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S> tower::Service<http::Request<Body>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone serves this call; the instance polled ready stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = RpcCall::start(self.duration.clone(), request.uri().path());
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(call.follow(response))
        })
    }
}

/// One call being measured. Recorded once: when its status is known, or as CANCELLED if
/// it is dropped before (the client went away).
struct RpcCall {
    duration: Histogram<f64>,
    started: Instant,
    attributes: Option<[KeyValue; 3]>,
}

/// gRPC's CANCELLED and UNKNOWN codes.
const CANCELLED: i64 = 1;
const UNKNOWN: i64 = 2;

impl RpcCall {
    fn start(duration: Histogram<f64>, path: &str) -> RpcCall {
        let (service, method) = rpc_name(path);
        RpcCall {
            duration,
            started: Instant::now(),
            attributes: Some([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ]),
        }
    }

    fn record(&mut self, code: i64) {
        if let Some([system, service, method]) = self.attributes.take() {
            let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            self.duration.record(
                elapsed_ms,
                &[
                    system,
                    service,
                    method,
                    KeyValue::new("rpc.grpc.status_code", code),
                ],
            );
        }
    }

    /// Records a trailers-only answer (every error) at once; otherwise follows the body to
    /// its trailers, where a successful call's status is.
    fn follow(mut self, response: http::Response<Body>) -> http::Response<Body> {
        if let Some(code) = grpc_status(response.headers()) {
            self.record(code);
            return response;
        }
        let (parts, body) = response.into_parts();
        http::Response::from_parts(
            parts,
            Body::new(UntilTrailers {
                inner: body,
                call: self,
            }),
        )
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        self.record(CANCELLED);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

/// A response body that records its call when the trailers go out.
struct UntilTrailers {
    inner: Body,
    call: RpcCall,
}

impl http_body::Body for UntilTrailers {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(UNKNOWN);
                    self.call.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.call.record(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `rpc.service` and `rpc.method` of `path` (`/pkg.Service/Method`) when it names a method
/// this suite serves; anything else is `_OTHER`, so random paths cannot grow the number of
/// series without bound.
fn rpc_name(path: &str) -> (String, String) {
    const OTHER: &str = "_OTHER";
    const WELL_KNOWN: &[&str] = &[
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let known = path
        .strip_prefix('/')
        .and_then(|name| name.split_once('/'))
        .filter(|(service, method)| {
            WELL_KNOWN.contains(&&path[1..])
                || contracts().is_some_and(|pool| {
                    pool.get_service_by_name(service)
                        .is_some_and(|s| s.methods().any(|m| m.name() == *method))
                })
        });
    match known {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (OTHER.to_string(), OTHER.to_string()),
    }
}

/// The suite's contracts, decoded once.
fn contracts() -> Option<&'static prost_reflect::DescriptorPool> {
    static POOL: OnceLock<Option<prost_reflect::DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(returns_proto::FILE_DESCRIPTOR_SET).ok()
    })
    .as_ref()
}

// ---------------------------------------------------------------------------------------
// The admin port

/// Serves `GET /metrics` (the Prometheus text format) on `listener` until dropped; any other
/// path is 404. HTTP/1.1, one task per connection, all stopped with the server.
pub async fn serve_admin(listener: TcpListener, metrics: ServiceMetrics) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "admin port: accept failed");
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&metrics, &request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin port: connection ended with an error");
            }
        });
    }
}

/// Binds the admin port at `addr` (port 0 for an ephemeral one).
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

type AdminBody = http_body_util::Full<bytes::Bytes>;

async fn answer<B>(
    metrics: &ServiceMetrics,
    request: &http::Request<B>,
) -> http::Response<AdminBody> {
    let reply = |status: http::StatusCode, content_type: &'static str, text: String| {
        let mut response = http::Response::new(AdminBody::new(bytes::Bytes::from(text)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            TEXT,
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET\n".into(),
        );
    }
    match metrics.render().await {
        Ok(text) => reply(
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        ),
        Err(error) => {
            tracing::error!(%error, "admin port: cannot collect metrics");
            reply(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "cannot collect metrics; the server log has the cause\n".into(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Prometheus text format, following OpenTelemetry's Prometheus compatibility rules:
// dots become underscores, the unit is a suffix (`_milliseconds`, `_seconds`), monotonic
// sums are counters ending in `_total`, and the resource is `target_info`.

fn prometheus_text(collected: &ResourceMetrics) -> String {
    let mut out = String::new();
    // Sorted, so the resource reads the same on every scrape.
    let resource_labels: Vec<(String, String)> = collected
        .resource()
        .iter()
        .map(|(key, value)| (label_name(key.as_str()), value.as_str().into_owned()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
    let _ = writeln!(out, "target_info{} 1", labels(&resource_labels, None));
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(data) => family(&mut out, metric, data),
                AggregatedMetrics::U64(data) => family(&mut out, metric, data),
                AggregatedMetrics::I64(data) => family(&mut out, metric, data),
            }
        }
    }
    out
}

/// A sample value as Prometheus writes numbers.
trait Sample: Copy {
    fn text(self) -> String;
}

impl Sample for f64 {
    fn text(self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            self.to_string()
        }
    }
}

impl Sample for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Sample for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

fn family<T: Sample>(
    out: &mut String,
    metric: &opentelemetry_sdk::metrics::data::Metric,
    data: &MetricData<T>,
) {
    let base = format!(
        "{}{}",
        metric_name(metric.name()),
        unit_suffix(metric.unit())
    );
    let help = metric
        .description()
        .replace('\\', "\\\\")
        .replace('\n', "\\n");
    let point_labels = |attributes: &mut dyn Iterator<Item = &KeyValue>| -> Vec<(String, String)> {
        attributes
            .map(|kv| (label_name(kv.key.as_str()), kv.value.as_str().into_owned()))
            .collect()
    };
    match data {
        MetricData::Gauge(gauge) => {
            header(out, &base, &help, "gauge");
            for point in gauge.data_points() {
                let labels = labels(&point_labels(&mut point.attributes()), None);
                let _ = writeln!(out, "{base}{labels} {}", point.value().text());
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.clone(), "gauge")
            };
            header(out, &name, &help, kind);
            for point in sum.data_points() {
                let labels = labels(&point_labels(&mut point.attributes()), None);
                let _ = writeln!(out, "{name}{labels} {}", point.value().text());
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, &base, &help, "histogram");
            for point in histogram.data_points() {
                let own = point_labels(&mut point.attributes());
                let mut cumulative = 0_u64;
                let counts: Vec<u64> = point.bucket_counts().collect();
                for (bound, count) in point.bounds().zip(counts.iter()) {
                    cumulative += count;
                    let le = labels(&own, Some(bound.text()));
                    let _ = writeln!(out, "{base}_bucket{le} {cumulative}");
                }
                let le = labels(&own, Some("+Inf".into()));
                let _ = writeln!(out, "{base}_bucket{le} {}", point.count());
                let plain = labels(&own, None);
                let _ = writeln!(out, "{base}_sum{plain} {}", point.sum().text());
                let _ = writeln!(out, "{base}_count{plain} {}", point.count());
            }
        }
        // Not configured by any instrument of the suite.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="1",b="2"}` (with `le` last for buckets), or nothing without labels.
fn labels(pairs: &[(String, String)], le: Option<String>) -> String {
    let mut parts: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric name with every character Prometheus does not allow replaced by `_`.
fn metric_name(name: &str) -> String {
    sanitize(name, true)
}

fn label_name(name: &str) -> String {
    sanitize(name, false)
}

fn sanitize(name: &str, colons: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The unit as a name suffix: `ms` is `_milliseconds`, `s` is `_seconds`; annotations such
/// as `{message}` say what is counted and add nothing.
fn unit_suffix(unit: &str) -> String {
    let unit = match unit.find('{') {
        Some(start) => &unit[..start],
        None => unit,
    };
    let word = match unit {
        "" | "1" => return String::new(),
        "ms" => "milliseconds",
        "s" => "seconds",
        "us" => "microseconds",
        "min" => "minutes",
        "h" => "hours",
        "d" => "days",
        "By" => "bytes",
        other => other,
    };
    format!("_{}", sanitize(word, false))
}

/// Samples of a Prometheus text exposition, for tests and tools: `(name, labels, value)`.
pub fn parse_samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, BTreeMap::new()),
            };
            Some((name.to_string(), labels, value))
        })
        .collect()
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_text_format_follows_the_prometheus_compatibility_rules() {
        let metrics = ServiceMetrics::new("disputes");
        let calls = metrics
            .meter()
            .u64_counter("returns.test.calls")
            .with_unit("{call}")
            .with_description("Calls\nmade")
            .build();
        calls.add(3, &[KeyValue::new("rpc.method", "Say \"hi\"")]);
        let layer = metrics.rpc_layer();
        layer.duration.record(
            3.0,
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "returns.disputes.v1.DisputeService"),
                KeyValue::new("rpc.method", "OpenDispute"),
                KeyValue::new("rpc.grpc.status_code", 0_i64),
            ],
        );
        let gauge = metrics.gauge_readings("returns.test.depth", "{message}", "Depth");
        gauge.set(vec![(7, vec![KeyValue::new("destination", "refunds")])]);

        let text = metrics.render().await.expect("collects");
        assert!(
            text.contains("# TYPE returns_test_calls_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP returns_test_calls_total Calls\\nmade"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rpc_server_duration_milliseconds histogram"),
            "{text}"
        );
        let samples = parse_samples(&text);
        let find = |name: &str| {
            samples
                .iter()
                .filter(|(n, _, _)| n == name)
                .collect::<Vec<_>>()
        };
        let target = find("target_info");
        assert_eq!(target.len(), 1);
        assert_eq!(target[0].1["service_name"], "returns-disputes");
        assert!(target[0].1.contains_key("service_instance_id"), "{text}");
        let calls = find("returns_test_calls_total");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1["rpc_method"], "Say \"hi\"");
        assert_eq!(calls[0].2, 3.0);
        let count = find("rpc_server_duration_milliseconds_count");
        assert_eq!(count.len(), 1);
        assert_eq!(count[0].1["rpc_grpc_status_code"], "0");
        assert_eq!(count[0].2, 1.0);
        // Buckets are cumulative: 3 ms is above 2.5 and within 5.
        let buckets = find("rpc_server_duration_milliseconds_bucket");
        let le = |bound: &str| {
            buckets
                .iter()
                .find(|(_, labels, _)| labels["le"] == bound)
                .map(|(_, _, value)| *value)
        };
        assert_eq!(le("2.5"), Some(0.0));
        assert_eq!(le("5"), Some(1.0));
        assert_eq!(le("+Inf"), Some(1.0));
        let depth = find("returns_test_depth");
        assert_eq!(depth.len(), 1);
        assert_eq!(depth[0].1["destination"], "refunds");
        assert_eq!(depth[0].2, 7.0);
    }

    #[test]
    fn only_methods_the_suite_serves_get_their_own_series() {
        assert_eq!(
            rpc_name("/returns.disputes.v1.DisputeService/OpenDispute"),
            (
                "returns.disputes.v1.DisputeService".to_string(),
                "OpenDispute".to_string()
            )
        );
        assert_eq!(
            rpc_name("/grpc.health.v1.Health/Check").1,
            "Check".to_string()
        );
        for path in [
            "/returns.disputes.v1.DisputeService/NoSuchMethod",
            "/x.Y/Z",
            "/",
            "nonsense",
        ] {
            assert_eq!(rpc_name(path), ("_OTHER".into(), "_OTHER".into()), "{path}");
        }
    }

    #[test]
    fn units_become_suffixes_and_names_lose_dots() {
        assert_eq!(unit_suffix("ms"), "_milliseconds");
        assert_eq!(unit_suffix("{message}"), "");
        assert_eq!(unit_suffix("s"), "_seconds");
        assert_eq!(metric_name("rpc.server.duration"), "rpc_server_duration");
        assert_eq!(label_name("9lives.x"), "_9lives_x");
    }
}
