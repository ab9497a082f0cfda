//! Arbitration: the buyer escalates a dispute to review (EscalateDispute), an arbiter rules
//! on it (RuleOnDispute) and may first ask for the guidelines' recommendation
//! (RecommendRuling, a read).

use returns_domain::dispute::{PostagePayer, RulingOutcome};
use returns_domain::money::FxTable;
use returns_domain::negotiation as n;
use returns_platform::ApiError;
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, wire};

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn escalate_dispute(
    service: &DisputeGrpc,
    request: Request<pb::EscalateDisputeRequest>,
) -> Result<pb::EscalateDisputeResponse, ApiError> {
    service
        .change(
            request,
            |req, _, by| {
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

fn ruling(req: &pb::RuleOnDisputeRequest) -> Result<n::Ruling, ApiError> {
    Ok(n::Ruling {
        outcome: convert::enum_value::<RulingOutcome>("outcome", req.outcome)?,
        amount: convert::optional_money("amount", req.amount.as_ref())?,
        return_required: req.return_required,
        rationale: req.rationale.clone(),
        postage_payer: req
            .postage_payer
            .map(|payer| convert::enum_value::<PostagePayer>("postage_payer", payer))
            .transpose()?,
    })
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn rule_on_dispute(
    service: &DisputeGrpc,
    request: Request<pb::RuleOnDisputeRequest>,
) -> Result<pb::RuleOnDisputeResponse, ApiError> {
    let ruling = ruling(request.get_ref())?;
    service
        .change(
            request,
            |_, _, by| {
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
    let (_, _, dispute) = service.read(request).await?;
    let recommendation =
        n::recommend_ruling(&dispute, &service.context.policy, &FxTable::default())?;
    Ok(pb::RecommendRulingResponse {
        recommendation: Some(wire::recommendation(recommendation)),
    })
}
