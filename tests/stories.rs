//! The seven stories end to end: all three services as real gRPC servers on one test clock,
//! on SQLite (and on PostgreSQL when CI sets RETURNS_TEST_POSTGRES_URL), each story asserting
//! final states, amounts and dates.

#[path = "support/story_checks.rs"]
mod story_checks;
mod support;

use returns::stories::Stage;
use returns_domain::returns::S10;
use returns_proto::common::v1::PostagePayer;
use returns_proto::disputes::v1::{DisputeState, OutcomeSource, RulingOutcome};
use returns_proto::refunds::v1::{DeductionKind, RefundReason, RefundStatus};
use story_checks::{assert_succeeded_in_window, only_refund, timeline};
use support::RunningSuite;

async fn stage(suite: &RunningSuite) -> Stage {
    Stage::connect(suite.addresses, suite.context.issuer.clone())
        .await
        .expect("connect to the suite")
}

#[tokio::test]
async fn story_1_package_never_arrives_seller_silent_wallet_refund_within_3_business_days() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .package_never_arrives()
        .await
        .expect("story 1");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    let decided = outcome.dispute.outcome.as_ref().expect("an outcome");
    assert_eq!(decided.source, OutcomeSource::SellerSilent as i32);
    assert_eq!(decided.r#type, RulingOutcome::RefundFull as i32);
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(2490));
    assert_eq!(
        timeline(refund).1,
        3,
        "wallet refunds land within 3 business days"
    );
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn story_2_damaged_item_partial_card_refund_on_the_5_to_15_business_day_timeline() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .damaged_item_partial_refund()
        .await
        .expect("story 2");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    let decided = outcome.dispute.outcome.as_ref().expect("an outcome");
    assert_eq!(decided.r#type, RulingOutcome::RefundPartial as i32);
    assert_eq!(decided.amount.as_ref().map(|m| m.minor_units), Some(2400));
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(2400));
    assert_eq!(timeline(refund), (5, 15));
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn story_3_contested_order_return_required_royal_mail_label_then_refund_after_inspection() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .contested_order_return_required()
        .await
        .expect("story 3");
    let recommendation = outcome.recommendation.as_ref().expect("a recommendation");
    assert!(recommendation.return_required, "{recommendation:?}");
    let label = outcome.label.as_ref().expect("a label");
    assert_eq!(label.provider_code, "ROYAL_MAIL");
    assert_eq!(label.paid_by, PostagePayer::Seller as i32);
    let tracking = S10::parse(&label.tracking_number).expect("a UPU S10 number");
    assert!(label.tracking_number.ends_with("GB"), "{tracking:?}");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(8000));
    assert!(!refund.fast_refund);
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn story_4_fourth_return_this_month_is_buyer_paid_and_the_postage_is_deducted() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .fourth_return_this_month_is_buyer_paid()
        .await
        .expect("story 4");
    let label = outcome.label.as_ref().expect("a label");
    assert_eq!(label.provider_code, "SAGAWA");
    assert!(!label.free_return);
    assert_eq!(label.paid_by, PostagePayer::Buyer as i32);
    let postage = label.postage.clone().expect("postage");
    assert_eq!(postage.currency_code, "JPY");
    let refund = only_refund(&outcome);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(8000));
    assert_eq!(
        refund.net_amount.as_ref().map(|m| m.minor_units),
        Some(8000 - postage.minor_units)
    );
    assert!(
        refund
            .deductions
            .iter()
            .any(|d| d.kind == DeductionKind::ReturnPostage as i32
                && d.amount.as_ref() == Some(&postage)),
        "{:?}",
        refund.deductions
    );
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn story_5_platinum_buyer_is_refunded_at_the_acceptance_scan_before_delivery() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .platinum_fast_refund_at_acceptance()
        .await
        .expect("story 5");
    assert_eq!(outcome.released_before_delivery, Some(true));
    let label = outcome.label.as_ref().expect("a label");
    assert_eq!(label.provider_code, "INPOST");
    let refund = only_refund(&outcome);
    assert!(refund.fast_refund);
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn story_6_a_chargeback_while_the_refund_is_on_hold_pays_the_buyer_once() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .chargeback_while_refund_on_hold()
        .await
        .expect("story 6");
    let paid_by_refunds: i64 = outcome
        .refunds
        .iter()
        .filter(|r| r.status == RefundStatus::Succeeded as i32)
        .filter_map(|r| r.net_amount.as_ref().map(|m| m.minor_units))
        .sum();
    assert_eq!(paid_by_refunds, 0, "the chargeback already paid the buyer");
    assert!(
        outcome
            .refunds
            .iter()
            .all(|r| r.status == RefundStatus::Cancelled as i32),
        "{:?}",
        outcome.refunds
    );
}

#[tokio::test]
async fn story_7_refunds_down_while_disputes_resolve_every_refund_appears_exactly_once() {
    let suite = RunningSuite::start().await;
    let peers = suite.context.peers.clone();
    let real = peers.get("refunds").expect("refunds address");
    // An address nobody listens on: bound, then released.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let outage = move |down: bool| {
        peers.set("refunds", if down { dead.clone() } else { real.clone() });
    };
    let outcomes = stage(&suite)
        .await
        .refunds_down_while_disputes_resolve(&outage)
        .await
        .expect("story 7");
    assert_eq!(outcomes.len(), 3);
    for (n, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
        let refund = only_refund(outcome);
        let expected = 1500 + 100 * i64::try_from(n).expect("small");
        assert_eq!(
            refund.amount.as_ref().map(|m| m.minor_units),
            Some(expected)
        );
        assert_succeeded_in_window(refund);
    }
}

#[tokio::test]
async fn an_order_cancelled_before_shipping_is_refunded_on_the_3_to_20_business_day_timeline() {
    let suite = RunningSuite::start().await;
    let refunds = stage(&suite)
        .await
        .order_cancelled_before_shipping()
        .await
        .expect("cancellation flow");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    let refund = &refunds[0];
    assert_eq!(refund.reason, RefundReason::OrderCancelled as i32);
    assert_eq!(refund.amount.as_ref().map(|m| m.minor_units), Some(3900));
    assert_eq!(timeline(refund), (3, 20));
    assert_succeeded_in_window(refund);
}

#[tokio::test]
async fn a_return_not_shipped_by_its_deadline_closes_for_the_seller_and_cancels_the_held_refund() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .return_not_shipped_in_time()
        .await
        .expect("not-shipped flow");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    let decided = outcome.dispute.outcome.as_ref().expect("an outcome");
    assert_eq!(decided.source, OutcomeSource::ReturnNotShipped as i32);
    assert_eq!(decided.r#type, RulingOutcome::SellerFavor as i32);
    let refund = only_refund(&outcome);
    assert_eq!(refund.status, RefundStatus::Cancelled as i32, "{refund:?}");
}

#[tokio::test]
async fn a_failed_inspection_goes_back_to_review_and_the_new_ruling_pays_the_buyer_once() {
    let suite = RunningSuite::start().await;
    let outcome = stage(&suite)
        .await
        .failed_inspection_goes_back_to_review()
        .await
        .expect("failed-inspection flow");
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    assert_eq!(outcome.refunds.len(), 2, "{:?}", outcome.refunds);
    assert_eq!(outcome.refunds[0].status, RefundStatus::Cancelled as i32);
    assert_succeeded_in_window(&outcome.refunds[1]);
    let paid: i64 = outcome
        .refunds
        .iter()
        .filter(|r| r.status == RefundStatus::Succeeded as i32)
        .filter_map(|r| r.net_amount.as_ref().map(|m| m.minor_units))
        .sum();
    assert_eq!(paid, 7000, "paid once, in full");
}
