//! Opening a dispute: the buyer's request is checked against the order's facts, the
//! protection window and the dispute reason's evidence needs; offer one is the buyer's
//! request, the order's protection clock pauses, and a free return within its window is
//! authorised at once.

use super::events::{DisputeEvent, EventPayload};
use super::evidence::{Evidence, NewEvidence, check_opening_evidence};
use super::free_return::{authorise_free_return, free_return_applies};
use super::order::OrderFacts;
use super::parties::Actor;
use super::record::{Dispute, Offer};
use super::resolution::Resolution;
use super::text::{fmt_ts, required_text};
use super::vocabulary::{Awaiting, DisputeState, EventType, OfferStatus};
use super::window::{ProtectionClock, time_left_to_open};
use crate::dispute::{DisputeKind, DisputeReason, ResolutionType, Role};
use crate::error::DomainError;
use crate::ids::{DisputeId, EventId, EvidenceId, OfferId};
use crate::money::Money;
use crate::policy::Policy;
use crate::time::Timestamp;

/// What the buyer asks for when opening a dispute, as received (validated by `open_dispute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub kind: DisputeKind,
    pub reason: DisputeReason,
    pub resolution_type: ResolutionType,
    pub amount: Option<Money>,
    pub description: String,
    pub evidence: Vec<NewEvidence>,
}

/// What the store knows about the order's other disputes and the buyer's free returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpeningContext {
    /// An active dispute on the same order, if any.
    pub active_dispute: Option<(DisputeId, DisputeState)>,
    /// Whether a dispute on the order already ended with an outcome.
    pub resolved_before: bool,
    /// Free returns this buyer was authorised this calendar month.
    pub free_returns_this_month: u32,
}

/// The ids the service mints for a new dispute (the domain stays deterministic).
#[derive(Debug, Clone)]
pub struct NewIds {
    pub dispute: DisputeId,
    pub offer: OfferId,
    pub evidence: Vec<EvidenceId>,
    pub events: Vec<EventId>,
}

impl NewIds {
    /// Enough fresh ids for an opening with `evidence` pieces.
    pub fn fresh(evidence: usize) -> Self {
        NewIds {
            dispute: DisputeId::new(),
            offer: OfferId::new(),
            evidence: (0..evidence).map(|_| EvidenceId::new()).collect(),
            events: (0..evidence + 4).map(|_| EventId::new()).collect(),
        }
    }
}

/// A dispute just opened, with its history and the order's paused clock.
#[derive(Debug, Clone)]
pub struct Opened {
    pub dispute: Dispute,
    pub events: Vec<DisputeEvent>,
    pub clock: ProtectionClock,
}

/// Checks every opening rule against the recorded facts and opens the dispute: offer one is
/// the buyer's request, the protection clock pauses, and a free return within its window is
/// authorised at once. `buyer` must be the caller (ownership is checked here too).
// Every argument is a distinct input the rules read; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn open_dispute(
    order: &OrderFacts,
    clock: &ProtectionClock,
    context: &OpeningContext,
    buyer: &Actor,
    request: OpenRequest,
    ids: NewIds,
    now: Timestamp,
    policy: &Policy,
) -> Result<Opened, DomainError> {
    // Input shape first: these are INVALID_ARGUMENT whatever the order's state.
    let description = required_text("description", &request.description)?;
    let mut resolution = Resolution::parse(
        request.resolution_type,
        request.amount,
        &order.total,
        "requested_resolution",
    )?;
    if !request.resolution_type.is_openable() {
        return Err(DomainError::validation(
            "requested_resolution.type",
            "ask for a return through kind RETURN_AND_REFUND; the request is FULL_REFUND, PARTIAL_REFUND or REPLACEMENT",
        ));
    }
    check_opening_evidence(request.reason, &request.evidence)?;

    // Then the order's facts and the protection window.
    if buyer.role != Role::Buyer || buyer.id != order.buyer_id.as_str() {
        return Err(DomainError::rule(
            "not_the_buyers_order",
            format!("order {} was not bought by {}", order.order_id, buyer.id),
        ));
    }
    if let Some(at) = order.cancelled_at {
        return Err(DomainError::rule(
            "order_cancelled",
            format!("order {} was cancelled at {}", order.order_id, fmt_ts(at)),
        ));
    }
    if let Some((id, state)) = context.active_dispute {
        return Err(DomainError::rule(
            "one_active_dispute_per_order",
            format!(
                "order {} already has dispute {id} in state {state}",
                order.order_id
            ),
        ));
    }
    if context.resolved_before {
        return Err(DomainError::rule(
            "order_already_resolved",
            format!(
                "a dispute on order {} already ended with an outcome",
                order.order_id
            ),
        ));
    }
    let time_left = time_left_to_open(order, clock, now, policy)?;

    // A return-and-refund dispute asks for the return in offer one.
    if request.kind == DisputeKind::ReturnAndRefund
        && matches!(
            resolution.kind,
            ResolutionType::FullRefund | ResolutionType::PartialRefund
        )
    {
        resolution = Resolution {
            kind: ResolutionType::ReturnAndRefund,
            amount: resolution.amount,
        };
    }

    let mut event_ids = ids.events.into_iter();
    let mut next_event_id = move || event_ids.next().unwrap_or_else(EventId::new);
    let evidence: Vec<Evidence> = request
        .evidence
        .into_iter()
        .zip(
            ids.evidence
                .into_iter()
                .chain(std::iter::repeat_with(EvidenceId::new)),
        )
        .map(|(e, id)| e.into_evidence(id, buyer.clone(), now))
        .collect();
    let offer = Offer {
        id: ids.offer,
        number: 1,
        made_by: buyer.clone(),
        resolution,
        note: description.clone(),
        status: OfferStatus::Pending,
        created_at: now,
        answered_at: None,
        rejection_reason: String::new(),
    };
    let mut dispute = Dispute {
        id: ids.dispute,
        order_id: order.order_id.clone(),
        buyer_id: order.buyer_id.clone(),
        seller_id: order.seller_id.clone(),
        kind: request.kind,
        reason: request.reason,
        description,
        requested: resolution,
        state: DisputeState::Open,
        awaiting: Awaiting::Seller,
        respond_by: Some(now + policy.seller_response_window(request.reason)),
        offers: vec![offer.clone()],
        evidence: evidence.clone(),
        message_count: 0,
        outcome: None,
        order_total: order.total,
        created_at: now,
        updated_at: now,
        escalated_at: None,
        closed_at: None,
        return_label_id: None,
        return_shipped: false,
        return_delivered: false,
        return_postage: None,
        protection_time_left: time_left,
        reopened: clock.withdrawals > 0,
        seller_contested: false,
        free_return: order.free_return,
        refund_requested: Money::zero(order.total.currency),
        version: 1,
    };
    let mut events = vec![DisputeEvent {
        id: next_event_id(),
        kind: EventType::Opened,
        actor: buyer.clone(),
        at: now,
        from: None,
        to: DisputeState::Open,
        note: format!("{} {}", request.kind, request.reason),
        payload: EventPayload::Offer(offer),
    }];
    for e in evidence {
        events.push(DisputeEvent {
            id: next_event_id(),
            kind: EventType::EvidenceAdded,
            actor: buyer.clone(),
            at: now,
            from: Some(DisputeState::Open),
            to: DisputeState::Open,
            note: String::new(),
            payload: EventPayload::Evidence(e),
        });
    }

    if free_return_applies(order, request.kind, &resolution, context, now, policy) {
        let (next, more) = authorise_free_return(&dispute, buyer, now, policy)?;
        dispute = next;
        for mut e in more {
            e.id = next_event_id();
            events.push(e);
        }
    }

    Ok(Opened {
        dispute,
        events,
        clock: ProtectionClock {
            paused_time_left: Some(time_left),
            resumed_closes_at: None,
            withdrawals: clock.withdrawals,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::ShippingCarrier;
    use crate::dispute::{DisputeReason, ResolutionType, Role};
    use crate::error::DomainError;
    use crate::ids::DisputeId;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

    #[test]
    fn bad_input_is_a_validation_error_naming_the_field() {
        let o = order(ShippingCarrier::Dhl);
        let mut req = request(DisputeReason::Damaged, vec![photo()]);
        req.description = "  ".into();
        assert!(
            matches!(open_at(&o, req, at(10)), Err(DomainError::Validation { field, .. }) if field == "description")
        );
        let mut req = request(DisputeReason::Damaged, vec![photo()]);
        req.resolution_type = ResolutionType::PartialRefund;
        req.amount = Some(usd(8001));
        assert!(
            matches!(open_at(&o, req, at(10)), Err(DomainError::Validation { field, reason }) if field == "requested_resolution.amount" && reason.contains("USD 80.00"))
        );
        let mut bad = photo();
        bad.content_type = "application/x-msdownload".into();
        assert!(
            matches!(open_at(&o, request(DisputeReason::Damaged, vec![bad]), at(10)), Err(DomainError::Validation { field, .. }) if field == "evidence[0].content_type")
        );
        let mut big = photo();
        big.size_bytes = MAX_EVIDENCE_BYTES + 1;
        assert!(
            matches!(open_at(&o, request(DisputeReason::Damaged, vec![big]), at(10)), Err(DomainError::Validation { field, .. }) if field == "evidence[0].size_bytes")
        );
    }

    #[test]
    fn only_the_buyer_of_the_order_may_open_and_only_once_at_a_time() {
        let o = order(ShippingCarrier::Dhl);
        let policy = Policy::classic();
        let err = open_dispute(
            &o,
            &ProtectionClock::default(),
            &OpeningContext::default(),
            &Actor::new("b-2", Role::Buyer),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(10),
            &policy,
        )
        .expect_err("not theirs");
        assert_eq!(rule_of(err), "not_the_buyers_order");
        let context = OpeningContext {
            active_dispute: Some((DisputeId::new(), DisputeState::Negotiating)),
            ..Default::default()
        };
        let err = open_dispute(
            &o,
            &ProtectionClock::default(),
            &context,
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(10),
            &policy,
        )
        .expect_err("second");
        assert_eq!(rule_of(err), "one_active_dispute_per_order");
    }
}
