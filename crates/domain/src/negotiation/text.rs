//! Free text and dates as the dispute rules accept and print them.

use crate::error::DomainError;
use crate::time::Timestamp;

/// Longest free text accepted (descriptions, notes, messages, reasons).
pub const MAX_TEXT_LEN: usize = 4000;

/// Non-empty after trimming and at most [`MAX_TEXT_LEN`] characters.
pub fn required_text(field: &str, text: &str) -> Result<String, DomainError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DomainError::validation(field, "is required"));
    }
    optional_text(field, text)
}

/// At most [`MAX_TEXT_LEN`] characters; may be empty.
pub fn optional_text(field: &str, text: &str) -> Result<String, DomainError> {
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(DomainError::validation(
            field,
            format!("must be at most {MAX_TEXT_LEN} characters"),
        ));
    }
    Ok(text.trim().to_owned())
}

/// Dates in messages: RFC 3339 to the second, UTC.
pub fn fmt_ts(at: Timestamp) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
