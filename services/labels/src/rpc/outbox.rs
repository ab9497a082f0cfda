//! The messages a label's journey sends, written to the outbox in the transaction of the
//! change that causes them: return events for disputes, return progress for refunds.

use returns_domain::ids::MessageId;
use returns_domain::time::Timestamp;
use returns_platform::ApiError;
use returns_platform::outbox::{OutboxMessage, enqueue};
use returns_platform::trace_context::current_traceparent;
use returns_platform::write_batch::WriteBatch;
use returns_proto::convert::{WireEnum, micros_to_proto, timestamp_to_proto};
use returns_proto::disputes::v1 as disputes_pb;
use returns_proto::refunds::v1 as refunds_pb;
use returns_proto::rpcs;

use crate::store::labels::LabelRow;

/// Tells disputes what happened to the return (`RecordReturnEvent`): a write pushed into
/// `batch`, which goes to the database with the change's other writes.
pub fn return_event(
    batch: &mut WriteBatch,
    label: &LabelRow,
    kind: disputes_pb::ReturnEventType,
    occurred_at: Timestamp,
    notes: &str,
) -> Result<(), ApiError> {
    let id = MessageId::new();
    let request = disputes_pb::RecordReturnEventRequest {
        message_id: id.to_string(),
        order_id: label.order_id.to_string(),
        dispute_id: label.dispute_id.clone(),
        label_id: label.label_id.to_string(),
        r#type: kind.into(),
        occurred_at: Some(timestamp_to_proto(occurred_at)),
        tracking_number: label.tracking_number.clone(),
        ship_by: micros_to_proto(label.ship_by),
        postage: Some(label.postage().into()),
        paid_by: label.paid_by.to_wire(),
        free_return: label.is_free_return(),
        notes: notes.to_owned(),
    };
    let message = OutboxMessage::new(rpcs::disputes::RECORD_RETURN_EVENT, &request);
    enqueue(batch, &id, &message, current_traceparent().as_deref())
}

/// Tells refunds how far the return got (`RecordReturnProgress`), with any deductions: a
/// write pushed into `batch`.
pub fn return_progress(
    batch: &mut WriteBatch,
    label: &LabelRow,
    progress: refunds_pb::ReturnProgress,
    occurred_at: Timestamp,
    notes: &str,
    deductions: Vec<refunds_pb::Deduction>,
) -> Result<(), ApiError> {
    let id = MessageId::new();
    let request = refunds_pb::RecordReturnProgressRequest {
        request_id: id.to_string(),
        message_id: id.to_string(),
        order_id: label.order_id.to_string(),
        return_label_id: label.label_id.to_string(),
        dispute_id: label.dispute_id.clone(),
        progress: progress.into(),
        occurred_at: Some(timestamp_to_proto(occurred_at)),
        notes: notes.to_owned(),
        deductions,
    };
    let message = OutboxMessage::new(rpcs::refunds::RECORD_RETURN_PROGRESS, &request);
    enqueue(batch, &id, &message, current_traceparent().as_deref())
}

/// One step of the journey both services follow (accepted, delivered, inspected): refunds
/// hears the progress and disputes the event, at the same instant with the same notes.
pub fn journey_step(
    batch: &mut WriteBatch,
    label: &LabelRow,
    progress: refunds_pb::ReturnProgress,
    event: disputes_pb::ReturnEventType,
    occurred_at: Timestamp,
    notes: &str,
) -> Result<(), ApiError> {
    return_progress(batch, label, progress, occurred_at, notes, Vec::new())?;
    return_event(batch, label, event, occurred_at, notes)
}
