//! Suite configuration: defaults in code, an optional TOML file, then `RETURNS_*` environment
//! overrides, validated once at start (ARCHITECTURE.md convention 5).
//!
//! One `Config` describes the whole suite; each service binary reads the same file and takes
//! its own section, so the launcher and a deployment of separate binaries agree on ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
        "RETURNS_OUTBOX_MAX_ATTEMPTS",
        "delivery attempts before an outbox message is dead (30)",
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
        "RETURNS_DISPUTES_DATABASE_URL",
        "sqlite:// or postgres:// URL for disputes",
    ),
    (
        "RETURNS_LABELS_ADDR",
        "listen address of the labels service (127.0.0.1:50052)",
    ),
    (
        "RETURNS_LABELS_DATABASE_URL",
        "sqlite:// or postgres:// URL for labels",
    ),
    (
        "RETURNS_REFUNDS_ADDR",
        "listen address of the refunds service (127.0.0.1:50053)",
    ),
    (
        "RETURNS_REFUNDS_DATABASE_URL",
        "sqlite:// or postgres:// URL for refunds",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "when set, spans are exported there over OTLP/gRPC",
    ),
    ("RUST_LOG", "log filter (default info)"),
];

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    pub disputes: ServiceConfig,
    pub labels: ServiceConfig,
    pub refunds: ServiceConfig,
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
            disputes: ServiceConfig {
                listen: local(50051),
                database_url: None,
                url: None,
            },
            labels: ServiceConfig {
                listen: local(50052),
                database_url: None,
                url: None,
            },
            refunds: ServiceConfig {
                listen: local(50053),
                database_url: None,
                url: None,
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
        for (service, addr_var, url_var, peer_var) in [
            (
                &mut self.disputes,
                "RETURNS_DISPUTES_ADDR",
                "RETURNS_DISPUTES_DATABASE_URL",
                "RETURNS_DISPUTES_URL",
            ),
            (
                &mut self.labels,
                "RETURNS_LABELS_ADDR",
                "RETURNS_LABELS_DATABASE_URL",
                "RETURNS_LABELS_URL",
            ),
            (
                &mut self.refunds,
                "RETURNS_REFUNDS_ADDR",
                "RETURNS_REFUNDS_DATABASE_URL",
                "RETURNS_REFUNDS_URL",
            ),
        ] {
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
        for (i, (a, first)) in services.iter().enumerate() {
            for (b, second) in &services[i + 1..] {
                if first.listen.port() != 0 && first.listen == second.listen {
                    return Err(ConfigError::Invalid(format!(
                        "{a} and {b} both listen on {}",
                        first.listen
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

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:[redacted]{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
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
        ]))
        .expect("valid");
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
}
