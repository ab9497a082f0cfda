//! The append-only history of a dispute and the payloads it carries, among them the side
//! effects (`ReturnAuthorised`, `RefundRequested`, `ReturnShipByExpired`) that the disputes
//! service turns into outbox messages in the same transaction as the new state.

use serde::{Deserialize, Serialize};

use super::evidence::Evidence;
use super::parties::Actor;
use super::record::{Message, Offer, Outcome};
use super::vocabulary::{DisputeState, EventType, RefundRelease, ReturnEventType};
use crate::dispute::PostagePayer;
use crate::ids::EventId;
use crate::money::Money;
use crate::time::Timestamp;

/// Return progress from the labels service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnUpdate {
    pub label_id: String,
    pub kind: ReturnEventType,
    pub tracking_number: String,
    pub notes: String,
    /// The label's postage (label created); deducted from the refund when the buyer pays.
    pub postage: Option<Money>,
}

/// A refund the dispute asks the refunds service for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub amount: Money,
    pub release: RefundRelease,
}

/// A return the dispute authorises at the labels service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnAuthorisation {
    pub postage_payer: PostagePayer,
    pub ship_by: Timestamp,
    pub free_return: bool,
    pub item_value: Money,
}

/// The return was not shipped by its deadline: the refunds service is told so, because the
/// refund requested at authorisation waits for an inspection that will never happen and
/// would otherwise be held forever; refunds cancels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnNotShipped {
    /// The deadline that passed; also when the return counts as not shipped.
    pub ship_by: Timestamp,
}

/// What a history entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventPayload {
    None,
    Offer(Offer),
    Evidence(Evidence),
    Message(Message),
    Outcome(Outcome),
    ReturnUpdate(ReturnUpdate),
    Refund(RefundRequest),
    ReturnAuthorisation(ReturnAuthorisation),
    ReturnNotShipped(ReturnNotShipped),
}

/// One entry of the append-only history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeEvent {
    pub id: EventId,
    pub kind: EventType,
    pub actor: Actor,
    pub at: Timestamp,
    /// `None` for the opening entry.
    pub from: Option<DisputeState>,
    pub to: DisputeState,
    pub note: String,
    pub payload: EventPayload,
}
