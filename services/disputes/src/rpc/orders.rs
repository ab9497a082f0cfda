//! Orders: the platform records an order's facts (RecordOrder, an upsert that keeps the
//! protection clock and a recorded cancellation), and a buyer or the platform cancels an
//! order before shipment (CancelOrder, which asks the refunds service for a full refund).

use returns_domain::carrier::ShippingCarrier;
use returns_domain::dispute::{BuyerTier, PaymentMethod, Role};
use returns_domain::ids::{OrderId, PartyId};
use returns_domain::money::FxTable;
use returns_domain::negotiation::{self as n, MAX_TEXT_LEN, RefundRelease};
use returns_domain::refund::RefundReason;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, wire};
use crate::store::{self, OrderRecord};

/// Validates a RecordOrder request into order facts (without a cancellation: a recorded one
/// is kept by the upsert).
pub fn order_facts(r: &pb::RecordOrderRequest) -> Result<n::OrderFacts, ApiError> {
    let country = r.destination_country.trim().to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            "destination_country",
            "must be an ISO 3166-1 alpha-2 code such as GB",
        ));
    }
    Ok(n::OrderFacts {
        order_id: convert::id::<OrderId>("order_id", &r.order_id)?,
        buyer_id: convert::id::<PartyId>("buyer_id", &r.buyer_id)?,
        seller_id: convert::id::<PartyId>("seller_id", &r.seller_id)?,
        // The order's thresholds (contested returns, fast refunds) compare it in USD.
        total: convert::priced_money("total", r.total.as_ref(), &FxTable::default())?,
        payment_method: convert::enum_value::<PaymentMethod>("payment_method", r.payment_method)?,
        buyer_tier: convert::enum_value::<BuyerTier>("buyer_tier", r.buyer_tier)?,
        carrier: ShippingCarrier::parse(&r.carrier)?,
        placed_at: convert::timestamp("placed_at", r.placed_at.as_ref())?,
        shipped_at: convert::optional_timestamp("shipped_at", r.shipped_at.as_ref())?,
        promised_ship_by: convert::optional_timestamp(
            "promised_ship_by",
            r.promised_ship_by.as_ref(),
        )?,
        delivered_at: convert::optional_timestamp("delivered_at", r.delivered_at.as_ref())?,
        destination_country: country,
        free_return: r.free_return,
        cancelled_at: None,
    })
}

#[tracing::instrument(skip_all, fields(order_id))]
pub(super) async fn record_order(
    service: &DisputeGrpc,
    request: Request<pb::RecordOrderRequest>,
) -> Result<pb::RecordOrderResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("order_id", req.order_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let facts = order_facts(&req)?;
    let key = RequestKey::new("RecordOrder", &caller, request_id.as_str(), &req);
    let facts = &facts;
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let now = service.now();
        let existing =
            store::load_order(&mut tx, &service.db, facts.order_id.as_str(), true).await?;
        let record = match existing {
            Some(existing) => OrderRecord {
                facts: n::OrderFacts {
                    cancelled_at: existing.facts.cancelled_at,
                    ..facts.clone()
                },
                clock: existing.clock,
                created_at: existing.created_at,
                updated_at: now,
            },
            None => OrderRecord {
                facts: facts.clone(),
                clock: n::ProtectionClock::default(),
                created_at: now,
                updated_at: now,
            },
        };
        store::upsert_order(&mut tx, &record).await?;
        let response = pb::RecordOrderResponse {
            order: Some(wire::order(&record, &service.context.policy)),
        };
        Ok((tx, response))
    })
    .await
}

#[tracing::instrument(skip_all, fields(order_id))]
pub(super) async fn cancel_order(
    service: &DisputeGrpc,
    request: Request<pb::CancelOrderRequest>,
) -> Result<pb::CancelOrderResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    tracing::Span::current().record("order_id", req.order_id.as_str());
    let request_id = convert::request_id(&req.request_id)?;
    let order_id = convert::id::<OrderId>("order_id", &req.order_id)?;
    let note = convert::text("reason", req.reason.trim(), MAX_TEXT_LEN)?;
    let key = RequestKey::new("CancelOrder", &caller, request_id.as_str(), &req);
    let (caller, order_id, note) = (&caller, &order_id, &note);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let now = service.now();
        let (mut order, context) =
            store::load_order_with_disputes(&mut tx, &service.db, order_id.as_str(), now)
                .await?
                // A buyer cancels only their own order; another's is not found, as if absent.
                .filter(|(o, _)| {
                    caller.role != Role::Buyer || o.facts.buyer_id.as_str() == caller.id
                })
                .ok_or_else(|| ApiError::not_found("order", order_id.as_str()))?;
        if let Some((id, state)) = context.active_dispute {
            return Err(ApiError::precondition(
                "active_dispute",
                format!("order {order_id} has dispute {id} in state {state}; withdraw it first"),
            ));
        }
        n::check_cancel_order(&order.facts, now, &service.context.policy)?;
        order.facts.cancelled_at = Some(now);
        order.updated_at = now;
        store::update_order(tx.writes(), &order)?;
        store::enqueue_refund(
            tx.writes(),
            &order.facts,
            None,
            order.facts.total,
            RefundReason::OrderCancelled,
            RefundRelease::Immediate,
            note.clone(),
        )?;
        let response = pb::CancelOrderResponse {
            order: Some(wire::order(&order, &service.context.policy)),
        };
        Ok((tx, response))
    })
    .await
}
