//! The gRPC face of the service: decode and validate requests, load rows, call the domain
//! rules in `returns_domain::refund`, and write state, ledger and idempotency record in one
//! transaction.
//!
//! Lock order, to keep PostgreSQL free of deadlocks: the order's key lock (CreateRefund and
//! RecordCapture, see `order_key`), then its capture row, then its refunds. The settlement
//! worker locks refunds only.
//!
//! Every commit that creates or releases a refund wakes the background workers
//! (`work_committed`), so settlement starts at once rather than on its poll.

use std::sync::Arc;

use prost::Message;
use returns_domain::calendar::BusinessCalendar;
use returns_domain::dispute::{PaymentMethod, Role};
use returns_domain::money::{CurrencyCode, FxTable, Money};
use returns_domain::refund::{
    self as rules, GateDecision, NettableRefund, Netting, RefundAction, RefundStatus,
    ReturnProgress,
};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::{Tx, retry_conflicts};
use returns_platform::{ApiError, Caller, Database, SuiteContext, idempotency, outbox};
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::refund_service_server::RefundService;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::store::{self, CaptureRow, ChargebackRow, Deduction, RefundRow, ReturnEvent};

/// Longest free-text fields (notes, reasons).
const MAX_TEXT: usize = 2000;
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 200;
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

/// Runs `$body` in a write transaction guarded by the request's idempotency key: a replay
/// returns the recorded response, a new request records its response with the change.
macro_rules! idempotent {
    ($self:ident, $op:expr, $caller:expr, $request_id:expr, $hash:expr, $now:expr, |$tx:ident| $body:expr) => {
        retry_conflicts(|| async {
            let mut $tx = $self.db.begin_write().await?;
            if let Some(replayed) =
                idempotency::replay(&mut $tx, $op, &$caller.id, $request_id, $hash).await?
            {
                return Ok(replayed);
            }
            let response = $body;
            idempotency::record(
                &mut $tx,
                $op,
                &$caller.id,
                $request_id,
                $hash,
                &response,
                to_unix_micros($now),
            )
            .await?;
            $tx.commit().await?;
            Ok(response)
        })
        .await
    };
}

fn request_id(value: &str) -> Result<&str, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(
            "request_id",
            "is required (the idempotency key of a mutating call)",
        ));
    }
    convert::optional_id("request_id", value)?;
    Ok(value)
}

/// The `deductions` of a request: each with a kind, a positive amount and bounded note.
fn parse_deductions(deductions: &[pb::Deduction]) -> Result<Vec<Deduction>, ApiError> {
    let mut out = Vec::with_capacity(deductions.len());
    for (index, deduction) in deductions.iter().enumerate() {
        let field = format!("deductions[{index}]");
        out.push(Deduction {
            kind: convert::deduction_kind(&format!("{field}.kind"), deduction.kind)?,
            amount: convert::positive_money(&format!("{field}.amount"), deduction.amount.as_ref())?,
            note: convert::text(&format!("{field}.note"), &deduction.note, MAX_TEXT)?,
        });
    }
    Ok(out)
}

/// The key CreateRefund and RecordCapture serialise on per order ([`Database::lock_key`]):
/// there may be no capture row to lock yet.
fn order_key(order_id: &str) -> String {
    format!("refunds/order/{order_id}")
}

fn no_capture(order_id: &str) -> ApiError {
    ApiError::precondition(
        "capture_required",
        format!("no capture is recorded for order {order_id}; record the capture first"),
    )
}

/// A validated CreateRefund.
struct NewRefund {
    message_id: String,
    order_id: String,
    dispute_id: String,
    amount: Money,
    net: Money,
    deductions: Vec<Deduction>,
    reason: rules::RefundReason,
    release: rules::ReleaseCondition,
    return_label_id: String,
    note: String,
    /// The request as received, kept when it must wait for the capture.
    encoded: Vec<u8>,
}

impl NewRefund {
    fn parse(req: &pb::CreateRefundRequest) -> Result<Self, ApiError> {
        let amount = convert::positive_money("amount", req.amount.as_ref())?;
        let deductions = parse_deductions(&req.deductions)?;
        let amounts: Vec<Money> = deductions.iter().map(|d| d.amount).collect();
        let net = rules::net_amount(amount, &amounts)?;
        Ok(NewRefund {
            message_id: convert::optional_id("message_id", &req.message_id)?,
            order_id: convert::required_id("order_id", &req.order_id)?,
            dispute_id: convert::optional_id("dispute_id", &req.dispute_id)?,
            amount,
            net,
            deductions,
            reason: convert::reason("reason", req.reason)?,
            release: convert::release("release", req.release)?,
            return_label_id: convert::optional_id("return_label_id", &req.return_label_id)?,
            note: convert::text("note", &req.note, MAX_TEXT)?,
            encoded: req.encode_to_vec(),
        })
    }
}

impl RefundGrpc {
    /// Releases `refund` (ON_HOLD or new) at `now`: timeline window, due for the worker.
    fn release(&self, refund: &mut RefundRow, fast: bool, now: Timestamp) -> Result<(), ApiError> {
        refund.status = rules::transition(refund.status, RefundAction::Release)?;
        let (earliest, latest) = rules::expected_window(
            &self.context.policy,
            &self.calendar,
            refund.reason,
            refund.method,
            now,
        );
        let now_us = to_unix_micros(now);
        refund.released_at = Some(now_us);
        refund.expected_earliest = Some(to_unix_micros(earliest));
        refund.expected_latest = Some(to_unix_micros(latest));
        refund.next_attempt_at = Some(now_us);
        refund.fast_refund = fast;
        refund.status_reason.clear();
        refund.updated_at = now_us;
        Ok(())
    }

    /// Adds a label's deductions to a refund not yet submitted (see
    /// [`rules::add_return_deductions`]); returns whether it changed.
    fn apply_label_deductions(
        refund: &mut RefundRow,
        deductions: &[Deduction],
        now: Timestamp,
    ) -> Result<bool, ApiError> {
        let Some((deductions, net)) = rules::add_return_deductions(
            refund.status,
            refund.amount,
            &refund.deductions,
            deductions,
        )?
        else {
            return Ok(false);
        };
        refund.status = rules::transition(refund.status, RefundAction::Deduct)?;
        refund.deductions = deductions;
        refund.net = net;
        refund.updated_at = to_unix_micros(now);
        Ok(true)
    }

    /// Cancels a refund held on a return that will not complete (failed inspection, not
    /// shipped); returns whether it changed.
    fn cancel_for_abandoned_return(
        refund: &mut RefundRow,
        progress: ReturnProgress,
        now: Timestamp,
    ) -> Result<bool, ApiError> {
        let Some(reason) =
            rules::abandoned_return_cancellation(progress, refund.status, refund.release)
        else {
            return Ok(false);
        };
        refund.status = rules::transition(refund.status, RefundAction::Cancel)?;
        refund.status_reason = reason.to_string();
        refund.next_attempt_at = None;
        refund.updated_at = to_unix_micros(now);
        Ok(true)
    }

    /// Applies the gate to a refund still on hold; returns whether it changed.
    async fn apply_gate(
        &self,
        tx: &mut Tx,
        capture: &CaptureRow,
        refund: &mut RefundRow,
        now: Timestamp,
    ) -> Result<bool, ApiError> {
        if refund.status != RefundStatus::OnHold {
            return Ok(false);
        }
        let state = store::return_state(tx, &refund.order_id, &refund.return_label_id).await?;
        let fast = rules::fast_refund_eligible(
            &self.context.policy,
            &self.fx,
            capture.tier,
            &refund.amount,
        );
        match rules::gate_decision(refund.release, state, fast) {
            GateDecision::Release { fast } => {
                self.release(refund, fast, now)?;
                Ok(true)
            }
            GateDecision::Hold { reason } => {
                if refund.status_reason == reason {
                    return Ok(false);
                }
                refund.status = rules::transition(refund.status, RefundAction::Hold)?;
                refund.status_reason = reason;
                refund.updated_at = to_unix_micros(now);
                Ok(true)
            }
        }
    }

    /// CreateRefund inside the request's transaction.
    ///
    /// A relayed request (non-empty `message_id`) for an order whose capture is not recorded
    /// yet is not refused: relays run apart, so the refund request may simply have overtaken
    /// the capture. It is kept (`refunds_awaiting_capture`) and answered OK with `refund`
    /// unset, and RecordCapture creates it, under the rules of that moment, in the capture's
    /// transaction. Refusing it would lose it: the relay treats FAILED_PRECONDITION as final.
    /// A redelivery of a kept message answers OK too (with the refund once it exists). A
    /// direct call (no `message_id`) without a capture is still FAILED_PRECONDITION
    /// `capture_required`: its caller is there to retry.
    async fn create_refund_in(
        &self,
        tx: &mut Tx,
        input: &NewRefund,
        now: Timestamp,
    ) -> Result<pb::CreateRefundResponse, ApiError> {
        // Before anything else: RecordCapture takes the same lock, so a request kept here is
        // either seen by the capture's transaction or sees the capture (no orphan).
        self.db.lock_key(tx, &order_key(&input.order_id)).await?;
        if !input.message_id.is_empty()
            && !outbox::accept_once(tx, &input.message_id, RELAY_SOURCE, now).await?
        {
            // A redelivery: answer with what the first delivery created, change nothing.
            if let Some(existing) = store::refund_by_message(tx, &input.message_id).await? {
                return Ok(pb::CreateRefundResponse {
                    refund: Some(existing.to_proto()),
                });
            }
            if store::was_kept_for_capture(tx, &input.message_id).await? {
                return Ok(pb::CreateRefundResponse { refund: None });
            }
            return Err(ApiError::precondition(
                "message_delivered",
                format!("message {} was already processed", input.message_id),
            ));
        }
        // Locks the order's capture: concurrent refund requests on one order queue here, so
        // each sees the refunds committed before it (the over-refund check is exact).
        let Some(capture) = store::lock_capture(&self.db, tx, &input.order_id).await? else {
            if input.message_id.is_empty() {
                return Err(no_capture(&input.order_id));
            }
            store::keep_awaiting_capture(
                tx,
                &store::AwaitingCapture {
                    message_id: input.message_id.clone(),
                    order_id: input.order_id.clone(),
                    dispute_id: input.dispute_id.clone(),
                    request: input.encoded.clone(),
                    received_at: to_unix_micros(now),
                },
            )
            .await?;
            tracing::info!(
                order_id = %input.order_id,
                message_id = %input.message_id,
                "refund request kept until the order's capture is recorded"
            );
            return Ok(pb::CreateRefundResponse { refund: None });
        };
        let refund = self.create_refund_for(tx, &capture, input, now).await?;
        Ok(pb::CreateRefundResponse {
            refund: Some(refund.to_proto()),
        })
    }

    /// Creates the refund `input` asks for against the order's locked `capture`: the one
    /// place the creation rules live (over-refund check against the balance in `tx`, return
    /// deductions already reported, release gate), for CreateRefund and for the requests
    /// RecordCapture creates.
    async fn create_refund_for(
        &self,
        tx: &mut Tx,
        capture: &CaptureRow,
        input: &NewRefund,
        now: Timestamp,
    ) -> Result<RefundRow, ApiError> {
        // Read in `tx`, so refunds created earlier in the same transaction count too.
        let balance = store::capture_balance(tx, capture).await?;
        rules::check_refund_fits(&balance, &input.amount)?;
        let now_us = to_unix_micros(now);
        let mut refund = RefundRow {
            refund_id: returns_domain::ids::RefundId::new().to_string(),
            order_id: input.order_id.clone(),
            dispute_id: input.dispute_id.clone(),
            buyer_id: capture.buyer_id.clone(),
            amount: input.amount,
            net: input.net,
            deductions: input.deductions.clone(),
            reason: input.reason,
            release: input.release,
            return_label_id: input.return_label_id.clone(),
            status: RefundStatus::OnHold,
            method: capture.method,
            expected_earliest: None,
            expected_latest: None,
            provider_reference: String::new(),
            fast_refund: false,
            attempts: 0,
            failure_reason: String::new(),
            status_reason: String::new(),
            note: input.note.clone(),
            created_at: now_us,
            updated_at: now_us,
            released_at: None,
            succeeded_at: None,
            next_attempt_at: None,
            retry_after: None,
            claimed_by: None,
            lease_until: None,
            message_id: (!input.message_id.is_empty()).then(|| input.message_id.clone()),
            version: 0,
        };
        // Return progress may have arrived before the refund request (relays run apart): the
        // label's postage is deducted now, and a gate already passed opens at once.
        for event in store::label_deductions(tx, &refund.order_id).await? {
            if rules::return_concerns(
                &refund.dispute_id,
                &refund.return_label_id,
                &event.dispute_id,
                &event.return_label_id,
            ) {
                Self::apply_label_deductions(&mut refund, &event.deductions, now)?;
            }
        }
        self.apply_gate(tx, capture, &mut refund, now).await?;
        store::insert_refund(tx, &refund).await?;
        store::append_ledger(tx, None, &refund, now).await?;
        Ok(refund)
    }

    /// Creates the refunds requested before `capture` was recorded, oldest first, in the
    /// capture's transaction; returns how many were created. A request that no longer fits
    /// (the capture is smaller than asked, another currency) is resolved with the rule that
    /// refused it and logged: the capture itself is recorded regardless.
    async fn create_awaiting_refunds(
        &self,
        tx: &mut Tx,
        capture: &CaptureRow,
        now: Timestamp,
    ) -> Result<usize, ApiError> {
        let mut created = 0;
        for kept in store::awaiting_capture(tx, &capture.order_id).await? {
            let input = pb::CreateRefundRequest::decode(kept.request.as_slice())
                .map_err(|error| ApiError::invalid("request", error.to_string()))
                .and_then(|request| NewRefund::parse(&request));
            let result = match input {
                Ok(input) => self.create_refund_for(tx, capture, &input, now).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(refund) => {
                    store::resolve_awaiting_capture(
                        tx,
                        &kept.message_id,
                        "created",
                        Some(&refund.refund_id),
                        now,
                    )
                    .await?;
                    created += 1;
                }
                Err(error) => {
                    // Only refusals by a rule are this request's own problem; a database
                    // failure fails (and retries) the whole capture transaction.
                    let outcome = match &error {
                        ApiError::FailedPrecondition { rule, .. } => rule.clone(),
                        ApiError::InvalidArgument(_) => "invalid_request".to_string(),
                        _ => return Err(error),
                    };
                    tracing::warn!(
                        order_id = %kept.order_id,
                        message_id = %kept.message_id,
                        outcome = %outcome,
                        %error,
                        "a refund requested before the capture no longer fits; not created"
                    );
                    store::resolve_awaiting_capture(tx, &kept.message_id, &outcome, None, now)
                        .await?;
                }
            }
        }
        Ok(created)
    }

    fn may_see(caller: &Caller, refund: &RefundRow) -> bool {
        !caller.is(Role::Buyer) || refund.buyer_id == caller.id
    }
}

#[tonic::async_trait]
impl RefundService for RefundGrpc {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_capture(
        &self,
        request: Request<pb::RecordCaptureRequest>,
    ) -> Result<Response<pb::RecordCaptureResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = request_id(&req.request_id)?;
        let order_id = convert::required_id("order_id", &req.order_id)?;
        tracing::Span::current().record("order_id", order_id.as_str());
        let now = self.now();
        let capture = CaptureRow {
            order_id: order_id.clone(),
            buyer_id: convert::required_id("buyer_id", &req.buyer_id)?,
            amount: convert::positive_money("amount", req.amount.as_ref())?,
            method: convert::payment_method("payment_method", req.payment_method)?,
            tier: convert::buyer_tier("buyer_tier", req.buyer_tier)?,
            captured_at: to_unix_micros(
                convert::optional_time("captured_at", req.captured_at.as_ref())?.unwrap_or(now),
            ),
            payment_reference: convert::text("payment_reference", &req.payment_reference, 256)?,
            created_at: to_unix_micros(now),
        };
        // Fast-refund limits are in USD: a capture in a currency without a rate would make
        // every refund of the order fail later, in front of the buyer.
        if self.fx.to_usd_minor(&capture.amount).is_err() {
            return Err(ApiError::invalid(
                "amount.currency_code",
                format!(
                    "{} has no exchange rate configured, so fast-refund limits cannot apply",
                    capture.amount.currency
                ),
            )
            .into());
        }
        let hash = idempotency::request_hash(&req);
        let response: pb::RecordCaptureResponse = idempotent!(
            self,
            "RecordCapture",
            caller,
            request_id,
            &hash,
            now,
            |tx| {
                // First, as in CreateRefund: no refund request can be kept for this order
                // between reading the kept list below and the commit.
                self.db.lock_key(&mut tx, &order_key(&order_id)).await?;
                if store::lock_capture(&self.db, &mut tx, &order_id)
                    .await?
                    .is_some()
                {
                    return Err(ApiError::AlreadyExists(format!(
                        "order {order_id} already has a capture recorded"
                    )));
                }
                store::insert_capture(&mut tx, &capture).await?;
                self.create_awaiting_refunds(&mut tx, &capture, now).await?;
                let balance = store::capture_balance(&mut tx, &capture).await?;
                pb::RecordCaptureResponse {
                    capture: Some(capture.to_proto(&balance)?),
                }
            }
        )?;
        // Refunds requested before the capture may have been created and released.
        self.context.work_committed();
        Ok(Response::new(response))
    }

    /// A relayed request that overtakes the order's capture answers OK with `refund` unset
    /// and is created by RecordCapture (see `create_refund_in`).
    #[tracing::instrument(skip_all, fields(order_id, dispute_id))]
    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Result<Response<pb::CreateRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = request_id(&req.request_id)?;
        let input = NewRefund::parse(&req)?;
        let span = tracing::Span::current();
        span.record("order_id", input.order_id.as_str());
        span.record("dispute_id", input.dispute_id.as_str());
        let now = self.now();
        let hash = idempotency::request_hash(&req);
        let response: pb::CreateRefundResponse =
            idempotent!(self, "CreateRefund", caller, request_id, &hash, now, |tx| {
                self.create_refund_in(&mut tx, &input, now).await?
            })?;
        // The refund may be due at once: wake the settlement loop rather than wait for its poll.
        self.context.work_committed();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(refund_id))]
    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let refund_id = returns_domain::ids::RefundId::parse(&req.refund_id)
            .map_err(ApiError::from)?
            .to_string();
        tracing::Span::current().record("refund_id", refund_id.as_str());
        let refund = store::get_refund(&self.db, &refund_id)
            .await?
            .filter(|refund| Self::may_see(&caller, refund))
            .ok_or_else(|| ApiError::not_found("refund", &refund_id))?;
        Ok(Response::new(pb::GetRefundResponse {
            refund: Some(refund.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let page_size = match i64::from(req.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE} (0 for the default)"),
                )
                .into());
            }
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let mut filter = store::RefundFilter {
            order_id: nonempty(convert::optional_id("order_id", &req.order_id)?),
            buyer_id: nonempty(convert::optional_id("buyer_id", &req.buyer_id)?),
            dispute_id: nonempty(convert::optional_id("dispute_id", &req.dispute_id)?),
            status: convert::status_filter("status", req.status)?,
            before: None,
        };
        if !req.page_token.is_empty() {
            let last = returns_domain::ids::RefundId::parse(&req.page_token).map_err(|_| {
                ApiError::invalid("page_token", "is not a token from a previous page")
            })?;
            filter.before = Some(last.to_string());
        }
        if caller.is(Role::Buyer) {
            // Buyers see only their own refunds, whatever they ask for.
            if filter.buyer_id.as_ref().is_some_and(|b| *b != caller.id) {
                return Err(ApiError::PermissionDenied(
                    "buyers may only list their own refunds".to_string(),
                )
                .into());
            }
            filter.buyer_id = Some(caller.id.clone());
        }
        let mut rows = store::list_refunds(&self.db, &filter, page_size + 1).await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.refund_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: rows.iter().map(RefundRow::to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(refund_id))]
    async fn cancel_refund(
        &self,
        request: Request<pb::CancelRefundRequest>,
    ) -> Result<Response<pb::CancelRefundResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = request_id(&req.request_id)?;
        let refund_id = returns_domain::ids::RefundId::parse(&req.refund_id)
            .map_err(ApiError::from)?
            .to_string();
        tracing::Span::current().record("refund_id", refund_id.as_str());
        let reason = convert::text("reason", &req.reason, MAX_TEXT)?;
        let now = self.now();
        let hash = idempotency::request_hash(&req);
        let response: pb::CancelRefundResponse =
            idempotent!(self, "CancelRefund", caller, request_id, &hash, now, |tx| {
                let mut refund = store::lock_refund(&self.db, &mut tx, &refund_id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("refund", &refund_id))?;
                let before = (refund.status, refund.net);
                refund.status =
                    rules::transition(refund.status, RefundAction::Cancel).map_err(|error| {
                        ApiError::precondition(
                            "cancel_before_submission",
                            format!(
                                "refund {refund_id} is {} (since {}); only PENDING or ON_HOLD \
                                 refunds can be cancelled ({error})",
                                refund.status,
                                store::day_of(
                                    returns_domain::time::from_unix_micros(refund.updated_at)
                                        .unwrap_or(now)
                                )
                            ),
                        )
                    })?;
                refund.status_reason = if reason.is_empty() {
                    format!("cancelled by {}", caller.id)
                } else {
                    reason.clone()
                };
                refund.next_attempt_at = None;
                refund.updated_at = to_unix_micros(now);
                store::save_refund(&mut tx, &mut refund).await?;
                store::append_ledger(&mut tx, Some(before), &refund, now).await?;
                pb::CancelRefundResponse {
                    refund: Some(refund.to_proto()),
                }
            })?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_return_progress(
        &self,
        request: Request<pb::RecordReturnProgressRequest>,
    ) -> Result<Response<pb::RecordReturnProgressResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = request_id(&req.request_id)?;
        let message_id = convert::optional_id("message_id", &req.message_id)?;
        let order_id = convert::required_id("order_id", &req.order_id)?;
        tracing::Span::current().record("order_id", order_id.as_str());
        let label_id = convert::optional_id("return_label_id", &req.return_label_id)?;
        let dispute_id = convert::optional_id("dispute_id", &req.dispute_id)?;
        let progress = convert::progress("progress", req.progress)?;
        let notes = convert::text("notes", &req.notes, MAX_TEXT)?;
        let deductions = parse_deductions(&req.deductions)?;
        if !deductions.is_empty() && progress != ReturnProgress::LabelCreated {
            return Err(ApiError::invalid(
                "deductions",
                format!("only RETURN_PROGRESS_LABEL_CREATED carries deductions, not {progress}"),
            )
            .into());
        }
        let now = self.now();
        let occurred_at =
            convert::optional_time("occurred_at", req.occurred_at.as_ref())?.unwrap_or(now);
        let hash = idempotency::request_hash(&req);
        let response: pb::RecordReturnProgressResponse = idempotent!(
            self,
            "RecordReturnProgress",
            caller,
            request_id,
            &hash,
            now,
            |tx| {
                let fresh = message_id.is_empty()
                    || outbox::accept_once(&mut tx, &message_id, RELAY_SOURCE, now).await?;
                let capture = store::lock_capture(&self.db, &mut tx, &order_id).await?;
                if let Some(capture) = &capture {
                    // Checked against the capture, not only the refunds present now: the
                    // event is kept for refunds requested later, which are in its currency.
                    for (index, deduction) in deductions.iter().enumerate() {
                        if deduction.amount.currency != capture.amount.currency {
                            return Err(ApiError::invalid(
                                format!("deductions[{index}].amount.currency_code"),
                                format!(
                                    "currency {} differs from the order's capture in {}",
                                    deduction.amount.currency, capture.amount.currency
                                ),
                            ));
                        }
                    }
                }
                let mut refunds =
                    store::lock_gated_refunds(&self.db, &mut tx, &order_id, &label_id).await?;
                refunds.retain(|refund| {
                    rules::return_concerns(
                        &refund.dispute_id,
                        &refund.return_label_id,
                        &dispute_id,
                        &label_id,
                    )
                });
                if fresh {
                    let event = ReturnEvent {
                        order_id: order_id.clone(),
                        return_label_id: label_id.clone(),
                        dispute_id: dispute_id.clone(),
                        progress,
                        occurred_at: to_unix_micros(occurred_at),
                        received_at: to_unix_micros(now),
                        notes: notes.clone(),
                        deductions: deductions.clone(),
                    };
                    store::record_return_event(&mut tx, &event).await?;
                    if let Some(capture) = &capture {
                        for refund in &mut refunds {
                            let before = (refund.status, refund.net);
                            let changed = match progress {
                                ReturnProgress::LabelCreated => {
                                    Self::apply_label_deductions(refund, &deductions, now)?
                                }
                                ReturnProgress::InspectionFailed | ReturnProgress::NotShipped => {
                                    Self::cancel_for_abandoned_return(refund, progress, now)?
                                }
                                ReturnProgress::AcceptedByCarrier
                                | ReturnProgress::Delivered
                                | ReturnProgress::InspectionPassed => {
                                    self.apply_gate(&mut tx, capture, refund, now).await?
                                }
                            };
                            if changed {
                                store::save_refund(&mut tx, refund).await?;
                                store::append_ledger(&mut tx, Some(before), refund, now).await?;
                            }
                        }
                    }
                }
                pb::RecordReturnProgressResponse {
                    refunds: refunds.iter().map(RefundRow::to_proto).collect(),
                }
            }
        )?;
        // A gate may have opened: settle the released refunds now, not on the next poll.
        self.context.work_committed();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_chargeback(
        &self,
        request: Request<pb::RecordChargebackRequest>,
    ) -> Result<Response<pb::RecordChargebackResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let request_id = request_id(&req.request_id)?;
        let order_id = convert::required_id("order_id", &req.order_id)?;
        tracing::Span::current().record("order_id", order_id.as_str());
        let amount = convert::positive_money("amount", req.amount.as_ref())?;
        let network_reference = convert::required_id("network_reference", &req.network_reference)?;
        let reason = convert::text("reason", &req.reason, MAX_TEXT)?;
        let now = self.now();
        let opened_at = convert::optional_time("opened_at", req.opened_at.as_ref())?.unwrap_or(now);
        let hash = idempotency::request_hash(&req);
        let response: pb::RecordChargebackResponse = idempotent!(
            self,
            "RecordChargeback",
            caller,
            request_id,
            &hash,
            now,
            |tx| {
                let capture = store::lock_capture(&self.db, &mut tx, &order_id)
                    .await?
                    .ok_or_else(|| no_capture(&order_id))?;
                if capture.method != PaymentMethod::Card {
                    return Err(ApiError::precondition(
                        "chargeback_requires_card",
                        format!(
                            "order {order_id} was paid by {}; chargebacks exist for cards only",
                            capture.method
                        ),
                    ));
                }
                if amount.currency != capture.amount.currency {
                    return Err(ApiError::precondition(
                        "chargeback_currency",
                        format!(
                            "the chargeback is in {} but the order was captured in {}",
                            amount.currency, capture.amount.currency
                        ),
                    ));
                }
                let balance = store::capture_balance(&mut tx, &capture).await?;
                let charged = balance
                    .charged_back
                    .checked_add(amount)
                    .map_err(ApiError::internal)?;
                if charged.minor_units > capture.amount.minor_units {
                    return Err(ApiError::precondition(
                        "chargeback_exceeds_capture",
                        format!(
                            "a chargeback of {amount} on top of {} already charged back exceeds \
                             the capture of {}",
                            balance.charged_back, capture.amount
                        ),
                    ));
                }
                if store::chargeback_exists(&mut tx, &network_reference).await? {
                    return Err(ApiError::AlreadyExists(format!(
                        "chargeback {network_reference} is already recorded"
                    )));
                }
                let chargeback = ChargebackRow {
                    chargeback_id: uuid::Uuid::now_v7().to_string(),
                    order_id: order_id.clone(),
                    amount,
                    network_reference: network_reference.clone(),
                    reason: reason.clone(),
                    opened_at: to_unix_micros(opened_at),
                    created_at: to_unix_micros(now),
                };
                store::insert_chargeback(&mut tx, &chargeback).await?;
                let mut pending = store::lock_order_refunds(
                    &self.db,
                    &mut tx,
                    &order_id,
                    &[RefundStatus::Pending, RefundStatus::OnHold],
                )
                .await?;
                let nettable: Vec<NettableRefund<usize>> = pending
                    .iter()
                    .enumerate()
                    .map(|(key, refund)| NettableRefund {
                        key,
                        amount: refund.amount,
                    })
                    .collect();
                let mut affected = Vec::new();
                for netting in rules::net_chargeback(amount, &nettable)? {
                    let (key, new_amount) = match netting {
                        Netting::Cancel { key } => (key, None),
                        Netting::Reduce { key, new_amount } => (key, Some(new_amount)),
                    };
                    let Some(refund) = pending.get_mut(key) else {
                        continue;
                    };
                    let before = (refund.status, refund.net);
                    match new_amount {
                        None => {
                            refund.status = rules::transition(refund.status, RefundAction::Cancel)?;
                            refund.next_attempt_at = None;
                            refund.status_reason = format!(
                                "cancelled: chargeback {network_reference} already paid the buyer"
                            );
                        }
                        Some(new_amount) => {
                            refund.status = rules::transition(refund.status, RefundAction::Reduce)?;
                            let deductions: Vec<Money> =
                                refund.deductions.iter().map(|d| d.amount).collect();
                            let old = refund.amount;
                            refund.amount = new_amount;
                            refund.net = rules::net_amount(new_amount, &deductions)?;
                            refund.status_reason = format!(
                                "reduced from {old} to {new_amount}: chargeback \
                                 {network_reference} already paid the buyer the rest"
                            );
                        }
                    }
                    refund.updated_at = to_unix_micros(now);
                    store::save_refund(&mut tx, refund).await?;
                    store::append_ledger(&mut tx, Some(before), refund, now).await?;
                    affected.push(refund.to_proto());
                }
                let after = store::capture_balance(&mut tx, &capture).await?;
                if after.refundable()?.is_zero()
                    && after
                        .refunded
                        .checked_add(after.charged_back)
                        .map_err(ApiError::internal)?
                        .minor_units
                        > capture.amount.minor_units
                {
                    // Refunds already with the provider cannot be netted: the buyer is paid
                    // twice unless the platform contests the chargeback. Say so loudly.
                    tracing::warn!(
                        order_id = %order_id,
                        refunded = %after.refunded,
                        charged_back = %after.charged_back,
                        captured = %capture.amount,
                        "chargeback on money already refunded; contest it with the network"
                    );
                }
                pb::RecordChargebackResponse {
                    chargeback: Some(chargeback.to_proto()),
                    affected_refunds: affected,
                }
            }
        )?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn get_settlement_report(
        &self,
        request: Request<pb::GetSettlementReportRequest>,
    ) -> Result<Response<pb::GetSettlementReportResponse>, Status> {
        let req = request.into_inner();
        let start = convert::optional_time("start_time", req.start_time.as_ref())?
            .ok_or_else(|| ApiError::invalid("start_time", "is required"))?;
        let end = convert::optional_time("end_time", req.end_time.as_ref())?
            .ok_or_else(|| ApiError::invalid("end_time", "is required"))?;
        if end <= start {
            return Err(ApiError::invalid("end_time", "must be after start_time").into());
        }
        let currency = if req.currency_code.is_empty() {
            None
        } else {
            Some(convert::currency("currency_code", &req.currency_code)?)
        };
        let rows = store::report_rows(
            &self.db,
            to_unix_micros(start),
            to_unix_micros(end),
            currency,
        )
        .await?;
        let report = build_report(rows, start, end, self.now())?;
        Ok(Response::new(pb::GetSettlementReportResponse {
            report: Some(report),
        }))
    }
}

/// Turns ledger groups into the report; groups whose movements cancel out (a refund that
/// entered and left a status the same day) carry no information and are left out, which
/// keeps every total equal to the sum of its rows.
fn build_report(
    rows: Vec<store::ReportRow>,
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
) -> Result<pb::SettlementReport, ApiError> {
    let mut totals: std::collections::BTreeMap<CurrencyCode, (i64, Money)> = Default::default();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if row.count == 0 && row.total_minor == 0 {
            continue;
        }
        let total = Money::new(row.currency, row.total_minor);
        let entry = totals
            .entry(row.currency)
            .or_insert((0, Money::zero(row.currency)));
        entry.0 += row.count;
        entry.1 = entry.1.checked_add(total).map_err(ApiError::internal)?;
        out.push(pb::SettlementReportRow {
            day: row.day,
            currency_code: row.currency.to_string(),
            payment_method: convert::payment_method_to_proto(row.method),
            status: convert::status_to_proto(row.status),
            count: row.count,
            total: Some(convert::money_to_proto(total)),
        });
    }
    Ok(pb::SettlementReport {
        start_time: Some(convert::time_to_proto(start)),
        end_time: Some(convert::time_to_proto(end)),
        rows: out,
        totals: totals
            .into_iter()
            .map(|(currency, (count, total))| pb::SettlementReportTotal {
                currency_code: currency.to_string(),
                count,
                total: Some(convert::money_to_proto(total)),
            })
            .collect(),
        generated_at: Some(convert::time_to_proto(now)),
    })
}
