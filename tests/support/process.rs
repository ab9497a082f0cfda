//! The `returns` binary as its own OS process, the way people run it: started with
//! `RETURNS_TEST_CLOCK=1` on ephemeral ports and given databases, read for the endpoints it
//! prints, killed with SIGKILL or stopped with SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use returns::SuiteAddresses;
use returns_platform::TokenIssuer;
use returns_platform::config::Secret;
use returns_platform::testing::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The secret every process of a test shares, so the test can sign tokens.
pub const SECRET: &str = "binary-test-secret-0123456789abcdefghijklmn";

/// Three databases (SQLite files or PostgreSQL databases, as the environment selects) that
/// outlive the processes using them.
pub struct SuiteStorage {
    pub data_dir: tempfile::TempDir,
    pub databases: [TestDatabase; 3],
}

impl SuiteStorage {
    pub async fn create() -> SuiteStorage {
        SuiteStorage {
            data_dir: tempfile::tempdir().expect("tempdir"),
            databases: [
                TestDatabase::create().await,
                TestDatabase::create().await,
                TestDatabase::create().await,
            ],
        }
    }
}

/// A running `returns` process.
pub struct SuiteProcess {
    pub child: Child,
    pub addresses: SuiteAddresses,
    /// The lines printed up to the endpoints (the endpoints included).
    pub banner: Vec<String>,
}

impl SuiteProcess {
    /// Starts the suite on `storage` with the test clock and `extra` environment, and waits
    /// for it to print its endpoints (printed once every listener is bound).
    pub async fn start(
        storage: &SuiteStorage,
        extra: &[(&str, String)],
    ) -> std::io::Result<SuiteProcess> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_returns"));
        command
            .env("RETURNS_AUTH_SECRET", SECRET)
            .env("RETURNS_TEST_CLOCK", "1")
            .env("RETURNS_DATA_DIR", storage.data_dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (service, db) in ["DISPUTES", "LABELS", "REFUNDS"]
            .iter()
            .zip(&storage.databases)
        {
            command
                .env(format!("RETURNS_{service}_ADDR"), "127.0.0.1:0")
                .env(format!("RETURNS_{service}_DATABASE_URL"), &db.url);
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut found: [Option<SocketAddr>; 3] = [None; 3];
        let mut banner = Vec::new();
        while found.iter().any(Option::is_none) {
            let Some(line) = lines.next_line().await? else {
                return Err(std::io::Error::other(
                    "the suite exited before printing its endpoints",
                ));
            };
            banner.push(line.clone());
            for (slot, service) in found.iter_mut().zip(["disputes", "labels", "refunds"]) {
                if let Some(rest) = line.trim().strip_prefix(service)
                    && let Some(addr) = rest.split_whitespace().next()
                {
                    *slot = addr.parse().ok();
                }
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let [Some(disputes), Some(labels), Some(refunds)] = found else {
            return Err(std::io::Error::other("endpoints missing"));
        };
        Ok(SuiteProcess {
            child,
            banner,
            addresses: SuiteAddresses {
                disputes,
                labels,
                refunds,
            },
        })
    }

    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The process id, for a killer running beside the test.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Tokens signed with [`SECRET`].
pub fn issuer() -> TokenIssuer {
    TokenIssuer::new(&Secret::new(SECRET))
}

/// Runs `returns <args>` (a CLI subcommand) against a running suite's addresses and returns
/// its exit status and standard output.
pub async fn cli(addresses: &SuiteAddresses, data_dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_returns"))
        .args(args)
        .env("RETURNS_AUTH_SECRET", SECRET)
        .env("RETURNS_DATA_DIR", PathBuf::from(data_dir))
        .env("RETURNS_DISPUTES_ADDR", addresses.disputes.to_string())
        .env("RETURNS_LABELS_ADDR", addresses.labels.to_string())
        .env("RETURNS_REFUNDS_ADDR", addresses.refunds.to_string())
        .output()
        .await
        .expect("run the returns CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}
