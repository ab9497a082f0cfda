//! Storage of the disputes service: every SQL statement the service runs, one file per table
//! group, with typed rows (`sqlx::FromRow`, explicit column lists) converted to domain types
//! here. A change of a dispute, its history, its deadline and the outbox messages it causes are
//! one batch of writes (`returns_platform::write_batch`) in the caller's transaction, so they
//! commit together and cost one statement.
//!
//! The domain types travel as versioned JSON documents ([`document`]) next to the plain
//! columns queries filter, sort and lock on (docs/persistence.md says why).

pub mod deadlines;
pub mod disputes;
pub mod document;
pub mod events;
pub mod messages;
pub mod orders;

pub use deadlines::{DueDeadline, claim_deadline, due_deadlines};
pub use disputes::{
    ListFilter, OrderForOpening, list_cursor, list_disputes, load_dispute, load_dispute_with_order,
    load_order_with_disputes, read_order_for_opening, update_order_if_unchanged, write_opening,
    write_transition,
};
pub use events::{StoredEvent, event_cursor, list_events};
pub use messages::enqueue_refund;
pub use orders::{OrderRecord, load_order, update_order, upsert_order};

use returns_domain::time::{Timestamp, from_unix_micros};
use returns_platform::ApiError;

/// An instant column (microseconds since the epoch) as a timestamp; out of range only when
/// the row is corrupt.
fn instant(column: &str, micros: i64) -> Result<Timestamp, ApiError> {
    from_unix_micros(micros).ok_or_else(|| {
        ApiError::internal(std::io::Error::other(format!(
            "{column} out of range: {micros}"
        )))
    })
}

#[cfg(test)]
mod tests;
