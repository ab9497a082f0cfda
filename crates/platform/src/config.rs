//! Suite configuration: defaults in code, an optional TOML file, then `RETURNS_*` environment
//! overrides, validated once at start (README.md "Configuration").
//!
//! One `Config` describes the whole suite; each service binary reads the same file and takes
//! its own section, so the launcher and a deployment of separate binaries agree on ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::db::Backend;

/// Every environment variable the suite reads, with what it sets (the README's table).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "RETURNS_CONFIG",
        "path of an optional TOML file read before the environment",
    ),
    (
        "RETURNS_AUTH_SECRET",
        "HS256 secret for bearer tokens (at least 32 bytes)",
    ),
    (
        "RETURNS_TEST_CLOCK",
        "1 to serve returns.testing.v1.TestClockService on a manual clock",
    ),
    (
        "RETURNS_POLICY",
        "named policy: classic (default) or extended",
    ),
    (
        "RETURNS_DATA_DIR",
        "folder for the default SQLite files and stored files (./data)",
    ),
    ("RETURNS_LOG_FORMAT", "text (default) or json"),
    (
        "RETURNS_MAX_IN_FLIGHT",
        "requests one service serves at once before shedding with RESOURCE_EXHAUSTED \
         (64 on SQLite, 32 on PostgreSQL)",
    ),
    (
        "RETURNS_OUTBOX_MAX_ATTEMPTS",
        "delivery attempts before an outbox message is dead (30)",
    ),
    (
        "RETURNS_RETENTION_DAYS",
        "days idempotency keys and inbox rows are kept before they are swept (30)",
    ),
    (
        "RETURNS_OUTBOX_RETENTION_DAYS",
        "days delivered outbox rows are kept before they are swept (7); dead ones stay",
    ),
    (
        "RETURNS_EVIDENCE_URL",
        "evidence storage: s3://bucket/prefix (AWS_* settings), file:// or memory://",
    ),
    (
        "RETURNS_DISPUTES_ADDR",
        "listen address of the disputes service (127.0.0.1:50051)",
    ),
    (
        "RETURNS_DISPUTES_URL",
        "how the other services reach disputes (http://<listen address>)",
    ),
    (
        "RETURNS_DISPUTES_DATABASE_URL",
        "sqlite:// or postgres:// URL for disputes",
    ),
    (
        "RETURNS_DISPUTES_METRICS_ADDR",
        "admin address serving disputes's Prometheus /metrics (unset: none)",
    ),
    (
        "RETURNS_LABELS_ADDR",
        "listen address of the labels service (127.0.0.1:50052)",
    ),
    (
        "RETURNS_LABELS_URL",
        "how the other services reach labels (http://<listen address>)",
    ),
    (
        "RETURNS_LABELS_DATABASE_URL",
        "sqlite:// or postgres:// URL for labels",
    ),
    (
        "RETURNS_LABELS_METRICS_ADDR",
        "admin address serving labels's Prometheus /metrics (unset: none)",
    ),
    (
        "RETURNS_REFUNDS_ADDR",
        "listen address of the refunds service (127.0.0.1:50053)",
    ),
    (
        "RETURNS_REFUNDS_URL",
        "how the other services reach refunds (http://<listen address>)",
    ),
    (
        "RETURNS_REFUNDS_DATABASE_URL",
        "sqlite:// or postgres:// URL for refunds",
    ),
    (
        "RETURNS_REFUNDS_METRICS_ADDR",
        "admin address serving refunds's Prometheus /metrics (unset: none)",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "when set, spans and metrics are exported there over OTLP/gRPC",
    ),
    ("RUST_LOG", "log filter (default info)"),
];

/// Requests in flight per service before shedding (outbox deliveries from the other services
/// have a budget of the same size of their own), unless `RETURNS_MAX_IN_FLIGHT` says.
///
/// On PostgreSQL, 32: a service keeps at most 16 connections busy, and on two cores the
/// bench's reads and writes reach their best rate by 16 to 32 callers; beyond that more in
/// flight only queues, every queued request adds its wait to everyone's latency, and the
/// memory held at overload grows (64 measured 1.93× the best level's, the line is 2×).
///
/// On SQLite, 64: its writes are group-committed, so the writes waiting in flight are the
/// batch. With 64, OpenDispute's batches held about 30 transactions a COMMIT against 9-11,
/// each cost the writer 82-86 µs against 101-104, and the rate rose by a sixth to a quarter
/// (0.152-0.158× of Health/Check against 0.119-0.125×; docs/performance.md). Reads on SQLite
/// run on the calling thread: more of them in flight only lengthens their own queue, and at
/// ten times the best concurrency their p99 and memory stay within the overload lines.
pub fn default_max_in_flight(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 64,
        Backend::Postgres => 32,
    }
}

/// A secret string that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call sites are few and greppable on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random secret for a session that configured none.
    pub fn generate() -> Self {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        Secret(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One service's listener and database.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; `None` means `sqlite://<data_dir>/<service>.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// How the other services reach this one (`http://host:port`); defaults to the listen
    /// address (with 127.0.0.1 for an unspecified host).
    #[serde(default)]
    pub url: Option<String>,
    /// The admin address serving this service's Prometheus `/metrics`; `None` serves none.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

impl ServiceConfig {
    /// The URL peers use to call this service.
    pub fn peer_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            let mut addr = self.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        })
    }
}

/// The whole suite's settings.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `None` lets the suite launcher generate a session secret (and say so); the separate
    /// service binaries refuse to start without one, since they must agree on it.
    pub auth_secret: Option<Secret>,
    /// Serve the test clock and run every service on a manual clock. Never on by default.
    pub test_clock: bool,
    pub policy: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// Where uploaded dispute evidence is stored (`s3://bucket/prefix`, `file:///path`,
    /// `memory:///`); `None` means the `evidence` folder under `data_dir`.
    pub evidence_url: Option<String>,
    /// Failed delivery attempts after which an outbox message is DEAD (kept for an
    /// operator) rather than retried again.
    pub outbox_max_attempts: u32,
    /// Requests one service serves at once; beyond it, RESOURCE_EXHAUSTED at once. `None`:
    /// the default of the service's database ([`default_max_in_flight`]).
    pub max_in_flight: Option<usize>,
    /// Days idempotency keys and inbox rows are kept (a client's retry window).
    pub retention_days: u32,
    /// Days delivered outbox rows are kept; dead ones are kept until an operator acts.
    pub outbox_retention_days: u32,
    pub disputes: ServiceConfig,
    pub labels: ServiceConfig,
    pub refunds: ServiceConfig,
}

/// A URL setting as `Debug` prints it: with its secrets redacted.
struct RedactedUrl<'a>(&'a Option<String>);

impl std::fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.as_deref().map(redact_url).fmt(f)
    }
}

// Written out rather than derived: URLs may carry passwords, and `{:?}` of the config ends
// up in logs and panic messages.
impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("listen", &self.listen)
            .field("database_url", &RedactedUrl(&self.database_url))
            .field("url", &RedactedUrl(&self.url))
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so a new field cannot be added without deciding how it prints.
        let Config {
            auth_secret,
            test_clock,
            policy,
            data_dir,
            log_format,
            evidence_url,
            outbox_max_attempts,
            max_in_flight,
            retention_days,
            outbox_retention_days,
            disputes,
            labels,
            refunds,
        } = self;
        f.debug_struct("Config")
            .field("auth_secret", auth_secret)
            .field("test_clock", test_clock)
            .field("policy", policy)
            .field("data_dir", data_dir)
            .field("log_format", log_format)
            .field("evidence_url", &RedactedUrl(evidence_url))
            .field("outbox_max_attempts", outbox_max_attempts)
            .field("max_in_flight", max_in_flight)
            .field("retention_days", retention_days)
            .field("outbox_retention_days", outbox_retention_days)
            .field("disputes", disputes)
            .field("labels", labels)
            .field("refunds", refunds)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Config {
            auth_secret: None,
            test_clock: false,
            policy: "classic".to_string(),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            evidence_url: None,
            outbox_max_attempts: crate::relay::DEFAULT_MAX_ATTEMPTS,
            max_in_flight: None,
            retention_days: crate::retention::DEFAULT_RETENTION_DAYS,
            outbox_retention_days: crate::retention::DEFAULT_OUTBOX_RETENTION_DAYS,
            disputes: ServiceConfig {
                listen: local(50051),
                database_url: None,
                url: None,
                metrics_listen: None,
            },
            labels: ServiceConfig {
                listen: local(50052),
                database_url: None,
                url: None,
                metrics_listen: None,
            },
            refunds: ServiceConfig {
                listen: local(50053),
                database_url: None,
                url: None,
                metrics_listen: None,
            },
        }
    }
}

/// Why the configuration was refused at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{variable}: {reason}")]
    Environment {
        variable: &'static str,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file named by `RETURNS_CONFIG` (if any), then the environment.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given as a lookup, so tests need not mutate
    /// the process environment.
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = match env("RETURNS_CONFIG") {
            Some(path) if !path.is_empty() => Config::from_file(Path::new(&path))?,
            _ => Config::default(),
        };
        config.apply_env(&env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(secret) = env("RETURNS_AUTH_SECRET").filter(|s| !s.is_empty()) {
            self.auth_secret = Some(Secret::new(secret));
        }
        if let Some(flag) = env("RETURNS_TEST_CLOCK") {
            self.test_clock = parse_flag("RETURNS_TEST_CLOCK", &flag)?;
        }
        if let Some(policy) = env("RETURNS_POLICY") {
            self.policy = policy;
        }
        if let Some(url) = env("RETURNS_EVIDENCE_URL").filter(|u| !u.is_empty()) {
            self.evidence_url = Some(url);
        }
        if let Some(limit) = env("RETURNS_MAX_IN_FLIGHT") {
            self.max_in_flight = Some(
                limit
                    .trim()
                    .parse()
                    .ok()
                    .filter(|limit| *limit > 0)
                    .ok_or_else(|| ConfigError::Environment {
                        variable: "RETURNS_MAX_IN_FLIGHT",
                        reason: format!("{limit:?} is not a positive whole number"),
                    })?,
            );
        }
        for (variable, days) in [
            ("RETURNS_RETENTION_DAYS", &mut self.retention_days),
            (
                "RETURNS_OUTBOX_RETENTION_DAYS",
                &mut self.outbox_retention_days,
            ),
        ] {
            if let Some(value) = env(variable) {
                *days = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|days| *days > 0)
                    .ok_or_else(|| ConfigError::Environment {
                        variable,
                        reason: format!("{value:?} is not a positive whole number of days"),
                    })?;
            }
        }
        if let Some(attempts) = env("RETURNS_OUTBOX_MAX_ATTEMPTS") {
            self.outbox_max_attempts =
                attempts
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::Environment {
                        variable: "RETURNS_OUTBOX_MAX_ATTEMPTS",
                        reason: format!("{attempts:?} is not a whole number"),
                    })?;
        }
        if let Some(dir) = env("RETURNS_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(format) = env("RETURNS_LOG_FORMAT") {
            self.log_format = match format.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Environment {
                        variable: "RETURNS_LOG_FORMAT",
                        reason: format!("{other:?} is not text or json"),
                    });
                }
            };
        }
        for (service, addr_var, url_var, peer_var, metrics_var) in [
            (
                &mut self.disputes,
                "RETURNS_DISPUTES_ADDR",
                "RETURNS_DISPUTES_DATABASE_URL",
                "RETURNS_DISPUTES_URL",
                "RETURNS_DISPUTES_METRICS_ADDR",
            ),
            (
                &mut self.labels,
                "RETURNS_LABELS_ADDR",
                "RETURNS_LABELS_DATABASE_URL",
                "RETURNS_LABELS_URL",
                "RETURNS_LABELS_METRICS_ADDR",
            ),
            (
                &mut self.refunds,
                "RETURNS_REFUNDS_ADDR",
                "RETURNS_REFUNDS_DATABASE_URL",
                "RETURNS_REFUNDS_URL",
                "RETURNS_REFUNDS_METRICS_ADDR",
            ),
        ] {
            // Empty turns a file's admin port off.
            if let Some(addr) = env(metrics_var) {
                service.metrics_listen = if addr.trim().is_empty() {
                    None
                } else {
                    Some(
                        addr.trim()
                            .parse()
                            .map_err(|error| ConfigError::Environment {
                                variable: metrics_var,
                                reason: format!("{addr:?} is not host:port ({error})"),
                            })?,
                    )
                };
            }
            if let Some(url) = env(peer_var).filter(|u| !u.is_empty()) {
                service.url = Some(url);
            }
            if let Some(addr) = env(addr_var) {
                service.listen = addr.parse().map_err(|error| ConfigError::Environment {
                    variable: addr_var,
                    reason: format!("{addr:?} is not host:port ({error})"),
                })?;
            }
            if let Some(url) = env(url_var).filter(|u| !u.is_empty()) {
                service.database_url = Some(url);
            }
        }
        Ok(())
    }

    /// Refuses settings that would fail later, less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.auth_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::Invalid(
                "auth_secret must be at least 32 bytes (HS256 keys shorter than the hash are weak)"
                    .into(),
            ));
        }
        if self.retention_days == 0 || self.outbox_retention_days == 0 {
            return Err(ConfigError::Invalid(
                "retention_days and outbox_retention_days must be at least 1".into(),
            ));
        }
        if self.outbox_max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "outbox_max_attempts must be at least 1".into(),
            ));
        }
        returns_domain::policy::Policy::named(&self.policy)
            .map_err(|error| ConfigError::Invalid(format!("policy {:?}: {error}", self.policy)))?;
        let services = [
            ("disputes", &self.disputes),
            ("labels", &self.labels),
            ("refunds", &self.refunds),
        ];
        for (name, service) in services {
            if let Some(url) = &service.database_url
                && !(url.starts_with("sqlite:") || url.starts_with("postgres"))
            {
                return Err(ConfigError::Invalid(format!(
                    "{name}.database_url must start with sqlite: or postgres://, got {:?}",
                    redact_url(url)
                )));
            }
        }
        // Every gRPC and admin address, each used once (port 0 is a fresh port each time).
        let addresses: Vec<(String, SocketAddr)> = services
            .iter()
            .flat_map(|(name, service)| {
                std::iter::once((name.to_string(), service.listen)).chain(
                    service
                        .metrics_listen
                        .map(|admin| (format!("{name} metrics"), admin)),
                )
            })
            .collect();
        for (i, (a, first)) in addresses.iter().enumerate() {
            for (b, second) in &addresses[i + 1..] {
                if first.port() != 0 && first == second {
                    return Err(ConfigError::Invalid(format!(
                        "{a} and {b} both listen on {first}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The database URL of `service`, defaulting to a SQLite file under `data_dir`.
    pub fn database_url(&self, service: &str, section: &ServiceConfig) -> String {
        section.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{service}.db")).display()
            )
        })
    }
}

fn parse_flag(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::Environment {
            variable,
            reason: format!("{other:?} is not a boolean (use 1 or 0)"),
        }),
    }
}

/// What replaces a secret in printed URLs and messages.
const REDACTED: &str = "[redacted]";

/// A database (or any) URL with every secret in it replaced, for messages and logs: the
/// password in `user:password@` userinfo (raw or percent-encoded), secret query parameters
/// such as `?password=` (whatever case or percent-encoding spells the key), and the secret
/// values of a libpq `key=value` connection string (`host=db password=...`).
pub fn redact_url(url: &str) -> String {
    redact(url).0
}

/// `text` with every secret of `url` replaced, raw and percent-decoded: for messages built
/// by code that saw the URL (a driver's error), which `redact_url` alone cannot clean.
pub fn scrub_secrets(text: &str, url: &str) -> String {
    let mut secrets = redact(url).1;
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), REDACTED)
        })
}

/// The redacted form of `url` and the secrets taken out of it (raw and decoded).
fn redact(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let redacted = if let Some(scheme_end) = url.find("://") {
        let (head, rest) = url.split_at(scheme_end + 3);
        let (userinfo, after) = split_userinfo(rest);
        let mut out = head.to_owned();
        if let Some(userinfo) = userinfo {
            out.push_str(&redact_userinfo(userinfo, &mut secrets));
            out.push('@');
        }
        out.push_str(&redact_after_query_mark(after, &mut secrets));
        out
    } else if is_key_value_string(url) {
        redact_key_values(url, &mut secrets)
    } else {
        // `sqlite:file.db?mode=rwc` and the like: no authority, maybe a query.
        redact_after_query_mark(url, &mut secrets)
    };
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    (redacted, secrets)
}

/// Splits `rest` (what follows `scheme://`) into userinfo and what follows its `@`.
///
/// The userinfo ends at the last `@` before the first `/`, `?` or `#` that follows an `@`,
/// so an unencoded `@` in a password stays in the userinfo, and an `@` in the query string
/// (`?application_name=a@b`) is not mistaken for the end of the userinfo.
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    let Some(first_at) = rest.find('@') else {
        return (None, rest);
    };
    let delimiter = rest[first_at..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |d| first_at + d);
    match rest[..delimiter].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    }
}

/// `user:password` as `user:[redacted]`; a `%3A`-encoded colon counts as the separator too,
/// since a misencoded password is still a password.
fn redact_userinfo(userinfo: &str, secrets: &mut Vec<String>) -> String {
    let lower = userinfo.to_ascii_lowercase();
    let separator = [
        lower.find(':').map(|i| (i, 1)),
        lower.find("%3a").map(|i| (i, 3)),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(i, _)| *i);
    match separator {
        Some((at, width)) => {
            secrets.push(userinfo[at + width..].to_owned());
            format!("{}:{REDACTED}", &userinfo[..at])
        }
        None => userinfo.to_owned(),
    }
}

/// Redacts secret parameters of the query string after the first `?` of `text`. Everything
/// after the `?` counts as query (a `#` inside a password value is not a fragment here).
fn redact_after_query_mark(text: &str, secrets: &mut Vec<String>) -> String {
    let Some(mark) = text.find('?') else {
        return text.to_owned();
    };
    let query = text[mark + 1..]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if is_secret_key(&percent_decode(key)) => {
                secrets.push(value.to_owned());
                format!("{key}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{}?{query}", &text[..mark])
}

/// Parameter names whose values are secrets (compared decoded and case-insensitively):
/// `password`, `sslpassword`, `passfile`-like names, API keys and tokens.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "auth"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with("key")
}

/// A libpq connection string (`host=db user=app password=...`): no scheme, and a plain
/// word before the first `=`.
fn is_key_value_string(text: &str) -> bool {
    match text.split_once('=') {
        Some((key, _)) => {
            let key = key.trim();
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }
        None => false,
    }
}

/// Redacts the secret values of a libpq `key = value` string, whose values are bare words
/// or single-quoted with backslash escapes (`password='a\' b'`).
fn redact_key_values(text: &str, secrets: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        let spaced = rest.trim_start();
        if !spaced.starts_with('=') {
            // Not `key = value`: keep the rest as it is, but hide it if the key is secret.
            if is_secret_key(key) && !spaced.is_empty() {
                secrets.push(spaced.to_owned());
                out.push_str(" [redacted]");
                return out;
            }
            continue;
        }
        let after_equals = spaced[1..].trim_start();
        out.push_str(&rest[..rest.len() - after_equals.len()]);
        rest = after_equals;
        let value_end = value_length(rest);
        let value = &rest[..value_end];
        if is_secret_key(key) {
            secrets.push(value.trim_matches('\'').to_owned());
            out.push_str(REDACTED);
        } else {
            out.push_str(value);
        }
        rest = &rest[value_end..];
    }
}

/// The length of the libpq value at the start of `text`: a quoted value up to its closing
/// quote (or the end, when unterminated), else up to the next whitespace.
fn value_length(text: &str) -> usize {
    if let Some(quoted) = text.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return i + 2,
                _ => {}
            }
        }
        text.len()
    } else {
        text.find(char::is_whitespace).unwrap_or(text.len())
    }
}

/// Percent-decoding as URL parsers do it (`+` as a space in the query), lossy on bad UTF-8.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_put_the_three_services_on_their_ports() {
        let config = Config::load_from(env(&[])).expect("defaults are valid");
        assert_eq!(config.disputes.listen.port(), 50051);
        assert_eq!(config.labels.listen.port(), 50052);
        assert_eq!(config.refunds.listen.port(), 50053);
        assert!(!config.test_clock);
        // No admin port unless asked for.
        assert_eq!(config.disputes.metrics_listen, None);
        // The admission limit is left to each service's database.
        assert_eq!(config.max_in_flight, None);
        assert_eq!(
            config.database_url("labels", &config.labels),
            "sqlite://./data/labels.db?mode=rwc"
        );
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("returns.toml");
        std::fs::write(
            &file,
            "policy = \"extended\"\n[labels]\nlisten = \"127.0.0.1:6000\"\n",
        )
        .expect("write");
        let config = Config::load_from(env(&[
            ("RETURNS_CONFIG", file.to_str().expect("utf-8 path")),
            ("RETURNS_LABELS_ADDR", "127.0.0.1:7000"),
            ("RETURNS_TEST_CLOCK", "1"),
            ("RETURNS_REFUNDS_METRICS_ADDR", "0.0.0.0:9464"),
            ("RETURNS_MAX_IN_FLIGHT", "48"),
        ]))
        .expect("valid");
        assert_eq!(config.max_in_flight, Some(48));
        assert_eq!(
            config.refunds.metrics_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9464)))
        );
        assert_eq!(config.policy, "extended");
        assert_eq!(config.labels.listen.port(), 7000);
        assert_eq!(config.disputes.listen.port(), 50051);
        assert!(config.test_clock);
    }

    #[test]
    fn bad_settings_are_refused_at_start_with_the_reason() {
        let short = Config::load_from(env(&[("RETURNS_AUTH_SECRET", "short")]));
        assert!(matches!(short, Err(ConfigError::Invalid(m)) if m.contains("32 bytes")));
        let policy = Config::load_from(env(&[("RETURNS_POLICY", "lenient")]));
        assert!(matches!(policy, Err(ConfigError::Invalid(m)) if m.contains("lenient")));
        let addr = Config::load_from(env(&[("RETURNS_REFUNDS_ADDR", "nowhere")]));
        assert!(matches!(
            addr,
            Err(ConfigError::Environment {
                variable: "RETURNS_REFUNDS_ADDR",
                ..
            })
        ));
        let clash = Config::load_from(env(&[("RETURNS_LABELS_ADDR", "127.0.0.1:50051")]));
        assert!(matches!(clash, Err(ConfigError::Invalid(m)) if m.contains("both listen")));
        let admin_clash =
            Config::load_from(env(&[("RETURNS_REFUNDS_METRICS_ADDR", "127.0.0.1:50052")]));
        assert!(
            matches!(admin_clash, Err(ConfigError::Invalid(m)) if m.contains("labels and refunds metrics"))
        );
        let admin = Config::load_from(env(&[("RETURNS_LABELS_METRICS_ADDR", "port 9")]));
        assert!(matches!(
            admin,
            Err(ConfigError::Environment {
                variable: "RETURNS_LABELS_METRICS_ADDR",
                ..
            })
        ));
    }

    #[test]
    fn retention_defaults_and_overrides() {
        let config = Config::load_from(env(&[])).expect("defaults are valid");
        assert_eq!(
            (config.retention_days, config.outbox_retention_days),
            (30, 7)
        );
        let config = Config::load_from(env(&[
            ("RETURNS_RETENTION_DAYS", "90"),
            ("RETURNS_OUTBOX_RETENTION_DAYS", "2"),
        ]))
        .expect("valid");
        assert_eq!(
            (config.retention_days, config.outbox_retention_days),
            (90, 2)
        );
        let zero = Config::load_from(env(&[("RETURNS_OUTBOX_RETENTION_DAYS", "0")]));
        assert!(matches!(
            zero,
            Err(ConfigError::Environment {
                variable: "RETURNS_OUTBOX_RETENTION_DAYS",
                ..
            })
        ));
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::load_from(env(&[(
            "RETURNS_AUTH_SECRET",
            "a-very-secret-value-that-is-32-bytes-long",
        )]))
        .expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("a-very-secret-value"));
        assert!(printed.contains("[redacted]"));
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/returns"),
            "postgres://app:[redacted]@db:5432/returns"
        );
    }

    /// Every way a PostgreSQL password can be written, with the password each one hides.
    const SECRET_FORMS: &[(&str, &str, &str)] = &[
        (
            "postgres://app:hunter2@db:5432/returns",
            "postgres://app:[redacted]@db:5432/returns",
            "hunter2",
        ),
        (
            "postgres://app:hun@ter2@db/returns",
            "postgres://app:[redacted]@db/returns",
            "ter2",
        ),
        (
            "postgresql://app:hun%40ter%2F2@db/returns?sslmode=require",
            "postgresql://app:[redacted]@db/returns?sslmode=require",
            "hun%40ter",
        ),
        (
            "postgres://app%3Ahunter2@db/returns",
            "postgres://app:[redacted]@db/returns",
            "hunter2",
        ),
        (
            "postgres://app:hunter2@db/returns?application_name=ops@host",
            "postgres://app:[redacted]@db/returns?application_name=ops@host",
            "hunter2",
        ),
        (
            "postgres://db/returns?user=app&password=hunter2&sslmode=require",
            "postgres://db/returns?user=app&password=[redacted]&sslmode=require",
            "hunter2",
        ),
        (
            "postgres://db/returns?PassWord=hunter2",
            "postgres://db/returns?PassWord=[redacted]",
            "hunter2",
        ),
        (
            "postgres://db/returns?pass%77ord=hunter2",
            "postgres://db/returns?pass%77ord=[redacted]",
            "hunter2",
        ),
        (
            "postgres://db/returns?sslmode=verify-full&sslpassword=hunter2",
            "postgres://db/returns?sslmode=verify-full&sslpassword=[redacted]",
            "hunter2",
        ),
        (
            "postgres://db/returns?password=hun#ter2",
            "postgres://db/returns?password=[redacted]",
            "ter2",
        ),
        (
            "postgres://app:hunter2@db/returns?password=hunter3",
            "postgres://app:[redacted]@db/returns?password=[redacted]",
            "hunter",
        ),
        (
            "host=db port=5432 user=app password=hunter2 dbname=returns",
            "host=db port=5432 user=app password=[redacted] dbname=returns",
            "hunter2",
        ),
        (
            "host=db password = 'hunter 2\\' x' dbname=returns",
            "host=db password = [redacted] dbname=returns",
            "hunter",
        ),
        (
            "dbname=returns PASSWORD='unterminated hunter2",
            "dbname=returns PASSWORD=[redacted]",
            "hunter2",
        ),
    ];

    #[test]
    fn every_url_form_prints_without_its_password() {
        for (url, redacted, secret) in SECRET_FORMS {
            assert_eq!(redact_url(url), *redacted, "{url}");
            assert!(!redact_url(url).contains(secret), "{url}");
        }
        // Nothing secret, nothing changed.
        for plain in [
            "sqlite://./data/labels.db?mode=rwc",
            "postgres://app@db/returns?sslmode=require",
            "host=db user=app dbname=returns",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn config_debug_and_errors_never_show_a_database_password() {
        for (url, _, secret) in SECRET_FORMS {
            let config = Config::load_from(env(&[
                ("RETURNS_LABELS_DATABASE_URL", url),
                ("RETURNS_DISPUTES_URL", url),
                ("RETURNS_EVIDENCE_URL", url),
            ]));
            let printed = match config {
                Ok(config) => format!("{config:?}"),
                // key=value strings are refused; the refusal is printed too.
                Err(error) => format!("{error} {error:?}"),
            };
            assert!(!printed.contains(secret), "{url}: {printed}");
        }
        let config = Config::load_from(env(&[(
            "RETURNS_REFUNDS_DATABASE_URL",
            "postgres://db/returns?password=hunter2",
        )]))
        .expect("valid");
        assert!(format!("{config:?}").contains("password=[redacted]"));
    }

    #[test]
    fn driver_messages_are_scrubbed_of_raw_and_decoded_secrets() {
        let url = "postgres://app:hun%40ter2@db/returns?sslpassword=s3cr%65t";
        let message = "cannot log in with hun@ter2 (hun%40ter2), key s3cret / s3cr%65t";
        let scrubbed = scrub_secrets(message, url);
        for secret in ["hun@ter2", "hun%40ter2", "s3cret", "s3cr%65t"] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.starts_with("cannot log in with [redacted]"));
    }
}
