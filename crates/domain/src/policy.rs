//! The policy: every number of docs/domain.md as data, with the named policies `classic` and
//! `extended`.
//!
//! Handlers never hold a literal "15 days"; they ask the policy. Where the source articles
//! disagree (23/27/39-day protection windows versus 60 days for everything) both values ship
//! as named policies in `crates/domain/policies/*.toml`, embedded into the binary so a
//! deployment cannot lose them, and a deployment may load its own file instead.

use std::collections::BTreeMap;

use chrono::Duration;
use serde::{Deserialize, Serialize};

pub use crate::calendar::BusinessDayRange;
use crate::carrier::CarrierClass;
use crate::dispute::{BuyerTier, DisputeReason, PaymentMethod};
use crate::money::{FxTable, Money, MoneyError};

const CLASSIC_TOML: &str = include_str!("../policies/classic.toml");
const EXTENDED_TOML: &str = include_str!("../policies/extended.toml");

/// The seller's response window may be set per reason, but only within these bounds
/// (docs/domain.md, "Negotiation": 5 to 15 days per reason).
pub const SELLER_RESPONSE_DAYS_RANGE: std::ops::RangeInclusive<u32> = 5..=15;

/// An upper bound on every day count, to catch a value typed in the wrong unit (hours,
/// minutes) before it becomes a ten-year deadline.
pub const MAX_DAYS: u32 = 3650;

/// Why a policy could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy {0:?}; known policies: classic, extended")]
    UnknownName(String),
    /// The TOML is malformed or has missing, unknown or mistyped settings.
    #[error("cannot parse policy: {0}")]
    Parse(String),
    /// A setting is present but its value breaks a rule (`field` is its TOML path).
    #[error("invalid policy setting {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// The whole rule set. Sections mirror the TOML files; read through the helper methods,
/// which turn day counts into durations and pick per-class or per-reason values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy's name, recorded with decisions so a ruling can say which rules applied.
    pub name: String,
    pub cancellation: CancellationPolicy,
    pub protection: ProtectionPolicy,
    pub negotiation: NegotiationPolicy,
    pub returns: ReturnPolicy,
    pub thresholds: Thresholds,
    pub refund_timelines: RefundTimelines,
}

/// Cancelling an order before it ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancellationPolicy {
    /// Days after purchase during which an unshipped order may be cancelled (7).
    pub window_days: u32,
}

/// When a dispute may be opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionPolicy {
    /// Days after shipping (or the promised ship date) before a dispute may be opened (6).
    pub opens_after_days: u32,
    /// How many times a withdrawn dispute may be reopened while time is left (1).
    pub reopen_allowance: u32,
    /// Days after shipping when protection closes, per carrier class.
    pub deadline_days: ProtectionDeadlines,
}

/// Protection deadlines per carrier class; a struct rather than a map so that a policy file
/// missing a class fails to load instead of leaving a carrier without protection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionDeadlines {
    pub express: u32,
    pub ems: u32,
    pub postal: u32,
}

/// Negotiation and review windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegotiationPolicy {
    /// Days the seller has to answer before the buyer's request is granted (15).
    pub seller_response_days: u32,
    /// Per-reason overrides of `seller_response_days`, each within 5..=15.
    #[serde(default)]
    pub seller_response_days_by_reason: BTreeMap<DisputeReason, u32>,
    /// Days the arbiter has to rule after escalation (10).
    pub arbiter_ruling_days: u32,
}

/// Return shipments and free returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnPolicy {
    /// Days after authorisation to hand the return to the carrier (7; a choice, the rules
    /// give no number — see policies/classic.toml).
    pub ship_by_days: u32,
    /// Days after delivery during which a free-return listing may be returned (15).
    pub free_return_window_days: u32,
    /// Free returns per buyer per calendar month (3).
    pub free_returns_per_month: u32,
}

/// Money thresholds, in US cents, compared through the FX table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Above this, a seller contesting with evidence gets the item back before refunding (5000).
    pub contested_return_above_usd_minor: i64,
    /// Platinum fast-refund limit (2500).
    pub fast_refund_platinum_max_usd_minor: i64,
    /// Diamond fast-refund limit (10000).
    pub fast_refund_diamond_max_usd_minor: i64,
}

/// How long refunds take to reach the buyer, in business days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundTimelines {
    /// 5..=15.
    pub card: BusinessDayRange,
    /// 1..=3 ("within 3 business days"; the earliest is a business day after submission).
    pub wallet: BusinessDayRange,
    /// 3..=20, for refunds of cancelled orders whatever the method.
    pub cancellation: BusinessDayRange,
}

impl Policy {
    /// The names [`Policy::named`] accepts.
    pub const NAMES: [&'static str; 2] = ["classic", "extended"];

    /// Loads a named policy shipped with the crate. Names are matched ignoring case.
    pub fn named(name: &str) -> Result<Policy, PolicyError> {
        let text = match name.trim().to_ascii_lowercase().as_str() {
            "classic" => CLASSIC_TOML,
            "extended" => EXTENDED_TOML,
            _ => return Err(PolicyError::UnknownName(name.chars().take(64).collect())),
        };
        Self::from_toml_str(text)
    }

    /// The default policy: the 23/27/39-day protection table of docs/domain.md.
    pub fn classic() -> Policy {
        // Embedded at build time and loaded by a test: it cannot fail at run time.
        #[allow(clippy::expect_used)]
        Self::named("classic").expect("the embedded classic policy is valid (tested)")
    }

    /// Every carrier class protected for 60 days.
    pub fn extended() -> Policy {
        // Embedded at build time and loaded by a test: it cannot fail at run time.
        #[allow(clippy::expect_used)]
        Self::named("extended").expect("the embedded extended policy is valid (tested)")
    }

    /// Parses and validates a policy document.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every setting; the first problem found is reported with its TOML path.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let days = [
            ("cancellation.window_days", self.cancellation.window_days),
            (
                "protection.deadline_days.express",
                self.protection.deadline_days.express,
            ),
            (
                "protection.deadline_days.ems",
                self.protection.deadline_days.ems,
            ),
            (
                "protection.deadline_days.postal",
                self.protection.deadline_days.postal,
            ),
            (
                "negotiation.arbiter_ruling_days",
                self.negotiation.arbiter_ruling_days,
            ),
            ("returns.ship_by_days", self.returns.ship_by_days),
            (
                "returns.free_return_window_days",
                self.returns.free_return_window_days,
            ),
        ];
        for (field, value) in days {
            if !(1..=MAX_DAYS).contains(&value) {
                return Err(invalid(
                    field,
                    format!("must be 1..={MAX_DAYS} days, got {value}"),
                ));
            }
        }
        let opens = self.protection.opens_after_days;
        if opens > MAX_DAYS {
            return Err(invalid(
                "protection.opens_after_days",
                format!("must be at most {MAX_DAYS} days, got {opens}"),
            ));
        }
        for class in CarrierClass::ALL {
            let deadline = self.protection_deadline_days(*class);
            if deadline <= opens {
                return Err(invalid(
                    format!(
                        "protection.deadline_days.{}",
                        class.code().to_ascii_lowercase()
                    ),
                    format!(
                        "closes after {deadline} days, not after the window opens ({opens} days): \
                         buyers could never open a dispute"
                    ),
                ));
            }
        }
        let response = self.negotiation.seller_response_days;
        if !SELLER_RESPONSE_DAYS_RANGE.contains(&response) {
            return Err(invalid(
                "negotiation.seller_response_days",
                format!("must be 5..=15 days, got {response}"),
            ));
        }
        for (reason, days) in &self.negotiation.seller_response_days_by_reason {
            if !SELLER_RESPONSE_DAYS_RANGE.contains(days) {
                return Err(invalid(
                    format!("negotiation.seller_response_days_by_reason.{reason}"),
                    format!("must be 5..=15 days, got {days}"),
                ));
            }
        }
        let thresholds = [
            (
                "thresholds.contested_return_above_usd_minor",
                self.thresholds.contested_return_above_usd_minor,
            ),
            (
                "thresholds.fast_refund_platinum_max_usd_minor",
                self.thresholds.fast_refund_platinum_max_usd_minor,
            ),
            (
                "thresholds.fast_refund_diamond_max_usd_minor",
                self.thresholds.fast_refund_diamond_max_usd_minor,
            ),
        ];
        for (field, value) in thresholds {
            if value < 0 {
                return Err(invalid(field, format!("must not be negative, got {value}")));
            }
        }
        let timelines = [
            ("refund_timelines.card", self.refund_timelines.card),
            ("refund_timelines.wallet", self.refund_timelines.wallet),
            (
                "refund_timelines.cancellation",
                self.refund_timelines.cancellation,
            ),
        ];
        for (field, range) in timelines {
            if !range.is_valid() {
                return Err(invalid(
                    field,
                    format!(
                        "earliest {} is after latest {}",
                        range.earliest, range.latest
                    ),
                ));
            }
            if range.latest > MAX_DAYS {
                return Err(invalid(
                    field,
                    format!("latest must be at most {MAX_DAYS}, got {}", range.latest),
                ));
            }
        }
        Ok(())
    }

    /// How long after purchase an unshipped order may be cancelled.
    pub fn cancellation_window(&self) -> Duration {
        days(self.cancellation.window_days)
    }

    /// How long after shipping (or the promised ship date) a dispute may first be opened.
    pub fn dispute_opens_after(&self) -> Duration {
        days(self.protection.opens_after_days)
    }

    /// How long after shipping protection closes for `class` (time paused by an open
    /// dispute is added by the caller).
    pub fn protection_deadline(&self, class: CarrierClass) -> Duration {
        days(self.protection_deadline_days(class))
    }

    fn protection_deadline_days(&self, class: CarrierClass) -> u32 {
        let deadlines = &self.protection.deadline_days;
        match class {
            CarrierClass::Express => deadlines.express,
            CarrierClass::Ems => deadlines.ems,
            CarrierClass::Postal => deadlines.postal,
        }
    }

    /// How many times a withdrawn dispute may be reopened.
    pub fn reopen_allowance(&self) -> u32 {
        self.protection.reopen_allowance
    }

    /// The seller's response window for a dispute opened with `reason`.
    pub fn seller_response_window(&self, reason: DisputeReason) -> Duration {
        let negotiation = &self.negotiation;
        days(
            negotiation
                .seller_response_days_by_reason
                .get(&reason)
                .copied()
                .unwrap_or(negotiation.seller_response_days),
        )
    }

    /// How long the arbiter has to rule after escalation.
    pub fn arbiter_ruling_window(&self) -> Duration {
        days(self.negotiation.arbiter_ruling_days)
    }

    /// How long after authorisation the buyer has to ship a return.
    pub fn return_ship_by_window(&self) -> Duration {
        days(self.returns.ship_by_days)
    }

    /// How long after delivery a free-return listing may be returned without a reason.
    pub fn free_return_window(&self) -> Duration {
        days(self.returns.free_return_window_days)
    }

    pub fn free_returns_per_month(&self) -> u32 {
        self.returns.free_returns_per_month
    }

    /// Orders above this many US cents need a return before refund when the seller contests.
    pub fn contested_return_threshold_usd_minor(&self) -> i64 {
        self.thresholds.contested_return_above_usd_minor
    }

    /// The fast-refund limit of a tier in US cents; `None` for tiers without fast refund.
    pub fn fast_refund_limit_usd_minor(&self, tier: BuyerTier) -> Option<i64> {
        match tier {
            BuyerTier::Platinum => Some(self.thresholds.fast_refund_platinum_max_usd_minor),
            BuyerTier::Diamond => Some(self.thresholds.fast_refund_diamond_max_usd_minor),
            BuyerTier::Standard | BuyerTier::Gold => None,
        }
    }

    /// Whether a refund of `amount` to a buyer of `tier` is released at the carrier's
    /// acceptance scan: Platinum up to USD 25, Diamond up to USD 100 (inclusive).
    pub fn is_fast_refund_eligible(
        &self,
        tier: BuyerTier,
        amount: &Money,
        fx: &FxTable,
    ) -> Result<bool, MoneyError> {
        match self.fast_refund_limit_usd_minor(tier) {
            Some(limit) => Ok(fx.to_usd_minor(amount)? <= limit),
            None => Ok(false),
        }
    }

    /// Whether an order of `order_total` is above the contested-return threshold (USD 50,
    /// exclusive: an order of exactly USD 50 is not "above").
    pub fn is_above_contested_return_threshold(
        &self,
        order_total: &Money,
        fx: &FxTable,
    ) -> Result<bool, MoneyError> {
        Ok(fx.to_usd_minor(order_total)? > self.thresholds.contested_return_above_usd_minor)
    }

    /// Business days for a refund paid back through `method`.
    pub fn refund_timeline(&self, method: PaymentMethod) -> BusinessDayRange {
        match method {
            PaymentMethod::Card => self.refund_timelines.card,
            PaymentMethod::Wallet => self.refund_timelines.wallet,
        }
    }

    /// Business days for the refund of a cancelled order.
    pub fn cancellation_refund_timeline(&self) -> BusinessDayRange {
        self.refund_timelines.cancellation
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::classic()
    }
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::CurrencyCode;

    #[test]
    fn the_classic_policy_carries_every_number_of_domain_md() {
        let p = Policy::named("classic").expect("classic loads");
        assert_eq!(p.name, "classic");
        assert_eq!(p.cancellation_window(), Duration::days(7));
        assert_eq!(p.dispute_opens_after(), Duration::days(6));
        assert_eq!(
            p.protection_deadline(CarrierClass::Express),
            Duration::days(23)
        );
        assert_eq!(p.protection_deadline(CarrierClass::Ems), Duration::days(27));
        assert_eq!(
            p.protection_deadline(CarrierClass::Postal),
            Duration::days(39)
        );
        assert_eq!(p.reopen_allowance(), 1);
        for reason in DisputeReason::ALL {
            assert_eq!(p.seller_response_window(*reason), Duration::days(15));
        }
        assert_eq!(p.arbiter_ruling_window(), Duration::days(10));
        assert_eq!(p.return_ship_by_window(), Duration::days(7));
        assert_eq!(p.free_return_window(), Duration::days(15));
        assert_eq!(p.free_returns_per_month(), 3);
        assert_eq!(p.contested_return_threshold_usd_minor(), 5000);
        assert_eq!(
            p.fast_refund_limit_usd_minor(BuyerTier::Platinum),
            Some(2500)
        );
        assert_eq!(
            p.fast_refund_limit_usd_minor(BuyerTier::Diamond),
            Some(10000)
        );
        assert_eq!(p.fast_refund_limit_usd_minor(BuyerTier::Gold), None);
        assert_eq!(p.fast_refund_limit_usd_minor(BuyerTier::Standard), None);
        assert_eq!(
            p.refund_timeline(PaymentMethod::Card),
            BusinessDayRange::new(5, 15)
        );
        assert_eq!(
            p.refund_timeline(PaymentMethod::Wallet),
            BusinessDayRange::new(1, 3)
        );
        assert_eq!(
            p.cancellation_refund_timeline(),
            BusinessDayRange::new(3, 20)
        );
        assert_eq!(Policy::default(), p);
    }

    #[test]
    fn the_extended_policy_protects_every_class_for_sixty_days_and_nothing_else_changes() {
        let extended = Policy::named("extended").expect("extended loads");
        for class in CarrierClass::ALL {
            assert_eq!(extended.protection_deadline(*class), Duration::days(60));
        }
        let mut as_classic = extended.clone();
        as_classic.name = "classic".into();
        as_classic.protection.deadline_days = Policy::classic().protection.deadline_days;
        assert_eq!(as_classic, Policy::classic());
        assert_eq!(Policy::extended(), extended);
    }

    #[test]
    fn policy_names_are_matched_ignoring_case_and_unknown_names_are_refused() {
        assert_eq!(
            Policy::named("Extended").map(|p| p.name),
            Ok("extended".into())
        );
        assert_eq!(
            Policy::named("lenient"),
            Err(PolicyError::UnknownName("lenient".into()))
        );
        for name in Policy::NAMES {
            assert!(Policy::named(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn a_per_reason_override_changes_only_that_reasons_window() {
        let text = CLASSIC_TOML.replace(
            "[negotiation.seller_response_days_by_reason]",
            "[negotiation.seller_response_days_by_reason]\nCHANGED_MIND = 5\nnot_received = 10",
        );
        let p = Policy::from_toml_str(&text).expect("overrides load");
        assert_eq!(
            p.seller_response_window(DisputeReason::ChangedMind),
            Duration::days(5)
        );
        assert_eq!(
            p.seller_response_window(DisputeReason::NotReceived),
            Duration::days(10)
        );
        assert_eq!(
            p.seller_response_window(DisputeReason::Damaged),
            Duration::days(15)
        );
    }

    #[test]
    fn malformed_toml_is_a_parse_error() {
        for text in [
            "this is not toml",
            // A missing section.
            "name = \"x\"",
            // An unknown setting (a typo must not silently fall back to nothing).
            &CLASSIC_TOML.replace("window_days = 7", "window_days = 7\nwindow_dayz = 8"),
            // A negative day count.
            &CLASSIC_TOML.replace("window_days = 7", "window_days = -7"),
            // A missing carrier class.
            &CLASSIC_TOML.replace("postal = 39", ""),
            // An unknown reason in the overrides.
            &CLASSIC_TOML.replace(
                "[negotiation.seller_response_days_by_reason]",
                "[negotiation.seller_response_days_by_reason]\nBORED = 5",
            ),
        ] {
            assert!(
                matches!(Policy::from_toml_str(text), Err(PolicyError::Parse(_))),
                "{text:?} should not parse"
            );
        }
    }

    #[test]
    fn out_of_range_values_are_rejected_naming_the_setting() {
        let cases = [
            (
                "window_days = 7",
                "window_days = 0",
                "cancellation.window_days",
            ),
            (
                "seller_response_days = 15",
                "seller_response_days = 16",
                "negotiation.seller_response_days",
            ),
            (
                "[negotiation.seller_response_days_by_reason]",
                "[negotiation.seller_response_days_by_reason]\nDAMAGED = 4",
                "negotiation.seller_response_days_by_reason.DAMAGED",
            ),
            (
                "[negotiation.seller_response_days_by_reason]",
                "[negotiation.seller_response_days_by_reason]\nDAMAGED = 16",
                "negotiation.seller_response_days_by_reason.DAMAGED",
            ),
            (
                "express = 23",
                "express = 6",
                "protection.deadline_days.express",
            ),
            (
                "arbiter_ruling_days = 10",
                "arbiter_ruling_days = 0",
                "negotiation.arbiter_ruling_days",
            ),
            (
                "ship_by_days = 7",
                "ship_by_days = 100000",
                "returns.ship_by_days",
            ),
            (
                "card = { earliest = 5, latest = 15 }",
                "card = { earliest = 16, latest = 15 }",
                "refund_timelines.card",
            ),
            (
                "fast_refund_diamond_max_usd_minor = 10000",
                "fast_refund_diamond_max_usd_minor = -1",
                "thresholds.fast_refund_diamond_max_usd_minor",
            ),
            ("name = \"classic\"", "name = \" \"", "name"),
        ];
        for (from, to, expected_field) in cases {
            let text = CLASSIC_TOML.replacen(from, to, 1);
            assert_ne!(text, CLASSIC_TOML, "replacement of {from:?} did nothing");
            match Policy::from_toml_str(&text) {
                Err(PolicyError::Invalid { field, .. }) => assert_eq!(field, expected_field),
                other => panic!("{to:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn validate_catches_values_set_in_code() {
        let mut p = Policy::classic();
        p.refund_timelines.wallet = BusinessDayRange::new(4, 3);
        assert!(matches!(p.validate(), Err(PolicyError::Invalid { .. })));
    }

    #[test]
    fn fast_refund_limits_are_inclusive_and_compared_in_usd() {
        let p = Policy::classic();
        let fx = FxTable::default();
        let usd = |minor| Money::new(CurrencyCode::USD, minor);
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Platinum, &usd(2500), &fx),
            Ok(true)
        );
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Platinum, &usd(2501), &fx),
            Ok(false)
        );
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Diamond, &usd(10_000), &fx),
            Ok(true)
        );
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Diamond, &usd(10_001), &fx),
            Ok(false)
        );
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Gold, &usd(1), &fx),
            Ok(false)
        );
        // EUR 23.15 = USD 25.002 → over the Platinum limit; EUR 23.14 = USD 24.9912 → within.
        let eur = |minor| Money::new(CurrencyCode::EUR, minor);
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Platinum, &eur(2315), &fx),
            Ok(false)
        );
        assert_eq!(
            p.is_fast_refund_eligible(BuyerTier::Platinum, &eur(2314), &fx),
            Ok(true)
        );
    }

    #[test]
    fn the_contested_return_threshold_is_strictly_above_usd_50() {
        let p = Policy::classic();
        let fx = FxTable::default();
        let usd = |minor| Money::new(CurrencyCode::USD, minor);
        assert_eq!(
            p.is_above_contested_return_threshold(&usd(5000), &fx),
            Ok(false)
        );
        assert_eq!(
            p.is_above_contested_return_threshold(&usd(5001), &fx),
            Ok(true)
        );
        // JPY 7500 = USD 50.25.
        let jpy = Money::new(CurrencyCode::JPY, 7500);
        assert_eq!(p.is_above_contested_return_threshold(&jpy, &fx), Ok(true));
    }
}
