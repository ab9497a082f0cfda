//! The service's tables, and the only place its SQL lives: captures, refunds, refund requests
//! awaiting their capture, chargebacks, return events and the ledger, one file per group.
//!
//! Rows are read with explicit column lists into `sqlx::FromRow` records whose ids are domain
//! ids and whose instants are unix microseconds; the columns a record cannot type by itself
//! (money as currency plus minor units, vocabulary codes, JSON deductions) are converted once,
//! here, so a bad stored value is an internal error, never a panic or a misread. Every write
//! takes the caller's open transaction so a handler's changes commit together or not at all.
//!
//! The settlement worker (`crate::settlement`) still holds its claim, lease and attempt
//! statements itself; it reads and writes refunds through this module.

mod awaiting;
mod captures;
mod chargebacks;
mod ledger;
mod refunds;
mod returns;
pub mod settlement;

pub use awaiting::{
    AwaitingCapture, awaiting_capture, keep_awaiting_capture, resolve_awaiting_capture,
    was_kept_for_capture,
};
pub use captures::{CaptureRow, balance_of, capture_balance, insert_capture, lock_capture};
pub use chargebacks::{ChargebackRow, chargeback_exists, insert_chargeback};
pub use ledger::{ReportRow, append_ledger, day_of, report_rows};
pub use refunds::{
    RefundFilter, RefundPage, RefundRow, get_refund, insert_refund, list_refunds,
    lock_gated_refunds, lock_order_refunds, lock_refund, refund_by_message, save_refund,
};
pub use returns::{
    RefundContext, ReturnEvent, ReturnReports, record_return_event, refund_context, return_reports,
};

/// A withheld amount, stored as JSON in the `deductions` columns.
pub use returns_domain::refund::Deduction;

use returns_domain::Vocabulary;
use returns_platform::ApiError;

/// A vocabulary value read back from its stored code.
fn stored_code<E: Vocabulary>(code: &str) -> Result<E, ApiError> {
    E::parse(code).map_err(ApiError::internal)
}

/// Deductions as stored: a JSON array.
fn deductions_json(deductions: &[Deduction]) -> Result<String, ApiError> {
    serde_json::to_string(deductions).map_err(ApiError::internal)
}

/// Deductions read back from their JSON column.
fn stored_deductions(json: &str) -> Result<Vec<Deduction>, ApiError> {
    serde_json::from_str(json).map_err(ApiError::internal)
}
