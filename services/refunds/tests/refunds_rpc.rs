//! Captures, refund creation, reads, listing, cancellation and timelines over gRPC, on the
//! backend the environment selects (SQLite by default, PostgreSQL in CI's second run).

mod support;

use chrono::{TimeZone, Utc};
use returns_domain::dispute::Role;
use returns_platform::testing::{authorized, token};
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use support::{Harness, money, platform, request_id, status, usd};
use tonic::Code;

fn at(y: i32, m: u32, d: u32) -> prost_types::Timestamp {
    let t = Utc
        .with_ymd_and_hms(y, m, d, 9, 0, 0)
        .single()
        .expect("a valid instant");
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

#[tokio::test]
async fn a_capture_is_recorded_once_and_a_replay_returns_the_first_answer() {
    let mut h = Harness::start().await;
    let request = pb::RecordCaptureRequest {
        request_id: request_id(),
        order_id: "o-1".into(),
        buyer_id: "b-1".into(),
        amount: Some(usd(10_000)),
        payment_method: common::PaymentMethod::Card as i32,
        buyer_tier: common::BuyerTier::Gold as i32,
        captured_at: None,
        payment_reference: "ch_1".into(),
    };
    let first = h
        .client
        .record_capture(authorized(request.clone(), &platform()))
        .await
        .expect("recorded")
        .into_inner();
    let capture = first.capture.clone().expect("capture");
    assert_eq!(capture.refundable, Some(usd(10_000)));
    let replay = h
        .client
        .record_capture(authorized(request.clone(), &platform()))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(replay, first);

    let mut changed = request.clone();
    changed.amount = Some(usd(9_000));
    let reused = h
        .client
        .record_capture(authorized(changed.clone(), &platform()))
        .await
        .expect_err("same key, other body");
    assert_eq!(reused.code(), Code::AlreadyExists);

    changed.request_id = request_id();
    let twice = h
        .client
        .record_capture(authorized(changed, &platform()))
        .await
        .expect_err("one capture per order");
    assert_eq!(twice.code(), Code::AlreadyExists);
    assert!(twice.message().contains("o-1"), "{}", twice.message());
}

#[tokio::test]
async fn bad_capture_input_names_the_field_and_other_roles_are_refused() {
    let mut h = Harness::start().await;
    let mut request = pb::RecordCaptureRequest {
        request_id: request_id(),
        order_id: "o-1".into(),
        buyer_id: "b-1".into(),
        amount: Some(money("usd", 100)),
        payment_method: common::PaymentMethod::Card as i32,
        buyer_tier: common::BuyerTier::Gold as i32,
        captured_at: None,
        payment_reference: String::new(),
    };
    let error = h
        .client
        .record_capture(authorized(request.clone(), &platform()))
        .await
        .expect_err("lowercase currency");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("amount.currency_code"));

    request.amount = Some(usd(100));
    request.payment_method = common::PaymentMethod::Unspecified as i32;
    let error = h
        .client
        .record_capture(authorized(request.clone(), &platform()))
        .await
        .expect_err("unspecified method");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("payment_method"));

    request.payment_method = common::PaymentMethod::Card as i32;
    let error = h
        .client
        .record_capture(authorized(request, &token(Role::Buyer, "b-1")))
        .await
        .expect_err("buyers do not record captures");
    assert_eq!(error.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_immediate_card_refund_is_pending_with_the_card_timeline() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h
        .refund("o-1", 4_000, pb::ReleaseCondition::Immediate)
        .await;
    assert_eq!(status(&refund), pb::RefundStatus::Pending);
    assert_eq!(refund.buyer_id, "b-1");
    assert_eq!(refund.net_amount, Some(usd(4_000)));
    assert_eq!(refund.payment_method, common::PaymentMethod::Card as i32);
    // Released Monday 2026-03-02 09:00: 5 business days = Monday 9th, 15 = Monday 23rd.
    assert_eq!(refund.expected_earliest, Some(at(2026, 3, 9)));
    assert_eq!(refund.expected_latest, Some(at(2026, 3, 23)));
    assert!(!refund.fast_refund);
    assert_eq!(h.get(&refund.refund_id).await, refund);
}

#[tokio::test]
async fn wallet_refunds_arrive_within_three_business_days_and_cancellations_take_3_to_20() {
    let mut h = Harness::start().await;
    h.capture(
        "o-w",
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    let wallet = h
        .refund("o-w", 1_000, pb::ReleaseCondition::Immediate)
        .await;
    assert_eq!(wallet.expected_earliest, Some(at(2026, 3, 3)));
    assert_eq!(wallet.expected_latest, Some(at(2026, 3, 5)));

    h.card_order("o-c", "b-1", 5_000).await;
    let mut request = Harness::refund_request("o-c", usd(5_000), pb::ReleaseCondition::Immediate);
    request.reason = pb::RefundReason::OrderCancelled as i32;
    let cancelled = h.create(request).await.expect("created");
    // 3 business days = Thursday 5th, 20 = Monday 30th.
    assert_eq!(cancelled.expected_earliest, Some(at(2026, 3, 5)));
    assert_eq!(cancelled.expected_latest, Some(at(2026, 3, 30)));
}

#[tokio::test]
async fn deductions_reduce_the_net_amount_but_never_below_zero() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let mut request = Harness::refund_request("o-1", usd(3_000), pb::ReleaseCondition::Immediate);
    request.deductions = vec![pb::Deduction {
        kind: pb::DeductionKind::ReturnPostage as i32,
        amount: Some(usd(750)),
        note: "label l-1".into(),
    }];
    let refund = h.create(request.clone()).await.expect("created");
    assert_eq!(refund.amount, Some(usd(3_000)));
    assert_eq!(refund.net_amount, Some(usd(2_250)));
    assert_eq!(refund.deductions.len(), 1);

    request.request_id = request_id();
    request.amount = Some(usd(500));
    let refund = h.create(request.clone()).await.expect("created");
    assert_eq!(refund.net_amount, Some(usd(0)));

    request.request_id = request_id();
    request.deductions[0].amount = Some(money("EUR", 10));
    let error = h.create(request).await.expect_err("currency");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("deductions[0].amount"));
}

#[tokio::test]
async fn refunds_need_a_capture_in_the_same_currency_and_a_release_condition() {
    let mut h = Harness::start().await;
    let error = h
        .create(Harness::refund_request(
            "o-none",
            usd(100),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("no capture");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &error,
        "CAPTURE_REQUIRED"
    ));

    h.card_order("o-1", "b-1", 10_000).await;
    let error = h
        .create(Harness::refund_request(
            "o-1",
            money("EUR", 100),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("currency");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&error, "REFUND_CURRENCY"),
        "{}",
        error.message()
    );

    let error = h
        .create(Harness::refund_request(
            "o-1",
            usd(100),
            pb::ReleaseCondition::Unspecified,
        ))
        .await
        .expect_err("release");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("release"));

    let mut request = Harness::refund_request("o-1", usd(100), pb::ReleaseCondition::Immediate);
    request.request_id = String::new();
    let error = h.create(request).await.expect_err("request id");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("request_id"));
}

#[tokio::test]
async fn a_refund_over_the_capture_is_refused_naming_the_amounts() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    h.refund("o-1", 6_000, pb::ReleaseCondition::Immediate)
        .await;
    let error = h
        .create(Harness::refund_request(
            "o-1",
            usd(4_001),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("one cent over");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&error, "OVER_REFUND"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("refundable USD 40.00"),
        "{}",
        error.message()
    );
    let last = h
        .refund("o-1", 4_000, pb::ReleaseCondition::Immediate)
        .await;
    assert_eq!(status(&last), pb::RefundStatus::Pending);
}

#[tokio::test]
async fn concurrent_refund_requests_on_one_order_never_exceed_the_capture() {
    let h = Harness::start().await;
    let mut setup = h.client.clone();
    setup
        .record_capture(authorized(
            pb::RecordCaptureRequest {
                request_id: request_id(),
                order_id: "o-race".into(),
                buyer_id: "b-1".into(),
                amount: Some(usd(10_000)),
                payment_method: common::PaymentMethod::Card as i32,
                buyer_tier: common::BuyerTier::Standard as i32,
                captured_at: None,
                payment_reference: String::new(),
            },
            &platform(),
        ))
        .await
        .expect("capture");
    // 30 requests of USD 10 against a USD 100 capture, all at once.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut client = h.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .create_refund(authorized(
                    Harness::refund_request("o-race", usd(1_000), pb::ReleaseCondition::Immediate),
                    &platform(),
                ))
                .await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(returns_platform::testing::has_reason(
                    &status,
                    "OVER_REFUND"
                ));
            }
        }
    }
    assert_eq!(accepted, 10);
    let listed = setup
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                page_size: 100,
                order_id: "o-race".into(),
                ..Default::default()
            },
            &platform(),
        ))
        .await
        .expect("list")
        .into_inner();
    let total: i64 = listed
        .refunds
        .iter()
        .map(|r| r.amount.as_ref().map_or(0, |m| m.minor_units))
        .sum();
    assert_eq!(total, 10_000);
}

#[tokio::test]
async fn create_refund_replays_by_request_id_and_dedupes_relayed_messages() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let request = Harness::refund_request("o-1", usd(2_000), pb::ReleaseCondition::Immediate);
    let first = h.create(request.clone()).await.expect("created");
    let again = h.create(request.clone()).await.expect("replayed");
    assert_eq!(first, again);
    let mut other = request.clone();
    other.amount = Some(usd(2_500));
    let error = h.create(other).await.expect_err("same key, other body");
    assert_eq!(error.code(), Code::AlreadyExists);

    // A relayed message delivered twice under different request ids still makes one refund.
    let message_id = uuid::Uuid::now_v7().to_string();
    let mut relayed = Harness::refund_request("o-1", usd(3_000), pb::ReleaseCondition::Immediate);
    relayed.message_id = message_id.clone();
    relayed.request_id = message_id.clone();
    let delivered = h.create(relayed.clone()).await.expect("delivered");
    relayed.request_id = request_id();
    let redelivered = h.create(relayed).await.expect("redelivered");
    assert_eq!(delivered.refund_id, redelivered.refund_id);
    let listed = h
        .client
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                order_id: "o-1".into(),
                ..Default::default()
            },
            &platform(),
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.refunds.len(), 2);
}

#[tokio::test]
async fn buyers_see_only_their_own_refunds_and_lists_page_newest_first() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 100_000).await;
    h.card_order("o-2", "b-2", 100_000).await;
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(
            h.refund("o-1", 100, pb::ReleaseCondition::Immediate)
                .await
                .refund_id,
        );
    }
    let theirs = h.refund("o-2", 100, pb::ReleaseCondition::Immediate).await;

    let buyer = token(Role::Buyer, "b-1");
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = h
            .client
            .list_refunds(authorized(
                pb::ListRefundsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &buyer,
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(page.refunds.len() <= 2);
        seen.extend(page.refunds.into_iter().map(|r| r.refund_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    mine.reverse();
    assert_eq!(
        seen, mine,
        "all of b-1's refunds, newest first, no one else's"
    );

    let error = h
        .client
        .get_refund(authorized(
            pb::GetRefundRequest {
                refund_id: theirs.refund_id.clone(),
            },
            &buyer,
        ))
        .await
        .expect_err("another buyer's refund");
    assert_eq!(error.code(), Code::NotFound);
    let error = h
        .client
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                buyer_id: "b-2".into(),
                ..Default::default()
            },
            &buyer,
        ))
        .await
        .expect_err("listing another buyer");
    assert_eq!(error.code(), Code::PermissionDenied);

    let by_order = h
        .client
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                order_id: "o-2".into(),
                ..Default::default()
            },
            &token(Role::Arbiter, "arb-1"),
        ))
        .await
        .expect("arbiters list by order")
        .into_inner();
    assert_eq!(by_order.refunds.len(), 1);
    assert_eq!(by_order.refunds[0].refund_id, theirs.refund_id);
}

#[tokio::test]
async fn a_refund_can_be_cancelled_before_submission_but_not_after() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let held = h
        .refund("o-1", 3_000, pb::ReleaseCondition::OnReturnDelivered)
        .await;
    assert_eq!(status(&held), pb::RefundStatus::OnHold);
    let cancel = |refund_id: &str| pb::CancelRefundRequest {
        request_id: request_id(),
        refund_id: refund_id.to_string(),
        reason: "buyer kept the item".into(),
    };
    let request = cancel(&held.refund_id);
    let cancelled = h
        .client
        .cancel_refund(authorized(request.clone(), &token(Role::Arbiter, "arb-1")))
        .await
        .expect("cancelled")
        .into_inner()
        .refund
        .expect("refund");
    assert_eq!(status(&cancelled), pb::RefundStatus::Cancelled);
    assert_eq!(cancelled.status_reason, "buyer kept the item");
    let replay = h
        .client
        .cancel_refund(authorized(request, &token(Role::Arbiter, "arb-1")))
        .await
        .expect("replayed")
        .into_inner()
        .refund
        .expect("refund");
    assert_eq!(replay, cancelled);

    let pending = h
        .refund("o-1", 3_000, pb::ReleaseCondition::Immediate)
        .await;
    let summary = h.settle().await;
    assert_eq!(summary.submitted, 1);
    let error = h
        .client
        .cancel_refund(authorized(cancel(&pending.refund_id), &platform()))
        .await
        .expect_err("already with the provider");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("SUBMITTED"), "{}", error.message());

    let error = h
        .client
        .cancel_refund(authorized(
            cancel(&pending.refund_id),
            &token(Role::Buyer, "b-1"),
        ))
        .await
        .expect_err("buyers cannot cancel");
    assert_eq!(error.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn unknown_or_malformed_ids_and_bad_pages_are_reported_precisely() {
    let mut h = Harness::start().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let error = h
        .client
        .get_refund(authorized(
            pb::GetRefundRequest {
                refund_id: missing.clone(),
            },
            &platform(),
        ))
        .await
        .expect_err("no such refund");
    assert_eq!(error.code(), Code::NotFound);
    let error = h
        .client
        .get_refund(authorized(
            pb::GetRefundRequest {
                refund_id: "not-a-uuid".into(),
            },
            &platform(),
        ))
        .await
        .expect_err("malformed");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("refund_id"));
    let error = h
        .client
        .cancel_refund(authorized(
            pb::CancelRefundRequest {
                request_id: request_id(),
                refund_id: missing,
                reason: String::new(),
            },
            &platform(),
        ))
        .await
        .expect_err("no such refund");
    assert_eq!(error.code(), Code::NotFound);
    // The suite's one paging policy: a negative size or a token that is not ours is refused,
    // a size above the maximum (200) is served at the maximum.
    let clamped = h
        .client
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                page_size: 201,
                ..Default::default()
            },
            &platform(),
        ))
        .await
        .expect("an oversized page is clamped, not refused");
    assert!(clamped.into_inner().next_page_token.is_empty());
    for (page_size, page_token) in [(-1, ""), (10, "garbage")] {
        let error = h
            .client
            .list_refunds(authorized(
                pb::ListRefundsRequest {
                    page_size,
                    page_token: page_token.into(),
                    ..Default::default()
                },
                &platform(),
            ))
            .await
            .expect_err("bad paging");
        assert_eq!(error.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn return_progress_is_for_the_platform_and_needs_an_order_and_a_progress() {
    let mut h = Harness::start().await;
    let request = pb::RecordReturnProgressRequest {
        request_id: request_id(),
        message_id: String::new(),
        order_id: "o-1".into(),
        return_label_id: "l-1".into(),
        dispute_id: String::new(),
        progress: pb::ReturnProgress::Unspecified as i32,
        occurred_at: None,
        notes: String::new(),
        deductions: Vec::new(),
    };
    let error = h
        .client
        .record_return_progress(authorized(request.clone(), &platform()))
        .await
        .expect_err("no progress");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("progress"));
    let mut no_order = request.clone();
    no_order.progress = pb::ReturnProgress::Delivered as i32;
    no_order.order_id = String::new();
    let error = h
        .client
        .record_return_progress(authorized(no_order, &platform()))
        .await
        .expect_err("no order");
    assert!(error.message().contains("order_id"));
    let mut valid = request;
    valid.progress = pb::ReturnProgress::Delivered as i32;
    let error = h
        .client
        .record_return_progress(authorized(
            valid,
            &returns_platform::testing::carrier_token("UPS"),
        ))
        .await
        .expect_err("carriers report to labels, not here");
    assert_eq!(error.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn configured_holidays_push_the_expected_dates_back() {
    // Wednesday 4th and Thursday 5th March are holidays.
    let calendar = returns_refunds::parse_holidays("2026-03-04, 2026-03-05").expect("dates");
    let mut h = Harness::start_on_calendar(Default::default(), false, calendar).await;
    h.capture(
        "o-w",
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    let wallet = h
        .refund("o-w", 1_000, pb::ReleaseCondition::Immediate)
        .await;
    // From Monday 2nd: Tuesday 3rd, then Friday 6th and Monday 9th (skipping the holidays).
    assert_eq!(wallet.expected_earliest, Some(at(2026, 3, 3)));
    assert_eq!(wallet.expected_latest, Some(at(2026, 3, 9)));
    h.card_order("o-c", "b-1", 5_000).await;
    let card = h
        .refund("o-c", 1_000, pb::ReleaseCondition::Immediate)
        .await;
    // Five business days: 3rd, 6th, 9th, 10th, 11th.
    assert_eq!(card.expected_earliest, Some(at(2026, 3, 11)));
}

#[test]
fn holidays_that_are_not_dates_are_refused_naming_the_setting() {
    let error = returns_refunds::parse_holidays("2026-12-25,Christmas").expect_err("refused");
    assert_eq!(error.variable, "RETURNS_HOLIDAYS");
    assert!(error.to_string().contains("Christmas"));
}
