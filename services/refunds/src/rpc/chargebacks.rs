//! Chargebacks: RecordChargeback, which nets a card chargeback against the order's refunds
//! not yet with the provider (cancelled or reduced), so the buyer is not paid twice.

use returns_domain::dispute::PaymentMethod;
use returns_domain::ids::OrderId;
use returns_domain::money::Money;
use returns_domain::refund::{self as rules, NettableRefund, Netting, RefundAction, RefundStatus};
use returns_domain::time::to_unix_micros;
use returns_platform::{ApiError, Caller, RequestKey, mutate};
use returns_proto::convert;
use returns_proto::refunds::v1 as pb;

use super::{MAX_TEXT, RefundGrpc, no_capture, wire};
use crate::store::{self, ChargebackRow};

pub(super) async fn record_chargeback(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::RecordChargebackRequest,
) -> Result<pb::RecordChargebackResponse, ApiError> {
    let request_id = convert::request_id(&req.request_id)?;
    let order_id: &OrderId = &convert::id("order_id", &req.order_id)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    let amount = convert::positive_money("amount", req.amount.as_ref())?;
    let network_reference = &convert::external_id("network_reference", &req.network_reference)?;
    let reason = &convert::text("reason", &req.reason, MAX_TEXT)?;
    let now = service.now();
    let opened_at =
        convert::optional_timestamp("opened_at", req.opened_at.as_ref())?.unwrap_or(now);
    let key = RequestKey::new("RecordChargeback", caller, request_id.as_str(), &req);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let capture = store::lock_capture(&service.db, &mut tx, order_id)
            .await?
            .ok_or_else(|| no_capture(order_id))?;
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
                    "a chargeback of {amount} on top of {} already charged back exceeds the \
                     capture of {}",
                    balance.charged_back, capture.amount
                ),
            ));
        }
        if store::chargeback_exists(&mut tx, network_reference).await? {
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
            &service.db,
            &mut tx,
            order_id,
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
                    refund.status_reason =
                        format!("cancelled: chargeback {network_reference} already paid the buyer");
                }
                Some(new_amount) => {
                    refund.status = rules::transition(refund.status, RefundAction::Reduce)?;
                    let deductions: Vec<Money> =
                        refund.deductions.iter().map(|d| d.amount).collect();
                    let old = refund.amount;
                    refund.amount = new_amount;
                    refund.net = rules::net_amount(new_amount, &deductions)?;
                    refund.status_reason = format!(
                        "reduced from {old} to {new_amount}: chargeback {network_reference} \
                         already paid the buyer the rest"
                    );
                }
            }
            refund.updated_at = to_unix_micros(now);
            store::save_refund(tx.writes(), refund)?;
            store::append_ledger(tx.writes(), Some(before), refund, now);
            affected.push(wire::refund(refund));
        }
        // The balance below must see the refunds just changed: their deferred writes go now.
        tx.take_writes().execute(&mut tx).await?;
        let after = store::capture_balance(&mut tx, &capture).await?;
        let paid_out = after
            .refunded
            .checked_add(after.charged_back)
            .map_err(ApiError::internal)?;
        if after.refundable()?.is_zero() && paid_out.minor_units > capture.amount.minor_units {
            // Refunds already with the provider cannot be netted: the buyer is paid twice
            // unless the platform contests the chargeback. Say so loudly.
            tracing::warn!(
                order_id = %order_id,
                refunded = %after.refunded,
                charged_back = %after.charged_back,
                captured = %capture.amount,
                "chargeback on money already refunded; contest it with the network"
            );
        }
        let response = pb::RecordChargebackResponse {
            chargeback: Some(wire::chargeback(&chargeback)),
            affected_refunds: affected,
        };
        Ok((tx, response))
    })
    .await
}
