//! Order facts as the platform records them, and cancelling an order before it ships.

use serde::{Deserialize, Serialize};

use super::text::fmt_ts;
use crate::carrier::ShippingCarrier;
use crate::dispute::{BuyerTier, PaymentMethod};
use crate::error::DomainError;
use crate::ids::{OrderId, PartyId};
use crate::money::Money;
use crate::policy::Policy;
use crate::time::Timestamp;

/// The facts of an order as recorded by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFacts {
    pub order_id: OrderId,
    pub buyer_id: PartyId,
    pub seller_id: PartyId,
    pub total: Money,
    pub payment_method: PaymentMethod,
    pub buyer_tier: BuyerTier,
    pub carrier: ShippingCarrier,
    pub placed_at: Timestamp,
    pub shipped_at: Option<Timestamp>,
    pub promised_ship_by: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub destination_country: String,
    pub free_return: bool,
    pub cancelled_at: Option<Timestamp>,
}

/// The order's protection clock: paused by an open dispute, resumed by a withdrawal.
/// Cancellation before shipment, within the window after purchase.
pub fn check_cancel_order(
    order: &OrderFacts,
    now: Timestamp,
    policy: &Policy,
) -> Result<(), DomainError> {
    if let Some(at) = order.cancelled_at {
        return Err(DomainError::rule(
            "order_already_cancelled",
            format!("order {} was cancelled at {}", order.order_id, fmt_ts(at)),
        ));
    }
    if let Some(at) = order.shipped_at {
        return Err(DomainError::rule(
            "order_already_shipped",
            format!(
                "order {} shipped at {}; cancellation is only possible before shipment — open a dispute instead",
                order.order_id,
                fmt_ts(at)
            ),
        ));
    }
    let closes = order.placed_at + policy.cancellation_window();
    if now > closes {
        return Err(DomainError::rule(
            "cancellation_window_closed",
            format!(
                "order placed at {} could be cancelled until {} ({} days); now is {}",
                fmt_ts(order.placed_at),
                fmt_ts(closes),
                policy.cancellation.window_days,
                fmt_ts(now)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::ShippingCarrier;
    use crate::negotiation::fixtures::*;
    use crate::policy::Policy;

    #[test]
    fn cancelling_an_order_is_possible_only_before_shipment_within_seven_days() {
        let policy = Policy::classic();
        let mut o = order(ShippingCarrier::Dhl);
        assert_eq!(
            rule_of(check_cancel_order(&o, at(2), &policy).expect_err("shipped")),
            "order_already_shipped"
        );
        o.shipped_at = None;
        assert!(check_cancel_order(&o, at(8), &policy).is_ok());
        assert_eq!(
            rule_of(check_cancel_order(&o, at(9), &policy).expect_err("late")),
            "cancellation_window_closed"
        );
    }
}
