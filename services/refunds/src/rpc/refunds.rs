//! Refunds: CreateRefund (including requests relayed before the order's capture), GetRefund,
//! ListRefunds and CancelRefund, and the creation rules RecordCapture reuses for the
//! requests it finds waiting.

use prost::Message;
use returns_domain::dispute::Role;
use returns_domain::ids::{OrderId, PartyId, RefundId};
use returns_domain::money::Money;
use returns_domain::refund::{self as rules, RefundAction, RefundStatus};
use returns_domain::time::{Timestamp, from_unix_micros, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::paging::PageRequest;
use returns_platform::{ApiError, Caller, RequestKey, mutate, outbox};
use returns_proto::convert;
use returns_proto::refunds::v1 as pb;

use super::{MAX_TEXT, RELAY_SOURCE, RefundGrpc, gates, no_capture, order_key, wire};
use crate::store::{self, CaptureRow, Deduction, RefundFilter, RefundRow};

/// A validated CreateRefund.
pub(super) struct NewRefund {
    /// Set when the outbox relay delivered it; empty for a direct call.
    message_id: String,
    order_id: OrderId,
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
    pub(super) fn parse(req: &pb::CreateRefundRequest) -> Result<Self, ApiError> {
        let amount = convert::positive_money("amount", req.amount.as_ref())?;
        let deductions = wire::parse_deductions(&req.deductions)?;
        let amounts: Vec<Money> = deductions.iter().map(|d| d.amount).collect();
        let net = rules::net_amount(amount, &amounts)?;
        Ok(NewRefund {
            message_id: convert::optional_external_id("message_id", &req.message_id)?,
            order_id: convert::id("order_id", &req.order_id)?,
            dispute_id: convert::optional_external_id("dispute_id", &req.dispute_id)?,
            amount,
            net,
            deductions,
            reason: convert::enum_value("reason", req.reason)?,
            release: convert::enum_value("release", req.release)?,
            return_label_id: convert::optional_external_id(
                "return_label_id",
                &req.return_label_id,
            )?,
            note: convert::text("note", &req.note, MAX_TEXT)?,
            encoded: req.encode_to_vec(),
        })
    }
}

pub(super) async fn create_refund(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::CreateRefundRequest,
) -> Result<pb::CreateRefundResponse, ApiError> {
    let request_id = convert::request_id(&req.request_id)?;
    let input = &NewRefund::parse(&req)?;
    let span = tracing::Span::current();
    span.record("order_id", input.order_id.as_str());
    span.record("dispute_id", input.dispute_id.as_str());
    let now = service.now();
    let key = RequestKey::new("CreateRefund", caller, request_id.as_str(), &req);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let response = create_refund_in(service, &mut tx, input, now).await?;
        Ok((tx, response))
    })
    .await
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
    service: &RefundGrpc,
    tx: &mut Tx,
    input: &NewRefund,
    now: Timestamp,
) -> Result<pb::CreateRefundResponse, ApiError> {
    // Before anything else: RecordCapture takes the same lock, so a request kept here is
    // either seen by the capture's transaction or sees the capture (no orphan).
    service.db.lock_key(tx, &order_key(&input.order_id)).await?;
    if !input.message_id.is_empty()
        && !outbox::accept_once(tx, &input.message_id, RELAY_SOURCE, now).await?
    {
        // A redelivery: answer with what the first delivery created, change nothing.
        if let Some(existing) = store::refund_by_message(tx, &input.message_id).await? {
            return Ok(pb::CreateRefundResponse {
                refund: Some(wire::refund(&existing)),
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
    let Some(capture) = store::lock_capture(&service.db, tx, &input.order_id).await? else {
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
    let refund = create_refund_for(service, tx, &capture, input, now).await?;
    Ok(pb::CreateRefundResponse {
        refund: Some(wire::refund(&refund)),
    })
}

/// Creates the refund `input` asks for against the order's locked `capture`: the one place
/// the creation rules live (over-refund check against the balance in `tx`, return
/// deductions already reported, release gate), for CreateRefund and for the requests
/// RecordCapture creates.
pub(super) async fn create_refund_for(
    service: &RefundGrpc,
    tx: &mut Tx,
    capture: &CaptureRow,
    input: &NewRefund,
    now: Timestamp,
) -> Result<RefundRow, ApiError> {
    // Read in `tx` after the capture row is locked, in one statement: the sums (refunds
    // created earlier in the same transaction count too: their rows are written at once) and
    // the order's return reports, for the deductions and the release gate below.
    let context = store::refund_context(tx, &capture.order_id).await?;
    let balance = store::balance_of(capture, context.refunded_minor, context.charged_back_minor);
    rules::check_refund_fits(&balance, &input.amount)?;
    let now_us = to_unix_micros(now);
    let mut refund = RefundRow {
        refund_id: RefundId::new(),
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
    for event in context.label_deductions() {
        if rules::return_concerns(
            &refund.dispute_id,
            &refund.return_label_id,
            &event.dispute_id,
            &event.return_label_id,
        ) {
            gates::apply_label_deductions(&mut refund, &event.deductions, now)?;
        }
    }
    let state = context.return_state(&refund.return_label_id);
    gates::apply_gate_in(service, capture, &mut refund, state, now)?;
    store::insert_refund(tx.writes(), &refund)?;
    store::append_ledger(tx.writes(), None, &refund, now);
    Ok(refund)
}

/// Buyers see only their own refunds; the platform and arbiters see every one.
fn may_see(caller: &Caller, refund: &RefundRow) -> bool {
    !caller.is(Role::Buyer) || refund.buyer_id.as_str() == caller.id
}

pub(super) async fn get_refund(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::GetRefundRequest,
) -> Result<pb::GetRefundResponse, ApiError> {
    let refund_id: RefundId = convert::id("refund_id", &req.refund_id)?;
    tracing::Span::current().record("refund_id", tracing::field::display(refund_id));
    let refund = store::get_refund(&service.db, &refund_id)
        .await?
        .filter(|refund| may_see(caller, refund))
        .ok_or_else(|| ApiError::not_found("refund", refund_id.to_string()))?;
    Ok(pb::GetRefundResponse {
        refund: Some(wire::refund(&refund)),
    })
}

pub(super) async fn list_refunds(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::ListRefundsRequest,
) -> Result<pb::ListRefundsResponse, ApiError> {
    let dispute_id = convert::optional_external_id("dispute_id", &req.dispute_id)?;
    let mut filter = RefundFilter {
        order_id: convert::optional_id("order_id", &req.order_id)?,
        buyer_id: convert::optional_id("buyer_id", &req.buyer_id)?,
        dispute_id: (!dispute_id.is_empty()).then_some(dispute_id),
        status: convert::optional_enum_value("status", req.status)?,
    };
    if caller.is(Role::Buyer) {
        // Buyers see only their own refunds, whatever they ask for.
        let own = PartyId::parse(&caller.id).ok();
        if own.is_none() || (filter.buyer_id.is_some() && filter.buyer_id != own) {
            return Err(ApiError::PermissionDenied(
                "buyers may only list their own refunds".to_string(),
            ));
        }
        filter.buyer_id = own;
    }
    let page = PageRequest::parse(req.page_size, &req.page_token, &filter.token_binding())?;
    let listed = store::list_refunds(&service.db, &filter, &page).await?;
    Ok(pb::ListRefundsResponse {
        refunds: wire::refunds(&listed.refunds),
        next_page_token: listed.next_page_token,
    })
}

pub(super) async fn cancel_refund(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::CancelRefundRequest,
) -> Result<pb::CancelRefundResponse, ApiError> {
    let request_id = convert::request_id(&req.request_id)?;
    let refund_id: &RefundId = &convert::id("refund_id", &req.refund_id)?;
    tracing::Span::current().record("refund_id", tracing::field::display(refund_id));
    let reason = &convert::text("reason", &req.reason, MAX_TEXT)?;
    let now = service.now();
    let key = RequestKey::new("CancelRefund", caller, request_id.as_str(), &req);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let mut refund = store::lock_refund(&service.db, &mut tx, refund_id)
            .await?
            .ok_or_else(|| ApiError::not_found("refund", refund_id.to_string()))?;
        let before = (refund.status, refund.net);
        refund.status =
            rules::transition(refund.status, RefundAction::Cancel).map_err(|error| {
                ApiError::precondition(
                    "cancel_before_submission",
                    format!(
                        "refund {refund_id} is {} (since {}); only PENDING or ON_HOLD refunds \
                         can be cancelled ({error})",
                        refund.status,
                        store::day_of(from_unix_micros(refund.updated_at).unwrap_or(now))
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
        store::save_refund(tx.writes(), &mut refund)?;
        store::append_ledger(tx.writes(), Some(before), &refund, now);
        let response = pb::CancelRefundResponse {
            refund: Some(wire::refund(&refund)),
        };
        Ok((tx, response))
    })
    .await
}
