//! Return label service (`returns.labels.v1.ReturnLabelService`): return options, partner drop-off and pickup, printable labels and carrier tracking.
//!
//! A library plus a thin `main.rs`, so the suite launcher and the tests run exactly the
//! server a deployment runs.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod directory;
pub mod document;
pub mod roles;
pub mod rpc;
mod store;

use returns_platform::config::{Config, ServiceConfig};
use returns_platform::db::{Database, Migrations};
use returns_platform::server::{StartError, start_service};
use returns_platform::{Application, ServiceSpec, SuiteContext};
use tonic::service::Routes;

/// Short name: logs, the default SQLite file name, the config section.
pub const NAME: &str = "labels";

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
    let mut app = start_service(context, section.listen, database_url, MIGRATIONS, |db| {
        spec(context, db)
    })
    .await?;
    app.expose_metrics(section.metrics_listen).await?;
    Ok(app)
}

/// Starts the service from the suite configuration, as its own binary does.
pub async fn start_from_config(
    config: &Config,
    context: &SuiteContext,
) -> Result<Application, StartError> {
    let url = config.database_url(NAME, &config.labels);
    start(context, &config.labels, &url).await
}

/// The routes and role table of this service over an open database.
pub fn spec(context: &SuiteContext, db: Database) -> ServiceSpec {
    let directory = directory::Directory::shipped().unwrap_or_else(|error| {
        tracing::error!(%error, "the shipped carrier directory is invalid; serving no country");
        directory::Directory::empty()
    });
    let service = rpc::LabelGrpc::new(context.clone(), db, std::sync::Arc::new(directory));
    ServiceSpec {
        name: NAME,
        grpc_name: returns_proto::service_names::LABELS,
        routes: Routes::new(
            returns_proto::labels::v1::return_label_service_server::ReturnLabelServiceServer::new(
                service,
            ),
        ),
        roles: roles::role_table(),
    }
}
