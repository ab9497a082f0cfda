//! Crash safety: the refunds service binary is killed (SIGKILL) again and again while
//! refunds flow, at random points and right after the provider paid (before the commit that
//! records it); after the last restart every refund was paid exactly once, none lost, and
//! the provider's effects match the service's ledger.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use returns_domain::dispute::Role;
use returns_platform::Database;
use returns_platform::db::column;
use returns_platform::testing::{TestDatabase, authorized, test_secret, token};
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use support::stub::{Shared, stub};
use support::{Harness, usd};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const REFUNDS: usize = 200;
const ROUNDS: usize = 25;
const AMOUNT: i64 = 137;

struct Service {
    child: Child,
    client: RefundServiceClient<tonic::transport::Channel>,
}

/// Starts the service binary on port 0 and connects once it says where it listens.
async fn launch(database_url: &str, provider_url: &str, data_dir: &std::path::Path) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_returns-refunds"))
        .env("RETURNS_AUTH_SECRET", test_secret().expose())
        .env("RETURNS_REFUNDS_ADDR", "127.0.0.1:0")
        .env("RETURNS_REFUNDS_DATABASE_URL", database_url)
        .env("RETURNS_DATA_DIR", data_dir)
        .env("RETURNS_REFUNDS_PROVIDER_URL", provider_url)
        .env("RETURNS_REFUNDS_PROVIDER_API_KEY", "sk_test_stub")
        // A short lease so work a killed process held is taken over quickly.
        .env("RETURNS_REFUNDS_LEASE_MS", "150")
        .env("RETURNS_REFUNDS_POLL_MS", "5")
        .env("RETURNS_REFUNDS_BACKOFF_MS", "10")
        .env("RETURNS_REFUNDS_BACKOFF_CAP_MS", "100")
        .env("RETURNS_REFUNDS_MAX_ATTEMPTS", "100000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the refunds binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("refunds listening on ") {
                return addr.trim().to_string();
            }
        }
        panic!("the service exited before listening");
    })
    .await
    .expect("the service started");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to a bound listener");
    Service {
        child,
        client: RefundServiceClient::new(channel),
    }
}

async fn kill(mut service: Service) {
    service.child.start_kill().expect("SIGKILL");
    service.child.wait().await.expect("reaped");
}

fn refund_request(n: usize) -> pb::CreateRefundRequest {
    let mut request =
        Harness::refund_request("o-crash", usd(AMOUNT), pb::ReleaseCondition::Immediate);
    // Stable per refund, so a request cut off by a kill is retried under the same key.
    request.request_id = format!("crash-refund-{n}");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_service_repeatedly_never_pays_a_refund_twice_nor_loses_one() {
    let state = Shared::default();
    let provider_url = stub(state.clone()).await;
    let target = TestDatabase::create().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let platform = token(Role::Platform, "orders-service");
    let paid = state.lock().expect("state").paid.clone();
    let release_reply = state.lock().expect("state").release_reply.clone();

    let mut service = launch(&target.url, &provider_url, data_dir.path()).await;
    service
        .client
        .record_capture(authorized(
            pb::RecordCaptureRequest {
                request_id: "crash-capture".into(),
                order_id: "o-crash".into(),
                buyer_id: "b-crash".into(),
                amount: Some(usd(AMOUNT * REFUNDS as i64)),
                payment_method: common::PaymentMethod::Card as i32,
                buyer_tier: common::BuyerTier::Standard as i32,
                captured_at: None,
                payment_reference: String::new(),
            },
            &platform,
        ))
        .await
        .expect("capture");

    let per_round = REFUNDS.div_ceil(ROUNDS);
    let mut next = 0;
    let mut kills = 0;
    for round in 0..ROUNDS {
        let held = round % 2 == 0;
        if held {
            // The next new payment's answer is held until after the kill below.
            state.lock().expect("state").hold_reply_after_pay = true;
        }
        // Request this round's refunds (each with a stable request_id, so a retry after a
        // lost answer could never create a second one).
        let end = (next + per_round).min(REFUNDS);
        while next < end {
            service
                .client
                .create_refund(authorized(refund_request(next), &platform))
                .await
                .expect("create the refund");
            next += 1;
        }
        // Kill at different points: right after the provider paid a refund (its answer held
        // back, so the worker cannot have recorded the payment), or as soon as requests
        // were in.
        if held {
            let _ = tokio::time::timeout(Duration::from_secs(5), paid.notified()).await;
        }
        kill(service).await;
        if held {
            // The answer goes to a dead process; let the stub's task end.
            release_reply.notify_one();
        }
        kills += 1;
        service = launch(&target.url, &provider_url, data_dir.path()).await;
    }
    assert_eq!(next, REFUNDS);

    // After the last restart, wait (bounded) until every refund has reached the provider.
    let db = Database::open(&target.url, returns_refunds::MIGRATIONS)
        .await
        .expect("open the database");
    let submitted = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let row =
                sqlx::query("SELECT COUNT(*) AS n FROM refunds WHERE provider_reference <> ''")
                    .fetch_one(db.pool())
                    .await
                    .expect("count");
            let n: i64 = column(&row, "n").expect("n");
            if n as usize == REFUNDS {
                return n;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every refund reached the provider after the restarts");
    assert_eq!(submitted as usize, REFUNDS);
    kill(service).await;
    assert!(kills >= 20, "{kills} kills");

    let (posts, payments, keys_by_refund) = {
        let state = state.lock().expect("state");
        (
            state.posts,
            state.refunds.clone(),
            state.keys_by_refund.clone(),
        )
    };
    // Kills landed between the provider's payment and the worker's commit: the refund was
    // submitted again after the restart, and the idempotency key kept it to one payment.
    assert!(posts > REFUNDS, "no resubmission happened: {posts} posts");
    // No duplicates: one payment per idempotency key, one key per refund.
    assert_eq!(payments.len(), REFUNDS);
    assert_eq!(keys_by_refund.len(), REFUNDS);
    assert!(keys_by_refund.values().all(|keys| keys.len() == 1));
    assert!(payments.values().all(|(_, amount)| *amount == AMOUNT));

    // Nothing lost, and the ledger agrees with the provider.
    let rows = sqlx::query("SELECT refund_id, provider_reference, status FROM refunds")
        .fetch_all(db.pool())
        .await
        .expect("refunds");
    assert_eq!(rows.len(), REFUNDS);
    for row in &rows {
        let refund_id: String = column(row, "refund_id").expect("id");
        let reference: String = column(row, "provider_reference").expect("reference");
        let paid_under = payments
            .get(&format!("refund-{refund_id}"))
            .expect("the provider paid every refund the service has");
        assert_eq!(paid_under.0, reference);
        assert_eq!(
            column::<String>(row, "status").expect("status"),
            "SUBMITTED"
        );
    }
    let ledger = sqlx::query(
        "SELECT status, CAST(SUM(amount_minor) AS BIGINT) AS total, \
         CAST(SUM(count_delta) AS BIGINT) AS n FROM refund_ledger GROUP BY status",
    )
    .fetch_all(db.pool())
    .await
    .expect("ledger");
    let mut by_status = HashMap::new();
    for row in &ledger {
        let status: String = column(row, "status").expect("status");
        let total: i64 = column(row, "total").expect("total");
        let n: i64 = column(row, "n").expect("n");
        if (total, n) != (0, 0) {
            by_status.insert(status, (n, total));
        }
    }
    let provider_total: i64 = payments.values().map(|(_, amount)| amount).sum();
    assert_eq!(
        by_status,
        HashMap::from([("SUBMITTED".to_string(), (REFUNDS as i64, provider_total))])
    );
}
