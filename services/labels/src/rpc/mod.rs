//! The gRPC face of the service, split by capability: this file holds the service value, the
//! tonic trait (each method delegates to its capability's file) and what several
//! capabilities share (who may see a label, loading it, the carrier of a carrier token).
//!
//! A handler parses its request with `returns_proto::convert`, asks the pure rules in
//! `returns_domain::returns`, and writes through `crate::store`; every mutating RPC with a
//! `request_id` runs inside `returns_platform::mutation::mutate`.

mod authorise;
mod documents;
mod labels;
mod locations;
mod outbox;
mod pickups;
mod tracking;
mod wire;

use std::sync::Arc;

use returns_domain::dispute::Role;
use returns_domain::ids::LabelId;
use returns_domain::money::FxTable;
use returns_domain::time::Timestamp;
use returns_platform::db::{ReadConnection, Tx};
use returns_platform::{ApiError, Caller, Database, SuiteContext};
use returns_proto::labels::v1 as pb;
use returns_proto::labels::v1::return_label_service_server::ReturnLabelService;
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::directory::Directory;
use crate::store::{self, labels::LabelRow};

pub use pickups::PICKUP_WINDOW_MAX_HOURS;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct LabelGrpc {
    context: SuiteContext,
    db: Database,
    directory: Arc<Directory>,
    fx: Arc<FxTable>,
    serials: Arc<store::counters::SerialBlocks>,
}

impl LabelGrpc {
    pub fn new(context: SuiteContext, db: Database, directory: Arc<Directory>) -> Self {
        LabelGrpc {
            context,
            db,
            directory,
            fx: Arc::new(FxTable::default()),
            serials: Arc::new(store::counters::SerialBlocks::new(
                store::counters::SERIAL_BLOCK,
            )),
        }
    }

    fn now(&self) -> Timestamp {
        self.context.clock.now()
    }

    /// A connection for reads outside a transaction; `done` once its reads succeeded, so
    /// that on PostgreSQL it is kept for the next use (see `Database::read_connection`).
    async fn conn(&self) -> Result<ReadConnection, ApiError> {
        Ok(self.db.read_connection().await?)
    }

    /// A label the caller may see; others are told it does not exist. `lock` is
    /// `db.for_update()` inside a write transaction.
    async fn visible_label(
        &self,
        conn: &mut AnyConnection,
        caller: &Caller,
        label_id: &LabelId,
        lock: &str,
    ) -> Result<LabelRow, ApiError> {
        match store::labels::by_id(conn, label_id, lock).await? {
            Some(label) if can_see(caller, &label) => Ok(label),
            _ => Err(ApiError::not_found("label", label_id.to_string())),
        }
    }

    /// Loads and locks a label the caller may change, inside `tx`.
    async fn locked_label(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        label_id: &LabelId,
    ) -> Result<LabelRow, ApiError> {
        self.visible_label(tx, caller, label_id, self.db.for_update())
            .await
    }
}

/// Whether `caller` is party to `label`.
fn can_see(caller: &Caller, label: &LabelRow) -> bool {
    match caller.role {
        Role::Buyer => label.buyer_id.as_str() == caller.id,
        Role::Seller => label.seller_id.as_str() == caller.id,
        Role::Carrier => caller.carrier.as_deref() == Some(label.provider_code.as_str()),
        Role::Platform | Role::Arbiter => true,
    }
}

/// The calling carrier's code; a carrier token without one reaches nothing.
fn caller_carrier(caller: &Caller) -> Result<&str, ApiError> {
    caller
        .carrier
        .as_deref()
        .ok_or_else(|| ApiError::PermissionDenied("the carrier token names no carrier".into()))
}

#[tonic::async_trait]
impl ReturnLabelService for LabelGrpc {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn authorise_return(
        &self,
        request: Request<pb::AuthoriseReturnRequest>,
    ) -> Result<Response<pb::AuthoriseReturnResponse>, Status> {
        Ok(Response::new(self.authorise(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn list_return_options(
        &self,
        request: Request<pb::ListReturnOptionsRequest>,
    ) -> Result<Response<pb::ListReturnOptionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.return_options(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn create_return_label(
        &self,
        request: Request<pb::CreateReturnLabelRequest>,
    ) -> Result<Response<pb::CreateReturnLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.create_label(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn get_return_label(
        &self,
        request: Request<pb::GetReturnLabelRequest>,
    ) -> Result<Response<pb::GetReturnLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.get_label(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_return_labels(
        &self,
        request: Request<pb::ListReturnLabelsRequest>,
    ) -> Result<Response<pb::ListReturnLabelsResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.list_labels(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn get_label_document(
        &self,
        request: Request<pb::GetLabelDocumentRequest>,
    ) -> Result<Response<pb::GetLabelDocumentResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.label_document(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn void_label(
        &self,
        request: Request<pb::VoidLabelRequest>,
    ) -> Result<Response<pb::VoidLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.void(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn schedule_pickup(
        &self,
        request: Request<pb::SchedulePickupRequest>,
    ) -> Result<Response<pb::SchedulePickupResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.book_pickup(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(pickup_id = %request.get_ref().pickup_id))]
    async fn cancel_pickup(
        &self,
        request: Request<pb::CancelPickupRequest>,
    ) -> Result<Response<pb::CancelPickupResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.cancel_booked_pickup(&caller, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(carrier_event_id = %request.get_ref().carrier_event_id))]
    async fn report_tracking_event(
        &self,
        request: Request<pb::ReportTrackingEventRequest>,
    ) -> Result<Response<pb::ReportTrackingEventResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.record_scan(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn record_inspection(
        &self,
        request: Request<pb::RecordInspectionRequest>,
    ) -> Result<Response<pb::RecordInspectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.inspect(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_carriers(
        &self,
        request: Request<pb::ListCarriersRequest>,
    ) -> Result<Response<pb::ListCarriersResponse>, Status> {
        Ok(Response::new(self.carriers(request.into_inner())?))
    }

    #[tracing::instrument(skip_all, fields(provider_code = %request.get_ref().provider_code))]
    async fn upsert_drop_off_locations(
        &self,
        request: Request<pb::UpsertDropOffLocationsRequest>,
    ) -> Result<Response<pb::UpsertDropOffLocationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.publish_locations(&caller, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(country_code = %request.get_ref().country_code))]
    async fn list_drop_off_locations(
        &self,
        request: Request<pb::ListDropOffLocationsRequest>,
    ) -> Result<Response<pb::ListDropOffLocationsResponse>, Status> {
        Ok(Response::new(
            self.find_locations(request.into_inner()).await?,
        ))
    }
}
