//! `returns`: runs the whole suite in one process (`cargo run --release`), and the small
//! tools people trying it need (`returns token`, `returns bench`).

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use returns::Suite;
use returns_domain::dispute::Role;
use returns_platform::config::{Config, Secret};
use returns_platform::server::shutdown_signal;
use returns_platform::{SuiteContext, TokenIssuer, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "returns",
    version,
    about = "The returns suite: disputes, return labels and refunds over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run disputes, labels and refunds (the default).
    Serve,
    /// Start a private suite on the test clock and play the seven stories, printing a timeline.
    Demo,
    /// Start a private suite in a child process and measure its RPCs under closed-loop load,
    /// printing a markdown table (see docs/performance.md). Never asserts timings.
    Bench(returns::bench::Args),
    /// Write a sample return label (PDF, PNG or ZPL, by the file's extension) to look at.
    SampleLabel {
        /// Where to write it, e.g. label.pdf, label.png or label.zpl.
        path: PathBuf,
    },
    /// Operate the services' outboxes: list waiting and dead messages, retry, discard.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Print a bearer token signed with the suite's secret.
    Token {
        /// buyer, seller, arbiter, platform or carrier.
        #[arg(long)]
        role: String,
        /// The actor id the token speaks for (a buyer id, a seller id...).
        #[arg(long)]
        sub: String,
        /// Carrier code, for carrier tokens only (e.g. ROYAL_MAIL).
        #[arg(long)]
        carrier: Option<String>,
        /// How long the token stays valid, in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxAction {
    /// Messages not yet delivered (pending and dead), oldest first, per service.
    List {
        /// Only dead messages (refused for good, or out of attempts).
        #[arg(long)]
        dead: bool,
        /// disputes, labels or refunds (default: all three).
        #[arg(long)]
        service: Option<String>,
    },
    /// Deliver a dead or waiting message again now; the receiver applies it at most once.
    Retry {
        id: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Close a dead message without delivering it.
    Discard {
        id: String,
        /// Why (kept with the message).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        service: Option<String>,
    },
}

/// Where the launcher keeps a generated session secret, so `returns token` can sign with it
/// without the secret ever being printed.
fn session_secret_path(config: &Config) -> PathBuf {
    config.data_dir.join("auth-secret")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors are printed with Display, naming the setting at fault, rather than with the
    // Debug dump a `Result` returned from `main` gets.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("returns: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    let config = Config::load()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Demo => demo().await,
        Command::Bench(args) => returns::bench::run(args.options()?).await,
        Command::SampleLabel { path } => {
            returns_labels::document::write_sample(&path)?;
            println!("wrote a sample return label to {}", path.display());
            Ok(())
        }
        Command::Outbox { action } => {
            let secret = suite_secret(&config)?;
            match action {
                OutboxAction::List { dead, service } => {
                    returns::operator::list(&config, &secret, dead, service.as_deref()).await
                }
                OutboxAction::Retry { id, service } => {
                    returns::operator::retry(&config, &secret, &id, service.as_deref()).await
                }
                OutboxAction::Discard {
                    id,
                    reason,
                    service,
                } => {
                    returns::operator::discard(&config, &secret, &id, &reason, service.as_deref())
                        .await
                }
            }
        }
        Command::Token {
            role,
            sub,
            carrier,
            ttl_hours,
        } => {
            let role = Role::parse(&role).map_err(|_| {
                format!("unknown role {role:?}: use buyer, seller, arbiter, platform or carrier")
            })?;
            let secret = suite_secret(&config)?;
            let token = TokenIssuer::new(&secret).issue(
                &sub,
                role,
                carrier.as_deref(),
                Duration::from_secs(ttl_hours * 3600),
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

/// The configured secret, else the one the running launcher saved under the data dir.
fn suite_secret(config: &Config) -> Result<Secret, &'static str> {
    match &config.auth_secret {
        Some(secret) => Ok(secret.clone()),
        None => read_session_secret(&session_secret_path(config)).ok_or(
            "no secret: set RETURNS_AUTH_SECRET, or start the suite once so it writes data/auth-secret",
        ),
    }
}

fn read_session_secret(path: &Path) -> Option<Secret> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| Secret::new(text))
}

/// Writes the secret to a new file that is owner-only from its creation, then renames it
/// over `path`: the secret is never in a readable file, even for the moment between a write
/// and a chmod, and never half-written where `returns token` could read it.
fn write_session_secret(path: &Path, secret: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    returns_platform::db::private_dir_all(folder)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".auth-secret.");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut file = builder.tempfile_in(folder)?;
    file.write_all(secret.expose().as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

/// Whether anything the launcher starts keeps files under the data dir: a generated secret,
/// a default SQLite database, or the default evidence folder.
fn uses_data_dir(config: &Config) -> bool {
    config.auth_secret.is_none()
        || config.evidence_url.is_none()
        || [&config.disputes, &config.labels, &config.refunds]
            .iter()
            .any(|section| section.database_url.is_none())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let generated = config.auth_secret.is_none();
    let secret = config.auth_secret.clone().unwrap_or_else(Secret::generate);
    let context = SuiteContext::new(&config, secret.clone())?;
    // Inside the suite, refunds logs bad settlement settings and pays through the sandbox
    // instead; started by a person, the suite refuses them as the refunds binary does, before
    // anything is written, bound or started.
    returns_refunds::Options::from_env(&context)
        .map_err(|error| format!("refusing to start: {error}"))?;
    // Each service's spans go out under its own resource, as from the separate binaries.
    let _telemetry = telemetry::init_suite(
        "returns",
        &[
            returns_disputes::NAME,
            returns_labels::NAME,
            returns_refunds::NAME,
        ],
        config.log_format,
    )?;
    if uses_data_dir(&config) && !config.data_dir.exists() {
        // Owner-only: it holds the session secret and the SQLite databases.
        returns_platform::db::private_dir_all(&config.data_dir).map_err(|error| {
            format!(
                "cannot create the data dir {}: {error}",
                config.data_dir.display()
            )
        })?;
    }
    if generated {
        let path = session_secret_path(&config);
        write_session_secret(&path, &secret)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        println!(
            "RETURNS_AUTH_SECRET is not set: generated a secret for this session and saved it to {} \
             (`returns token` signs with it).",
            path.display()
        );
    }
    let suite = Suite::start(&config, &context).await?;
    let addresses = suite.addresses();
    let metrics = suite.metrics_addresses();
    let metrics_of = |service: &str| {
        metrics
            .iter()
            .find(|(name, _)| *name == service)
            .and_then(|(_, addr)| *addr)
            .map(|addr| format!("  metrics http://{addr}/metrics"))
            .unwrap_or_default()
    };

    println!("returns suite is up (policy {}):", config.policy);
    println!(
        "  disputes  {}  returns.disputes.v1.DisputeService{}",
        addresses.disputes,
        metrics_of("disputes")
    );
    println!(
        "  labels    {}  returns.labels.v1.ReturnLabelService{}",
        addresses.labels,
        metrics_of("labels")
    );
    println!(
        "  refunds   {}  returns.refunds.v1.RefundService{}",
        addresses.refunds,
        metrics_of("refunds")
    );
    if context.test_clock.is_some() {
        println!(
            "  test clock: returns.testing.v1.TestClockService on every port (one shared clock)"
        );
    }
    println!("get a token:  cargo run --release -- token --role buyer --sub b-1");
    println!("call an RPC:  see README.md (\"Calling the suite\")");
    suite.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

/// `returns demo`: a private suite (temporary databases, ephemeral ports, the test clock
/// starting Monday 2026-03-02 09:00 UTC) playing the seven stories one after another.
async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let data = tempfile::tempdir()?;
    let mut config = Config {
        test_clock: true,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    for section in [
        &mut config.disputes,
        &mut config.labels,
        &mut config.refunds,
    ] {
        section.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let start = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 3, 2, 9, 0, 0)
        .single()
        .ok_or("invalid demo start")?;
    let context = SuiteContext::for_tests(
        Secret::generate(),
        returns_domain::policy::Policy::named(&config.policy)?,
        start,
    );
    let suite = Suite::start(&config, &context).await?;
    let addresses = suite.addresses();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(suite.run_until_stopped(async {
        let _ = stopped.await;
    }));
    println!(
        "returns demo: disputes {}, labels {}, refunds {}; test clock starts {}\n",
        addresses.disputes,
        addresses.labels,
        addresses.refunds,
        start.format("%a %Y-%m-%d %H:%M UTC")
    );
    let mut stage = returns::stories::Stage::connect(addresses, context.issuer.clone()).await?;
    stage.timeline.print = true;
    let result = play_all(&mut stage, &context).await;
    let _ = stop.send(());
    server.await??;
    result?;
    println!("\nall seven stories played.");
    Ok(())
}

async fn play_all(
    stage: &mut returns::stories::Stage,
    context: &SuiteContext,
) -> Result<(), returns::stories::StoryError> {
    stage.package_never_arrives().await?;
    println!();
    stage.damaged_item_partial_refund().await?;
    println!();
    stage.contested_order_return_required().await?;
    println!();
    stage.fourth_return_this_month_is_buyer_paid().await?;
    println!();
    stage.platinum_fast_refund_at_acceptance().await?;
    println!();
    stage.chargeback_while_refund_on_hold().await?;
    println!();
    // The outage: refunds' address is swapped for one nobody listens on, then restored.
    let peers = context.peers.clone();
    let real = peers.get("refunds").ok_or("refunds has no address")?;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    let outage =
        move |down: bool| peers.set("refunds", if down { dead.clone() } else { real.clone() });
    stage.refunds_down_while_disputes_resolve(&outage).await?;
    Ok(())
}
