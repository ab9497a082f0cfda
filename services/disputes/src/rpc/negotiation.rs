//! Negotiation between buyer and seller: offers (MakeOffer, AcceptOffer, RejectOffer) and
//! the message thread (SendMessage). Each is one domain command on the dispute.

use returns_domain::dispute::ResolutionType;
use returns_domain::ids::{DisputeId, EvidenceId, OfferId};
use returns_domain::negotiation::{self as n, EventPayload, MAX_TEXT_LEN};
use returns_platform::mutation::RequestKey;
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, wire};

fn evidence_ids(ids: &[String]) -> Result<Vec<EvidenceId>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| Ok(convert::id(&format!("evidence_ids[{i}]"), id)?))
        .collect()
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn make_offer(
    service: &DisputeGrpc,
    request: Request<pb::MakeOfferRequest>,
) -> Result<pb::MakeOfferResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let kind = convert::enum_value::<ResolutionType>("type", req.r#type)?;
    let amount = convert::optional_money("amount", req.amount.as_ref())?;
    let key = RequestKey::new("MakeOffer", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |_, by| {
                Ok(n::Command::MakeOffer {
                    by,
                    offer_id: OfferId::new(),
                    kind,
                    amount,
                    note: req.note.clone(),
                })
            },
            |d, _| pb::MakeOfferResponse {
                dispute: Some(wire::dispute(d)),
                offer: d.offers.last().map(wire::offer),
            },
        )
        .await
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn accept_offer(
    service: &DisputeGrpc,
    request: Request<pb::AcceptOfferRequest>,
) -> Result<pb::AcceptOfferResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let offer_id = convert::id::<OfferId>("offer_id", &req.offer_id)?;
    let key = RequestKey::new("AcceptOffer", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |_, by| Ok(n::Command::AcceptOffer { by, offer_id }),
            |d, _| pb::AcceptOfferResponse {
                dispute: Some(wire::dispute(d)),
            },
        )
        .await
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn reject_offer(
    service: &DisputeGrpc,
    request: Request<pb::RejectOfferRequest>,
) -> Result<pb::RejectOfferResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let offer_id = convert::id::<OfferId>("offer_id", &req.offer_id)?;
    let reason = convert::required_text("reason", &req.reason, MAX_TEXT_LEN)?;
    let evidence_ids = evidence_ids(&req.evidence_ids)?;
    let key = RequestKey::new("RejectOffer", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |d, by| {
                // The evidence a rejection cites must be on this dispute.
                for (i, id) in evidence_ids.iter().enumerate() {
                    if !d.evidence.iter().any(|e| e.id == *id) {
                        return Err(ApiError::invalid(
                            format!("evidence_ids[{i}]"),
                            format!("no evidence {id} on this dispute"),
                        ));
                    }
                }
                Ok(n::Command::RejectOffer {
                    by,
                    offer_id,
                    reason: reason.clone(),
                })
            },
            |d, _| pb::RejectOfferResponse {
                dispute: Some(wire::dispute(d)),
            },
        )
        .await
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn send_message(
    service: &DisputeGrpc,
    request: Request<pb::SendMessageRequest>,
) -> Result<pb::SendMessageResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let evidence_ids = evidence_ids(&req.evidence_ids)?;
    let key = RequestKey::new("SendMessage", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |_, by| {
                Ok(n::Command::SendMessage {
                    by,
                    body: req.body.clone(),
                    evidence_ids: evidence_ids.clone(),
                })
            },
            |d, history| pb::SendMessageResponse {
                message: history.iter().find_map(|e| match &e.payload {
                    EventPayload::Message(m) => Some(wire::message(m, &d.id.to_string())),
                    _ => None,
                }),
            },
        )
        .await
}
