//! The settlement engine: refunds reach the provider once, retry with backoff, settle on the
//! method's timeline, and the ledger-based report always equals the sum of the refunds.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use returns_platform::db::column;
use returns_platform::testing::authorized;
use returns_platform::worker::Worker;
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use returns_refunds::provider::{
    PaymentProvider, ProviderError, ProviderStatus, SandboxConfig, SubmitRequest,
};
use returns_refunds::settlement::{Settlement, wall_now_micros};
use support::{Harness, platform, status, usd};

const MINUTE_US: i64 = 60_000_000;

#[tokio::test]
async fn a_released_wallet_refund_is_submitted_then_succeeds_after_a_business_day() {
    let mut h = Harness::start().await;
    h.capture(
        "o-w",
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    let refund = h
        .refund("o-w", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    let pass = h.settle().await;
    assert_eq!((pass.claimed, pass.submitted), (1, 1));
    let submitted = h.get(&refund.refund_id).await;
    assert_eq!(status(&submitted), pb::RefundStatus::Submitted);
    assert_eq!(submitted.attempts, 1);
    assert!(
        submitted
            .provider_reference
            .starts_with(&format!("sbx_{}.", refund.refund_id)),
        "{}",
        submitted.provider_reference
    );
    // Nothing due before the expected arrival.
    assert_eq!(h.settle().await.claimed, 0);

    h.advance_days(1);
    let pass = h.settle().await;
    assert_eq!(pass.succeeded, 1);
    let done = h.get(&refund.refund_id).await;
    assert_eq!(status(&done), pb::RefundStatus::Succeeded);
    assert!(done.succeeded_at.is_some());
    let effects = h.sandbox.effects();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].amount.minor_units, 2_000);
}

#[tokio::test]
async fn a_card_refund_is_paid_net_of_deductions_and_settles_after_five_business_days() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let mut request = Harness::refund_request("o-1", usd(4_000), pb::ReleaseCondition::Immediate);
    request.deductions = vec![pb::Deduction {
        kind: pb::DeductionKind::ReturnPostage as i32,
        amount: Some(usd(500)),
        note: String::new(),
    }];
    let refund = h.create(request).await.expect("created");
    h.settle().await;
    // Monday + 4 days = Friday: not yet.
    h.advance_days(4);
    h.settle().await;
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::Submitted
    );
    // The following Monday (5 business days) it has arrived.
    h.advance_days(3);
    h.settle().await;
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::Succeeded
    );
    assert_eq!(h.sandbox.effects()[0].amount.minor_units, 3_500);
}

#[tokio::test]
async fn transient_provider_failures_retry_with_backoff_and_every_attempt_is_recorded() {
    let mut h = Harness::start_with(
        SandboxConfig {
            latency: Duration::ZERO,
            failure_percent: 60,
        },
        false,
    )
    .await;
    h.card_order("o-1", "b-1", 1_000_000).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            h.refund("o-1", 100, pb::ReleaseCondition::Immediate)
                .await
                .refund_id,
        );
    }
    // Backoff starts at 30 s of wall time and doubles; an hour of passes one minute apart
    // covers 7 tries. The business clock stands still: backoff is not business time.
    let wall = wall_now_micros();
    for minute in 0..60 {
        h.settle_at_wall(wall + minute * MINUTE_US).await;
    }
    let calls = h.sandbox.submit_calls();
    let mut retried = 0;
    let mut accepted = 0;
    for id in &ids {
        let refund = h.get(id).await;
        assert_eq!(status(&refund), pb::RefundStatus::Submitted, "{refund:?}");
        if refund.provider_reference.is_empty() {
            // Still between retries: the last failure is on record.
            assert!(refund.failure_reason.contains("simulated outage"));
        } else {
            accepted += 1;
        }
        let key = format!("refund-{id}");
        assert_eq!(
            calls.get(&key).copied(),
            Some(u64::try_from(refund.attempts).expect("positive")),
            "one provider call per recorded attempt"
        );
        let rows = sqlx::query("SELECT COUNT(*) AS n FROM refund_attempts WHERE refund_id = $1")
            .bind(id)
            .fetch_one(h.db.pool())
            .await
            .expect("count");
        assert_eq!(
            column::<i64>(&rows, "n").expect("n"),
            i64::from(refund.attempts)
        );
        if refund.attempts > 1 {
            retried += 1;
        }
    }
    assert!(retried > 0, "a 60% failure rate makes some refunds retry");
    assert!(accepted > 0);
    assert_eq!(h.sandbox.effects().len(), accepted);
}

#[tokio::test]
async fn a_refund_fails_for_good_once_its_attempts_run_out() {
    let mut h = Harness::start_with(
        SandboxConfig {
            latency: Duration::ZERO,
            failure_percent: 100,
        },
        false,
    )
    .await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h
        .refund("o-1", 1_000, pb::ReleaseCondition::Immediate)
        .await;
    // Passes a day of wall time apart: far beyond the capped backoff.
    let wall = wall_now_micros();
    for day in 0..20 {
        h.settle_at_wall(wall + day * 24 * 60 * MINUTE_US).await;
    }
    let failed = h.get(&refund.refund_id).await;
    assert_eq!(status(&failed), pb::RefundStatus::Failed);
    assert_eq!(failed.attempts, 8);
    assert!(failed.failure_reason.contains("simulated outage"));
    assert!(h.sandbox.effects().is_empty());
    // A failed refund no longer counts against the capture: the full amount can go again.
    let again = h
        .refund("o-1", 10_000, pb::ReleaseCondition::Immediate)
        .await;
    assert_eq!(status(&again), pb::RefundStatus::Pending);
}

#[tokio::test]
async fn two_workers_on_one_database_never_submit_the_same_refund_twice() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000_000).await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(
            h.refund("o-1", 100, pb::ReleaseCondition::Immediate)
                .await
                .refund_id,
        );
    }
    let now = h.context.clock.now();
    let a = h.worker("worker-a");
    let b = h.worker("worker-b");
    let mut tasks = Vec::new();
    for worker in [a.clone(), b.clone(), a, b] {
        tasks.push(tokio::spawn(async move {
            let mut total = 0;
            for _ in 0..4 {
                total += worker.process_due(now).await.expect("pass").submitted;
            }
            total
        }));
    }
    let mut submitted = 0;
    for task in tasks {
        submitted += task.await.expect("join");
    }
    assert_eq!(submitted, ids.len());
    let calls = h.sandbox.submit_calls();
    assert_eq!(calls.len(), ids.len());
    assert!(
        calls.values().all(|n| *n == 1),
        "every refund reached the provider exactly once: {calls:?}"
    );
    let workers = sqlx::query("SELECT DISTINCT worker FROM refund_attempts")
        .fetch_all(h.db.pool())
        .await
        .expect("workers");
    assert!(!workers.is_empty());
}

#[tokio::test]
async fn a_starting_worker_takes_over_only_its_own_previous_leases_never_a_live_workers() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h.refund("o-1", 100, pb::ReleaseCondition::Immediate).await;
    // worker-a claimed it and is talking to the provider (its lease runs for an hour).
    sqlx::query(
        "UPDATE refunds SET status = 'SUBMITTED', claimed_by = 'worker-a', lease_until = $1, \
         version = version + 1 WHERE refund_id = $2",
    )
    .bind(wall_now_micros() + 60 * MINUTE_US)
    .bind(&refund.refund_id)
    .execute(h.db.pool())
    .await
    .expect("lease");
    let now = h.context.clock.now();

    // worker-b starting beside it leaves the lease alone, and so does its pass.
    let b = h.worker("worker-b");
    assert_eq!(b.take_over_leases().await.expect("take over"), 0);
    assert_eq!(b.process_due(now).await.expect("pass").claimed, 0);
    assert!(
        h.sandbox.submit_calls().is_empty(),
        "a live lease is never cut short"
    );

    // worker-a crashed and starts again under its name: it gives its lease up at once.
    assert_eq!(h.worker("worker-a").take_over_leases().await.expect("a"), 1);
    assert_eq!(b.process_due(now).await.expect("pass").submitted, 1);
    let calls = h.sandbox.submit_calls();
    assert_eq!(calls.len(), 1);
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
}

#[tokio::test]
async fn the_background_loop_settles_refunds_when_the_clock_moves() {
    // An hour-long poll: only the refund's commit and the clock's move can wake the loop in
    // time, which is what this test is about.
    let mut h = Harness::start_polling_every(Duration::from_secs(3600)).await;
    h.capture(
        "o-w",
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    let refund = h
        .refund("o-w", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    // The commit that created the refund woke the loop, and the clock's move wakes it again;
    // wait for each step, bounded so a broken loop fails the test instead of hanging it.
    wait_for(&mut h, &refund.refund_id, pb::RefundStatus::Submitted).await;
    h.advance_days(1);
    let settled = wait_for(&mut h, &refund.refund_id, pb::RefundStatus::Succeeded).await;
    assert_eq!(settled.attempts, 1);
    assert_eq!(h.sandbox.effects().len(), 1);
}

async fn wait_for(h: &mut Harness, refund_id: &str, wanted: pb::RefundStatus) -> pb::Refund {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = h.get(refund_id).await;
            if status(&now) == wanted {
                return now;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the background loop brought the refund to {wanted:?}"))
}

async fn report(h: &mut Harness, currency: &str) -> pb::SettlementReport {
    let start = h.context.clock.now() - chrono::Duration::days(30);
    let end = h.context.clock.now() + chrono::Duration::days(1);
    h.client
        .get_settlement_report(authorized(
            pb::GetSettlementReportRequest {
                start_time: Some(returns_proto::convert::timestamp_to_proto(start)),
                end_time: Some(returns_proto::convert::timestamp_to_proto(end)),
                currency_code: currency.to_string(),
            },
            &platform(),
        ))
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("a report")
}

#[tokio::test]
async fn the_settlement_report_totals_equal_the_sum_of_the_refunds() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 100_000).await;
    h.capture(
        "o-2",
        "b-2",
        usd(100_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    h.capture(
        "o-3",
        "b-3",
        support::money("EUR", 100_000),
        common::PaymentMethod::Card,
        common::BuyerTier::Standard,
    )
    .await;
    for (order, minor) in [("o-1", 1_000), ("o-1", 2_500), ("o-2", 700), ("o-2", 300)] {
        h.refund(order, minor, pb::ReleaseCondition::Immediate)
            .await;
    }
    let held = h
        .refund("o-1", 4_000, pb::ReleaseCondition::OnReturnDelivered)
        .await;
    let eur = h
        .create(Harness::refund_request(
            "o-3",
            support::money("EUR", 1_234),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect("created");
    h.settle().await;
    h.advance_days(2);
    h.settle().await;
    h.client
        .cancel_refund(authorized(
            pb::CancelRefundRequest {
                request_id: support::request_id(),
                refund_id: held.refund_id.clone(),
                reason: String::new(),
            },
            &platform(),
        ))
        .await
        .expect("cancelled");
    h.client
        .record_chargeback(authorized(
            pb::RecordChargebackRequest {
                request_id: support::request_id(),
                order_id: "o-1".into(),
                amount: Some(usd(100)),
                network_reference: "cb-1".into(),
                reason: String::new(),
                opened_at: None,
            },
            &platform(),
        ))
        .await
        .expect("chargeback");

    // The refunds as the service reports them, per currency and status.
    let mut expected: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    let mut grand: HashMap<String, (i64, i64)> = HashMap::new();
    for order in ["o-1", "o-2", "o-3"] {
        let listed = h
            .client
            .list_refunds(authorized(
                pb::ListRefundsRequest {
                    order_id: order.into(),
                    page_size: 100,
                    ..Default::default()
                },
                &platform(),
            ))
            .await
            .expect("list")
            .into_inner();
        for refund in listed.refunds {
            let net = refund.net_amount.expect("net");
            let entry = expected
                .entry((net.currency_code.clone(), refund.status))
                .or_default();
            entry.0 += 1;
            entry.1 += net.minor_units;
            let entry = grand.entry(net.currency_code).or_default();
            entry.0 += 1;
            entry.1 += net.minor_units;
        }
    }
    let report = report(&mut h, "").await;
    let mut by_status: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    for row in &report.rows {
        let total = row.total.clone().expect("total");
        let entry = by_status
            .entry((row.currency_code.clone(), row.status))
            .or_default();
        entry.0 += row.count;
        entry.1 += total.minor_units;
    }
    by_status.retain(|_, v| *v != (0, 0));
    assert_eq!(by_status, expected);
    let totals: HashMap<String, (i64, i64)> = report
        .totals
        .iter()
        .map(|t| {
            (
                t.currency_code.clone(),
                (t.count, t.total.clone().expect("total").minor_units),
            )
        })
        .collect();
    assert_eq!(totals, grand);
    assert!(report.rows.iter().all(|r| r.day.starts_with("2026-03-")));

    let only_eur = report_rows_currency(&mut h, "EUR").await;
    assert_eq!(only_eur, vec![("EUR".to_string(), 1, 1_234)]);
    assert_eq!(
        status(&h.get(&eur.refund_id).await),
        pb::RefundStatus::Submitted
    );
}

async fn report_rows_currency(h: &mut Harness, currency: &str) -> Vec<(String, i64, i64)> {
    report(h, currency)
        .await
        .totals
        .into_iter()
        .map(|t| {
            (
                t.currency_code,
                t.count,
                t.total.expect("total").minor_units,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_report_needs_a_range_that_ends_after_it_starts() {
    let mut h = Harness::start().await;
    let now = returns_proto::convert::timestamp_to_proto(h.context.clock.now());
    let error = h
        .client
        .get_settlement_report(authorized(
            pb::GetSettlementReportRequest {
                start_time: Some(now),
                end_time: Some(now),
                currency_code: String::new(),
            },
            &platform(),
        ))
        .await
        .expect_err("empty range");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("end_time"));
}

#[tokio::test]
async fn a_cancellation_racing_the_worker_either_wins_or_is_refused_and_nothing_is_paid_twice() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 1_000_000).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            h.refund("o-1", 100, pb::ReleaseCondition::Immediate)
                .await
                .refund_id,
        );
    }
    let worker = h.worker("worker-a");
    let now = h.context.clock.now();
    let settle = tokio::spawn(async move {
        let mut submitted = 0;
        for _ in 0..3 {
            submitted += worker.process_due(now).await.expect("pass").submitted;
        }
        submitted
    });
    let mut cancels = Vec::new();
    for id in &ids {
        let mut client = h.client.clone();
        let id = id.clone();
        cancels.push(tokio::spawn(async move {
            client
                .cancel_refund(authorized(
                    pb::CancelRefundRequest {
                        request_id: support::request_id(),
                        refund_id: id,
                        reason: String::new(),
                    },
                    &platform(),
                ))
                .await
        }));
    }
    let mut cancelled = 0;
    for cancel in cancels {
        match cancel.await.expect("join") {
            Ok(_) => cancelled += 1,
            Err(error) => {
                assert_eq!(error.code(), tonic::Code::FailedPrecondition);
                assert!(error.message().contains("SUBMITTED"), "{}", error.message());
            }
        }
    }
    let submitted = settle.await.expect("join");
    assert_eq!(cancelled + submitted, ids.len());
    let calls = h.sandbox.submit_calls();
    for id in &ids {
        let refund = h.get(id).await;
        let paid = calls.get(&format!("refund-{id}")).copied().unwrap_or(0);
        match status(&refund) {
            pb::RefundStatus::Cancelled => assert_eq!(paid, 0, "a cancelled refund was paid"),
            pb::RefundStatus::Submitted => assert_eq!(paid, 1),
            other => panic!("unexpected status {other:?}"),
        }
    }
}

/// Fails the first `failures` submissions transiently, then pays through the sandbox.
#[derive(Debug)]
struct Flaky {
    sandbox: returns_refunds::provider::Sandbox,
    failures: std::sync::Mutex<u32>,
}

#[tonic::async_trait]
impl PaymentProvider for Flaky {
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError> {
        {
            let mut failures = self.failures.lock().expect("counter");
            if *failures > 0 {
                *failures -= 1;
                return Err(ProviderError::Transient("flaky: 503".into()));
            }
        }
        self.sandbox.submit(request).await
    }

    async fn status(&self, reference: &str) -> Result<ProviderStatus, ProviderError> {
        self.sandbox.status(reference).await
    }
}

/// A provider whose money arrives at once: isolates when the worker asks from how long the
/// provider takes (the sandbox counts its delay from the submission).
#[derive(Debug, Default)]
struct Instant;

#[tonic::async_trait]
impl PaymentProvider for Instant {
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError> {
        Ok(format!("inst_{}", request.refund_id))
    }

    async fn status(&self, _reference: &str) -> Result<ProviderStatus, ProviderError> {
        Ok(ProviderStatus::Succeeded)
    }
}

fn worker_with(h: &Harness, provider: Arc<dyn PaymentProvider>) -> Settlement {
    Settlement::new(
        h.db.clone(),
        provider,
        h.options.settlement.clone(),
        h.context.clock.clone(),
    )
}

async fn wallet_order(h: &mut Harness, order_id: &str) {
    h.capture(
        order_id,
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
}

#[tokio::test]
async fn a_transient_failure_retries_after_wall_clock_backoff_while_the_business_clock_stands_still()
 {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h
        .refund("o-1", 1_000, pb::ReleaseCondition::Immediate)
        .await;
    let worker = worker_with(
        &h,
        Arc::new(Flaky {
            sandbox: h.sandbox.clone(),
            failures: std::sync::Mutex::new(1),
        }),
    );
    let now = h.context.clock.now();
    let wall = wall_now_micros();
    let first = worker.process_due_at(now, wall).await.expect("pass");
    assert_eq!((first.claimed, first.retrying), (1, 1));
    // The first backoff is 30 s of wall time.
    assert_eq!(
        worker.next_retry_at(now, wall).await.expect("next retry"),
        Some(Duration::from_secs(30))
    );
    let early = worker
        .process_due_at(now, wall + 29_000_000)
        .await
        .expect("pass");
    assert_eq!(early.claimed, 0, "still backing off");
    // Business days passing do not end a provider's outage.
    let much_later = now + chrono::Duration::days(30);
    let jumped = worker
        .process_due_at(much_later, wall + 29_000_000)
        .await
        .expect("pass");
    assert_eq!(
        jumped.claimed, 0,
        "the backoff is wall time, not business time"
    );
    // Once the wall clock is past the backoff the retry goes out, business clock unmoved.
    let retry = worker
        .process_due_at(now, wall + 30_000_000)
        .await
        .expect("pass");
    assert_eq!((retry.claimed, retry.submitted), (1, 1));
    assert_eq!(h.context.clock.now(), now);
    let submitted = h.get(&refund.refund_id).await;
    assert_eq!(status(&submitted), pb::RefundStatus::Submitted);
    assert_eq!(submitted.attempts, 2);
    assert!(!submitted.provider_reference.is_empty());
    assert_eq!(h.sandbox.effects().len(), 1);
}

#[tokio::test]
async fn next_due_is_the_release_then_the_expected_arrival() {
    let mut h = Harness::start().await;
    wallet_order(&mut h, "o-w").await;
    let worker = h.worker("worker-a");
    assert_eq!(worker.next_due().await.expect("next due"), None);
    let released_at = h.context.clock.now();
    let refund = h
        .refund("o-w", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    // Due at its release: now, so nothing is due later yet; seen from before, the release.
    assert_eq!(worker.next_due().await.expect("next due"), None);
    let before = released_at - chrono::Duration::seconds(1);
    assert_eq!(
        worker.next_due_after(before).await.expect("next due"),
        Some(released_at)
    );
    assert_eq!(worker.run_once(released_at).await.expect("pass"), 1);
    // Submitted: the status check is due when the money can have arrived.
    let expected = refund
        .expected_earliest
        .expect("a released refund has a window");
    let expected = returns_proto::convert::timestamp_from_proto(&expected).expect("instant");
    assert_eq!(worker.next_due().await.expect("next due"), Some(expected));
    assert_eq!(worker.next_retry().await.expect("next retry"), None);
}

#[tokio::test]
async fn a_wallet_refund_past_its_expected_arrival_is_submitted_then_checked_in_the_next_pass() {
    let mut h = Harness::start().await;
    wallet_order(&mut h, "o-w").await;
    let refund = h
        .refund("o-w", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    h.advance_days(2);
    let now = h.context.clock.now();
    let worker = worker_with(&h, Arc::new(Instant));
    // Submit, then (the expected arrival already past) check at once, then nothing left.
    assert_eq!(worker.run_once(now).await.expect("submit"), 1);
    assert_eq!(worker.run_once(now).await.expect("check"), 1);
    assert_eq!(worker.run_once(now).await.expect("idle"), 0);
    let done = h.get(&refund.refund_id).await;
    assert_eq!(status(&done), pb::RefundStatus::Succeeded);
    assert_eq!(worker.next_due().await.expect("next due"), None);
}

#[tokio::test]
async fn money_still_in_flight_counts_as_no_progress_and_is_polled_again_in_business_time() {
    let mut h = Harness::start().await;
    wallet_order(&mut h, "o-w").await;
    let refund = h
        .refund("o-w", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    // Submitted a day late: the sandbox pays a business day after the submission, so the
    // check due at once finds the money still on its way.
    h.advance_days(1);
    let now = h.context.clock.now();
    let worker = h.worker("worker-a");
    assert_eq!(worker.run_once(now).await.expect("submit"), 1);
    assert_eq!(
        worker.run_once(now).await.expect("check"),
        0,
        "a check that moved nothing must not keep a quiescence loop going"
    );
    let poll = chrono::Duration::from_std(h.options.settlement.status_poll).expect("poll");
    assert_eq!(worker.next_due().await.expect("next due"), Some(now + poll));
    h.advance_days(1);
    assert_eq!(
        worker.run_once(h.context.clock.now()).await.expect("check"),
        1
    );
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::Succeeded
    );
}
