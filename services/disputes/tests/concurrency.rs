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

/// Opens `orders` at once, each from its own client, as `request` shaped for each order.
async fn open_at_once(
    h: &Harness,
    orders: &[String],
    request: impl Fn(&str) -> pb::OpenDisputeRequest,
) -> Vec<Result<pb::Dispute, tonic::Status>> {
    let calls: Vec<_> = orders
        .iter()
        .map(|order_id| {
            let mut client = h.client.clone();
            let open = authorized(request(order_id), &buyer());
            tokio::spawn(async move {
                client
                    .open_dispute(open)
                    .await
                    .map(|r| r.into_inner().dispute.expect("dispute"))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("join"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openings_of_one_order_at_once_exactly_one_wins() {
    let mut h = Harness::start().await;
    for round in 0..4 {
        let order_id = format!("o-{round}");
        let now = h.now();
        h.record_order(order(&order_id, now)).await;
        let outcomes = open_at_once(&h, &vec![order_id.clone(); 6], |id| {
            open_request(id, DisputeReason::Damaged, &[EvidenceKind::Photo])
        })
        .await;
        let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(
                refused.message().contains("one_active_dispute_per_order"),
                "{}",
                refused.message()
            );
        }
        let winner = h.get(&winners[0].dispute_id, &buyer()).await.expect("get");
        assert_eq!(state(&winner), pb::DisputeState::Open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_returns_opened_at_once_stay_within_the_monthly_quota() {
    let mut h = Harness::start().await;
    let now = h.now();
    let orders: Vec<String> = (0..6).map(|n| format!("free-{n}")).collect();
    for order_id in &orders {
        let mut free = order(order_id, now);
        free.free_return = true;
        h.record_order(free).await;
    }
    // Each opening alone qualifies; together they would take six of the buyer's three free
    // returns this month if two could decide on the same count.
    let outcomes = open_at_once(&h, &orders, |id| {
        let mut request = open_request(id, DisputeReason::ChangedMind, &[]);
        request.kind = pb::DisputeKind::ReturnAndRefund as i32;
        request
    })
    .await;
    let opened: Vec<pb::Dispute> = outcomes
        .into_iter()
        .map(|o| o.expect("every opening lands"))
        .collect();
    let free = opened
        .iter()
        .filter(|d| {
            d.outcome
                .as_ref()
                .is_some_and(|o| o.source == pb::OutcomeSource::FreeReturn as i32)
        })
        .count();
    assert_eq!(free, 3, "the monthly quota");
    assert_eq!(h.return_authorisations().await.len(), 3);
    for d in opened.iter().filter(|d| d.outcome.is_none()) {
        assert_eq!(state(d), pb::DisputeState::Open);
    }
}
