//! The `returns` binary as a person runs it: the suite comes up, prints where each service
//! listens, answers health checks, stops on SIGTERM; `returns token` signs verifiable tokens.

mod support;

use std::process::Stdio;

use returns_domain::dispute::Role;
use returns_platform::TokenVerifier;
use returns_platform::config::Secret;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SECRET: &str = "launcher-test-secret-0123456789abcdefghij";

#[tokio::test]
async fn returns_token_prints_a_token_signed_with_the_configured_secret() {
    let output = Command::new(env!("CARGO_BIN_EXE_returns"))
        .args(["token", "--role", "buyer", "--sub", "b-1"])
        .env("RETURNS_AUTH_SECRET", SECRET)
        .output()
        .await
        .expect("run returns token");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let caller = TokenVerifier::new(&Secret::new(SECRET))
        .verify_header(Some(&format!("Bearer {}", token.trim())))
        .expect("the printed token verifies");
    assert_eq!(caller.id, "b-1");
    assert_eq!(caller.role, Role::Buyer);

    let refused = Command::new(env!("CARGO_BIN_EXE_returns"))
        .args(["token", "--role", "emperor", "--sub", "x"])
        .env("RETURNS_AUTH_SECRET", SECRET)
        .output()
        .await
        .expect("run returns token");
    assert!(!refused.status.success());
}

#[tokio::test]
async fn the_launcher_starts_all_three_services_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_returns"))
        .env_remove("RETURNS_AUTH_SECRET")
        .env("RETURNS_DATA_DIR", data.path())
        .env("RETURNS_DISPUTES_ADDR", "127.0.0.1:0")
        .env("RETURNS_LABELS_ADDR", "127.0.0.1:0")
        .env("RETURNS_REFUNDS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the suite");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addresses = Vec::new();
    let mut said_secret = false;
    while addresses.len() < 3 {
        let line = lines
            .next_line()
            .await
            .expect("read stdout")
            .expect("the launcher prints its endpoints before serving");
        said_secret |= line.contains("RETURNS_AUTH_SECRET is not set");
        for service in ["disputes", "labels", "refunds"] {
            if let Some(rest) = line.trim().strip_prefix(service) {
                let addr: std::net::SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .parse()
                    .expect("a socket address");
                addresses.push(addr);
            }
        }
    }
    assert!(
        said_secret,
        "the launcher says it generated a session secret"
    );
    assert!(data.path().join("auth-secret").exists());
    for name in ["disputes.db", "labels.db", "refunds.db"] {
        assert!(data.path().join(name).exists(), "{name} under the data dir");
    }
    for addr in addresses {
        let mut health = HealthClient::new(support::channel(addr).await);
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
    }

    let pid = child.id().expect("running");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("send SIGTERM");
    assert!(killed.success());
    let status = child.wait().await.expect("wait");
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );
}
