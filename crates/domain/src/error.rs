//! The one error type of the domain crate; the platform maps each variant to a gRPC status.
//!
//! The variants are shaped by how they surface on the wire (docs/errors.md):
//! `Validation` becomes INVALID_ARGUMENT with a field violation, `RuleViolated` and
//! `IllegalTransition` become FAILED_PRECONDITION, and the wrapped money and policy errors
//! keep their own detail so a caller can tell a currency mismatch from an overflow.

use crate::money::MoneyError;
use crate::policy::PolicyError;

/// Everything a pure domain function can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// An input is malformed on its own (empty id, unknown code, amount above what was paid).
    /// `field` names the request field so the edge can build a `google.rpc.BadRequest`;
    /// it is a `String` because nested paths such as `requested_resolution.amount` are built
    /// at run time.
    #[error("invalid {field}: {reason}")]
    Validation { field: String, reason: String },

    /// Money arithmetic refused (mixed currencies, overflow, a negative amount).
    #[error(transparent)]
    Money(#[from] MoneyError),

    /// A policy could not be loaded or is inconsistent.
    #[error(transparent)]
    Policy(#[from] PolicyError),

    /// The input is well-formed but a business rule forbids it right now (too early to open a
    /// dispute, over the free-return quota). `rule` is a stable identifier for logs and
    /// clients; `detail` says which dates or amounts were involved.
    #[error("{rule}: {detail}")]
    RuleViolated { rule: &'static str, detail: String },

    /// The action is not possible in the current state. `allowed` lists what would have been
    /// accepted instead (the state machine documents whether these are actions or states), so
    /// the caller can be told both where it is and where it could go.
    #[error("cannot {action} in state {from}; allowed: {}", allowed_list(.allowed))]
    IllegalTransition {
        from: String,
        action: String,
        allowed: Vec<String>,
    },
}

impl DomainError {
    /// Shorthand for a [`DomainError::Validation`].
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`DomainError::RuleViolated`].
    pub fn rule(rule: &'static str, detail: impl Into<String>) -> Self {
        Self::RuleViolated {
            rule,
            detail: detail.into(),
        }
    }

    /// Shorthand for a [`DomainError::IllegalTransition`].
    pub fn illegal_transition<I, S>(
        from: impl Into<String>,
        action: impl Into<String>,
        allowed: I,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::IllegalTransition {
            from: from.into(),
            action: action.into(),
            allowed: allowed.into_iter().map(Into::into).collect(),
        }
    }
}

/// Renders the allowed list so an empty one reads as "nothing" rather than a blank.
fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "nothing (terminal state)".to_owned()
    } else {
        allowed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_illegal_transition_names_the_state_the_action_and_the_alternatives() {
        let err = DomainError::illegal_transition("RESOLVED", "escalate", ["get"]);
        assert_eq!(
            err.to_string(),
            "cannot escalate in state RESOLVED; allowed: get"
        );
        let none = DomainError::illegal_transition("CANCELLED", "accept", Vec::<String>::new());
        assert!(none.to_string().ends_with("nothing (terminal state)"));
    }

    #[test]
    fn a_validation_error_names_its_field() {
        let err = DomainError::validation("order_id", "must not be empty");
        assert_eq!(err.to_string(), "invalid order_id: must not be empty");
    }
}
