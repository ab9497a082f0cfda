//! What a return does to refunds beyond opening gates: a created label deducts buyer-paid
//! postage (once, also from refunds requested later), and a failed inspection or a return
//! not shipped by its deadline cancels refunds still waiting on it. Refunds already with the
//! provider are never touched.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::ReleaseCondition as Gate;
use returns_proto::refunds::v1::ReturnProgress as Progress;
use support::{Harness, money, platform, request_id, status, usd};
use tonic::Code;

fn postage(amount: common::Money) -> pb::Deduction {
    pb::Deduction {
        kind: pb::DeductionKind::ReturnPostage as i32,
        amount: Some(amount),
        note: "buyer-paid return postage".into(),
    }
}

/// A refund of USD `minor` for `dispute`, gated on `gate` of the return under `label`.
async fn held(h: &mut Harness, dispute: &str, label: &str, minor: i64, gate: Gate) -> pb::Refund {
    let mut request = Harness::refund_request("o-1", usd(minor), gate);
    request.dispute_id = dispute.to_string();
    request.return_label_id = label.to_string();
    h.create(request).await.expect("created")
}

/// A report of `progress` on order o-1 for `dispute` and `label`.
fn report(dispute: &str, label: &str, progress: Progress) -> pb::RecordReturnProgressRequest {
    let mut request = Harness::progress_request("o-1", label, progress);
    request.dispute_id = dispute.to_string();
    request
}

fn label_created(
    dispute: &str,
    label: &str,
    postage_minor: i64,
) -> pb::RecordReturnProgressRequest {
    let mut request = report(dispute, label, Progress::LabelCreated);
    request.deductions = vec![postage(usd(postage_minor))];
    request
}

fn net(refund: &pb::Refund) -> i64 {
    refund
        .net_amount
        .as_ref()
        .expect("a net amount")
        .minor_units
}

/// The settlement report's ON_HOLD total for USD: the ledger's view of held net amounts.
async fn ledger_on_hold(h: &mut Harness) -> i64 {
    let start = h.context.clock.now() - chrono::Duration::days(1);
    let end = h.context.clock.now() + chrono::Duration::days(1);
    let report = h
        .client
        .get_settlement_report(authorized(
            pb::GetSettlementReportRequest {
                start_time: Some(returns_proto::convert::timestamp_to_proto(start)),
                end_time: Some(returns_proto::convert::timestamp_to_proto(end)),
                currency_code: "USD".into(),
            },
            &platform(),
        ))
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("a report");
    report
        .rows
        .iter()
        .filter(|row| row.status == pb::RefundStatus::OnHold as i32)
        .map(|row| row.total.as_ref().expect("a total").minor_units)
        .sum()
}

#[tokio::test]
async fn label_postage_is_deducted_from_a_held_refund_of_its_dispute_and_the_net_recomputed() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "l-1", 5_000, Gate::OnInspectionPassed).await;
    let other_dispute = held(&mut h, "d-2", "", 2_000, Gate::OnInspectionPassed).await;
    assert_eq!(ledger_on_hold(&mut h).await, 7_000);

    let after = h
        .report(label_created("d-1", "l-1", 700))
        .await
        .expect("label reported");
    assert_eq!(after.len(), 1, "only the dispute's refunds are concerned");
    let deducted = h.get(&refund.refund_id).await;
    assert_eq!(net(&deducted), 4_300);
    assert_eq!(deducted.amount, Some(usd(5_000)));
    assert_eq!(deducted.deductions, vec![postage(usd(700))]);
    assert_eq!(status(&deducted), pb::RefundStatus::OnHold);
    assert_eq!(after[0], deducted);
    let untouched = h.get(&other_dispute.refund_id).await;
    assert_eq!(net(&untouched), 2_000);
    assert!(untouched.deductions.is_empty());
    // The ledger moved the held refund from its gross to its net amount.
    assert_eq!(ledger_on_hold(&mut h).await, 6_300);
}

#[tokio::test]
async fn a_refund_requested_after_the_label_is_created_with_the_postage_deducted() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    h.report(label_created("d-1", "l-1", 700))
        .await
        .expect("label reported before any refund");

    let refund = held(&mut h, "d-1", "l-1", 5_000, Gate::OnInspectionPassed).await;
    assert_eq!(net(&refund), 4_300);
    assert_eq!(refund.deductions, vec![postage(usd(700))]);
    let unlabelled = held(&mut h, "d-1", "", 1_000, Gate::OnReturnDelivered).await;
    assert_eq!(net(&unlabelled), 300);
    let other_dispute = held(&mut h, "d-2", "l-1", 1_000, Gate::OnReturnDelivered).await;
    assert_eq!(net(&other_dispute), 1_000);
    let other_label = held(&mut h, "d-1", "l-2", 1_000, Gate::OnReturnDelivered).await;
    assert_eq!(net(&other_label), 1_000);
    // Postage the caller already deducted is not deducted again.
    let mut own = Harness::refund_request("o-1", usd(2_000), Gate::OnReturnDelivered);
    own.dispute_id = "d-1".into();
    own.deductions = vec![postage(usd(500))];
    let own = h.create(own).await.expect("created");
    assert_eq!(net(&own), 1_500);
    assert_eq!(own.deductions.len(), 1);
}

#[tokio::test]
async fn a_second_label_does_not_deduct_postage_twice() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "", 5_000, Gate::OnReturnDelivered).await;
    h.report(label_created("d-1", "l-1", 700))
        .await
        .expect("first label");
    h.report(label_created("d-1", "l-2", 900))
        .await
        .expect("second label");
    let after = h.get(&refund.refund_id).await;
    assert_eq!(net(&after), 4_300);
    assert_eq!(after.deductions, vec![postage(usd(700))]);
    // A refund requested after both labels also carries one postage deduction, the first.
    let later = held(&mut h, "d-1", "", 3_000, Gate::OnReturnDelivered).await;
    assert_eq!(later.deductions, vec![postage(usd(700))]);
    assert_eq!(net(&later), 2_300);
    assert_eq!(ledger_on_hold(&mut h).await, 4_300 + 2_300);
}

#[tokio::test]
async fn a_redelivered_label_message_is_applied_once() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "l-1", 5_000, Gate::OnReturnDelivered).await;
    // A deduction that is not postage: only the inbox, not the once-only postage rule,
    // keeps a redelivery from adding it again.
    let message_id = uuid::Uuid::now_v7().to_string();
    let mut first = report("d-1", "l-1", Progress::LabelCreated);
    first.deductions = vec![pb::Deduction {
        kind: pb::DeductionKind::Other as i32,
        amount: Some(usd(250)),
        note: "label fee".into(),
    }];
    first.message_id = message_id.clone();
    first.request_id = message_id;
    let delivered = h.report(first.clone()).await.expect("delivered");
    assert_eq!(net(&delivered[0]), 4_750);
    h.advance_days(1);
    let mut again = first;
    again.request_id = request_id();
    let redelivered = h.report(again).await.expect("redelivered");
    assert_eq!(redelivered, delivered, "a redelivery changes nothing");
    let after = h.get(&refund.refund_id).await;
    assert_eq!(net(&after), 4_750);
    assert_eq!(after.deductions.len(), 1);
    assert_eq!(ledger_on_hold(&mut h).await, 4_750);
}

#[tokio::test]
async fn label_deductions_must_be_in_the_orders_currency_and_only_come_with_a_label() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "l-1", 5_000, Gate::OnReturnDelivered).await;
    let mut euros = report("d-1", "l-1", Progress::LabelCreated);
    euros.deductions = vec![postage(money("EUR", 700))];
    let error = h.report(euros).await.expect_err("another currency");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("deductions[0]"),
        "{}",
        error.message()
    );
    let mut misplaced = label_created("d-1", "l-1", 700);
    misplaced.progress = Progress::Delivered as i32;
    let error = h.report(misplaced).await.expect_err("postage on delivery");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("deductions"),
        "{}",
        error.message()
    );
    let after = h.get(&refund.refund_id).await;
    assert_eq!(net(&after), 5_000);
    assert_eq!(status(&after), pb::RefundStatus::OnHold);
}

#[tokio::test]
async fn a_failed_inspection_cancels_held_refunds_so_a_new_ruling_fits_under_the_capture() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 5_000).await;
    let refund = held(&mut h, "d-1", "l-1", 5_000, Gate::OnInspectionPassed).await;
    // While it is held it takes the whole capture.
    let mut too_much = Harness::refund_request("o-1", usd(5_000), Gate::Immediate);
    too_much.dispute_id = "d-1".into();
    let error = h
        .create(too_much.clone())
        .await
        .expect_err("over the capture");
    assert_eq!(error.code(), Code::FailedPrecondition);

    h.report(report("d-1", "l-1", Progress::Delivered))
        .await
        .expect("delivered");
    let after = h
        .report(report("d-1", "l-1", Progress::InspectionFailed))
        .await
        .expect("inspection failed");
    assert_eq!(after.len(), 1);
    let cancelled = h.get(&refund.refund_id).await;
    assert_eq!(status(&cancelled), pb::RefundStatus::Cancelled);
    assert_eq!(
        cancelled.status_reason,
        "return failed inspection; the dispute is back in review"
    );
    assert_eq!(after[0], cancelled);
    assert_eq!(ledger_on_hold(&mut h).await, 0);

    // The re-ruling grants the refund again: it fits, and is paid at once.
    too_much.request_id = request_id();
    let granted = h
        .create(too_much)
        .await
        .expect("fits after the cancellation");
    assert_eq!(status(&granted), pb::RefundStatus::Pending);
}

#[tokio::test]
async fn a_return_not_shipped_by_its_deadline_cancels_the_disputes_held_refunds() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "l-1", 3_000, Gate::OnReturnAcceptedByCarrier).await;
    let unlabelled = held(&mut h, "d-1", "", 1_000, Gate::OnReturnDelivered).await;
    let other_dispute = held(&mut h, "d-2", "l-2", 2_000, Gate::OnReturnDelivered).await;

    let after = h
        .report(report("d-1", "", Progress::NotShipped))
        .await
        .expect("not shipped");
    let mut ids: Vec<_> = after.iter().map(|r| r.refund_id.clone()).collect();
    ids.sort();
    let mut expected = vec![refund.refund_id.clone(), unlabelled.refund_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    for id in [&refund.refund_id, &unlabelled.refund_id] {
        let cancelled = h.get(id).await;
        assert_eq!(status(&cancelled), pb::RefundStatus::Cancelled);
        assert_eq!(
            cancelled.status_reason,
            "return not shipped by its deadline"
        );
    }
    assert_eq!(
        status(&h.get(&other_dispute.refund_id).await),
        pb::RefundStatus::OnHold
    );
    assert_eq!(ledger_on_hold(&mut h).await, 2_000);
}

#[tokio::test]
async fn submitted_refunds_are_untouched_by_labels_failed_inspections_and_missed_deadlines() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 20_000).await;
    let refund = held(&mut h, "d-1", "l-1", 3_000, Gate::OnReturnAcceptedByCarrier).await;
    h.report(report("d-1", "l-1", Progress::AcceptedByCarrier))
        .await
        .expect("accepted");
    assert_eq!(h.settle().await.submitted, 1);
    let submitted = h.get(&refund.refund_id).await;
    assert_eq!(status(&submitted), pb::RefundStatus::Submitted);

    h.report(label_created("d-1", "l-1", 700))
        .await
        .expect("label");
    h.report(report("d-1", "l-1", Progress::InspectionFailed))
        .await
        .expect("inspection failed");
    h.report(report("d-1", "", Progress::NotShipped))
        .await
        .expect("not shipped");
    let after = h.get(&refund.refund_id).await;
    assert_eq!(after, submitted);
    assert_eq!(net(&after), 3_000);
}
