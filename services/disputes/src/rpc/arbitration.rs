//! Arbitration: the buyer escalates a dispute to review (EscalateDispute), an arbiter rules
//! on it (RuleOnDispute) and may first ask for the guidelines' recommendation
//! (RecommendRuling, a read).

use returns_domain::dispute::{PostagePayer, RulingOutcome};
use returns_domain::ids::DisputeId;
use returns_domain::money::FxTable;
use returns_domain::negotiation as n;
use returns_platform::mutation::RequestKey;
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, wire};

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn escalate_dispute(
    service: &DisputeGrpc,
    request: Request<pb::EscalateDisputeRequest>,
) -> Result<pb::EscalateDisputeResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let key = RequestKey::new("EscalateDispute", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |_, by| {
                Ok(n::Command::Escalate {
                    by,
                    reason: req.reason.clone(),
                })
            },
            |d, _| pb::EscalateDisputeResponse {
                dispute: Some(wire::dispute(d)),
            },
        )
        .await
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn rule_on_dispute(
    service: &DisputeGrpc,
    request: Request<pb::RuleOnDisputeRequest>,
) -> Result<pb::RuleOnDisputeResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let ruling = n::Ruling {
        outcome: convert::enum_value::<RulingOutcome>("outcome", req.outcome)?,
        amount: convert::optional_money("amount", req.amount.as_ref())?,
        return_required: req.return_required,
        rationale: req.rationale.clone(),
        postage_payer: req
            .postage_payer
            .map(|payer| convert::enum_value::<PostagePayer>("postage_payer", payer))
            .transpose()?,
    };
    let key = RequestKey::new("RuleOnDispute", &caller, request_id.as_str(), &req);
    service
        .command(
            &key,
            &caller,
            &dispute_id,
            |_, by| {
                Ok(n::Command::Rule {
                    by,
                    ruling: ruling.clone(),
                })
            },
            |d, _| pb::RuleOnDisputeResponse {
                dispute: Some(wire::dispute(d)),
            },
        )
        .await
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn recommend_ruling(
    service: &DisputeGrpc,
    request: Request<pb::RecommendRulingRequest>,
) -> Result<pb::RecommendRulingResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
    let dispute_id = convert::id::<DisputeId>("dispute_id", &req.dispute_id)?;
    let dispute = service.visible_dispute(&caller, &dispute_id).await?;
    let recommendation =
        n::recommend_ruling(&dispute, &service.context.policy, &FxTable::default())?;
    Ok(pb::RecommendRulingResponse {
        recommendation: Some(wire::recommendation(recommendation)),
    })
}
