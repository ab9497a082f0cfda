//! The `returns` launcher at start-up, as its own process: it refuses unusable settings
//! before starting anything, names the real cause of a database failure without printing
//! the password, and keeps its data dir, session secret and SQLite files owner-only.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SECRET: &str = "hardening-test-secret-0123456789abcdefghij";

/// Bounds a run that should end by itself: a launcher that starts serving instead of
/// refusing would otherwise hang the test.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// `returns` (serve) on ephemeral ports with a data dir and nothing inherited that could
/// change what it opens.
fn launcher(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_returns"));
    command
        .env("RETURNS_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .env_remove("RETURNS_CONFIG")
        .env_remove("RETURNS_EVIDENCE_URL")
        .env_remove("RETURNS_REFUNDS_PROVIDER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for service in ["DISPUTES", "LABELS", "REFUNDS"] {
        command
            .env(format!("RETURNS_{service}_ADDR"), "127.0.0.1:0")
            .env_remove(format!("RETURNS_{service}_DATABASE_URL"));
    }
    command
}

async fn run_to_exit(mut command: Command) -> Output {
    tokio::time::timeout(EXIT_WITHIN, command.output())
        .await
        .expect("the launcher exits instead of serving")
        .expect("run the launcher")
}

#[tokio::test]
async fn a_bad_refunds_provider_url_stops_the_launcher_before_anything_starts() {
    for url in ["not a url", "payments.example.com/v1"] {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("data");
        let mut command = launcher(&data);
        command
            .env_remove("RETURNS_AUTH_SECRET")
            .env("RETURNS_REFUNDS_PROVIDER_URL", url);
        let output = run_to_exit(command).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url:?}: {output:?}");
        assert!(
            stderr.contains("RETURNS_REFUNDS_PROVIDER_URL"),
            "{url:?}: {stderr}"
        );
        // Refused before anything was written: no secret, no databases, no data dir.
        assert!(!data.exists(), "{url:?}: the data dir was created");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("suite is up"),
            "{url:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_is_named_at_once_without_its_password() {
    // A loopback port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let temp = tempfile::tempdir().expect("tempdir");
    let mut command = launcher(&temp.path().join("data"));
    command.env("RETURNS_AUTH_SECRET", SECRET).env(
        "RETURNS_DISPUTES_DATABASE_URL",
        format!("postgres://app:userinfo-secret@127.0.0.1:{port}/disputes?password=query-secret"),
    );
    let started = std::time::Instant::now();
    let output = run_to_exit(command).await;
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{printed}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}: {printed}",
        started.elapsed()
    );
    assert!(printed.to_lowercase().contains("refused"), "{printed}");
    assert!(printed.contains(&format!("127.0.0.1:{port}")), "{printed}");
    assert!(!printed.contains("userinfo-secret"), "{printed}");
    assert!(!printed.contains("query-secret"), "{printed}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_secret_and_databases_are_owner_only_from_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        let mode = std::fs::metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode();
        // Octal text, so a failure reads "755" rather than 493.
        format!("{:03o}", mode & 0o777)
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    // No RETURNS_AUTH_SECRET: the launcher generates one and saves it under the data dir.
    let mut command = launcher(&data);
    command.env_remove("RETURNS_AUTH_SECRET");
    let mut child = command.spawn().expect("start the suite");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut endpoints = 0;
    while endpoints < 3 {
        let line = lines
            .next_line()
            .await
            .expect("read stdout")
            .expect("the launcher prints its endpoints once every listener is bound");
        endpoints += ["disputes", "labels", "refunds"]
            .iter()
            .filter(|service| line.trim().starts_with(*service))
            .count();
    }
    assert_eq!(mode(&data), "700", "the data dir");
    let secret = data.join("auth-secret");
    assert_eq!(mode(&secret), "600", "auth-secret");
    assert_eq!(
        std::fs::read_to_string(&secret)
            .expect("read the secret")
            .trim()
            .len(),
        64
    );
    for service in ["disputes", "labels", "refunds"] {
        let file = data.join(format!("{service}.db"));
        assert_eq!(mode(&file), "600", "{}", file.display());
        // SQLite gives its side files the database file's mode.
        for side in ["-wal", "-shm"] {
            let file = data.join(format!("{service}.db{side}"));
            if file.exists() {
                assert_eq!(mode(&file), "600", "{}", file.display());
            }
        }
    }
    // Nothing else under the data dir is readable by others either.
    for entry in std::fs::read_dir(&data).expect("list the data dir") {
        let path = entry.expect("entry").path();
        let mode = mode(&path);
        assert!(mode.ends_with("00"), "{}: {mode}", path.display());
    }
    child.start_kill().expect("stop the suite");
    child.wait().await.expect("wait");
}
