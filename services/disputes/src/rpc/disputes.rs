//! A dispute's beginning and withdrawal: the buyer opens one on an order (OpenDispute, under
//! the opening rules: the window, one active dispute per order, the free-return quota) and
//! may withdraw it (CancelDispute, which resumes the order's protection clock).

use returns_domain::dispute::{DisputeKind, DisputeReason, ResolutionType};
use returns_domain::ids::OrderId;
use returns_domain::negotiation::{self as n, EvidenceKind};
use returns_platform::mutation::{RequestKey, mutate_on_snapshot};
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Caller};
use returns_proto::convert::{self, timestamp_to_proto};
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, actor_of, wire};
use crate::store;

/// Evidence described by the caller (uploaded elsewhere), checked by the domain when added.
pub(super) fn new_evidence(e: &pb::NewEvidence, field: &str) -> Result<n::NewEvidence, ApiError> {
    Ok(n::NewEvidence {
        kind: convert::enum_value::<EvidenceKind>(&format!("{field}.kind"), e.kind)?,
        content_type: e.content_type.clone(),
        size_bytes: e.size_bytes,
        sha256: e.sha256.clone(),
        uri: e.uri.clone(),
        file_name: e.file_name.clone(),
    })
}

pub fn open_request(req: &pb::OpenDisputeRequest) -> Result<n::OpenRequest, ApiError> {
    let resolution = req
        .requested_resolution
        .as_ref()
        .ok_or_else(|| convert::FieldError::required("requested_resolution"))?;
    Ok(n::OpenRequest {
        kind: convert::enum_value::<DisputeKind>("kind", req.kind)?,
        reason: convert::enum_value::<DisputeReason>("reason", req.reason)?,
        resolution_type: convert::enum_value::<ResolutionType>(
            "requested_resolution.type",
            resolution.r#type,
        )?,
        amount: convert::optional_money("requested_resolution.amount", resolution.amount.as_ref())?,
        description: req.description.clone(),
        evidence: req
            .evidence
            .iter()
            .enumerate()
            .map(|(i, e)| new_evidence(e, &format!("evidence[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

#[tracing::instrument(skip_all, fields(order_id, dispute_id))]
pub(super) async fn open_dispute(
    service: &DisputeGrpc,
    request: Request<pb::OpenDisputeRequest>,
) -> Result<pb::OpenDisputeResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("order_id", req.order_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let order_id = convert::id::<OrderId>("order_id", &req.order_id)?;
    let open = open_request(&req)?;
    let key = RequestKey::new("OpenDispute", &caller, request_id.as_str(), &req);
    let (caller, order_id, open) = (&caller, &order_id, &open);
    // Decided on the order as committed, read outside the writer's turn; the writes check
    // that what it decided on still holds (see `mutate_on_snapshot`).
    let response = mutate_on_snapshot(&service.db, &service.context, &key, || async move {
        let now = service.now();
        let store::OrderForOpening {
            mut order,
            context,
            seen,
        } = store::read_order_for_opening(&service.db, order_id.as_str(), now)
            .await?
            .ok_or_else(|| ApiError::not_found("order", order_id.as_str()))?;
        let opened = n::open_dispute(
            &order.facts,
            &order.clock,
            &context,
            &actor_of(caller),
            open.clone(),
            n::NewIds::fresh(open.evidence.len()),
            now,
            &service.context.policy,
        )?;
        order.clock = opened.clock;
        order.updated_at = now;
        let grants_free_return = opened
            .dispute
            .outcome
            .as_ref()
            .is_some_and(|o| o.source == n::OutcomeSource::FreeReturn);
        let mut writes = WriteBatch::new();
        store::update_order_if_unchanged(&mut writes, seen, &order, grants_free_return)?;
        store::write_opening(
            &mut writes,
            &opened.dispute,
            &opened.events,
            &order.facts,
            now,
        )?;
        let response = pb::OpenDisputeResponse {
            dispute: Some(wire::dispute(&opened.dispute)),
        };
        Ok((writes, response))
    })
    .await?;
    if let Some(d) = &response.dispute {
        tracing::Span::current().record("dispute_id", d.dispute_id.as_str());
    }
    Ok(response)
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn cancel_dispute(
    service: &DisputeGrpc,
    request: Request<pb::CancelDisputeRequest>,
) -> Result<pb::CancelDisputeResponse, ApiError> {
    service
        .change(
            request,
            |req, _, by| {
                Ok(n::Command::Cancel {
                    by,
                    reason: req.reason.clone(),
                })
            },
            |d, _| pb::CancelDisputeResponse {
                dispute: Some(wire::dispute(d)),
                protection_closes_at: d
                    .closed_at
                    .map(|at| timestamp_to_proto(at + d.protection_time_left)),
            },
        )
        .await
}
