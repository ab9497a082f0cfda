//! The refunds service as its own binary, for deployments that run the services apart.

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use returns_platform::config::Config;
use returns_platform::server::shutdown_signal;
use returns_platform::{SuiteContext, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    let _telemetry = telemetry::init("returns-refunds", config.log_format)?;
    let secret = config
        .auth_secret
        .clone()
        .ok_or("RETURNS_AUTH_SECRET is required when a service runs on its own")?;
    let context = SuiteContext::new(&config, secret)?;
    // Refuse to start on unusable settlement settings rather than paying through the sandbox.
    let options = returns_refunds::Options::from_env(&context)?;
    let url = config.database_url(returns_refunds::NAME, &config.refunds);
    let app = returns_refunds::start_with(&context, &config.refunds, &url, options).await?;
    println!("refunds listening on {}", app.local_addr());
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}
