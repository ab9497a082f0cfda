//! Wire <-> domain conversions for this service: protobuf enums and money are validated
//! here once, so handlers see domain types and bad input becomes INVALID_ARGUMENT naming
//! the field.

use returns_domain::dispute::{BuyerTier, PaymentMethod};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::refund::{
    DeductionKind, RefundReason, RefundStatus, ReleaseCondition, ReturnProgress,
};
use returns_domain::time::Timestamp;
use returns_platform::ApiError;
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;

/// A required money field: present, a valid ISO code, and positive.
pub fn positive_money(field: &str, money: Option<&common::Money>) -> Result<Money, ApiError> {
    let money = money.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    let currency = CurrencyCode::parse(&money.currency_code)
        .map_err(|e| ApiError::invalid(format!("{field}.currency_code"), e.to_string()))?;
    if money.minor_units <= 0 {
        return Err(ApiError::invalid(
            format!("{field}.minor_units"),
            "must be positive",
        ));
    }
    Ok(Money::new(currency, money.minor_units))
}

pub fn money_to_proto(money: Money) -> common::Money {
    common::Money {
        currency_code: money.currency.to_string(),
        minor_units: money.minor_units,
    }
}

pub fn currency(field: &str, code: &str) -> Result<CurrencyCode, ApiError> {
    CurrencyCode::parse(code).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// An optional timestamp field; `None` when unset, INVALID_ARGUMENT when out of range.
pub fn optional_time(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Option<Timestamp>, ApiError> {
    at.map(|at| {
        returns_proto::convert::timestamp_from_proto(at)
            .map(returns_domain::time::truncate_to_micros)
            .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))
    })
    .transpose()
}

pub fn time_to_proto(at: Timestamp) -> prost_types::Timestamp {
    returns_proto::convert::timestamp_to_proto(at)
}

/// An instant stored as unix microseconds, for responses.
pub fn micros_to_proto(micros: i64) -> Option<prost_types::Timestamp> {
    returns_domain::time::from_unix_micros(micros).map(time_to_proto)
}

fn unspecified(field: &str) -> ApiError {
    ApiError::invalid(field, "is required (UNSPECIFIED is not a value)")
}

fn unknown(field: &str, value: i32) -> ApiError {
    ApiError::invalid(field, format!("unknown value {value}"))
}

pub fn payment_method(field: &str, value: i32) -> Result<PaymentMethod, ApiError> {
    match common::PaymentMethod::try_from(value) {
        Ok(common::PaymentMethod::Card) => Ok(PaymentMethod::Card),
        Ok(common::PaymentMethod::Wallet) => Ok(PaymentMethod::Wallet),
        Ok(common::PaymentMethod::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn payment_method_to_proto(method: PaymentMethod) -> i32 {
    match method {
        PaymentMethod::Card => common::PaymentMethod::Card as i32,
        PaymentMethod::Wallet => common::PaymentMethod::Wallet as i32,
    }
}

pub fn buyer_tier(field: &str, value: i32) -> Result<BuyerTier, ApiError> {
    match common::BuyerTier::try_from(value) {
        Ok(common::BuyerTier::Standard) => Ok(BuyerTier::Standard),
        Ok(common::BuyerTier::Gold) => Ok(BuyerTier::Gold),
        Ok(common::BuyerTier::Platinum) => Ok(BuyerTier::Platinum),
        Ok(common::BuyerTier::Diamond) => Ok(BuyerTier::Diamond),
        Ok(common::BuyerTier::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn buyer_tier_to_proto(tier: BuyerTier) -> i32 {
    match tier {
        BuyerTier::Standard => common::BuyerTier::Standard as i32,
        BuyerTier::Gold => common::BuyerTier::Gold as i32,
        BuyerTier::Platinum => common::BuyerTier::Platinum as i32,
        BuyerTier::Diamond => common::BuyerTier::Diamond as i32,
    }
}

pub fn release(field: &str, value: i32) -> Result<ReleaseCondition, ApiError> {
    use pb::ReleaseCondition as P;
    match P::try_from(value) {
        Ok(P::Immediate) => Ok(ReleaseCondition::Immediate),
        Ok(P::OnReturnAcceptedByCarrier) => Ok(ReleaseCondition::OnReturnAcceptedByCarrier),
        Ok(P::OnReturnDelivered) => Ok(ReleaseCondition::OnReturnDelivered),
        Ok(P::OnInspectionPassed) => Ok(ReleaseCondition::OnInspectionPassed),
        Ok(P::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn release_to_proto(release: ReleaseCondition) -> i32 {
    use pb::ReleaseCondition as P;
    (match release {
        ReleaseCondition::Immediate => P::Immediate,
        ReleaseCondition::OnReturnAcceptedByCarrier => P::OnReturnAcceptedByCarrier,
        ReleaseCondition::OnReturnDelivered => P::OnReturnDelivered,
        ReleaseCondition::OnInspectionPassed => P::OnInspectionPassed,
    }) as i32
}

pub fn reason(field: &str, value: i32) -> Result<RefundReason, ApiError> {
    use pb::RefundReason as P;
    match P::try_from(value) {
        Ok(P::DisputeResolved) => Ok(RefundReason::DisputeResolved),
        Ok(P::OrderCancelled) => Ok(RefundReason::OrderCancelled),
        Ok(P::Goodwill) => Ok(RefundReason::Goodwill),
        Ok(P::Other) => Ok(RefundReason::Other),
        Ok(P::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn reason_to_proto(reason: RefundReason) -> i32 {
    use pb::RefundReason as P;
    (match reason {
        RefundReason::DisputeResolved => P::DisputeResolved,
        RefundReason::OrderCancelled => P::OrderCancelled,
        RefundReason::Goodwill => P::Goodwill,
        RefundReason::Other => P::Other,
    }) as i32
}

pub fn progress(field: &str, value: i32) -> Result<ReturnProgress, ApiError> {
    use pb::ReturnProgress as P;
    match P::try_from(value) {
        Ok(P::AcceptedByCarrier) => Ok(ReturnProgress::AcceptedByCarrier),
        Ok(P::Delivered) => Ok(ReturnProgress::Delivered),
        Ok(P::InspectionPassed) => Ok(ReturnProgress::InspectionPassed),
        Ok(P::InspectionFailed) => Ok(ReturnProgress::InspectionFailed),
        Ok(P::LabelCreated) => Ok(ReturnProgress::LabelCreated),
        Ok(P::NotShipped) => Ok(ReturnProgress::NotShipped),
        Ok(P::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn deduction_kind(field: &str, value: i32) -> Result<DeductionKind, ApiError> {
    use pb::DeductionKind as P;
    match P::try_from(value) {
        Ok(P::ReturnPostage) => Ok(DeductionKind::ReturnPostage),
        Ok(P::Other) => Ok(DeductionKind::Other),
        Ok(P::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(unknown(field, value)),
    }
}

pub fn deduction_kind_to_proto(kind: DeductionKind) -> i32 {
    use pb::DeductionKind as P;
    (match kind {
        DeductionKind::ReturnPostage => P::ReturnPostage,
        DeductionKind::Other => P::Other,
    }) as i32
}

pub fn status_to_proto(status: RefundStatus) -> i32 {
    use pb::RefundStatus as P;
    (match status {
        RefundStatus::Pending => P::Pending,
        RefundStatus::OnHold => P::OnHold,
        RefundStatus::Submitted => P::Submitted,
        RefundStatus::Succeeded => P::Succeeded,
        RefundStatus::Failed => P::Failed,
        RefundStatus::Cancelled => P::Cancelled,
    }) as i32
}

/// A status filter: `None` for UNSPECIFIED ("any").
pub fn status_filter(field: &str, value: i32) -> Result<Option<RefundStatus>, ApiError> {
    use pb::RefundStatus as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Pending) => Ok(Some(RefundStatus::Pending)),
        Ok(P::OnHold) => Ok(Some(RefundStatus::OnHold)),
        Ok(P::Submitted) => Ok(Some(RefundStatus::Submitted)),
        Ok(P::Succeeded) => Ok(Some(RefundStatus::Succeeded)),
        Ok(P::Failed) => Ok(Some(RefundStatus::Failed)),
        Ok(P::Cancelled) => Ok(Some(RefundStatus::Cancelled)),
        Err(_) => Err(unknown(field, value)),
    }
}

/// An external id field (order, buyer, label...): required, validated like the domain ids.
pub fn required_id(field: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    optional_id(field, value)
}

/// An optional external id: empty, or at most 128 printable ASCII characters.
pub fn optional_id(field: &str, value: &str) -> Result<String, ApiError> {
    if value.len() > returns_domain::ids::MAX_EXTERNAL_ID_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(
            field,
            "must be at most 128 printable ASCII characters without spaces",
        ));
    }
    Ok(value.to_string())
}

/// Free text: bounded so rows and logs stay small.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}
