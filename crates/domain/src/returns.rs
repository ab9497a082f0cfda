//! Return shipments as pure rules: free-return eligibility and quota, postage payer, UPU S10 tracking numbers.
//!
//! docs/domain.md "Who pays return postage", "Free returns" and "Return shipment". Everything here
//! is a pure function of its inputs (no clock, no storage): the labels service loads the rows,
//! asks these functions, and writes what they decide in one transaction. The monthly quota is
//! *decided* here but *counted* by the service with a conditional update, because only the
//! database can make ten concurrent requests see one counter.

use std::fmt;

use chrono::{Datelike, Duration};

use crate::dispute::{DisputeReason, PostagePayer};
use crate::error::DomainError;
use crate::macros::code_enum;
use crate::money::{FxTable, Money, MoneyError, PPM};
use crate::policy::Policy;
use crate::time::Timestamp;

// ---------------------------------------------------------------------------------------------
// UPU S10 tracking numbers
// ---------------------------------------------------------------------------------------------

/// The weights of the S10 check digit over the eight serial digits (UPU standard S10,
/// "Identification of postal items", section on the check digit; the same weights are quoted
/// in the Wikipedia article "S10 (UPU standard)").
pub const S10_WEIGHTS: [u32; 8] = [8, 6, 4, 2, 3, 5, 9, 7];

/// The largest serial an S10 number can carry (eight digits).
pub const S10_MAX_SERIAL: u32 = 99_999_999;

/// The S10 check digit of an eight-digit serial: the weighted sum modulo 11, subtracted from
/// 11, with 10 written as 0 and 11 written as 5.
pub fn s10_check_digit(serial: u32) -> Result<u8, DomainError> {
    if serial > S10_MAX_SERIAL {
        return Err(DomainError::validation(
            "tracking_number",
            format!("S10 serial {serial} has more than eight digits"),
        ));
    }
    let digits = serial_digits(serial);
    let sum: u32 = digits
        .iter()
        .zip(S10_WEIGHTS)
        .map(|(digit, weight)| u32::from(*digit) * weight)
        .sum();
    let check = match 11 - sum % 11 {
        10 => 0,
        11 => 5,
        other => other,
    };
    // `check` is 0..=9 after the two substitutions above.
    Ok(u8::try_from(check).unwrap_or(0))
}

fn serial_digits(serial: u32) -> [u8; 8] {
    let mut digits = [0u8; 8];
    let mut rest = serial;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the conversion cannot fail.
        *slot = u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    digits
}

/// A parsed UPU S10 identifier: `RR473124829GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct S10 {
    service_indicator: [u8; 2],
    serial: u32,
    check_digit: u8,
    country: [u8; 2],
}

impl S10 {
    /// Builds the identifier for `serial` with its check digit. `service_indicator` is two
    /// uppercase letters (the operator's product, e.g. "CP" parcels); `country` the ISO 3166-1
    /// alpha-2 code of the issuing operator.
    pub fn new(service_indicator: &str, serial: u32, country: &str) -> Result<S10, DomainError> {
        let service_indicator = two_letters(service_indicator, "service_indicator")?;
        let country = two_letters(country, "country_code")?;
        let check_digit = s10_check_digit(serial)?;
        Ok(S10 {
            service_indicator,
            serial,
            check_digit,
            country,
        })
    }

    /// Parses and verifies a 13-character S10 identifier (spaces allowed, as printed on
    /// labels: "RR 473 124 829 GB"). A wrong check digit is refused.
    pub fn parse(text: &str) -> Result<S10, DomainError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = compact.as_bytes();
        let invalid = |why: &str| {
            DomainError::validation(
                "tracking_number",
                format!(
                    "{:?} is not a UPU S10 number: {why}",
                    compact.chars().take(32).collect::<String>()
                ),
            )
        };
        if bytes.len() != 13 {
            return Err(invalid(
                "expected 13 characters (2 letters, 9 digits, 2 letters)",
            ));
        }
        let letters =
            |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_uppercase);
        if !letters(0..2) || !letters(11..13) {
            return Err(invalid(
                "the service indicator and the country code are uppercase letters",
            ));
        }
        if !bytes[2..11].iter().all(u8::is_ascii_digit) {
            return Err(invalid("characters 3 to 11 must be digits"));
        }
        let serial = bytes[2..10]
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        let given = bytes[10] - b'0';
        let expected = s10_check_digit(serial)?;
        if given != expected {
            return Err(invalid(&format!(
                "check digit {given} does not match the serial (expected {expected})"
            )));
        }
        Ok(S10 {
            service_indicator: [bytes[0], bytes[1]],
            serial,
            check_digit: given,
            country: [bytes[11], bytes[12]],
        })
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn check_digit(&self) -> u8 {
        self.check_digit
    }

    /// The issuing operator's country code.
    pub fn country(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("??")
    }

    pub fn service_indicator(&self) -> &str {
        std::str::from_utf8(&self.service_indicator).unwrap_or("??")
    }
}

impl fmt::Display for S10 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{:08}{}{}",
            self.service_indicator(),
            self.serial,
            self.check_digit,
            self.country()
        )
    }
}

fn two_letters(text: &str, field: &str) -> Result<[u8; 2], DomainError> {
    match text.as_bytes() {
        &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok([a, b]),
        _ => Err(DomainError::validation(
            field,
            format!("{text:?} must be two uppercase letters"),
        )),
    }
}

/// A carrier's own (non-S10) tracking number: its prefix, then the serial zero-padded to
/// `digits` digits. Lockers and couriers publish no check-digit scheme the suite could rely
/// on, so uniqueness comes from the per-carrier serial alone.
pub fn proprietary_tracking_number(
    prefix: &str,
    serial: u64,
    digits: usize,
) -> Result<String, DomainError> {
    let number = format!("{serial:0digits$}");
    if number.len() > digits {
        return Err(DomainError::rule(
            "tracking_serial_exhausted",
            format!("serial {serial} does not fit in {digits} digits for prefix {prefix}"),
        ));
    }
    Ok(format!("{prefix}{number}"))
}

// ---------------------------------------------------------------------------------------------
// Free returns
// ---------------------------------------------------------------------------------------------

code_enum! {
    /// Whether an order's return can be free, and if not, the first rule that says no.
    pub enum FreeReturnEligibility as "free_return_eligibility" {
        Eligible => "ELIGIBLE",
        NotAFreeReturnListing => "NOT_A_FREE_RETURN_LISTING",
        NotDelivered => "NOT_DELIVERED",
        WindowClosed => "WINDOW_CLOSED",
        MonthlyQuotaUsed => "MONTHLY_QUOTA_USED",
        OrderAlreadyReturned => "ORDER_ALREADY_RETURNED",
        ItemValueBelowPostage => "ITEM_VALUE_BELOW_POSTAGE",
    }
}

/// What the free-return rules look at, all loaded by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeReturnFacts {
    /// The listing offers free returns (the authorisation's free-return flag).
    pub free_return_listing: bool,
    /// When the order was delivered; `None` when no delivery was recorded.
    pub delivered_at: Option<Timestamp>,
    /// The order already has a label (one label per order).
    pub order_has_label: bool,
    /// The item's value.
    pub item_value: Money,
    /// The postage the return would cost.
    pub postage: Money,
    /// Free returns the buyer already used in the calendar month of `now`.
    pub used_this_month: u32,
}

/// The verdict with a sentence a buyer can read (dates, counts, amounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeReturnDecision {
    pub eligibility: FreeReturnEligibility,
    pub reason: String,
    /// Free returns left this month before this return is counted.
    pub left_this_month: u32,
}

impl FreeReturnDecision {
    pub fn is_eligible(&self) -> bool {
        self.eligibility == FreeReturnEligibility::Eligible
    }
}

/// The calendar month a free return counts against, e.g. "2026-03" (UTC: one boundary for
/// every buyer, so a quota cannot be stretched by changing time zones).
pub fn quota_month(at: Timestamp) -> String {
    format!("{:04}-{:02}", at.year(), at.month())
}

/// Applies docs/domain.md "Free returns" in order: the listing offers it, one label per order, a
/// recorded delivery, the 15-day window (inclusive of the 15th day), the item worth more than
/// the postage, and finally the monthly quota (checked last because the service re-checks it
/// atomically when it counts the return).
pub fn free_return_eligibility(
    facts: &FreeReturnFacts,
    now: Timestamp,
    policy: &Policy,
    fx: &FxTable,
) -> Result<FreeReturnDecision, DomainError> {
    let limit = policy.free_returns_per_month();
    let left = limit.saturating_sub(facts.used_this_month);
    let decide = |eligibility, reason: String| {
        Ok(FreeReturnDecision {
            eligibility,
            reason,
            left_this_month: left,
        })
    };
    if !facts.free_return_listing {
        return decide(
            FreeReturnEligibility::NotAFreeReturnListing,
            "the listing does not offer free returns".into(),
        );
    }
    if facts.order_has_label {
        return decide(
            FreeReturnEligibility::OrderAlreadyReturned,
            "the order already has a return label (one label per order)".into(),
        );
    }
    let Some(delivered_at) = facts.delivered_at else {
        return decide(
            FreeReturnEligibility::NotDelivered,
            "the order has no recorded delivery".into(),
        );
    };
    let closes = delivered_at + policy.free_return_window();
    if now > closes {
        return decide(
            FreeReturnEligibility::WindowClosed,
            format!(
                "the free-return window of {} days after delivery on {} closed on {}",
                policy.free_return_window().num_days(),
                delivered_at.format("%Y-%m-%d"),
                closes.format("%Y-%m-%d %H:%M UTC")
            ),
        );
    }
    if !worth_more_than(&facts.item_value, &facts.postage, fx)? {
        return decide(
            FreeReturnEligibility::ItemValueBelowPostage,
            format!(
                "the item ({}) is worth no more than the return postage ({}): refund and keep instead",
                facts.item_value, facts.postage
            ),
        );
    }
    if facts.used_this_month >= limit {
        return decide(
            FreeReturnEligibility::MonthlyQuotaUsed,
            format!(
                "the buyer used {} of {limit} free returns this calendar month",
                facts.used_this_month
            ),
        );
    }
    decide(
        FreeReturnEligibility::Eligible,
        format!(
            "free return: delivered {}, window open until {}, {left} of {limit} free returns left this month",
            delivered_at.format("%Y-%m-%d"),
            closes.format("%Y-%m-%d %H:%M UTC")
        ),
    )
}

/// `value > postage`, through the FX table when the currencies differ.
fn worth_more_than(value: &Money, postage: &Money, fx: &FxTable) -> Result<bool, MoneyError> {
    if value.currency == postage.currency {
        return Ok(value.minor_units > postage.minor_units);
    }
    Ok(fx.to_usd_minor(value)? > fx.to_usd_minor(postage)?)
}

/// Expresses `amount` in `target` through the FX table's USD rates, rounded up to the next
/// minor unit (postage deducted from a refund must be in the refund's currency; rounding up
/// never undercharges the party that pays).
pub fn convert_via_usd(
    amount: &Money,
    target: crate::money::CurrencyCode,
    fx: &FxTable,
) -> Result<Money, MoneyError> {
    if amount.currency == target {
        return Ok(*amount);
    }
    let usd_minor = i128::from(fx.to_usd_minor(amount)?);
    let rate = i128::from(
        fx.rate_ppm(target)
            .ok_or(MoneyError::MissingFxRate(target))?,
    );
    // target_minor = usd_cents / 100 * PPM / rate * 10^exp
    let numerator = usd_minor
        .checked_mul(i128::from(PPM))
        .and_then(|n| n.checked_mul(10i128.pow(target.minor_exponent())))
        .ok_or(MoneyError::Overflow)?;
    let denominator = rate * 100;
    let mut minor = numerator / denominator;
    if numerator % denominator > 0 {
        minor += 1;
    }
    i64::try_from(minor)
        .map(|m| Money::new(target, m))
        .map_err(|_| MoneyError::Overflow)
}

// ---------------------------------------------------------------------------------------------
// Who pays postage
// ---------------------------------------------------------------------------------------------

/// Who pays a return's postage (docs/domain.md "Who pays return postage").
///
/// A counted free return is prepaid by the platform. Otherwise a seller error (wrong,
/// damaged, not as described...) is prepaid by the seller, or by the platform when the
/// authorisation says so; the buyer never pays for the seller's error. A changed mind is paid
/// by the buyer and deducted from the refund.
pub fn postage_payer(
    reason: DisputeReason,
    authorised: Option<PostagePayer>,
    counted_free: bool,
) -> PostagePayer {
    if counted_free {
        return PostagePayer::Platform;
    }
    if reason.is_seller_error() {
        match authorised {
            Some(PostagePayer::Platform) => PostagePayer::Platform,
            _ => PostagePayer::Seller,
        }
    } else {
        PostagePayer::Buyer
    }
}

/// The ship-by deadline: the authorisation's, or the policy's window from `now`.
pub fn ship_by(authorised: Option<Timestamp>, now: Timestamp, policy: &Policy) -> Timestamp {
    authorised.unwrap_or(now + policy.return_ship_by_window())
}

// ---------------------------------------------------------------------------------------------
// Label journey
// ---------------------------------------------------------------------------------------------

code_enum! {
    /// Where a label is in its journey.
    pub enum LabelStatus as "status" {
        Created => "CREATED",
        PickupScheduled => "PICKUP_SCHEDULED",
        InTransit => "IN_TRANSIT",
        Delivered => "DELIVERED",
        Inspected => "INSPECTED",
        Voided => "VOIDED",
        Exception => "EXCEPTION",
        ReturnedToSender => "RETURNED_TO_SENDER",
    }
}

impl LabelStatus {
    /// How far along the journey a status is; a scan never moves a label to a lower rank,
    /// which is how late scans (IN_TRANSIT after DELIVERED) are absorbed. Equal ranks are
    /// decided by the carrier's `occurred_at`.
    fn rank(&self) -> u8 {
        match self {
            Self::Created => 0,
            Self::PickupScheduled => 1,
            Self::InTransit | Self::Exception => 2,
            Self::ReturnedToSender => 3,
            Self::Delivered => 4,
            Self::Inspected => 5,
            Self::Voided => 6,
        }
    }

    /// The label was never handed to a carrier, so it can still be voided.
    pub fn is_unused(&self) -> bool {
        matches!(self, Self::Created | Self::PickupScheduled)
    }
}

code_enum! {
    /// Kinds of carrier scans.
    pub enum TrackingEventType as "type" {
        Accepted => "ACCEPTED",
        InTransit => "IN_TRANSIT",
        OutForDelivery => "OUT_FOR_DELIVERY",
        Delivered => "DELIVERED",
        Exception => "EXCEPTION",
        ReturnedToSender => "RETURNED_TO_SENDER",
        PickupConfirmed => "PICKUP_CONFIRMED",
    }
}

/// The parts of a label a scan can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journey {
    pub status: LabelStatus,
    /// `occurred_at` of the scan that set `status` (ties between equal ranks).
    pub status_at: Option<Timestamp>,
    pub accepted_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
}

/// What a scan changed that other services must hear about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanEffects {
    /// First proof the carrier has the parcel: refunds may release a fast refund.
    pub accepted_by_carrier: bool,
    /// Delivered back to the seller.
    pub delivered: bool,
    /// The courier confirmed a booked pickup.
    pub pickup_confirmed: bool,
}

/// Applies one carrier scan. Scans can arrive late and out of order: the status only moves
/// forward (see [`LabelStatus::rank`]), `accepted_at`/`delivered_at` keep the earliest
/// instant reported, and each effect fires at most once per label.
pub fn apply_scan(
    journey: &Journey,
    scan: TrackingEventType,
    occurred_at: Timestamp,
) -> Result<(Journey, ScanEffects), DomainError> {
    if matches!(journey.status, LabelStatus::Voided) {
        return Err(DomainError::IllegalTransition {
            from: journey.status.code().into(),
            action: format!("record a {} scan", scan.code()),
            allowed: vec![
                "CREATED".into(),
                "PICKUP_SCHEDULED".into(),
                "IN_TRANSIT".into(),
            ],
        });
    }
    let mut next = journey.clone();
    let mut effects = ScanEffects::default();
    let moving = matches!(
        scan,
        TrackingEventType::Accepted
            | TrackingEventType::InTransit
            | TrackingEventType::OutForDelivery
            | TrackingEventType::Delivered
    );
    if moving {
        // Any movement scan proves the carrier took the parcel, even if the ACCEPTED scan
        // itself is late or lost.
        match next.accepted_at {
            None => {
                next.accepted_at = Some(occurred_at);
                effects.accepted_by_carrier = true;
            }
            Some(at) if occurred_at < at => next.accepted_at = Some(occurred_at),
            Some(_) => {}
        }
    }
    if scan == TrackingEventType::Delivered {
        match next.delivered_at {
            None => {
                next.delivered_at = Some(occurred_at);
                effects.delivered = true;
            }
            Some(at) if occurred_at < at => next.delivered_at = Some(occurred_at),
            Some(_) => {}
        }
    }
    if scan == TrackingEventType::PickupConfirmed {
        effects.pickup_confirmed = true;
    }
    let target = match scan {
        TrackingEventType::Accepted
        | TrackingEventType::InTransit
        | TrackingEventType::OutForDelivery => Some(LabelStatus::InTransit),
        TrackingEventType::Delivered => Some(LabelStatus::Delivered),
        TrackingEventType::Exception => Some(LabelStatus::Exception),
        TrackingEventType::ReturnedToSender => Some(LabelStatus::ReturnedToSender),
        TrackingEventType::PickupConfirmed => None,
    };
    if let Some(target) = target {
        let forward = target.rank() > journey.status.rank();
        let newer_same_rank = target.rank() == journey.status.rank()
            && journey.status_at.is_none_or(|at| occurred_at >= at);
        if forward || newer_same_rank {
            next.status = target;
            next.status_at = Some(occurred_at);
        }
    }
    Ok((next, effects))
}

code_enum! {
    /// How the buyer hands the parcel to the carrier.
    pub enum ReturnMethod as "method" {
        DropOff => "DROP_OFF",
        Pickup => "PICKUP",
    }
}

code_enum! {
    /// What a return partner offers in its country.
    pub enum ServiceType as "service_type" {
        /// Counter drop-off at post offices or shops.
        DropOff => "DROP_OFF",
        /// Parcel lockers (a kind of drop-off).
        Locker => "LOCKER",
        /// Courier pickup at the buyer's address.
        Pickup => "PICKUP",
    }
}

impl ServiceType {
    /// Drop-off and lockers both take a parcel the buyer brings.
    pub fn is_drop_off(&self) -> bool {
        matches!(self, Self::DropOff | Self::Locker)
    }

    /// Whether a partner offering this serves labels of `method`.
    pub fn serves(&self, method: ReturnMethod) -> bool {
        match method {
            ReturnMethod::DropOff => self.is_drop_off(),
            ReturnMethod::Pickup => *self == Self::Pickup,
        }
    }
}

code_enum! {
    /// Where a booked courier pickup stands.
    pub enum PickupStatus as "status" {
        Scheduled => "SCHEDULED",
        Confirmed => "CONFIRMED",
        Collected => "COLLECTED",
        Cancelled => "CANCELLED",
    }
}

impl PickupStatus {
    /// The courier is still expected: the pickup can be cancelled or collected.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Scheduled | Self::Confirmed)
    }
}

code_enum! {
    /// The kind of place a drop-off location is.
    pub enum LocationKind as "kind" {
        PostOffice => "POST_OFFICE",
        Locker => "LOCKER",
        ParcelShop => "PARCEL_SHOP",
    }
}

code_enum! {
    /// What the seller found when opening the returned parcel.
    pub enum InspectionResult as "result" {
        Accepted => "ACCEPTED",
        DamagedAsClaimed => "DAMAGED_AS_CLAIMED",
        DamagedInTransit => "DAMAGED_IN_TRANSIT",
        WrongOrEmpty => "WRONG_OR_EMPTY",
    }
}

impl InspectionResult {
    /// Accepted or damaged as claimed releases the refund; the others go back to review.
    pub fn passes(&self) -> bool {
        matches!(self, Self::Accepted | Self::DamagedAsClaimed)
    }
}

/// The seller may inspect once, after delivery.
pub fn check_inspection(status: LabelStatus) -> Result<(), DomainError> {
    if status == LabelStatus::Delivered {
        Ok(())
    } else {
        Err(DomainError::IllegalTransition {
            from: status.code().into(),
            action: "record an inspection".into(),
            allowed: vec!["DELIVERED".into()],
        })
    }
}

/// A label may be voided only while unused (never handed to a carrier).
pub fn check_void(status: LabelStatus) -> Result<(), DomainError> {
    if status.is_unused() {
        Ok(())
    } else {
        Err(DomainError::IllegalTransition {
            from: status.code().into(),
            action: "void the label".into(),
            allowed: vec!["CREATED".into(), "PICKUP_SCHEDULED".into()],
        })
    }
}

/// Checks a pickup window: it ends after it starts, starts in the future, and lasts at most
/// `max_hours` (couriers book half-day or day slots).
pub fn check_pickup_window(
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
    max_hours: i64,
) -> Result<(), DomainError> {
    if end <= start {
        return Err(DomainError::validation(
            "window_end",
            "must be after window_start",
        ));
    }
    if start < now {
        return Err(DomainError::validation(
            "window_start",
            format!(
                "must not be in the past (now is {})",
                now.format("%Y-%m-%d %H:%M UTC")
            ),
        ));
    }
    if end - start > Duration::hours(max_hours) {
        return Err(DomainError::validation(
            "window_end",
            format!("a pickup window lasts at most {max_hours} hours"),
        ));
    }
    Ok(())
}

/// Great-circle distance in metres between two WGS 84 points (haversine on a sphere of the
/// mean Earth radius, 6 371 008.8 m; within 0.5% of the ellipsoid, plenty for "nearest first").
pub fn haversine_meters(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().atan2((1.0 - a).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::CurrencyCode;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn at(y: i32, m: u32, d: u32) -> Timestamp {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn published_s10_examples_have_the_right_check_digit() {
        // RR473124829GB is the example of the UPU S10 standard and the Wikipedia article
        // "S10 (UPU standard)". By hand: 4*8+7*6+3*4+1*2+2*3+4*5+8*9+2*7 = 200;
        // 200 mod 11 = 2; 11 - 2 = 9.
        assert_eq!(s10_check_digit(47_312_482), Ok(9));
        assert_eq!(
            S10::parse("RR473124829GB").map(|s| s.to_string()),
            Ok("RR473124829GB".into())
        );
        // EE123456785US (the usual USPS/EMS illustration): 1*8+2*6+3*4+4*2+5*3+6*5+7*9+8*7
        // = 204; 204 mod 11 = 6; 11 - 6 = 5.
        assert_eq!(s10_check_digit(12_345_678), Ok(5));
        assert!(S10::parse("EE 123 456 785 US").is_ok());
    }

    #[test]
    fn a_remainder_of_one_gives_zero_and_of_zero_gives_five() {
        // 00000008: 8*7 = 56, 56 mod 11 = 1 -> 11 - 1 = 10 -> written 0.
        assert_eq!(s10_check_digit(8), Ok(0));
        // 00000000: sum 0 -> 11 - 0 = 11 -> written 5.
        assert_eq!(s10_check_digit(0), Ok(5));
        assert_eq!(
            S10::new("CP", 8, "FR").map(|s| s.to_string()),
            Ok("CP000000080FR".into())
        );
    }

    #[test]
    fn malformed_or_mistyped_s10_numbers_are_refused() {
        assert!(S10::parse("RR473124828GB").is_err(), "wrong check digit");
        assert!(S10::parse("RR47312482GB").is_err(), "too short");
        assert!(S10::parse("rr473124829GB").is_err(), "lowercase");
        assert!(S10::parse("RR4731248X9GB").is_err(), "letter in serial");
        assert!(S10::new("C", 1, "GB").is_err());
        assert!(S10::new("CP", 100_000_000, "GB").is_err());
    }

    proptest! {
        #[test]
        fn every_generated_s10_number_validates_and_a_changed_check_digit_does_not(
            serial in 0u32..=S10_MAX_SERIAL,
            bump in 1u8..10,
        ) {
            let number = S10::new("CP", serial, "GB").expect("valid").to_string();
            let parsed = S10::parse(&number).expect("round trip");
            prop_assert_eq!(parsed.serial(), serial);
            prop_assert_eq!(parsed.country(), "GB");
            // Serial-digit typos are not all caught (the 10 -> 0 and 11 -> 5 substitutions
            // fold remainders together), but a mistyped check digit always is.
            let mut bytes = number.into_bytes();
            bytes[10] = b'0' + (bytes[10] - b'0' + bump) % 10;
            prop_assert!(S10::parse(std::str::from_utf8(&bytes).expect("ascii")).is_err());
        }
    }

    #[test]
    fn proprietary_numbers_are_prefix_and_padded_serial() {
        assert_eq!(
            proprietary_tracking_number("SGW", 42, 10),
            Ok("SGW0000000042".into())
        );
        assert!(proprietary_tracking_number("SGW", 12_345, 4).is_err());
    }

    fn facts() -> FreeReturnFacts {
        FreeReturnFacts {
            free_return_listing: true,
            delivered_at: Some(at(2026, 3, 1)),
            order_has_label: false,
            item_value: Money::new(CurrencyCode::USD, 2_000),
            postage: Money::new(CurrencyCode::USD, 800),
            used_this_month: 0,
        }
    }

    fn check(facts: &FreeReturnFacts, now: Timestamp) -> FreeReturnDecision {
        free_return_eligibility(facts, now, &Policy::classic(), &FxTable::default())
            .expect("decides")
    }

    #[test]
    fn a_free_return_listing_within_fifteen_days_is_eligible_with_the_quota_left() {
        let decision = check(&facts(), at(2026, 3, 16));
        assert_eq!(decision.eligibility, FreeReturnEligibility::Eligible);
        assert_eq!(decision.left_this_month, 3);
        assert!(decision.reason.contains("3 of 3"));
    }

    #[test]
    fn the_window_closes_fifteen_days_after_delivery() {
        let decision = check(&facts(), at(2026, 3, 16) + Duration::seconds(1));
        assert_eq!(decision.eligibility, FreeReturnEligibility::WindowClosed);
        assert!(
            decision.reason.contains("2026-03-01"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn each_rule_names_itself() {
        let now = at(2026, 3, 5);
        let cases: Vec<(FreeReturnFacts, FreeReturnEligibility)> = vec![
            (
                FreeReturnFacts {
                    free_return_listing: false,
                    ..facts()
                },
                FreeReturnEligibility::NotAFreeReturnListing,
            ),
            (
                FreeReturnFacts {
                    order_has_label: true,
                    ..facts()
                },
                FreeReturnEligibility::OrderAlreadyReturned,
            ),
            (
                FreeReturnFacts {
                    delivered_at: None,
                    ..facts()
                },
                FreeReturnEligibility::NotDelivered,
            ),
            (
                FreeReturnFacts {
                    used_this_month: 3,
                    ..facts()
                },
                FreeReturnEligibility::MonthlyQuotaUsed,
            ),
            (
                FreeReturnFacts {
                    item_value: Money::new(CurrencyCode::USD, 800),
                    ..facts()
                },
                FreeReturnEligibility::ItemValueBelowPostage,
            ),
        ];
        for (facts, expected) in cases {
            assert_eq!(check(&facts, now).eligibility, expected);
        }
    }

    #[test]
    fn item_value_and_postage_in_different_currencies_compare_through_fx() {
        // GBP 5.00 is about USD 6.35, less than USD 8.00 postage.
        let low = FreeReturnFacts {
            item_value: Money::new(CurrencyCode::GBP, 500),
            ..facts()
        };
        assert_eq!(
            check(&low, at(2026, 3, 5)).eligibility,
            FreeReturnEligibility::ItemValueBelowPostage
        );
        let high = FreeReturnFacts {
            item_value: Money::new(CurrencyCode::GBP, 700),
            ..facts()
        };
        assert_eq!(
            check(&high, at(2026, 3, 5)).eligibility,
            FreeReturnEligibility::Eligible
        );
    }

    #[test]
    fn the_quota_month_is_the_utc_calendar_month() {
        assert_eq!(quota_month(at(2026, 3, 31)), "2026-03");
        assert_eq!(quota_month(at(2026, 12, 1)), "2026-12");
    }

    #[test]
    fn seller_errors_are_prepaid_and_a_changed_mind_is_paid_by_the_buyer() {
        for reason in DisputeReason::ALL {
            let payer = postage_payer(*reason, None, false);
            if *reason == DisputeReason::ChangedMind {
                assert_eq!(payer, PostagePayer::Buyer);
            } else {
                assert_eq!(payer, PostagePayer::Seller);
            }
            assert_eq!(postage_payer(*reason, None, true), PostagePayer::Platform);
        }
        assert_eq!(
            postage_payer(DisputeReason::Damaged, Some(PostagePayer::Platform), false),
            PostagePayer::Platform
        );
        // The buyer never pays for the seller's error, whatever the authorisation says.
        assert_eq!(
            postage_payer(DisputeReason::Damaged, Some(PostagePayer::Buyer), false),
            PostagePayer::Seller
        );
    }

    #[test]
    fn conversion_through_usd_rounds_up() {
        let gbp = Money::new(CurrencyCode::GBP, 395);
        let usd = convert_via_usd(&gbp, CurrencyCode::USD, &FxTable::default()).expect("converts");
        // 3.95 * 1.27 = 5.0165 -> 502 cents (to_usd_minor rounds away from zero).
        assert_eq!(usd, Money::new(CurrencyCode::USD, 502));
        assert_eq!(
            convert_via_usd(&gbp, CurrencyCode::GBP, &FxTable::default()),
            Ok(gbp)
        );
    }

    fn journey() -> Journey {
        Journey {
            status: LabelStatus::Created,
            status_at: None,
            accepted_at: None,
            delivered_at: None,
        }
    }

    #[test]
    fn a_late_in_transit_scan_after_delivery_does_not_move_the_label_back() {
        let (j, e) =
            apply_scan(&journey(), TrackingEventType::Accepted, at(2026, 3, 2)).expect("ok");
        assert!(e.accepted_by_carrier);
        let (j, e) = apply_scan(&j, TrackingEventType::Delivered, at(2026, 3, 5)).expect("ok");
        assert!(e.delivered && !e.accepted_by_carrier);
        let (j2, e) = apply_scan(&j, TrackingEventType::InTransit, at(2026, 3, 3)).expect("ok");
        assert_eq!(j2.status, LabelStatus::Delivered);
        assert_eq!(e, ScanEffects::default());
    }

    #[test]
    fn delivery_without_an_acceptance_scan_counts_as_both() {
        let (j, e) =
            apply_scan(&journey(), TrackingEventType::Delivered, at(2026, 3, 5)).expect("ok");
        assert_eq!(j.status, LabelStatus::Delivered);
        assert!(e.accepted_by_carrier && e.delivered);
        // The late ACCEPTED scan moves accepted_at earlier but fires nothing again.
        let (j, e) = apply_scan(&j, TrackingEventType::Accepted, at(2026, 3, 2)).expect("ok");
        assert_eq!(j.accepted_at, Some(at(2026, 3, 2)));
        assert_eq!(e, ScanEffects::default());
    }

    #[test]
    fn an_exception_and_a_transit_scan_of_equal_rank_follow_the_carrier_time() {
        let (j, _) =
            apply_scan(&journey(), TrackingEventType::InTransit, at(2026, 3, 3)).expect("ok");
        let (j, _) = apply_scan(&j, TrackingEventType::Exception, at(2026, 3, 4)).expect("ok");
        assert_eq!(j.status, LabelStatus::Exception);
        let (late, _) = apply_scan(&j, TrackingEventType::InTransit, at(2026, 3, 2)).expect("ok");
        assert_eq!(late.status, LabelStatus::Exception);
        let (later, _) = apply_scan(&j, TrackingEventType::InTransit, at(2026, 3, 5)).expect("ok");
        assert_eq!(later.status, LabelStatus::InTransit);
    }

    #[test]
    fn a_voided_label_takes_no_scans_and_only_unused_labels_void() {
        let voided = Journey {
            status: LabelStatus::Voided,
            ..journey()
        };
        assert!(apply_scan(&voided, TrackingEventType::Accepted, at(2026, 3, 2)).is_err());
        assert!(check_void(LabelStatus::Created).is_ok());
        assert!(check_void(LabelStatus::InTransit).is_err());
        assert!(check_inspection(LabelStatus::Delivered).is_ok());
        assert!(check_inspection(LabelStatus::InTransit).is_err());
        assert!(InspectionResult::DamagedAsClaimed.passes());
        assert!(!InspectionResult::WrongOrEmpty.passes());
    }

    #[test]
    fn only_an_item_in_good_condition_or_damaged_as_claimed_passes_inspection() {
        assert!(InspectionResult::Accepted.passes());
        assert!(InspectionResult::DamagedAsClaimed.passes());
        assert!(!InspectionResult::DamagedInTransit.passes());
        assert!(!InspectionResult::WrongOrEmpty.passes());
    }

    proptest! {
        #[test]
        fn scans_in_any_order_end_at_the_furthest_status(order in Just(vec![0usize, 1, 2, 3]).prop_shuffle()) {
            let scans = [
                (TrackingEventType::Accepted, at(2026, 3, 2)),
                (TrackingEventType::InTransit, at(2026, 3, 3)),
                (TrackingEventType::OutForDelivery, at(2026, 3, 4)),
                (TrackingEventType::Delivered, at(2026, 3, 5)),
            ];
            let mut j = journey();
            let mut accepted = 0;
            let mut delivered = 0;
            for i in order {
                let (next, e) = apply_scan(&j, scans[i].0, scans[i].1).expect("ok");
                accepted += usize::from(e.accepted_by_carrier);
                delivered += usize::from(e.delivered);
                j = next;
            }
            prop_assert_eq!(j.status, LabelStatus::Delivered);
            prop_assert_eq!(j.accepted_at, Some(at(2026, 3, 2)));
            prop_assert_eq!((accepted, delivered), (1, 1));
        }
    }

    #[test]
    fn pickup_windows_must_be_future_ordered_and_bounded() {
        let now = at(2026, 3, 2);
        assert!(
            check_pickup_window(
                now + Duration::hours(20),
                now + Duration::hours(24),
                now,
                12
            )
            .is_ok()
        );
        assert!(
            check_pickup_window(now + Duration::hours(5), now + Duration::hours(4), now, 12)
                .is_err()
        );
        assert!(
            check_pickup_window(now - Duration::hours(1), now + Duration::hours(4), now, 12)
                .is_err()
        );
        assert!(check_pickup_window(now, now + Duration::hours(13), now, 12).is_err());
    }

    #[test]
    fn haversine_gives_the_london_paris_distance() {
        // London (51.5074, -0.1278) to Paris (48.8566, 2.3522): about 343.5 km.
        let d = haversine_meters(51.5074, -0.1278, 48.8566, 2.3522);
        assert!((d - 343_500.0).abs() < 1_500.0, "{d}");
        assert_eq!(haversine_meters(10.0, 20.0, 10.0, 20.0), 0.0);
    }
}
