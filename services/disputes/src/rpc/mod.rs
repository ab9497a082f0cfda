//! The gRPC face of the service: the `DisputeService` trait delegating to one file per
//! capability (orders, disputes, evidence, negotiation, arbitration, queries, returns), and
//! what they share: the visibility rule and [`DisputeGrpc::command`], the one shape of a
//! dispute-changing RPC on the platform's mutation path.
//!
//! Authorisation beyond the role table: a buyer or seller only ever sees disputes they are a
//! party to; anything else answers NOT_FOUND, exactly as for a dispute that does not exist.

mod arbitration;
mod disputes;
mod evidence;
mod negotiation;
mod orders;
mod queries;
mod returns;
mod wire;

/// How OpenDispute and RecordOrder read their requests into domain values, for tools that
/// build real disputes without the RPC (the bench seeds a million this way).
pub use disputes::open_request;
pub use orders::order_facts;

use std::sync::Arc;

use returns_domain::dispute::Role;
use returns_domain::ids::DisputeId;
use returns_domain::negotiation::{self as n, DisputeState};
use returns_domain::time::Timestamp;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::{ApiError, Caller, Database, SuiteContext};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use returns_proto::disputes::v1::dispute_service_server::DisputeService;
use tonic::{Request, Response, Status};

use crate::deadlines::WorkerGuard;
use crate::evidence::EvidenceStore;
use crate::store;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct DisputeGrpc {
    context: SuiteContext,
    db: Database,
    evidence: EvidenceStore,
    /// Keeps the deadline worker alive exactly as long as the service.
    _worker: Option<Arc<WorkerGuard>>,
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

fn dispute_not_found(id: &DisputeId) -> ApiError {
    ApiError::not_found("dispute", id.to_string())
}

/// A request about one dispute, named by its `dispute_id` field.
trait AboutDispute {
    fn dispute_id(&self) -> &str;
}

/// A request that changes one dispute: the operation its idempotency key is recorded under,
/// and its `request_id`.
trait ChangesDispute: AboutDispute + prost::Message + Sync {
    const OPERATION: &'static str;
    fn request_id(&self) -> &str;
}

macro_rules! about_dispute {
    ($($request:ty),+ $(,)?) => {
        $(impl AboutDispute for $request {
            fn dispute_id(&self) -> &str {
                &self.dispute_id
            }
        })+
    };
}

macro_rules! changes_dispute {
    ($($request:ty => $operation:literal),+ $(,)?) => {
        $(
            about_dispute!($request);
            impl ChangesDispute for $request {
                const OPERATION: &'static str = $operation;
                fn request_id(&self) -> &str {
                    &self.request_id
                }
            }
        )+
    };
}

about_dispute!(
    pb::GetDisputeRequest,
    pb::ListDisputeEventsRequest,
    pb::RecommendRulingRequest,
);
changes_dispute!(
    pb::CancelDisputeRequest => "CancelDispute",
    pb::AddEvidenceRequest => "AddEvidence",
    pb::MakeOfferRequest => "MakeOffer",
    pb::AcceptOfferRequest => "AcceptOffer",
    pb::RejectOfferRequest => "RejectOffer",
    pb::SendMessageRequest => "SendMessage",
    pb::EscalateDisputeRequest => "EscalateDispute",
    pb::RuleOnDisputeRequest => "RuleOnDispute",
);

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

    /// The shape of every RPC that changes one dispute, on the platform's mutation path
    /// (replay, retry on conflict, one transaction, record, commit): load and lock the
    /// dispute (NOT_FOUND unless the caller may see it), `build` the command, apply it with
    /// the pure domain rules, store the transition with its history, deadline and outbox
    /// messages, and answer with `respond`. A withdrawal also resumes the order's protection
    /// clock, in the same transaction.
    async fn command<Resp>(
        &self,
        key: &RequestKey<'_>,
        caller: &Caller,
        dispute_id: &DisputeId,
        build: impl Fn(&n::Dispute, n::Actor) -> Result<n::Command, ApiError> + Sync,
        respond: impl Fn(&n::Dispute, &[n::DisputeEvent]) -> Resp + Sync,
    ) -> Result<Resp, ApiError>
    where
        Resp: prost::Message + Default,
    {
        let (build, respond) = (&build, &respond);
        mutate(&self.db, &self.context, key, |mut tx| async move {
            let (dispute, mut order) =
                store::load_dispute_with_order(&mut tx, &self.db, dispute_id)
                    .await?
                    .filter(|(d, _)| can_see(caller, d))
                    .ok_or_else(|| dispute_not_found(dispute_id))?;
            let now = self.now();
            let command = build(&dispute, actor_of(caller))?;
            let (next, history) = n::apply(&dispute, command, now, &self.context.policy)?;
            store::write_transition(
                tx.writes(),
                dispute.version,
                &next,
                &history,
                &order.facts,
                now,
            )?;
            if dispute.state != DisputeState::Cancelled && next.state == DisputeState::Cancelled {
                order.clock = n::resume_protection(&order.clock, &next, now);
                order.updated_at = now;
                store::update_order(tx.writes(), &order)?;
            }
            Ok((tx, respond(&next, &history)))
        })
        .await
    }

    /// [`Self::command`] for a request that names its dispute and request id: `build` sees
    /// the request too (fields it needs parsed first are parsed by the handler, before).
    async fn change<Req, Resp>(
        &self,
        request: Request<Req>,
        build: impl Fn(&Req, &n::Dispute, n::Actor) -> Result<n::Command, ApiError> + Sync,
        respond: impl Fn(&n::Dispute, &[n::DisputeEvent]) -> Resp + Sync,
    ) -> Result<Resp, ApiError>
    where
        Req: ChangesDispute,
        Resp: prost::Message + Default,
    {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id());
        let request_id = convert::request_id(req.request_id())?;
        let dispute_id = convert::id::<DisputeId>("dispute_id", req.dispute_id())?;
        let key = RequestKey::new(Req::OPERATION, &caller, request_id.as_str(), &req);
        let build = |dispute: &n::Dispute, by| build(&req, dispute, by);
        self.command(&key, &caller, &dispute_id, build, respond)
            .await
    }

    /// The caller, the request and the dispute it names, if the caller may see it (read
    /// without a lock).
    async fn read<Req: AboutDispute>(
        &self,
        request: Request<Req>,
    ) -> Result<(Caller, Req, n::Dispute), ApiError> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        tracing::Span::current().record("dispute_id", req.dispute_id());
        let dispute_id = convert::id::<DisputeId>("dispute_id", req.dispute_id())?;
        let dispute = self.visible_dispute(&caller, &dispute_id).await?;
        Ok((caller, req, dispute))
    }

    /// A dispute the caller may see, read without a lock.
    async fn visible_dispute(
        &self,
        caller: &Caller,
        dispute_id: &DisputeId,
    ) -> Result<n::Dispute, ApiError> {
        store::load_dispute(&self.db, dispute_id)
            .await?
            .filter(|d| can_see(caller, d))
            .ok_or_else(|| dispute_not_found(dispute_id))
    }
}

/// Answers with a handler's response, or its error through the one error mapping.
fn reply<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl DisputeService for DisputeGrpc {
    async fn record_order(
        &self,
        request: Request<pb::RecordOrderRequest>,
    ) -> Result<Response<pb::RecordOrderResponse>, Status> {
        reply(orders::record_order(self, request).await)
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        reply(orders::cancel_order(self, request).await)
    }

    async fn open_dispute(
        &self,
        request: Request<pb::OpenDisputeRequest>,
    ) -> Result<Response<pb::OpenDisputeResponse>, Status> {
        reply(disputes::open_dispute(self, request).await)
    }

    async fn cancel_dispute(
        &self,
        request: Request<pb::CancelDisputeRequest>,
    ) -> Result<Response<pb::CancelDisputeResponse>, Status> {
        reply(disputes::cancel_dispute(self, request).await)
    }

    async fn add_evidence(
        &self,
        request: Request<pb::AddEvidenceRequest>,
    ) -> Result<Response<pb::AddEvidenceResponse>, Status> {
        reply(evidence::add_evidence(self, request).await)
    }

    async fn upload_evidence(
        &self,
        request: Request<tonic::Streaming<pb::UploadEvidenceRequest>>,
    ) -> Result<Response<pb::UploadEvidenceResponse>, Status> {
        evidence::upload_evidence(self, request)
            .await
            .map(Response::new)
    }

    async fn make_offer(
        &self,
        request: Request<pb::MakeOfferRequest>,
    ) -> Result<Response<pb::MakeOfferResponse>, Status> {
        reply(negotiation::make_offer(self, request).await)
    }

    async fn accept_offer(
        &self,
        request: Request<pb::AcceptOfferRequest>,
    ) -> Result<Response<pb::AcceptOfferResponse>, Status> {
        reply(negotiation::accept_offer(self, request).await)
    }

    async fn reject_offer(
        &self,
        request: Request<pb::RejectOfferRequest>,
    ) -> Result<Response<pb::RejectOfferResponse>, Status> {
        reply(negotiation::reject_offer(self, request).await)
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        reply(negotiation::send_message(self, request).await)
    }

    async fn escalate_dispute(
        &self,
        request: Request<pb::EscalateDisputeRequest>,
    ) -> Result<Response<pb::EscalateDisputeResponse>, Status> {
        reply(arbitration::escalate_dispute(self, request).await)
    }

    async fn rule_on_dispute(
        &self,
        request: Request<pb::RuleOnDisputeRequest>,
    ) -> Result<Response<pb::RuleOnDisputeResponse>, Status> {
        reply(arbitration::rule_on_dispute(self, request).await)
    }

    async fn recommend_ruling(
        &self,
        request: Request<pb::RecommendRulingRequest>,
    ) -> Result<Response<pb::RecommendRulingResponse>, Status> {
        reply(arbitration::recommend_ruling(self, request).await)
    }

    async fn get_dispute(
        &self,
        request: Request<pb::GetDisputeRequest>,
    ) -> Result<Response<pb::GetDisputeResponse>, Status> {
        reply(queries::get_dispute(self, request).await)
    }

    async fn list_disputes(
        &self,
        request: Request<pb::ListDisputesRequest>,
    ) -> Result<Response<pb::ListDisputesResponse>, Status> {
        reply(queries::list_disputes(self, request).await)
    }

    async fn list_dispute_events(
        &self,
        request: Request<pb::ListDisputeEventsRequest>,
    ) -> Result<Response<pb::ListDisputeEventsResponse>, Status> {
        reply(queries::list_dispute_events(self, request).await)
    }

    async fn record_return_event(
        &self,
        request: Request<pb::RecordReturnEventRequest>,
    ) -> Result<Response<pb::RecordReturnEventResponse>, Status> {
        reply(returns::record_return_event(self, request).await)
    }
}
