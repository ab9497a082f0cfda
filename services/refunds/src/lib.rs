//! Refund settlement service (`returns.refunds.v1.RefundService`): captures, exactly-once refunds on the payment method's timeline, return-gated release and chargebacks.
//!
//! A library plus a thin `main.rs`, so the suite launcher and the tests run exactly the
//! server a deployment runs.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod http_provider;
pub mod metrics;
pub mod provider;
pub mod roles;
pub mod rpc;
pub mod settlement;
pub mod store;

use std::sync::Arc;

use returns_domain::calendar::BusinessCalendar;
use returns_domain::money::FxTable;
use returns_domain::time::Clock;

use returns_platform::config::{Config, ServiceConfig};
use returns_platform::db::{Database, Migrations};
use returns_platform::server::{StartError, start_service};
use returns_platform::{Application, ServiceSpec, SuiteContext};
use tonic::service::Routes;

/// Short name: logs, the default SQLite file name, the config section.
pub const NAME: &str = "refunds";

/// This service's schema, one migration directory per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("migrations/sqlite"),
    postgres: &sqlx::migrate!("migrations/postgres"),
};

/// Opens the database at `database_url` (migrating it) and binds `section.listen`, with
/// settlement options from the environment ([`Options::from_env`]).
pub async fn start(
    context: &SuiteContext,
    section: &ServiceConfig,
    database_url: &str,
) -> Result<Application, StartError> {
    let options = Options::from_env(context).unwrap_or_else(|error| {
        // The service binary refuses to start on this (main.rs validates first); the suite
        // launcher keeps the sandbox rather than not starting at all.
        tracing::error!(%error, "invalid refunds settlement settings; using the sandbox");
        Options::sandbox(context, provider::SandboxConfig::default()).0
    });
    start_with(context, section, database_url, options).await
}

/// [`start`] with explicit settlement options.
pub async fn start_with(
    context: &SuiteContext,
    section: &ServiceConfig,
    database_url: &str,
    options: Options,
) -> Result<Application, StartError> {
    // The settlement worker is registered with the application rather than spawned by the
    // spec, so the test clock can drive it to quiescence like the outbox relay.
    let interval = options.settlement.loop_interval;
    let mut worker = None;
    let mut app = start_service(context, section.listen, database_url, MIGRATIONS, |db| {
        worker = Some(options.worker(db.clone()));
        spec_with(
            context,
            db,
            Options {
                background: false,
                ..options
            },
        )
    })
    .await?;
    app.expose_metrics(section.metrics_listen).await?;
    metrics::register(&app);
    if let Some(worker) = worker {
        let worker = worker.with_metrics(metrics::SettlementMetrics::new(&app));
        worker
            .take_over_leases()
            .await
            .map_err(|error| StartError::Recovery(error.to_string()))?;
        let db = worker.database().clone();
        app.add_worker(Arc::new(worker), &db, context, interval);
    }
    Ok(app)
}

/// Starts the service from the suite configuration, as its own binary does.
pub async fn start_from_config(
    config: &Config,
    context: &SuiteContext,
) -> Result<Application, StartError> {
    let url = config.database_url(NAME, &config.refunds);
    start(context, &config.refunds, &url).await
}

/// How the service settles refunds; [`Options::sandbox`] is the default deployment.
#[derive(Debug, Clone)]
pub struct Options {
    /// The payment provider refunds are submitted to.
    pub provider: Arc<dyn provider::PaymentProvider>,
    /// The worker's tuning.
    pub settlement: settlement::SettlementConfig,
    /// Whether a background settlement loop runs with the server (tests that drive
    /// `process_due` themselves turn it off).
    pub background: bool,
    /// Business days for refund timelines (weekends plus configured holidays).
    pub calendar: BusinessCalendar,
    /// Rates for the USD-denominated fast-refund limits.
    pub fx: FxTable,
    /// The business clock settlement schedules money work on (the suite's clock).
    pub clock: Arc<dyn Clock>,
}

impl Options {
    /// The deterministic sandbox provider on the suite clock, with the background loop on.
    pub fn sandbox(
        context: &SuiteContext,
        config: provider::SandboxConfig,
    ) -> (Self, provider::Sandbox) {
        Self::sandbox_with_calendar(context, config, BusinessCalendar::weekends_only())
    }

    /// [`Options::sandbox`] on a calendar with holidays (timelines and sandbox settlement
    /// both skip them).
    pub fn sandbox_with_calendar(
        context: &SuiteContext,
        config: provider::SandboxConfig,
        calendar: BusinessCalendar,
    ) -> (Self, provider::Sandbox) {
        let sandbox = provider::Sandbox::new(
            context.clock.clone(),
            context.policy.clone(),
            calendar.clone(),
            config,
        );
        let options = Options {
            provider: Arc::new(sandbox.clone()),
            settlement: settlement::SettlementConfig::default(),
            background: true,
            calendar,
            fx: FxTable::default(),
            clock: context.clock.clone(),
        };
        (options, sandbox)
    }

    /// Options from the environment, on top of the sandbox defaults:
    /// - `RETURNS_HOLIDAYS`: comma-separated ISO dates that are not business days;
    /// - `RETURNS_REFUNDS_PROVIDER_URL`: use the HTTP provider at this base URL (with
    ///   `RETURNS_REFUNDS_PROVIDER_API_KEY` and `RETURNS_REFUNDS_PROVIDER_TIMEOUT_MS`);
    /// - `RETURNS_REFUNDS_SANDBOX_LATENCY_MS`, `RETURNS_REFUNDS_SANDBOX_FAILURE_PERCENT`;
    /// - `RETURNS_REFUNDS_LEASE_MS`, `RETURNS_REFUNDS_BACKOFF_MS`, `RETURNS_REFUNDS_BACKOFF_CAP_MS`,
    ///   `RETURNS_REFUNDS_MAX_ATTEMPTS`, `RETURNS_REFUNDS_POLL_MS`, `RETURNS_REFUNDS_WORKER_ID`.
    pub fn from_env(context: &SuiteContext) -> Result<Self, OptionsError> {
        let sandbox = provider::SandboxConfig {
            latency: millis("RETURNS_REFUNDS_SANDBOX_LATENCY_MS")?.unwrap_or_default(),
            failure_percent: match number("RETURNS_REFUNDS_SANDBOX_FAILURE_PERCENT")? {
                None => 0,
                Some(n) if n <= 100 => n as u8,
                Some(_) => {
                    return Err(OptionsError {
                        variable: "RETURNS_REFUNDS_SANDBOX_FAILURE_PERCENT",
                        reason: "must be 0..=100".into(),
                    });
                }
            },
        };
        let calendar = match text("RETURNS_HOLIDAYS") {
            Some(list) => parse_holidays(&list)?,
            None => BusinessCalendar::weekends_only(),
        };
        let (mut options, _) = Options::sandbox_with_calendar(context, sandbox, calendar);
        if let Some(base_url) = text("RETURNS_REFUNDS_PROVIDER_URL") {
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(OptionsError {
                    variable: "RETURNS_REFUNDS_PROVIDER_URL",
                    reason: "must be an http:// URL".into(),
                });
            }
            options.provider = Arc::new(http_provider::HttpProvider::new(
                http_provider::HttpProviderConfig {
                    base_url,
                    api_key: text("RETURNS_REFUNDS_PROVIDER_API_KEY"),
                    timeout: millis("RETURNS_REFUNDS_PROVIDER_TIMEOUT_MS")?
                        .unwrap_or(std::time::Duration::from_secs(10)),
                },
            ));
        }
        let settlement = &mut options.settlement;
        if let Some(lease) = millis("RETURNS_REFUNDS_LEASE_MS")? {
            settlement.lease = lease;
        }
        if let Some(backoff) = millis("RETURNS_REFUNDS_BACKOFF_MS")? {
            settlement.backoff_base = backoff;
        }
        if let Some(cap) = millis("RETURNS_REFUNDS_BACKOFF_CAP_MS")? {
            settlement.backoff_cap = cap;
        }
        if let Some(poll) = millis("RETURNS_REFUNDS_POLL_MS")? {
            settlement.loop_interval = poll;
        }
        if let Some(attempts) = number("RETURNS_REFUNDS_MAX_ATTEMPTS")? {
            settlement.max_attempts = u32::try_from(attempts.max(1)).unwrap_or(u32::MAX);
        }
        if let Some(worker) = text("RETURNS_REFUNDS_WORKER_ID") {
            settlement.worker_id = worker;
        }
        Ok(options)
    }

    /// The settlement worker these options describe, over `db`.
    pub fn worker(&self, db: Database) -> settlement::Settlement {
        settlement::Settlement::new(
            db,
            self.provider.clone(),
            self.settlement.clone(),
            self.clock.clone(),
        )
    }
}

/// A settlement setting in the environment that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}: {reason}")]
pub struct OptionsError {
    pub variable: &'static str,
    pub reason: String,
}

fn text(variable: &'static str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// `2026-12-25,2027-01-01` as a calendar with those holidays.
pub fn parse_holidays(list: &str) -> Result<BusinessCalendar, OptionsError> {
    let dates = list
        .split(',')
        .map(str::trim)
        .filter(|date| !date.is_empty())
        .map(|date| {
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| OptionsError {
                variable: "RETURNS_HOLIDAYS",
                reason: format!("{date:?} is not a YYYY-MM-DD date"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BusinessCalendar::new(dates))
}

fn number(variable: &'static str) -> Result<Option<u64>, OptionsError> {
    text(variable)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| OptionsError {
                variable,
                reason: format!("{v:?} is not a whole number"),
            })
        })
        .transpose()
}

fn millis(variable: &'static str) -> Result<Option<std::time::Duration>, OptionsError> {
    Ok(number(variable)?.map(std::time::Duration::from_millis))
}

/// The routes and role table of this service over an open database, settling through the
/// sandbox provider.
pub fn spec(context: &SuiteContext, db: Database) -> ServiceSpec {
    let (options, _) = Options::sandbox(context, provider::SandboxConfig::default());
    spec_with(context, db, options)
}

/// The service with explicit settlement options; starts the background settlement loop when
/// `options.background` is set (it stops when the server drops the service).
pub fn spec_with(context: &SuiteContext, db: Database, options: Options) -> ServiceSpec {
    let settlement = if options.background {
        let guard = settlement::spawn_loop(options.worker(db.clone()), context);
        if guard.is_none() {
            tracing::warn!("no tokio runtime: the settlement loop does not run");
        }
        guard
    } else {
        None
    };
    let service = rpc::RefundGrpc::new(
        context.clone(),
        db,
        options.fx,
        options.calendar,
        settlement,
    );
    ServiceSpec {
        name: NAME,
        grpc_name: returns_proto::service_names::REFUNDS,
        routes: Routes::new(
            returns_proto::refunds::v1::refund_service_server::RefundServiceServer::new(service),
        ),
        roles: roles::role_table(),
    }
}
