//! The protection window: when a buyer may open a dispute on an order, counted from shipping
//! by carrier class, paused while a dispute is active and resumed with the time that was left
//! when the buyer withdraws it.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::order::OrderFacts;
use super::record::Dispute;
use super::text::fmt_ts;
use crate::error::DomainError;
use crate::policy::Policy;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProtectionClock {
    /// Set while a dispute pauses the clock: the time that was left when it paused.
    #[serde(with = "opt_duration_micros")]
    pub paused_time_left: Option<Duration>,
    /// After a withdrawal: when protection now closes (withdrawal + time left).
    pub resumed_closes_at: Option<Timestamp>,
    /// How many disputes on the order were withdrawn (reopen allowance).
    pub withdrawals: u32,
}

mod opt_duration_micros {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.num_microseconds().unwrap_or(i64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(Duration::microseconds))
    }
}

/// When disputes may be opened on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionWindow {
    pub opens_at: Timestamp,
    /// `None` while a dispute pauses the clock.
    pub closes_at: Option<Timestamp>,
    pub paused_time_left: Option<Duration>,
}

/// The window from shipping (or the promised ship date), the carrier class deadline and the
/// clock's pauses. `None` when the order has neither shipped nor a promised ship date.
pub fn protection_window(
    order: &OrderFacts,
    clock: &ProtectionClock,
    policy: &Policy,
) -> Option<ProtectionWindow> {
    let anchor = order.shipped_at.or(order.promised_ship_by)?;
    let opens_at = anchor + policy.dispute_opens_after();
    let closes_at = match (clock.paused_time_left, clock.resumed_closes_at) {
        (Some(_), _) => None,
        (None, Some(resumed)) => Some(resumed),
        (None, None) => Some(anchor + policy.protection_deadline(order.carrier.class())),
    };
    Some(ProtectionWindow {
        opens_at,
        closes_at,
        paused_time_left: clock.paused_time_left,
    })
}

/// The protection time left on the order if a dispute opened `now`, or why none may open:
/// the reopen allowance is used up, the order has not shipped (nor promised a date), the
/// window is not open yet, or it has closed.
pub(super) fn time_left_to_open(
    order: &OrderFacts,
    clock: &ProtectionClock,
    now: Timestamp,
    policy: &Policy,
) -> Result<Duration, DomainError> {
    if clock.withdrawals > policy.reopen_allowance() {
        return Err(DomainError::rule(
            "reopen_allowance_used",
            format!(
                "order {} had {} withdrawn disputes; a withdrawn dispute may be reopened {} time(s)",
                order.order_id,
                clock.withdrawals,
                policy.reopen_allowance()
            ),
        ));
    }
    let window = protection_window(order, clock, policy).ok_or_else(|| {
        DomainError::rule(
            "order_not_shipped",
            format!(
                "order {} has neither shipped nor a promised ship date; the protection window has not started",
                order.order_id
            ),
        )
    })?;
    if now < window.opens_at {
        return Err(DomainError::rule(
            "protection_window_not_open",
            format!(
                "disputes on order {} open at {} ({} days after shipping); now is {}",
                order.order_id,
                fmt_ts(window.opens_at),
                policy.protection.opens_after_days,
                fmt_ts(now)
            ),
        ));
    }
    // Not paused here: a paused clock always has an active dispute, which `open_dispute`
    // refuses before asking for the time left.
    let closes_at = window.closes_at.unwrap_or(now);
    if now >= closes_at {
        return Err(DomainError::rule(
            "protection_window_closed",
            format!(
                "protection on order {} ({} class) closed at {}; now is {}",
                order.order_id,
                order.carrier.class(),
                fmt_ts(closes_at),
                fmt_ts(now)
            ),
        ));
    }
    Ok(closes_at - now)
}

/// Resumes the order's clock after `dispute` was withdrawn: it closes `time_left` after now.
pub fn resume_protection(
    clock: &ProtectionClock,
    dispute: &Dispute,
    now: Timestamp,
) -> ProtectionClock {
    let left = clock
        .paused_time_left
        .unwrap_or(dispute.protection_time_left);
    ProtectionClock {
        paused_time_left: None,
        resumed_closes_at: Some(now + left),
        withdrawals: clock.withdrawals + 1,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::carrier::ShippingCarrier;
    use crate::dispute::DisputeReason;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

    #[test]
    fn a_dispute_opens_six_days_after_shipping_and_not_before() {
        let o = order(ShippingCarrier::Dhl);
        let err = open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(7))
            .expect_err("too early");
        assert_eq!(rule_of(err.clone()), "protection_window_not_open");
        assert!(err.to_string().contains("2026-03-08T09:00:00Z"), "{err}");
        assert!(open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(8)).is_ok());
    }

    #[test]
    fn the_window_closes_by_carrier_class_and_names_the_date() {
        for (carrier, days) in [
            (ShippingCarrier::Ups, 23),
            (ShippingCarrier::SfExpress, 27),
            (ShippingCarrier::ChinaPost, 39),
        ] {
            let o = order(carrier);
            let closes = at(2) + Duration::days(days);
            let before = closes - Duration::seconds(1);
            let opened =
                open_at(&o, request(DisputeReason::Damaged, vec![photo()]), before).expect("open");
            assert_eq!(opened.dispute.protection_time_left, Duration::seconds(1));
            let err = open_at(&o, request(DisputeReason::Damaged, vec![photo()]), closes)
                .expect_err("closed");
            assert!(err.to_string().contains(&fmt_ts(closes)), "{err}");
            assert_eq!(rule_of(err), "protection_window_closed");
        }
    }

    #[test]
    fn an_unshipped_order_counts_from_the_promised_ship_date() {
        let mut o = order(ShippingCarrier::Dhl);
        o.shipped_at = None;
        o.promised_ship_by = Some(at(3));
        assert!(
            open_at(
                &o,
                request(DisputeReason::NotReceived, vec![photo()]),
                at(8)
            )
            .is_err()
        );
        assert!(
            open_at(
                &o,
                request(DisputeReason::NotReceived, vec![photo()]),
                at(9)
            )
            .is_ok()
        );
        o.promised_ship_by = None;
        let err = open_at(
            &o,
            request(DisputeReason::NotReceived, vec![photo()]),
            at(9),
        )
        .expect_err("no anchor");
        assert_eq!(rule_of(err), "order_not_shipped");
    }

    #[test]
    fn withdrawing_resumes_the_clock_with_the_time_left_and_allows_one_reopen() {
        let o = order(ShippingCarrier::Dhl); // closes at day 25
        let policy = Policy::classic();
        let opened =
            open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(10)).expect("open");
        assert_eq!(opened.clock.paused_time_left, Some(Duration::days(15)));
        assert_eq!(
            protection_window(&o, &opened.clock, &policy).and_then(|w| w.closes_at),
            None
        );
        let (cancelled, _) = apply(
            &opened.dispute,
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(20),
            &policy,
        )
        .expect("withdraw");
        assert_eq!(cancelled.state, DisputeState::Cancelled);
        let clock = resume_protection(&opened.clock, &cancelled, at(20));
        assert_eq!(
            protection_window(&o, &clock, &policy).and_then(|w| w.closes_at),
            Some(at(20) + Duration::days(15))
        );
        // Reopening within the resumed window works once.
        let reopened = open_dispute(
            &o,
            &clock,
            &OpeningContext::default(),
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(30),
            &policy,
        )
        .expect("reopen");
        assert!(reopened.dispute.reopened);
        let (cancelled, _) = apply(
            &reopened.dispute,
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(31),
            &policy,
        )
        .expect("withdraw");
        let clock = resume_protection(&reopened.clock, &cancelled, at(31));
        let err = open_dispute(
            &o,
            &clock,
            &OpeningContext::default(),
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(31),
            &policy,
        )
        .expect_err("twice");
        assert_eq!(rule_of(err), "reopen_allowance_used");
    }
}
