//! The outbox messages a change of this service causes, written in its transaction: refund
//! requests and NOT_SHIPPED notices for the refunds service, return authorisations for the
//! labels service (request_id = message_id = outbox id, so the receiver deduplicates by it).

use returns_domain::ids::MessageId;
use returns_domain::money::Money;
use returns_domain::negotiation::{self as n, EventPayload, RefundRelease};
use returns_domain::refund::{RefundReason, ReturnProgress};
use returns_domain::time::Timestamp;
use returns_platform::ApiError;
use returns_platform::outbox::{OutboxMessage, enqueue};
use returns_platform::trace_context::current_traceparent;
use returns_platform::write_batch::WriteBatch;
use returns_proto::convert::{WireEnum, timestamp_to_proto};
use returns_proto::labels::v1 as labels;
use returns_proto::refunds::v1 as refunds;
use returns_proto::rpcs;

/// Adds one message to the change's writes; the delivery continues the trace of the request
/// that caused it.
fn send(
    batch: &mut WriteBatch,
    message_id: &MessageId,
    message: OutboxMessage,
) -> Result<(), ApiError> {
    let traceparent = current_traceparent();
    enqueue(batch, message_id, &message, traceparent.as_deref())
}

/// Adds the messages `history` asks for; returns whether there was any.
pub(super) fn enqueue_effects(
    batch: &mut WriteBatch,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
) -> Result<bool, ApiError> {
    let mut wrote = false;
    for event in history {
        match &event.payload {
            EventPayload::Refund(refund) => {
                enqueue_refund(
                    batch,
                    order,
                    Some(dispute),
                    refund.amount,
                    RefundReason::DisputeResolved,
                    refund.release,
                    event.note.clone(),
                )?;
            }
            EventPayload::ReturnAuthorisation(authorisation) => {
                enqueue_return_authorisation(batch, dispute, order, authorisation)?;
            }
            EventPayload::ReturnNotShipped(not_shipped) => {
                enqueue_not_shipped(batch, dispute, not_shipped.ship_by)?;
            }
            _ => continue,
        }
        wrote = true;
    }
    Ok(wrote)
}

/// Adds a `CreateRefund` for the refunds service.
pub fn enqueue_refund(
    batch: &mut WriteBatch,
    order: &n::OrderFacts,
    dispute: Option<&n::Dispute>,
    amount: Money,
    reason: RefundReason,
    release: RefundRelease,
    note: String,
) -> Result<(), ApiError> {
    let message_id = MessageId::new();
    let request = refunds::CreateRefundRequest {
        request_id: message_id.to_string(),
        message_id: message_id.to_string(),
        order_id: order.order_id.to_string(),
        dispute_id: dispute.map(|d| d.id.to_string()).unwrap_or_default(),
        amount: Some(amount.into()),
        reason: reason.to_wire(),
        release: release.to_wire(),
        return_label_id: dispute
            .and_then(|d| d.return_label_id.clone())
            .unwrap_or_default(),
        deductions: Vec::new(),
        note,
    };
    let message = OutboxMessage::new(rpcs::refunds::CREATE_REFUND, &request);
    send(batch, &message_id, message)
}

/// Adds an `AuthoriseReturn` for the labels service.
fn enqueue_return_authorisation(
    batch: &mut WriteBatch,
    dispute: &n::Dispute,
    order: &n::OrderFacts,
    authorisation: &n::ReturnAuthorisation,
) -> Result<(), ApiError> {
    let message_id = MessageId::new();
    let request = labels::AuthoriseReturnRequest {
        message_id: message_id.to_string(),
        order_id: order.order_id.to_string(),
        dispute_id: dispute.id.to_string(),
        buyer_id: order.buyer_id.to_string(),
        seller_id: order.seller_id.to_string(),
        destination_country: order.destination_country.clone(),
        item_value: Some(authorisation.item_value.into()),
        delivered_at: order.delivered_at.map(timestamp_to_proto),
        free_return: authorisation.free_return,
        postage_payer: authorisation.postage_payer.to_wire(),
        ship_by: Some(timestamp_to_proto(authorisation.ship_by)),
        reason: dispute.reason.to_wire(),
        return_to: None,
    };
    let message = OutboxMessage::new(rpcs::labels::AUTHORISE_RETURN, &request);
    send(batch, &message_id, message)
}

/// Adds a `RecordReturnProgress` NOT_SHIPPED for the refunds service, so it cancels the
/// refund held for an inspection that will never happen. It names the label when one was
/// created, and refunds not tied to a label match too.
fn enqueue_not_shipped(
    batch: &mut WriteBatch,
    dispute: &n::Dispute,
    ship_by: Timestamp,
) -> Result<(), ApiError> {
    let message_id = MessageId::new();
    let request = refunds::RecordReturnProgressRequest {
        request_id: message_id.to_string(),
        message_id: message_id.to_string(),
        order_id: dispute.order_id.to_string(),
        return_label_id: dispute.return_label_id.clone().unwrap_or_default(),
        dispute_id: dispute.id.to_string(),
        progress: ReturnProgress::NotShipped.to_wire(),
        occurred_at: Some(timestamp_to_proto(ship_by)),
        notes: format!("return not shipped by {}", n::fmt_ts(ship_by)),
        deductions: Vec::new(),
    };
    let message = OutboxMessage::new(rpcs::refunds::RECORD_RETURN_PROGRESS, &request);
    send(batch, &message_id, message)
}
