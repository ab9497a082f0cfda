//! `returns`: runs the whole suite in one process (`cargo run --release`), and the small
//! tools people trying it need (`returns token`).

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

/// Where the launcher keeps a generated session secret, so `returns token` can sign with it
/// without the secret ever being printed.
fn session_secret_path(config: &Config) -> PathBuf {
    config.data_dir.join("auth-secret")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let config = Config::load()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Token {
            role,
            sub,
            carrier,
            ttl_hours,
        } => {
            let role = Role::parse(&role).map_err(|_| {
                format!("unknown role {role:?}: use buyer, seller, arbiter, platform or carrier")
            })?;
            let secret = match &config.auth_secret {
                Some(secret) => secret.clone(),
                None => read_session_secret(&session_secret_path(&config)).ok_or(
                    "no secret: set RETURNS_AUTH_SECRET, or start the suite once so it writes data/auth-secret",
                )?,
            };
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

fn read_session_secret(path: &Path) -> Option<Secret> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| Secret::new(text))
}

fn write_session_secret(path: &Path, secret: &Secret) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, secret.expose())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = telemetry::init("returns", config.log_format)?;
    let secret = match &config.auth_secret {
        Some(secret) => secret.clone(),
        None => {
            let secret = Secret::generate();
            let path = session_secret_path(&config);
            write_session_secret(&path, &secret)?;
            println!(
                "RETURNS_AUTH_SECRET is not set: generated a secret for this session and saved it to {} \
                 (`returns token` signs with it).",
                path.display()
            );
            secret
        }
    };
    let context = SuiteContext::new(&config, secret)?;
    let suite = Suite::start(&config, &context).await?;
    let addresses = suite.addresses();

    println!("returns suite is up (policy {}):", config.policy);
    println!(
        "  disputes  {}  returns.disputes.v1.DisputeService",
        addresses.disputes
    );
    println!(
        "  labels    {}  returns.labels.v1.ReturnLabelService",
        addresses.labels
    );
    println!(
        "  refunds   {}  returns.refunds.v1.RefundService",
        addresses.refunds
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
