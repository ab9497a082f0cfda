//! Evidence on a dispute: described by reference (AddEvidence) or uploaded as a stream
//! (UploadEvidence: metadata first, then chunks; everything but the bytes is checked before
//! any byte is stored, and the size limit is enforced as the bytes arrive). A broken stream
//! answers with the stream's own status.

use returns_domain::DomainError;
use returns_domain::ids::{DisputeId, EvidenceId, RequestId};
use returns_domain::negotiation::{self as n, EvidenceKind, MAX_TEXT_LEN};
use returns_platform::mutation::RequestKey;
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use sha2::Digest;
use tonic::{Request, Status};

use super::disputes::new_evidence;
use super::{DisputeGrpc, wire};

/// The command adding `evidence` under a fresh id.
fn adding(
    evidence: &n::NewEvidence,
) -> impl Fn(&n::Dispute, n::Actor) -> Result<n::Command, ApiError> + Sync + '_ {
    move |_, by| {
        Ok(n::Command::AddEvidence {
            by,
            evidence_id: EvidenceId::new(),
            evidence: evidence.clone(),
        })
    }
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn add_evidence(
    service: &DisputeGrpc,
    request: Request<pb::AddEvidenceRequest>,
) -> Result<pb::AddEvidenceResponse, ApiError> {
    let evidence = request
        .get_ref()
        .evidence
        .as_ref()
        .ok_or_else(|| convert::FieldError::required("evidence"))?;
    let evidence = new_evidence(evidence, "evidence")?;
    let add = adding(&evidence);
    service
        .change(
            request,
            |_, d, by| add(d, by),
            |d, _| pb::AddEvidenceResponse {
                evidence: d.evidence.last().map(wire::evidence),
                dispute: Some(wire::dispute(d)),
            },
        )
        .await
}

/// An upload's metadata, checked.
struct Upload {
    request_id: RequestId,
    dispute_id: DisputeId,
    kind: EvidenceKind,
    content_type: String,
    file_name: String,
}

/// Everything about the file except its bytes, checked before any byte is stored.
fn upload(metadata: &pb::UploadEvidenceMetadata) -> Result<Upload, ApiError> {
    let request_id = convert::request_id(&metadata.request_id)?;
    let dispute_id = convert::id("dispute_id", &metadata.dispute_id)?;
    let kind = convert::enum_value("metadata.kind", metadata.kind)?;
    let content_type = metadata.content_type.trim().to_ascii_lowercase();
    if !n::EVIDENCE_CONTENT_TYPES.contains(&content_type.as_str()) {
        return Err(ApiError::invalid(
            "metadata.content_type",
            format!(
                "{content_type:?} is not accepted; allowed: {}",
                n::EVIDENCE_CONTENT_TYPES.join(", ")
            ),
        ));
    }
    let file_name = convert::text(
        "metadata.file_name",
        metadata.file_name.trim(),
        MAX_TEXT_LEN,
    )?;
    Ok(Upload {
        request_id,
        dispute_id,
        kind,
        content_type,
        file_name,
    })
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn upload_evidence(
    service: &DisputeGrpc,
    request: Request<tonic::Streaming<pb::UploadEvidenceRequest>>,
) -> Result<pb::UploadEvidenceResponse, Status> {
    use pb::upload_evidence_request::Payload;
    let caller = Caller::of(&request)?;
    let mut stream = request.into_inner();
    let metadata = match stream.message().await? {
        Some(pb::UploadEvidenceRequest {
            payload: Some(Payload::Metadata(metadata)),
        }) => metadata,
        _ => {
            return Err(ApiError::invalid(
                "metadata",
                "the first message of the stream must be the metadata",
            )
            .into());
        }
    };
    tracing::Span::current().record("dispute_id", metadata.dispute_id.as_str());
    let Upload {
        request_id,
        dispute_id,
        kind,
        content_type,
        file_name,
    } = upload(&metadata)?;
    let dispute = service.visible_dispute(&caller, &dispute_id).await?;
    if dispute.state.is_terminal() {
        return Err(ApiError::from(DomainError::illegal_transition(
            dispute.state.code(),
            "add evidence",
            ["OPEN", "NEGOTIATING", "ESCALATED", "AWAITING_RETURN"],
        ))
        .into());
    }
    let limit = usize::try_from(service.evidence.max_bytes()).unwrap_or(usize::MAX);
    let mut hasher = sha2::Sha256::new();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.payload {
            Some(Payload::Chunk(chunk)) => {
                if bytes.len().saturating_add(chunk.len()) > limit {
                    return Err(ApiError::invalid(
                        "chunk",
                        format!("the file is larger than the {limit} bytes allowed"),
                    )
                    .into());
                }
                hasher.update(&chunk);
                bytes.extend_from_slice(&chunk);
            }
            _ => {
                return Err(ApiError::invalid(
                    "metadata",
                    "metadata may only be sent once, as the first message",
                )
                .into());
            }
        }
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid("chunk", "the file is empty").into());
    }
    let size_bytes = i64::try_from(bytes.len()).map_err(ApiError::internal)?;
    let sha256 = hex::encode(hasher.finalize());
    // Content-addressed: a retried upload writes the same object again, harmlessly.
    let uri = service.evidence.put(&dispute.id, &sha256, bytes).await?;
    let new_evidence = n::NewEvidence {
        kind,
        content_type: content_type.clone(),
        size_bytes,
        sha256: sha256.clone(),
        uri: uri.clone(),
        file_name: file_name.clone(),
    };
    // The idempotency fingerprint covers the metadata and the content hash.
    let fingerprint = pb::AddEvidenceRequest {
        request_id: metadata.request_id.clone(),
        dispute_id: metadata.dispute_id.clone(),
        evidence: Some(pb::NewEvidence {
            kind: metadata.kind,
            content_type,
            size_bytes,
            sha256,
            uri,
            file_name,
        }),
    };
    let key = RequestKey::new("UploadEvidence", &caller, request_id.as_str(), &fingerprint);
    let response = service
        .command(&key, &caller, &dispute_id, adding(&new_evidence), |d, _| {
            pb::UploadEvidenceResponse {
                evidence: d.evidence.last().map(wire::evidence),
                dispute: Some(wire::dispute(d)),
            }
        })
        .await?;
    Ok(response)
}
