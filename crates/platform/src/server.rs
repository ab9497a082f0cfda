//! The bootstrap every service runs on: bind first (port 0 in tests), then serve the
//! service with health, reflection, auth and (in test mode) the test clock, until a
//! shutdown signal (ARCHITECTURE.md convention 6).

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, RoleTable, TokenVerifier};
use crate::test_clock::{SharedTestClock, TestClockGrpc};

/// What a service hands the bootstrap: its routes and who may call which method.
pub struct ServiceSpec {
    /// Short name for logs: `disputes`, `labels`, `refunds`.
    pub name: &'static str,
    /// The fully qualified gRPC service name (health and reflection report it).
    pub grpc_name: &'static str,
    pub routes: Routes,
    pub roles: RoleTable,
}

/// A bound, not yet serving, service. Tests read [`Application::local_addr`] before
/// serving, so they never wait on a port.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    spec: ServiceSpec,
    verifier: TokenVerifier,
    test_clock: Option<SharedTestClock>,
    /// Background loops (the outbox relay) that live as long as the server.
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// The durable background work behind those loops, for `Suite::settle`.
    registered: Vec<std::sync::Arc<crate::worker::Exclusive>>,
    /// This service's outbox relay, if it runs one, with its turn (see `worker::Exclusive`).
    relay: Option<(
        crate::relay::Relay,
        std::sync::Arc<crate::worker::Exclusive>,
    )>,
}

impl Application {
    /// Binds `addr` (use port 0 for an ephemeral port).
    pub async fn bind(
        addr: SocketAddr,
        spec: ServiceSpec,
        verifier: TokenVerifier,
        test_clock: Option<SharedTestClock>,
    ) -> std::io::Result<Application> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Application {
            listener,
            addr,
            spec,
            verifier,
            test_clock,
            workers: Vec::new(),
            registered: Vec::new(),
            relay: None,
        })
    }

    /// Runs `worker` in the background while the server runs (woken by commits, the test
    /// clock moving, or every `poll`), and keeps it for [`Application::workers`].
    pub fn add_worker(
        &mut self,
        worker: std::sync::Arc<dyn crate::worker::Worker>,
        context: &crate::SuiteContext,
        poll: std::time::Duration,
    ) {
        let worker = std::sync::Arc::new(crate::worker::Exclusive::new(worker));
        let wake = crate::worker::Wake {
            commits: context.outbox_signal.clone(),
            clock_moved: context.test_clock.as_ref().map(|clock| clock.subscribe()),
        };
        self.spawn_worker(crate::worker::run_forever(
            worker.clone(),
            context.clock.clone(),
            wake,
            poll,
        ));
        self.registered.push(worker);
    }

    /// Every registered background worker (outbox relay first).
    pub fn workers(&self) -> Vec<std::sync::Arc<crate::worker::Exclusive>> {
        self.registered.clone()
    }

    /// The service's outbox relay, to force deliveries past their backoff, with the turn to
    /// hold meanwhile so the background relay is not delivering the same rows.
    pub fn relay(
        &self,
    ) -> Option<(
        crate::relay::Relay,
        std::sync::Arc<crate::worker::Exclusive>,
    )> {
        self.relay.clone()
    }

    /// Runs `worker` until the server stops.
    pub fn spawn_worker(&mut self, worker: impl Future<Output = ()> + Send + 'static) {
        self.workers.push(tokio::spawn(worker));
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets calls in flight end.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let Application {
            listener,
            addr,
            spec,
            verifier,
            test_clock,
            workers,
            ..
        } = self;
        // Stop the workers however serving ends, including by an error or a panic.
        let _workers = AbortOnDrop(workers);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(spec.grpc_name, ServingStatus::Serving)
            .await;
        health.set_service_status("", ServingStatus::Serving).await;

        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(returns_proto::FILE_DESCRIPTOR_SET)
            .with_service_name(spec.grpc_name)
            .with_service_name("grpc.reflection.v1.ServerReflection");
        let mut roles = spec.roles;
        let mut routes = spec.routes.add_service(health_service);
        if let Some(clock) = test_clock {
            let name = returns_proto::service_names::TEST_CLOCK;
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
            reflection = reflection.with_service_name(name);
            roles = roles.allow_any_role(name);
            routes = routes.add_service(TestClockGrpc::server(clock));
        }
        match reflection.build_v1() {
            Ok(service) => routes = routes.add_service(service),
            Err(error) => {
                tracing::warn!(%error, "reflection unavailable: descriptor set rejected")
            }
        }

        tracing::info!(service = spec.name, %addr, "serving");
        Server::builder()
            .trace_fn(crate::trace_context::server_span)
            .layer(AuthLayer::new(verifier, roles))
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        tracing::info!(service = spec.name, "stopped");
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes send before killing).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] crate::db::DatabaseError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A service-specific setting that cannot be used.
    #[error("invalid setting: {0}")]
    Setting(String),
}

/// Opens a service's database at `database_url` (migrating it), builds its routes over it
/// with `spec`, and binds `listen`: the start-up every service shares.
pub async fn start_service(
    context: &crate::SuiteContext,
    listen: SocketAddr,
    database_url: &str,
    migrations: crate::db::Migrations,
    spec: impl FnOnce(crate::Database) -> ServiceSpec,
) -> Result<Application, StartError> {
    let db = crate::Database::open(database_url, migrations).await?;
    let spec = spec(db.clone());
    let relay =
        crate::relay::Relay::new(db, spec.name, context.peers.clone(), context.issuer.clone());
    let mut app = Application::bind(
        listen,
        spec,
        context.verifier.clone(),
        context.test_clock.clone(),
    )
    .await
    .map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    app.add_worker(
        std::sync::Arc::new(relay.clone()),
        context,
        crate::relay::RELAY_POLL,
    );
    app.relay = app.registered.last().cloned().map(|turn| (relay, turn));
    Ok(app)
}

/// Aborts background tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
