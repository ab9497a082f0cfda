//! Negotiation between buyer and seller: offers (MakeOffer, AcceptOffer, RejectOffer) and
//! the message thread (SendMessage). Each is one domain command on the dispute.

use returns_domain::dispute::ResolutionType;
use returns_domain::ids::{EvidenceId, OfferId};
use returns_domain::negotiation::{self as n, EventPayload, MAX_TEXT_LEN};
use returns_platform::ApiError;
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
    let req = request.get_ref();
    let kind = convert::enum_value::<ResolutionType>("type", req.r#type)?;
    let amount = convert::optional_money("amount", req.amount.as_ref())?;
    service
        .change(
            request,
            |req, _, by| {
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
    let offer_id = convert::id::<OfferId>("offer_id", &request.get_ref().offer_id)?;
    service
        .change(
            request,
            |_, _, by| Ok(n::Command::AcceptOffer { by, offer_id }),
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
    let req = request.get_ref();
    let offer_id = convert::id::<OfferId>("offer_id", &req.offer_id)?;
    let reason = convert::required_text("reason", &req.reason, MAX_TEXT_LEN)?;
    let evidence_ids = evidence_ids(&req.evidence_ids)?;
    service
        .change(
            request,
            |_, d, by| {
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
    let evidence_ids = evidence_ids(&request.get_ref().evidence_ids)?;
    service
        .change(
            request,
            |req, _, by| {
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
