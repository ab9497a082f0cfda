//! `returns bench`: a private suite (`returns serve` in a child process: fresh databases,
//! ephemeral ports, a generated secret, the test clock held still) measured under closed-loop load
//! over real gRPC clients, then the acceptance figures of the speed issue computed from the
//! same run. It is a tool, not a test: it never asserts timings, and fails only when a
//! scenario could not run at all. docs/performance.md says what each scenario measures and
//! shows recorded runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use prost_types::Timestamp;
use returns_domain::dispute::Role;
use returns_domain::negotiation as n;
use returns_domain::time::to_unix_micros;
use returns_platform::config::{Config, Secret, redact_url, scrub_secrets};
use returns_platform::{Database, SuiteContext, TokenIssuer};
use returns_proto::common::v1::{
    Address, BuyerTier, DisputeReason, EvidenceKind, Money, PaymentMethod,
};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{
    DisputeKind, DisputeState, GetDisputeRequest, ListDisputesRequest, NewEvidence,
    OpenDisputeRequest, RecordOrderRequest, RequestedResolution, ResolutionType,
};
use returns_proto::labels::v1::return_label_service_client::ReturnLabelServiceClient;
use returns_proto::labels::v1::{CreateReturnLabelRequest, ReturnMethod};
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_proto::refunds::v1::{
    CreateRefundRequest, RecordCaptureRequest, RefundReason, ReleaseCondition,
};
use returns_proto::testing::v1::AdvanceClockRequest;
use returns_proto::testing::v1::test_clock_service_client::TestClockServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::SuiteAddresses;
use crate::stories::Stage;

/// Anything that stops the bench (or one scenario of it).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BenchError>;

/// Tokens outlive any run; they are signed once, before the timed windows.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Concurrent clients preparing fixtures (outside the timed windows).
const SETUP_PARALLELISM: usize = 32;
/// ListDisputes page size and depth of the deep-page scenarios.
const DEEP_PAGE_SIZE: i32 = 20;
const DEEP_PAGE: usize = 100;
/// Disputes per seeding transaction (and per chunk of buyers and sellers).
const SEED_CHUNK: usize = 10_000;
/// Rows per multi-row INSERT statement while seeding.
const SEED_ROWS_PER_STATEMENT: usize = 500;
/// Disputes of the one heavy buyer and heavy seller whose page 100 the deep scenarios read.
const HEAVY_DISPUTES: usize = 2_500;
/// How long a refused client waits when RESOURCE_EXHAUSTED carries no RetryInfo.
const REFUSED_BACKOFF: Duration = Duration::from_millis(50);
/// The overload level, as a multiple of a scenario's best concurrency.
const OVERLOAD_FACTOR: usize = 10;
/// Connections of the PostgreSQL insert loop OpenDispute is compared with (pgbench -c 32).
const INSERT_LOOP_CLIENTS: usize = 32;

/// `returns bench`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// sqlite (fresh files in a temp dir), or a PostgreSQL admin URL: four fresh databases
    /// (three services and the insert-loop baseline) are created through it and dropped
    /// afterwards.
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Disputes seeded before measuring, one size or several (e.g. 10000,1000000): the read
    /// scenarios run at every size, the write scenarios at the first. Seeded by batch
    /// INSERTs straight into the disputes database (the API is too slow for a million).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub seed_disputes: Vec<usize>,
    /// Concurrent closed-loop clients, one run per value, e.g. 1,8,64.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// Length of each timed window, in seconds (fractions allowed).
    #[arg(long, default_value_t = 3.0)]
    pub duration_secs: f64,
    /// all, or names separated by commas (health always runs too, as the baseline):
    /// health, get-dispute, list-by-buyer, list-by-seller, list-by-state,
    /// list-deep-by-buyer, list-deep-by-seller, list-deep-by-state, record-order,
    /// open-dispute, create-return-label, create-refund, whole-return.
    #[arg(long, default_value = "all")]
    pub scenarios: String,
    /// Requests in flight per service before it sheds (the suite's RETURNS_MAX_IN_FLIGHT);
    /// the suite's default when absent.
    #[arg(long)]
    pub max_in_flight: Option<usize>,
}

impl Args {
    /// Checks the arguments and turns them into [`Options`].
    pub fn options(self) -> std::result::Result<Options, String> {
        if self.concurrency.is_empty() || self.concurrency.contains(&0) {
            return Err("--concurrency takes positive numbers, e.g. 1,8,64".into());
        }
        if self.seed_disputes.is_empty() || self.seed_disputes.contains(&0) {
            return Err("--seed-disputes takes positive numbers, e.g. 10000,1000000".into());
        }
        let duration = self.duration_secs;
        if !(duration.is_finite() && duration > 0.0 && duration <= 3600.0) {
            return Err("--duration-secs takes a number of seconds above 0".into());
        }
        if self.max_in_flight == Some(0) {
            return Err("--max-in-flight takes a positive number".into());
        }
        let mut sizes = self.seed_disputes;
        sizes.sort_unstable();
        sizes.dedup();
        Ok(Options {
            database: self.database,
            seed_disputes: sizes,
            concurrency: self.concurrency,
            duration: Duration::from_secs_f64(duration),
            scenarios: Scenario::parse_list(&self.scenarios)?,
            max_in_flight: self.max_in_flight,
        })
    }
}

/// What `returns bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite`, or a PostgreSQL admin URL through which fresh databases are created.
    pub database: String,
    /// Dataset sizes, ascending: the disputes table is grown to each in turn.
    pub seed_disputes: Vec<usize>,
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub scenarios: Vec<Scenario>,
    pub max_in_flight: Option<usize>,
}

/// One measured operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Health,
    GetDispute,
    ListByBuyer,
    ListBySeller,
    ListByState,
    DeepByBuyer,
    DeepBySeller,
    DeepByState,
    RecordOrder,
    OpenDispute,
    CreateReturnLabel,
    CreateRefund,
    WholeReturn,
}

impl Scenario {
    /// Every scenario, in the order they run: reads on the seeded data first, then writes.
    pub const ALL: [Scenario; 13] = [
        Scenario::Health,
        Scenario::GetDispute,
        Scenario::ListByBuyer,
        Scenario::ListBySeller,
        Scenario::ListByState,
        Scenario::DeepByBuyer,
        Scenario::DeepBySeller,
        Scenario::DeepByState,
        Scenario::RecordOrder,
        Scenario::OpenDispute,
        Scenario::CreateReturnLabel,
        Scenario::CreateRefund,
        Scenario::WholeReturn,
    ];

    /// The name `--scenarios` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::GetDispute => "get-dispute",
            Scenario::ListByBuyer => "list-by-buyer",
            Scenario::ListBySeller => "list-by-seller",
            Scenario::ListByState => "list-by-state",
            Scenario::DeepByBuyer => "list-deep-by-buyer",
            Scenario::DeepBySeller => "list-deep-by-seller",
            Scenario::DeepByState => "list-deep-by-state",
            Scenario::RecordOrder => "record-order",
            Scenario::OpenDispute => "open-dispute",
            Scenario::CreateReturnLabel => "create-return-label",
            Scenario::CreateRefund => "create-refund",
            Scenario::WholeReturn => "whole-return",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Health => "Health/Check",
            Scenario::GetDispute => "GetDispute",
            Scenario::ListByBuyer => "ListDisputes by buyer",
            Scenario::ListBySeller => "ListDisputes by seller",
            Scenario::ListByState => "ListDisputes by state",
            Scenario::DeepByBuyer => "ListDisputes by buyer, deep",
            Scenario::DeepBySeller => "ListDisputes by seller, deep",
            Scenario::DeepByState => "ListDisputes by state, deep",
            Scenario::RecordOrder => "RecordOrder",
            Scenario::OpenDispute => "OpenDispute",
            Scenario::CreateReturnLabel => "CreateReturnLabel",
            Scenario::CreateRefund => "CreateRefund",
            Scenario::WholeReturn => "whole return (13 RPCs)",
        }
    }

    /// Reads of the seeded data (and the baseline): they run again at every dataset size.
    fn at_every_size(self) -> bool {
        matches!(
            self,
            Scenario::Health
                | Scenario::GetDispute
                | Scenario::ListByBuyer
                | Scenario::ListBySeller
                | Scenario::ListByState
                | Scenario::DeepByBuyer
                | Scenario::DeepBySeller
                | Scenario::DeepByState
        )
    }

    /// Scenarios whose every operation consumes something made beforehand.
    fn needs_fixtures(self) -> bool {
        matches!(
            self,
            Scenario::OpenDispute | Scenario::CreateReturnLabel | Scenario::CreateRefund
        )
    }

    /// `all`, or names separated by commas. Health/Check always runs as well (the baseline).
    pub fn parse_list(text: &str) -> std::result::Result<Vec<Scenario>, String> {
        if text.trim() == "all" {
            return Ok(Scenario::ALL.to_vec());
        }
        let mut chosen = vec![Scenario::Health];
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let scenario = Scenario::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!(
                        "unknown scenario {name:?}: use all, or some of {}",
                        names.join(",")
                    )
                })?;
            if !chosen.contains(&scenario) {
                chosen.push(scenario);
            }
        }
        // Run in the canonical order whatever order they were named in.
        chosen.sort_by_key(|s| Scenario::ALL.iter().position(|a| a == s));
        Ok(chosen)
    }
}

/// Runs the bench and prints its report; an error when a scenario could not run at all.
pub async fn run(options: Options) -> Result<()> {
    let backend = match options.database.as_str() {
        "sqlite" => None,
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(url.to_string())
        }
        other => {
            return Err(format!(
                "--database takes sqlite or a postgres:// admin URL, not {:?}",
                redact_url(other)
            )
            .into());
        }
    };
    let data = tempfile::tempdir()?;
    let mut config = Config {
        test_clock: true,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    let databases = match &backend {
        Some(admin) => Some(PostgresDatabases::create(admin).await?),
        None => None,
    };
    for (index, section) in [
        &mut config.disputes,
        &mut config.labels,
        &mut config.refunds,
    ]
    .into_iter()
    .enumerate()
    {
        section.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        section.database_url = databases.as_ref().map(|d| d.urls[index].clone());
    }
    let result = run_on(&options, &config, databases.as_ref()).await;
    if let Some(databases) = databases
        && let Err(error) = databases.drop_all().await
    {
        eprintln!("bench: could not drop the bench databases: {error}");
    }
    drop(data);
    result
}

/// The suite under test: `returns serve` in a child process of this one, so what it costs in
/// memory is its own and not its load clients'.
struct ChildSuite {
    child: tokio::process::Child,
    addresses: SuiteAddresses,
    /// The disputes service's Prometheus endpoint, for its SQLite writer's counters.
    disputes_metrics: Option<std::net::SocketAddr>,
}

impl ChildSuite {
    /// Starts this very binary as `returns serve` on `config`'s databases, ephemeral ports and
    /// the test clock, with nothing from this process's own RETURNS_* environment, and waits
    /// for it to print its endpoints.
    async fn start(config: &Config, secret: &Secret, max_in_flight: Option<usize>) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("serve");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RETURNS_") {
                command.env_remove(name);
            }
        }
        command
            .env("RETURNS_TEST_CLOCK", "true")
            .env("RETURNS_AUTH_SECRET", secret.expose())
            .env("RETURNS_POLICY", &config.policy)
            .env("RETURNS_DATA_DIR", &config.data_dir)
            // Read around the timed windows: how busy the disputes database's writer was.
            .env("RETURNS_DISPUTES_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn");
        for (name, section) in [
            ("DISPUTES", &config.disputes),
            ("LABELS", &config.labels),
            ("REFUNDS", &config.refunds),
        ] {
            command.env(format!("RETURNS_{name}_ADDR"), section.listen.to_string());
            if let Some(url) = &section.database_url {
                command.env(format!("RETURNS_{name}_DATABASE_URL"), url);
            }
        }
        if let Some(limit) = max_in_flight {
            command.env("RETURNS_MAX_IN_FLIGHT", limit.to_string());
        }
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the suite's stdout is not piped")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut disputes, mut labels, mut refunds) = (None, None, None);
        let mut disputes_metrics = None;
        while let Some(line) = lines.next_line().await? {
            if line.trim_start().starts_with("disputes") {
                disputes_metrics = line
                    .split("metrics http://")
                    .nth(1)
                    .and_then(|url| url.trim().strip_suffix("/metrics"))
                    .and_then(|addr| addr.parse().ok());
            }
            let mut words = line.split_whitespace();
            let address = |words: &mut std::str::SplitWhitespace<'_>| {
                words
                    .next()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            };
            match words.next() {
                Some("disputes") => disputes = address(&mut words),
                Some("labels") => labels = address(&mut words),
                Some("refunds") => refunds = address(&mut words),
                Some("get") => break,
                _ => {}
            }
        }
        let (Some(disputes), Some(labels), Some(refunds)) = (disputes, labels, refunds) else {
            return Err("the suite exited before printing its three endpoints".into());
        };
        // Keep draining its stdout, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ChildSuite {
            child,
            addresses: SuiteAddresses {
                disputes,
                labels,
                refunds,
            },
            disputes_metrics,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The clock of a suite on the test clock, read by moving it 0 seconds.
async fn suite_now(addresses: SuiteAddresses, secret: &Secret) -> Result<DateTime<Utc>> {
    let issuer = TokenIssuer::new(secret);
    let platform = bearer(&issuer, Role::Platform, "bench")?;
    let channel = Channel::from_shared(format!("http://{}", addresses.disputes))?
        .connect()
        .await?;
    let moved = TestClockServiceClient::new(channel)
        .advance_clock(call(&platform, AdvanceClockRequest { seconds: 0 }))
        .await?
        .into_inner();
    let now = moved.now.ok_or("AdvanceClock answered no time")?;
    DateTime::from_timestamp(now.seconds, u32::try_from(now.nanos).unwrap_or(0))
        .ok_or_else(|| "AdvanceClock answered an invalid time".into())
}

async fn run_on(
    options: &Options,
    config: &Config,
    databases: Option<&PostgresDatabases>,
) -> Result<()> {
    let secret = Secret::generate();
    let suite = ChildSuite::start(config, &secret, options.max_in_flight).await?;
    if let Some(pid) = suite.pid() {
        let _ = SUITE_PID.set(pid);
    }
    if let Some(metrics) = suite.disputes_metrics {
        let _ = DISPUTES_METRICS.set(metrics);
    }
    let addresses = suite.addresses;
    let start = suite_now(addresses, &secret).await?;
    // This process's view of the suite: the same secret (tokens), policy and clock reading.
    let context = SuiteContext::for_tests(
        secret,
        returns_domain::policy::Policy::named(&config.policy)?,
        start,
    );
    let backend = if databases.is_some() {
        returns_platform::db::Backend::Postgres
    } else {
        returns_platform::db::Backend::Sqlite
    };
    // What the child suite was started with (its own default when the flag is absent): the
    // report names it.
    let admission_limit = options
        .max_in_flight
        .unwrap_or_else(|| returns_platform::config::default_max_in_flight(backend));
    println!("# returns bench\n");
    println!("- machine: {}", machine());
    println!(
        "- backend: {}",
        match databases {
            Some(d) => format!(
                "PostgreSQL via {} (fresh databases {}, dropped afterwards){}",
                redact_url(&d.admin_url),
                d.names.join(", "),
                d.settings
            ),
            None => "SQLite (fresh files in a temporary directory)".to_string(),
        }
    );
    println!(
        "- suite: `returns serve` in a child process (pid {}), disputes {}, labels {}, refunds \
         {}; test clock held at {}; admission limit {} requests in flight per service",
        suite
            .pid()
            .map_or_else(|| "?".to_string(), |pid| pid.to_string()),
        addresses.disputes,
        addresses.labels,
        addresses.refunds,
        start.format("%Y-%m-%d %H:%M UTC"),
        admission_limit,
    );
    let disputes_url = config.database_url("disputes", &config.disputes);
    let result = bench(
        options,
        addresses,
        &context,
        start,
        &disputes_url,
        databases,
    )
    .await;
    let stopped = suite.stop().await;
    let result = result?;
    stopped?;
    result
}

/// Seeds, measures every scenario at every concurrency (reads at every dataset size), then
/// the overload levels and the acceptance figures; `Ok(Err)` when some could not run.
async fn bench(
    options: &Options,
    addresses: SuiteAddresses,
    context: &SuiteContext,
    now: DateTime<Utc>,
    disputes_url: &str,
    databases: Option<&PostgresDatabases>,
) -> Result<Result<()>> {
    let issuer = context.issuer.clone();
    let platform = bearer(&issuer, Role::Platform, "bench")?;
    let mut world = Arc::new(World {
        addresses,
        platform,
        now,
        clients: Clients::connect(addresses).await?,
        next_id: AtomicU64::new(0),
        issuer,
        seeded: Seeded::default(),
    });
    // A second pool on the disputes database, for seeding only.
    let seed_db = Database::open(disputes_url, returns_disputes::MIGRATIONS).await?;
    let mut seeder = Seeder::new(context)?;
    println!(
        "- closed loop: C clients, each its own connections, calling back to back for {:.1} s \
         after a warm-up; latency of successful calls; fixtures made outside the window",
        options.duration.as_secs_f64()
    );
    println!(
        "- memory: the suite's process alone, without the load clients (VmRSS from \
         /proc/<pid>/status after each window; VmHWM is its peak so far)"
    );
    let mut rows = Vec::new();
    let mut baseline = None;
    let writes: Vec<Scenario> = options
        .scenarios
        .iter()
        .copied()
        .filter(|s| !s.at_every_size())
        .collect();
    let reads: Vec<Scenario> = options
        .scenarios
        .iter()
        .copied()
        .filter(|s| s.at_every_size())
        .collect();
    for (step, &size) in options.seed_disputes.iter().enumerate() {
        let world_mut = Arc::get_mut(&mut world).ok_or("the bench's world is still shared")?;
        let began = Instant::now();
        let added = seeder.grow_to(&seed_db, world_mut, size).await?;
        let seeding = began.elapsed();
        println!(
            "- seeded {added} disputes (now {size}) in {:.1} s by batch INSERTs straight into \
             the disputes database ({SEED_CHUNK} disputes a transaction, {SEED_ROWS_PER_STATEMENT} \
             rows a statement; the API is too slow for a million): each an order, the \
             dispute, its history and deadline, made by the domain's own open_dispute (a \
             damaged card order, one photo) and, every 4th, the seller's AcceptOffer, so \
             RESOLVED; no outbox messages or idempotency keys. 10 disputes a buyer and 100 a \
             seller, plus one buyer and one seller with {} for the deep pages{}",
            seeding.as_secs_f64(),
            seeder.heavy,
            if databases.is_some() {
                "; then VACUUM (ANALYZE) and CHECKPOINT, as autovacuum and the checkpointer \
                 would, so the reads do not pay for setting hint bits on a million fresh rows \
                 or write them back"
            } else {
                "; then a WAL checkpoint (TRUNCATE), as SQLite's own checkpoints would, so the \
                 reads do not search a WAL of gigabytes"
            },
        );
        let mut scenarios = reads.clone();
        if step == 0 {
            scenarios.extend(writes.iter().copied());
        }
        for scenario in scenarios {
            for &c in &options.concurrency {
                rows.push(
                    run_row(&world, scenario, c, size, Level::Closed, options.duration).await,
                );
            }
            if step != 0 || !matches!(scenario, Scenario::GetDispute | Scenario::OpenDispute) {
                continue;
            }
            // PostgreSQL's insert loop right after OpenDispute's sweep, so that the two rates
            // compared are measured seconds apart: the host's speed drifts over minutes (a
            // loop run at the end of a full run, after the million's reads, differed from
            // one run to the next by a factor of two).
            if scenario == Scenario::OpenDispute
                && let Some(d) = databases
            {
                eprintln!("bench: single-row INSERT loop at {INSERT_LOOP_CLIENTS} connections...");
                baseline = Some(
                    insert_loop(&d.urls[3], INSERT_LOOP_CLIENTS, options.duration)
                        .await
                        .map_err(|e| scrub_secrets(&e.to_string(), &d.admin_url)),
                );
            }
            // Overload: ten times the scenario's best concurrency, against the admission
            // limit, right after its own sweep: its latency and memory are compared with the
            // best concurrency's, so no other scenario may run in between (the other
            // scenarios grow the suite's caches and heap, which would be charged to the
            // overload). The insert loop above is not the suite's: it runs in this process,
            // on a database of its own.
            if let Some((best, _)) = best_concurrency(&rows, scenario, size) {
                let c = best * OVERLOAD_FACTOR;
                rows.push(
                    run_row(&world, scenario, c, size, Level::Overload, options.duration).await,
                );
            }
            // OpenDispute at half its best throughput, paced, for its p99 there.
            if scenario == Scenario::OpenDispute
                && let Some((best, rps)) = best_concurrency(&rows, Scenario::OpenDispute, size)
            {
                let rate = rps / 2.0;
                rows.push(
                    run_row(
                        &world,
                        Scenario::OpenDispute,
                        best,
                        size,
                        Level::Paced(rate),
                        options.duration,
                    )
                    .await,
                );
            }
        }
    }
    println!();
    print_table(&world, &rows);
    println!();
    print_acceptance(options, &rows, baseline.as_ref());
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome.is_err())
        .map(|r| format!("{} at C={}", r.scenario.name(), r.c))
        .collect();
    if failed.is_empty() {
        Ok(Ok(()))
    } else {
        Ok(Err(
            format!("could not run at all: {}", failed.join(", ")).into()
        ))
    }
}

/// How a row's load was applied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    /// C clients calling back to back.
    Closed,
    /// C clients back to back at [`OVERLOAD_FACTOR`] times the best concurrency.
    Overload,
    /// C clients sharing a fixed schedule of this many calls a second.
    Paced(f64),
}

/// What one scenario at one concurrency gave.
struct Row {
    scenario: Scenario,
    c: usize,
    /// Disputes seeded when it ran.
    size: usize,
    level: Level,
    outcome: std::result::Result<Measurement, String>,
}

impl Row {
    fn ok(&self) -> Option<&Measurement> {
        self.outcome.as_ref().ok()
    }
}

async fn run_row(
    world: &Arc<World>,
    scenario: Scenario,
    c: usize,
    size: usize,
    level: Level,
    duration: Duration,
) -> Row {
    eprintln!(
        "bench: {} at C={c} ({size} disputes{})...",
        scenario.name(),
        match level {
            Level::Closed => String::new(),
            Level::Overload => ", overload".to_string(),
            Level::Paced(rate) => format!(", paced at {rate:.0}/s"),
        }
    );
    let outcome = match measure(world, scenario, c, duration, level).await {
        Ok(m) if m.ops == 0 => Err(format!("no call succeeded ({})", m.errors_text())),
        Ok(m) => Ok(m),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = &outcome {
        eprintln!("bench: {} at C={c} could not run: {error}", scenario.name());
    }
    Row {
        scenario,
        c,
        size,
        level,
        outcome,
    }
}

/// The closed-loop concurrency at which `scenario` had its highest rps at `size`.
fn best_concurrency(rows: &[Row], scenario: Scenario, size: usize) -> Option<(usize, f64)> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.size == size && r.level == Level::Closed)
        .filter_map(|r| r.ok().map(|m| (r.c, m.rps())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The closed-loop row of `scenario` at `c` and `size`.
fn find(rows: &[Row], scenario: Scenario, c: usize, size: usize) -> Option<&Measurement> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.c == c && r.size == size && r.level == Level::Closed)
        .and_then(Row::ok)
}

fn print_table(world: &World, rows: &[Row]) {
    println!(
        "| scenario | disputes | C | ops | rps | p50 ms | p99 ms | max ms | errors (by code) | \
         p50 / Health p50 | rps / Health rps | RSS MiB |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|");
    let mut notes = Vec::new();
    for row in rows {
        let mut title = match row.scenario {
            Scenario::DeepByBuyer | Scenario::DeepBySeller | Scenario::DeepByState => {
                let page = world.seeded.deep_page(row.scenario).0;
                format!(
                    "{}: page {page} ({DEEP_PAGE_SIZE} a page)",
                    row.scenario.title()
                )
            }
            other => other.title().to_string(),
        };
        match row.level {
            Level::Closed => {}
            Level::Overload => title.push_str(&format!(", {OVERLOAD_FACTOR}× best C")),
            Level::Paced(rate) => title.push_str(&format!(", paced at {rate:.0}/s")),
        }
        match &row.outcome {
            Err(error) => println!(
                "| {title} | {} | {} | - | - | - | - | - | could not run: {error} | - | - | - |",
                row.size, row.c
            ),
            Ok(m) => {
                // The baseline of the same size and C; for the overload levels, the nearest
                // Health row measured (Health is not run at ten times every C).
                let health = find(rows, Scenario::Health, row.c, row.size).or_else(|| {
                    rows.iter()
                        .filter(|h| h.scenario == Scenario::Health && h.size == row.size)
                        .filter_map(|h| h.ok().map(|m| (h.c.abs_diff(row.c), m)))
                        .min_by_key(|(distance, _)| *distance)
                        .map(|(_, m)| m)
                });
                let p50_ratio = match health {
                    Some(h) if !h.percentile(0.50).is_zero() => format!(
                        "{:.1}",
                        m.percentile(0.50).as_secs_f64() / h.percentile(0.50).as_secs_f64()
                    ),
                    _ => "-".to_string(),
                };
                let rps_ratio = match health {
                    Some(h) if h.rps() > 0.0 => format!("{:.3}", m.rps() / h.rps()),
                    _ => "-".to_string(),
                };
                let mark = if m.exhausted {
                    notes.push(format!(
                        "- {title} at C={}: after {:.2} s",
                        row.c,
                        m.elapsed.as_secs_f64()
                    ));
                    " \u{2020}"
                } else {
                    ""
                };
                println!(
                    "| {title}{mark} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {p50_ratio} | \
                     {rps_ratio} | {} |",
                    row.size,
                    row.c,
                    m.ops,
                    m.rps(),
                    millis(m.percentile(0.50)),
                    millis(m.percentile(0.99)),
                    millis(m.latencies.last().copied().unwrap_or_default()),
                    m.errors_text(),
                    mib(m.memory_after.rss_kib),
                )
            }
        }
    }
    if !notes.is_empty() {
        println!(
            "\n\u{2020} the fixtures made for the window ran out before it ended; rps is over \
             the time they lasted:\n{}",
            notes.join("\n")
        );
    }
}

/// The figures the speed issue asks for, each from the rows of this run.
fn print_acceptance(
    options: &Options,
    rows: &[Row],
    baseline: Option<&std::result::Result<Measurement, String>>,
) {
    let first = options.seed_disputes[0];
    let unmeasured = "not measured in this run";
    println!("## Acceptance figures\n");

    // GetDispute alone.
    match (
        find(rows, Scenario::GetDispute, 1, first),
        find(rows, Scenario::Health, 1, first),
    ) {
        (Some(get), Some(health)) => {
            let (p50, health_p50) = (get.percentile(0.50), health.percentile(0.50));
            let ratio = p50.as_secs_f64() / health_p50.as_secs_f64().max(f64::MIN_POSITIVE);
            println!(
                "- GetDispute at C=1 ({first} disputes): p50 {} ms (target <= 2 ms: {}); \
                 Health/Check p50 {} ms; ratio {ratio:.1} (target <= 3: {})",
                millis(p50),
                verdict(p50 <= Duration::from_millis(2)),
                millis(health_p50),
                verdict(ratio <= 3.0),
            );
        }
        _ => println!("- GetDispute at C=1: {unmeasured} (needs 1 in --concurrency)"),
    }

    // OpenDispute's throughput against Health's and, on PostgreSQL, a plain insert loop.
    match best_concurrency(rows, Scenario::OpenDispute, first) {
        Some((best, rps)) => {
            let health = find(rows, Scenario::Health, best, first).map(Measurement::rps);
            let versus_health = match health {
                Some(h) if h > 0.0 => {
                    format!("{:.3} × Health/Check's {h:.0} rps at the same C", rps / h)
                }
                _ => "Health/Check not measured at that C".to_string(),
            };
            println!("- OpenDispute: best concurrency C={best}, {rps:.0} rps = {versus_health}");
            if let Some(writer) =
                find(rows, Scenario::OpenDispute, best, first).and_then(|m| m.writer)
            {
                println!("- OpenDispute at C={best}: {writer}");
            }
            let paced = rows.iter().find(|r| {
                r.scenario == Scenario::OpenDispute
                    && r.size == first
                    && matches!(r.level, Level::Paced(_))
            });
            match paced.map(|r| (r.level, &r.outcome)) {
                Some((Level::Paced(rate), Ok(m))) => println!(
                    "- OpenDispute at half that load ({rate:.0} calls/s on a fixed schedule \
                     over {best} clients, latency from each call's scheduled start): p50 {} \
                     ms, p99 {} ms, {:.0} rps achieved",
                    millis(m.percentile(0.50)),
                    millis(m.percentile(0.99)),
                    m.rps()
                ),
                Some((_, Err(error))) => {
                    println!("- OpenDispute at half that load: could not run: {error}")
                }
                _ => println!("- OpenDispute at half that load: {unmeasured}"),
            }
            match baseline {
                Some(Ok(loop_m)) => println!(
                    "- OpenDispute vs a single-row INSERT loop on the same cluster \
                     ({INSERT_LOOP_CLIENTS} connections through sqlx, one INSERT a \
                     transaction into a table with a text uuid key and four columns, as \
                     pgbench -c {INSERT_LOOP_CLIENTS} would, run right after OpenDispute's \
                     sweep): loop {:.0} rps (p50 {} ms, p99 \
                     {} ms); OpenDispute at its best {rps:.0} rps = {:.3} × the loop",
                    loop_m.rps(),
                    millis(loop_m.percentile(0.50)),
                    millis(loop_m.percentile(0.99)),
                    rps / loop_m.rps().max(f64::MIN_POSITIVE),
                ),
                Some(Err(error)) => println!("- insert loop baseline could not run: {error}"),
                None => println!(
                    "- insert loop baseline: PostgreSQL only (run with --database postgres://...)"
                ),
            }
        }
        None => println!("- OpenDispute: {unmeasured}"),
    }

    // Reads at every size against the first.
    if options.seed_disputes.len() > 1 {
        println!(
            "\nReads at each dataset size against {first} disputes (target: a slowdown of at \
             most 1.5×). Absolute rates drift with the shared machine between sizes (Health/Check \
             itself moves), so the verdict is on the slowdown against Health/Check: the read's \
             rps / Health rps at {first}, divided by the same ratio at the larger size. The raw \
             slowdown (rps at {first} / rps at the larger size) is shown too:\n"
        );
        let sizes = &options.seed_disputes;
        let mut header = String::from("| read | C |");
        let mut rule = String::from("|---|--:|");
        for size in sizes {
            header.push_str(&format!(" rps at {size} |"));
            rule.push_str("--:|");
        }
        for size in &sizes[1..] {
            header.push_str(&format!(
                " raw slowdown at {size} | slowdown against Health at {size} |"
            ));
            rule.push_str("--:|--:|");
        }
        println!("{header}\n{rule}");
        for scenario in Scenario::ALL
            .into_iter()
            .filter(|s| *s != Scenario::Health && s.at_every_size())
        {
            for &c in &options.concurrency {
                let measured: Vec<Option<f64>> = sizes
                    .iter()
                    .map(|&size| find(rows, scenario, c, size).map(Measurement::rps))
                    .collect();
                if measured.iter().all(Option::is_none) {
                    continue;
                }
                let mut line = format!("| {} | {c} |", scenario.title());
                for rps in &measured {
                    line.push_str(&match rps {
                        Some(rps) => format!(" {rps:.0} |"),
                        None => " - |".to_string(),
                    });
                }
                let health: Vec<Option<f64>> = sizes
                    .iter()
                    .map(|&size| find(rows, Scenario::Health, c, size).map(Measurement::rps))
                    .collect();
                for (rps, health_rps) in measured[1..].iter().zip(&health[1..]) {
                    line.push_str(&match (measured[0], rps) {
                        (Some(small), Some(large)) if *large > 0.0 => {
                            format!(" {:.2}× |", small / large)
                        }
                        _ => " - |".to_string(),
                    });
                    line.push_str(&match (measured[0], health[0], rps, health_rps) {
                        (Some(small), Some(small_health), Some(large), Some(large_health))
                            if *large > 0.0 && small_health > 0.0 && *large_health > 0.0 =>
                        {
                            let slowdown = (small / small_health) / (large / large_health);
                            format!(" {slowdown:.2}× ({}) |", verdict(slowdown <= 1.5))
                        }
                        _ => " - |".to_string(),
                    });
                }
                println!("{line}");
            }
        }
    }

    // Overload.
    println!();
    for scenario in [Scenario::GetDispute, Scenario::OpenDispute] {
        let Some((best, _)) = best_concurrency(rows, scenario, first) else {
            continue;
        };
        let over = rows
            .iter()
            .find(|r| r.scenario == scenario && r.size == first && r.level == Level::Overload);
        let (Some(at_best), Some(over)) = (find(rows, scenario, best, first), over) else {
            continue;
        };
        match &over.outcome {
            Ok(m) => {
                let refused = m.errors.get("ResourceExhausted").copied().unwrap_or(0);
                let other: u64 = m
                    .errors
                    .iter()
                    .filter(|(code, _)| code.as_str() != "ResourceExhausted")
                    .map(|(_, n)| n)
                    .sum();
                println!(
                    "- {} at {OVERLOAD_FACTOR}× its best concurrency (C={} against C={best}): \
                     {refused} RESOURCE_EXHAUSTED of {} calls ({other} other errors), \
                     accepted {:.0} rps; accepted p99 {} ms against {} ms at C={best}; \
                     VmRSS {} MiB after the window against {} MiB after C={best} (before this \
                     level's clients connected {} MiB; VmHWM {} MiB)",
                    scenario.title(),
                    over.c,
                    m.ops + refused + other,
                    m.rps(),
                    millis(m.percentile(0.99)),
                    millis(at_best.percentile(0.99)),
                    mib(m.memory_after.rss_kib),
                    mib(at_best.memory_after.rss_kib),
                    mib(m.memory_before.rss_kib),
                    mib(m.memory_after.hwm_kib),
                );
            }
            Err(error) => println!(
                "- {} at {OVERLOAD_FACTOR}× its best concurrency: could not run: {error}",
                scenario.title()
            ),
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The suite's process, whose memory the bench reports.
static SUITE_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The suite's disputes metrics endpoint, set once it has started.
static DISPUTES_METRICS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// The disputes database's SQLite writer counters (`returns.db.writer.*`), as scraped.
#[derive(Debug, Clone, Copy, Default)]
struct WriterCounters {
    busy_seconds: f64,
    wait_seconds: f64,
    transactions: f64,
    batches: f64,
}

impl WriterCounters {
    /// Reads them from the disputes service's `/metrics`; `None` on PostgreSQL (no writer
    /// metrics) or when the endpoint cannot be read (the bench then says nothing of it).
    async fn scrape() -> Option<WriterCounters> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = DISPUTES_METRICS.get()?;
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let sample = |name: &str| -> Option<f64> {
            body.lines()
                .filter(|line| line.starts_with(name) && !line.starts_with('#'))
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .reduce(|a, b| a + b)
        };
        Some(WriterCounters {
            busy_seconds: sample("returns_db_writer_busy_seconds_total")?,
            wait_seconds: sample("returns_db_writer_wait_seconds_total")?,
            transactions: sample("returns_db_writer_transactions_total")?,
            batches: sample("returns_db_writer_batches_total")?,
        })
    }

    /// What happened between `before` and `self`, over a window of `elapsed`.
    fn since(self, before: WriterCounters, elapsed: Duration) -> WriterWindow {
        WriterWindow {
            busy_share: (self.busy_seconds - before.busy_seconds)
                / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            wait_seconds: self.wait_seconds - before.wait_seconds,
            busy_seconds: self.busy_seconds - before.busy_seconds,
            transactions: self.transactions - before.transactions,
            batches: self.batches - before.batches,
        }
    }
}

/// The disputes database's SQLite writer over one timed window.
#[derive(Debug, Clone, Copy)]
struct WriterWindow {
    /// Share of the window the writer was held: near 1, it bounds the write throughput.
    busy_share: f64,
    busy_seconds: f64,
    wait_seconds: f64,
    transactions: f64,
    batches: f64,
}

impl std::fmt::Display for WriterWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = |total: f64, of: f64| if of > 0.0 { total / of } else { 0.0 };
        write!(
            f,
            "the disputes database's SQLite writer was held {:.0}% of the window: {:.0} write \
             transactions in {:.0} COMMITs ({:.1} a COMMIT), each holding the writer {:.0} µs \
             and waiting {:.2} ms for its turn on average",
            self.busy_share * 100.0,
            self.transactions,
            self.batches,
            per(self.transactions, self.batches),
            per(self.busy_seconds, self.transactions) * 1e6,
            per(self.wait_seconds, self.transactions) * 1e3,
        )
    }
}

/// The suite's resident memory now and at its peak, from /proc/<pid>/status (0 where /proc is
/// missing).
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Memory {
    fn now() -> Memory {
        let path = match SUITE_PID.get() {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".to_string(),
        };
        let status = std::fs::read_to_string(path).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// Cores, OS, CPU model and memory of this machine, and the build profile.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| format!(", {}", model.trim()))
        .unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| format!(", {:.1} GiB memory", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease");
    let kernel = if kernel.trim().is_empty() {
        String::new()
    } else {
        format!(" {}", kernel.trim())
    };
    let profile = if cfg!(debug_assertions) {
        "debug build (not representative: use --release)"
    } else {
        "release build"
    };
    format!(
        "{cores} cores (available_parallelism){cpu}{memory}; {} {}{kernel}; {profile}; \
         the load clients (this process) and the suite (its child) share the cores",
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

/// Fresh PostgreSQL databases, one per service and one for the insert-loop baseline, made
/// through an admin URL.
struct PostgresDatabases {
    admin_url: String,
    names: Vec<String>,
    /// disputes, labels, refunds, baseline.
    urls: Vec<String>,
    /// The cluster's version and durability settings, for the header.
    settings: String,
}

impl PostgresDatabases {
    async fn create(admin_url: &str) -> Result<PostgresDatabases> {
        use sqlx::Connection;
        let scrub = |error: sqlx::Error| -> BenchError {
            format!(
                "PostgreSQL at {}: {}",
                redact_url(admin_url),
                scrub_secrets(&error.to_string(), admin_url)
            )
            .into()
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(scrub)?;
        let mut names = Vec::new();
        for service in ["disputes", "labels", "refunds", "baseline"] {
            let name = format!("returns_bench_{stamp}_{}_{service}", std::process::id());
            let created = sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await;
            if let Err(error) = created {
                // Leave nothing behind: the ones made before this one go again.
                for made in &names {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {made}"))
                        .execute(&mut admin)
                        .await;
                }
                return Err(scrub(error));
            }
            names.push(name);
        }
        let mut settings = Vec::new();
        for setting in [
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&mut admin)
                .await
                .map_err(scrub)?;
            settings.push(format!("{setting} = {value}"));
        }
        admin.close().await.map_err(scrub)?;
        // The admin URL with its database name replaced (query parameters kept).
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(slash) => &base[..scheme_end + slash],
            None => base,
        };
        let urls = names
            .iter()
            .map(|name| format!("{base}/{name}{query}"))
            .collect();
        Ok(PostgresDatabases {
            admin_url: admin_url.to_string(),
            names,
            urls,
            settings: format!("; {}", settings.join(", ")),
        })
    }

    async fn drop_all(&self) -> Result<()> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| scrub_secrets(&e.to_string(), &self.admin_url))?;
        for name in &self.names {
            // FORCE: the suite's pools may still hold idle connections.
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .map_err(|e| scrub_secrets(&e.to_string(), &self.admin_url))?;
        }
        admin
            .close()
            .await
            .map_err(|e| scrub_secrets(&e.to_string(), &self.admin_url))?;
        Ok(())
    }
}

/// Clients of the three services (the test clock and health are served on every port; the
/// bench uses the disputes port for both).
#[derive(Clone)]
struct Clients {
    disputes: DisputeServiceClient<Channel>,
    labels: ReturnLabelServiceClient<Channel>,
    refunds: RefundServiceClient<Channel>,
    clock: TestClockServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl Clients {
    async fn connect(addresses: SuiteAddresses) -> Result<Clients> {
        let channel = |addr: std::net::SocketAddr| async move {
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .map_err(BenchError::from)
        };
        let disputes = channel(addresses.disputes).await?;
        Ok(Clients {
            disputes: DisputeServiceClient::new(disputes.clone()),
            clock: TestClockServiceClient::new(disputes.clone()),
            health: HealthClient::new(disputes),
            labels: ReturnLabelServiceClient::new(channel(addresses.labels).await?),
            refunds: RefundServiceClient::new(channel(addresses.refunds).await?),
        })
    }
}

/// The seeded data the read scenarios pick from.
#[derive(Default)]
struct Seeded {
    dispute_ids: Vec<String>,
    /// Bearer tokens of the seeded buyers and sellers, with their ids.
    buyers: Vec<(String, AsciiMetadataValue)>,
    sellers: Vec<(String, AsciiMetadataValue)>,
    /// The buyer and the seller with [`HEAVY_DISPUTES`] disputes each.
    heavy_buyer: Option<(String, AsciiMetadataValue)>,
    heavy_seller: Option<(String, AsciiMetadataValue)>,
    /// Each deep scenario's page number and its page token (empty: the first page).
    deep_by_buyer: (usize, String),
    deep_by_seller: (usize, String),
    deep_by_state: (usize, String),
}

impl Seeded {
    fn deep_page(&self, scenario: Scenario) -> &(usize, String) {
        match scenario {
            Scenario::DeepByBuyer => &self.deep_by_buyer,
            Scenario::DeepBySeller => &self.deep_by_seller,
            _ => &self.deep_by_state,
        }
    }

    /// The deep scenario's request (page token included) and the token it is called with.
    fn deep_request<'a>(
        &'a self,
        scenario: Scenario,
        platform: &'a AsciiMetadataValue,
    ) -> Option<(ListDisputesRequest, &'a AsciiMetadataValue)> {
        let mut request = ListDisputesRequest {
            page_size: DEEP_PAGE_SIZE,
            page_token: self.deep_page(scenario).1.clone(),
            ..Default::default()
        };
        let token = match scenario {
            Scenario::DeepByBuyer => {
                let (id, token) = self.heavy_buyer.as_ref()?;
                request.buyer_id = id.clone();
                token
            }
            Scenario::DeepBySeller => {
                let (id, token) = self.heavy_seller.as_ref()?;
                request.seller_id = id.clone();
                token
            }
            _ => {
                request.state = DisputeState::Resolved as i32;
                platform
            }
        };
        Some((request, token))
    }
}

/// Everything the tasks share.
struct World {
    addresses: SuiteAddresses,
    issuer: TokenIssuer,
    platform: AsciiMetadataValue,
    /// The suite's clock, held still for the whole run.
    now: DateTime<Utc>,
    /// For seeding and fixtures (timed calls use each task's own connections).
    clients: Clients,
    next_id: AtomicU64,
    seeded: Seeded,
}
impl World {
    fn token(&self, role: Role, sub: &str) -> Result<AsciiMetadataValue> {
        bearer(&self.issuer, role, sub)
    }

    /// A number no other operation of this run has used (for order ids and idempotency keys).
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn wait_until_quiet(&self) -> Result<()> {
        let mut clock = self.clients.clock.clone();
        clock
            .advance_clock(call(&self.platform, AdvanceClockRequest { seconds: 0 }))
            .await?;
        Ok(())
    }
}

fn bearer(issuer: &TokenIssuer, role: Role, sub: &str) -> Result<AsciiMetadataValue> {
    let token = issuer.issue(sub, role, None, TOKEN_TTL)?;
    Ok(format!("Bearer {token}").parse()?)
}

fn call<T>(token: &AsciiMetadataValue, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

fn ts(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn money(currency: &str, minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_string(),
        minor_units,
    })
}

/// A card order to Great Britain, shipped 10 days ago and delivered 3 days ago: one a buyer
/// may open a damaged-item dispute on.
fn delivered_order(
    now: DateTime<Utc>,
    order_id: &str,
    buyer_id: &str,
    seller_id: &str,
) -> RecordOrderRequest {
    let shipped = now - chrono::Duration::days(10);
    RecordOrderRequest {
        request_id: format!("order-{order_id}"),
        order_id: order_id.to_string(),
        buyer_id: buyer_id.to_string(),
        seller_id: seller_id.to_string(),
        total: money("USD", 4500),
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        carrier: "DHL".to_string(),
        placed_at: ts(shipped - chrono::Duration::days(2)),
        shipped_at: ts(shipped),
        promised_ship_by: None,
        delivered_at: ts(now - chrono::Duration::days(3)),
        destination_country: "GB".to_string(),
        free_return: false,
    }
}

/// A free-return listing delivered in Japan two days ago (story 4's order): a changed-mind
/// return on it is authorised at once while the buyer's monthly quota lasts.
fn free_return_order(now: DateTime<Utc>, order_id: &str, buyer_id: &str) -> RecordOrderRequest {
    let shipped = now - chrono::Duration::days(8);
    RecordOrderRequest {
        request_id: format!("order-{order_id}"),
        order_id: order_id.to_string(),
        buyer_id: buyer_id.to_string(),
        seller_id: "s-bench-tees".to_string(),
        total: money("JPY", 3000),
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        carrier: "EMS".to_string(),
        placed_at: ts(shipped - chrono::Duration::days(2)),
        shipped_at: ts(shipped),
        promised_ship_by: None,
        delivered_at: ts(now - chrono::Duration::days(2)),
        destination_country: "JP".to_string(),
        free_return: true,
    }
}

fn capture(order_id: &str, buyer_id: &str, amount: Option<Money>) -> RecordCaptureRequest {
    RecordCaptureRequest {
        request_id: format!("capture-{order_id}"),
        order_id: order_id.to_string(),
        buyer_id: buyer_id.to_string(),
        amount,
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        ..Default::default()
    }
}

/// A buyer's refund-only dispute: the item arrived damaged, with a photo.
fn damaged_dispute(order_id: &str) -> OpenDisputeRequest {
    OpenDisputeRequest {
        request_id: format!("open-{order_id}"),
        order_id: order_id.to_string(),
        kind: DisputeKind::RefundOnly as i32,
        reason: DisputeReason::Damaged as i32,
        requested_resolution: Some(RequestedResolution {
            r#type: ResolutionType::FullRefund as i32,
            amount: None,
        }),
        description: "arrived cracked - see the photo".to_string(),
        evidence: vec![NewEvidence {
            kind: EvidenceKind::Photo as i32,
            content_type: "image/jpeg".to_string(),
            size_bytes: 182_044,
            sha256: format!("{:064x}", 7919),
            uri: "file:///evidence/cracked.jpg".to_string(),
            file_name: "cracked.jpg".to_string(),
        }],
    }
}

/// A changed-mind return on a free-return listing (story 4's request).
fn changed_mind_return(order_id: &str) -> OpenDisputeRequest {
    OpenDisputeRequest {
        request_id: format!("open-{order_id}"),
        order_id: order_id.to_string(),
        kind: DisputeKind::ReturnAndRefund as i32,
        reason: DisputeReason::ChangedMind as i32,
        requested_resolution: Some(RequestedResolution {
            r#type: ResolutionType::FullRefund as i32,
            amount: None,
        }),
        description: "changed my mind".to_string(),
        evidence: Vec::new(),
    }
}

/// A column value of a seeded row.
enum Value {
    Text(String),
    OptionalText(Option<String>),
    Int(i64),
}

/// One seeding transaction's rows, shaped as services/disputes/src/store.rs writes them.
#[derive(Default)]
struct SeedRows {
    orders: Vec<Vec<Value>>,
    disputes: Vec<Vec<Value>>,
    events: Vec<Vec<Value>>,
    deadlines: Vec<Vec<Value>>,
    dispute_ids: Vec<String>,
    buyers: Vec<String>,
    sellers: Vec<String>,
}

/// Grows the disputes table by batch INSERTs, with disputes the domain itself opened.
struct Seeder {
    policy: Arc<returns_domain::policy::Policy>,
    now: returns_domain::time::Timestamp,
    /// The bench's dispute request, parsed as the service parses it.
    open: n::OpenRequest,
    /// Disputes seeded so far.
    count: usize,
    /// Disputes of the heavy buyer and seller so far.
    heavy: usize,
}

const HEAVY_BUYER: &str = "b-seed-heavy";
const HEAVY_SELLER: &str = "s-seed-heavy";

impl Seeder {
    fn new(context: &SuiteContext) -> Result<Seeder> {
        let open = returns_disputes::rpc::open_request(&damaged_dispute("o-seed"))?;
        Ok(Seeder {
            policy: context.policy.clone(),
            now: context.clock.now(),
            open,
            count: 0,
            heavy: 0,
        })
    }

    /// Seeds disputes until there are `size`, adding them (and their buyers' and sellers'
    /// tokens) to `world`, then finds the deep pages again. Returns how many it added.
    async fn grow_to(&mut self, db: &Database, world: &mut World, size: usize) -> Result<usize> {
        let from = self.count;
        let chunks: Vec<(usize, usize)> = (from..size)
            .step_by(SEED_CHUNK)
            .map(|start| (start, (start + SEED_CHUNK).min(size)))
            .collect();
        let generate = |(start, end): (usize, usize)| {
            let (policy, open, now) = (self.policy.clone(), self.open.clone(), self.now);
            tokio::task::spawn_blocking(move || generate_rows(start, end, &policy, &open, now))
        };
        // Generating the next chunk (CPU) overlaps inserting this one (the database).
        let mut next = chunks.first().map(|&chunk| generate(chunk));
        for (index, _) in chunks.iter().enumerate() {
            let Some(handle) = next.take() else { break };
            let rows = handle.await??;
            next = chunks.get(index + 1).map(|&chunk| generate(chunk));
            insert_rows(db, &rows).await?;
            for buyer in &rows.buyers {
                let token = world.token(Role::Buyer, buyer)?;
                world.seeded.buyers.push((buyer.clone(), token));
            }
            for seller in &rows.sellers {
                let token = world.token(Role::Seller, seller)?;
                world.seeded.sellers.push((seller.clone(), token));
            }
            world.seeded.dispute_ids.extend(rows.dispute_ids);
        }
        self.count = size.max(from);
        self.heavy = (0..self.count).filter(|&i| is_heavy(i)).count();
        settle_after_seeding(db).await?;
        if self.heavy > 0 {
            world.seeded.heavy_buyer = Some((
                HEAVY_BUYER.to_string(),
                world.token(Role::Buyer, HEAVY_BUYER)?,
            ));
            world.seeded.heavy_seller = Some((
                HEAVY_SELLER.to_string(),
                world.token(Role::Seller, HEAVY_SELLER)?,
            ));
        }
        for scenario in [
            Scenario::DeepByBuyer,
            Scenario::DeepBySeller,
            Scenario::DeepByState,
        ] {
            let page = deep_page_token(world, scenario).await?;
            match scenario {
                Scenario::DeepByBuyer => world.seeded.deep_by_buyer = page,
                Scenario::DeepBySeller => world.seeded.deep_by_seller = page,
                _ => world.seeded.deep_by_state = page,
            }
        }
        Ok(self.count - from)
    }
}

/// Whether seeded dispute `i` belongs to the heavy buyer and seller: every 4th (offset by
/// one from the resolved ones) until they have [`HEAVY_DISPUTES`].
/// Leaves the seeded database as a long-running one would be: on PostgreSQL vacuumed (hint
/// bits and the visibility map set, statistics fresh) and checkpointed; on SQLite with its WAL
/// checkpointed into the database file.
async fn settle_after_seeding(db: &Database) -> Result<()> {
    match db.backend() {
        returns_platform::Backend::Postgres => {
            sqlx::query("VACUUM (ANALYZE)").execute(db.pool()).await?;
            // CHECKPOINT needs a superuser or pg_checkpoint; without it the checkpointer will
            // get there on its own, a little later.
            if let Err(error) = sqlx::query("CHECKPOINT").execute(db.pool()).await {
                eprintln!("bench: CHECKPOINT after seeding refused ({error}); going on");
            }
        }
        returns_platform::Backend::Sqlite => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(db.pool())
                .await?;
        }
    }
    Ok(())
}

fn is_heavy(i: usize) -> bool {
    i % 4 == 1 && i / 4 < HEAVY_DISPUTES
}

/// The rows of disputes `start..end`: one chunk, ten disputes a buyer and a hundred a seller
/// (the last of a chunk may have fewer), spread over the chunk so one buyer's disputes are not
/// neighbours on disk.
fn generate_rows(
    start: usize,
    end: usize,
    policy: &returns_domain::policy::Policy,
    open: &n::OpenRequest,
    now: returns_domain::time::Timestamp,
) -> Result<SeedRows> {
    // The heavy buyer's and seller's rows are not shared out, so the others are counted over
    // the rest. Sharing out the whole chunk gave a quarter of the first chunk's buyers and
    // sellers no dispute at all (every row of theirs was a heavy one), so a quarter of the
    // first pages read at 10,000 disputes were empty, against full pages at a million.
    let light = (start..end).filter(|&i| !is_heavy(i)).count();
    let (buyer_count, seller_count) = (light.div_ceil(10), light.div_ceil(100));
    let mut rows = SeedRows {
        buyers: (0..buyer_count)
            .map(|b| format!("b-seed-{start}-{b}"))
            .collect(),
        sellers: (0..seller_count)
            .map(|s| format!("s-seed-{start}-{s}"))
            .collect(),
        ..SeedRows::default()
    };
    let at = to_unix_micros(now);
    let mut light_seen = 0;
    for i in start..end {
        let (buyer, seller) = if is_heavy(i) {
            (HEAVY_BUYER.to_string(), HEAVY_SELLER.to_string())
        } else {
            // A light row exists, so buyer_count and seller_count are at least one.
            let k = light_seen;
            light_seen += 1;
            (
                rows.buyers[k % buyer_count].clone(),
                rows.sellers[k % seller_count].clone(),
            )
        };
        let order_id = format!("o-seed-{i}");
        let facts =
            returns_disputes::rpc::order_facts(&delivered_order(now, &order_id, &buyer, &seller))?;
        let opened = n::open_dispute(
            &facts,
            &n::ProtectionClock::default(),
            &n::OpeningContext::default(),
            &n::Actor::new(buyer.clone(), Role::Buyer),
            open.clone(),
            n::NewIds::fresh(open.evidence.len()),
            now,
            policy,
        )?;
        let mut events = opened.events.clone();
        let mut dispute = opened.dispute.clone();
        let mut deadlines = Vec::new();
        let first_deadline = dispute.deadline();
        if i % 4 == 0 {
            let offer_id = dispute
                .offers
                .first()
                .map(|o| o.id)
                .ok_or("the buyer's request is offer one")?;
            let accept = n::Command::AcceptOffer {
                by: n::Actor::new(seller.clone(), Role::Seller),
                offer_id,
            };
            let (next, more) = n::apply(&dispute, accept, now, policy)?;
            events.extend(more);
            dispute = next;
        }
        // As write_effects does: the running deadline stays pending, any other is superseded.
        let last_deadline = dispute.deadline();
        if let Some((kind, due)) = first_deadline {
            let fired = if last_deadline == first_deadline {
                0
            } else {
                2
            };
            deadlines.push((kind, due, fired));
        }
        if let Some((kind, due)) = last_deadline
            && last_deadline != first_deadline
        {
            deadlines.push((kind, due, 0));
        }
        let id = dispute.id.to_string();
        rows.orders.push(vec![
            Value::Text(order_id.clone()),
            Value::Text(buyer.clone()),
            Value::Text(seller.clone()),
            Value::Text(serde_json::to_string(&facts)?),
            Value::Text(serde_json::to_string(&opened.clock)?),
            Value::Int(at),
            Value::Int(at),
        ]);
        let free_return_month = dispute
            .outcome
            .as_ref()
            .filter(|o| o.source == n::OutcomeSource::FreeReturn)
            .map(|o| o.decided_at.format("%Y-%m").to_string());
        rows.disputes.push(vec![
            Value::Text(id.clone()),
            Value::Text(order_id),
            Value::Text(buyer),
            Value::Text(seller),
            Value::Text(dispute.state.code().to_string()),
            Value::OptionalText(free_return_month),
            Value::Text(serde_json::to_string(&dispute)?),
            Value::Int(dispute.version),
            Value::Int(to_unix_micros(dispute.created_at)),
            Value::Int(to_unix_micros(dispute.updated_at)),
        ]);
        for (sequence, event) in (1..).zip(&events) {
            rows.events.push(vec![
                Value::Text(event.id.to_string()),
                Value::Text(id.clone()),
                Value::Int(sequence),
                Value::Text(event.kind.code().to_string()),
                Value::Text(event.actor.id.clone()),
                Value::Text(event.actor.role.code().to_string()),
                Value::Int(to_unix_micros(event.at)),
                Value::OptionalText(event.from.map(|s| s.code().to_string())),
                Value::Text(event.to.code().to_string()),
                Value::Text(serde_json::to_string(event)?),
            ]);
        }
        for (kind, due, fired) in deadlines {
            rows.deadlines.push(vec![
                Value::Text(id.clone()),
                Value::Text(kind.code().to_string()),
                Value::Int(to_unix_micros(due)),
                Value::Int(fired),
                Value::Int(at),
            ]);
        }
        rows.dispute_ids.push(id);
    }
    Ok(rows)
}

/// A table's name, its columns and the rows to insert.
type SeedTable<'a> = (&'static str, &'static [&'static str], &'a [Vec<Value>]);

/// Writes one chunk in one transaction, [`SEED_ROWS_PER_STATEMENT`] rows a statement.
async fn insert_rows(db: &Database, rows: &SeedRows) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let tables: [SeedTable; 4] = [
        (
            "orders",
            &[
                "order_id",
                "buyer_id",
                "seller_id",
                "facts",
                "clock",
                "created_at",
                "updated_at",
            ],
            &rows.orders,
        ),
        (
            "disputes",
            &[
                "dispute_id",
                "order_id",
                "buyer_id",
                "seller_id",
                "state",
                "free_return_month",
                "data",
                "version",
                "created_at",
                "updated_at",
            ],
            &rows.disputes,
        ),
        (
            "dispute_events",
            &[
                "event_id",
                "dispute_id",
                "sequence",
                "event_type",
                "actor_id",
                "actor_role",
                "occurred_at",
                "from_state",
                "to_state",
                "data",
            ],
            &rows.events,
        ),
        (
            "deadlines",
            &["dispute_id", "kind", "due_at", "fired", "created_at"],
            &rows.deadlines,
        ),
    ];
    for (table, columns, table_rows) in tables {
        for batch in table_rows.chunks(SEED_ROWS_PER_STATEMENT) {
            let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
            let mut parameter = 0;
            for (r, _) in batch.iter().enumerate() {
                sql.push_str(if r == 0 { "(" } else { ", (" });
                for c in 0..columns.len() {
                    parameter += 1;
                    sql.push_str(&format!("{}${parameter}", if c == 0 { "" } else { ", " }));
                }
                sql.push(')');
            }
            let mut query = sqlx::query(&sql);
            for value in batch.iter().flatten() {
                query = match value {
                    Value::Text(text) => query.bind(text.as_str()),
                    Value::OptionalText(text) => query.bind(text.as_deref()),
                    Value::Int(number) => query.bind(*number),
                };
            }
            query.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Walks the deep scenario's listing (pages of 20, following each next_page_token: keyset,
/// not offsets) to page 100, or the last page there is.
async fn deep_page_token(world: &World, scenario: Scenario) -> Result<(usize, String)> {
    let mut disputes = world.clients.disputes.clone();
    let mut page = (1, String::new());
    let seeded = &world.seeded;
    while page.0 < DEEP_PAGE {
        let Some((mut request, token)) = seeded.deep_request(scenario, &world.platform) else {
            break;
        };
        request.page_token = page.1.clone();
        let listed = disputes
            .list_disputes(call(token, request))
            .await?
            .into_inner();
        if listed.next_page_token.is_empty() {
            break;
        }
        page = (page.0 + 1, listed.next_page_token);
    }
    Ok(page)
}

/// Something one operation of a write scenario consumes, made outside the timed window.
enum Fixture {
    /// A recorded order whose buyer may open a dispute on it.
    Order {
        order_id: String,
        buyer: AsciiMetadataValue,
    },
    /// A free return authorised (and delivered to labels) awaiting its label.
    Authorised {
        order_id: String,
        dispute_id: String,
        buyer: AsciiMetadataValue,
    },
    /// A captured order with nothing refunded yet.
    Captured { order_id: String },
}

struct Pool {
    items: Vec<Fixture>,
    next: AtomicUsize,
}

impl Pool {
    fn take(&self) -> Option<&Fixture> {
        self.items.get(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Makes `count` fixtures for `scenario` through the API.
async fn prepare(world: &World, scenario: Scenario, count: usize) -> Result<Pool> {
    let results: Vec<Result<Fixture>> = futures::stream::iter(0..count)
        .map(|_| {
            let mut clients = world.clients.clone();
            let n = world.id();
            async move {
                let platform = &world.platform;
                match scenario {
                    Scenario::OpenDispute => {
                        let (order_id, buyer_id) = (format!("o-od-{n}"), format!("b-od-{n}"));
                        let order = delivered_order(world.now, &order_id, &buyer_id, "s-bench");
                        clients.disputes.record_order(call(platform, order)).await?;
                        Ok(Fixture::Order {
                            order_id,
                            buyer: world.token(Role::Buyer, &buyer_id)?,
                        })
                    }
                    Scenario::CreateReturnLabel => {
                        // A buyer of their own each: the free-return quota is 3 a month.
                        let (order_id, buyer_id) = (format!("o-rl-{n}"), format!("b-rl-{n}"));
                        let order = free_return_order(world.now, &order_id, &buyer_id);
                        clients.disputes.record_order(call(platform, order)).await?;
                        let paid = capture(&order_id, &buyer_id, money("JPY", 3000));
                        clients.refunds.record_capture(call(platform, paid)).await?;
                        let buyer = world.token(Role::Buyer, &buyer_id)?;
                        let dispute = clients
                            .disputes
                            .open_dispute(call(&buyer, changed_mind_return(&order_id)))
                            .await?
                            .into_inner()
                            .dispute
                            .ok_or("OpenDispute returned no dispute")?;
                        if dispute.state != DisputeState::AwaitingReturn as i32 {
                            return Err(format!(
                                "a free return was not authorised at once (state {})",
                                dispute.state
                            )
                            .into());
                        }
                        Ok(Fixture::Authorised {
                            order_id,
                            dispute_id: dispute.dispute_id,
                            buyer,
                        })
                    }
                    Scenario::CreateRefund => {
                        let (order_id, buyer_id) = (format!("o-rf-{n}"), format!("b-rf-{n}"));
                        let paid = capture(&order_id, &buyer_id, money("USD", 4500));
                        clients.refunds.record_capture(call(platform, paid)).await?;
                        Ok(Fixture::Captured { order_id })
                    }
                    other => Err(format!("{} takes no fixtures", other.name()).into()),
                }
            }
        })
        .buffer_unordered(SETUP_PARALLELISM)
        .collect()
        .await;
    let items = results
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .map_err(|error| format!("preparing fixtures failed: {error}"))?;
    // Delivers the return authorisations to labels (and anything else due) before timing.
    world.wait_until_quiet().await?;
    Ok(Pool {
        items,
        next: AtomicUsize::new(0),
    })
}

/// One closed-loop client: its own connections, and a Stage for whole returns.
struct Task {
    clients: Clients,
    stage: Option<Stage>,
    rng: u64,
}

impl Task {
    async fn connect(world: &World, scenario: Scenario, index: usize) -> Result<Task> {
        let stage = if scenario == Scenario::WholeReturn {
            let mut stage = Stage::connect(world.addresses, world.issuer.clone()).await?;
            // Request times from the (still) clock, without a Now call per step.
            stage.pin_request_times(world.now);
            Some(stage)
        } else {
            None
        };
        Ok(Task {
            clients: Clients::connect(world.addresses).await?,
            stage,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        })
    }

    /// xorshift64: a uniform-enough pick among `len` seeded things.
    fn pick(&mut self, len: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % len.max(1) as u64) as usize
    }
}

enum Outcome {
    Ok,
    Failed(String),
    /// RESOURCE_EXHAUSTED: admission control turned the call away, asking to wait this long.
    Refused(Duration),
    /// The scenario's fixtures are all used.
    Exhausted,
}

fn outcome<T>(result: std::result::Result<T, tonic::Status>) -> Outcome {
    use tonic_types::StatusExt;
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) if status.code() == tonic::Code::ResourceExhausted => Outcome::Refused(
            status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay)
                .unwrap_or(REFUSED_BACKOFF),
        ),
        Err(status) => Outcome::Failed(format!("{:?}", status.code())),
    }
}

/// One operation of `scenario`, as the task's client.
async fn one_op(
    world: &World,
    scenario: Scenario,
    task: &mut Task,
    pool: Option<&Pool>,
) -> Outcome {
    let seeded = &world.seeded;
    let clients = &mut task.clients;
    match scenario {
        Scenario::Health => {
            let checked = clients
                .health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            match checked {
                Ok(response) if response.get_ref().status != ServingStatus::Serving as i32 => {
                    Outcome::Failed("NOT_SERVING".to_string())
                }
                other => outcome(other),
            }
        }
        Scenario::GetDispute => {
            let i = task.pick(seeded.dispute_ids.len());
            let Some(dispute_id) = seeded.dispute_ids.get(i) else {
                return Outcome::Failed("nothing seeded".to_string());
            };
            let request = GetDisputeRequest {
                dispute_id: dispute_id.clone(),
            };
            outcome(
                task.clients
                    .disputes
                    .get_dispute(call(&world.platform, request))
                    .await,
            )
        }
        Scenario::ListByBuyer => {
            let i = task.pick(seeded.buyers.len());
            let Some((buyer_id, token)) = seeded.buyers.get(i) else {
                return Outcome::Failed("nothing seeded".to_string());
            };
            let request = ListDisputesRequest {
                buyer_id: buyer_id.clone(),
                ..Default::default()
            };
            outcome(
                task.clients
                    .disputes
                    .list_disputes(call(token, request))
                    .await,
            )
        }
        Scenario::ListBySeller => {
            let i = task.pick(seeded.sellers.len());
            let Some((seller_id, token)) = seeded.sellers.get(i) else {
                return Outcome::Failed("nothing seeded".to_string());
            };
            let request = ListDisputesRequest {
                seller_id: seller_id.clone(),
                ..Default::default()
            };
            outcome(
                task.clients
                    .disputes
                    .list_disputes(call(token, request))
                    .await,
            )
        }
        Scenario::ListByState => {
            let request = ListDisputesRequest {
                state: DisputeState::Resolved as i32,
                ..Default::default()
            };
            outcome(
                clients
                    .disputes
                    .list_disputes(call(&world.platform, request))
                    .await,
            )
        }
        Scenario::DeepByBuyer | Scenario::DeepBySeller | Scenario::DeepByState => {
            let Some((request, token)) = seeded.deep_request(scenario, &world.platform) else {
                return Outcome::Failed("nothing seeded".to_string());
            };
            outcome(clients.disputes.list_disputes(call(token, request)).await)
        }
        Scenario::RecordOrder => {
            let n = world.id();
            let order = delivered_order(
                world.now,
                &format!("o-ro-{n}"),
                &format!("b-ro-{n}"),
                "s-bench",
            );
            outcome(
                clients
                    .disputes
                    .record_order(call(&world.platform, order))
                    .await,
            )
        }
        Scenario::OpenDispute => match pool.and_then(Pool::take) {
            Some(Fixture::Order { order_id, buyer }) => outcome(
                clients
                    .disputes
                    .open_dispute(call(buyer, damaged_dispute(order_id)))
                    .await,
            ),
            _ => Outcome::Exhausted,
        },
        Scenario::CreateReturnLabel => match pool.and_then(Pool::take) {
            Some(Fixture::Authorised {
                order_id,
                dispute_id,
                buyer,
            }) => {
                let request = CreateReturnLabelRequest {
                    request_id: format!("label-{order_id}"),
                    order_id: order_id.clone(),
                    dispute_id: dispute_id.clone(),
                    method: ReturnMethod::Pickup as i32,
                    provider_code: "SAGAWA".to_string(),
                    sender: Some(Address {
                        name: "Kenji Buyer".to_string(),
                        line1: "2-1 Chiyoda".to_string(),
                        city: "Tokyo".to_string(),
                        postal_code: "100-0001".to_string(),
                        country_code: "JP".to_string(),
                        ..Default::default()
                    }),
                };
                outcome(
                    clients
                        .labels
                        .create_return_label(call(buyer, request))
                        .await,
                )
            }
            _ => Outcome::Exhausted,
        },
        Scenario::CreateRefund => match pool.and_then(Pool::take) {
            Some(Fixture::Captured { order_id }) => {
                let request = CreateRefundRequest {
                    request_id: format!("refund-{order_id}"),
                    order_id: order_id.clone(),
                    amount: money("USD", 4500),
                    reason: RefundReason::Goodwill as i32,
                    release: ReleaseCondition::Immediate as i32,
                    note: "bench".to_string(),
                    ..Default::default()
                };
                outcome(
                    clients
                        .refunds
                        .create_refund(call(&world.platform, request))
                        .await,
                )
            }
            _ => Outcome::Exhausted,
        },
        Scenario::WholeReturn => {
            let Some(stage) = task.stage.as_mut() else {
                return Outcome::Failed("no stage".to_string());
            };
            let n = usize::try_from(world.id()).unwrap_or(usize::MAX);
            let played = stage.whole_return(n).await;
            stage.timeline.lines.clear();
            match played {
                Ok(_) => Outcome::Ok,
                // Shed on one of its calls: the story waits the hint like any refused client.
                Err(error) => match error.downcast_ref::<tonic::Status>() {
                    Some(status) => outcome::<()>(Err(status.clone())),
                    None => Outcome::Failed("story".to_string()),
                },
            }
        }
    }
}

/// What C clients measured over one window.
#[derive(Default)]
struct Measurement {
    ops: u64,
    elapsed: Duration,
    /// Successful calls only, sorted.
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// The fixtures ran out before the window ended.
    exhausted: bool,
    /// The suite's memory before the level's clients connected, and after its window.
    memory_before: Memory,
    memory_after: Memory,
    /// The disputes database's SQLite writer during the window (`None` on PostgreSQL).
    writer: Option<WriterWindow>,
}

impl Measurement {
    fn rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Calls made a second, whatever their outcome.
    fn attempts_per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        let failed: u64 = self.errors.values().sum();
        (self.ops + failed) as f64 / self.elapsed.as_secs_f64()
    }

    /// The nearest-rank percentile.
    fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "-".to_string();
        }
        self.errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs the tasks back to back until `window` has passed (or, without one, until the pool
/// is used up), and gives the tasks back for the next window.
async fn drive(
    world: &Arc<World>,
    scenario: Scenario,
    tasks: Vec<Task>,
    window: Option<Duration>,
    pool: Option<Arc<Pool>>,
    pace: Option<f64>,
) -> (Measurement, Vec<Task>) {
    let memory_before = Memory::now();
    let start = Instant::now();
    let deadline = window.map(|w| start + w);
    let clients = tasks.len();
    let handles: Vec<_> = tasks
        .into_iter()
        .enumerate()
        .map(|(index, mut task)| {
            let world = world.clone();
            let pool = pool.clone();
            // Paced: the clients share one schedule of `rate` calls a second, each taking
            // every `clients`-th slot, so the load offered does not depend on latency.
            let slots = pace.map(|rate| {
                let gap = Duration::from_secs_f64(clients as f64 / rate.max(0.001));
                let offset = Duration::from_secs_f64(index as f64 / rate.max(0.001));
                (gap, offset)
            });
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut exhausted = false;
                let mut slot = 0u32;
                while deadline.is_none_or(|d| Instant::now() < d) {
                    // Latency runs from the scheduled start when paced, so a call that
                    // waited behind a slow one is billed for the wait.
                    let began = match slots {
                        Some((gap, offset)) => {
                            let due = start + offset + gap * slot;
                            slot += 1;
                            if deadline.is_some_and(|d| due >= d) {
                                break;
                            }
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    match one_op(&world, scenario, &mut task, pool.as_deref()).await {
                        Outcome::Ok => latencies.push(began.elapsed()),
                        Outcome::Failed(code) => *errors.entry(code).or_default() += 1,
                        // A well-behaved client waits as the RetryInfo hint asks before it
                        // calls again, rather than spinning on refusals.
                        Outcome::Refused(wait) => {
                            *errors.entry("ResourceExhausted".to_string()).or_default() += 1;
                            tokio::time::sleep(wait).await;
                        }
                        Outcome::Exhausted => {
                            exhausted = true;
                            break;
                        }
                    }
                }
                (task, latencies, errors, exhausted, Instant::now())
            })
        })
        .collect();
    let mut measurement = Measurement::default();
    let mut tasks = Vec::new();
    let mut last = start;
    for handle in handles {
        match handle.await {
            Ok((task, latencies, errors, exhausted, finished)) => {
                tasks.push(task);
                measurement.latencies.extend(latencies);
                for (code, n) in errors {
                    *measurement.errors.entry(code).or_default() += n;
                }
                measurement.exhausted |= exhausted && window.is_some();
                last = last.max(finished);
            }
            Err(_) => *measurement.errors.entry("panic".to_string()).or_default() += 1,
        }
    }
    measurement.latencies.sort_unstable();
    measurement.ops = measurement.latencies.len() as u64;
    measurement.elapsed = last - start;
    measurement.memory_before = memory_before;
    measurement.memory_after = Memory::now();
    (measurement, tasks)
}

/// One scenario at concurrency `c`: a warm-up (for fixture scenarios, a pilot that also
/// sizes the fixtures), then the timed window.
async fn measure(
    world: &Arc<World>,
    scenario: Scenario,
    c: usize,
    duration: Duration,
    level: Level,
) -> Result<Measurement> {
    let pace = match level {
        Level::Paced(rate) => Some(rate),
        Level::Closed | Level::Overload => None,
    };
    // Whatever earlier windows left due (outbox deliveries, settlement) runs now, untimed.
    world.wait_until_quiet().await?;
    // Before this level's clients exist: what the level costs in memory is after - before.
    let memory_before = Memory::now();
    let tasks =
        futures::future::try_join_all((0..c).map(|i| Task::connect(world, scenario, i))).await?;
    if scenario.needs_fixtures() {
        let pilot = prepare(world, scenario, (4 * c).max(32)).await?;
        let (pilot, tasks) = drive(world, scenario, tasks, None, Some(Arc::new(pilot)), None).await;
        if pilot.ops == 0 {
            return Err(format!("every warm-up call failed ({})", pilot.errors_text()).into());
        }
        // Enough for the window at four times the pilot's rate: the pilot is short, starts
        // cold and may hit a stall, so the steady state is faster. Leftovers only cost setup.
        // Paced, the schedule says exactly how many.
        // Refused calls use up a fixture too, so the pilot's attempts count, not its successes.
        let wanted = pace.unwrap_or(pilot.attempts_per_second() * 4.0) * duration.as_secs_f64();
        let count = (wanted.ceil() as usize + c).clamp(2 * c, 500_000);
        let pool = Arc::new(prepare(world, scenario, count).await?);
        world.wait_until_quiet().await?;
        // For a profiler attached by hand: the timed window starts now.
        eprintln!("bench: {count} fixtures made; measuring");
        let writer_before = WriterCounters::scrape().await;
        let mut measured = drive(world, scenario, tasks, Some(duration), Some(pool), pace)
            .await
            .0;
        measured.memory_before = memory_before;
        measured.writer = match (writer_before, WriterCounters::scrape().await) {
            (Some(before), Some(after)) => Some(after.since(before, measured.elapsed)),
            _ => None,
        };
        Ok(measured)
    } else {
        let warm_up = (duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let (warm, tasks) = drive(world, scenario, tasks, Some(warm_up), None, pace).await;
        if warm.ops == 0 {
            return Err(format!("every warm-up call failed ({})", warm.errors_text()).into());
        }
        let mut measured = drive(world, scenario, tasks, Some(duration), None, pace)
            .await
            .0;
        measured.memory_before = memory_before;
        Ok(measured)
    }
}

/// A single-row INSERT loop through sqlx on the insert-loop database: `clients`
/// connections, one INSERT (its own transaction) after another, as pgbench with a one-line
/// script would run. What OpenDispute's throughput is compared with on PostgreSQL.
async fn insert_loop(url: &str, clients: usize, duration: Duration) -> Result<Measurement> {
    use sqlx::postgres::PgPoolOptions;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(clients)?)
        .min_connections(u32::try_from(clients)?)
        .connect(url)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS insert_loop (id TEXT PRIMARY KEY, account TEXT NOT NULL, \
         amount BIGINT NOT NULL, note TEXT NOT NULL, created_at BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let run = |window: Duration| {
        let pool = pool.clone();
        async move {
            let memory_before = Memory::now();
            let start = Instant::now();
            let deadline = start + window;
            let handles: Vec<_> = (0..clients)
                .map(|client| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        let mut errors = 0u64;
                        while Instant::now() < deadline {
                            let began = Instant::now();
                            let inserted = sqlx::query(
                                "INSERT INTO insert_loop (id, account, amount, note, created_at) \
                                 VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(returns_domain::ids::DisputeId::new().to_string())
                            .bind(format!("account-{client}"))
                            .bind(4500_i64)
                            .bind("bench insert loop")
                            .bind(returns_platform::outbox::wall_micros())
                            .execute(&pool)
                            .await;
                            match inserted {
                                Ok(_) => latencies.push(began.elapsed()),
                                Err(_) => errors += 1,
                            }
                        }
                        (latencies, errors, Instant::now())
                    })
                })
                .collect();
            let mut measurement = Measurement {
                memory_before,
                ..Measurement::default()
            };
            let mut last = start;
            for handle in handles {
                let (latencies, errors, finished) = handle.await?;
                measurement.latencies.extend(latencies);
                if errors > 0 {
                    *measurement.errors.entry("sqlx".to_string()).or_default() += errors;
                }
                last = last.max(finished);
            }
            measurement.latencies.sort_unstable();
            measurement.ops = measurement.latencies.len() as u64;
            measurement.elapsed = last - start;
            measurement.memory_after = Memory::now();
            Ok::<Measurement, BenchError>(measurement)
        }
    };
    let warm_up = (duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    run(warm_up).await?;
    let measured = run(duration).await?;
    pool.close().await;
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts how many of `rows`' disputes each of `ids` has, from the disputes rows' column
    /// `column` (2 = buyer_id, 3 = seller_id).
    fn disputes_each(rows: &SeedRows, ids: &[String], column: usize) -> Vec<usize> {
        ids.iter()
            .map(|id| {
                rows.disputes
                    .iter()
                    .filter(|row| matches!(row.get(column), Some(Value::Text(v)) if v == id))
                    .count()
            })
            .collect()
    }

    #[test]
    fn every_seeded_buyer_has_ten_disputes_and_every_seller_a_hundred_beside_the_heavy_ones() {
        let policy = returns_domain::policy::Policy::named("classic").expect("classic policy");
        let open = returns_disputes::rpc::open_request(&damaged_dispute("o-seed"))
            .expect("the bench's opening is valid");
        let now =
            returns_domain::time::from_unix_micros(1_790_000_000_000_000).expect("a valid instant");
        // The first chunk is the one with heavy rows (every 4th): 500 of these 2,000.
        let rows = generate_rows(0, 2_000, &policy, &open, now).expect("rows");
        assert_eq!(rows.disputes.len(), 2_000);
        assert_eq!((rows.buyers.len(), rows.sellers.len()), (150, 15));
        assert!(
            disputes_each(&rows, &rows.buyers, 2)
                .iter()
                .all(|&n| n == 10)
        );
        assert!(
            disputes_each(&rows, &rows.sellers, 3)
                .iter()
                .all(|&n| n == 100)
        );
        let heavy = [HEAVY_BUYER.to_string()];
        assert_eq!(disputes_each(&rows, &heavy, 2), [500]);
    }
}
