//! The deadlines that act by themselves when they fall due: a seller silent past the response
//! window grants the buyer's request, and a return not handed to a carrier by its ship-by
//! date closes the dispute for the seller.

use super::events::{DisputeEvent, EventPayload, ReturnNotShipped};
use super::parties::Actor;
use super::record::Dispute;
use super::text::fmt_ts;
use super::transition::{Settlement, Transition};
use super::vocabulary::{DeadlineKind, EventType, OfferStatus, OutcomeSource};
use crate::dispute::{Role, RulingOutcome};
use crate::error::DomainError;
use crate::policy::Policy;
use crate::time::Timestamp;

/// The seller did not answer the buyer's pending request in time: it is granted.
pub(super) fn seller_response_expired(
    dispute: &Dispute,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let total = dispute.order_total;
    let due = match dispute.deadline() {
        Some((DeadlineKind::SellerResponse, due)) => due,
        _ => return Err(not_running(dispute, DeadlineKind::SellerResponse)),
    };
    if now < due {
        return Err(not_due(DeadlineKind::SellerResponse, due, now));
    }
    let offer = dispute
        .pending_offer()
        .filter(|o| o.made_by.role == Role::Buyer)
        .cloned()
        .ok_or_else(|| not_running(dispute, DeadlineKind::SellerResponse))?;
    let mut t = Transition::new(dispute, Actor::system(), now);
    if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer.id) {
        o.status = OfferStatus::Accepted;
        o.answered_at = Some(now);
    }
    let days = policy.seller_response_window(dispute.reason).num_days();
    t.push(
        EventType::SellerResponseExpired,
        format!("the seller did not answer by {}", fmt_ts(due)),
        EventPayload::None,
    );
    let (ruling, amount, return_required) = offer.resolution.as_outcome(&total);
    t.settle(
        Settlement {
            ruling,
            amount,
            return_required,
            postage_payer: None,
            rationale: format!(
                "seller silent for {days} days: the buyer's request (offer {}) is granted",
                offer.number
            ),
            decided_by: Actor::system(),
            source: OutcomeSource::SellerSilent,
            accepted_offer: Some(offer.id),
        },
        policy,
    )?;
    Ok(t.finish())
}

/// The authorised return was not shipped by its deadline: closed for the seller, and the
/// refunds service is told to cancel the refund held for the return.
pub(super) fn return_ship_by_expired(
    dispute: &Dispute,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let due = match dispute.deadline() {
        Some((DeadlineKind::ReturnShipBy, due)) => due,
        _ => return Err(not_running(dispute, DeadlineKind::ReturnShipBy)),
    };
    if now < due {
        return Err(not_due(DeadlineKind::ReturnShipBy, due, now));
    }
    let mut t = Transition::new(dispute, Actor::system(), now);
    // The refund requested at authorisation is released only on a passed inspection,
    // which can no longer happen: the payload tells refunds to cancel it.
    t.drop_held_refund();
    t.push(
        EventType::ReturnShipByExpired,
        format!("the return was not shipped by {}", fmt_ts(due)),
        EventPayload::ReturnNotShipped(ReturnNotShipped { ship_by: due }),
    );
    t.settle(
        Settlement {
            ruling: RulingOutcome::SellerFavor,
            amount: None,
            return_required: false,
            postage_payer: None,
            rationale: format!(
                "the return was not handed to a carrier by {}: closed for the seller",
                fmt_ts(due)
            ),
            decided_by: Actor::system(),
            source: OutcomeSource::ReturnNotShipped,
            accepted_offer: None,
        },
        policy,
    )?;
    Ok(t.finish())
}

/// No deadline of this kind runs in the dispute's current state.
fn not_running(dispute: &Dispute, kind: DeadlineKind) -> DomainError {
    DomainError::rule(
        "deadline_not_running",
        format!(
            "no {kind} deadline runs in state {} (awaiting {})",
            dispute.state, dispute.awaiting
        ),
    )
}

/// The deadline fired before its due time.
fn not_due(kind: DeadlineKind, due: Timestamp, now: Timestamp) -> DomainError {
    DomainError::rule(
        "deadline_not_due",
        format!("{kind} is due at {}; now is {}", fmt_ts(due), fmt_ts(now)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispute::{ResolutionType, RulingOutcome};
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

    #[test]
    fn seller_silence_past_the_window_grants_the_buyers_request() {
        let policy = Policy::classic();
        let d = damaged();
        assert_eq!(d.deadline(), Some((DeadlineKind::SellerResponse, at(25))));
        assert_eq!(
            rule_of(apply(&d, Command::SellerResponseExpired, at(24), &policy).expect_err("early")),
            "deadline_not_due"
        );
        let (d, events) =
            apply(&d, Command::SellerResponseExpired, at(25), &policy).expect("expired");
        assert_eq!(d.state, DisputeState::Resolved);
        let outcome = d.outcome.expect("outcome");
        assert_eq!(
            (outcome.ruling, outcome.source, outcome.amount),
            (
                RulingOutcome::RefundFull,
                OutcomeSource::SellerSilent,
                Some(usd(8000))
            )
        );
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::SellerResponseExpired,
                EventType::RefundRequested,
                EventType::Resolved
            ]
        );
    }

    #[test]
    fn a_return_not_shipped_by_its_deadline_closes_for_the_seller() {
        let policy = Policy::classic();
        let d = damaged();
        let (d, _) = apply(
            &d,
            offer(seller(), ResolutionType::ReturnAndRefund, None),
            at(11),
            &policy,
        )
        .expect("counter");
        let id = d.offers[1].id;
        let (d, _) = apply(
            &d,
            Command::AcceptOffer {
                by: buyer(),
                offer_id: id,
            },
            at(12),
            &policy,
        )
        .expect("accept");
        assert_eq!(d.state, DisputeState::AwaitingReturn);
        assert!(
            d.refund_requested.is_positive(),
            "a refund is held for the return"
        );
        let ship_by = d.respond_by.expect("ship-by deadline");
        let (d, events) =
            apply(&d, Command::ReturnShipByExpired, at(19), &policy).expect("expired");
        // Refunds is told to cancel the held refund, which then no longer counts as paid.
        let told: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.payload {
                EventPayload::ReturnNotShipped(r) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(told, [ReturnNotShipped { ship_by }]);
        assert!(!d.refund_requested.is_positive());
        let outcome = d.outcome.expect("outcome");
        assert_eq!(
            (d.state, outcome.ruling, outcome.source),
            (
                DisputeState::Resolved,
                RulingOutcome::SellerFavor,
                OutcomeSource::ReturnNotShipped
            )
        );
    }
}
