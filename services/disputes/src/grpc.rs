//! The gRPC face of the service: validate requests, load rows, call the pure domain
//! (`returns_domain::negotiation`), then write state, history, deadline and outbox messages in
//! one transaction. Every RPC of the contract is implemented (the build has no default stubs).
//!
//! Authorisation beyond the role table: a buyer or seller only ever sees disputes they are a
//! party to; anything else answers NOT_FOUND, exactly as for a dispute that does not exist.

use std::sync::Arc;

use returns_domain::dispute::Role;
use returns_domain::ids::{DisputeId, EvidenceId, OfferId, OrderId, RequestId};
use returns_domain::money::FxTable;
use returns_domain::negotiation::{self as n, DisputeState, EventPayload};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::retry_conflicts;
use returns_platform::idempotency::{record, replay, request_hash};
use returns_platform::outbox::accept_once;
use returns_platform::{ApiError, Caller, Database, SuiteContext};
use returns_proto::disputes::v1 as pb;
use returns_proto::disputes::v1::dispute_service_server::DisputeService;
use returns_proto::refunds::v1 as refunds;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::deadlines::WorkerGuard;
use crate::evidence::EvidenceStore;
use crate::store::{self, OrderRecord};

/// Default and largest page sizes of the list RPCs.
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 200;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct DisputeGrpc {
    context: SuiteContext,
    db: Database,
    evidence: EvidenceStore,
    /// Keeps the deadline worker alive exactly as long as the service.
    _worker: Option<Arc<WorkerGuard>>,
}

impl DisputeGrpc {
    pub fn new(
        context: SuiteContext,
        db: Database,
        evidence: EvidenceStore,
        worker: Option<Arc<WorkerGuard>>,
    ) -> Self {
        DisputeGrpc {
            context,
            db,
            evidence,
            _worker: worker,
        }
    }

    fn now(&self) -> Timestamp {
        self.context.clock.now()
    }
}

fn actor_of(caller: &Caller) -> n::Actor {
    n::Actor::new(caller.id.clone(), caller.role)
}

/// Parties see their own disputes; arbiters and platform services see all.
fn can_see(caller: &Caller, dispute: &n::Dispute) -> bool {
    match caller.role {
        Role::Arbiter | Role::Platform => true,
        Role::Buyer | Role::Seller => dispute.is_party(&actor_of(caller)),
        Role::Carrier => false,
    }
}

fn parse_request_id(text: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(text).map_err(|e| convert::rename(e, "request_id"))
}

fn parse_dispute_id(text: &str) -> Result<DisputeId, ApiError> {
    DisputeId::parse(text).map_err(|e| convert::rename(e, "dispute_id"))
}

fn parse_offer_id(text: &str) -> Result<OfferId, ApiError> {
    OfferId::parse(text).map_err(|e| convert::rename(e, "offer_id"))
}

fn parse_evidence_ids(ids: &[String]) -> Result<Vec<EvidenceId>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            EvidenceId::parse(id).map_err(|e| convert::rename(e, &format!("evidence_ids[{i}]")))
        })
        .collect()
}

fn page_size(requested: i32) -> i64 {
    match i64::from(requested) {
        size if size <= 0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    }
}

fn dispute_not_found(id: &DisputeId) -> ApiError {
    ApiError::not_found("dispute", id.to_string())
}

/// How a dispute command changes the order beyond the dispute itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OrderEffect {
    None,
    /// A withdrawal resumes the order's protection clock.
    ResumeClock,
}

impl DisputeGrpc {
    /// The shape of every dispute-changing RPC: idempotency replay, load and lock the
    /// dispute (NOT_FOUND unless the caller may see it), build the command, apply it, write
    /// everything in one transaction, record the response under the request id.
    #[allow(clippy::too_many_arguments)]
    async fn command<Req, Resp>(
        &self,
        operation: &'static str,
        caller: &Caller,
        request_id: &str,
        request: &Req,
        dispute_id: &str,
        effect: OrderEffect,
        build: impl Fn(&n::Dispute, n::Actor) -> Result<n::Command, ApiError> + Sync,
        respond: impl Fn(&n::Dispute, &[n::DisputeEvent]) -> Resp + Sync,
    ) -> Result<Resp, ApiError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let request_id = parse_request_id(request_id)?;
        let id = parse_dispute_id(dispute_id)?;
        let hash = request_hash(request);
        let (response, wrote_outbox) = retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            if let Some(response) =
                replay::<Resp>(&mut tx, operation, &caller.id, request_id.as_str(), &hash).await?
            {
                return Ok((response, false));
            }
            let dispute = store::load_dispute(&mut tx, &self.db, &id, true)
                .await?
                .filter(|d| can_see(caller, d))
                .ok_or_else(|| dispute_not_found(&id))?;
            let now = self.now();
            let command = build(&dispute, actor_of(caller))?;
            let (next, events) = n::apply(&dispute, command, now, &self.context.policy)?;
            let mut order = store::load_order(&mut tx, &self.db, dispute.order_id.as_str(), true)
                .await?
                .ok_or_else(|| ApiError::not_found("order", dispute.order_id.as_str()))?;
            let wrote =
                store::save_transition(&mut tx, dispute.version, &next, &events, &order.facts, now)
                    .await?;
            if effect == OrderEffect::ResumeClock && next.state == DisputeState::Cancelled {
                order.clock = n::resume_protection(&order.clock, &next, now);
                order.updated_at = now;
                store::upsert_order(&mut tx, &order).await?;
            }
            let response = respond(&next, &events);
            record(
                &mut tx,
                operation,
                &caller.id,
                request_id.as_str(),
                &hash,
                &response,
                to_unix_micros(now),
            )
            .await?;
            tx.commit().await?;
            Ok((response, wrote))
        })
        .await?;
        if wrote_outbox {
            self.context.work_committed();
        }
        Ok(response)
    }

    /// A dispute the caller may see, read without a lock.
    async fn visible_dispute(
        &self,
        caller: &Caller,
        dispute_id: &str,
    ) -> Result<n::Dispute, ApiError> {
        let id = parse_dispute_id(dispute_id)?;
        let mut conn = self.db.pool().acquire().await?;
        store::load_dispute(&mut conn, &self.db, &id, false)
            .await?
            .filter(|d| can_see(caller, d))
            .ok_or_else(|| dispute_not_found(&id))
    }

    fn order_message(&self, record: &OrderRecord) -> pb::Order {
        convert::order(
            &record.facts,
            &record.clock,
            &self.context.policy,
            record.created_at,
            record.updated_at,
        )
    }
}

#[tonic::async_trait]
impl DisputeService for DisputeGrpc {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_order(
        &self,
        request: Request<pb::RecordOrderRequest>,
    ) -> Result<Response<pb::RecordOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("order_id", req.order_id.as_str());
        let request_id = parse_request_id(&req.request_id)?;
        let hash = request_hash(&req);
        let facts = convert::order_facts(&req)?;
        let response = retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            if let Some(response) = replay(
                &mut tx,
                "RecordOrder",
                &caller.id,
                request_id.as_str(),
                &hash,
            )
            .await?
            {
                return Ok(response);
            }
            let now = self.now();
            let existing =
                store::load_order(&mut tx, &self.db, facts.order_id.as_str(), true).await?;
            let mut facts = facts.clone();
            let record = match existing {
                Some(existing) => {
                    facts.cancelled_at = existing.facts.cancelled_at;
                    OrderRecord {
                        facts,
                        clock: existing.clock,
                        created_at: existing.created_at,
                        updated_at: now,
                    }
                }
                None => OrderRecord {
                    facts,
                    clock: n::ProtectionClock::default(),
                    created_at: now,
                    updated_at: now,
                },
            };
            store::upsert_order(&mut tx, &record).await?;
            let response = pb::RecordOrderResponse {
                order: Some(self.order_message(&record)),
            };
            record_response(
                &mut tx,
                "RecordOrder",
                &caller,
                &request_id,
                &hash,
                &response,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(response)
        })
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("order_id", req.order_id.as_str());
        let request_id = parse_request_id(&req.request_id)?;
        let order_id = OrderId::parse(&req.order_id).map_err(ApiError::from)?;
        let note = n::optional_text("reason", &req.reason).map_err(ApiError::from)?;
        let hash = request_hash(&req);
        let response = retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            if let Some(response) = replay(
                &mut tx,
                "CancelOrder",
                &caller.id,
                request_id.as_str(),
                &hash,
            )
            .await?
            {
                return Ok(response);
            }
            let now = self.now();
            let mut order = store::load_order(&mut tx, &self.db, order_id.as_str(), true)
                .await?
                .filter(|o| caller.role != Role::Buyer || o.facts.buyer_id.as_str() == caller.id)
                .ok_or_else(|| ApiError::not_found("order", order_id.as_str()))?;
            let context = store::opening_context(
                &mut tx,
                order.facts.buyer_id.as_str(),
                order_id.as_str(),
                now,
            )
            .await?;
            if let Some((id, state)) = context.active_dispute {
                return Err(ApiError::precondition(
                    "active_dispute",
                    format!(
                        "order {order_id} has dispute {id} in state {state}; withdraw it first"
                    ),
                ));
            }
            n::check_cancel_order(&order.facts, now, &self.context.policy)?;
            order.facts.cancelled_at = Some(now);
            order.updated_at = now;
            store::upsert_order(&mut tx, &order).await?;
            store::enqueue_refund(
                &mut tx,
                &order.facts,
                None,
                order.facts.total,
                refunds::RefundReason::OrderCancelled,
                n::RefundRelease::Immediate,
                note.clone(),
            )
            .await?;
            let response = pb::CancelOrderResponse {
                order: Some(self.order_message(&order)),
            };
            record_response(
                &mut tx,
                "CancelOrder",
                &caller,
                &request_id,
                &hash,
                &response,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(response)
        })
        .await?;
        self.context.work_committed();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id, dispute_id))]
    async fn open_dispute(
        &self,
        request: Request<pb::OpenDisputeRequest>,
    ) -> Result<Response<pb::OpenDisputeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("order_id", req.order_id.as_str());
        let request_id = parse_request_id(&req.request_id)?;
        let order_id = OrderId::parse(&req.order_id).map_err(ApiError::from)?;
        let resolution = req
            .requested_resolution
            .as_ref()
            .ok_or_else(|| ApiError::invalid("requested_resolution", "is required"))?;
        let open = n::OpenRequest {
            kind: convert::kind_from_wire(req.kind, "kind")?,
            reason: convert::reason_from_wire(req.reason, "reason")?,
            resolution_type: convert::resolution_from_wire(
                resolution.r#type,
                "requested_resolution.type",
            )?,
            amount: convert::optional_money(
                resolution.amount.as_ref(),
                "requested_resolution.amount",
            )?,
            description: req.description.clone(),
            evidence: req
                .evidence
                .iter()
                .enumerate()
                .map(|(i, e)| convert::new_evidence(e, &format!("evidence[{i}]")))
                .collect::<Result<_, _>>()?,
        };
        let hash = request_hash(&req);
        let (response, wrote) = retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            if let Some(response) = replay(
                &mut tx,
                "OpenDispute",
                &caller.id,
                request_id.as_str(),
                &hash,
            )
            .await?
            {
                return Ok((response, false));
            }
            let now = self.now();
            let mut order = store::load_order(&mut tx, &self.db, order_id.as_str(), true)
                .await?
                .ok_or_else(|| ApiError::not_found("order", order_id.as_str()))?;
            let context =
                store::opening_context(&mut tx, &caller.id, order_id.as_str(), now).await?;
            let opened = n::open_dispute(
                &order.facts,
                &order.clock,
                &context,
                &actor_of(&caller),
                open.clone(),
                n::NewIds::fresh(open.evidence.len()),
                now,
                &self.context.policy,
            )?;
            let wrote =
                store::insert_dispute(&mut tx, &opened.dispute, &opened.events, &order.facts, now)
                    .await?;
            order.clock = opened.clock;
            order.updated_at = now;
            store::upsert_order(&mut tx, &order).await?;
            let response = pb::OpenDisputeResponse {
                dispute: Some(convert::dispute(&opened.dispute)),
            };
            record_response(
                &mut tx,
                "OpenDispute",
                &caller,
                &request_id,
                &hash,
                &response,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok((response, wrote))
        })
        .await?;
        if wrote {
            self.context.work_committed();
        }
        if let Some(d) = &response.dispute {
            tracing::Span::current().record("dispute_id", d.dispute_id.as_str());
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn add_evidence(
        &self,
        request: Request<pb::AddEvidenceRequest>,
    ) -> Result<Response<pb::AddEvidenceResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let evidence = convert::new_evidence(
            req.evidence
                .as_ref()
                .ok_or_else(|| ApiError::invalid("evidence", "is required"))?,
            "evidence",
        )?;
        let response = self
            .command(
                "AddEvidence",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |_, by| {
                    Ok(n::Command::AddEvidence {
                        by,
                        evidence_id: EvidenceId::new(),
                        evidence: evidence.clone(),
                    })
                },
                |d, _| pb::AddEvidenceResponse {
                    evidence: d.evidence.last().map(convert::evidence),
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn upload_evidence(
        &self,
        request: Request<tonic::Streaming<pb::UploadEvidenceRequest>>,
    ) -> Result<Response<pb::UploadEvidenceResponse>, Status> {
        use pb::upload_evidence_request::Payload;
        use sha2::Digest;
        let caller = Caller::of(&request)?;
        let mut stream = request.into_inner();
        let metadata = match stream.message().await?.and_then(|m| m.payload) {
            Some(Payload::Metadata(metadata)) => metadata,
            _ => {
                return Err(ApiError::invalid(
                    "metadata",
                    "the first message of the stream must be the metadata",
                )
                .into());
            }
        };
        tracing::Span::current().record("dispute_id", metadata.dispute_id.as_str());
        parse_request_id(&metadata.request_id)?;
        // Everything about the file except its bytes is checked before any byte is stored.
        let kind = convert::evidence_kind_from_wire(metadata.kind, "metadata.kind")?;
        let content_type = metadata.content_type.trim().to_ascii_lowercase();
        if !n::EVIDENCE_CONTENT_TYPES.contains(&content_type.as_str()) {
            return Err(ApiError::invalid(
                "metadata.content_type",
                format!(
                    "{content_type:?} is not accepted; allowed: {}",
                    n::EVIDENCE_CONTENT_TYPES.join(", ")
                ),
            )
            .into());
        }
        let file_name =
            n::optional_text("metadata.file_name", &metadata.file_name).map_err(ApiError::from)?;
        let dispute = self.visible_dispute(&caller, &metadata.dispute_id).await?;
        if dispute.state.is_terminal() {
            return Err(
                ApiError::from(returns_domain::DomainError::illegal_transition(
                    dispute.state.code(),
                    "add evidence",
                    ["OPEN", "NEGOTIATING", "ESCALATED", "AWAITING_RETURN"],
                ))
                .into(),
            );
        }
        let limit = usize::try_from(self.evidence.max_bytes()).unwrap_or(usize::MAX);
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
        let uri = self.evidence.put(&dispute.id, &sha256, bytes).await?;
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
        let response = self
            .command(
                "UploadEvidence",
                &caller,
                &metadata.request_id,
                &fingerprint,
                &metadata.dispute_id,
                OrderEffect::None,
                |_, by| {
                    Ok(n::Command::AddEvidence {
                        by,
                        evidence_id: EvidenceId::new(),
                        evidence: new_evidence.clone(),
                    })
                },
                |d, _| pb::UploadEvidenceResponse {
                    evidence: d.evidence.last().map(convert::evidence),
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn make_offer(
        &self,
        request: Request<pb::MakeOfferRequest>,
    ) -> Result<Response<pb::MakeOfferResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let kind = convert::resolution_from_wire(req.r#type, "type")?;
        let amount = convert::optional_money(req.amount.as_ref(), "amount")?;
        let response = self
            .command(
                "MakeOffer",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
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
                    dispute: Some(convert::dispute(d)),
                    offer: d.offers.last().map(convert::offer),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn accept_offer(
        &self,
        request: Request<pb::AcceptOfferRequest>,
    ) -> Result<Response<pb::AcceptOfferResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let offer_id = parse_offer_id(&req.offer_id)?;
        let response = self
            .command(
                "AcceptOffer",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |_, by| Ok(n::Command::AcceptOffer { by, offer_id }),
                |d, _| pb::AcceptOfferResponse {
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn reject_offer(
        &self,
        request: Request<pb::RejectOfferRequest>,
    ) -> Result<Response<pb::RejectOfferResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let offer_id = parse_offer_id(&req.offer_id)?;
        let reason = n::required_text("reason", &req.reason).map_err(ApiError::from)?;
        let evidence_ids = parse_evidence_ids(&req.evidence_ids)?;
        let response = self
            .command(
                "RejectOffer",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |d, by| {
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
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let evidence_ids = parse_evidence_ids(&req.evidence_ids)?;
        let response = self
            .command(
                "SendMessage",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |_, by| {
                    Ok(n::Command::SendMessage {
                        by,
                        body: req.body.clone(),
                        evidence_ids: evidence_ids.clone(),
                    })
                },
                |d, events| pb::SendMessageResponse {
                    message: events.iter().find_map(|e| match &e.payload {
                        EventPayload::Message(m) => Some(convert::message(m, &d.id.to_string())),
                        _ => None,
                    }),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn escalate_dispute(
        &self,
        request: Request<pb::EscalateDisputeRequest>,
    ) -> Result<Response<pb::EscalateDisputeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let response = self
            .command(
                "EscalateDispute",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |_, by| {
                    Ok(n::Command::Escalate {
                        by,
                        reason: req.reason.clone(),
                    })
                },
                |d, _| pb::EscalateDisputeResponse {
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn rule_on_dispute(
        &self,
        request: Request<pb::RuleOnDisputeRequest>,
    ) -> Result<Response<pb::RuleOnDisputeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let ruling = n::Ruling {
            outcome: convert::ruling_from_wire(req.outcome, "outcome")?,
            amount: convert::optional_money(req.amount.as_ref(), "amount")?,
            return_required: req.return_required,
            rationale: req.rationale.clone(),
            postage_payer: req
                .postage_payer
                .map(|p| convert::payer_from_wire(p, "postage_payer"))
                .transpose()?,
        };
        let response = self
            .command(
                "RuleOnDispute",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::None,
                |_, by| {
                    Ok(n::Command::Rule {
                        by,
                        ruling: ruling.clone(),
                    })
                },
                |d, _| pb::RuleOnDisputeResponse {
                    dispute: Some(convert::dispute(d)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn recommend_ruling(
        &self,
        request: Request<pb::RecommendRulingRequest>,
    ) -> Result<Response<pb::RecommendRulingResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let dispute = self.visible_dispute(&caller, &req.dispute_id).await?;
        let r = n::recommend_ruling(&dispute, &self.context.policy, &FxTable::default())
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RecommendRulingResponse {
            recommendation: Some(pb::RulingRecommendation {
                outcome: convert::ruling_to_wire(r.outcome),
                return_required: r.return_required,
                reasons: r.reasons,
                amount: r.amount.as_ref().map(convert::money_to_wire),
                postage_payer: r.postage_payer.map_or(0, convert::payer_to_wire),
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn cancel_dispute(
        &self,
        request: Request<pb::CancelDisputeRequest>,
    ) -> Result<Response<pb::CancelDisputeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let response = self
            .command(
                "CancelDispute",
                &caller,
                &req.request_id,
                &req,
                &req.dispute_id,
                OrderEffect::ResumeClock,
                |_, by| {
                    Ok(n::Command::Cancel {
                        by,
                        reason: req.reason.clone(),
                    })
                },
                |d, _| pb::CancelDisputeResponse {
                    dispute: Some(convert::dispute(d)),
                    protection_closes_at: d
                        .closed_at
                        .map(|at| convert::ts(at + d.protection_time_left)),
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn get_dispute(
        &self,
        request: Request<pb::GetDisputeRequest>,
    ) -> Result<Response<pb::GetDisputeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let dispute = self.visible_dispute(&caller, &req.dispute_id).await?;
        Ok(Response::new(pb::GetDisputeResponse {
            dispute: Some(convert::dispute(&dispute)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_disputes(
        &self,
        request: Request<pb::ListDisputesRequest>,
    ) -> Result<Response<pb::ListDisputesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let mut buyer = non_empty(&req.buyer_id);
        let mut seller = non_empty(&req.seller_id);
        // Parties only ever list their own disputes, whatever the filters ask for.
        let own = match caller.role {
            Role::Buyer => Some(&mut buyer),
            Role::Seller => Some(&mut seller),
            _ => None,
        };
        if let Some(filter) = own {
            if filter.as_deref().is_some_and(|f| f != caller.id) {
                return Ok(Response::new(pb::ListDisputesResponse::default()));
            }
            *filter = Some(caller.id.clone());
        }
        let state = match req.state {
            0 => None,
            s => Some(convert::state_from_wire(s, "state")?),
        };
        let before = match req.page_token.as_str() {
            "" => None,
            token => Some(
                DisputeId::parse(token)
                    .map_err(|_| ApiError::invalid("page_token", "is not a token from this RPC"))?
                    .to_string(),
            ),
        };
        let limit = page_size(req.page_size);
        let disputes = store::list_disputes(
            &self.db,
            &store::ListFilter {
                buyer_id: buyer.as_deref(),
                seller_id: seller.as_deref(),
                order_id: non_empty(&req.order_id).as_deref(),
                state,
                before: before.as_deref(),
                limit: limit + 1,
            },
        )
        .await?;
        let more = i64::try_from(disputes.len()).unwrap_or(i64::MAX) > limit;
        let page: Vec<_> = disputes
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDisputesResponse {
            disputes: page.iter().map(convert::dispute).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn list_dispute_events(
        &self,
        request: Request<pb::ListDisputeEventsRequest>,
    ) -> Result<Response<pb::ListDisputeEventsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        let dispute = self.visible_dispute(&caller, &req.dispute_id).await?;
        let after = match req.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| ApiError::invalid("page_token", "is not a token from this RPC"))?,
        };
        let limit = page_size(req.page_size);
        let events = store::list_events(&self.db, &dispute.id, after, limit + 1).await?;
        let more = i64::try_from(events.len()).unwrap_or(i64::MAX) > limit;
        let page: Vec<_> = events
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        let next_page_token = match (more, page.last()) {
            (true, Some((sequence, _))) => sequence.to_string(),
            _ => String::new(),
        };
        let id = dispute.id.to_string();
        Ok(Response::new(pb::ListDisputeEventsResponse {
            events: page
                .iter()
                .map(|(sequence, e)| convert::event(e, &id, *sequence))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(dispute_id))]
    async fn record_return_event(
        &self,
        request: Request<pb::RecordReturnEventRequest>,
    ) -> Result<Response<pb::RecordReturnEventResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id.as_str());
        if req.message_id.is_empty() {
            return Err(ApiError::invalid("message_id", "is required for relayed messages").into());
        }
        let id = parse_dispute_id(&req.dispute_id)?;
        let update = n::ReturnUpdate {
            label_id: req.label_id.clone(),
            kind: convert::return_event_from_wire(req.r#type, "type")?,
            tracking_number: req.tracking_number.clone(),
            notes: n::optional_text("notes", &req.notes).map_err(ApiError::from)?,
            postage: convert::optional_money(req.postage.as_ref(), "postage")?,
        };
        let (dispute, wrote) = retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            let dispute = store::load_dispute(&mut tx, &self.db, &id, true)
                .await?
                .filter(|d| can_see(&caller, d))
                .filter(|d| req.order_id.is_empty() || d.order_id.as_str() == req.order_id)
                .ok_or_else(|| dispute_not_found(&id))?;
            let now = self.now();
            if !accept_once(&mut tx, &req.message_id, "labels", now).await? {
                // A redelivery: answer with the current state, change nothing.
                return Ok((dispute, false));
            }
            let (next, events) = n::apply(
                &dispute,
                n::Command::ReturnEvent {
                    update: update.clone(),
                },
                now,
                &self.context.policy,
            )?;
            let order = store::load_order(&mut tx, &self.db, dispute.order_id.as_str(), false)
                .await?
                .ok_or_else(|| ApiError::not_found("order", dispute.order_id.as_str()))?;
            let wrote =
                store::save_transition(&mut tx, dispute.version, &next, &events, &order.facts, now)
                    .await?;
            tx.commit().await?;
            Ok((next, wrote))
        })
        .await?;
        if wrote {
            self.context.work_committed();
        }
        Ok(Response::new(pb::RecordReturnEventResponse {
            dispute: Some(convert::dispute(&dispute)),
        }))
    }
}

/// Records an idempotent response (a thin wrapper keeping the call sites short).
async fn record_response<R: prost::Message>(
    tx: &mut returns_platform::db::Tx,
    operation: &str,
    caller: &Caller,
    request_id: &RequestId,
    hash: &str,
    response: &R,
    now: Timestamp,
) -> Result<(), ApiError> {
    record(
        tx,
        operation,
        &caller.id,
        request_id.as_str(),
        hash,
        response,
        to_unix_micros(now),
    )
    .await
}
