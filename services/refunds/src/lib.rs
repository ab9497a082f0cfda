//! Refund settlement service (`returns.refunds.v1.RefundService`): captures, exactly-once refunds on the payment method's timeline, return-gated release and chargebacks.
//!
//! A library plus a thin `main.rs`, so the suite launcher and the tests run exactly the
//! server a deployment runs.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod grpc;
pub mod roles;

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

/// Opens the database at `database_url` (migrating it) and binds `section.listen`.
pub async fn start(
    context: &SuiteContext,
    section: &ServiceConfig,
    database_url: &str,
) -> Result<Application, StartError> {
    start_service(context, section.listen, database_url, MIGRATIONS, |db| {
        spec(context, db)
    })
    .await
}

/// Starts the service from the suite configuration, as its own binary does.
pub async fn start_from_config(
    config: &Config,
    context: &SuiteContext,
) -> Result<Application, StartError> {
    let url = config.database_url(NAME, &config.refunds);
    start(context, &config.refunds, &url).await
}

/// The routes and role table of this service over an open database.
pub fn spec(context: &SuiteContext, db: Database) -> ServiceSpec {
    let service = grpc::RefundGrpc::new(context.clone(), db);
    ServiceSpec {
        name: NAME,
        grpc_name: returns_proto::service_names::REFUNDS,
        routes: Routes::new(
            returns_proto::refunds::v1::refund_service_server::RefundServiceServer::new(service),
        ),
        roles: roles::role_table(),
    }
}
