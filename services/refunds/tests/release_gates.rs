//! Return-gated release: each gate opens on its own return event, fast refunds open at the
//! carrier's acceptance scan within the tier limits, and a failed inspection cancels what
//! still waits (return_outcomes.rs covers failed and unshipped returns in depth).

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::ReleaseCondition as Gate;
use returns_proto::refunds::v1::ReturnProgress as Progress;
use support::{Harness, money, platform, request_id, status, usd};

async fn tiered_order(
    h: &mut Harness,
    order: &str,
    tier: common::BuyerTier,
    amount: common::Money,
) {
    h.capture(order, "b-1", amount, common::PaymentMethod::Card, tier)
        .await;
}

async fn gated(h: &mut Harness, order: &str, label: &str, minor: i64, gate: Gate) -> pb::Refund {
    let mut request = Harness::refund_request(order, usd(minor), gate);
    request.return_label_id = label.to_string();
    h.create(request).await.expect("created")
}

#[tokio::test]
async fn each_gate_releases_on_its_own_return_event_and_not_before() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-1", common::BuyerTier::Standard, usd(100_000)).await;
    let accepted = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnReturnAcceptedByCarrier).await;
    let delivered = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnReturnDelivered).await;
    let inspected = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnInspectionPassed).await;
    for refund in [&accepted, &delivered, &inspected] {
        assert_eq!(status(refund), pb::RefundStatus::OnHold);
        assert!(refund.expected_earliest.is_none());
        assert!(refund.status_reason.starts_with("waiting for"));
    }

    let steps = [
        (Progress::AcceptedByCarrier, [true, false, false]),
        (Progress::Delivered, [true, true, false]),
        (Progress::InspectionPassed, [true, true, true]),
    ];
    for (progress, released) in steps {
        let after = h.progress("o-1", "l-1", progress).await;
        assert_eq!(after.len(), 3);
        for (refund, should) in [&accepted, &delivered, &inspected].iter().zip(released) {
            let now = h.get(&refund.refund_id).await;
            let expected = if should {
                pb::RefundStatus::Pending
            } else {
                pb::RefundStatus::OnHold
            };
            assert_eq!(
                status(&now),
                expected,
                "{:?} after {progress:?}",
                refund.release
            );
            assert_eq!(now.expected_earliest.is_some(), should);
            assert!(!now.fast_refund);
        }
    }
}

#[tokio::test]
async fn progress_for_another_label_leaves_a_refund_on_hold() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-1", common::BuyerTier::Standard, usd(10_000)).await;
    let refund = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnReturnDelivered).await;
    h.progress("o-1", "l-2", Progress::Delivered).await;
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::OnHold
    );
    // A refund naming no label matches any return of its order.
    let unlabelled = gated(&mut h, "o-1", "", 1_000, Gate::OnReturnDelivered).await;
    assert_eq!(status(&unlabelled), pb::RefundStatus::Pending);
}

#[tokio::test]
async fn a_refund_requested_after_the_return_event_is_released_at_once() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-1", common::BuyerTier::Standard, usd(10_000)).await;
    h.progress("o-1", "l-1", Progress::Delivered).await;
    let refund = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnReturnDelivered).await;
    assert_eq!(status(&refund), pb::RefundStatus::Pending);
    let later = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnInspectionPassed).await;
    assert_eq!(status(&later), pb::RefundStatus::OnHold);
}

#[tokio::test]
async fn a_failed_inspection_cancels_the_held_refund_with_the_reason() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-1", common::BuyerTier::Standard, usd(10_000)).await;
    let refund = gated(&mut h, "o-1", "l-1", 5_000, Gate::OnInspectionPassed).await;
    h.progress("o-1", "l-1", Progress::Delivered).await;
    let after = h.progress("o-1", "l-1", Progress::InspectionFailed).await;
    assert_eq!(after.len(), 1);
    assert_eq!(status(&after[0]), pb::RefundStatus::Cancelled);
    assert!(
        after[0].status_reason.contains("failed inspection"),
        "{}",
        after[0].status_reason
    );
    assert_eq!(after[0].refund_id, refund.refund_id);
}

#[tokio::test]
async fn platinum_buyers_get_fast_refunds_up_to_25_usd_at_the_acceptance_scan() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-p", common::BuyerTier::Platinum, usd(10_000)).await;
    let at_limit = gated(&mut h, "o-p", "l-p", 2_500, Gate::OnInspectionPassed).await;
    let over = gated(&mut h, "o-p", "l-p", 2_501, Gate::OnInspectionPassed).await;
    let released = h.progress("o-p", "l-p", Progress::AcceptedByCarrier).await;
    let find = |id: &str| {
        released
            .iter()
            .find(|r| r.refund_id == id)
            .cloned()
            .expect("listed")
    };
    let fast = find(&at_limit.refund_id);
    assert_eq!(status(&fast), pb::RefundStatus::Pending);
    assert!(fast.fast_refund);
    assert!(fast.expected_earliest.is_some());
    let slow = find(&over.refund_id);
    assert_eq!(status(&slow), pb::RefundStatus::OnHold);
    assert!(!slow.fast_refund);
}

#[tokio::test]
async fn diamond_buyers_get_fast_refunds_up_to_100_usd_through_the_fx_table() {
    let mut h = Harness::start().await;
    tiered_order(
        &mut h,
        "o-d",
        common::BuyerTier::Diamond,
        money("EUR", 50_000),
    )
    .await;
    // EUR at 1.08 USD: EUR 92.59 = USD 99.998 (inside), EUR 92.60 = USD 100.008 (over).
    let mut inside = Harness::refund_request("o-d", money("EUR", 9_259), Gate::OnReturnDelivered);
    inside.return_label_id = "l-d".into();
    let inside = h.create(inside).await.expect("created");
    let mut over = Harness::refund_request("o-d", money("EUR", 9_260), Gate::OnReturnDelivered);
    over.return_label_id = "l-d".into();
    let over = h.create(over).await.expect("created");
    h.progress("o-d", "l-d", Progress::AcceptedByCarrier).await;
    let inside = h.get(&inside.refund_id).await;
    assert_eq!(status(&inside), pb::RefundStatus::Pending);
    assert!(inside.fast_refund);
    assert_eq!(
        status(&h.get(&over.refund_id).await),
        pb::RefundStatus::OnHold
    );
}

#[tokio::test]
async fn gold_buyers_wait_for_the_gate_whatever_the_amount() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-g", common::BuyerTier::Gold, usd(10_000)).await;
    let refund = gated(&mut h, "o-g", "l-g", 100, Gate::OnInspectionPassed).await;
    h.progress("o-g", "l-g", Progress::AcceptedByCarrier).await;
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::OnHold
    );
}

#[tokio::test]
async fn a_redelivered_progress_message_changes_nothing_and_answers_the_current_state() {
    let mut h = Harness::start().await;
    tiered_order(&mut h, "o-1", common::BuyerTier::Standard, usd(10_000)).await;
    let refund = gated(&mut h, "o-1", "l-1", 1_000, Gate::OnReturnAcceptedByCarrier).await;
    let message_id = uuid::Uuid::now_v7().to_string();
    let request = pb::RecordReturnProgressRequest {
        request_id: message_id.clone(),
        message_id: message_id.clone(),
        order_id: "o-1".into(),
        return_label_id: "l-1".into(),
        dispute_id: String::new(),
        progress: Progress::AcceptedByCarrier as i32,
        occurred_at: None,
        notes: String::new(),
        deductions: Vec::new(),
    };
    let first = h
        .client
        .record_return_progress(authorized(request.clone(), &platform()))
        .await
        .expect("delivered")
        .into_inner();
    assert_eq!(status(&first.refunds[0]), pb::RefundStatus::Pending);
    let mut again = request;
    again.request_id = request_id();
    let second = h
        .client
        .record_return_progress(authorized(again, &platform()))
        .await
        .expect("redelivered")
        .into_inner();
    assert_eq!(second.refunds[0].refund_id, refund.refund_id);
    assert_eq!(second.refunds[0].updated_at, first.refunds[0].updated_at);
}
