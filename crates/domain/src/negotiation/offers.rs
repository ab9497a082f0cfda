//! The negotiation: either party makes an offer (superseding the pending one), and the other
//! party accepts it, which settles the dispute, or rejects it, which leaves the buyer to
//! counter, escalate or withdraw.

use super::events::{DisputeEvent, EventPayload};
use super::parties::{Actor, Party, party_of};
use super::record::{Dispute, Offer};
use super::resolution::Resolution;
use super::text::{optional_text, required_text};
use super::transition::{Settlement, Transition};
use super::vocabulary::{Awaiting, DisputeState, EventType, OfferStatus, OutcomeSource};
use crate::dispute::{ResolutionType, Role};
use crate::error::DomainError;
use crate::ids::OfferId;
use crate::money::Money;
use crate::policy::Policy;
use crate::time::Timestamp;

/// A new offer from either party; a seller's offer contests the request and hands the turn to
/// the buyer, a buyer's counter in negotiation gives the seller a fresh response window.
// The command's own fields plus the dispute, the time and the policy; bundling them would
// only rename `Command::MakeOffer`.
#[allow(clippy::too_many_arguments)]
pub(super) fn make_offer(
    dispute: &Dispute,
    by: Actor,
    offer_id: OfferId,
    kind: ResolutionType,
    amount: Option<Money>,
    note: String,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let total = dispute.order_total;
    let party = party_of(dispute, &by)?;
    let resolution = Resolution::parse(kind, amount, &total, "offer")?;
    let note = optional_text("note", &note)?;
    let mut t = Transition::new(dispute, by.clone(), now);
    for offer in &mut t.next.offers {
        if offer.status == OfferStatus::Pending {
            offer.status = OfferStatus::Superseded;
            offer.answered_at = Some(now);
        }
    }
    let offer = Offer {
        id: offer_id,
        number: u32::try_from(dispute.offers.len() + 1).unwrap_or(u32::MAX),
        made_by: by,
        resolution,
        note: note.clone(),
        status: OfferStatus::Pending,
        created_at: now,
        answered_at: None,
        rejection_reason: String::new(),
    };
    t.next.offers.push(offer.clone());
    match party {
        Party::Seller => {
            t.next.state = DisputeState::Negotiating;
            t.next.seller_contested = true;
            t.next.awaiting = Awaiting::Buyer;
            t.next.respond_by = None;
        }
        Party::Buyer => {
            t.next.awaiting = Awaiting::Seller;
            // In OPEN the seller's first window keeps running; a buyer's counter in
            // negotiation gives the seller a fresh window.
            if dispute.state == DisputeState::Negotiating {
                t.next.respond_by = Some(now + policy.seller_response_window(dispute.reason));
            }
        }
    }
    t.push(EventType::OfferMade, note, EventPayload::Offer(offer));
    Ok(t.finish())
}

/// The other party accepts the pending offer: the dispute settles with its resolution.
pub(super) fn accept_offer(
    dispute: &Dispute,
    by: Actor,
    offer_id: OfferId,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let total = dispute.order_total;
    let party = party_of(dispute, &by)?;
    let offer = answerable_offer(dispute, offer_id, party)?.clone();
    let mut t = Transition::new(dispute, by.clone(), now);
    if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer_id) {
        o.status = OfferStatus::Accepted;
        o.answered_at = Some(now);
    }
    let mut accepted = offer.clone();
    accepted.status = OfferStatus::Accepted;
    accepted.answered_at = Some(now);
    t.push(EventType::OfferAccepted, "", EventPayload::Offer(accepted));
    let (ruling, amount, return_required) = offer.resolution.as_outcome(&total);
    t.settle(
        Settlement {
            ruling,
            amount,
            return_required,
            postage_payer: None,
            rationale: format!("offer {} accepted by the {}", offer.number, party.name()),
            decided_by: by,
            source: OutcomeSource::OfferAccepted,
            accepted_offer: Some(offer_id),
        },
        policy,
    )?;
    Ok(t.finish())
}

/// The other party rejects the pending offer, with a reason; a seller's rejection contests
/// the request.
pub(super) fn reject_offer(
    dispute: &Dispute,
    by: Actor,
    offer_id: OfferId,
    reason: String,
    now: Timestamp,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let party = party_of(dispute, &by)?;
    let reason = required_text("reason", &reason)?;
    let offer = answerable_offer(dispute, offer_id, party)?.clone();
    let mut t = Transition::new(dispute, by, now);
    if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer_id) {
        o.status = OfferStatus::Rejected;
        o.answered_at = Some(now);
        o.rejection_reason = reason.clone();
    }
    t.next.state = DisputeState::Negotiating;
    if party == Party::Seller {
        t.next.seller_contested = true;
    }
    // Either way it is the buyer's move: counter, escalate or withdraw.
    t.next.awaiting = Awaiting::Buyer;
    t.next.respond_by = None;
    let mut rejected = offer;
    rejected.status = OfferStatus::Rejected;
    rejected.answered_at = Some(now);
    rejected.rejection_reason = reason.clone();
    t.push(
        EventType::OfferRejected,
        reason,
        EventPayload::Offer(rejected),
    );
    Ok(t.finish())
}

/// The pending offer `offer_id`, made by the other party.
fn answerable_offer(
    dispute: &Dispute,
    offer_id: OfferId,
    party: Party,
) -> Result<&Offer, DomainError> {
    let offer = dispute
        .offers
        .iter()
        .find(|o| o.id == offer_id)
        .ok_or_else(|| {
            DomainError::validation("offer_id", format!("no offer {offer_id} on this dispute"))
        })?;
    if offer.status != OfferStatus::Pending {
        return Err(DomainError::rule(
            "offer_not_pending",
            format!("offer {} is {}, not PENDING", offer.number, offer.status),
        ));
    }
    let made_by_buyer = offer.made_by.role == Role::Buyer;
    if made_by_buyer == (party == Party::Buyer) {
        return Err(DomainError::rule(
            "own_offer",
            format!(
                "offer {} is the {}'s own; only the other party may answer it",
                offer.number,
                party.name()
            ),
        ));
    }
    Ok(offer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispute::{ResolutionType, Role, RulingOutcome};
    use crate::error::DomainError;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

    #[test]
    fn seller_counter_then_buyer_accepts_resolves_with_a_partial_refund() {
        let policy = Policy::classic();
        let d = damaged();
        let (d, _) = apply(
            &d,
            offer(seller(), ResolutionType::PartialRefund, Some(usd(3000))),
            at(11),
            &policy,
        )
        .expect("counter");
        assert_eq!(
            (d.state, d.awaiting),
            (DisputeState::Negotiating, Awaiting::Buyer)
        );
        assert_eq!(d.offers[0].status, OfferStatus::Superseded);
        let id = d.offers[1].id;
        let (d, events) = apply(
            &d,
            Command::AcceptOffer {
                by: buyer(),
                offer_id: id,
            },
            at(12),
            &policy,
        )
        .expect("accept");
        assert_eq!(d.state, DisputeState::Resolved);
        let outcome = d.outcome.clone().expect("outcome");
        assert_eq!(
            (outcome.ruling, outcome.amount),
            (RulingOutcome::RefundPartial, Some(usd(3000)))
        );
        let refund = events.iter().find_map(|e| match &e.payload {
            EventPayload::Refund(r) => Some(*r),
            _ => None,
        });
        assert_eq!(
            refund,
            Some(RefundRequest {
                amount: usd(3000),
                release: RefundRelease::Immediate
            })
        );
        assert_eq!(d.version, 3);
    }

    #[test]
    fn a_party_cannot_accept_its_own_offer_and_a_reject_needs_a_reason() {
        let policy = Policy::classic();
        let d = damaged();
        let id = d.offers[0].id;
        assert_eq!(
            rule_of(
                apply(
                    &d,
                    Command::AcceptOffer {
                        by: buyer(),
                        offer_id: id
                    },
                    at(11),
                    &policy
                )
                .expect_err("own")
            ),
            "own_offer"
        );
        assert!(
            matches!(apply(&d, Command::RejectOffer { by: seller(), offer_id: id, reason: " ".into() }, at(11), &policy), Err(DomainError::Validation { field, .. }) if field == "reason")
        );
        assert_eq!(
            rule_of(
                apply(
                    &d,
                    Command::AcceptOffer {
                        by: Actor::new("s-2", Role::Seller),
                        offer_id: id
                    },
                    at(11),
                    &policy
                )
                .expect_err("stranger")
            ),
            "not_a_party"
        );
    }
}
