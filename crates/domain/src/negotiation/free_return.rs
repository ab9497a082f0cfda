//! Free returns at opening: a return-and-refund dispute on a free-return listing, within the
//! window after delivery and under the buyer's monthly quota, is authorised at once without
//! waiting for the seller, postage paid by the platform.

use super::events::DisputeEvent;
use super::opening::OpeningContext;
use super::order::OrderFacts;
use super::parties::Actor;
use super::record::Dispute;
use super::resolution::Resolution;
use super::transition::{Settlement, Transition};
use super::vocabulary::{OfferStatus, OutcomeSource};
use crate::dispute::{DisputeKind, PostagePayer, ResolutionType};
use crate::error::DomainError;
use crate::policy::Policy;
use crate::time::Timestamp;

/// Whether a dispute opening `now` with `kind` and `resolution` is a free return: the listing
/// offers it, the buyer asks for a return, delivery was within the window and the buyer has
/// free returns left this calendar month.
pub(super) fn free_return_applies(
    order: &OrderFacts,
    kind: DisputeKind,
    resolution: &Resolution,
    context: &OpeningContext,
    now: Timestamp,
    policy: &Policy,
) -> bool {
    let free_return_window_open = order
        .delivered_at
        .is_some_and(|delivered| now <= delivered + policy.free_return_window());
    order.free_return
        && kind == DisputeKind::ReturnAndRefund
        && resolution.kind == ResolutionType::ReturnAndRefund
        && free_return_window_open
        && context.free_returns_this_month < policy.free_returns_per_month()
}

/// Accepts the just-opened dispute's request (offer one) as a free return: the return is
/// authorised and the refund held for its inspection. The dispute keeps version 1, as it is
/// written for the first time.
pub(super) fn authorise_free_return(
    dispute: &Dispute,
    buyer: &Actor,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let request = &dispute.offers[0];
    let (ruling, amount, _) = request.resolution.as_outcome(&dispute.order_total);
    let accepted_offer = Some(request.id);
    let mut transition = Transition::new(dispute, buyer.clone(), now);
    transition.next.offers[0].status = OfferStatus::Accepted;
    transition.next.offers[0].answered_at = Some(now);
    let rationale = format!(
        "free return within {} days of delivery: authorised at once",
        policy.returns.free_return_window_days
    );
    transition.settle(
        Settlement {
            ruling,
            amount,
            return_required: true,
            postage_payer: Some(PostagePayer::Platform),
            rationale,
            decided_by: Actor::system(),
            source: OutcomeSource::FreeReturn,
            accepted_offer,
        },
        policy,
    )?;
    Ok(transition.finish_without_version_bump())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::ShippingCarrier;
    use crate::dispute::{DisputeKind, DisputeReason, PostagePayer};
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;

    #[test]
    fn a_free_return_within_fifteen_days_of_delivery_is_authorised_at_once() {
        let mut o = order(ShippingCarrier::Dhl);
        o.free_return = true;
        let mut req = request(DisputeReason::ChangedMind, vec![]);
        req.kind = DisputeKind::ReturnAndRefund;
        let opened = open_at(&o, req.clone(), at(20)).expect("open");
        assert_eq!(opened.dispute.state, DisputeState::AwaitingReturn);
        let outcome = opened.dispute.outcome.clone().expect("outcome");
        assert_eq!(
            (outcome.source, outcome.postage_payer),
            (OutcomeSource::FreeReturn, Some(PostagePayer::Platform))
        );
        assert!(
            opened
                .events
                .iter()
                .any(|e| e.kind == EventType::ReturnAuthorised)
        );
        // Day 21 is 16 days after delivery: a paid return, waiting for the seller.
        let late = open_at(&o, req, at(21)).expect("open");
        assert_eq!(late.dispute.state, DisputeState::Open);
    }
}
