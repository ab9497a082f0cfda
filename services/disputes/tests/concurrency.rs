//! Two conflicting actions on one dispute at once: exactly one wins, the other is refused
//! with FAILED_PRECONDITION naming the state the winner left behind.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1::{DisputeReason, EvidenceKind};
use returns_proto::disputes::v1 as pb;
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_and_escalate_at_once_exactly_one_wins() {
    let mut h = Harness::start().await;
    for round in 0..6 {
        let order_id = format!("o-{round}");
        let now = h.now();
        h.record_order(order(&order_id, now)).await;
        let d = h
            .open(open_request(
                &order_id,
                DisputeReason::Damaged,
                &[EvidenceKind::Photo],
            ))
            .await;
        let offer = h
            .client
            .make_offer(authorized(
                pb::MakeOfferRequest {
                    request_id: rid(),
                    dispute_id: d.dispute_id.clone(),
                    r#type: pb::ResolutionType::PartialRefund as i32,
                    amount: Some(usd(2000)),
                    note: String::new(),
                },
                &seller(),
            ))
            .await
            .expect("counter")
            .into_inner()
            .offer
            .expect("offer");

        let mut accepting = h.client.clone();
        let mut escalating = h.client.clone();
        let accept = authorized(
            pb::AcceptOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                offer_id: offer.offer_id.clone(),
            },
            &buyer(),
        );
        let escalate = authorized(
            pb::EscalateDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: "too little".into(),
            },
            &buyer(),
        );
        let (accepted, escalated) = tokio::join!(
            tokio::spawn(async move { accepting.accept_offer(accept).await }),
            tokio::spawn(async move { escalating.escalate_dispute(escalate).await }),
        );
        let accepted = accepted.expect("join");
        let escalated = escalated.expect("join");
        let after = h.get(&d.dispute_id, &buyer()).await.expect("get");
        match (&accepted, &escalated) {
            (Ok(_), Err(refused)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition);
                assert!(
                    refused.message().contains("RESOLVED"),
                    "{}",
                    refused.message()
                );
                assert_eq!(state(&after), pb::DisputeState::Resolved);
            }
            (Err(refused), Ok(_)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition);
                assert!(
                    refused.message().contains("ESCALATED"),
                    "{}",
                    refused.message()
                );
                assert_eq!(state(&after), pb::DisputeState::Escalated);
            }
            other => panic!("exactly one must win: {other:?}"),
        }
        // The loser wrote nothing: one history entry set, one version step per winner.
        assert_eq!(after.version, 3);
    }
}
