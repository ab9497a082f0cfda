//! The dispute life-cycle as pure functions: eligibility, transitions, deadlines and the ruling recommendation.
//!
//! The disputes service loads rows, calls these functions and writes what they return in one
//! transaction; nothing here does I/O or reads a clock (`now` is always a parameter), so every
//! rule from "Order facts" to "Platform review" in docs/domain.md can be tested without a
//! database.
//!
//! Shape of the state machine (`apply`):
//!
//! ```text
//!  OPEN ──seller counters/rejects──▶ NEGOTIATING ──buyer escalates──▶ ESCALATED
//!   │ accept / seller silent            │ accept                       │ ruling
//!   ▼                                   ▼                              ▼
//!  RESOLVED ◀──────── (refund or replacement) ──────────── AWAITING_RETURN (return required)
//!                                                    inspection passed │ ▲ inspection failed → ESCALATED
//!  OPEN / NEGOTIATING / ESCALATED ──buyer withdraws──▶ CANCELLED
//! ```
//!
//! Side effects are events too: `ReturnAuthorised`, `RefundRequested` and a
//! `ReturnShipByExpired` carrying [`ReturnNotShipped`] become outbox messages in the service,
//! written in the same transaction as the new state.
//!
//! One file per concern; everything public is re-exported here, so callers name it
//! `returns_domain::negotiation::X` whatever file it lives in:
//!
//! | file | concern |
//! |---|---|
//! | `vocabulary` | states, offer and outcome kinds, evidence kinds, return progress, deadlines, history entry types |
//! | `record`, `events` | the dispute as stored; its history and the side effects it carries |
//! | `parties`, `text`, `resolution` | who acts and on which side; free text; resolutions checked against the order total |
//! | `evidence` | accepted files, what each reason needs, the per-dispute limit |
//! | `order`, `window` | order facts and cancellation; the protection window and its clock |
//! | `opening`, `free_return` | opening a dispute; a free return authorised at once |
//! | `commands`, `transition` | the state machine: `apply` and the transition every command builds |
//! | `offers`, `conversation`, `review`, `deadlines`, `return_progress` | one file per command group |
//! | `ruling` | the platform review guidelines as a recommendation |

mod commands;
mod conversation;
mod deadlines;
mod events;
mod evidence;
mod free_return;
mod offers;
mod opening;
mod order;
mod parties;
mod record;
mod resolution;
mod return_progress;
mod review;
mod ruling;
mod text;
mod transition;
mod vocabulary;
mod window;

#[cfg(test)]
mod fixtures;

pub use commands::{Command, Ruling, apply};
pub use events::{
    DisputeEvent, EventPayload, RefundRequest, ReturnAuthorisation, ReturnNotShipped, ReturnUpdate,
};
pub use evidence::{
    EVIDENCE_CONTENT_TYPES, Evidence, MAX_EVIDENCE_BYTES, MAX_EVIDENCE_PER_DISPUTE, NewEvidence,
};
pub use opening::{NewIds, OpenRequest, Opened, OpeningContext, open_dispute};
pub use order::{OrderFacts, check_cancel_order};
pub use parties::Actor;
pub use record::{Dispute, Message, Offer, Outcome};
pub use resolution::Resolution;
pub use ruling::{Recommendation, recommend_ruling};
pub use text::{MAX_TEXT_LEN, fmt_ts, optional_text, required_text};
pub use vocabulary::{
    Awaiting, DeadlineKind, DisputeState, EventType, EvidenceKind, OfferStatus, OutcomeSource,
    RefundRelease, ReturnEventType,
};
pub use window::{ProtectionClock, ProtectionWindow, protection_window, resume_protection};
