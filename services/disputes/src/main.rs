//! The disputes service as its own binary, for deployments that run the services apart.

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use returns_platform::config::Config;
use returns_platform::server::shutdown_signal;
use returns_platform::{SuiteContext, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    let _telemetry = telemetry::init("returns-disputes", config.log_format)?;
    let secret = config
        .auth_secret
        .clone()
        .ok_or("RETURNS_AUTH_SECRET is required when a service runs on its own")?;
    let context = SuiteContext::new(&config, secret)?;
    let app = returns_disputes::start_from_config(&config, &context).await?;
    println!("disputes listening on {}", app.local_addr());
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}
