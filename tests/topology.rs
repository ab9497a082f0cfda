//! The deployed topology, tested: `deploy/compose.yaml` read as written (anchors and merge
//! keys resolved), each service started as two OS processes of its own binary with exactly
//! the environment compose gives it (hosts mapped to loopback, a fresh database per
//! service), the seven stories played through load balancers that spread every call over
//! both replicas, one replica of each service SIGKILLed mid-run and restarted, and then
//! counted: every deadline fired once, every message delivered and received once, every
//! refund submitted to the payment provider once, nothing left behind.
//!
//! PostgreSQL only: two replicas of a service share one database, which SQLite files cannot
//! do across processes, so on SQLite the test says why it did not run; CI's PostgreSQL pass
//! (`RETURNS_TEST_POSTGRES_URL`) runs it. How the six separate test clocks are moved
//! together is in `support/topology.rs`.

#[path = "support/story_checks.rs"]
mod story_checks;
#[path = "support/topology.rs"]
mod topology;

use std::collections::BTreeMap;

use returns::stories::Stage;
use returns_platform::TokenIssuer;
use returns_platform::config::Secret;
use returns_platform::testing::POSTGRES_URL_VAR;
use returns_proto::disputes::v1::{DisputeState, OutcomeSource, RulingOutcome};
use returns_proto::refunds::v1::RefundStatus;
use story_checks::{assert_succeeded_in_window, only_refund, timeline};
use topology::{Deployment, SECRET, SERVICES};

/// The stories, each checked as `tests/stories.rs` checks it on one process.
async fn play_the_stories(stage: &mut Stage, deployment: &Deployment) {
    let outcome = stage.package_never_arrives().await.expect("story 1");
    let decided = outcome.dispute.outcome.as_ref().expect("an outcome");
    assert_eq!(decided.source, OutcomeSource::SellerSilent as i32);
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(2490));
    assert_eq!(timeline(refund).1, 3);
    assert_succeeded_in_window(refund);

    let outcome = stage.damaged_item_partial_refund().await.expect("story 2");
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(2400));
    assert_eq!(timeline(refund), (5, 15));
    assert_succeeded_in_window(refund);

    let outcome = stage
        .contested_order_return_required()
        .await
        .expect("story 3");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(8000));
    assert_succeeded_in_window(refund);

    let outcome = stage
        .fourth_return_this_month_is_buyer_paid()
        .await
        .expect("story 4");
    let postage = outcome
        .label
        .as_ref()
        .and_then(|label| label.postage.clone())
        .expect("postage");
    let refund = only_refund(&outcome);
    assert_eq!(
        refund.net_amount.as_ref().map(|m| m.minor_units),
        Some(8000 - postage.minor_units)
    );
    assert_succeeded_in_window(refund);

    let outcome = stage
        .platinum_fast_refund_at_acceptance()
        .await
        .expect("story 5");
    assert_eq!(outcome.released_before_delivery, Some(true));
    assert!(only_refund(&outcome).fast_refund);
    assert_succeeded_in_window(only_refund(&outcome));

    let outcome = stage
        .chargeback_while_refund_on_hold()
        .await
        .expect("story 6");
    assert!(
        outcome
            .refunds
            .iter()
            .all(|r| r.status == RefundStatus::Cancelled as i32),
        "{:?}",
        outcome.refunds
    );

    // Refunds unreachable from the other services (their door to it answers UNAVAILABLE);
    // the test client's own door stays open, as in the one-process story.
    let door = deployment.internal["refunds"].clone();
    let outcomes = stage
        .refunds_down_while_disputes_resolve(&move |down| door.set_down(down))
        .await
        .expect("story 7");
    assert_eq!(outcomes.len(), 3);
    for outcome in &outcomes {
        assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
        assert_succeeded_in_window(only_refund(outcome));
    }

    // A ship-by deadline too, so both kinds of deadline fire in the deployment.
    let outcome = stage
        .return_not_shipped_in_time()
        .await
        .expect("not-shipped flow");
    let decided = outcome.dispute.outcome.as_ref().expect("an outcome");
    assert_eq!(decided.source, OutcomeSource::ReturnNotShipped as i32);
    assert_eq!(decided.r#type, RulingOutcome::SellerFavor as i32);
    assert_eq!(only_refund(&outcome).status, RefundStatus::Cancelled as i32);
}

/// An outbox row as the count reads it: id, destination, delivered at, dead at, attempts.
type OutboxRow = (String, String, Option<i64>, Option<i64>, i64);

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url)
        .await
        .expect("connect to a service database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_of_each_compose_service_play_the_stories_through_kills_losing_and_doubling_nothing()
 {
    if !std::env::var(POSTGRES_URL_VAR).is_ok_and(|url| !url.is_empty()) {
        eprintln!(
            "topology test skipped: two replicas share one database, which needs PostgreSQL \
             (set {POSTGRES_URL_VAR}; CI's PostgreSQL pass does)"
        );
        return;
    }
    let deployment = Deployment::start().await;
    let topology = deployment.topology.clone();

    // The kills, armed before the stories: the disputes replica that answers the first
    // AcceptOffer, the labels replica that answers the first tracking scan and the refunds
    // replica that receives the first RecordReturnProgress delivery each die right after
    // answering (their work committed, the answer lost, their relay or settlement possibly
    // mid-flight) and restart under the same host name.
    deployment.published["disputes"].kill_after("AcceptOffer");
    deployment.published["labels"].kill_after("ReportTrackingEvent");
    deployment.internal["refunds"].kill_after("RecordReturnProgress");
    // And while the first refund is in flight at the provider, the *other* refunds replica
    // is killed and restarts: a starting replica must not take a live replica's lease (it
    // would submit the same refund a second time).
    let held = deployment.provider.hold_next();
    let restarting = topology.clone();
    let while_in_flight = tokio::spawn(async move {
        let held = held.await.expect("a refund reached the provider");
        let other = restarting
            .hostnames("refunds")
            .into_iter()
            .find(|hostname| *hostname != held.hostname)
            .expect("a second refunds replica");
        restarting.kill_and_restart(&other).await;
        let _ = held.release.send(());
        (held.hostname, held.key, other)
    });

    let issuer = TokenIssuer::new(&Secret::new(SECRET));
    let mut stage = Stage::connect(deployment.addresses(), issuer)
        .await
        .expect("connect through the published ports");
    play_the_stories(&mut stage, &deployment).await;
    stage.advance_and_settle(0).await.expect("quiet at the end");

    // The kills happened, each replica restarted once.
    let (holder, held_key, restarted) = while_in_flight.await.expect("no panic");
    assert_ne!(holder, restarted);
    assert_eq!(deployment.published["disputes"].kills(), 1);
    assert_eq!(deployment.published["labels"].kills(), 1);
    assert_eq!(deployment.internal["refunds"].kills(), 1);
    assert_eq!(
        topology.restarts.load(std::sync::atomic::Ordering::SeqCst),
        4
    );

    // Calls were spread: every replica answered the client and the other services.
    for service in SERVICES {
        let mut served: BTreeMap<String, usize> = deployment.published[service].served();
        for (hostname, calls) in deployment.internal[service].served() {
            *served.entry(hostname).or_default() += calls;
        }
        for hostname in topology.hostnames(service) {
            assert!(
                served.get(&hostname).is_some_and(|calls| *calls > 0),
                "{hostname} answered no call: {served:?}"
            );
        }
    }

    let url = |name: &str| deployment.databases[name].url.clone();
    let disputes = pool(&url("disputes")).await;
    let labels = pool(&url("labels")).await;
    let refunds = pool(&url("refunds")).await;

    // Every message delivered, none dead, and each received exactly once (the inbox's key
    // makes a second receipt impossible; here every sent id is there, and nothing else).
    let databases = [
        ("disputes", &disputes),
        ("labels", &labels),
        ("refunds", &refunds),
    ];
    let mut sent_to: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (source, db) in databases {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT message_id, destination, delivered_at, dead_at, attempts FROM outbox",
        )
        .fetch_all(db)
        .await
        .expect("read an outbox");
        for (id, destination, delivered, dead, attempts) in rows {
            assert!(
                delivered.is_some() && dead.is_none(),
                "{source} -> {destination} message {id} not delivered after {attempts} attempts"
            );
            let receiver = SERVICES
                .into_iter()
                .find(|service| *service == destination)
                .expect("a known destination");
            sent_to.entry(receiver).or_default().push(id);
        }
    }
    assert!(sent_to.values().map(Vec::len).sum::<usize>() > 20);
    for (receiver, db) in databases {
        let mut received: Vec<String> = sqlx::query_scalar("SELECT message_id FROM inbox")
            .fetch_all(db)
            .await
            .expect("read an inbox");
        received.sort();
        let mut sent = sent_to.remove(receiver).unwrap_or_default();
        sent.sort();
        assert_eq!(received, sent, "{receiver}'s inbox is what was sent to it");
    }

    // Every deadline due has fired, and each fired once.
    let now_micros = stage
        .suite_now()
        .await
        .expect("the clock")
        .timestamp_micros();
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deadlines WHERE fired = 0 AND due_at <= $1")
            .bind(now_micros)
            .fetch_one(&disputes)
            .await
            .expect("count");
    assert_eq!(pending, 0, "deadlines due but not fired");
    let fired: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT dispute_id, event_type, COUNT(*) FROM dispute_events \
         WHERE event_type IN ('SELLER_RESPONSE_EXPIRED', 'RETURN_SHIP_BY_EXPIRED') \
         GROUP BY dispute_id, event_type",
    )
    .fetch_all(&disputes)
    .await
    .expect("count");
    for kind in ["SELLER_RESPONSE_EXPIRED", "RETURN_SHIP_BY_EXPIRED"] {
        assert!(fired.iter().any(|(_, k, _)| k == kind), "no {kind} fired");
    }
    for (dispute, kind, times) in &fired {
        assert_eq!(*times, 1, "{kind} fired {times} times for {dispute}");
    }

    // Every refund that went to the provider went once: one submission per idempotency
    // key, from one replica, including the one in flight while the other replica restarted.
    let submitted: Vec<String> = sqlx::query_scalar(
        "SELECT 'refund-' || refund_id FROM refunds WHERE provider_reference <> ''",
    )
    .fetch_all(&refunds)
    .await
    .expect("read refunds");
    let calls = deployment.provider.calls.lock().expect("calls");
    let keys: Vec<&String> = calls.submissions.keys().collect();
    let mut expected: Vec<&String> = submitted.iter().collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "the provider saw exactly the submitted refunds"
    );
    for (key, callers) in &calls.submissions {
        assert_eq!(callers.len(), 1, "{key} was submitted by {callers:?}");
    }
    assert_eq!(calls.submissions[&held_key], vec![holder]);
    // Stories 1-5 pay one refund each and story 7 three; story 6's and the not-shipped
    // flow's are cancelled before they reach the provider.
    assert_eq!(calls.submissions.len(), 8, "{:?}", calls.submissions);
    drop(calls);

    // The collector compose names received the services' spans.
    assert!(
        deployment
            .collector
            .exports
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
}
