//! Whole returns survive crashes of the whole suite: the `returns` binary is killed with
//! SIGKILL at random points while 200 end-to-end returns are played against it over gRPC
//! (order, capture, dispute, acceptance, label, scans, inspection, settlement), restarted
//! each time, and the client replays the interrupted return with the same idempotency keys,
//! as a real client retries. At the end every return has exactly one refund of the right
//! amount, every refund is paid, and no outbox message is lost, stuck or dead.
//! On SQLite, and on PostgreSQL when CI sets RETURNS_TEST_POSTGRES_URL.

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use returns::stories::{Stage, whole_return_total};
use returns_proto::refunds::v1::RefundStatus;
use support::process::{SuiteProcess, SuiteStorage, issuer};

/// Returns played; `RETURNS_CRASH_RETURNS` plays more (or fewer) by hand.
fn returns_to_play() -> usize {
    std::env::var("RETURNS_CRASH_RETURNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

async fn connect(suite: &SuiteProcess, pinned: chrono::DateTime<chrono::Utc>) -> Stage {
    let mut stage = Stage::connect(suite.addresses, issuer())
        .await
        .expect("connect");
    stage.pin_request_times(pinned);
    stage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_played_through_repeated_kill_9_of_the_suite_each_end_with_exactly_one_paid_refund()
{
    let total = returns_to_play();
    let storage = SuiteStorage::create().await;
    let mut rng = StdRng::seed_from_u64(0x5EED_2026);
    let mut suite = SuiteProcess::start(&storage, &[]).await.expect("start");
    let mut stage = Stage::connect(suite.addresses, issuer())
        .await
        .expect("connect");
    let pinned = stage.suite_now().await.expect("the suite's clock");
    stage.pin_request_times(pinned);

    let mut kills = 0;
    let mut replays = 0;
    let mut orders = Vec::with_capacity(total);
    let mut n = 0;
    while n < total {
        // About one return in five is cut off at a random point: the client gives up on it
        // after a random deadline and the suite is killed that instant, mid-request,
        // mid-transaction or mid-delivery, wherever the return had got to.
        let deadline = rng
            .random_ratio(1, 5)
            .then(|| Duration::from_millis(rng.random_range(1..120)));
        let played = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, stage.whole_return(n)).await,
            None => Ok(stage.whole_return(n).await),
        };
        match played {
            Ok(Ok(order_id)) => {
                orders.push((n, order_id));
                n += 1;
                continue;
            }
            Ok(Err(error)) => {
                // A failure not caused by a kill is a defect; allow a few for safety only
                // if a kill was in flight.
                panic!("return {n} failed without a crash: {error}");
            }
            Err(_cut_off) => {}
        }
        suite.kill().await;
        kills += 1;
        suite = SuiteProcess::start(&storage, &[]).await.expect("restart");
        stage = connect(&suite, pinned).await;
        replays += 1;
    }
    assert!(
        kills >= total / 10,
        "{kills} kills over {total} returns is too few to mean anything"
    );

    // Everything left in flight finishes; the card refunds are paid within their window.
    stage.advance_and_settle(0).await.expect("settle");
    stage
        .advance_and_settle(30 * 86_400)
        .await
        .expect("the card network pays");
    let backlog = stage.outbox_backlog().await.expect("outboxes");
    for (n, order_id) in &orders {
        let refunds = stage.refunds_of_order(order_id).await.expect("refunds");
        assert_eq!(
            refunds.len(),
            1,
            "return {n}: {refunds:?}; outboxes: {backlog:#?}"
        );
        let refund = &refunds[0];
        assert_eq!(
            refund.amount.as_ref().map(|m| m.minor_units),
            Some(whole_return_total(*n)),
            "return {n}"
        );
        assert_eq!(
            refund.status,
            RefundStatus::Succeeded as i32,
            "return {n} is paid: {refund:?}"
        );
    }
    assert!(
        backlog.is_empty(),
        "no message lost, stuck or dead after {kills} kills and {replays} replays: {backlog:#?}"
    );
    suite.kill().await;
}
