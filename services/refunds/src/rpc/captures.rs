//! Captures: RecordCapture, which also creates the refunds relayed before it (kept in
//! `refunds_awaiting_capture`), in its own transaction.

use prost::Message;
use returns_domain::ids::OrderId;
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::{ApiError, Caller, RequestKey, mutate};
use returns_proto::convert;
use returns_proto::refunds::v1 as pb;

use super::refunds::{NewRefund, create_refund_for};
use super::{RefundGrpc, order_key, wire};
use crate::store::{self, CaptureRow};

pub(super) async fn record_capture(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::RecordCaptureRequest,
) -> Result<pb::RecordCaptureResponse, ApiError> {
    let request_id = convert::request_id(&req.request_id)?;
    let order_id: OrderId = convert::id("order_id", &req.order_id)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    let now = service.now();
    let captured_at = convert::optional_timestamp("captured_at", req.captured_at.as_ref())?;
    let capture = &CaptureRow {
        order_id,
        buyer_id: convert::id("buyer_id", &req.buyer_id)?,
        // Fast-refund limits are in USD: a capture in a currency without a rate would make
        // every refund of the order fail later, in front of the buyer.
        amount: convert::priced_money("amount", req.amount.as_ref(), &service.fx)?,
        method: convert::enum_value("payment_method", req.payment_method)?,
        tier: convert::enum_value("buyer_tier", req.buyer_tier)?,
        captured_at: to_unix_micros(captured_at.unwrap_or(now)),
        payment_reference: convert::text("payment_reference", &req.payment_reference, 256)?,
        created_at: to_unix_micros(now),
    };
    let key = RequestKey::new("RecordCapture", caller, request_id.as_str(), &req);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        // First, as in CreateRefund: no refund request can be kept for this order between
        // reading the kept list below and the commit.
        service
            .db
            .lock_key(&mut tx, &order_key(&capture.order_id))
            .await?;
        if store::lock_capture(&service.db, &mut tx, &capture.order_id)
            .await?
            .is_some()
        {
            return Err(ApiError::AlreadyExists(format!(
                "order {} already has a capture recorded",
                capture.order_id
            )));
        }
        store::insert_capture(&mut tx, capture).await?;
        create_awaiting_refunds(service, &mut tx, capture, now).await?;
        let balance = store::capture_balance(&mut tx, capture).await?;
        let response = pb::RecordCaptureResponse {
            capture: Some(wire::capture(capture, &balance)?),
        };
        Ok((tx, response))
    })
    .await
}

/// Creates the refunds requested before `capture` was recorded, oldest first, in the
/// capture's transaction; returns how many were created. A request that no longer fits
/// (the capture is smaller than asked, another currency) is resolved with the rule that
/// refused it and logged: the capture itself is recorded regardless.
async fn create_awaiting_refunds(
    service: &RefundGrpc,
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
            Ok(input) => create_refund_for(service, tx, capture, &input, now).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(refund) => {
                // The next request's balance must count this refund: its deferred writes go
                // now rather than with the key at the end.
                tx.take_writes().execute(tx).await?;
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
                store::resolve_awaiting_capture(tx, &kept.message_id, &outcome, None, now).await?;
            }
        }
    }
    Ok(created)
}
