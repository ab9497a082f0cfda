//! Platform review and withdrawal: the buyer escalates a negotiation to an arbiter, the
//! arbiter rules, and the buyer may withdraw the dispute at any point before an outcome.

use super::commands::Ruling;
use super::events::{DisputeEvent, EventPayload};
use super::parties::{Actor, require_buyer};
use super::record::Dispute;
use super::resolution::check_amount;
use super::text::{optional_text, required_text};
use super::transition::{Settlement, Transition};
use super::vocabulary::{Awaiting, DisputeState, EventType, OutcomeSource};
use crate::dispute::{Role, RulingOutcome};
use crate::error::DomainError;
use crate::ids::EventId;
use crate::policy::Policy;
use crate::time::Timestamp;

/// The buyer hands the dispute to platform review; open offers close and the arbiter's
/// ruling window starts.
pub(super) fn escalate(
    dispute: &Dispute,
    by: Actor,
    reason: String,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    require_buyer(dispute, &by, "only the buyer may escalate")?;
    let reason = optional_text("reason", &reason)?;
    let mut t = Transition::new(dispute, by, now);
    t.close_pending();
    t.next.state = DisputeState::Escalated;
    t.next.awaiting = Awaiting::Arbiter;
    t.next.escalated_at = Some(now);
    t.next.respond_by = Some(now + policy.arbiter_ruling_window());
    t.push(EventType::Escalated, reason, EventPayload::None);
    Ok(t.finish())
}

/// An arbiter's ruling settles the dispute; the ruling entry comes first in the history.
pub(super) fn rule(
    dispute: &Dispute,
    by: Actor,
    ruling: Ruling,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let total = dispute.order_total;
    if by.role != Role::Arbiter {
        return Err(DomainError::rule(
            "arbiter_only",
            "only an arbiter may rule",
        ));
    }
    let rationale = required_text("rationale", &ruling.rationale)?;
    match (ruling.outcome, ruling.amount) {
        (RulingOutcome::RefundPartial, None) => {
            return Err(DomainError::validation(
                "amount",
                "is required for REFUND_PARTIAL",
            ));
        }
        (RulingOutcome::RefundPartial, Some(amount)) => check_amount(&amount, &total, "amount")?,
        (_, Some(_)) => {
            return Err(DomainError::validation(
                "amount",
                format!("must be unset for {}", ruling.outcome),
            ));
        }
        (_, None) => {}
    }
    if ruling.return_required && !ruling.outcome.refunds_buyer() {
        return Err(DomainError::validation(
            "return_required",
            format!(
                "a return can only be required with a refund, not with {}",
                ruling.outcome
            ),
        ));
    }
    let mut t = Transition::new(dispute, by.clone(), now);
    t.settle(
        Settlement {
            ruling: ruling.outcome,
            amount: ruling.amount,
            return_required: ruling.return_required,
            postage_payer: ruling.postage_payer,
            rationale: rationale.clone(),
            decided_by: by,
            source: OutcomeSource::Ruling,
            accepted_offer: None,
        },
        policy,
    )?;
    let outcome = t.next.outcome.clone();
    t.events.insert(
        0,
        DisputeEvent {
            id: EventId::new(),
            kind: EventType::Ruled,
            actor: t.actor.clone(),
            at: now,
            from: Some(t.from),
            to: t.from,
            note: rationale,
            payload: outcome.map_or(EventPayload::None, EventPayload::Outcome),
        },
    );
    Ok(t.finish())
}

/// The buyer withdraws the dispute (`Command::Cancel`); the service then resumes the order's
/// protection clock with `resume_protection`.
pub(super) fn withdraw(
    dispute: &Dispute,
    by: Actor,
    reason: String,
    now: Timestamp,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    require_buyer(dispute, &by, "only the buyer may withdraw a dispute")?;
    let reason = optional_text("reason", &reason)?;
    let mut t = Transition::new(dispute, by, now);
    t.close_pending();
    t.next.state = DisputeState::Cancelled;
    t.next.awaiting = Awaiting::Nobody;
    t.next.respond_by = None;
    t.next.closed_at = Some(now);
    t.push(EventType::Cancelled, reason, EventPayload::None);
    Ok(t.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispute::RulingOutcome;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

    #[test]
    fn reject_escalate_and_a_ruling_with_return_authorises_the_return() {
        let policy = Policy::classic();
        let d = damaged();
        let err = apply(
            &d,
            Command::Escalate {
                by: buyer(),
                reason: String::new(),
            },
            at(11),
            &policy,
        )
        .expect_err("too soon");
        assert_eq!(
            err.to_string(),
            "cannot escalate in state OPEN; allowed: NEGOTIATING"
        );
        let id = d.offers[0].id;
        let (d, _) = apply(
            &d,
            Command::RejectOffer {
                by: seller(),
                offer_id: id,
                reason: "works for me".into(),
            },
            at(11),
            &policy,
        )
        .expect("reject");
        let (d, _) = apply(
            &d,
            Command::Escalate {
                by: buyer(),
                reason: "no".into(),
            },
            at(12),
            &policy,
        )
        .expect("escalate");
        assert_eq!(
            (d.state, d.awaiting, d.respond_by),
            (DisputeState::Escalated, Awaiting::Arbiter, Some(at(22)))
        );
        let ruling = Ruling {
            outcome: RulingOutcome::RefundFull,
            amount: None,
            return_required: true,
            rationale: "send it back".into(),
            postage_payer: None,
        };
        let (d, events) = apply(
            &d,
            Command::Rule {
                by: arbiter(),
                ruling,
            },
            at(13),
            &policy,
        )
        .expect("rule");
        assert_eq!(
            (d.state, d.awaiting),
            (DisputeState::AwaitingReturn, Awaiting::Buyer)
        );
        assert_eq!(d.deadline(), Some((DeadlineKind::ReturnShipBy, at(20))));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::Ruled,
                EventType::ReturnAuthorised,
                EventType::RefundRequested
            ]
        );
        // Shipped, delivered, inspected: resolved.
        let update = |kind| Command::ReturnEvent {
            update: ReturnUpdate {
                label_id: "l-1".into(),
                kind,
                tracking_number: String::new(),
                notes: String::new(),
                postage: None,
            },
        };
        let (d, _) = apply(
            &d,
            update(ReturnEventType::AcceptedByCarrier),
            at(14),
            &policy,
        )
        .expect("shipped");
        assert_eq!(d.deadline(), None);
        let (d, _) =
            apply(&d, update(ReturnEventType::Delivered), at(16), &policy).expect("delivered");
        let (done, _) = apply(
            &d,
            update(ReturnEventType::InspectionAccepted),
            at(17),
            &policy,
        )
        .expect("inspected");
        assert_eq!(done.state, DisputeState::Resolved);
        let (review, _) = apply(
            &d,
            update(ReturnEventType::InspectionWrongOrEmpty),
            at(17),
            &policy,
        )
        .expect("inspected");
        assert_eq!(
            (review.state, review.awaiting),
            (DisputeState::Escalated, Awaiting::Arbiter)
        );
        // Refunds cancels the held refund on the failed inspection, so none of it is paid and
        // a new ruling without return asks again for the full total.
        assert_eq!(review.refund_requested, usd(0));
        let ruling = Ruling {
            outcome: RulingOutcome::RefundFull,
            amount: None,
            return_required: false,
            rationale: "keep it".into(),
            postage_payer: None,
        };
        let (done, events) = apply(
            &review,
            Command::Rule {
                by: arbiter(),
                ruling,
            },
            at(18),
            &policy,
        )
        .expect("re-rule");
        assert_eq!(done.state, DisputeState::Resolved);
        assert!(events.iter().any(|e| e.payload
            == EventPayload::Refund(RefundRequest {
                amount: usd(8000),
                release: RefundRelease::Immediate
            })));
    }
}
