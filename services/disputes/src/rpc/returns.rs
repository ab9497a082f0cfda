//! Return progress relayed from the labels service (RecordReturnEvent): label created,
//! accepted by the carrier, delivered, inspected. A relayed message is applied once: its
//! message id is both the idempotency key and the inbox entry, written in the transaction of
//! the change.

use returns_domain::ids::{DisputeId, RequestId};
use returns_domain::negotiation::{self as n, MAX_TEXT_LEN, ReturnEventType};
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::outbox::accept_once;
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, can_see, dispute_not_found, wire};
use crate::store;

/// Where relayed return progress comes from (the inbox records it).
const SOURCE: &str = "labels";

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn record_return_event(
    service: &DisputeGrpc,
    request: Request<pb::RecordReturnEventRequest>,
) -> Result<pb::RecordReturnEventResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    if req.message_id.is_empty() {
        return Err(ApiError::invalid(
            "message_id",
            "is required for relayed messages",
        ));
    }
    let message_id = convert::id::<RequestId>("message_id", &req.message_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let update = n::ReturnUpdate {
        label_id: req.label_id.clone(),
        kind: convert::enum_value::<ReturnEventType>("type", req.r#type)?,
        tracking_number: req.tracking_number.clone(),
        notes: convert::text("notes", req.notes.trim(), MAX_TEXT_LEN)?,
        postage: convert::optional_money("postage", req.postage.as_ref())?,
    };
    let key = RequestKey::new("RecordReturnEvent", &caller, message_id.as_str(), &req);
    let (caller, req, dispute_id, update) = (&caller, &req, &dispute_id, &update);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let (dispute, order) = store::load_dispute_with_order(&mut tx, &service.db, dispute_id)
            .await?
            .filter(|(d, _)| can_see(caller, d))
            .filter(|(d, _)| req.order_id.is_empty() || d.order_id.as_str() == req.order_id)
            .ok_or_else(|| dispute_not_found(dispute_id))?;
        let now = service.now();
        if !accept_once(&mut tx, &req.message_id, SOURCE, now).await? {
            // Received before its response was recorded here: answer with the current
            // state, change nothing.
            let response = pb::RecordReturnEventResponse {
                dispute: Some(wire::dispute(&dispute)),
            };
            return Ok((tx, response));
        }
        let command = n::Command::ReturnEvent {
            update: update.clone(),
        };
        let (next, history) = n::apply(&dispute, command, now, &service.context.policy)?;
        store::write_transition(
            tx.writes(),
            dispute.version,
            &next,
            &history,
            &order.facts,
            now,
        )?;
        let response = pb::RecordReturnEventResponse {
            dispute: Some(wire::dispute(&next)),
        };
        Ok((tx, response))
    })
    .await
}
