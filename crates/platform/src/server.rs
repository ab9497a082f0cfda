//! The bootstrap every service runs on: bind first (port 0 in tests), then serve the
//! service with health, reflection, auth and (in test mode) the test clock, until a
//! shutdown signal (binding first hands tests the address, so none waits on a port).

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
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
    /// Background loops (the outbox relay, deadlines, settlement) that live as long as the
    /// server. They start when serving starts, not at bind: in the launcher the peers'
    /// addresses are only known once all three services are bound.
    workers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>>,
    /// The durable background work behind those loops, for `Suite::settle`.
    registered: Vec<std::sync::Arc<crate::worker::Exclusive>>,
    /// The operator's outbox service over this service's database (set by [`start_service`]).
    outbox_admin: Option<
        returns_proto::operations::v1::outbox_service_server::OutboxServiceServer<
            crate::outbox_admin::OutboxAdmin,
        >,
    >,
    /// The service's database, which health probes with a write (set by [`start_service`]).
    db: Option<crate::Database>,
    /// Requests served at once before shedding (set by [`start_service`]; unbounded in bare
    /// test servers).
    max_in_flight: Option<usize>,
    /// Where `registered` is also listed for the test clock; emptied when serving ends.
    registry: crate::worker::WorkerRegistry,
    /// This service's metrics (its own meter provider and resource).
    metrics: crate::metrics::ServiceMetrics,
    /// The admin port serving `/metrics`, when one is configured.
    admin: Option<(TcpListener, SocketAddr)>,
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
        let metrics = crate::metrics::ServiceMetrics::new(spec.name);
        Ok(Application {
            listener,
            addr,
            spec,
            verifier,
            test_clock,
            workers: Vec::new(),
            registered: Vec::new(),
            outbox_admin: None,
            db: None,
            max_in_flight: None,
            registry: crate::worker::WorkerRegistry::default(),
            metrics,
            admin: None,
        })
    }

    /// This service's metrics, for the instruments a service adds of its own.
    pub fn metrics(&self) -> &crate::metrics::ServiceMetrics {
        &self.metrics
    }

    /// The service's database (set by [`start_service`]; `None` for bare test servers).
    pub fn database(&self) -> Option<&crate::Database> {
        self.db.as_ref()
    }

    /// Binds the admin port serving `/metrics` at `addr` (port 0 for an ephemeral one);
    /// `None` serves none. It serves from when the service serves until it stops.
    pub async fn expose_metrics(&mut self, addr: Option<SocketAddr>) -> Result<(), StartError> {
        let Some(addr) = addr else {
            return Ok(());
        };
        let bound = async {
            let listener = crate::metrics::bind_admin(addr).await?;
            let local = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, local))
        };
        self.admin = Some(
            bound
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        );
        Ok(())
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// Runs `worker` in the background while the server runs (woken by commits to `db`
    /// unless it only polls, by the test clock moving, or every `poll`), and keeps it for
    /// [`Application::workers`].
    pub fn add_worker(
        &mut self,
        worker: std::sync::Arc<dyn crate::worker::Worker>,
        db: &crate::db::Database,
        context: &crate::SuiteContext,
        poll: std::time::Duration,
    ) {
        let worker = std::sync::Arc::new(crate::worker::Exclusive::new(worker));
        let wake = crate::worker::Wake {
            commits: crate::worker::Worker::wakes_on_commits(worker.as_ref())
                .then(|| db.work_signal().subscribe()),
            clock_moved: context.test_clock.as_ref().map(|clock| clock.subscribe()),
        };
        self.spawn_worker(crate::worker::run_forever(
            worker.clone(),
            context.clock.clone(),
            wake,
            poll,
        ));
        context.workers.register(self.spec.name, worker.clone());
        self.registry = context.workers.clone();
        self.registered.push(worker);
    }

    /// Every registered background worker (outbox relay first).
    pub fn workers(&self) -> Vec<std::sync::Arc<crate::worker::Exclusive>> {
        self.registered.clone()
    }

    /// Runs `worker` from when the server starts serving until it stops.
    pub fn spawn_worker(&mut self, worker: impl Future<Output = ()> + Send + 'static) {
        self.workers.push(Box::pin(worker));
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
            registered,
            outbox_admin,
            db,
            max_in_flight,
            registry,
            metrics,
            admin,
        } = self;
        // Stop the workers however serving ends, including by an error or a panic, and take
        // them off the test clock's list.
        let _workers = AbortOnDrop {
            tasks: Vec::new(),
            registered,
            registry,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(spec.grpc_name, ServingStatus::Serving)
            .await;
        health.set_service_status("", ServingStatus::Serving).await;

        // Health follows the database: NOT_SERVING while it cannot take a write (probed every
        // few seconds, and at once after any INTERNAL answer), SERVING again once it can.
        let probe_now = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut tasks: Vec<tokio::task::JoinHandle<()>> =
            workers.into_iter().map(tokio::spawn).collect();
        if let Some((listener, admin_addr)) = admin {
            tracing::info!(service = spec.name, %admin_addr, "serving /metrics");
            tasks.push(tokio::spawn(crate::metrics::serve_admin(
                listener,
                metrics.clone(),
            )));
        }
        if metrics.exporting() {
            tasks.push(tokio::spawn(metrics.clone().refresh_forever()));
        }
        if let Some(db) = db {
            tasks.push(tokio::spawn(probe_health(
                db,
                health.clone(),
                spec.grpc_name,
                probe_now.clone(),
            )));
        }

        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(returns_proto::FILE_DESCRIPTOR_SET)
            .with_service_name(spec.grpc_name)
            .with_service_name("grpc.reflection.v1.ServerReflection");
        let mut roles = spec.roles;
        let mut routes = spec.routes.add_service(health_service);
        if let Some(admin) = outbox_admin {
            let name = returns_proto::service_names::OUTBOX;
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
            reflection = reflection.with_service_name(name);
            roles = roles.merge(&crate::auth::outbox_roles());
            routes = routes.add_service(admin);
        }
        if let Some(clock) = test_clock {
            let name = returns_proto::service_names::TEST_CLOCK;
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
            reflection = reflection.with_service_name(name);
            roles = roles.merge(&crate::auth::test_clock_roles());
            routes = routes.add_service(TestClockGrpc::server(clock));
        }
        match reflection.build_v1() {
            Ok(service) => routes = routes.add_service(service),
            Err(error) => {
                tracing::warn!(%error, "reflection unavailable: descriptor set rejected")
            }
        }

        let _tasks = AbortOnDrop {
            tasks,
            registered: Vec::new(),
            registry: crate::worker::WorkerRegistry::default(),
        };
        tracing::info!(service = spec.name, %addr, "serving");
        let service = spec.name;
        let served = Server::builder()
            .trace_fn(move |request| {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let span = crate::trace_context::server_span(request);
                // Routes the span (and its children) to this service's trace resource.
                span.set_attribute(crate::telemetry::SERVICE_ATTRIBUTE, service);
                span
            })
            // Outermost, so calls refused by auth or shed by the edge are measured too.
            .layer(metrics.rpc_layer())
            .layer(AuthLayer::new(verifier, roles))
            .layer(match max_in_flight {
                Some(limit) => {
                    crate::edge::EdgeLayer::new(Some(probe_now)).with_admission_limit(limit)
                }
                None => crate::edge::EdgeLayer::new(Some(probe_now)),
            })
            .add_routes(routes)
            .serve_with_incoming_shutdown(nodelay(listener), shutdown)
            .await;
        metrics.shutdown().await;
        served?;
        tracing::info!(service = spec.name, "stopped");
        Ok(())
    }
}

/// How often health proves the database takes a write.
const HEALTH_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Sets the service's health (its own name and the server's "") from write probes.
async fn probe_health(
    db: crate::Database,
    health: tonic_health::server::HealthReporter,
    grpc_name: &'static str,
    probe_now: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut serving = true;
    loop {
        let result = db.probe_write().await;
        if result.is_ok() != serving {
            serving = result.is_ok();
            let status = if serving {
                tracing::info!(service = grpc_name, "database takes writes again: SERVING");
                ServingStatus::Serving
            } else {
                let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::error!(service = grpc_name, %error, "database refuses writes: NOT_SERVING");
                ServingStatus::NotServing
            };
            health.set_service_status(grpc_name, status).await;
            health.set_service_status("", status).await;
        }
        tokio::select! {
            () = probe_now.notified() => {}
            () = tokio::time::sleep(HEALTH_PROBE_EVERY) => {}
        }
    }
}

/// The accepted connections of `listener` with Nagle's algorithm off: tonic's `tcp_nodelay`
/// only applies to listeners it binds itself, and a reply split over two packets would
/// otherwise wait for the client's delayed ACK (about 40 ms) on every call.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted socket");
        }
        accepted
    })
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
    /// Work left by a previous process could not be taken over.
    #[error("cannot recover the work of a previous run: {0}")]
    Recovery(String),
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
    let relay = crate::relay::Relay::new(
        db.clone(),
        spec.name,
        context.peers.clone(),
        context.issuer.clone(),
        context.outbox_max_attempts,
    );
    relay
        .take_over_leases()
        .await
        .map_err(|error| StartError::Recovery(error.to_string()))?;
    let name = spec.name;
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
    let relay = relay.counting_deliveries(app.metrics.outbox_deliveries());
    app.add_worker(
        std::sync::Arc::new(relay),
        &db,
        context,
        crate::relay::RELAY_POLL,
    );
    app.metrics.observe_pool(name, &db);
    app.metrics.observe_outbox(name, &db);
    app.add_worker(
        std::sync::Arc::new(crate::retention::RetentionSweeper::new(
            db.clone(),
            context.retention,
        )),
        &db,
        context,
        crate::retention::RETENTION_POLL,
    );
    app.outbox_admin = Some(crate::outbox_admin::OutboxAdmin::server(db.clone()));
    app.db = Some(db.clone());
    app.max_in_flight = Some(
        context
            .max_in_flight
            .unwrap_or_else(|| crate::config::default_max_in_flight(db.backend())),
    );
    app.spawn_worker(crate::outbox_admin::report_forever(
        name,
        db,
        crate::outbox_admin::REPORT_EVERY,
    ));
    Ok(app)
}

/// Aborts background tasks and unregisters their workers when dropped.
struct AbortOnDrop {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    registered: Vec<std::sync::Arc<crate::worker::Exclusive>>,
    registry: crate::worker::WorkerRegistry,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for worker in &self.registered {
            self.registry.remove(worker);
        }
    }
}
