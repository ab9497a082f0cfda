//! The gRPC face of the service: the `RefundService` trait, each RPC delegating to the file
//! of its capability, which parses the request into domain types (`returns_proto::convert`),
//! runs the rules of `returns_domain::refund` and writes through `crate::store` inside
//! `returns_platform::mutation::mutate` (idempotency, one transaction, workers woken).
//!
//! Lock order, to keep PostgreSQL free of deadlocks: the order's key lock (CreateRefund and
//! RecordCapture, see [`order_key`]), then its capture row, then its refunds. The settlement
//! worker locks refunds only.

mod captures;
mod chargebacks;
mod gates;
mod refunds;
mod reports;
mod returns;
mod wire;

use std::sync::Arc;

use returns_domain::calendar::BusinessCalendar;
use returns_domain::ids::OrderId;
use returns_domain::money::FxTable;
use returns_domain::time::Timestamp;
use returns_platform::{ApiError, Caller, Database, SuiteContext};
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::refund_service_server::RefundService;
use tonic::{Request, Response, Status};

/// Longest free-text fields (notes, reasons).
const MAX_TEXT: usize = 2000;
/// The inbox `source` of messages delivered by the outbox relay.
const RELAY_SOURCE: &str = "relay";

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct RefundGrpc {
    context: SuiteContext,
    db: Database,
    fx: Arc<FxTable>,
    calendar: Arc<BusinessCalendar>,
    /// Dropped with the last clone of the service (the server stopped): aborts the
    /// background settlement loop, if this service runs one.
    _settlement: Option<Arc<crate::settlement::LoopGuard>>,
}

impl RefundGrpc {
    pub fn new(
        context: SuiteContext,
        db: Database,
        fx: FxTable,
        calendar: BusinessCalendar,
        settlement: Option<crate::settlement::LoopGuard>,
    ) -> Self {
        RefundGrpc {
            context,
            db,
            fx: Arc::new(fx),
            calendar: Arc::new(calendar),
            _settlement: settlement.map(Arc::new),
        }
    }

    fn now(&self) -> Timestamp {
        self.context.clock.now()
    }
}

/// The key CreateRefund and RecordCapture serialise on per order ([`Database::lock_key`]):
/// there may be no capture row to lock yet.
fn order_key(order_id: &OrderId) -> String {
    format!("refunds/order/{order_id}")
}

fn no_capture(order_id: &OrderId) -> ApiError {
    ApiError::precondition(
        "capture_required",
        format!("no capture is recorded for order {order_id}; record the capture first"),
    )
}

/// A handler's answer as tonic wants it.
fn respond<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl RefundService for RefundGrpc {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_capture(
        &self,
        request: Request<pb::RecordCaptureRequest>,
    ) -> Result<Response<pb::RecordCaptureResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(captures::record_capture(self, &caller, request.into_inner()).await)
    }

    /// A relayed request that overtakes the order's capture answers OK with `refund` unset
    /// and is created by RecordCapture (see `refunds::create_refund`).
    #[tracing::instrument(skip_all, fields(order_id, dispute_id))]
    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Result<Response<pb::CreateRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(refunds::create_refund(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(refund_id))]
    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(refunds::get_refund(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all)]
    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(refunds::list_refunds(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(refund_id))]
    async fn cancel_refund(
        &self,
        request: Request<pb::CancelRefundRequest>,
    ) -> Result<Response<pb::CancelRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(refunds::cancel_refund(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_return_progress(
        &self,
        request: Request<pb::RecordReturnProgressRequest>,
    ) -> Result<Response<pb::RecordReturnProgressResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(returns::record_return_progress(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_chargeback(
        &self,
        request: Request<pb::RecordChargebackRequest>,
    ) -> Result<Response<pb::RecordChargebackResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(chargebacks::record_chargeback(self, &caller, request.into_inner()).await)
    }

    #[tracing::instrument(skip_all)]
    async fn get_settlement_report(
        &self,
        request: Request<pb::GetSettlementReportRequest>,
    ) -> Result<Response<pb::GetSettlementReportResponse>, Status> {
        respond(reports::get_settlement_report(self, request.into_inner()).await)
    }
}
