//! Stories of the rules in docs/domain.md, walked end to end over gRPC as one table: each row opens
//! a dispute, plays its steps through the real client, and checks the final state, the
//! outcome and the outbox messages written with it.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1::{DisputeReason, EvidenceKind};
use returns_proto::disputes::v1 as pb;
use returns_proto::refunds::v1::ReleaseCondition;
use support::*;

#[derive(Debug, Clone, Copy)]
enum Step {
    AdvanceDays(u64),
    ProcessDeadlines,
    SellerCounterPartial(i64),
    AcceptPending,
    SellerRejects,
    BuyerEscalates,
    ArbiterRulesFullRefundWithReturn,
    BuyerWithdraws,
}

struct Story {
    name: &'static str,
    reason: DisputeReason,
    evidence: &'static [EvidenceKind],
    steps: &'static [Step],
    state: pb::DisputeState,
    outcome: Option<(pb::RulingOutcome, pb::OutcomeSource)>,
    /// (amount, release) of each CreateRefund in the outbox.
    refunds: &'static [(i64, ReleaseCondition)],
    return_authorised: bool,
    /// After a withdrawal: protection closes this many days after the story's start.
    protection_closes_after_days: Option<i64>,
}

const STORIES: &[Story] = &[
    Story {
        name: "non-delivery auto-granted after 15 silent days",
        reason: DisputeReason::NotReceived,
        evidence: &[EvidenceKind::TrackingScreenshot],
        steps: &[Step::AdvanceDays(15), Step::ProcessDeadlines],
        state: pb::DisputeState::Resolved,
        outcome: Some((
            pb::RulingOutcome::RefundFull,
            pb::OutcomeSource::SellerSilent,
        )),
        refunds: &[(8000, ReleaseCondition::Immediate)],
        return_authorised: false,
        protection_closes_after_days: None,
    },
    Story {
        name: "damaged item, seller counter-offers a partial refund, buyer accepts",
        reason: DisputeReason::Damaged,
        evidence: &[EvidenceKind::Photo],
        steps: &[Step::SellerCounterPartial(3000), Step::AcceptPending],
        state: pb::DisputeState::Resolved,
        outcome: Some((
            pb::RulingOutcome::RefundPartial,
            pb::OutcomeSource::OfferAccepted,
        )),
        refunds: &[(3000, ReleaseCondition::Immediate)],
        return_authorised: false,
        protection_closes_after_days: None,
    },
    Story {
        name: "seller rejects, buyer escalates, arbiter rules return required",
        reason: DisputeReason::NotAsDescribed,
        evidence: &[EvidenceKind::Photo, EvidenceKind::Video],
        steps: &[
            Step::SellerRejects,
            Step::BuyerEscalates,
            Step::ArbiterRulesFullRefundWithReturn,
        ],
        state: pb::DisputeState::AwaitingReturn,
        outcome: Some((pb::RulingOutcome::RefundFull, pb::OutcomeSource::Ruling)),
        refunds: &[(8000, ReleaseCondition::OnInspectionPassed)],
        return_authorised: true,
        protection_closes_after_days: None,
    },
    Story {
        name: "buyer withdraws and the protection clock resumes with the time left",
        reason: DisputeReason::Damaged,
        evidence: &[EvidenceKind::Photo],
        // Opened with 13 days of protection left; withdrawn 4 days later.
        steps: &[Step::AdvanceDays(4), Step::BuyerWithdraws],
        state: pb::DisputeState::Cancelled,
        outcome: None,
        refunds: &[],
        return_authorised: false,
        protection_closes_after_days: Some(17),
    },
];

async fn play(h: &mut Harness, dispute_id: &str, step: Step) {
    match step {
        Step::AdvanceDays(days) => {
            h.advance(DAY * u32::try_from(days).expect("small"));
        }
        Step::ProcessDeadlines => {
            h.process_deadlines().await;
        }
        Step::SellerCounterPartial(amount) => {
            h.client
                .make_offer(authorized(
                    pb::MakeOfferRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        r#type: pb::ResolutionType::PartialRefund as i32,
                        amount: Some(usd(amount)),
                        note: "sorry, a discount?".into(),
                    },
                    &seller(),
                ))
                .await
                .expect("counter-offer");
        }
        Step::AcceptPending => {
            let d = h.get(dispute_id, &buyer()).await.expect("get");
            let pending = d
                .offers
                .iter()
                .find(|o| o.status == pb::OfferStatus::Pending as i32)
                .expect("a pending offer");
            h.client
                .accept_offer(authorized(
                    pb::AcceptOfferRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        offer_id: pending.offer_id.clone(),
                    },
                    &buyer(),
                ))
                .await
                .expect("accept");
        }
        Step::SellerRejects => {
            let d = h.get(dispute_id, &seller()).await.expect("get");
            h.client
                .reject_offer(authorized(
                    pb::RejectOfferRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        offer_id: d.offers[0].offer_id.clone(),
                        reason: "it matched the listing when shipped".into(),
                        evidence_ids: vec![],
                    },
                    &seller(),
                ))
                .await
                .expect("reject");
        }
        Step::BuyerEscalates => {
            let d = h
                .client
                .escalate_dispute(authorized(
                    pb::EscalateDisputeRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        reason: "no agreement".into(),
                    },
                    &buyer(),
                ))
                .await
                .expect("escalate")
                .into_inner()
                .dispute
                .expect("dispute");
            // The arbiter's ruling deadline is visible as the running deadline.
            assert_eq!(d.awaiting, pb::Awaiting::Arbiter as i32);
            let due = h.now() + chrono::Duration::days(10);
            assert_eq!(
                d.respond_by,
                Some(returns_proto::convert::timestamp_to_proto(due))
            );
        }
        Step::ArbiterRulesFullRefundWithReturn => {
            h.client
                .rule_on_dispute(authorized(
                    pb::RuleOnDisputeRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        outcome: pb::RulingOutcome::RefundFull as i32,
                        amount: None,
                        return_required: true,
                        rationale: "order above USD 50 and contested: return first".into(),
                        postage_payer: None,
                    },
                    &arbiter(),
                ))
                .await
                .expect("rule");
        }
        Step::BuyerWithdraws => {
            let response = h
                .client
                .cancel_dispute(authorized(
                    pb::CancelDisputeRequest {
                        request_id: rid(),
                        dispute_id: dispute_id.into(),
                        reason: "sorted it out".into(),
                    },
                    &buyer(),
                ))
                .await
                .expect("withdraw")
                .into_inner();
            assert!(response.protection_closes_at.is_some());
        }
    }
}

#[tokio::test]
async fn the_seed_stories_end_as_domain_md_says() {
    for story in STORIES {
        let mut h = Harness::start().await;
        let start = h.now();
        h.record_order(order("o-1", start)).await;
        let opened = h
            .open(open_request("o-1", story.reason, story.evidence))
            .await;
        assert_eq!(state(&opened), pb::DisputeState::Open, "{}", story.name);
        assert_eq!(opened.offers.len(), 1, "the request is offer one");
        for step in story.steps {
            play(&mut h, &opened.dispute_id, *step).await;
        }
        let d = h.get(&opened.dispute_id, &buyer()).await.expect("get");
        assert_eq!(state(&d), story.state, "{}", story.name);
        let outcome = d.outcome.as_ref().map(|o| (o.r#type, o.source));
        assert_eq!(
            outcome,
            story.outcome.map(|(r, s)| (r as i32, s as i32)),
            "{}",
            story.name
        );
        let refunds: Vec<_> = h
            .refund_requests()
            .await
            .iter()
            .map(|r| {
                assert_eq!(r.dispute_id, opened.dispute_id);
                assert_eq!(r.request_id, r.message_id, "request_id is the outbox id");
                (
                    r.amount.as_ref().expect("amount").minor_units,
                    ReleaseCondition::try_from(r.release).expect("release"),
                )
            })
            .collect();
        assert_eq!(refunds, story.refunds, "{}", story.name);
        let authorisations = h.return_authorisations().await;
        assert_eq!(
            !authorisations.is_empty(),
            story.return_authorised,
            "{}",
            story.name
        );
        if story.return_authorised {
            assert_eq!(authorisations[0].order_id, "o-1");
            assert!(authorisations[0].ship_by.is_some());
            assert_eq!(d.awaiting, pb::Awaiting::Buyer as i32);
            assert!(d.respond_by.is_some(), "the ship-by deadline runs");
        }
        if let Some(days) = story.protection_closes_after_days {
            let order = h.record_order(order("o-1", start)).await;
            assert_eq!(
                order.dispute_window_closes_at,
                Some(returns_proto::convert::timestamp_to_proto(
                    start + chrono::Duration::days(days)
                )),
                "{}",
                story.name
            );
            // A withdrawn dispute may be reopened once while time is left.
            let reopened = h
                .open(open_request("o-1", story.reason, story.evidence))
                .await;
            assert!(reopened.reopened);
        }
        // Every story leaves an append-only history that starts with the opening.
        let events = h.events(&opened.dispute_id).await;
        assert_eq!(events[0].r#type, pb::DisputeEventType::Opened as i32);
        let sequences: Vec<_> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
    }
}
