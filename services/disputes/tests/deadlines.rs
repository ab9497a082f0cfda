//! Deadlines through the manual clock: they fire from durable rows (also across a restart),
//! only when due, only while they still apply, and the background worker runs them by itself.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1::{DisputeReason, EvidenceKind};
use returns_proto::convert::timestamp_to_proto;
use returns_proto::disputes::v1 as pb;
use support::*;

async fn open_damaged(h: &mut Harness) -> pb::Dispute {
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    h.open(open_request(
        "o-1",
        DisputeReason::Damaged,
        &[EvidenceKind::Photo],
    ))
    .await
}

/// Seller offers a return and refund, the buyer accepts: a return is authorised.
async fn awaiting_return(h: &mut Harness) -> pb::Dispute {
    let d = open_damaged(h).await;
    let offer = h
        .client
        .make_offer(authorized(
            pb::MakeOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                r#type: pb::ResolutionType::ReturnAndRefund as i32,
                amount: None,
                note: "send it back please".into(),
            },
            &seller(),
        ))
        .await
        .expect("offer")
        .into_inner()
        .offer
        .expect("offer");
    let d = h
        .client
        .accept_offer(authorized(
            pb::AcceptOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                offer_id: offer.offer_id,
            },
            &buyer(),
        ))
        .await
        .expect("accept")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(state(&d), pb::DisputeState::AwaitingReturn);
    d
}

async fn return_event(
    h: &mut Harness,
    d: &pb::Dispute,
    message_id: &str,
    kind: pb::ReturnEventType,
) -> pb::Dispute {
    h.client
        .record_return_event(authorized(
            pb::RecordReturnEventRequest {
                message_id: message_id.into(),
                order_id: d.order_id.clone(),
                dispute_id: d.dispute_id.clone(),
                label_id: "label-1".into(),
                r#type: kind as i32,
                occurred_at: Some(timestamp_to_proto(h.now())),
                tracking_number: "RR123456785GB".into(),
                ship_by: None,
                postage: None,
                paid_by: 0,
                free_return: false,
                notes: "ok".into(),
            },
            &platform(),
        ))
        .await
        .expect("return event")
        .into_inner()
        .dispute
        .expect("dispute")
}

#[tokio::test]
async fn the_seller_response_deadline_is_visible_and_does_not_fire_early() {
    let mut h = Harness::start().await;
    let d = open_damaged(&mut h).await;
    let due = h.now() + chrono::Duration::days(15);
    assert_eq!(d.respond_by, Some(timestamp_to_proto(due)));
    assert_eq!(d.awaiting, pb::Awaiting::Seller as i32);
    h.advance(DAY * 14);
    assert_eq!(h.process_deadlines().await, 0);
    let d = h.get(&d.dispute_id, &buyer()).await.expect("get");
    assert_eq!(state(&d), pb::DisputeState::Open);
    assert!(h.refund_requests().await.is_empty());
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_pending_deadline_loses_nothing() {
    let mut h = Harness::start().await;
    let d = open_damaged(&mut h).await;
    h.advance(DAY * 7);
    h.restart().await;
    h.advance(DAY * 8);
    h.process_deadlines().await;
    let d = h.get(&d.dispute_id, &buyer()).await.expect("get");
    assert_eq!(state(&d), pb::DisputeState::Resolved);
    let outcome = d.outcome.expect("outcome");
    assert_eq!(outcome.source, pb::OutcomeSource::SellerSilent as i32);
    assert_eq!(h.refund_requests().await.len(), 1);
}

#[tokio::test]
async fn the_worker_fires_a_due_deadline_by_itself_when_the_clock_moves() {
    let mut h = Harness::start().await;
    let d = open_damaged(&mut h).await;
    h.advance(DAY * 15);
    // No call to process_deadlines: the worker started with the server wakes on the clock.
    let resolved = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let current = h.get(&d.dispute_id, &buyer()).await.expect("get");
            if state(&current) == pb::DisputeState::Resolved {
                return current;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the worker fired the deadline");
    assert_eq!(
        resolved.outcome.expect("outcome").source,
        pb::OutcomeSource::SellerSilent as i32
    );
}

#[tokio::test]
async fn a_seller_answer_supersedes_the_response_deadline() {
    let mut h = Harness::start().await;
    let d = open_damaged(&mut h).await;
    h.advance(DAY * 5);
    let d = h
        .client
        .make_offer(authorized(
            pb::MakeOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                r#type: pb::ResolutionType::Replacement as i32,
                amount: None,
                note: String::new(),
            },
            &seller(),
        ))
        .await
        .expect("counter")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(d.awaiting, pb::Awaiting::Buyer as i32);
    h.advance(DAY * 20);
    assert_eq!(h.process_deadlines().await, 0);
    let d = h.get(&d.dispute_id, &seller()).await.expect("get");
    assert_eq!(state(&d), pb::DisputeState::Negotiating);
}

#[tokio::test]
async fn a_return_not_shipped_by_its_deadline_closes_the_dispute_for_the_seller() {
    let mut h = Harness::start().await;
    let d = awaiting_return(&mut h).await;
    assert_eq!(h.return_authorisations().await.len(), 1);
    assert_eq!(
        d.respond_by,
        Some(timestamp_to_proto(h.now() + chrono::Duration::days(7)))
    );
    h.advance(DAY * 7);
    h.process_deadlines().await;
    let d = h.get(&d.dispute_id, &buyer()).await.expect("get");
    assert_eq!(state(&d), pb::DisputeState::Resolved);
    let outcome = d.outcome.expect("outcome");
    assert_eq!(outcome.r#type, pb::RulingOutcome::SellerFavor as i32);
    assert_eq!(outcome.source, pb::OutcomeSource::ReturnNotShipped as i32);
}

#[tokio::test]
async fn a_return_not_shipped_by_its_deadline_tells_refunds_once_to_cancel_the_held_refund() {
    let mut h = Harness::start().await;
    let d = awaiting_return(&mut h).await;
    let ship_by = h.now() + chrono::Duration::days(7);
    assert_eq!(d.respond_by, Some(timestamp_to_proto(ship_by)));
    // The label exists but the parcel never reaches a carrier.
    return_event(&mut h, &d, "m-1", pb::ReturnEventType::LabelCreated).await;
    let held = h.refund_requests().await;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].release,
        returns_proto::refunds::v1::ReleaseCondition::OnInspectionPassed as i32
    );
    assert!(h.return_progress().await.is_empty());

    h.advance(DAY * 7);
    h.process_deadlines().await;
    let sent = h.return_progress().await;
    assert_eq!(sent.len(), 1, "one NOT_SHIPPED message: {sent:?}");
    let (destination, message_id, progress) = &sent[0];
    assert_eq!(destination, "refunds");
    assert_eq!(
        (&progress.message_id, &progress.request_id),
        (message_id, message_id)
    );
    assert_eq!(
        (
            progress.order_id.as_str(),
            progress.dispute_id.as_str(),
            progress.return_label_id.as_str()
        ),
        ("o-1", d.dispute_id.as_str(), "label-1")
    );
    assert_eq!(
        progress.progress,
        returns_proto::refunds::v1::ReturnProgress::NotShipped as i32
    );
    assert_eq!(progress.occurred_at, Some(timestamp_to_proto(ship_by)));
    assert_eq!(
        progress.notes,
        format!(
            "return not shipped by {}",
            ship_by.format("%Y-%m-%dT%H:%M:%SZ")
        )
    );

    // Later passes, also after a restart, find the deadline fired and send nothing more.
    assert_eq!(h.process_deadlines().await, 0);
    h.restart().await;
    h.advance(DAY);
    assert_eq!(h.process_deadlines().await, 0);
    assert_eq!(h.return_progress().await.len(), 1);
    assert_eq!(h.refund_requests().await.len(), 1);
}

#[tokio::test]
async fn a_shipped_return_stops_the_clock_and_a_passed_inspection_resolves_once() {
    let mut h = Harness::start().await;
    let d = awaiting_return(&mut h).await;
    let shipped = return_event(&mut h, &d, "m-1", pb::ReturnEventType::AcceptedByCarrier).await;
    assert_eq!(shipped.respond_by, None);
    assert_eq!(shipped.return_label_id, "label-1");
    h.advance(DAY * 8);
    assert_eq!(h.process_deadlines().await, 0);
    return_event(&mut h, &d, "m-2", pb::ReturnEventType::Delivered).await;
    let done = return_event(&mut h, &d, "m-3", pb::ReturnEventType::InspectionAccepted).await;
    assert_eq!(state(&done), pb::DisputeState::Resolved);
    // A redelivery of the same relay message changes nothing.
    let again = return_event(&mut h, &d, "m-3", pb::ReturnEventType::InspectionAccepted).await;
    assert_eq!(again.version, done.version);
    // The refund was requested once, at authorisation, gated on the inspection.
    let refunds = h.refund_requests().await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        refunds[0].release,
        returns_proto::refunds::v1::ReleaseCondition::OnInspectionPassed as i32
    );
}

#[tokio::test]
async fn a_failed_inspection_goes_back_to_platform_review() {
    let mut h = Harness::start().await;
    let d = awaiting_return(&mut h).await;
    return_event(&mut h, &d, "m-1", pb::ReturnEventType::Delivered).await;
    let review = return_event(
        &mut h,
        &d,
        "m-2",
        pb::ReturnEventType::InspectionWrongOrEmpty,
    )
    .await;
    assert_eq!(state(&review), pb::DisputeState::Escalated);
    assert_eq!(review.awaiting, pb::Awaiting::Arbiter as i32);
    assert_eq!(
        review.respond_by,
        Some(timestamp_to_proto(h.now() + chrono::Duration::days(10)))
    );
    let events = h.events(&d.dispute_id).await;
    assert!(
        events
            .iter()
            .any(|e| e.r#type == pb::DisputeEventType::ReturnInspectionFailed as i32)
    );
}
