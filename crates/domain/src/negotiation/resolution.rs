//! Resolutions asked for and offered (full or partial refund, replacement, return and refund),
//! checked against what the order cost, and the outcome accepting one produces.

use serde::{Deserialize, Serialize};

use crate::dispute::{ResolutionType, RulingOutcome};
use crate::error::DomainError;
use crate::money::Money;

/// A resolution asked for or offered: a type and, for partial refunds, an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub kind: ResolutionType,
    /// The refund amount: required for partial refunds, optional for return-and-refund
    /// (unset means the full total), absent otherwise.
    pub amount: Option<Money>,
}

impl Resolution {
    /// Validates a resolution against the order total; `field` prefixes violation names.
    pub fn parse(
        kind: ResolutionType,
        amount: Option<Money>,
        total: &Money,
        field: &str,
    ) -> Result<Resolution, DomainError> {
        let amount_field = format!("{field}.amount");
        match (kind, amount) {
            (ResolutionType::PartialRefund, None) => {
                return Err(DomainError::validation(
                    amount_field,
                    "is required for a partial refund",
                ));
            }
            (ResolutionType::FullRefund | ResolutionType::Replacement, Some(_)) => {
                return Err(DomainError::validation(
                    amount_field,
                    format!("must be unset for {kind}"),
                ));
            }
            (_, Some(amount)) => check_amount(&amount, total, &amount_field)?,
            _ => {}
        }
        Ok(Resolution { kind, amount })
    }

    /// The outcome accepting this resolution produces: (ruling, amount, return required).
    pub(super) fn as_outcome(&self, total: &Money) -> (RulingOutcome, Option<Money>, bool) {
        match (self.kind, self.amount) {
            (ResolutionType::FullRefund, _) => (RulingOutcome::RefundFull, Some(*total), false),
            (ResolutionType::PartialRefund, amount) => {
                (RulingOutcome::RefundPartial, amount, false)
            }
            (ResolutionType::Replacement, _) => (RulingOutcome::Replacement, None, false),
            (ResolutionType::ReturnAndRefund, Some(amount)) if amount != *total => {
                (RulingOutcome::RefundPartial, Some(amount), true)
            }
            (ResolutionType::ReturnAndRefund, _) => (RulingOutcome::RefundFull, Some(*total), true),
        }
    }
}

/// A positive amount in the order's currency, no larger than what was paid.
pub(super) fn check_amount(amount: &Money, total: &Money, field: &str) -> Result<(), DomainError> {
    if amount.currency != total.currency {
        return Err(DomainError::validation(
            field,
            format!(
                "currency {} does not match the order's {}",
                amount.currency, total.currency
            ),
        ));
    }
    if !amount.is_positive() {
        return Err(DomainError::validation(field, "must be positive"));
    }
    if amount.minor_units > total.minor_units {
        return Err(DomainError::validation(
            field,
            format!("{amount} is more than the {total} paid for the order"),
        ));
    }
    Ok(())
}
