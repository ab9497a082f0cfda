//! The one mapping from failures to `tonic::Status` (docs/errors.md).
//!
//! Handlers return `Result<_, ApiError>`; `From<ApiError> for Status` decides the gRPC code,
//! attaches `google.rpc.BadRequest` field violations for invalid input, `google.rpc.ErrorInfo`
//! (the rule's stable name as `reason`) for refusals, and `google.rpc.RetryInfo` when waiting
//! can cure the failure, and keeps internal causes out of the response (they go to the log
//! with the full chain instead).
//!
//! `RetryInfo` is the typed line between "not yet" and "never" that the outbox relay reads:
//! a delivery refused with it is retried later; a refusal without it is final and the
//! message becomes a dead letter for an operator.

use std::collections::HashMap;
use std::time::Duration;

use returns_domain::error::DomainError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One violated field of a request: which field, and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

/// Every way an RPC can fail, named by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; retrying it unchanged cannot succeed.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The thing named does not exist, or the caller may not know that it does.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A duplicate: an idempotency key reused with another body, or a unique fact recorded twice.
    #[error("{0}")]
    AlreadyExists(String),
    /// A business rule or the current state forbids the action; the message names the rule.
    #[error("{rule}: {detail}")]
    FailedPrecondition { rule: String, detail: String },
    /// Two writers raced; the loser is told so and may retry after re-reading.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Too much at once (size limits, quotas the caller can wait out).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Not yet: something this call needs is not in place, and will be; retry after `after`.
    #[error("{rule}: {detail}")]
    RetryLater {
        rule: String,
        detail: String,
        after: Duration,
    },
    /// A feature this deployment does not offer.
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else: the caller sees an opaque message, the log sees the cause chain.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A single-field `INVALID_ARGUMENT`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            reason: reason.into(),
        }])
    }

    /// A `FAILED_PRECONDITION` naming the rule that refused the action.
    pub fn precondition(rule: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::FailedPrecondition {
            rule: rule.into(),
            detail: detail.into(),
        }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            what,
            id: id.into(),
        }
    }

    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(error))
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::RetryLater { .. } => Code::Unavailable,
            ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

/// The full `source()` chain of an error, for the log line of an INTERNAL status.
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error {
            ApiError::InvalidArgument(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.reason);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause_chain(cause.as_ref()), "internal error");
                Status::internal("internal error; the server log has the cause")
            }
            ApiError::FailedPrecondition { ref rule, .. } => {
                let details =
                    ErrorDetails::with_error_info(reason_of(rule), DOMAIN, HashMap::new());
                Status::with_error_details(error.code(), error.to_string(), details)
            }
            ApiError::AlreadyExists(_) => {
                let details =
                    ErrorDetails::with_error_info("ALREADY_EXISTS", DOMAIN, HashMap::new());
                Status::with_error_details(error.code(), error.to_string(), details)
            }
            ApiError::RetryLater {
                ref rule, after, ..
            } => {
                let mut details = ErrorDetails::with_retry_info(Some(after));
                details.set_error_info(reason_of(rule), DOMAIN, HashMap::new());
                Status::with_error_details(error.code(), error.to_string(), details)
            }
            ApiError::ResourceExhausted(_) | ApiError::Aborted(_) => {
                let details = ErrorDetails::with_retry_info(Some(SHORT_RETRY));
                Status::with_error_details(error.code(), error.to_string(), details)
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// `ErrorInfo.domain` of every error the suite returns.
pub const DOMAIN: &str = "returns";

/// What a caller should wait before retrying an overload or a lost race.
const SHORT_RETRY: Duration = Duration::from_millis(200);

/// The `ErrorInfo.reason` of a rule: its stable name in UPPER_SNAKE_CASE
/// (`capture_required` -> `CAPTURE_REQUIRED`).
pub fn reason_of(rule: &str) -> String {
    rule.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl From<returns_proto::convert::FieldError> for ApiError {
    fn from(error: returns_proto::convert::FieldError) -> Self {
        ApiError::invalid(error.field, error.reason)
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Validation { field, reason } => ApiError::invalid(field, reason),
            DomainError::RuleViolated { rule, detail } => ApiError::precondition(rule, detail),
            DomainError::IllegalTransition {
                from,
                action,
                allowed,
            } => ApiError::precondition(
                "state",
                format!(
                    "cannot {action} while the state is {from}; allowed in: {}",
                    allowed.join(", ")
                ),
            ),
            other => ApiError::invalid("request", other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error
            && db.is_unique_violation()
        {
            return ApiError::AlreadyExists(format!("duplicate: {}", db.message()));
        }
        if let sqlx::Error::PoolTimedOut = error {
            return ApiError::ResourceExhausted(
                "the database is busy; retry with backoff".to_string(),
            );
        }
        ApiError::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_field_violations() {
        let status: Status = ApiError::InvalidArgument(vec![
            FieldViolation {
                field: "amount.currency_code".into(),
                reason: "must be three letters".into(),
            },
            FieldViolation {
                field: "order_id".into(),
                reason: "is required".into(),
            },
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest details attached");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["amount.currency_code", "order_id"]);
        assert!(status.message().contains("must be three letters"));
    }

    #[test]
    fn internal_errors_hide_their_cause_from_the_caller() {
        let cause = std::io::Error::other("disk on fire at /var/secret");
        let status: Status = ApiError::internal(cause).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn failed_precondition_names_the_rule() {
        let status: Status =
            ApiError::precondition("protection_window", "closed on 2026-01-02").into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "protection_window: closed on 2026-01-02");
        let info = status.get_details_error_info().expect("ErrorInfo attached");
        assert_eq!(info.reason, "PROTECTION_WINDOW");
        assert_eq!(info.domain, DOMAIN);
        assert!(
            status.get_details_retry_info().is_none(),
            "a broken rule is final, not retry-later"
        );
    }

    #[test]
    fn retry_later_carries_retry_info_with_its_delay() {
        let status: Status = ApiError::RetryLater {
            rule: "capture_required".into(),
            detail: "no capture yet".into(),
            after: Duration::from_secs(5),
        }
        .into();
        assert_eq!(status.code(), Code::Unavailable);
        let retry = status.get_details_retry_info().expect("RetryInfo attached");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(5)));
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason),
            Some("CAPTURE_REQUIRED".to_string())
        );
    }
}
