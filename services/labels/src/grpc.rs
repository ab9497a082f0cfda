//! The gRPC face of the service: decode and validate requests, load rows, ask the pure rules
//! in `returns_domain::returns`, and write state, history and outbox in one transaction.

use std::sync::Arc;

use returns_domain::dispute::{DisputeReason, PostagePayer, Role};
use returns_domain::ids::{LabelId, MessageId};
use returns_domain::money::{CurrencyCode, FxTable, Money};
use returns_domain::returns::{
    self as rules, FreeReturnDecision, FreeReturnEligibility, FreeReturnFacts, InspectionResult,
    LabelStatus, TrackingEventType,
};
use returns_domain::time::Timestamp;
use returns_platform::db::{Tx, column, retry_conflicts};
use returns_platform::idempotency::{record, replay, request_hash};
use returns_platform::outbox::{OutboxMessage, accept_once, enqueue};
use returns_platform::trace_context::current_traceparent;
use returns_platform::{ApiError, Caller, Database, SuiteContext};
use returns_proto::common::v1 as common;
use returns_proto::convert::{timestamp_from_proto, timestamp_to_proto};
use returns_proto::disputes::v1 as disputes_pb;
use returns_proto::labels::v1 as pb;
use returns_proto::labels::v1::return_label_service_server::ReturnLabelService;
use returns_proto::refunds::v1 as refunds_pb;
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::directory::{self, Carrier, Directory, ServiceType, TrackingScheme};
use crate::document;
use crate::store::{self, AuthorisationRow, LabelRow, micros};

/// The longest pickup window a buyer may book. The rules give no number; couriers book
/// half-day slots, so twelve hours is the widest window that still means something.
pub const PICKUP_WINDOW_MAX_HOURS: i64 = 12;

const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

/// Runs `$body` once per request id inside a write transaction: a retry with the same key
/// and body replays the first response; the same key with another body is ALREADY_EXISTS.
macro_rules! idempotent {
    ($self:ident, $op:expr, $caller:expr, $request_id:expr, $request:expr, |$tx:ident| $body:expr) => {{
        let hash = request_hash($request);
        let response = retry_conflicts(|| async {
            let mut $tx = $self.db.begin_write().await?;
            if let Some(replayed) = replay(&mut $tx, $op, &$caller.id, $request_id, &hash).await? {
                return Ok(replayed);
            }
            let response = $body;
            record(
                &mut $tx,
                $op,
                &$caller.id,
                $request_id,
                &hash,
                &response,
                micros($self.now()),
            )
            .await?;
            $tx.commit().await?;
            Ok::<_, ApiError>(response)
        })
        .await?;
        $self.context.work_committed();
        response
    }};
}

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct LabelGrpc {
    context: SuiteContext,
    db: Database,
    directory: Arc<Directory>,
    fx: Arc<FxTable>,
}

impl LabelGrpc {
    pub fn new(context: SuiteContext, db: Database, directory: Arc<Directory>) -> Self {
        LabelGrpc {
            context,
            db,
            directory,
            fx: Arc::new(FxTable::default()),
        }
    }

    fn now(&self) -> Timestamp {
        self.context.clock.now()
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, ApiError> {
        Ok(self.db.pool().acquire().await?)
    }
}

// ---- validation helpers ---------------------------------------------------------------------

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        Err(ApiError::invalid(field, "is required"))
    } else if value.len() > 200 {
        Err(ApiError::invalid(field, "is longer than 200 characters"))
    } else {
        Ok(value)
    }
}

fn country_code(field: &str, value: &str) -> Result<String, ApiError> {
    if directory::is_country_code(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{value:?} is not an ISO 3166-1 alpha-2 code (two uppercase letters)"),
        ))
    }
}

/// Refuses an address outside the order's delivery country, naming both countries.
fn in_delivery_country(field: &str, given: &str, delivery: &str) -> Result<(), ApiError> {
    if given == delivery {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be {delivery}, the order's delivery country, not {given}"),
        ))
    }
}

fn timestamp(
    field: &str,
    value: &Option<prost_types::Timestamp>,
) -> Result<Option<Timestamp>, ApiError> {
    value
        .as_ref()
        .map(|t| {
            timestamp_from_proto(t)
                .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))
        })
        .transpose()
}

fn address(field: &str, value: &Option<common::Address>) -> Result<common::Address, ApiError> {
    let Some(address) = value else {
        return Err(ApiError::invalid(field, "is required"));
    };
    required(&format!("{field}.name"), &address.name)?;
    required(&format!("{field}.line1"), &address.line1)?;
    required(&format!("{field}.city"), &address.city)?;
    country_code(&format!("{field}.country_code"), &address.country_code)?;
    Ok(address.clone())
}

fn page(field: &str, size: i32, token: &str) -> Result<(usize, usize), ApiError> {
    let size = match size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => return Err(ApiError::invalid(field, "must not be negative")),
        n => usize::try_from(n)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE),
    };
    let offset = if token.is_empty() {
        0
    } else {
        token
            .parse::<usize>()
            .map_err(|_| ApiError::invalid("page_token", "is not a token from a previous page"))?
    };
    Ok((size, offset))
}

fn next_token(offset: usize, size: usize, total: usize) -> String {
    if offset + size < total {
        (offset + size).to_string()
    } else {
        String::new()
    }
}

fn reason_from_proto(value: i32) -> Result<DisputeReason, ApiError> {
    let name = common::DisputeReason::try_from(value)
        .ok()
        .filter(|r| *r != common::DisputeReason::Unspecified)
        .ok_or_else(|| ApiError::invalid("reason", "must be set to a dispute reason"))?;
    DisputeReason::parse(name.as_str_name().trim_start_matches("DISPUTE_REASON_"))
        .map_err(ApiError::from)
}

fn payer_from_proto(value: i32) -> Result<Option<PostagePayer>, ApiError> {
    match common::PostagePayer::try_from(value) {
        Ok(common::PostagePayer::Unspecified) => Ok(None),
        Ok(common::PostagePayer::Seller) => Ok(Some(PostagePayer::Seller)),
        Ok(common::PostagePayer::Platform) => Ok(Some(PostagePayer::Platform)),
        Ok(common::PostagePayer::Buyer) => Ok(Some(PostagePayer::Buyer)),
        Err(_) => Err(ApiError::invalid("postage_payer", "unknown value")),
    }
}

fn money(field: &str, value: &Option<common::Money>) -> Result<Money, ApiError> {
    let value = value
        .as_ref()
        .ok_or_else(|| ApiError::invalid(field, "is required"))?;
    let currency = CurrencyCode::parse(&value.currency_code)
        .map_err(|e| ApiError::invalid(format!("{field}.currency_code"), e.to_string()))?;
    if value.minor_units < 0 {
        return Err(ApiError::invalid(
            format!("{field}.minor_units"),
            "must not be negative",
        ));
    }
    Ok(Money::new(currency, value.minor_units))
}

fn service_type_to_proto(service: ServiceType) -> pb::ServiceType {
    match service {
        ServiceType::DropOff => pb::ServiceType::DropOff,
        ServiceType::Locker => pb::ServiceType::Locker,
        ServiceType::Pickup => pb::ServiceType::Pickup,
    }
}

fn carrier_to_proto(directory: &Directory, carrier: &Carrier) -> pb::Carrier {
    pb::Carrier {
        code: carrier.code.clone(),
        name: carrier.name.clone(),
        country_code: carrier.country.clone(),
        country_name: directory
            .country(&carrier.country)
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        service_types: carrier
            .service_types
            .iter()
            .map(|s| service_type_to_proto(*s).into())
            .collect(),
        phone: carrier.phone.clone(),
        tracking_format: match carrier.tracking {
            TrackingScheme::UpuS10 { .. } => pb::TrackingFormat::UpuS10,
            TrackingScheme::Proprietary { .. } => pb::TrackingFormat::Proprietary,
        }
        .into(),
        website: carrier.website.clone(),
        return_postage: directory
            .country(&carrier.country)
            .map(|c| store::money_to_proto(&c.postage())),
    }
}

fn eligibility_to_proto(e: FreeReturnEligibility) -> pb::FreeReturnEligibility {
    pb::FreeReturnEligibility::from_str_name(&format!("FREE_RETURN_ELIGIBILITY_{}", e.code()))
        .unwrap_or(pb::FreeReturnEligibility::Unspecified)
}

/// Whether `caller` is party to `label`; others are told it does not exist.
fn can_see(caller: &Caller, label: &LabelRow) -> bool {
    match caller.role {
        Role::Buyer => label.buyer_id == caller.id,
        Role::Seller => label.seller_id == caller.id,
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

// ---- outbox ---------------------------------------------------------------------------------

async fn emit_return_event(
    tx: &mut Tx,
    label: &LabelRow,
    kind: disputes_pb::ReturnEventType,
    occurred_at: Timestamp,
    notes: &str,
) -> Result<(), ApiError> {
    let id = MessageId::new();
    let request = disputes_pb::RecordReturnEventRequest {
        message_id: id.to_string(),
        order_id: label.order_id.clone(),
        dispute_id: label.dispute_id.clone(),
        label_id: label.label_id.clone(),
        r#type: kind.into(),
        occurred_at: Some(timestamp_to_proto(occurred_at)),
        tracking_number: label.tracking_number.clone(),
        ship_by: Some(timestamp_to_proto(store::instant(label.ship_by)?)),
        postage: Some(store::money_to_proto(&label.postage)),
        paid_by: store::payer_to_proto(label.paid_by).into(),
        free_return: label.free_return,
        notes: notes.to_owned(),
    };
    let message = OutboxMessage::new(returns_proto::rpcs::disputes::RECORD_RETURN_EVENT, &request);
    enqueue(tx, &id, &message, current_traceparent().as_deref()).await
}

async fn emit_progress(
    tx: &mut Tx,
    label: &LabelRow,
    progress: refunds_pb::ReturnProgress,
    occurred_at: Timestamp,
    notes: &str,
    deductions: Vec<refunds_pb::Deduction>,
) -> Result<(), ApiError> {
    let id = MessageId::new();
    let request = refunds_pb::RecordReturnProgressRequest {
        request_id: id.to_string(),
        message_id: id.to_string(),
        order_id: label.order_id.clone(),
        return_label_id: label.label_id.clone(),
        dispute_id: label.dispute_id.clone(),
        progress: progress.into(),
        occurred_at: Some(timestamp_to_proto(occurred_at)),
        notes: notes.to_owned(),
        deductions,
    };
    let message = OutboxMessage::new(
        returns_proto::rpcs::refunds::RECORD_RETURN_PROGRESS,
        &request,
    );
    enqueue(tx, &id, &message, current_traceparent().as_deref()).await
}

// ---- shared reads ---------------------------------------------------------------------------

async fn quota_used(
    conn: &mut AnyConnection,
    buyer_id: &str,
    month: &str,
) -> Result<u32, ApiError> {
    let row = sqlx::query("SELECT used FROM free_return_quota WHERE buyer_id = $1 AND month = $2")
        .bind(buyer_id)
        .bind(month)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => u32::try_from(column::<i64>(&row, "used")?).unwrap_or(0),
        None => 0,
    })
}

impl LabelGrpc {
    /// The country's flat postage, in the item's currency when the FX table can say (so a
    /// buyer-paid postage can be deducted from the refund), otherwise the local currency.
    fn postage_for(
        &self,
        country: &str,
        item_currency: Option<CurrencyCode>,
    ) -> Result<Money, ApiError> {
        let country = self.directory.country(country).ok_or_else(|| {
            ApiError::precondition(
                "no_return_partner",
                format!("there is no return partner in country {country}"),
            )
        })?;
        let local = country.postage();
        match item_currency {
            Some(currency) => {
                Ok(rules::convert_via_usd(&local, currency, &self.fx).unwrap_or(local))
            }
            None => Ok(local),
        }
    }

    /// The partners of a country, refusing a country the directory does not serve.
    fn partners(&self, country: &str) -> Result<Vec<&Carrier>, ApiError> {
        let partners: Vec<_> = self.directory.in_country(country).collect();
        if partners.is_empty() {
            return Err(ApiError::precondition(
                "no_return_partner",
                format!(
                    "there is no drop-off partner or pickup courier in country {country}; \
                     served countries: {}",
                    self.directory
                        .countries()
                        .map(|c| c.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(partners)
    }

    fn decide_free_return(
        &self,
        auth: &AuthorisationRow,
        postage: Money,
        used: u32,
        now: Timestamp,
    ) -> Result<FreeReturnDecision, ApiError> {
        let facts = FreeReturnFacts {
            free_return_listing: auth.free_return,
            delivered_at: auth.delivered_at,
            order_has_label: auth.label_id.is_some(),
            item_value: auth.item_value,
            postage,
            used_this_month: used,
        };
        Ok(rules::free_return_eligibility(
            &facts,
            now,
            &self.context.policy,
            &self.fx,
        )?)
    }

    async fn label_for(&self, caller: &Caller, label_id: &str) -> Result<LabelRow, ApiError> {
        let mut conn = self.conn().await?;
        match store::load_label(&mut conn, "label_id", label_id, "").await? {
            Some(label) if can_see(caller, &label) => Ok(label),
            _ => Err(ApiError::not_found("label", label_id)),
        }
    }

    async fn label_proto(&self, label: &LabelRow) -> Result<pb::ReturnLabel, ApiError> {
        let mut conn = self.conn().await?;
        label.to_proto(&mut conn).await
    }

    /// Loads and locks a label the caller (buyer owner or platform) may change.
    async fn locked_label(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        label_id: &str,
    ) -> Result<LabelRow, ApiError> {
        match store::load_label(tx, "label_id", label_id, self.db.for_update()).await? {
            Some(label) if can_see(caller, &label) => Ok(label),
            _ => Err(ApiError::not_found("label", label_id)),
        }
    }
}

// ---- the RPCs -------------------------------------------------------------------------------

#[tonic::async_trait]
impl ReturnLabelService for LabelGrpc {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn authorise_return(
        &self,
        request: Request<pb::AuthoriseReturnRequest>,
    ) -> Result<Response<pb::AuthoriseReturnResponse>, Status> {
        let req = request.into_inner();
        required("message_id", &req.message_id)?;
        let order_id = required("order_id", &req.order_id)?.to_owned();
        required("dispute_id", &req.dispute_id)?;
        required("buyer_id", &req.buyer_id)?;
        required("seller_id", &req.seller_id)?;
        let destination = country_code("destination_country", &req.destination_country)?;
        let item_value = money("item_value", &req.item_value)?;
        let delivered_at = timestamp("delivered_at", &req.delivered_at)?;
        let ship_by = timestamp("ship_by", &req.ship_by)?;
        let reason = reason_from_proto(req.reason)?;
        let payer = payer_from_proto(req.postage_payer)?;
        if req.return_to.is_some() {
            address("return_to", &req.return_to)?;
        }
        let response = retry_conflicts(|| async {
            let now = self.now();
            let mut tx = self.db.begin_write().await?;
            let current = store::load_authorisation(&mut tx, &order_id, self.db.for_update()).await?;
            let first = accept_once(&mut tx, &req.message_id, "disputes", now).await?;
            // A redelivery, or a new authorisation while a label is live, changes nothing:
            // the live label already carries the terms it was issued under.
            let keep = !first || current.as_ref().is_some_and(|c| c.label_id.is_some());
            if !keep {
                sqlx::query("DELETE FROM return_authorisations WHERE order_id = $1")
                    .bind(&order_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO return_authorisations (order_id, dispute_id, buyer_id, seller_id, \
                     destination_country, item_value_currency, item_value_minor, delivered_at, \
                     free_return, postage_payer, ship_by, reason, return_to, authorised_at, label_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL)",
                )
                .bind(&order_id)
                .bind(&req.dispute_id)
                .bind(&req.buyer_id)
                .bind(&req.seller_id)
                .bind(&destination)
                .bind(item_value.currency.as_str())
                .bind(item_value.minor_units)
                .bind(delivered_at.map(micros))
                .bind(i64::from(req.free_return))
                .bind(payer.map(|p| p.code()))
                .bind(ship_by.map(micros))
                .bind(reason.code())
                .bind(req.return_to.as_ref().map(prost::Message::encode_to_vec))
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            }
            let stored = store::load_authorisation(&mut tx, &order_id, "")
                .await?
                .ok_or_else(|| ApiError::not_found("return authorisation", order_id.clone()))?;
            tx.commit().await?;
            Ok::<_, ApiError>(pb::AuthoriseReturnResponse {
                authorisation: Some(stored.to_proto()),
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn list_return_options(
        &self,
        request: Request<pb::ListReturnOptionsRequest>,
    ) -> Result<Response<pb::ListReturnOptionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let order_id = required("order_id", &req.order_id)?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let auth = store::load_authorisation(&mut conn, order_id, "").await?;
        let auth = match auth {
            Some(a) if caller.is(Role::Buyer) && a.buyer_id != caller.id => {
                return Err(ApiError::not_found("return authorisation", order_id).into());
            }
            other => other,
        };
        // An authorised order is quoted for its delivery country only, the country its label
        // will be issued in; without an authorisation the caller is browsing the directory.
        let country = match (&auth, req.country_code.is_empty()) {
            (Some(a), true) => a.destination_country.clone(),
            (Some(a), false) => {
                let asked = country_code("country_code", &req.country_code)?;
                in_delivery_country("country_code", &asked, &a.destination_country)?;
                asked
            }
            (None, true) => {
                return Err(ApiError::invalid(
                    "country_code",
                    "is required when the order holds no return authorisation",
                )
                .into());
            }
            (None, false) => country_code("country_code", &req.country_code)?,
        };
        let partners = self.partners(&country)?;
        let postage = self.postage_for(&country, auth.as_ref().map(|a| a.item_value.currency))?;
        let limit = self.context.policy.free_returns_per_month();
        let month = rules::quota_month(now);
        let mut response = pb::ListReturnOptionsResponse {
            order_id: order_id.to_owned(),
            country_code: country.clone(),
            drop_off_partners: partners
                .iter()
                .filter(|c| c.offers_drop_off())
                .map(|c| carrier_to_proto(&self.directory, c))
                .collect(),
            pickup_couriers: partners
                .iter()
                .filter(|c| c.offers_pickup())
                .map(|c| carrier_to_proto(&self.directory, c))
                .collect(),
            postage: Some(store::money_to_proto(&postage)),
            ..Default::default()
        };
        match auth {
            Some(auth) => {
                let used = quota_used(&mut conn, &auth.buyer_id, &month).await?;
                let decision = self.decide_free_return(&auth, postage, used, now)?;
                let payer =
                    rules::postage_payer(auth.reason, auth.postage_payer, decision.is_eligible());
                response.free_return_eligibility =
                    eligibility_to_proto(decision.eligibility).into();
                response.free_return_reason = decision.reason;
                response.free_returns_left_this_month =
                    i32::try_from(decision.left_this_month).unwrap_or(0);
                response.paid_by = store::payer_to_proto(payer).into();
                response.return_authorised = true;
                response.ship_by = Some(timestamp_to_proto(rules::ship_by(
                    auth.ship_by,
                    auth.authorised_at,
                    &self.context.policy,
                )));
            }
            None => {
                response.free_return_reason = format!(
                    "order {order_id} holds no return authorisation yet; open a return dispute first"
                );
                if caller.is(Role::Buyer) {
                    let used = quota_used(&mut conn, &caller.id, &month).await?;
                    response.free_returns_left_this_month =
                        i32::try_from(limit.saturating_sub(used)).unwrap_or(0);
                }
            }
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn create_return_label(
        &self,
        request: Request<pb::CreateReturnLabelRequest>,
    ) -> Result<Response<pb::CreateReturnLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        required("order_id", &req.order_id)?;
        let method = match pb::ReturnMethod::try_from(req.method) {
            Ok(pb::ReturnMethod::DropOff) => "DROP_OFF",
            Ok(pb::ReturnMethod::Pickup) => "PICKUP",
            _ => return Err(ApiError::invalid("method", "must be DROP_OFF or PICKUP").into()),
        };
        let sender = address("sender", &req.sender)?;
        let response = idempotent!(self, "CreateReturnLabel", caller, request_id, &req, |tx| {
            self.create_label_in(&mut tx, &caller, &req, method, &sender)
                .await?
        });
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn get_return_label(
        &self,
        request: Request<pb::GetReturnLabelRequest>,
    ) -> Result<Response<pb::GetReturnLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let label_id = required("label_id", &request.get_ref().label_id)?;
        let label = self.label_for(&caller, label_id).await?;
        Ok(Response::new(pb::GetReturnLabelResponse {
            label: Some(self.label_proto(&label).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_return_labels(
        &self,
        request: Request<pb::ListReturnLabelsRequest>,
    ) -> Result<Response<pb::ListReturnLabelsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let (size, _) = page("page_size", req.page_size, "")?;
        let mut binds: Vec<String> = Vec::new();
        // The caller's scope first: parties see their own labels, carriers their own.
        let scope = match caller.role {
            Role::Buyer => Some(("buyer_id", caller.id.clone())),
            Role::Seller => Some(("seller_id", caller.id.clone())),
            Role::Carrier => Some(("provider_code", caller_carrier(&caller)?.to_owned())),
            Role::Platform | Role::Arbiter => None,
        };
        let filters = [
            scope,
            (!req.order_id.is_empty()).then(|| ("order_id", req.order_id.clone())),
            (!req.dispute_id.is_empty()).then(|| ("dispute_id", req.dispute_id.clone())),
            (!req.buyer_id.is_empty()).then(|| ("buyer_id", req.buyer_id.clone())),
            (!req.seller_id.is_empty()).then(|| ("seller_id", req.seller_id.clone())),
            (!req.provider_code.is_empty()).then(|| ("provider_code", req.provider_code.clone())),
        ];
        let mut sql = String::from("SELECT * FROM return_labels WHERE 1 = 1");
        for (name, value) in filters.into_iter().flatten() {
            binds.push(value);
            sql.push_str(&format!(" AND {name} = ${}", binds.len()));
        }
        match pb::LabelStatus::try_from(req.status) {
            Ok(pb::LabelStatus::Unspecified) => {}
            Ok(status) => {
                binds.push(
                    status
                        .as_str_name()
                        .trim_start_matches("LABEL_STATUS_")
                        .to_owned(),
                );
                sql.push_str(&format!(" AND status = ${}", binds.len()));
            }
            Err(_) => return Err(ApiError::invalid("status", "unknown value").into()),
        }
        if !req.page_token.is_empty() {
            LabelId::parse(&req.page_token).map_err(|_| {
                ApiError::invalid("page_token", "is not a token from a previous page")
            })?;
            binds.push(req.page_token.clone());
            sql.push_str(&format!(" AND label_id < ${}", binds.len()));
        }
        sql.push_str(&format!(" ORDER BY label_id DESC LIMIT {}", size + 1));
        let mut query = sqlx::query(&sql);
        for value in &binds {
            query = query.bind(value);
        }
        let mut conn = self.conn().await?;
        let rows = query.fetch_all(&mut *conn).await.map_err(ApiError::from)?;
        let mut labels = Vec::new();
        for row in rows.iter().take(size) {
            let label = LabelRow::from_row(row)?;
            labels.push(label.to_proto(&mut conn).await?);
        }
        let next_page_token = if rows.len() > size {
            labels
                .last()
                .map(|l| l.label_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListReturnLabelsResponse {
            labels,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn get_label_document(
        &self,
        request: Request<pb::GetLabelDocumentRequest>,
    ) -> Result<Response<pb::GetLabelDocumentResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let label_id = required("label_id", &req.label_id)?;
        let format = pb::DocumentFormat::try_from(req.format)
            .ok()
            .filter(|f| *f != pb::DocumentFormat::Unspecified)
            .ok_or_else(|| ApiError::invalid("format", "must be PDF, PNG or ZPL"))?;
        let label = self.label_for(&caller, label_id).await?;
        if label.status == LabelStatus::Voided {
            return Err(ApiError::precondition(
                "label_voided",
                format!(
                    "label {} was voided and must not be printed",
                    label.label_id
                ),
            )
            .into());
        }
        let doc = document::LabelDocument {
            tracking_number: label.tracking_number.clone(),
            carrier_name: self
                .directory
                .carrier(&label.provider_code)
                .map_or_else(|| label.provider_code.clone(), |c| c.name.clone()),
            method: label.method.replace('_', "-"),
            sender: store::decode(&label.sender)?,
            return_to: label.return_to.as_deref().map(store::decode).transpose()?,
            qr_payload: label.qr_payload.clone(),
            ship_by: store::instant(label.ship_by)?
                .format("%Y-%m-%d")
                .to_string(),
            paid_by: match label.paid_by {
                PostagePayer::Buyer => "BUYER DEDUCTED".to_owned(),
                other => format!("{} PREPAID", other.code()),
            },
            order_id: label.order_id.clone(),
            label_id: label.label_id.clone(),
        };
        let (content_type, extension) = match format {
            pb::DocumentFormat::Png => ("image/png", "png"),
            pb::DocumentFormat::Zpl => ("application/x-zpl", "zpl"),
            _ => ("application/pdf", "pdf"),
        };
        // Rendering is CPU work; keep it off the async workers.
        let content = tokio::task::spawn_blocking(move || match format {
            pb::DocumentFormat::Png => document::render_png(&doc),
            pb::DocumentFormat::Zpl => document::render_zpl(&doc),
            _ => document::render_pdf(&doc),
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
        Ok(Response::new(pb::GetLabelDocumentResponse {
            content,
            content_type: content_type.to_owned(),
            file_name: format!("{}.{extension}", label.tracking_number),
        }))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn void_label(
        &self,
        request: Request<pb::VoidLabelRequest>,
    ) -> Result<Response<pb::VoidLabelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        let label_id = required("label_id", &req.label_id)?;
        let response = idempotent!(self, "VoidLabel", caller, request_id, &req, |tx| {
            let now = self.now();
            let mut label = self.locked_label(&mut tx, &caller, label_id).await?;
            rules::check_void(label.status)?;
            label.status = LabelStatus::Voided;
            label.voided_at = Some(micros(now));
            label.updated_at = micros(now);
            label.save(&mut tx).await?;
            sqlx::query("UPDATE return_authorisations SET label_id = NULL WHERE order_id = $1 AND label_id = $2")
                .bind(&label.order_id)
                .bind(&label.label_id)
                .execute(&mut *tx)
                .await?;
            if let (true, Some(month)) = (label.free_return, &label.quota_month) {
                // The free return is given back to the month it was counted in.
                sqlx::query(
                    "UPDATE free_return_quota SET used = used - 1 \
                     WHERE buyer_id = $1 AND month = $2 AND used > 0",
                )
                .bind(&label.buyer_id)
                .bind(month)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE pickups SET status = 'CANCELLED', updated_at = $1 \
                 WHERE label_id = $2 AND status IN ('SCHEDULED', 'CONFIRMED')",
            )
            .bind(micros(now))
            .bind(&label.label_id)
            .execute(&mut *tx)
            .await?;
            // Refunds hears nothing: a buyer-paid label's postage deduction stays (a void before
            // use is rare, and the next label's deduction is ignored as a second one).
            emit_return_event(
                &mut tx,
                &label,
                disputes_pb::ReturnEventType::LabelVoided,
                now,
                &req.reason,
            )
            .await?;
            pb::VoidLabelResponse {
                label: Some(label.to_proto(&mut tx).await?),
            }
        });
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn schedule_pickup(
        &self,
        request: Request<pb::SchedulePickupRequest>,
    ) -> Result<Response<pb::SchedulePickupResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        let label_id = required("label_id", &req.label_id)?;
        let start = timestamp("window_start", &req.window_start)?
            .ok_or_else(|| ApiError::invalid("window_start", "is required"))?;
        let end = timestamp("window_end", &req.window_end)?
            .ok_or_else(|| ApiError::invalid("window_end", "is required"))?;
        if req.address.is_some() {
            address("address", &req.address)?;
        }
        let response = idempotent!(self, "SchedulePickup", caller, request_id, &req, |tx| {
            let now = self.now();
            rules::check_pickup_window(start, end, now, PICKUP_WINDOW_MAX_HOURS)?;
            let mut label = self.locked_label(&mut tx, &caller, label_id).await?;
            if label.method != "PICKUP" {
                return Err(ApiError::precondition(
                    "pickup_countries_only",
                    format!(
                        "label {} is a {} label with {}; pickups are booked only for PICKUP labels \
                         in pickup countries",
                        label.label_id, label.method, label.provider_code
                    ),
                ));
            }
            if label.status != LabelStatus::Created {
                return Err(ApiError::precondition(
                    "state",
                    format!(
                        "cannot book a pickup while the label is {}; allowed in: CREATED \
                         (cancel the current pickup first)",
                        label.status
                    ),
                ));
            }
            let ship_by = store::instant(label.ship_by)?;
            if start > ship_by {
                return Err(ApiError::precondition(
                    "ship_by",
                    format!(
                        "the pickup window starts {} after the ship-by deadline {}",
                        start.format("%Y-%m-%d %H:%M UTC"),
                        ship_by.format("%Y-%m-%d %H:%M UTC")
                    ),
                ));
            }
            let sender = store::decode::<common::Address>(&label.sender)?;
            let pickup_address = match &req.address {
                Some(a) => {
                    // The courier collects only in the country it serves, which is where the
                    // label was issued (the order's delivery country).
                    let collects_in = self
                        .directory
                        .carrier(&label.provider_code)
                        .map_or_else(|| sender.country_code.clone(), |c| c.country.clone());
                    if a.country_code != collects_in {
                        return Err(ApiError::invalid(
                            "address.country_code",
                            format!(
                                "must be {collects_in}, where {} collects for this label, not {}",
                                label.provider_code, a.country_code
                            ),
                        ));
                    }
                    a.clone()
                }
                None => sender,
            };
            let pickup_id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO pickups (pickup_id, label_id, provider_code, window_start, window_end, \
                 address, status, confirmation_reference, instructions, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'SCHEDULED', '', $7, $8, $8)",
            )
            .bind(&pickup_id)
            .bind(&label.label_id)
            .bind(&label.provider_code)
            .bind(micros(start))
            .bind(micros(end))
            .bind(prost::Message::encode_to_vec(&pickup_address))
            .bind(&req.instructions)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
            label.status = LabelStatus::PickupScheduled;
            label.updated_at = micros(now);
            label.save(&mut tx).await?;
            let label = label.to_proto(&mut tx).await?;
            pb::SchedulePickupResponse {
                pickup: label.pickup.clone(),
                label: Some(label),
            }
        });
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(pickup_id = %request.get_ref().pickup_id))]
    async fn cancel_pickup(
        &self,
        request: Request<pb::CancelPickupRequest>,
    ) -> Result<Response<pb::CancelPickupResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        let pickup_id = required("pickup_id", &req.pickup_id)?;
        let response = idempotent!(self, "CancelPickup", caller, request_id, &req, |tx| {
            let now = self.now();
            let row = sqlx::query(&format!(
                "SELECT label_id, status FROM pickups WHERE pickup_id = $1{}",
                self.db.for_update()
            ))
            .bind(pickup_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found("pickup", pickup_id))?;
            let label_id: String = column(&row, "label_id")?;
            let status: String = column(&row, "status")?;
            let mut label = self
                .locked_label(&mut tx, &caller, &label_id)
                .await
                .map_err(|_| ApiError::not_found("pickup", pickup_id))?;
            if status != "SCHEDULED" && status != "CONFIRMED" {
                return Err(ApiError::precondition(
                    "state",
                    format!(
                        "cannot cancel a pickup that is {status}; allowed in: SCHEDULED, CONFIRMED"
                    ),
                ));
            }
            sqlx::query(
                "UPDATE pickups SET status = 'CANCELLED', updated_at = $1 WHERE pickup_id = $2",
            )
            .bind(micros(now))
            .bind(pickup_id)
            .execute(&mut *tx)
            .await?;
            if label.status == LabelStatus::PickupScheduled {
                label.status = LabelStatus::Created;
                label.updated_at = micros(now);
                label.save(&mut tx).await?;
            }
            let pickup = sqlx::query("SELECT * FROM pickups WHERE pickup_id = $1")
                .bind(pickup_id)
                .fetch_one(&mut *tx)
                .await?;
            pb::CancelPickupResponse {
                pickup: Some(store::pickup_from_row(&pickup)?),
                label: Some(label.to_proto(&mut tx).await?),
            }
        });
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(carrier_event_id = %request.get_ref().carrier_event_id))]
    async fn report_tracking_event(
        &self,
        request: Request<pb::ReportTrackingEventRequest>,
    ) -> Result<Response<pb::ReportTrackingEventResponse>, Status> {
        let caller = Caller::of(&request)?;
        let carrier = caller_carrier(&caller)?.to_owned();
        let req = request.into_inner();
        let event_id = required("carrier_event_id", &req.carrier_event_id)?.to_owned();
        let tracking = required("tracking_number", &req.tracking_number)?.to_owned();
        let kind = pb::TrackingEventType::try_from(req.r#type)
            .ok()
            .filter(|t| *t != pb::TrackingEventType::Unspecified)
            .ok_or_else(|| ApiError::invalid("type", "must be set to a tracking event type"))?;
        let kind = TrackingEventType::parse(
            kind.as_str_name()
                .trim_start_matches("TRACKING_EVENT_TYPE_"),
        )
        .map_err(ApiError::from)?;
        let occurred_at = timestamp("occurred_at", &req.occurred_at)?
            .ok_or_else(|| ApiError::invalid("occurred_at", "is required"))?;
        let response = retry_conflicts(|| async {
            let now = self.now();
            let mut tx = self.db.begin_write().await?;
            // Lock the label first: concurrent scans of one label queue here, so the event
            // lookup below sees every scan committed before.
            let mut label = match store::load_label(&mut tx, "tracking_number", &tracking, self.db.for_update()).await? {
                Some(label) if label.provider_code == carrier => label,
                _ => return Err(ApiError::not_found("label with tracking number", tracking.clone())),
            };
            let existing = sqlx::query(
                "SELECT * FROM tracking_events WHERE provider_code = $1 AND carrier_event_id = $2",
            )
            .bind(&carrier)
            .bind(&event_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = existing {
                let event = store::event_from_row(&existing)?;
                if event.tracking_number != tracking || event.r#type != i32::from(store::event_type_to_proto(kind)) {
                    return Err(ApiError::AlreadyExists(format!(
                        "carrier_event_id {event_id:?} was already reported for another scan"
                    )));
                }
                let label = label.to_proto(&mut tx).await?;
                tx.commit().await?;
                return Ok(pb::ReportTrackingEventResponse {
                    label: Some(label),
                    event: Some(event),
                });
            }
            let (journey, effects) = rules::apply_scan(&label.journey()?, kind, occurred_at)?;
            if effects.pickup_confirmed {
                let confirmed = sqlx::query(
                    "UPDATE pickups SET status = 'CONFIRMED', confirmation_reference = $1, updated_at = $2 \
                     WHERE label_id = $3 AND status = 'SCHEDULED'",
                )
                .bind(if req.details.is_empty() { &event_id } else { &req.details })
                .bind(micros(now))
                .bind(&label.label_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if confirmed == 0 && label.status != LabelStatus::PickupScheduled {
                    return Err(ApiError::precondition(
                        "no_pickup_booked",
                        format!("label {} has no booked pickup to confirm", label.label_id),
                    ));
                }
            }
            if effects.accepted_by_carrier {
                sqlx::query(
                    "UPDATE pickups SET status = 'COLLECTED', updated_at = $1 \
                     WHERE label_id = $2 AND status IN ('SCHEDULED', 'CONFIRMED')",
                )
                .bind(micros(now))
                .bind(&label.label_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO tracking_events (provider_code, carrier_event_id, label_id, tracking_number, \
                 type, occurred_at, location, details, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&carrier)
            .bind(&event_id)
            .bind(&label.label_id)
            .bind(&tracking)
            .bind(kind.code())
            .bind(micros(occurred_at))
            .bind(&req.location)
            .bind(&req.details)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
            label.status = journey.status;
            label.status_at = journey.status_at.map(micros);
            label.accepted_at = journey.accepted_at.map(micros);
            label.delivered_at = journey.delivered_at.map(micros);
            label.updated_at = micros(now);
            label.save(&mut tx).await?;
            if effects.accepted_by_carrier {
                let at = journey.accepted_at.unwrap_or(occurred_at);
                emit_progress(&mut tx, &label, refunds_pb::ReturnProgress::AcceptedByCarrier, at, "", Vec::new()).await?;
                emit_return_event(&mut tx, &label, disputes_pb::ReturnEventType::AcceptedByCarrier, at, "")
                    .await?;
            }
            if effects.delivered {
                emit_progress(&mut tx, &label, refunds_pb::ReturnProgress::Delivered, occurred_at, "", Vec::new()).await?;
                emit_return_event(&mut tx, &label, disputes_pb::ReturnEventType::Delivered, occurred_at, "")
                    .await?;
            }
            let stored = sqlx::query("SELECT * FROM tracking_events WHERE provider_code = $1 AND carrier_event_id = $2")
                .bind(&carrier)
                .bind(&event_id)
                .fetch_one(&mut *tx)
                .await?;
            let response = pb::ReportTrackingEventResponse {
                event: Some(store::event_from_row(&stored)?),
                label: Some(label.to_proto(&mut tx).await?),
            };
            tx.commit().await?;
            Ok(response)
        })
        .await?;
        self.context.work_committed();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(label_id = %request.get_ref().label_id))]
    async fn record_inspection(
        &self,
        request: Request<pb::RecordInspectionRequest>,
    ) -> Result<Response<pb::RecordInspectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        let label_id = required("label_id", &req.label_id)?;
        let result = pb::InspectionResult::try_from(req.result)
            .ok()
            .filter(|r| *r != pb::InspectionResult::Unspecified)
            .ok_or_else(|| ApiError::invalid("result", "must be set to an inspection result"))?;
        let result = InspectionResult::parse(
            result
                .as_str_name()
                .trim_start_matches("INSPECTION_RESULT_"),
        )
        .map_err(ApiError::from)?;
        if req.notes.len() > 4000 {
            return Err(ApiError::invalid("notes", "is longer than 4000 characters").into());
        }
        let response = idempotent!(self, "RecordInspection", caller, request_id, &req, |tx| {
            let now = self.now();
            let mut label = self.locked_label(&mut tx, &caller, label_id).await?;
            rules::check_inspection(label.status)?;
            let inspection = pb::Inspection {
                result: store::inspection_to_proto(result).into(),
                notes: req.notes.clone(),
                inspected_by: Some(common::Actor {
                    id: caller.id.clone(),
                    role: common::Role::Seller.into(),
                }),
                inspected_at: Some(timestamp_to_proto(now)),
                evidence_uris: req.evidence_uris.clone(),
            };
            label.status = LabelStatus::Inspected;
            label.inspection = Some(prost::Message::encode_to_vec(&inspection));
            label.updated_at = micros(now);
            label.save(&mut tx).await?;
            let progress = if result.passes() {
                refunds_pb::ReturnProgress::InspectionPassed
            } else {
                refunds_pb::ReturnProgress::InspectionFailed
            };
            let event = match result {
                InspectionResult::Accepted => disputes_pb::ReturnEventType::InspectionAccepted,
                InspectionResult::DamagedAsClaimed => {
                    disputes_pb::ReturnEventType::InspectionDamagedAsClaimed
                }
                InspectionResult::DamagedInTransit => {
                    disputes_pb::ReturnEventType::InspectionDamagedInTransit
                }
                InspectionResult::WrongOrEmpty => {
                    disputes_pb::ReturnEventType::InspectionWrongOrEmpty
                }
            };
            emit_progress(&mut tx, &label, progress, now, &req.notes, Vec::new()).await?;
            emit_return_event(&mut tx, &label, event, now, &req.notes).await?;
            pb::RecordInspectionResponse {
                label: Some(label.to_proto(&mut tx).await?),
            }
        });
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn list_carriers(
        &self,
        request: Request<pb::ListCarriersRequest>,
    ) -> Result<Response<pb::ListCarriersResponse>, Status> {
        let req = request.into_inner();
        if !req.country_code.is_empty() {
            country_code("country_code", &req.country_code)?;
        }
        let service = match pb::ServiceType::try_from(req.service_type) {
            Ok(pb::ServiceType::Unspecified) => None,
            Ok(pb::ServiceType::DropOff) => Some(ServiceType::DropOff),
            Ok(pb::ServiceType::Locker) => Some(ServiceType::Locker),
            Ok(pb::ServiceType::Pickup) => Some(ServiceType::Pickup),
            Err(_) => return Err(ApiError::invalid("service_type", "unknown value").into()),
        };
        let (size, offset) = page("page_size", req.page_size, &req.page_token)?;
        let matching: Vec<_> = self
            .directory
            .carriers()
            .iter()
            .filter(|c| req.country_code.is_empty() || c.country == req.country_code)
            .filter(|c| service.is_none_or(|s| c.service_types.contains(&s)))
            .collect();
        Ok(Response::new(pb::ListCarriersResponse {
            carriers: matching
                .iter()
                .skip(offset)
                .take(size)
                .map(|c| carrier_to_proto(&self.directory, c))
                .collect(),
            next_page_token: next_token(offset, size, matching.len()),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider_code = %request.get_ref().provider_code))]
    async fn upsert_drop_off_locations(
        &self,
        request: Request<pb::UpsertDropOffLocationsRequest>,
    ) -> Result<Response<pb::UpsertDropOffLocationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let own = caller_carrier(&caller)?.to_owned();
        let req = request.into_inner();
        let request_id = required("request_id", &req.request_id)?;
        let provider = required("provider_code", &req.provider_code)?;
        if provider != own {
            return Err(ApiError::PermissionDenied(format!(
                "carrier {own} may only publish its own locations, not {provider}'s"
            ))
            .into());
        }
        let carrier = self
            .directory
            .carrier(provider)
            .ok_or_else(|| {
                ApiError::invalid(
                    "provider_code",
                    format!("{provider} is not in the carrier directory"),
                )
            })?
            .clone();
        if !carrier.offers_drop_off() {
            return Err(ApiError::precondition(
                "drop_off_partners_only",
                format!(
                    "{} offers pickup only and has no drop-off locations",
                    carrier.code
                ),
            )
            .into());
        }
        if req.locations.is_empty() || req.locations.len() > 500 {
            return Err(ApiError::invalid("locations", "must hold 1 to 500 locations").into());
        }
        for (i, location) in req.locations.iter().enumerate() {
            let field = |name: &str| format!("locations[{i}].{name}");
            required(&field("location_id"), &location.location_id)?;
            required(&field("name"), &location.name)?;
            if location.country_code != carrier.country {
                return Err(ApiError::invalid(
                    field("country_code"),
                    format!("{} serves {} only", carrier.code, carrier.country),
                )
                .into());
            }
            if !(-90.0..=90.0).contains(&location.latitude)
                || !(-180.0..=180.0).contains(&location.longitude)
            {
                return Err(ApiError::invalid(
                    field("latitude"),
                    "latitude/longitude out of range",
                )
                .into());
            }
            if !location.provider_code.is_empty() && location.provider_code != carrier.code {
                return Err(ApiError::invalid(
                    field("provider_code"),
                    "must be empty or the request's provider_code",
                )
                .into());
            }
            if matches!(
                pb::LocationKind::try_from(location.kind),
                Ok(pb::LocationKind::Unspecified) | Err(_)
            ) {
                return Err(ApiError::invalid(
                    field("kind"),
                    "must be POST_OFFICE, LOCKER or PARCEL_SHOP",
                )
                .into());
            }
            address(&field("address"), &location.address)?;
        }
        let response = idempotent!(
            self,
            "UpsertDropOffLocations",
            caller,
            request_id,
            &req,
            |tx| {
                let now = self.now();
                let mut inserted = 0;
                let mut updated = 0;
                let mut stored = Vec::new();
                for location in &req.locations {
                    let exists = sqlx::query(&format!(
                    "SELECT location_id FROM drop_off_locations WHERE provider_code = $1 AND location_id = $2{}",
                    self.db.for_update()
                ))
                .bind(&carrier.code)
                .bind(&location.location_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                    let addr = location.address.clone().unwrap_or_default();
                    let kind = pb::LocationKind::try_from(location.kind)
                        .unwrap_or(pb::LocationKind::Unspecified)
                        .as_str_name()
                        .trim_start_matches("LOCATION_KIND_")
                        .to_owned();
                    if exists {
                        updated += 1;
                        sqlx::query("DELETE FROM drop_off_locations WHERE provider_code = $1 AND location_id = $2")
                        .bind(&carrier.code)
                        .bind(&location.location_id)
                        .execute(&mut *tx)
                        .await?;
                    } else {
                        inserted += 1;
                    }
                    sqlx::query(
                    "INSERT INTO drop_off_locations (provider_code, location_id, country_code, name, kind, \
                     address, postal_code, latitude_e6, longitude_e6, opening_hours, active, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&carrier.code)
                .bind(&location.location_id)
                .bind(&location.country_code)
                .bind(&location.name)
                .bind(kind)
                .bind(prost::Message::encode_to_vec(&addr))
                .bind(normalise_postal_code(&addr.postal_code))
                .bind(to_e6(location.latitude))
                .bind(to_e6(location.longitude))
                .bind(&location.opening_hours)
                .bind(i64::from(location.active))
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
                    stored.push(pb::DropOffLocation {
                        provider_code: carrier.code.clone(),
                        distance_meters: None,
                        updated_at: Some(timestamp_to_proto(now)),
                        latitude: from_e6(to_e6(location.latitude)),
                        longitude: from_e6(to_e6(location.longitude)),
                        ..location.clone()
                    });
                }
                pb::UpsertDropOffLocationsResponse {
                    locations: stored,
                    inserted_count: inserted,
                    updated_count: updated,
                }
            }
        );
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(country_code = %request.get_ref().country_code))]
    async fn list_drop_off_locations(
        &self,
        request: Request<pb::ListDropOffLocationsRequest>,
    ) -> Result<Response<pb::ListDropOffLocationsResponse>, Status> {
        let req = request.into_inner();
        let country = country_code("country_code", &req.country_code)?;
        self.partners(&country)?;
        let point = match (req.latitude, req.longitude) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return Err(
                        ApiError::invalid("latitude", "latitude/longitude out of range").into(),
                    );
                }
                Some((lat, lon))
            }
            (None, None) => None,
            _ => {
                return Err(
                    ApiError::invalid("longitude", "latitude and longitude go together").into(),
                );
            }
        };
        let (size, offset) = page("page_size", req.page_size, &req.page_token)?;
        let mut sql =
            String::from("SELECT * FROM drop_off_locations WHERE country_code = $1 AND active = 1");
        let mut binds = vec![country];
        if !req.postal_code.is_empty() {
            binds.push(normalise_postal_code(&req.postal_code));
            sql.push_str(&format!(" AND postal_code = ${}", binds.len()));
        }
        if !req.provider_code.is_empty() {
            binds.push(req.provider_code.clone());
            sql.push_str(&format!(" AND provider_code = ${}", binds.len()));
        }
        match pb::LocationKind::try_from(req.kind) {
            Ok(pb::LocationKind::Unspecified) => {}
            Ok(kind) => {
                binds.push(
                    kind.as_str_name()
                        .trim_start_matches("LOCATION_KIND_")
                        .to_owned(),
                );
                sql.push_str(&format!(" AND kind = ${}", binds.len()));
            }
            Err(_) => return Err(ApiError::invalid("kind", "unknown value").into()),
        }
        sql.push_str(" ORDER BY provider_code, location_id");
        let mut query = sqlx::query(&sql);
        for value in &binds {
            query = query.bind(value);
        }
        let mut conn = self.conn().await?;
        let rows = query.fetch_all(&mut *conn).await.map_err(ApiError::from)?;
        let mut locations = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = column(row, "kind")?;
            let addr: Vec<u8> = column(row, "address")?;
            let lat = from_e6(column(row, "latitude_e6")?);
            let lon = from_e6(column(row, "longitude_e6")?);
            locations.push(pb::DropOffLocation {
                location_id: column(row, "location_id")?,
                provider_code: column(row, "provider_code")?,
                country_code: column(row, "country_code")?,
                name: column(row, "name")?,
                kind: pb::LocationKind::from_str_name(&format!("LOCATION_KIND_{kind}"))
                    .unwrap_or(pb::LocationKind::Unspecified)
                    .into(),
                address: Some(store::decode(&addr)?),
                latitude: lat,
                longitude: lon,
                opening_hours: column(row, "opening_hours")?,
                distance_meters: point.map(|(plat, plon)| {
                    rules::haversine_meters(plat, plon, lat, lon).round() as i64
                }),
                active: column::<i64>(row, "active")? != 0,
                updated_at: Some(timestamp_to_proto(store::instant(column(
                    row,
                    "updated_at",
                )?)?)),
            });
        }
        if point.is_some() {
            // Stable sort: equal distances keep the provider/location order of the query.
            locations.sort_by_key(|l| l.distance_meters.unwrap_or(i64::MAX));
        }
        let total = locations.len();
        Ok(Response::new(pb::ListDropOffLocationsResponse {
            locations: locations.into_iter().skip(offset).take(size).collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }
}

fn to_e6(degrees: f64) -> i64 {
    (degrees * 1_000_000.0).round() as i64
}

fn from_e6(micro_degrees: i64) -> f64 {
    micro_degrees as f64 / 1_000_000.0
}

/// Postal codes compare without spaces and case ("sw1a 1aa" finds "SW1A 1AA").
fn normalise_postal_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

impl LabelGrpc {
    /// CreateReturnLabel inside its transaction: the authorisation row is locked first, then
    /// the buyer's quota row, then the carrier's serial row, always in that order.
    async fn create_label_in(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        req: &pb::CreateReturnLabelRequest,
        method: &'static str,
        sender: &common::Address,
    ) -> Result<pb::CreateReturnLabelResponse, ApiError> {
        let now = self.now();
        let auth = store::load_authorisation(tx, &req.order_id, self.db.for_update())
            .await?
            .filter(|a| !caller.is(Role::Buyer) || a.buyer_id == caller.id)
            .ok_or_else(|| {
                ApiError::precondition(
                    "return_not_authorised",
                    format!(
                        "order {} holds no return authorisation; a label is issued only after the \
                         return is authorised through its dispute",
                        req.order_id
                    ),
                )
            })?;
        if !req.dispute_id.is_empty() && req.dispute_id != auth.dispute_id {
            return Err(ApiError::precondition(
                "return_not_authorised",
                format!(
                    "dispute {} did not authorise the return of order {} (dispute {} did)",
                    req.dispute_id, req.order_id, auth.dispute_id
                ),
            ));
        }
        let ship_by = rules::ship_by(auth.ship_by, auth.authorised_at, &self.context.policy);
        if now > ship_by {
            return Err(ApiError::precondition(
                "ship_by_passed",
                format!(
                    "the return of order {} had to be shipped by {}; it is now {}",
                    req.order_id,
                    ship_by.format("%Y-%m-%d %H:%M UTC"),
                    now.format("%Y-%m-%d %H:%M UTC")
                ),
            ));
        }
        if let Some(existing) = &auth.label_id {
            return Err(ApiError::precondition(
                "one_label_per_order",
                format!("order {} already has return label {existing}", req.order_id),
            ));
        }
        // The return starts where the order was delivered, a fact disputes sent with the
        // authorisation; the buyer's address only has to agree with it. Letting the sender's
        // country choose would let a buyer pick another country's partner and postage.
        let country = auth.destination_country.clone();
        in_delivery_country("sender.country_code", &sender.country_code, &country)?;
        let partners = self.partners(&country)?;
        let wanted = |c: &Carrier| {
            if method == "PICKUP" {
                c.offers_pickup()
            } else {
                c.offers_drop_off()
            }
        };
        let carrier = if req.provider_code.is_empty() {
            partners.iter().find(|c| wanted(c)).copied()
        } else {
            partners
                .iter()
                .find(|c| c.code == req.provider_code)
                .copied()
        };
        let carrier = match carrier {
            Some(c) if wanted(c) => c,
            _ => {
                let offered: Vec<String> = partners
                    .iter()
                    .map(|c| {
                        let kinds = if c.offers_pickup() {
                            "pickup"
                        } else {
                            "drop-off"
                        };
                        format!("{} ({kinds})", c.code)
                    })
                    .collect();
                return Err(ApiError::precondition(
                    "return_method_unavailable",
                    format!(
                        "no {} partner{} in {country}; it offers: {}",
                        method.replace('_', "-").to_lowercase(),
                        if req.provider_code.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", req.provider_code)
                        },
                        offered.join(", ")
                    ),
                ));
            }
        };
        let postage = self.postage_for(&country, Some(auth.item_value.currency))?;
        let month = rules::quota_month(now);
        sqlx::query(
            "INSERT INTO free_return_quota (buyer_id, month, used) VALUES ($1, $2, 0) \
             ON CONFLICT (buyer_id, month) DO NOTHING",
        )
        .bind(&auth.buyer_id)
        .bind(&month)
        .execute(&mut **tx)
        .await?;
        let used = quota_used(tx, &auth.buyer_id, &month).await?;
        let decision = self.decide_free_return(&auth, postage, used, now)?;
        // The decision above read the counter; the conditional update is what makes it hold
        // under concurrency: only a request that moves the counter below the limit is free.
        let free = decision.is_eligible()
            && sqlx::query(
                "UPDATE free_return_quota SET used = used + 1 \
                 WHERE buyer_id = $1 AND month = $2 AND used < $3",
            )
            .bind(&auth.buyer_id)
            .bind(&month)
            .bind(i64::from(self.context.policy.free_returns_per_month()))
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
        let paid_by = rules::postage_payer(auth.reason, auth.postage_payer, free);
        if paid_by == PostagePayer::Buyer && postage.currency != auth.item_value.currency {
            // Buyer-paid postage is deducted from the refund, which is in the item's currency;
            // a label priced in another currency could never be deducted, so none is issued.
            return Err(ApiError::precondition(
                "buyer_postage_currency",
                format!(
                    "the buyer pays the return postage of order {}, but the {} postage of {country} \
                     cannot be expressed in the item's currency {} to deduct it from the refund",
                    auth.order_id, postage.currency, auth.item_value.currency
                ),
            ));
        }
        let serial_row = sqlx::query(
            "INSERT INTO tracking_serials (provider_code, last_serial) VALUES ($1, 1) \
             ON CONFLICT (provider_code) DO UPDATE SET last_serial = tracking_serials.last_serial + 1 \
             RETURNING last_serial",
        )
        .bind(&carrier.code)
        .fetch_one(&mut **tx)
        .await?;
        let serial = u64::try_from(column::<i64>(&serial_row, "last_serial")?).unwrap_or(0);
        let tracking_number = carrier.tracking_number(serial)?;
        let label_id = LabelId::new().to_string();
        let qr_payload = format!(
            "RETURNS-LABEL:1;label={label_id};carrier={};tracking={tracking_number}",
            carrier.code
        );
        let label = LabelRow {
            label_id: label_id.clone(),
            order_id: auth.order_id.clone(),
            dispute_id: auth.dispute_id.clone(),
            buyer_id: auth.buyer_id.clone(),
            seller_id: auth.seller_id.clone(),
            method: method.to_owned(),
            provider_code: carrier.code.clone(),
            tracking_number,
            ship_by: micros(ship_by),
            paid_by,
            postage,
            free_return: free,
            quota_month: free.then(|| month.clone()),
            qr_payload,
            status: LabelStatus::Created,
            status_at: None,
            sender: prost::Message::encode_to_vec(sender),
            return_to: auth.return_to.as_ref().map(prost::Message::encode_to_vec),
            inspection: None,
            created_at: micros(now),
            updated_at: micros(now),
            accepted_at: None,
            delivered_at: None,
            voided_at: None,
        };
        sqlx::query(
            "INSERT INTO return_labels (label_id, order_id, dispute_id, buyer_id, seller_id, method, \
             provider_code, tracking_number, ship_by, paid_by, postage_currency, postage_minor, \
             free_return, quota_month, qr_payload, status, status_at, sender, return_to, inspection, \
             created_at, updated_at, accepted_at, delivered_at, voided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, $17, \
             $18, NULL, $19, $19, NULL, NULL, NULL)",
        )
        .bind(&label.label_id)
        .bind(&label.order_id)
        .bind(&label.dispute_id)
        .bind(&label.buyer_id)
        .bind(&label.seller_id)
        .bind(&label.method)
        .bind(&label.provider_code)
        .bind(&label.tracking_number)
        .bind(label.ship_by)
        .bind(label.paid_by.code())
        .bind(label.postage.currency.as_str())
        .bind(label.postage.minor_units)
        .bind(i64::from(label.free_return))
        .bind(label.quota_month.clone())
        .bind(&label.qr_payload)
        .bind(label.status.code())
        .bind(label.sender.clone())
        .bind(label.return_to.clone())
        .bind(label.created_at)
        .execute(&mut **tx)
        .await?;
        let claimed = sqlx::query(
            "UPDATE return_authorisations SET label_id = $1 WHERE order_id = $2 AND label_id IS NULL",
        )
        .bind(&label_id)
        .bind(&auth.order_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Err(ApiError::precondition(
                "one_label_per_order",
                format!("order {} already has a return label", auth.order_id),
            ));
        }
        emit_return_event(
            tx,
            &label,
            disputes_pb::ReturnEventType::LabelCreated,
            now,
            &decision.reason,
        )
        .await?;
        if label.paid_by == PostagePayer::Buyer {
            // Refunds withholds the postage from the order's refunds not yet submitted. Seller-
            // or platform-paid labels cost the buyer nothing, so they send refunds nothing here.
            // A void of a buyer-paid label before use is rare and sends no reversal: the next
            // label's deduction replaces nothing, as refunds ignores a second RETURN_POSTAGE
            // deduction for the order.
            let deduction = refunds_pb::Deduction {
                kind: refunds_pb::DeductionKind::ReturnPostage.into(),
                amount: Some(store::money_to_proto(&label.postage)),
                note: format!("buyer-paid return postage ({})", label.provider_code),
            };
            emit_progress(
                tx,
                &label,
                refunds_pb::ReturnProgress::LabelCreated,
                now,
                "",
                vec![deduction],
            )
            .await?;
        }
        Ok(pb::CreateReturnLabelResponse {
            label: Some(label.to_proto(tx).await?),
        })
    }
}
