//! Return progress relayed from the labels service: the label and its postage, the carrier's
//! acceptance and delivery, and the seller's inspection, which resolves the dispute or sends
//! it back to platform review.

use super::events::{DisputeEvent, EventPayload, ReturnUpdate};
use super::parties::Actor;
use super::record::Dispute;
use super::transition::Transition;
use super::vocabulary::{Awaiting, DisputeState, EventType, ReturnEventType};
use crate::error::DomainError;
use crate::policy::Policy;
use crate::time::Timestamp;

/// Records one step of the return; only steps of an awaited return move the dispute.
pub(super) fn record_return_progress(
    dispute: &Dispute,
    update: ReturnUpdate,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    let mut t = Transition::new(dispute, Actor::system(), now);
    if !update.label_id.is_empty() {
        t.next.return_label_id = Some(update.label_id.clone());
    }
    let in_return = dispute.state == DisputeState::AwaitingReturn;
    match update.kind {
        ReturnEventType::LabelCreated if update.postage.is_some() => {
            t.next.return_postage = update.postage;
        }
        ReturnEventType::AcceptedByCarrier if in_return => {
            t.next.return_shipped = true;
            t.next.awaiting = Awaiting::Nobody;
            t.next.respond_by = None;
        }
        ReturnEventType::Delivered if in_return => {
            t.next.return_shipped = true;
            t.next.return_delivered = true;
            t.next.awaiting = Awaiting::Seller;
            t.next.respond_by = None;
        }
        ReturnEventType::InspectionAccepted | ReturnEventType::InspectionDamagedAsClaimed
            if in_return =>
        {
            t.next.return_shipped = true;
            t.next.return_delivered = true;
            t.push(
                EventType::ReturnUpdated,
                update.notes.clone(),
                EventPayload::ReturnUpdate(update),
            );
            t.next.state = DisputeState::Resolved;
            t.next.awaiting = Awaiting::Nobody;
            t.next.respond_by = None;
            t.next.closed_at = Some(now);
            let outcome = t.next.outcome.clone();
            t.push(
                EventType::Resolved,
                "the return passed inspection",
                outcome.map_or(EventPayload::None, EventPayload::Outcome),
            );
            return Ok(t.finish());
        }
        ReturnEventType::InspectionDamagedInTransit | ReturnEventType::InspectionWrongOrEmpty
            if in_return =>
        {
            t.next.return_shipped = true;
            t.next.return_delivered = true;
            // The refunds service cancels the refund held for this inspection when it
            // hears of the failure (from labels), so nothing of it is paid and the next
            // ruling requests a new refund within the full order total.
            t.drop_held_refund();
            t.next.state = DisputeState::Escalated;
            t.next.awaiting = Awaiting::Arbiter;
            t.next.escalated_at = Some(now);
            t.next.respond_by = Some(now + policy.arbiter_ruling_window());
            t.push(
                EventType::ReturnInspectionFailed,
                format!("inspection: {}; back to platform review", update.kind),
                EventPayload::ReturnUpdate(update),
            );
            return Ok(t.finish());
        }
        // Progress outside an awaited return (late scans, voided labels) is kept in
        // the history but changes nothing: the relay must not retry it forever.
        _ => {}
    }
    t.push(
        EventType::ReturnUpdated,
        update.notes.clone(),
        EventPayload::ReturnUpdate(update),
    );
    Ok(t.finish())
}
