//! Chargebacks: they cancel or net refunds still pending so the buyer is paid once, and a
//! later refund over what is left is refused with the reason.

mod support;

use returns_domain::dispute::Role;
use returns_platform::testing::{authorized, token};
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use support::{Harness, platform, request_id, status, usd};
use tonic::Code;

fn chargeback(order: &str, minor: i64, reference: &str) -> pb::RecordChargebackRequest {
    pb::RecordChargebackRequest {
        request_id: request_id(),
        order_id: order.to_string(),
        amount: Some(usd(minor)),
        network_reference: reference.to_string(),
        reason: "fraud claim".into(),
        opened_at: None,
    }
}

#[tokio::test]
async fn a_chargeback_cancels_covered_pending_refunds_and_nets_the_next_one() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let first = h
        .refund("o-1", 3_000, pb::ReleaseCondition::Immediate)
        .await;
    let second = h
        .refund("o-1", 5_000, pb::ReleaseCondition::OnReturnDelivered)
        .await;
    let response = h
        .client
        .record_chargeback(authorized(chargeback("o-1", 4_000, "cb-1"), &platform()))
        .await
        .expect("recorded")
        .into_inner();
    assert_eq!(response.affected_refunds.len(), 2);
    let cancelled = h.get(&first.refund_id).await;
    assert_eq!(status(&cancelled), pb::RefundStatus::Cancelled);
    assert!(cancelled.status_reason.contains("cb-1"));
    let netted = h.get(&second.refund_id).await;
    assert_eq!(status(&netted), pb::RefundStatus::OnHold);
    assert_eq!(netted.amount, Some(usd(4_000)));
    assert_eq!(netted.net_amount, Some(usd(4_000)));
    assert!(netted.status_reason.contains("reduced"));
    // 4000 charged back + 4000 pending: 2000 left.
    let error = h
        .create(Harness::refund_request(
            "o-1",
            usd(2_001),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("over what is left");
    assert_eq!(error.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_refund_after_a_chargeback_covering_the_order_is_refused_with_the_reason() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    h.client
        .record_chargeback(authorized(chargeback("o-1", 10_000, "cb-9"), &platform()))
        .await
        .expect("recorded");
    let error = h
        .create(Harness::refund_request(
            "o-1",
            usd(100),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("the network already paid the buyer");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&error, "OVER_REFUND"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("chargebacks of USD 100.00"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn submitted_refunds_are_not_touched_by_a_chargeback() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h
        .refund("o-1", 3_000, pb::ReleaseCondition::Immediate)
        .await;
    h.settle().await;
    let response = h
        .client
        .record_chargeback(authorized(chargeback("o-1", 2_000, "cb-2"), &platform()))
        .await
        .expect("recorded")
        .into_inner();
    assert!(response.affected_refunds.is_empty());
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::Submitted
    );
}

#[tokio::test]
async fn chargebacks_are_refused_for_wallets_duplicates_and_amounts_over_the_capture() {
    let mut h = Harness::start().await;
    h.capture(
        "o-w",
        "b-1",
        usd(5_000),
        common::PaymentMethod::Wallet,
        common::BuyerTier::Standard,
    )
    .await;
    let error = h
        .client
        .record_chargeback(authorized(chargeback("o-w", 1_000, "cb-w"), &platform()))
        .await
        .expect_err("wallets have no chargebacks");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &error,
        "CHARGEBACK_REQUIRES_CARD"
    ));

    h.card_order("o-1", "b-1", 5_000).await;
    let error = h
        .client
        .record_chargeback(authorized(chargeback("o-1", 5_001, "cb-x"), &platform()))
        .await
        .expect_err("more than captured");
    assert_eq!(error.code(), Code::FailedPrecondition);

    let request = chargeback("o-1", 1_000, "cb-1");
    let first = h
        .client
        .record_chargeback(authorized(request.clone(), &platform()))
        .await
        .expect("recorded")
        .into_inner();
    let replay = h
        .client
        .record_chargeback(authorized(request, &platform()))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(first, replay);
    let error = h
        .client
        .record_chargeback(authorized(chargeback("o-1", 1_000, "cb-1"), &platform()))
        .await
        .expect_err("the same network reference twice");
    assert_eq!(error.code(), Code::AlreadyExists);

    let error = h
        .client
        .record_chargeback(authorized(chargeback("o-1", 4_001, "cb-4"), &platform()))
        .await
        .expect_err("two chargebacks over the capture");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &error,
        "CHARGEBACK_EXCEEDS_CAPTURE"
    ));

    let error = h
        .client
        .record_chargeback(authorized(
            chargeback("o-1", 1_000, "cb-3"),
            &token(Role::Arbiter, "arb-1"),
        ))
        .await
        .expect_err("platform only");
    assert_eq!(error.code(), Code::PermissionDenied);
}
