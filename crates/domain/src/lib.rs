//! The pure rules of the returns suite: money, ids, policy, clocks, calendars and vocabulary.
//!
//! This crate does no I/O and knows nothing of the wire: no tonic, prost, sqlx or tokio
//! (docs/architecture.md, "Crates and what each may import"). Services validate input at the
//! edge into these types and hand them to pure functions; `crates/proto` converts between
//! these and the protobuf types. Every rule, with its number, is listed in docs/domain.md.

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod macros;

pub mod calendar;
pub mod carrier;
pub mod dispute;
pub mod error;
pub mod ids;
pub mod money;
pub mod negotiation;
pub mod policy;
pub mod refund;
pub mod returns;
pub mod time;

pub use calendar::{BusinessCalendar, BusinessDayRange};
pub use carrier::{CarrierClass, ShippingCarrier};
pub use dispute::{
    BuyerTier, DisputeKind, DisputeReason, PaymentMethod, PostagePayer, ResolutionType, Role,
    RulingOutcome,
};
pub use error::DomainError;
pub use ids::{
    DisputeId, EventId, EvidenceId, LabelId, LedgerEntryId, MessageId, OfferId, OrderId, PartyId,
    RefundId, RequestId,
};
pub use macros::Vocabulary;
pub use money::{CurrencyCode, FxTable, Money, MoneyError};
pub use policy::{Policy, PolicyError};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, from_unix_micros, to_unix_micros};
