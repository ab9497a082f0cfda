//! The deployed topology inside one test process: each service of `deploy/compose.yaml` as
//! two OS processes of its own binary (two replicas on one database, as the Kubernetes
//! manifests run them) with the environment compose gives it, behind a load balancer per
//! compose host name; a payment-provider stub; an OTLP collector stand-in; and a coordinator
//! that moves the six separate test clocks together.
//!
//! Host names of the compose file become loopback addresses: `disputes`, `labels` and
//! `refunds` are HTTP/2 balancers that spread every call over the live replicas (as a
//! gRPC-aware service mesh or Envoy does; a replica that dies mid-call has the call retried
//! on the other one, which every mutation's idempotency key makes safe), `postgres/<db>` is a
//! fresh database on the test cluster, `otel-collector` is a stand-in that accepts OTLP
//! exports. The published ports (`ports:`) are a second balancer per service, so the test
//! client and the services reach a service by different doors, and an outage of the
//! service-to-service door leaves the client's alone.
//!
//! Clocks: every process runs its own manual clock (`RETURNS_TEST_CLOCK=1`); nothing can make
//! separate processes share one. The [`ClockCoordinator`] serves
//! `returns.testing.v1.TestClockService` to the client and walks all six clocks forward in
//! lockstep ([`STEP`] at a time), receivers before senders (refunds, labels, then disputes,
//! whose deadlines are the only clock-driven work that sends messages), each replica driven
//! to its own quiescence, then every replica again until two whole rounds do nothing. So a
//! message caused at business instant T reaches its receiver at a clock reading in
//! [T, T + STEP]: never before it was sent, at most one step late, like a slow network.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use returns_domain::dispute::Role;
use returns_platform::TokenIssuer;
use returns_platform::config::Secret;
use returns_proto::testing::v1::test_clock_service_client::TestClockServiceClient;
use returns_proto::testing::v1::test_clock_service_server::{
    TestClockService, TestClockServiceServer,
};
use returns_proto::testing::v1::{
    AdvanceClockRequest, AdvanceClockResponse, NowRequest, NowResponse, WorkerRun,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// The services of the suite, as compose names them, in the order a clock step moves them:
/// receivers before the only service whose clock-driven work sends messages (disputes).
pub const CLOCK_ORDER: [&str; 3] = ["refunds", "labels", "disputes"];
/// The application services of the compose file, in story order.
pub const SERVICES: [&str; 3] = ["disputes", "labels", "refunds"];
/// Replicas per service, as `deploy/k8s/base` runs them.
pub const REPLICAS: usize = 2;
/// How far apart the six clocks may drift while the coordinator walks them forward.
pub const STEP: chrono::TimeDelta = chrono::TimeDelta::hours(6);
/// Whole rounds over every replica before quiescence is given up on.
const MAX_QUIET_ROUNDS: usize = 300;
/// The token secret the deployment is given (compose requires one from the environment).
pub const SECRET: &str = "topology-test-secret-0123456789abcdefghijkl";

/// One service of the compose file, merge keys resolved and `${...}` interpolated.
#[derive(Debug, Clone)]
pub struct ComposeService {
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<String>,
}

fn scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(text) => text.clone(),
        serde_yaml::Value::Number(number) => number.to_string(),
        serde_yaml::Value::Bool(flag) => flag.to_string(),
        serde_yaml::Value::Null => String::new(),
        other => panic!("expected a scalar in compose.yaml, found {other:?}"),
    }
}

/// The services of a compose file, with `variables` answering `${NAME}` references.
pub fn read_compose(
    text: &str,
    variables: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, ComposeService> {
    let mut document: serde_yaml::Value = serde_yaml::from_str(text).expect("compose.yaml parses");
    document
        .apply_merge()
        .expect("compose.yaml's merge keys resolve");
    let services = document
        .get("services")
        .and_then(serde_yaml::Value::as_mapping)
        .expect("compose.yaml has a services mapping");
    services
        .iter()
        .map(|(name, definition)| {
            let command = match definition.get("command") {
                Some(serde_yaml::Value::Sequence(words)) => words.iter().map(scalar).collect(),
                Some(line) => scalar(line)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            };
            let environment = match definition.get("environment") {
                Some(serde_yaml::Value::Mapping(pairs)) => pairs
                    .iter()
                    .map(|(key, value)| (scalar(key), interpolate(&scalar(value), variables)))
                    .collect(),
                Some(serde_yaml::Value::Sequence(lines)) => lines
                    .iter()
                    .map(|line| {
                        let line = scalar(line);
                        let (key, value) = line.split_once('=').unwrap_or((&line, ""));
                        (key.to_string(), interpolate(value, variables))
                    })
                    .collect(),
                Some(other) => panic!("environment of {name:?} is {other:?}"),
                None => BTreeMap::new(),
            };
            let ports = match definition.get("ports") {
                Some(serde_yaml::Value::Sequence(ports)) => ports.iter().map(scalar).collect(),
                _ => Vec::new(),
            };
            (
                scalar(name),
                ComposeService {
                    command,
                    environment,
                    ports,
                },
            )
        })
        .collect()
}

/// Compose's variable interpolation: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?error}` and `${NAME?error}`.
pub fn interpolate(text: &str, variables: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .expect("an unterminated ${...} in compose.yaml");
            let expression = &body[..end];
            let name_end = expression.find([':', '-', '?']).unwrap_or(expression.len());
            let (name, operator) = expression.split_at(name_end);
            let value = variables(name);
            let empty_counts = operator.starts_with(':');
            let operator = operator.trim_start_matches(':');
            let missing = match &value {
                None => true,
                Some(value) => empty_counts && value.is_empty(),
            };
            if let Some(default) = operator.strip_prefix('-') {
                out.push_str(&if missing {
                    default.to_string()
                } else {
                    value.unwrap_or_default()
                });
            } else if let Some(error) = operator.strip_prefix('?') {
                assert!(!missing, "compose.yaml needs {name}: {error}");
                out.push_str(&value.unwrap_or_default());
            } else {
                out.push_str(&value.unwrap_or_default());
            }
            rest = &body[end + 1..];
        } else {
            let length = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            out.push_str(&variables(&after[..length]).unwrap_or_default());
            rest = &after[length..];
        }
    }
    out.push_str(rest);
    out
}

/// The `ENV` settings of a Dockerfile: what every container of the image starts with.
pub fn image_environment(dockerfile: &str) -> BTreeMap<String, String> {
    dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ENV "))
        .flat_map(|settings| settings.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
        .collect()
}

/// Builds the three service binaries (a no-op when they are fresh) in the target directory
/// this test runs from and returns the folder they are in. Cargo provides
/// `CARGO_BIN_EXE_*` only for the package under test, and the services are other packages.
pub fn service_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("a target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a profile folder");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--bins", "--quiet"])
        .args(["-p", "returns-disputes", "-p", "returns-labels"])
        .args(["-p", "returns-refunds", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "building the service binaries failed");
    profile_dir
}

/// A platform token for calls the harness makes itself (clocks).
fn platform_token() -> String {
    TokenIssuer::new(&Secret::new(SECRET))
        .issue(
            "topology-test",
            Role::Platform,
            None,
            Duration::from_secs(600),
        )
        .expect("sign a token")
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", platform_token())
            .parse()
            .expect("valid metadata"),
    );
    request
}

fn instant(at: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let at = at?;
    DateTime::<Utc>::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

fn to_proto(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// One running replica.
pub struct Replica {
    pub service: &'static str,
    /// The container's host name: stable across restarts of this replica.
    pub hostname: String,
    pub addr: SocketAddr,
    child: Child,
}

/// What the processes of the deployment share with the harness.
pub struct Topology {
    binaries: PathBuf,
    /// The program each service runs: compose's `command`, found among the built binaries.
    programs: HashMap<&'static str, String>,
    /// The environment each replica starts with, by host name.
    environments: HashMap<String, BTreeMap<String, String>>,
    replicas: Mutex<Vec<Replica>>,
    logs: tempfile::TempDir,
    /// The instant every clock is at (or is being moved to).
    target: Mutex<DateTime<Utc>>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    pub restarts: AtomicUsize,
}

impl Topology {
    /// Live replicas of `service` (a replica being restarted is not among them).
    pub fn live(&self, service: &str) -> Vec<(String, SocketAddr)> {
        self.replicas
            .lock()
            .expect("replicas")
            .iter()
            .filter(|replica| replica.service == service)
            .map(|replica| (replica.hostname.clone(), replica.addr))
            .collect()
    }

    pub fn hostnames(&self, service: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .environments
            .keys()
            .filter(|name| name.starts_with(&format!("{service}-")))
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub fn target(&self) -> DateTime<Utc> {
        *self.target.lock().expect("target")
    }

    fn set_target(&self, at: DateTime<Utc>) {
        *self.target.lock().expect("target") = at;
    }

    /// Where replica `hostname` writes its standard error (kept until the test ends).
    pub fn log_path(&self, hostname: &str) -> PathBuf {
        self.logs.path().join(format!("{hostname}.log"))
    }

    async fn spawn(&self, hostname: &str) -> Replica {
        let environment = &self.environments[hostname];
        let service = SERVICES
            .into_iter()
            .find(|service| hostname.starts_with(&format!("{service}-")))
            .expect("a replica of a known service");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(hostname))
            .expect("open the replica's log");
        let mut child = Command::new(self.binaries.join(&self.programs[service]))
            .env_clear()
            .envs(environment)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start a service binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let prefix = format!("{service} listening on ");
        let addr = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(&prefix) {
                    return addr.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(self.log_path(hostname)).unwrap_or_default();
            panic!("{hostname} did not start; its log:\n{log}")
        });
        // Keep reading so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Replica {
            service,
            hostname: hostname.to_string(),
            addr,
            child,
        }
    }

    /// SIGKILLs replica `hostname` (no shutdown, no flush: a crash or an OOM kill) and starts
    /// it again under the same host name, as a container restart does; its clock is brought
    /// to where the others are.
    pub async fn kill_and_restart(&self, hostname: &str) {
        let dead = {
            let mut replicas = self.replicas.lock().expect("replicas");
            let at = replicas
                .iter()
                .position(|replica| replica.hostname == hostname)
                .expect("a live replica to kill");
            replicas.remove(at)
        };
        let mut child = dead.child;
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        let replica = self.spawn(hostname).await;
        let addr = replica.addr;
        self.replicas.lock().expect("replicas").push(replica);
        self.restarts.fetch_add(1, Ordering::SeqCst);
        let target = self.target();
        self.advance_replica_to(addr, target)
            .await
            .expect("a restarted replica's clock catches up");
    }

    fn clock_client(&self, addr: SocketAddr) -> TestClockServiceClient<Channel> {
        let mut channels = self.channels.lock().expect("channels");
        let channel = channels
            .entry(addr)
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a URI")
                    .connect_lazy()
            })
            .clone();
        TestClockServiceClient::new(channel)
    }

    /// Moves the clock of the replica at `addr` to `target` (whole seconds, never back) and
    /// returns what its workers did on the way, once they are quiet.
    pub async fn advance_replica_to(
        &self,
        addr: SocketAddr,
        target: DateTime<Utc>,
    ) -> Result<AdvanceClockResponse, tonic::Status> {
        let mut client = self.clock_client(addr);
        let now = client
            .now(authorized(NowRequest {}))
            .await?
            .into_inner()
            .now;
        let now = instant(now).ok_or_else(|| tonic::Status::internal("no time"))?;
        let behind = (target - now).num_milliseconds().max(0);
        let seconds = (behind + 999) / 1000;
        Ok(client
            .advance_clock(authorized(AdvanceClockRequest { seconds }))
            .await?
            .into_inner())
    }
}

/// What the load balancer in front of one service does besides spreading calls.
#[derive(Default)]
struct BalancerRules {
    /// Answer every call UNAVAILABLE (the service is unreachable through this door).
    down: AtomicBool,
    /// Kill the replica that answers the first call to this RPC, right after it answered
    /// and before the answer goes back (the caller then retries on the other replica).
    kill_after: Mutex<Option<&'static str>>,
    kills: AtomicUsize,
    /// Calls answered, by replica host name.
    served: Mutex<BTreeMap<String, usize>>,
}

/// An HTTP/2 load balancer in front of a service's replicas (one compose host name, or one
/// published port).
#[derive(Clone)]
pub struct Balancer {
    pub addr: SocketAddr,
    service: &'static str,
    topology: Arc<Topology>,
    /// Where `returns.testing.v1.TestClockService` calls go: the coordinator.
    clock: SocketAddr,
    rules: Arc<BalancerRules>,
    next: Arc<AtomicUsize>,
    client: Client<HttpConnector, Full<Bytes>>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn grpc_unavailable(message: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .header("grpc-message", message.replace(' ', "%20"))
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .expect("a response")
}

impl Balancer {
    pub async fn start(
        service: &'static str,
        topology: Arc<Topology>,
        clock: SocketAddr,
    ) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a balancer");
        Balancer::start_on(listener, service, topology, clock)
    }

    /// Makes the service unreachable through this door (or reachable again).
    pub fn set_down(&self, down: bool) {
        self.rules.down.store(down, Ordering::SeqCst);
    }

    /// Arms a kill: the replica that answers the next call to `rpc` dies right after.
    pub fn kill_after(&self, rpc: &'static str) {
        *self.rules.kill_after.lock().expect("rules") = Some(rpc);
    }

    /// Calls each replica answered through this door, by host name.
    pub fn served(&self) -> BTreeMap<String, usize> {
        self.rules.served.lock().expect("rules").clone()
    }

    /// Replicas killed by [`Balancer::kill_after`].
    pub fn kills(&self) -> usize {
        self.rules.kills.load(Ordering::SeqCst)
    }

    async fn send(
        &self,
        addr: SocketAddr,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(format!("http://{addr}{path}"));
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(body)).expect("a request");
        self.client.request(request).await
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
            return grpc_unavailable("the request body was cut off");
        };
        let path = parts.uri.path().to_string();
        if path.starts_with("/returns.testing.v1.TestClockService/") {
            return match self.send(self.clock, &parts, body).await {
                Ok(response) => response.map(BodyExt::boxed),
                Err(error) => grpc_unavailable(&format!("test clock: {error}")),
            };
        }
        if self.rules.down.load(Ordering::SeqCst) {
            return grpc_unavailable(&format!("{} is unreachable", self.service));
        }
        let mut kill = {
            let mut armed = self.rules.kill_after.lock().expect("rules");
            match *armed {
                Some(rpc) if path.ends_with(&format!("/{rpc}")) => armed.take().is_some(),
                _ => false,
            }
        };
        // Every live replica once, starting where round-robin says; a replica that is
        // being restarted is waited for (bounded) rather than failing the call.
        for _ in 0..200 {
            let replicas = self.topology.live(self.service);
            if replicas.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            for turn in 0..replicas.len() {
                let (hostname, addr) = &replicas[(first + turn) % replicas.len()];
                match self.send(*addr, &parts, body.clone()).await {
                    Ok(response) if kill => {
                        // The first replica to answer dies before the answer is passed on,
                        // so the caller's call goes to another replica as a retry. (The
                        // first replica tried may be down, restarted by another of the
                        // test's kills: the kill waits for one that answers rather than
                        // being spent on it.)
                        let _ = response.into_body().collect().await;
                        kill = false;
                        self.rules.kills.fetch_add(1, Ordering::SeqCst);
                        self.topology.kill_and_restart(hostname).await;
                    }
                    Ok(response) => {
                        *self
                            .rules
                            .served
                            .lock()
                            .expect("rules")
                            .entry(hostname.clone())
                            .or_default() += 1;
                        return response.map(BodyExt::boxed);
                    }
                    Err(_) => {}
                }
            }
        }
        grpc_unavailable(&format!("no replica of {} answered", self.service))
    }
}

/// Calls counted by the payment-provider stub.
#[derive(Default)]
pub struct ProviderCalls {
    /// Idempotency key -> the replicas (host names) that submitted under it, in order.
    pub submissions: BTreeMap<String, Vec<String>>,
    /// Idempotency key -> the provider's refund id (one per key: the provider's idempotency).
    pub ids: BTreeMap<String, String>,
    pub status_checks: usize,
}

/// A submission held in flight by the stub, and how to let it go.
pub struct Held {
    pub hostname: String,
    pub key: String,
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// A Stripe-shaped payment API (what `services/refunds/src/http_provider.rs` speaks) that
/// counts submissions per idempotency key. It listens once per refunds replica, so it knows
/// which replica called; it can hold one submission in flight for the test.
#[derive(Clone, Default)]
pub struct ProviderStub {
    pub calls: Arc<Mutex<ProviderCalls>>,
    hold: Arc<Mutex<Option<tokio::sync::oneshot::Sender<Held>>>>,
}

impl ProviderStub {
    /// Serves the stub for the replica `hostname`; returns its base URL.
    pub async fn listen_for(&self, hostname: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the provider stub");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stub = self.clone();
        let hostname = hostname.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let stub = stub.clone();
                let hostname = hostname.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let stub = stub.clone();
                        let hostname = hostname.clone();
                        async move { Ok::<_, Infallible>(stub.handle(&hostname, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        url
    }

    /// The next submission is held until the test releases it; `Held` says who sent it.
    pub fn hold_next(&self) -> tokio::sync::oneshot::Receiver<Held> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        *self.hold.lock().expect("hold") = Some(sender);
        receiver
    }

    async fn handle(&self, hostname: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: u16, json: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json)))
                .expect("a response")
        };
        let post = request.method() == hyper::Method::POST;
        let path = request.uri().path().to_string();
        let key = request
            .headers()
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        if post && path == "/v1/refunds" {
            let Some(key) = key else {
                return reply(400, r#"{"error":"Idempotency-Key required"}"#.into());
            };
            let id = {
                let mut calls = self.calls.lock().expect("calls");
                calls
                    .submissions
                    .entry(key.clone())
                    .or_default()
                    .push(hostname.to_string());
                let next = calls.ids.len();
                calls
                    .ids
                    .entry(key.clone())
                    .or_insert_with(|| format!("re_{next}"))
                    .clone()
            };
            let hold = self.hold.lock().expect("hold").take();
            if let Some(hold) = hold {
                let (release, released) = tokio::sync::oneshot::channel();
                let _ = hold.send(Held {
                    hostname: hostname.to_string(),
                    key,
                    release,
                });
                let _ = released.await;
            }
            return reply(200, format!(r#"{{"id":"{id}","status":"pending"}}"#));
        }
        if let Some(id) = path.strip_prefix("/v1/refunds/") {
            let mut calls = self.calls.lock().expect("calls");
            calls.status_checks += 1;
            if !calls.ids.values().any(|known| known == id) {
                return reply(404, r#"{"error":"no such refund"}"#.into());
            }
            // The money arrives by the first check, which settlement makes once the
            // payment method's earliest date has come (business time).
            return reply(200, format!(r#"{{"id":"{id}","status":"succeeded"}}"#));
        }
        reply(404, "{}".into())
    }
}

/// An OTLP/gRPC collector stand-in: accepts every export, counts them.
#[derive(Clone, Default)]
pub struct Collector {
    pub exports: Arc<AtomicUsize>,
}

impl Collector {
    pub async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("addr");
        let exports = self.exports.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let exports = exports.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let exports = exports.clone();
                        async move {
                            let _ = request.into_body().collect().await;
                            exports.fetch_add(1, Ordering::SeqCst);
                            // An empty Export*ServiceResponse: one uncompressed, empty message.
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures::stream::iter(frames));
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .expect("a response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }
}

/// `returns.testing.v1.TestClockService` for the whole deployment: moves every replica's
/// clock together (see the module documentation).
#[derive(Clone)]
pub struct ClockCoordinator {
    topology: Arc<Topology>,
    advancing: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Report {
    work: BTreeMap<(String, String), i64>,
    stops: i64,
    backing_off: i64,
}

impl Report {
    /// Adds one replica's answer; returns the items it did.
    fn add(&mut self, response: &AdvanceClockResponse) -> i64 {
        self.stops += response.stops;
        let mut items = 0;
        for run in &response.work {
            *self
                .work
                .entry((run.service.clone(), run.worker.clone()))
                .or_default() += run.items;
            items += run.items;
        }
        items
    }
}

impl ClockCoordinator {
    /// Moves every live replica to the target, refunds first, disputes last; returns the
    /// items done (a replica that could not be reached counts as busy: look again).
    async fn round(&self, report: &mut Report) -> i64 {
        let target = self.topology.target();
        let mut items = 0;
        report.backing_off = 0;
        for service in CLOCK_ORDER {
            for (_, addr) in self.topology.live(service) {
                match self.topology.advance_replica_to(addr, target).await {
                    Ok(response) => {
                        items += report.add(&response);
                        report.backing_off += response.backing_off;
                    }
                    Err(_) => items += 1,
                }
            }
        }
        items
    }

    /// Rounds until two in a row do nothing anywhere.
    async fn quiet(&self, report: &mut Report) -> Result<(), tonic::Status> {
        let mut calm = 0;
        for _ in 0..MAX_QUIET_ROUNDS {
            if self.round(report).await == 0 {
                calm += 1;
                if calm == 2 {
                    return Ok(());
                }
            } else {
                calm = 0;
            }
        }
        Err(tonic::Status::aborted(format!(
            "the deployment did not settle after {MAX_QUIET_ROUNDS} rounds"
        )))
    }

    /// Brings every replica to one instant a day past the latest of their clocks (each
    /// started at its own wall-clock reading), so a replica restarted later, whose clock
    /// starts at the wall clock again, can always be moved forward to the others.
    pub async fn align(&self) {
        let mut latest = Utc::now();
        for service in SERVICES {
            for (_, addr) in self.topology.live(service) {
                let now = self
                    .topology
                    .clock_client(addr)
                    .now(authorized(NowRequest {}))
                    .await
                    .expect("a replica's clock")
                    .into_inner()
                    .now;
                latest = latest.max(instant(now).expect("a time"));
            }
        }
        let whole = DateTime::<Utc>::from_timestamp(latest.timestamp() + 1, 0).expect("a time");
        self.topology.set_target(whole + chrono::TimeDelta::days(1));
        self.quiet(&mut Report::default())
            .await
            .expect("the deployment is quiet at start");
    }
}

#[tonic::async_trait]
impl TestClockService for ClockCoordinator {
    async fn advance_clock(
        &self,
        request: tonic::Request<AdvanceClockRequest>,
    ) -> Result<tonic::Response<AdvanceClockResponse>, tonic::Status> {
        let seconds = request.into_inner().seconds;
        if !(0..=400 * 86_400).contains(&seconds) {
            return Err(tonic::Status::invalid_argument("seconds out of range"));
        }
        let _advancing = self.advancing.lock().await;
        let mut report = Report::default();
        let end = self.topology.target() + chrono::TimeDelta::seconds(seconds);
        while self.topology.target() < end {
            let step = (self.topology.target() + STEP).min(end);
            self.topology.set_target(step);
            if self.round(&mut report).await > 0 {
                self.quiet(&mut report).await?;
            }
        }
        self.quiet(&mut report).await?;
        Ok(tonic::Response::new(AdvanceClockResponse {
            now: Some(to_proto(self.topology.target())),
            work: report
                .work
                .into_iter()
                .map(|((service, worker), items)| WorkerRun {
                    service,
                    worker,
                    items,
                })
                .collect(),
            stops: report.stops,
            backing_off: report.backing_off,
        }))
    }

    async fn now(
        &self,
        _request: tonic::Request<NowRequest>,
    ) -> Result<tonic::Response<NowResponse>, tonic::Status> {
        Ok(tonic::Response::new(NowResponse {
            now: Some(to_proto(self.topology.target())),
        }))
    }
}

/// The whole deployment, running.
pub struct Deployment {
    pub topology: Arc<Topology>,
    pub coordinator: ClockCoordinator,
    /// By compose host name: how the services reach each other.
    pub internal: HashMap<&'static str, Balancer>,
    /// By service: the published port the test client uses.
    pub published: HashMap<&'static str, Balancer>,
    pub provider: ProviderStub,
    pub collector: Collector,
    /// Each service's database, by database name (compose's `postgres/<name>`).
    pub databases: BTreeMap<String, returns_platform::testing::TestDatabase>,
    /// The environment each replica was started with, by host name.
    pub environments: HashMap<String, BTreeMap<String, String>>,
    _data_dirs: tempfile::TempDir,
}

/// Rewrites a compose value for loopback: a URL whose host is a compose service points at
/// that service's door; `postgres` at the service's fresh database; a listen address at an
/// ephemeral loopback port (each replica is its own "container").
fn map_value(
    key: &str,
    value: &str,
    doors: &HashMap<String, SocketAddr>,
    databases: &BTreeMap<String, returns_platform::testing::TestDatabase>,
) -> String {
    if key.ends_with("_ADDR") {
        return "127.0.0.1:0".to_string();
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = host_port.split(':').next().unwrap_or(host_port);
    if scheme.starts_with("postgres") {
        assert_eq!(
            host, "postgres",
            "{key} names a database host compose does not run"
        );
        let name = path.trim_start_matches('/');
        return databases
            .get(name)
            .unwrap_or_else(|| panic!("no database {name:?} for {key}"))
            .url
            .clone();
    }
    let door = doors
        .get(host)
        .unwrap_or_else(|| panic!("{key}={value} names host {host:?}, which compose does not run"));
    format!("{scheme}://{door}{path}")
}

impl Deployment {
    /// Starts two replicas of every application service of `deploy/compose.yaml`.
    pub async fn start() -> Deployment {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let compose_text =
            std::fs::read_to_string(root.join("deploy/compose.yaml")).expect("compose.yaml");
        let dockerfile =
            std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
        let compose = read_compose(&compose_text, &|name| {
            (name == "RETURNS_AUTH_SECRET").then(|| SECRET.to_string())
        });
        let image = image_environment(&dockerfile);
        let binaries = tokio::task::spawn_blocking(service_binaries)
            .await
            .expect("build the service binaries");

        // Databases named by the compose file, each fresh on the test cluster.
        let mut databases = BTreeMap::new();
        for service in SERVICES {
            for value in compose[service].environment.values() {
                if let Some(rest) = value.strip_prefix("postgres://")
                    && let Some((_, name)) = rest.split_once('/')
                    && !databases.contains_key(name)
                {
                    databases.insert(
                        name.to_string(),
                        returns_platform::testing::TestDatabase::create().await,
                    );
                }
            }
        }
        let collector = Collector::default();
        let collector_addr = collector.start().await;
        let provider = ProviderStub::default();
        let data_dirs = tempfile::tempdir().expect("tempdir");

        let mut environments = HashMap::new();
        let coordinator_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the coordinator");
        let clock_addr = coordinator_listener.local_addr().expect("addr");

        // Every replica's environment: the image's ENV, then compose's (which wins), with
        // hosts mapped to loopback; plus what the container runtime and the test add.
        let mut doors: HashMap<String, SocketAddr> = HashMap::new();
        let mut door_listeners = Vec::new();
        for service in SERVICES {
            // Reserve the door's address now; the balancer binds it once the topology exists.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            doors.insert(service.to_string(), listener.local_addr().expect("addr"));
            door_listeners.push(listener);
        }
        doors.insert("otel-collector".to_string(), collector_addr);
        for service in SERVICES {
            for n in 1..=REPLICAS {
                let hostname = format!("{service}-{n}");
                let mut environment = image.clone();
                for (key, value) in &compose[service].environment {
                    environment.insert(key.clone(), map_value(key, value, &doors, &databases));
                }
                if environment.contains_key("RETURNS_DATA_DIR") {
                    let dir = data_dirs.path().join(&hostname);
                    std::fs::create_dir_all(&dir).expect("a data dir");
                    environment.insert("RETURNS_DATA_DIR".to_string(), dir.display().to_string());
                }
                environment.insert("HOSTNAME".to_string(), hostname.clone());
                environment.insert("RETURNS_TEST_CLOCK".to_string(), "1".to_string());
                // The stories move the clocks through weeks and the test then counts every
                // inbox row against what was sent: retention (30 days by default) would
                // sweep that evidence before it is counted.
                environment.insert("RETURNS_RETENTION_DAYS".to_string(), "3650".to_string());
                if service == "refunds" {
                    environment.insert(
                        "RETURNS_REFUNDS_PROVIDER_URL".to_string(),
                        provider.listen_for(&hostname).await,
                    );
                }
                environments.insert(hostname, environment);
            }
        }
        let programs = SERVICES
            .into_iter()
            .map(|service| {
                let program = compose[service]
                    .command
                    .first()
                    .unwrap_or_else(|| panic!("compose.yaml gives {service} a command"));
                (service, program.clone())
            })
            .collect();
        let topology = Arc::new(Topology {
            binaries,
            programs,
            environments: environments.clone(),
            replicas: Mutex::new(Vec::new()),
            logs: tempfile::tempdir().expect("tempdir"),
            target: Mutex::new(Utc::now()),
            channels: Mutex::default(),
            restarts: AtomicUsize::new(0),
        });
        let coordinator = ClockCoordinator {
            topology: topology.clone(),
            advancing: Arc::default(),
        };
        let serving = coordinator.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TestClockServiceServer::new(serving))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    coordinator_listener,
                ))
                .await
        });
        let mut internal = HashMap::new();
        for (service, listener) in SERVICES.into_iter().zip(door_listeners) {
            listener.set_nonblocking(true).expect("nonblocking");
            let balancer = Balancer::start_on(
                tokio::net::TcpListener::from_std(listener).expect("a tokio listener"),
                service,
                topology.clone(),
                clock_addr,
            );
            internal.insert(service, balancer);
        }
        let mut published = HashMap::new();
        for service in SERVICES {
            published.insert(
                service,
                Balancer::start(service, topology.clone(), clock_addr).await,
            );
        }
        // Start the replicas one by one (migrations run at start; two replicas starting on
        // one fresh database would race their migrations, which compose avoids the same way
        // by restarting a failed container).
        for service in SERVICES {
            for hostname in topology.hostnames(service) {
                let replica = topology.spawn(&hostname).await;
                topology.replicas.lock().expect("replicas").push(replica);
            }
        }
        coordinator.align().await;
        Deployment {
            topology,
            coordinator,
            internal,
            published,
            provider,
            collector,
            databases,
            environments,
            _data_dirs: data_dirs,
        }
    }

    /// Where the test client reaches the services (their published ports).
    pub fn addresses(&self) -> returns::SuiteAddresses {
        returns::SuiteAddresses {
            disputes: self.published["disputes"].addr,
            labels: self.published["labels"].addr,
            refunds: self.published["refunds"].addr,
        }
    }
}

impl Balancer {
    fn start_on(
        listener: tokio::net::TcpListener,
        service: &'static str,
        topology: Arc<Topology>,
        clock: SocketAddr,
    ) -> Balancer {
        let balancer = Balancer {
            addr: listener.local_addr().expect("addr"),
            service,
            topology,
            clock,
            rules: Arc::default(),
            next: Arc::default(),
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        };
        let serving = balancer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let balancer = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let balancer = balancer.clone();
                        async move { Ok::<_, Infallible>(balancer.forward(request).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        balancer
    }
}
