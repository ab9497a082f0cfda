//! The one set of conversions between wire types and domain types, used by every service:
//! money, ids, vocabularies (enums), timestamps and bounded text. A wire value is checked
//! here once and the rest of the code sees only domain types; every refusal is one shape,
//! [`FieldError`], naming the request field (the platform turns it into INVALID_ARGUMENT
//! with a `google.rpc.BadRequest` field violation).
//!
//! Field names are passed in by the caller because the same message appears under different
//! fields (`total`, `deductions[2].amount`); nested parts are appended here
//! (`total.currency_code`), so a client can point at exactly what to fix.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use returns_domain::Vocabulary;
use returns_domain::error::DomainError;
use returns_domain::ids::{MAX_EXTERNAL_ID_LEN, RequestId};
use returns_domain::money::{CurrencyCode, FxTable, Money};
use returns_domain::time::{Timestamp, from_unix_micros, truncate_to_micros};

use crate::common::v1 as common;

/// A request field that cannot be used, and why: the one error shape of the wire layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The request field, as a path (`deductions[1].amount.minor_units`).
    pub field: String,
    /// What is wrong with it, phrased to follow the field name ("is required").
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A field that must be set and is not.
    pub fn required(field: impl Into<String>) -> Self {
        FieldError::new(field, "is required")
    }

    /// The same error about `field`: domain parsers name their own default field, the wire
    /// layer knows the real one.
    fn renamed(error: DomainError, field: &str) -> Self {
        match error {
            DomainError::Validation { reason, .. } => FieldError::new(field, reason),
            other => FieldError::new(field, other.to_string()),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for DomainError {
    fn from(error: FieldError) -> Self {
        DomainError::validation(error.field, error.reason)
    }
}

/// `field.part`, for errors about a part of a message.
fn nested(field: &str, part: &str) -> String {
    if field.is_empty() {
        part.to_owned()
    } else {
        format!("{field}.{part}")
    }
}

// ---- money ----------------------------------------------------------------------------------

impl From<Money> for common::Money {
    fn from(money: Money) -> Self {
        common::Money {
            currency_code: money.currency.to_string(),
            minor_units: money.minor_units,
        }
    }
}

impl From<&Money> for common::Money {
    fn from(money: &Money) -> Self {
        common::Money::from(*money)
    }
}

/// A currency code: an active ISO 4217 code.
pub fn currency(field: &str, code: &str) -> Result<CurrencyCode, FieldError> {
    CurrencyCode::parse(code).map_err(|e| FieldError::new(field, e.to_string()))
}

/// A required amount, zero or more.
pub fn money(field: &str, money: Option<&common::Money>) -> Result<Money, FieldError> {
    let money = money.ok_or_else(|| FieldError::required(field))?;
    let currency = currency(&nested(field, "currency_code"), &money.currency_code)?;
    if money.minor_units < 0 {
        return Err(FieldError::new(
            nested(field, "minor_units"),
            "must not be negative",
        ));
    }
    Ok(Money::new(currency, money.minor_units))
}

/// A required amount above zero.
pub fn positive_money(field: &str, value: Option<&common::Money>) -> Result<Money, FieldError> {
    let amount = money(field, value)?;
    if !amount.is_positive() {
        return Err(FieldError::new(
            nested(field, "minor_units"),
            "must be positive",
        ));
    }
    Ok(amount)
}

/// An optional amount (zero or more) when set.
pub fn optional_money(
    field: &str,
    value: Option<&common::Money>,
) -> Result<Option<Money>, FieldError> {
    value.map(|m| money(field, Some(m))).transpose()
}

/// A positive amount in a currency the suite can compare in USD. The suite's thresholds
/// (contested returns above USD 50, fast-refund limits) are in USD, so an order or capture in
/// a currency without an exchange rate would fail later, in front of the buyer: it is refused
/// at the door instead.
pub fn priced_money(
    field: &str,
    value: Option<&common::Money>,
    fx: &FxTable,
) -> Result<Money, FieldError> {
    let amount = positive_money(field, value)?;
    if fx.to_usd_minor(&amount).is_err() {
        return Err(FieldError::new(
            nested(field, "currency_code"),
            format!(
                "{} has no exchange rate configured, so the suite cannot apply its USD thresholds",
                amount.currency
            ),
        ));
    }
    Ok(amount)
}

// ---- ids and text ---------------------------------------------------------------------------

/// A domain id (uuid ids, external ids): required and well-formed.
pub fn id<T>(field: &str, text: &str) -> Result<T, FieldError>
where
    T: FromStr<Err = DomainError>,
{
    if text.is_empty() {
        return Err(FieldError::required(field));
    }
    text.parse().map_err(|e| FieldError::renamed(e, field))
}

/// An optional domain id: `None` when empty.
pub fn optional_id<T>(field: &str, text: &str) -> Result<Option<T>, FieldError>
where
    T: FromStr<Err = DomainError>,
{
    if text.is_empty() {
        Ok(None)
    } else {
        id(field, text).map(Some)
    }
}

/// The idempotency key of a mutating call.
pub fn request_id(text: &str) -> Result<RequestId, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(
            "request_id",
            "is required (the idempotency key of a mutating call)",
        ));
    }
    id("request_id", text)
}

/// An id of another system kept as text (buyer, seller, carrier reference): required, at most
/// [`MAX_EXTERNAL_ID_LEN`] printable ASCII characters.
pub fn external_id(field: &str, text: &str) -> Result<String, FieldError> {
    if text.is_empty() {
        return Err(FieldError::required(field));
    }
    optional_external_id(field, text)
}

/// Like [`external_id`], but empty is allowed (and returned as empty).
pub fn optional_external_id(field: &str, text: &str) -> Result<String, FieldError> {
    if text.len() > MAX_EXTERNAL_ID_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            field,
            format!(
                "must be at most {MAX_EXTERNAL_ID_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(text.to_owned())
}

/// Free text of at most `max` characters (rows and logs stay small).
pub fn text(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Required text: not blank after trimming, at most `max` characters; returned trimmed.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldError::required(field));
    }
    text(field, value, max)
}

// ---- vocabularies ---------------------------------------------------------------------------

/// A domain vocabulary with its protobuf enum. The protobuf value for a domain value is the
/// enum's prefix followed by the domain code in upper case (`REFUND_STATUS_` + `SUCCEEDED`);
/// value 0 is always `..._UNSPECIFIED`. Implemented with [`wire_enum!`].
pub trait WireEnum: Vocabulary {
    /// The protobuf enum's value-name prefix, with its trailing `_`.
    const PREFIX: &'static str;

    /// The protobuf name of a wire number, if the number is defined.
    fn wire_name(value: i32) -> Option<&'static str>;

    /// The wire number of a protobuf name, if the name is defined.
    fn wire_number(name: &str) -> Option<i32>;

    /// This value on the wire (0 if the contract lacks it, which a test of every
    /// vocabulary rules out).
    fn to_wire(self) -> i32 {
        Self::wire_number(&format!(
            "{}{}",
            Self::PREFIX,
            self.code().to_ascii_uppercase()
        ))
        .unwrap_or(0)
    }
}

/// Implements [`WireEnum`] for a domain vocabulary and its generated protobuf enum:
/// `wire_enum!(RefundStatus => refunds::RefundStatus, "REFUND_STATUS_");`
#[macro_export]
macro_rules! wire_enum {
    ($domain:ty => $wire:ty, $prefix:literal) => {
        impl $crate::convert::WireEnum for $domain {
            const PREFIX: &'static str = $prefix;

            fn wire_name(value: i32) -> Option<&'static str> {
                <$wire>::try_from(value).ok().map(|wire| wire.as_str_name())
            }

            fn wire_number(name: &str) -> Option<i32> {
                <$wire>::from_str_name(name).map(|wire| wire as i32)
            }
        }
    };
}

/// A required vocabulary value: UNSPECIFIED and unknown numbers are refused.
pub fn enum_value<E: WireEnum>(field: &str, value: i32) -> Result<E, FieldError> {
    optional_enum_value(field, value)?
        .ok_or_else(|| FieldError::new(field, "is required (UNSPECIFIED is not a value)"))
}

/// An optional vocabulary value (a filter, say): UNSPECIFIED is `None`.
pub fn optional_enum_value<E: WireEnum>(field: &str, value: i32) -> Result<Option<E>, FieldError> {
    let name = E::wire_name(value)
        .ok_or_else(|| FieldError::new(field, format!("unknown value {value}")))?;
    let code = name.strip_prefix(E::PREFIX).unwrap_or(name);
    if code == "UNSPECIFIED" {
        return Ok(None);
    }
    E::parse(code)
        .map(Some)
        .map_err(|_| FieldError::new(field, format!("unsupported value {name}")))
}

/// Checks that every value of a vocabulary has a protobuf value and comes back from it: run
/// by each service's tests for every vocabulary it maps, so a value added on one side only
/// fails a test rather than reading as UNSPECIFIED.
pub fn check_round_trip<E: WireEnum + PartialEq + fmt::Debug>() -> Result<(), String> {
    for value in E::ALL {
        let wire = value.to_wire();
        if wire == 0 {
            return Err(format!(
                "{value:?} has no protobuf value {}{}",
                E::PREFIX,
                value.code().to_ascii_uppercase()
            ));
        }
        match optional_enum_value::<E>("field", wire) {
            Ok(Some(back)) if back == *value => {}
            other => return Err(format!("{value:?} came back from the wire as {other:?}")),
        }
    }
    Ok(())
}

// ---- time -----------------------------------------------------------------------------------

/// A domain instant as a protobuf `Timestamp`.
pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// An instant stored as unix microseconds, for responses.
pub fn micros_to_proto(micros: i64) -> Option<prost_types::Timestamp> {
    from_unix_micros(micros).map(timestamp_to_proto)
}

/// A chrono duration as a protobuf `Duration`.
pub fn duration_to_proto(duration: chrono::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.num_seconds(),
        nanos: duration.subsec_nanos(),
    }
}

/// A protobuf `Timestamp` as a domain instant; `None` when out of chrono's range or the
/// nanos are not normalised.
pub fn timestamp_from_proto(at: &prost_types::Timestamp) -> Option<Timestamp> {
    let nanos = u32::try_from(at.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(at.seconds, nanos)
}

/// An optional timestamp field, truncated to the microsecond the databases keep.
pub fn optional_timestamp(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Option<Timestamp>, FieldError> {
    at.map(|at| {
        timestamp_from_proto(at)
            .map(truncate_to_micros)
            .ok_or_else(|| FieldError::new(field, "is not a valid timestamp"))
    })
    .transpose()
}

/// A required timestamp field.
pub fn timestamp(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Timestamp, FieldError> {
    optional_timestamp(field, at)?.ok_or_else(|| FieldError::required(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_domain::DisputeId;
    use returns_domain::refund::RefundStatus;

    fn wire_money(code: &str, minor_units: i64) -> common::Money {
        common::Money {
            currency_code: code.to_owned(),
            minor_units,
        }
    }

    #[test]
    fn timestamps_round_trip_and_bad_nanos_are_refused() {
        let at = DateTime::<Utc>::from_timestamp(1_780_000_000, 123_000).expect("in range");
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(at)), Some(at));
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            optional_timestamp("at", Some(&bad)),
            Err(FieldError::new("at", "is not a valid timestamp"))
        );
        assert_eq!(timestamp("at", None), Err(FieldError::required("at")));
    }

    #[test]
    fn money_errors_name_the_part_of_the_field_that_is_wrong() {
        assert_eq!(money("total", None), Err(FieldError::required("total")));
        assert_eq!(
            money("total", Some(&wire_money("usd", 5))).map_err(|e| e.field),
            Err("total.currency_code".to_owned())
        );
        assert_eq!(
            money("total", Some(&wire_money("USD", -1))),
            Err(FieldError::new("total.minor_units", "must not be negative"))
        );
        assert_eq!(
            positive_money("amount", Some(&wire_money("USD", 0))),
            Err(FieldError::new("amount.minor_units", "must be positive"))
        );
        let five = money("total", Some(&wire_money("EUR", 5))).expect("valid");
        assert_eq!(common::Money::from(five), wire_money("EUR", 5));
    }

    #[test]
    fn priced_money_refuses_a_currency_without_an_exchange_rate() {
        let fx = FxTable::default();
        assert!(priced_money("total", Some(&wire_money("USD", 100)), &fx).is_ok());
        let error = priced_money("total", Some(&wire_money("XOF", 100)), &fx)
            .expect_err("no XOF rate in the default table");
        assert_eq!(error.field, "total.currency_code");
        assert!(error.reason.contains("no exchange rate"), "{error}");
    }

    #[test]
    fn ids_are_required_well_formed_and_renamed_to_the_request_field() {
        assert_eq!(
            id::<DisputeId>("dispute_id", ""),
            Err(FieldError::required("dispute_id"))
        );
        let error = id::<DisputeId>("dispute_id", "not-a-uuid").expect_err("malformed");
        assert_eq!(error.field, "dispute_id");
        let fresh = DisputeId::new();
        assert_eq!(id::<DisputeId>("dispute_id", &fresh.to_string()), Ok(fresh));
        assert_eq!(optional_id::<DisputeId>("dispute_id", ""), Ok(None));
        assert!(external_id("buyer_id", "has space").is_err());
        assert_eq!(external_id("buyer_id", "b-1"), Ok("b-1".to_owned()));
        assert!(request_id("").is_err());
    }

    #[test]
    fn vocabularies_round_trip_and_unspecified_is_required_or_none() {
        check_round_trip::<RefundStatus>().expect("every status is on the wire");
        assert_eq!(
            enum_value::<RefundStatus>("status", 0).map_err(|e| e.field),
            Err("status".to_owned())
        );
        assert_eq!(optional_enum_value::<RefundStatus>("status", 0), Ok(None));
        assert!(optional_enum_value::<RefundStatus>("status", 999).is_err());
        let succeeded = RefundStatus::Succeeded.to_wire();
        assert_eq!(
            enum_value::<RefundStatus>("status", succeeded),
            Ok(RefundStatus::Succeeded)
        );
    }

    #[test]
    fn text_is_bounded_and_required_text_is_trimmed() {
        assert!(text("note", "abc", 2).is_err());
        assert_eq!(required_text("name", "  Ann ", 10), Ok("Ann".to_owned()));
        assert_eq!(
            required_text("name", "   ", 10),
            Err(FieldError::required("name"))
        );
    }
}
