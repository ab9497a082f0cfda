//! Dispute negotiation service (`returns.disputes.v1.DisputeService`): the dispute life-cycle: order facts, opening, offers, escalation, rulings and the deadlines that fire by themselves.
//!
//! A library plus a thin `main.rs`, so the suite launcher and the tests run exactly the
//! server a deployment runs.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod deadlines;
pub mod evidence;
pub mod metrics;
pub mod roles;
pub mod rpc;
pub mod store;

pub use deadlines::process_due_deadlines;

use returns_platform::config::{Config, ServiceConfig};
use returns_platform::db::{Database, Migrations};
use returns_platform::server::{StartError, start_service};
use returns_platform::{Application, ServiceSpec, SuiteContext};
use std::sync::Arc;

use tonic::service::Routes;

/// Short name: logs, the default SQLite file name, the config section.
pub const NAME: &str = "disputes";

/// This service's schema, one migration directory per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("migrations/sqlite"),
    postgres: &sqlx::migrate!("migrations/postgres"),
};

/// Opens the database at `database_url` (migrating it) and binds `section.listen`;
/// uploaded evidence goes to `$RETURNS_DATA_DIR/evidence`.
pub async fn start(
    context: &SuiteContext,
    section: &ServiceConfig,
    database_url: &str,
) -> Result<Application, StartError> {
    start_with(
        context,
        section,
        database_url,
        evidence::EvidenceStore::default_local(),
    )
    .await
}

async fn start_with(
    context: &SuiteContext,
    section: &ServiceConfig,
    database_url: &str,
    evidence: evidence::EvidenceStore,
) -> Result<Application, StartError> {
    let mut opened = None;
    let mut app = start_service(context, section.listen, database_url, MIGRATIONS, |db| {
        opened = Some(db.clone());
        build_spec(context, db, evidence, false)
    })
    .await?;
    // Registered with the application rather than spawned by the spec, so the suite's
    // settler can drive deadlines to quiescence as it does the outbox relay.
    if let Some(db) = opened {
        let worker = deadlines::DeadlineWorker::new(db.clone(), context.clone());
        app.add_worker(Arc::new(worker), &db, context, deadlines::POLL_INTERVAL);
    }
    app.expose_metrics(section.metrics_listen).await?;
    metrics::register(&app, context);
    Ok(app)
}

/// Starts the service from the suite configuration, as its own binary does.
pub async fn start_from_config(
    config: &Config,
    context: &SuiteContext,
) -> Result<Application, StartError> {
    let url = config.database_url(NAME, &config.disputes);
    let evidence = match &config.evidence_url {
        Some(url) => evidence::EvidenceStore::from_url(url)
            .map_err(|error| StartError::Setting(error.to_string()))?,
        None => evidence::EvidenceStore::local(config.data_dir.join("evidence")),
    };
    start_with(context, &config.disputes, &url, evidence).await
}

/// The routes and role table of this service over an open database (uploads go to the
/// default evidence folder).
pub fn spec(context: &SuiteContext, db: Database) -> ServiceSpec {
    spec_with_evidence(context, db, evidence::EvidenceStore::default_local())
}

/// As [`spec`], with uploaded evidence stored in `evidence`. The spec spawns its own
/// deadline worker (tied to the service's lifetime), which is what a bare test server needs.
pub fn spec_with_evidence(
    context: &SuiteContext,
    db: Database,
    evidence: evidence::EvidenceStore,
) -> ServiceSpec {
    build_spec(context, db, evidence, true)
}

fn build_spec(
    context: &SuiteContext,
    db: Database,
    evidence: evidence::EvidenceStore,
    spawn_deadline_worker: bool,
) -> ServiceSpec {
    // A spawned worker lives as long as the service: dropping the server stops it.
    let worker = if spawn_deadline_worker {
        deadlines::spawn_worker(db.clone(), context.clone())
    } else {
        None
    };
    let service = rpc::DisputeGrpc::new(context.clone(), db, evidence, worker);
    ServiceSpec {
        name: NAME,
        grpc_name: returns_proto::service_names::DISPUTES,
        routes: Routes::new(
            returns_proto::disputes::v1::dispute_service_server::DisputeServiceServer::new(service),
        ),
        roles: roles::role_table(),
    }
}
