//! `returns bench`: a private suite started in this process (fresh databases, ephemeral
//! ports, a generated secret, the test clock held still) measured under closed-loop load
//! over real gRPC clients. It is a tool, not a test: it never asserts timings, and fails only
//! when a scenario could not run at all. docs/performance.md says what each scenario
//! measures and shows a recorded run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use prost_types::Timestamp;
use returns_domain::dispute::Role;
use returns_platform::config::{Config, Secret, redact_url, scrub_secrets};
use returns_platform::{SuiteContext, TokenIssuer};
use returns_proto::common::v1::{
    Address, BuyerTier, DisputeReason, EvidenceKind, Money, PaymentMethod,
};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{
    AcceptOfferRequest, DisputeKind, DisputeState, GetDisputeRequest, ListDisputesRequest,
    NewEvidence, OpenDisputeRequest, RecordOrderRequest, RequestedResolution, ResolutionType,
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

use crate::stories::Stage;
use crate::{Suite, SuiteAddresses};

/// Anything that stops the bench (or one scenario of it).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BenchError>;

/// Tokens outlive any run; they are signed once, before the timed windows.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Concurrent clients seeding disputes and preparing fixtures (outside the timed windows).
const SETUP_PARALLELISM: usize = 32;
/// ListDisputes page size and depth of the deep-page scenario.
const DEEP_PAGE_SIZE: i32 = 20;
const DEEP_PAGE: usize = 100;

/// What `returns bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite`, or a PostgreSQL admin URL through which fresh databases are created.
    pub database: String,
    pub seed_disputes: usize,
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub scenarios: Vec<Scenario>,
}

/// One measured operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Health,
    GetDispute,
    ListByBuyer,
    ListBySeller,
    ListByState,
    ListDeepPage,
    RecordOrder,
    OpenDispute,
    CreateReturnLabel,
    CreateRefund,
    WholeReturn,
}

impl Scenario {
    /// Every scenario, in the order they run: reads on the seeded data first, then writes.
    pub const ALL: [Scenario; 11] = [
        Scenario::Health,
        Scenario::GetDispute,
        Scenario::ListByBuyer,
        Scenario::ListBySeller,
        Scenario::ListByState,
        Scenario::ListDeepPage,
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
            Scenario::ListDeepPage => "list-deep-page",
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
            Scenario::ListDeepPage => "ListDisputes deep page",
            Scenario::RecordOrder => "RecordOrder",
            Scenario::OpenDispute => "OpenDispute",
            Scenario::CreateReturnLabel => "CreateReturnLabel",
            Scenario::CreateRefund => "CreateRefund",
            Scenario::WholeReturn => "whole return (13 RPCs)",
        }
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

async fn run_on(
    options: &Options,
    config: &Config,
    databases: Option<&PostgresDatabases>,
) -> Result<()> {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .ok_or("invalid start time")?;
    let context = SuiteContext::for_tests(
        Secret::generate(),
        returns_domain::policy::Policy::named(&config.policy)?,
        start,
    );
    let suite = Suite::start(config, &context).await?;
    let addresses = suite.addresses();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(suite.run_until_stopped(async {
        let _ = stopped.await;
    }));
    println!("# returns bench\n");
    println!("- machine: {}", machine());
    println!(
        "- backend: {}",
        match databases {
            Some(d) => format!(
                "PostgreSQL via {} (fresh databases {}, dropped afterwards)",
                redact_url(&d.admin_url),
                d.names.join(", ")
            ),
            None => "SQLite (fresh files in a temporary directory)".to_string(),
        }
    );
    println!(
        "- suite: in this process, disputes {}, labels {}, refunds {}; test clock held at {}",
        addresses.disputes,
        addresses.labels,
        addresses.refunds,
        start.format("%Y-%m-%d %H:%M UTC")
    );
    let result = bench(options, addresses, &context, start).await;
    let _ = stop.send(());
    let served = server.await;
    let result = result?;
    served??;
    result
}

/// Seeds, then measures every scenario at every concurrency; `Ok(Err)` when some could not run.
async fn bench(
    options: &Options,
    addresses: SuiteAddresses,
    context: &SuiteContext,
    now: DateTime<Utc>,
) -> Result<Result<()>> {
    let issuer = context.issuer.clone();
    let platform = bearer(&issuer, Role::Platform, "bench")?;
    let mut world = World {
        addresses,
        platform,
        now,
        clients: Clients::connect(addresses).await?,
        next_id: AtomicU64::new(0),
        issuer,
        seeded: Seeded::default(),
    };
    let began = Instant::now();
    world.seeded = seed(&world, options.seed_disputes).await?;
    println!(
        "- seeded {} disputes in {:.1} s through the API ({} concurrent clients; each one \
         RecordOrder + OpenDispute, every 4th also AcceptOffer by the seller so RESOLVED; \
         buyers: {}, sellers: {}), then AdvanceClock(0)",
        world.seeded.dispute_ids.len(),
        began.elapsed().as_secs_f64(),
        SETUP_PARALLELISM,
        world.seeded.buyers.len(),
        world.seeded.sellers.len()
    );
    println!(
        "- closed loop: C clients, each its own connections, calling back to back for {:.1} s \
         after a warm-up; latency of successful calls; fixtures made outside the window",
        options.duration.as_secs_f64()
    );
    let world = Arc::new(world);
    let mut rows = Vec::new();
    for &scenario in &options.scenarios {
        for &c in &options.concurrency {
            eprintln!("bench: {} at C={c}...", scenario.name());
            let outcome = match measure(&world, scenario, c, options.duration).await {
                Ok(m) if m.ops == 0 => Err(format!("no call succeeded ({})", m.errors_text())),
                Ok(m) => Ok(m),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = &outcome {
                eprintln!("bench: {} at C={c} could not run: {error}", scenario.name());
            }
            rows.push(Row {
                scenario,
                c,
                outcome,
            });
        }
    }
    println!();
    print_table(&world, &rows);
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

/// What one scenario at one concurrency gave.
struct Row {
    scenario: Scenario,
    c: usize,
    outcome: std::result::Result<Measurement, String>,
}

fn print_table(world: &World, rows: &[Row]) {
    println!(
        "| scenario | C | ops | rps | p50 ms | p99 ms | max ms | errors (by code) | p50 / Health p50 |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|---|--:|");
    let mut notes = Vec::new();
    for row in rows {
        let title = match row.scenario {
            Scenario::ListDeepPage => format!(
                "ListDisputes page {} ({} a page)",
                world.seeded.deep_page.0, DEEP_PAGE_SIZE
            ),
            other => other.title().to_string(),
        };
        match &row.outcome {
            Err(error) => println!(
                "| {title} | {} | - | - | - | - | - | could not run: {error} | - |",
                row.c
            ),
            Ok(m) => {
                let health = rows
                    .iter()
                    .find(|h| h.scenario == Scenario::Health && h.c == row.c)
                    .and_then(|h| h.outcome.as_ref().ok())
                    .map(|h| h.percentile(0.50));
                let ratio = match health {
                    Some(h) if !h.is_zero() => {
                        format!("{:.1}", m.percentile(0.50).as_secs_f64() / h.as_secs_f64())
                    }
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
                    "| {title}{mark} | {} | {} | {:.0} | {} | {} | {} | {} | {ratio} |",
                    row.c,
                    m.ops,
                    m.rps(),
                    millis(m.percentile(0.50)),
                    millis(m.percentile(0.99)),
                    millis(m.latencies.last().copied().unwrap_or_default()),
                    m.errors_text(),
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
         clients and suite share this process and its cores",
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

/// Fresh PostgreSQL databases, one per service, made through an admin URL.
struct PostgresDatabases {
    admin_url: String,
    names: Vec<String>,
    urls: Vec<String>,
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
        for service in ["disputes", "labels", "refunds"] {
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
    /// Bearer tokens of buyer `b-seed-{i}` and seller `s-seed-{i}`, by `i`.
    buyers: Vec<AsciiMetadataValue>,
    sellers: Vec<AsciiMetadataValue>,
    /// The deep page's number and its page token (empty: the first page).
    deep_page: (usize, String),
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

fn seed_buyer(i: usize) -> String {
    format!("b-seed-{i}")
}

fn seed_seller(i: usize) -> String {
    format!("s-seed-{i}")
}

/// Seeds `n` disputes through the API: about ten per buyer and a hundred per seller; every
/// fourth is accepted by its seller (RESOLVED), the rest stay OPEN.
async fn seed(world: &World, n: usize) -> Result<Seeded> {
    let buyer_count = (n / 10).max(1);
    let seller_count = (n / 100).max(1);
    let buyers = (0..buyer_count)
        .map(|i| world.token(Role::Buyer, &seed_buyer(i)))
        .collect::<Result<Vec<_>>>()?;
    let sellers = (0..seller_count)
        .map(|i| world.token(Role::Seller, &seed_seller(i)))
        .collect::<Result<Vec<_>>>()?;
    let results: Vec<Result<String>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut clients = world.clients.clone();
            let platform = world.platform.clone();
            let buyer = buyers[i % buyer_count].clone();
            let seller = sellers[i % seller_count].clone();
            let now = world.now;
            async move {
                let order_id = format!("o-seed-{i}");
                let order = delivered_order(
                    now,
                    &order_id,
                    &seed_buyer(i % buyer_count),
                    &seed_seller(i % seller_count),
                );
                clients
                    .disputes
                    .record_order(call(&platform, order))
                    .await?;
                let dispute = clients
                    .disputes
                    .open_dispute(call(&buyer, damaged_dispute(&order_id)))
                    .await?
                    .into_inner()
                    .dispute
                    .ok_or("OpenDispute returned no dispute")?;
                if i % 4 == 0 {
                    let offer_id = dispute
                        .offers
                        .first()
                        .map(|o| o.offer_id.clone())
                        .ok_or("the buyer's request is offer one")?;
                    let accept = AcceptOfferRequest {
                        request_id: format!("accept-{order_id}"),
                        dispute_id: dispute.dispute_id.clone(),
                        offer_id,
                    };
                    clients.disputes.accept_offer(call(&seller, accept)).await?;
                }
                Ok(dispute.dispute_id)
            }
        })
        .buffer_unordered(SETUP_PARALLELISM)
        .collect()
        .await;
    let dispute_ids = results
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .map_err(|error| format!("seeding failed: {error}"))?;
    world.wait_until_quiet().await?;
    let deep_page = deep_page_token(world).await?;
    Ok(Seeded {
        dispute_ids,
        buyers,
        sellers,
        deep_page,
    })
}

/// Walks ListDisputes (no filter, pages of 20) to page 100, or the last page there is.
async fn deep_page_token(world: &World) -> Result<(usize, String)> {
    let mut disputes = world.clients.disputes.clone();
    let mut page = (1, String::new());
    while page.0 < DEEP_PAGE {
        let listed = disputes
            .list_disputes(call(
                &world.platform,
                ListDisputesRequest {
                    page_size: DEEP_PAGE_SIZE,
                    page_token: page.1.clone(),
                    ..Default::default()
                },
            ))
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
    /// The scenario's fixtures are all used.
    Exhausted,
}

fn outcome<T>(result: std::result::Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
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
            let request = ListDisputesRequest {
                buyer_id: seed_buyer(i),
                ..Default::default()
            };
            outcome(
                task.clients
                    .disputes
                    .list_disputes(call(&seeded.buyers[i], request))
                    .await,
            )
        }
        Scenario::ListBySeller => {
            let i = task.pick(seeded.sellers.len());
            let request = ListDisputesRequest {
                seller_id: seed_seller(i),
                ..Default::default()
            };
            outcome(
                task.clients
                    .disputes
                    .list_disputes(call(&seeded.sellers[i], request))
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
        Scenario::ListDeepPage => {
            let request = ListDisputesRequest {
                page_size: DEEP_PAGE_SIZE,
                page_token: seeded.deep_page.1.clone(),
                ..Default::default()
            };
            outcome(
                clients
                    .disputes
                    .list_disputes(call(&world.platform, request))
                    .await,
            )
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
                Err(error) => Outcome::Failed(match error.downcast_ref::<tonic::Status>() {
                    Some(status) => format!("{:?}", status.code()),
                    None => "story".to_string(),
                }),
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
}

impl Measurement {
    fn rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
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
) -> (Measurement, Vec<Task>) {
    let start = Instant::now();
    let deadline = window.map(|w| start + w);
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|mut task| {
            let world = world.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut exhausted = false;
                while deadline.is_none_or(|d| Instant::now() < d) {
                    let began = Instant::now();
                    match one_op(&world, scenario, &mut task, pool.as_deref()).await {
                        Outcome::Ok => latencies.push(began.elapsed()),
                        Outcome::Failed(code) => *errors.entry(code).or_default() += 1,
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
    (measurement, tasks)
}

/// One scenario at concurrency `c`: a warm-up (for fixture scenarios, a pilot that also
/// sizes the fixtures), then the timed window.
async fn measure(
    world: &Arc<World>,
    scenario: Scenario,
    c: usize,
    duration: Duration,
) -> Result<Measurement> {
    // Whatever earlier windows left due (outbox deliveries, settlement) runs now, untimed.
    world.wait_until_quiet().await?;
    let tasks =
        futures::future::try_join_all((0..c).map(|i| Task::connect(world, scenario, i))).await?;
    if scenario.needs_fixtures() {
        let pilot = prepare(world, scenario, (4 * c).max(32)).await?;
        let (pilot, tasks) = drive(world, scenario, tasks, None, Some(Arc::new(pilot))).await;
        if pilot.ops == 0 {
            return Err(format!("every warm-up call failed ({})", pilot.errors_text()).into());
        }
        // Enough for the window at four times the pilot's rate: the pilot is short, starts
        // cold and may hit a stall, so the steady state is faster. Leftovers only cost setup.
        let wanted = pilot.rps() * duration.as_secs_f64() * 4.0;
        let count = (wanted.ceil() as usize + c).clamp(2 * c, 500_000);
        let pool = Arc::new(prepare(world, scenario, count).await?);
        Ok(drive(world, scenario, tasks, Some(duration), Some(pool))
            .await
            .0)
    } else {
        let warm_up = (duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let (warm, tasks) = drive(world, scenario, tasks, Some(warm_up), None).await;
        if warm.ops == 0 {
            return Err(format!("every warm-up call failed ({})", warm.errors_text()).into());
        }
        Ok(drive(world, scenario, tasks, Some(duration), None).await.0)
    }
}
