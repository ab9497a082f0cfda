//! The dispute life-cycle as pure functions: eligibility, transitions, deadlines and the ruling recommendation.
//!
//! The disputes service loads rows, calls these functions and writes what they return in one
//! transaction; nothing here does I/O or reads a clock (`now` is always a parameter), so every
//! rule of DOMAIN.md ("Order facts" to "Platform review") can be tested without a database.
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

use chrono::Duration;
use serde::{Deserialize, Serialize};

use crate::carrier::ShippingCarrier;
use crate::dispute::{
    BuyerTier, DisputeKind, DisputeReason, PaymentMethod, PostagePayer, ResolutionType, Role,
    RulingOutcome,
};
use crate::error::DomainError;
use crate::ids::{DisputeId, EventId, EvidenceId, OfferId, OrderId, PartyId};
use crate::macros::code_enum;
use crate::money::{FxTable, Money};
use crate::policy::Policy;
use crate::time::Timestamp;

code_enum! {
    /// Where a dispute is in its life-cycle.
    pub enum DisputeState as "state" {
        /// Opened; awaiting the seller's first answer.
        Open => "OPEN",
        /// The seller answered; offers go back and forth.
        Negotiating => "NEGOTIATING",
        /// Platform review; awaiting the arbiter.
        Escalated => "ESCALATED",
        /// A return was authorised; awaiting shipment, delivery and inspection.
        AwaitingReturn => "AWAITING_RETURN",
        Resolved => "RESOLVED",
        /// Withdrawn by the buyer.
        Cancelled => "CANCELLED",
    }
}

impl DisputeState {
    /// Resolved and cancelled disputes never change again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Resolved | Self::Cancelled)
    }

    /// Active disputes pause the order's protection clock and block a second dispute.
    pub fn is_active(&self) -> bool {
        !self.is_terminal()
    }
}

code_enum! {
    /// Whose turn it is; `respond_by` is that party's deadline.
    pub enum Awaiting as "awaiting" {
        Buyer => "BUYER",
        Seller => "SELLER",
        Arbiter => "ARBITER",
        /// Closed, or waiting on a carrier.
        Nobody => "NONE",
    }
}

code_enum! {
    /// Where an offer stands.
    pub enum OfferStatus as "offer_status" {
        Pending => "PENDING",
        Accepted => "ACCEPTED",
        Rejected => "REJECTED",
        /// Replaced by a later offer before being answered.
        Superseded => "SUPERSEDED",
        /// The dispute moved on (escalation, withdrawal, deadline) without an answer.
        Closed => "CLOSED",
    }
}

code_enum! {
    /// What produced an outcome.
    pub enum OutcomeSource as "outcome_source" {
        OfferAccepted => "OFFER_ACCEPTED",
        SellerSilent => "SELLER_SILENT",
        FreeReturn => "FREE_RETURN",
        Ruling => "RULING",
        ReturnNotShipped => "RETURN_NOT_SHIPPED",
    }
}

code_enum! {
    /// What a piece of evidence shows.
    pub enum EvidenceKind as "evidence.kind" {
        Photo => "PHOTO",
        Video => "VIDEO",
        TrackingScreenshot => "TRACKING_SCREENSHOT",
        Document => "DOCUMENT",
        Other => "OTHER",
    }
}

code_enum! {
    /// Return progress reported by the labels service.
    pub enum ReturnEventType as "type" {
        LabelCreated => "LABEL_CREATED",
        AcceptedByCarrier => "ACCEPTED_BY_CARRIER",
        Delivered => "DELIVERED",
        InspectionAccepted => "INSPECTION_ACCEPTED",
        InspectionDamagedAsClaimed => "INSPECTION_DAMAGED_AS_CLAIMED",
        InspectionDamagedInTransit => "INSPECTION_DAMAGED_IN_TRANSIT",
        InspectionWrongOrEmpty => "INSPECTION_WRONG_OR_EMPTY",
        LabelVoided => "LABEL_VOIDED",
    }
}

code_enum! {
    /// When a requested refund may be paid out.
    pub enum RefundRelease as "release" {
        Immediate => "IMMEDIATE",
        /// After the returned item passes inspection (fast refund may release earlier).
        OnInspectionPassed => "ON_INSPECTION_PASSED",
    }
}

code_enum! {
    /// The deadlines that act by themselves when they fall due.
    pub enum DeadlineKind as "deadline_kind" {
        /// Seller silent past the response window: the buyer's pending request is granted.
        SellerResponse => "SELLER_RESPONSE",
        /// The return was not handed to a carrier in time: closed for the seller.
        ReturnShipBy => "RETURN_SHIP_BY",
    }
}

code_enum! {
    /// The kinds of entries in a dispute's history.
    pub enum EventType as "event_type" {
        Opened => "OPENED",
        EvidenceAdded => "EVIDENCE_ADDED",
        OfferMade => "OFFER_MADE",
        OfferAccepted => "OFFER_ACCEPTED",
        OfferRejected => "OFFER_REJECTED",
        MessageSent => "MESSAGE_SENT",
        Escalated => "ESCALATED",
        Ruled => "RULED",
        Cancelled => "CANCELLED",
        SellerResponseExpired => "SELLER_RESPONSE_EXPIRED",
        ReturnAuthorised => "RETURN_AUTHORISED",
        ReturnUpdated => "RETURN_UPDATED",
        ReturnShipByExpired => "RETURN_SHIP_BY_EXPIRED",
        ReturnInspectionFailed => "RETURN_INSPECTION_FAILED",
        RefundRequested => "REFUND_REQUESTED",
        Resolved => "RESOLVED",
    }
}

/// Content types accepted for evidence: photos, videos and documents.
pub const EVIDENCE_CONTENT_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "application/pdf",
];

/// The largest evidence file accepted (25 MiB): enough for a short phone video.
pub const MAX_EVIDENCE_BYTES: i64 = 25 * 1024 * 1024;

/// Evidence items one dispute may hold: enough for any honest case, and a bound on the size
/// of every response that carries the dispute.
pub const MAX_EVIDENCE_PER_DISPUTE: usize = 50;

/// Longest free text accepted (descriptions, notes, messages, reasons).
pub const MAX_TEXT_LEN: usize = 4000;

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    pub role: Role,
}

impl Actor {
    pub fn new(id: impl Into<String>, role: Role) -> Self {
        Actor {
            id: id.into(),
            role,
        }
    }

    /// The suite itself, for deadlines and relay deliveries.
    pub fn system() -> Self {
        Actor::new("system", Role::Platform)
    }
}

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
    fn as_outcome(&self, total: &Money) -> (RulingOutcome, Option<Money>, bool) {
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
fn check_amount(amount: &Money, total: &Money, field: &str) -> Result<(), DomainError> {
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

/// An offer in the negotiation; number one is the buyer's opening request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub number: u32,
    pub made_by: Actor,
    pub resolution: Resolution,
    pub note: String,
    pub status: OfferStatus,
    pub created_at: Timestamp,
    pub answered_at: Option<Timestamp>,
    pub rejection_reason: String,
}

/// Evidence as supplied by a caller, before the server assigns id, uploader and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvidence {
    pub kind: EvidenceKind,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub uri: String,
    pub file_name: String,
}

impl NewEvidence {
    /// Checks the allow-list, the size limit, the hash shape and the URI; `field` prefixes
    /// the violation (`evidence[0].content_type`).
    pub fn validate(&self, field: &str) -> Result<(), DomainError> {
        let content_type = self.content_type.trim().to_ascii_lowercase();
        if !EVIDENCE_CONTENT_TYPES.contains(&content_type.as_str()) {
            return Err(DomainError::validation(
                format!("{field}.content_type"),
                format!(
                    "{:?} is not accepted; allowed: {}",
                    self.content_type.chars().take(64).collect::<String>(),
                    EVIDENCE_CONTENT_TYPES.join(", ")
                ),
            ));
        }
        if self.size_bytes <= 0 || self.size_bytes > MAX_EVIDENCE_BYTES {
            return Err(DomainError::validation(
                format!("{field}.size_bytes"),
                format!(
                    "must be between 1 and {MAX_EVIDENCE_BYTES} bytes, got {}",
                    self.size_bytes
                ),
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DomainError::validation(
                format!("{field}.sha256"),
                "must be 64 lower-case hex characters",
            ));
        }
        required_text(&format!("{field}.uri"), &self.uri)?;
        if self.uri.len() > 2048 {
            return Err(DomainError::validation(
                format!("{field}.uri"),
                "must be at most 2048 characters",
            ));
        }
        optional_text(&format!("{field}.file_name"), &self.file_name)?;
        Ok(())
    }

    /// The stored form.
    pub fn into_evidence(self, id: EvidenceId, by: Actor, at: Timestamp) -> Evidence {
        Evidence {
            id,
            kind: self.kind,
            content_type: self.content_type.trim().to_ascii_lowercase(),
            size_bytes: self.size_bytes,
            sha256: self.sha256,
            uri: self.uri,
            file_name: self.file_name,
            uploaded_by: by,
            uploaded_at: at,
        }
    }
}

/// A stored piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub id: EvidenceId,
    pub kind: EvidenceKind,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub uri: String,
    pub file_name: String,
    pub uploaded_by: Actor,
    pub uploaded_at: Timestamp,
}

impl Evidence {
    fn is_photo_or_video(&self) -> bool {
        matches!(self.kind, EvidenceKind::Photo | EvidenceKind::Video)
    }
}

/// How a dispute ended (or will end once a required return passes inspection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ruling: RulingOutcome,
    /// The refund; the full total for `RefundFull`, unset when nothing is refunded.
    pub amount: Option<Money>,
    pub return_required: bool,
    pub rationale: String,
    pub decided_by: Actor,
    pub decided_at: Timestamp,
    /// Who pays return postage, when a return is required.
    pub postage_payer: Option<PostagePayer>,
    pub source: OutcomeSource,
    pub accepted_offer: Option<OfferId>,
}

/// A message in a dispute's thread; its id is the id of its history event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: EventId,
    pub author: Actor,
    pub body: String,
    pub evidence_ids: Vec<EvidenceId>,
    pub sent_at: Timestamp,
}

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

/// A dispute between the buyer and seller of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: DisputeId,
    pub order_id: OrderId,
    pub buyer_id: PartyId,
    pub seller_id: PartyId,
    pub kind: DisputeKind,
    pub reason: DisputeReason,
    pub description: String,
    pub requested: Resolution,
    pub state: DisputeState,
    pub awaiting: Awaiting,
    pub respond_by: Option<Timestamp>,
    pub offers: Vec<Offer>,
    pub evidence: Vec<Evidence>,
    pub message_count: u32,
    pub outcome: Option<Outcome>,
    pub order_total: Money,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub escalated_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub return_label_id: Option<String>,
    pub return_shipped: bool,
    pub return_delivered: bool,
    pub return_postage: Option<Money>,
    /// Protection time left on the order when this dispute paused the clock.
    #[serde(with = "duration_micros")]
    pub protection_time_left: Duration,
    pub reopened: bool,
    /// The seller rejected or countered (the ruling guidelines weigh a contest).
    pub seller_contested: bool,
    /// The order's listing offers free returns.
    pub free_return: bool,
    /// What this dispute has asked the refunds service for and may still be paid: the cap of
    /// "never more than paid". A held refund that refunds cancels (failed inspection, return
    /// not shipped) is not money paid, so it is taken off again.
    pub refund_requested: Money,
    /// Optimistic-concurrency version; +1 per transition.
    pub version: i64,
}

impl Dispute {
    /// The offer awaiting an answer, if any (there is at most one).
    pub fn pending_offer(&self) -> Option<&Offer> {
        self.offers
            .iter()
            .find(|o| o.status == OfferStatus::Pending)
    }

    /// The deadline that acts by itself in the current state, if any.
    pub fn deadline(&self) -> Option<(DeadlineKind, Timestamp)> {
        let due = self.respond_by?;
        match (self.state, self.awaiting) {
            (DisputeState::Open | DisputeState::Negotiating, Awaiting::Seller) => {
                Some((DeadlineKind::SellerResponse, due))
            }
            (DisputeState::AwaitingReturn, Awaiting::Buyer) if !self.return_shipped => {
                Some((DeadlineKind::ReturnShipBy, due))
            }
            _ => None,
        }
    }

    /// Whether `actor` is the buyer or seller of this dispute (for visibility checks).
    pub fn is_party(&self, actor: &Actor) -> bool {
        match actor.role {
            Role::Buyer => actor.id == self.buyer_id.as_str(),
            Role::Seller => actor.id == self.seller_id.as_str(),
            _ => false,
        }
    }
}

/// Serialises a `chrono::Duration` as whole microseconds.
mod duration_micros {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.num_microseconds().unwrap_or(i64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::microseconds(i64::deserialize(d)?))
    }
}

// ---------------------------------------------------------------------------------------
// Order facts, cancellation and the protection window.
// ---------------------------------------------------------------------------------------

/// The facts of an order as recorded by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFacts {
    pub order_id: OrderId,
    pub buyer_id: PartyId,
    pub seller_id: PartyId,
    pub total: Money,
    pub payment_method: PaymentMethod,
    pub buyer_tier: BuyerTier,
    pub carrier: ShippingCarrier,
    pub placed_at: Timestamp,
    pub shipped_at: Option<Timestamp>,
    pub promised_ship_by: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub destination_country: String,
    pub free_return: bool,
    pub cancelled_at: Option<Timestamp>,
}

/// The order's protection clock: paused by an open dispute, resumed by a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProtectionClock {
    /// Set while a dispute pauses the clock: the time that was left when it paused.
    #[serde(with = "opt_duration_micros")]
    pub paused_time_left: Option<Duration>,
    /// After a withdrawal: when protection now closes (withdrawal + time left).
    pub resumed_closes_at: Option<Timestamp>,
    /// How many disputes on the order were withdrawn (reopen allowance).
    pub withdrawals: u32,
}

mod opt_duration_micros {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.num_microseconds().unwrap_or(i64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(Duration::microseconds))
    }
}

/// When disputes may be opened on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionWindow {
    pub opens_at: Timestamp,
    /// `None` while a dispute pauses the clock.
    pub closes_at: Option<Timestamp>,
    pub paused_time_left: Option<Duration>,
}

/// The window from shipping (or the promised ship date), the carrier class deadline and the
/// clock's pauses. `None` when the order has neither shipped nor a promised ship date.
pub fn protection_window(
    order: &OrderFacts,
    clock: &ProtectionClock,
    policy: &Policy,
) -> Option<ProtectionWindow> {
    let anchor = order.shipped_at.or(order.promised_ship_by)?;
    let opens_at = anchor + policy.dispute_opens_after();
    let closes_at = match (clock.paused_time_left, clock.resumed_closes_at) {
        (Some(_), _) => None,
        (None, Some(resumed)) => Some(resumed),
        (None, None) => Some(anchor + policy.protection_deadline(order.carrier.class())),
    };
    Some(ProtectionWindow {
        opens_at,
        closes_at,
        paused_time_left: clock.paused_time_left,
    })
}

/// Cancellation before shipment, within the window after purchase.
pub fn check_cancel_order(
    order: &OrderFacts,
    now: Timestamp,
    policy: &Policy,
) -> Result<(), DomainError> {
    if let Some(at) = order.cancelled_at {
        return Err(DomainError::rule(
            "order_already_cancelled",
            format!("order {} was cancelled at {}", order.order_id, fmt_ts(at)),
        ));
    }
    if let Some(at) = order.shipped_at {
        return Err(DomainError::rule(
            "order_already_shipped",
            format!(
                "order {} shipped at {}; cancellation is only possible before shipment — open a dispute instead",
                order.order_id,
                fmt_ts(at)
            ),
        ));
    }
    let closes = order.placed_at + policy.cancellation_window();
    if now > closes {
        return Err(DomainError::rule(
            "cancellation_window_closed",
            format!(
                "order placed at {} could be cancelled until {} ({} days); now is {}",
                fmt_ts(order.placed_at),
                fmt_ts(closes),
                policy.cancellation.window_days,
                fmt_ts(now)
            ),
        ));
    }
    Ok(())
}

/// What the buyer asks for when opening a dispute, as received (validated by `open_dispute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub kind: DisputeKind,
    pub reason: DisputeReason,
    pub resolution_type: ResolutionType,
    pub amount: Option<Money>,
    pub description: String,
    pub evidence: Vec<NewEvidence>,
}

/// What the store knows about the order's other disputes and the buyer's free returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpeningContext {
    /// An active dispute on the same order, if any.
    pub active_dispute: Option<(DisputeId, DisputeState)>,
    /// Whether a dispute on the order already ended with an outcome.
    pub resolved_before: bool,
    /// Free returns this buyer was authorised this calendar month.
    pub free_returns_this_month: u32,
}

/// The ids the service mints for a new dispute (the domain stays deterministic).
#[derive(Debug, Clone)]
pub struct NewIds {
    pub dispute: DisputeId,
    pub offer: OfferId,
    pub evidence: Vec<EvidenceId>,
    pub events: Vec<EventId>,
}

impl NewIds {
    /// Enough fresh ids for an opening with `evidence` pieces.
    pub fn fresh(evidence: usize) -> Self {
        NewIds {
            dispute: DisputeId::new(),
            offer: OfferId::new(),
            evidence: (0..evidence).map(|_| EvidenceId::new()).collect(),
            events: (0..evidence + 4).map(|_| EventId::new()).collect(),
        }
    }
}

/// A dispute just opened, with its history and the order's paused clock.
#[derive(Debug, Clone)]
pub struct Opened {
    pub dispute: Dispute,
    pub events: Vec<DisputeEvent>,
    pub clock: ProtectionClock,
}

/// Checks every opening rule against the recorded facts and opens the dispute: offer one is
/// the buyer's request, the protection clock pauses, and a free return within its window is
/// authorised at once. `buyer` must be the caller (ownership is checked here too).
// Every argument is a distinct input the rules read; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn open_dispute(
    order: &OrderFacts,
    clock: &ProtectionClock,
    context: &OpeningContext,
    buyer: &Actor,
    request: OpenRequest,
    ids: NewIds,
    now: Timestamp,
    policy: &Policy,
) -> Result<Opened, DomainError> {
    // Input shape first: these are INVALID_ARGUMENT whatever the order's state.
    let description = required_text("description", &request.description)?;
    let mut resolution = Resolution::parse(
        request.resolution_type,
        request.amount,
        &order.total,
        "requested_resolution",
    )?;
    if !request.resolution_type.is_openable() {
        return Err(DomainError::validation(
            "requested_resolution.type",
            "ask for a return through kind RETURN_AND_REFUND; the request is FULL_REFUND, PARTIAL_REFUND or REPLACEMENT",
        ));
    }
    for (i, evidence) in request.evidence.iter().enumerate() {
        evidence.validate(&format!("evidence[{i}]"))?;
    }
    if request.reason.requires_photo_or_video()
        && !request
            .evidence
            .iter()
            .any(|e| matches!(e.kind, EvidenceKind::Photo | EvidenceKind::Video))
    {
        return Err(DomainError::rule(
            "evidence_required",
            format!(
                "reason {} needs at least one photo or video as evidence",
                request.reason
            ),
        ));
    }
    if request.reason == DisputeReason::NotReceived && request.evidence.is_empty() {
        return Err(DomainError::rule(
            "evidence_required",
            "reason NOT_RECEIVED needs evidence; a tracking screenshot is enough",
        ));
    }

    // Then the order's facts and the protection window.
    if buyer.role != Role::Buyer || buyer.id != order.buyer_id.as_str() {
        return Err(DomainError::rule(
            "not_the_buyers_order",
            format!("order {} was not bought by {}", order.order_id, buyer.id),
        ));
    }
    if let Some(at) = order.cancelled_at {
        return Err(DomainError::rule(
            "order_cancelled",
            format!("order {} was cancelled at {}", order.order_id, fmt_ts(at)),
        ));
    }
    if let Some((id, state)) = context.active_dispute {
        return Err(DomainError::rule(
            "one_active_dispute_per_order",
            format!(
                "order {} already has dispute {id} in state {state}",
                order.order_id
            ),
        ));
    }
    if context.resolved_before {
        return Err(DomainError::rule(
            "order_already_resolved",
            format!(
                "a dispute on order {} already ended with an outcome",
                order.order_id
            ),
        ));
    }
    if clock.withdrawals > policy.reopen_allowance() {
        return Err(DomainError::rule(
            "reopen_allowance_used",
            format!(
                "order {} had {} withdrawn disputes; a withdrawn dispute may be reopened {} time(s)",
                order.order_id,
                clock.withdrawals,
                policy.reopen_allowance()
            ),
        ));
    }
    let window = protection_window(order, clock, policy).ok_or_else(|| {
        DomainError::rule(
            "order_not_shipped",
            format!(
                "order {} has neither shipped nor a promised ship date; the protection window has not started",
                order.order_id
            ),
        )
    })?;
    if now < window.opens_at {
        return Err(DomainError::rule(
            "protection_window_not_open",
            format!(
                "disputes on order {} open at {} ({} days after shipping); now is {}",
                order.order_id,
                fmt_ts(window.opens_at),
                policy.protection.opens_after_days,
                fmt_ts(now)
            ),
        ));
    }
    // Not paused here: a paused clock always has an active dispute, refused above.
    let closes_at = window.closes_at.unwrap_or(now);
    if now >= closes_at {
        return Err(DomainError::rule(
            "protection_window_closed",
            format!(
                "protection on order {} ({} class) closed at {}; now is {}",
                order.order_id,
                order.carrier.class(),
                fmt_ts(closes_at),
                fmt_ts(now)
            ),
        ));
    }
    let time_left = closes_at - now;

    // A return-and-refund dispute asks for the return in offer one.
    if request.kind == DisputeKind::ReturnAndRefund
        && matches!(
            resolution.kind,
            ResolutionType::FullRefund | ResolutionType::PartialRefund
        )
    {
        resolution = Resolution {
            kind: ResolutionType::ReturnAndRefund,
            amount: resolution.amount,
        };
    }

    let mut event_ids = ids.events.into_iter();
    let mut next_event_id = move || event_ids.next().unwrap_or_else(EventId::new);
    let evidence: Vec<Evidence> = request
        .evidence
        .into_iter()
        .zip(
            ids.evidence
                .into_iter()
                .chain(std::iter::repeat_with(EvidenceId::new)),
        )
        .map(|(e, id)| e.into_evidence(id, buyer.clone(), now))
        .collect();
    let offer = Offer {
        id: ids.offer,
        number: 1,
        made_by: buyer.clone(),
        resolution,
        note: description.clone(),
        status: OfferStatus::Pending,
        created_at: now,
        answered_at: None,
        rejection_reason: String::new(),
    };
    let mut dispute = Dispute {
        id: ids.dispute,
        order_id: order.order_id.clone(),
        buyer_id: order.buyer_id.clone(),
        seller_id: order.seller_id.clone(),
        kind: request.kind,
        reason: request.reason,
        description,
        requested: resolution,
        state: DisputeState::Open,
        awaiting: Awaiting::Seller,
        respond_by: Some(now + policy.seller_response_window(request.reason)),
        offers: vec![offer.clone()],
        evidence: evidence.clone(),
        message_count: 0,
        outcome: None,
        order_total: order.total,
        created_at: now,
        updated_at: now,
        escalated_at: None,
        closed_at: None,
        return_label_id: None,
        return_shipped: false,
        return_delivered: false,
        return_postage: None,
        protection_time_left: time_left,
        reopened: clock.withdrawals > 0,
        seller_contested: false,
        free_return: order.free_return,
        refund_requested: Money::zero(order.total.currency),
        version: 1,
    };
    let mut events = vec![DisputeEvent {
        id: next_event_id(),
        kind: EventType::Opened,
        actor: buyer.clone(),
        at: now,
        from: None,
        to: DisputeState::Open,
        note: format!("{} {}", request.kind, request.reason),
        payload: EventPayload::Offer(offer),
    }];
    for e in evidence {
        events.push(DisputeEvent {
            id: next_event_id(),
            kind: EventType::EvidenceAdded,
            actor: buyer.clone(),
            at: now,
            from: Some(DisputeState::Open),
            to: DisputeState::Open,
            note: String::new(),
            payload: EventPayload::Evidence(e),
        });
    }

    // Free returns: within the window after delivery and under the monthly quota, the
    // return is authorised at once without waiting for the seller.
    let free_return_window_open = order
        .delivered_at
        .is_some_and(|delivered| now <= delivered + policy.free_return_window());
    if order.free_return
        && request.kind == DisputeKind::ReturnAndRefund
        && resolution.kind == ResolutionType::ReturnAndRefund
        && free_return_window_open
        && context.free_returns_this_month < policy.free_returns_per_month()
    {
        let mut transition = Transition::new(&dispute, buyer.clone(), now);
        transition.next.offers[0].status = OfferStatus::Accepted;
        transition.next.offers[0].answered_at = Some(now);
        let (ruling, amount, _) = resolution.as_outcome(&order.total);
        let rationale = format!(
            "free return within {} days of delivery: authorised at once",
            policy.returns.free_return_window_days
        );
        transition.settle(
            Settlement {
                ruling,
                amount,
                return_required: true,
                postage_payer: Some(PostagePayer::Platform),
                rationale,
                decided_by: Actor::system(),
                source: OutcomeSource::FreeReturn,
                accepted_offer: Some(ids.offer),
            },
            policy,
        )?;
        let (next, more) = transition.finish_without_version_bump();
        dispute = next;
        for mut e in more {
            e.id = next_event_id();
            events.push(e);
        }
    }

    Ok(Opened {
        dispute,
        events,
        clock: ProtectionClock {
            paused_time_left: Some(time_left),
            resumed_closes_at: None,
            withdrawals: clock.withdrawals,
        },
    })
}

/// Resumes the order's clock after `dispute` was withdrawn: it closes `time_left` after now.
pub fn resume_protection(
    clock: &ProtectionClock,
    dispute: &Dispute,
    now: Timestamp,
) -> ProtectionClock {
    let left = clock
        .paused_time_left
        .unwrap_or(dispute.protection_time_left);
    ProtectionClock {
        paused_time_left: None,
        resumed_closes_at: Some(now + left),
        withdrawals: clock.withdrawals + 1,
    }
}

// ---------------------------------------------------------------------------------------
// The state machine.
// ---------------------------------------------------------------------------------------

/// An arbiter's ruling, as validated by `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub outcome: RulingOutcome,
    pub amount: Option<Money>,
    pub return_required: bool,
    pub rationale: String,
    pub postage_payer: Option<PostagePayer>,
}

/// Everything that can happen to an open dispute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    MakeOffer {
        by: Actor,
        offer_id: OfferId,
        kind: ResolutionType,
        amount: Option<Money>,
        note: String,
    },
    AcceptOffer {
        by: Actor,
        offer_id: OfferId,
    },
    RejectOffer {
        by: Actor,
        offer_id: OfferId,
        reason: String,
    },
    SendMessage {
        by: Actor,
        body: String,
        evidence_ids: Vec<EvidenceId>,
    },
    AddEvidence {
        by: Actor,
        evidence_id: EvidenceId,
        evidence: NewEvidence,
    },
    Escalate {
        by: Actor,
        reason: String,
    },
    Rule {
        by: Actor,
        ruling: Ruling,
    },
    Cancel {
        by: Actor,
        reason: String,
    },
    /// The seller-response deadline fell due.
    SellerResponseExpired,
    /// The return ship-by deadline fell due.
    ReturnShipByExpired,
    /// Relayed from the labels service.
    ReturnEvent {
        update: ReturnUpdate,
    },
}

impl Command {
    /// The action's name in error messages.
    pub fn action(&self) -> &'static str {
        match self {
            Command::MakeOffer { .. } => "make an offer",
            Command::AcceptOffer { .. } => "accept an offer",
            Command::RejectOffer { .. } => "reject an offer",
            Command::SendMessage { .. } => "send a message",
            Command::AddEvidence { .. } => "add evidence",
            Command::Escalate { .. } => "escalate",
            Command::Rule { .. } => "rule",
            Command::Cancel { .. } => "withdraw the dispute",
            Command::SellerResponseExpired => "expire the seller response window",
            Command::ReturnShipByExpired => "expire the return ship-by deadline",
            Command::ReturnEvent { .. } => "record return progress",
        }
    }

    /// The states in which the command is allowed.
    pub fn allowed_states(&self) -> &'static [DisputeState] {
        use DisputeState::*;
        match self {
            Command::MakeOffer { .. }
            | Command::AcceptOffer { .. }
            | Command::RejectOffer { .. }
            | Command::SellerResponseExpired => &[Open, Negotiating],
            Command::SendMessage { .. } | Command::AddEvidence { .. } => {
                &[Open, Negotiating, Escalated, AwaitingReturn]
            }
            Command::Escalate { .. } => &[Negotiating],
            Command::Rule { .. } => &[Escalated],
            Command::Cancel { .. } => &[Open, Negotiating, Escalated],
            Command::ReturnShipByExpired => &[AwaitingReturn],
            Command::ReturnEvent { .. } => &[
                Open,
                Negotiating,
                Escalated,
                AwaitingReturn,
                Resolved,
                Cancelled,
            ],
        }
    }
}

/// A transition in progress: the next dispute and the history it writes.
struct Transition {
    from: DisputeState,
    next: Dispute,
    events: Vec<DisputeEvent>,
    actor: Actor,
    now: Timestamp,
}

/// An outcome to settle the dispute with.
struct Settlement {
    ruling: RulingOutcome,
    amount: Option<Money>,
    return_required: bool,
    postage_payer: Option<PostagePayer>,
    rationale: String,
    decided_by: Actor,
    source: OutcomeSource,
    accepted_offer: Option<OfferId>,
}

impl Transition {
    fn new(dispute: &Dispute, actor: Actor, now: Timestamp) -> Self {
        Transition {
            from: dispute.state,
            next: dispute.clone(),
            events: Vec::new(),
            actor,
            now,
        }
    }

    fn push(&mut self, kind: EventType, note: impl Into<String>, payload: EventPayload) {
        self.events.push(DisputeEvent {
            id: EventId::new(),
            kind,
            actor: self.actor.clone(),
            at: self.now,
            from: Some(self.from),
            to: self.from,
            note: note.into(),
            payload,
        });
    }

    /// Closes every pending offer (the dispute moved on without an answer).
    fn close_pending(&mut self) {
        for offer in &mut self.next.offers {
            if offer.status == OfferStatus::Pending {
                offer.status = OfferStatus::Closed;
                offer.answered_at = Some(self.now);
            }
        }
    }

    /// Ends the negotiation with an outcome: resolved now, or awaiting a required return
    /// (return authorised, refund requested on inspection).
    fn settle(&mut self, s: Settlement, policy: &Policy) -> Result<(), DomainError> {
        self.close_pending();
        let total = self.next.order_total;
        let amount = match s.ruling {
            RulingOutcome::RefundFull => Some(total),
            RulingOutcome::RefundPartial => s.amount,
            RulingOutcome::Replacement | RulingOutcome::SellerFavor => None,
        };
        let postage_payer = if s.return_required {
            Some(
                s.postage_payer
                    .unwrap_or_else(|| self.next.reason.default_postage_payer()),
            )
        } else {
            None
        };
        let outcome = Outcome {
            ruling: s.ruling,
            amount,
            return_required: s.return_required,
            rationale: s.rationale,
            decided_by: s.decided_by,
            decided_at: self.now,
            postage_payer,
            source: s.source,
            accepted_offer: s.accepted_offer,
        };
        self.next.outcome = Some(outcome.clone());
        // Never ask for more than was paid in total across the dispute's refund requests.
        let refund = match amount {
            Some(amount) => {
                let left = total.checked_sub(self.next.refund_requested)?;
                let capped = Money::new(total.currency, amount.minor_units.min(left.minor_units));
                capped.is_positive().then_some(capped)
            }
            None => None,
        };
        if s.return_required {
            let ship_by = self.now + policy.return_ship_by_window();
            self.next.state = DisputeState::AwaitingReturn;
            self.next.awaiting = Awaiting::Buyer;
            self.next.respond_by = Some(ship_by);
            self.next.return_shipped = false;
            self.next.return_delivered = false;
            let authorisation = ReturnAuthorisation {
                postage_payer: postage_payer.unwrap_or(PostagePayer::Seller),
                ship_by,
                free_return: s.source == OutcomeSource::FreeReturn,
                item_value: total,
            };
            self.push(
                EventType::ReturnAuthorised,
                format!("ship by {}", fmt_ts(ship_by)),
                EventPayload::ReturnAuthorisation(authorisation),
            );
            if let Some(amount) = refund {
                self.request_refund(amount, RefundRelease::OnInspectionPassed)?;
            }
        } else {
            self.next.state = DisputeState::Resolved;
            self.next.awaiting = Awaiting::Nobody;
            self.next.respond_by = None;
            self.next.closed_at = Some(self.now);
            if let Some(amount) = refund {
                self.request_refund(amount, RefundRelease::Immediate)?;
            }
            self.push(EventType::Resolved, "", EventPayload::Outcome(outcome));
        }
        Ok(())
    }

    fn request_refund(&mut self, amount: Money, release: RefundRelease) -> Result<(), DomainError> {
        self.next.refund_requested = self.next.refund_requested.checked_add(amount)?;
        self.push(
            EventType::RefundRequested,
            format!("{amount}, release {release}"),
            EventPayload::Refund(RefundRequest { amount, release }),
        );
        Ok(())
    }

    /// Takes the refund held for the return's inspection off the running total, because the
    /// refunds service cancels it (inspection failed, or return not shipped) and a cancelled
    /// refund is not money paid. While a return is awaited, everything the dispute requested
    /// is that held refund: refunds are only requested when settling, and an immediate one
    /// resolves the dispute for good.
    fn drop_held_refund(&mut self) {
        self.next.refund_requested = Money::zero(self.next.order_total.currency);
    }

    fn finish_without_version_bump(mut self) -> (Dispute, Vec<DisputeEvent>) {
        let to = self.next.state;
        for e in &mut self.events {
            e.to = to;
        }
        self.next.updated_at = self.now;
        (self.next, self.events)
    }

    fn finish(mut self) -> (Dispute, Vec<DisputeEvent>) {
        self.next.version += 1;
        self.finish_without_version_bump()
    }
}

fn illegal(dispute: &Dispute, command: &Command) -> DomainError {
    DomainError::illegal_transition(
        dispute.state.code(),
        command.action(),
        command.allowed_states().iter().map(|s| s.code()),
    )
}

/// Applies `command` to `dispute` at `now`: the next dispute (version + 1) and the history
/// entries to append, or why the command is refused.
pub fn apply(
    dispute: &Dispute,
    command: Command,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    if !command.allowed_states().contains(&dispute.state) {
        return Err(illegal(dispute, &command));
    }
    let total = dispute.order_total;
    match command {
        Command::MakeOffer {
            by,
            offer_id,
            kind,
            amount,
            note,
        } => {
            let party = party_of(dispute, &by)?;
            let resolution = Resolution::parse(kind, amount, &total, "offer")?;
            let note = optional_text("note", &note)?;
            let mut t = Transition::new(dispute, by.clone(), now);
            for offer in &mut t.next.offers {
                if offer.status == OfferStatus::Pending {
                    offer.status = OfferStatus::Superseded;
                    offer.answered_at = Some(now);
                }
            }
            let offer = Offer {
                id: offer_id,
                number: u32::try_from(dispute.offers.len() + 1).unwrap_or(u32::MAX),
                made_by: by,
                resolution,
                note: note.clone(),
                status: OfferStatus::Pending,
                created_at: now,
                answered_at: None,
                rejection_reason: String::new(),
            };
            t.next.offers.push(offer.clone());
            match party {
                Party::Seller => {
                    t.next.state = DisputeState::Negotiating;
                    t.next.seller_contested = true;
                    t.next.awaiting = Awaiting::Buyer;
                    t.next.respond_by = None;
                }
                Party::Buyer => {
                    t.next.awaiting = Awaiting::Seller;
                    // In OPEN the seller's first window keeps running; a buyer's counter in
                    // negotiation gives the seller a fresh window.
                    if dispute.state == DisputeState::Negotiating {
                        t.next.respond_by =
                            Some(now + policy.seller_response_window(dispute.reason));
                    }
                }
            }
            t.push(EventType::OfferMade, note, EventPayload::Offer(offer));
            Ok(t.finish())
        }
        Command::AcceptOffer { by, offer_id } => {
            let party = party_of(dispute, &by)?;
            let offer = answerable_offer(dispute, offer_id, party)?.clone();
            let mut t = Transition::new(dispute, by.clone(), now);
            if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer_id) {
                o.status = OfferStatus::Accepted;
                o.answered_at = Some(now);
            }
            let mut accepted = offer.clone();
            accepted.status = OfferStatus::Accepted;
            accepted.answered_at = Some(now);
            t.push(EventType::OfferAccepted, "", EventPayload::Offer(accepted));
            let (ruling, amount, return_required) = offer.resolution.as_outcome(&total);
            t.settle(
                Settlement {
                    ruling,
                    amount,
                    return_required,
                    postage_payer: None,
                    rationale: format!("offer {} accepted by the {}", offer.number, party.name()),
                    decided_by: by,
                    source: OutcomeSource::OfferAccepted,
                    accepted_offer: Some(offer_id),
                },
                policy,
            )?;
            Ok(t.finish())
        }
        Command::RejectOffer {
            by,
            offer_id,
            reason,
        } => {
            let party = party_of(dispute, &by)?;
            let reason = required_text("reason", &reason)?;
            let offer = answerable_offer(dispute, offer_id, party)?.clone();
            let mut t = Transition::new(dispute, by, now);
            if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer_id) {
                o.status = OfferStatus::Rejected;
                o.answered_at = Some(now);
                o.rejection_reason = reason.clone();
            }
            t.next.state = DisputeState::Negotiating;
            if party == Party::Seller {
                t.next.seller_contested = true;
            }
            // Either way it is the buyer's move: counter, escalate or withdraw.
            t.next.awaiting = Awaiting::Buyer;
            t.next.respond_by = None;
            let mut rejected = offer;
            rejected.status = OfferStatus::Rejected;
            rejected.answered_at = Some(now);
            rejected.rejection_reason = reason.clone();
            t.push(
                EventType::OfferRejected,
                reason,
                EventPayload::Offer(rejected),
            );
            Ok(t.finish())
        }
        Command::SendMessage {
            by,
            body,
            evidence_ids,
        } => {
            party_of(dispute, &by)?;
            let body = required_text("body", &body)?;
            check_evidence_ids(dispute, &evidence_ids)?;
            let mut t = Transition::new(dispute, by.clone(), now);
            t.next.message_count += 1;
            let id = EventId::new();
            t.push(
                EventType::MessageSent,
                "",
                EventPayload::Message(Message {
                    id,
                    author: by,
                    body,
                    evidence_ids,
                    sent_at: now,
                }),
            );
            if let Some(e) = t.events.last_mut() {
                e.id = id;
            }
            Ok(t.finish())
        }
        Command::AddEvidence {
            by,
            evidence_id,
            evidence,
        } => {
            party_of(dispute, &by)?;
            evidence.validate("evidence")?;
            if dispute.evidence.len() >= MAX_EVIDENCE_PER_DISPUTE {
                return Err(DomainError::RuleViolated {
                    rule: "evidence_limit",
                    detail: format!(
                        "a dispute holds at most {MAX_EVIDENCE_PER_DISPUTE} evidence items"
                    ),
                });
            }
            let stored = evidence.into_evidence(evidence_id, by.clone(), now);
            let mut t = Transition::new(dispute, by, now);
            t.next.evidence.push(stored.clone());
            t.push(EventType::EvidenceAdded, "", EventPayload::Evidence(stored));
            Ok(t.finish())
        }
        Command::Escalate { by, reason } => {
            require_buyer(dispute, &by, "only the buyer may escalate")?;
            let reason = optional_text("reason", &reason)?;
            let mut t = Transition::new(dispute, by, now);
            t.close_pending();
            t.next.state = DisputeState::Escalated;
            t.next.awaiting = Awaiting::Arbiter;
            t.next.escalated_at = Some(now);
            t.next.respond_by = Some(now + policy.arbiter_ruling_window());
            t.push(EventType::Escalated, reason, EventPayload::None);
            Ok(t.finish())
        }
        Command::Rule { by, ruling } => {
            if by.role != Role::Arbiter {
                return Err(DomainError::rule(
                    "arbiter_only",
                    "only an arbiter may rule",
                ));
            }
            let rationale = required_text("rationale", &ruling.rationale)?;
            match (ruling.outcome, ruling.amount) {
                (RulingOutcome::RefundPartial, None) => {
                    return Err(DomainError::validation(
                        "amount",
                        "is required for REFUND_PARTIAL",
                    ));
                }
                (RulingOutcome::RefundPartial, Some(amount)) => {
                    check_amount(&amount, &total, "amount")?
                }
                (_, Some(_)) => {
                    return Err(DomainError::validation(
                        "amount",
                        format!("must be unset for {}", ruling.outcome),
                    ));
                }
                (_, None) => {}
            }
            if ruling.return_required && !ruling.outcome.refunds_buyer() {
                return Err(DomainError::validation(
                    "return_required",
                    format!(
                        "a return can only be required with a refund, not with {}",
                        ruling.outcome
                    ),
                ));
            }
            let mut t = Transition::new(dispute, by.clone(), now);
            t.settle(
                Settlement {
                    ruling: ruling.outcome,
                    amount: ruling.amount,
                    return_required: ruling.return_required,
                    postage_payer: ruling.postage_payer,
                    rationale: rationale.clone(),
                    decided_by: by,
                    source: OutcomeSource::Ruling,
                    accepted_offer: None,
                },
                policy,
            )?;
            let outcome = t.next.outcome.clone();
            t.events.insert(
                0,
                DisputeEvent {
                    id: EventId::new(),
                    kind: EventType::Ruled,
                    actor: t.actor.clone(),
                    at: now,
                    from: Some(t.from),
                    to: t.from,
                    note: rationale,
                    payload: outcome.map_or(EventPayload::None, EventPayload::Outcome),
                },
            );
            Ok(t.finish())
        }
        Command::Cancel { by, reason } => {
            require_buyer(dispute, &by, "only the buyer may withdraw a dispute")?;
            let reason = optional_text("reason", &reason)?;
            let mut t = Transition::new(dispute, by, now);
            t.close_pending();
            t.next.state = DisputeState::Cancelled;
            t.next.awaiting = Awaiting::Nobody;
            t.next.respond_by = None;
            t.next.closed_at = Some(now);
            t.push(EventType::Cancelled, reason, EventPayload::None);
            Ok(t.finish())
        }
        Command::SellerResponseExpired => {
            let due = match dispute.deadline() {
                Some((DeadlineKind::SellerResponse, due)) => due,
                _ => return Err(not_running(dispute, DeadlineKind::SellerResponse)),
            };
            if now < due {
                return Err(not_due(DeadlineKind::SellerResponse, due, now));
            }
            let offer = dispute
                .pending_offer()
                .filter(|o| o.made_by.role == Role::Buyer)
                .cloned()
                .ok_or_else(|| not_running(dispute, DeadlineKind::SellerResponse))?;
            let mut t = Transition::new(dispute, Actor::system(), now);
            if let Some(o) = t.next.offers.iter_mut().find(|o| o.id == offer.id) {
                o.status = OfferStatus::Accepted;
                o.answered_at = Some(now);
            }
            let days = policy.seller_response_window(dispute.reason).num_days();
            t.push(
                EventType::SellerResponseExpired,
                format!("the seller did not answer by {}", fmt_ts(due)),
                EventPayload::None,
            );
            let (ruling, amount, return_required) = offer.resolution.as_outcome(&total);
            t.settle(
                Settlement {
                    ruling,
                    amount,
                    return_required,
                    postage_payer: None,
                    rationale: format!(
                        "seller silent for {days} days: the buyer's request (offer {}) is granted",
                        offer.number
                    ),
                    decided_by: Actor::system(),
                    source: OutcomeSource::SellerSilent,
                    accepted_offer: Some(offer.id),
                },
                policy,
            )?;
            Ok(t.finish())
        }
        Command::ReturnShipByExpired => {
            let due = match dispute.deadline() {
                Some((DeadlineKind::ReturnShipBy, due)) => due,
                _ => return Err(not_running(dispute, DeadlineKind::ReturnShipBy)),
            };
            if now < due {
                return Err(not_due(DeadlineKind::ReturnShipBy, due, now));
            }
            let mut t = Transition::new(dispute, Actor::system(), now);
            // The refund requested at authorisation is released only on a passed inspection,
            // which can no longer happen: the payload tells refunds to cancel it.
            t.drop_held_refund();
            t.push(
                EventType::ReturnShipByExpired,
                format!("the return was not shipped by {}", fmt_ts(due)),
                EventPayload::ReturnNotShipped(ReturnNotShipped { ship_by: due }),
            );
            t.settle(
                Settlement {
                    ruling: RulingOutcome::SellerFavor,
                    amount: None,
                    return_required: false,
                    postage_payer: None,
                    rationale: format!(
                        "the return was not handed to a carrier by {}: closed for the seller",
                        fmt_ts(due)
                    ),
                    decided_by: Actor::system(),
                    source: OutcomeSource::ReturnNotShipped,
                    accepted_offer: None,
                },
                policy,
            )?;
            Ok(t.finish())
        }
        Command::ReturnEvent { update } => {
            let mut t = Transition::new(dispute, Actor::system(), now);
            if !update.label_id.is_empty() {
                t.next.return_label_id = Some(update.label_id.clone());
            }
            let in_return = dispute.state == DisputeState::AwaitingReturn;
            match update.kind {
                ReturnEventType::LabelCreated if update.postage.is_some() => {
                    t.next.return_postage = update.postage;
                }
                ReturnEventType::AcceptedByCarrier if in_return => {
                    t.next.return_shipped = true;
                    t.next.awaiting = Awaiting::Nobody;
                    t.next.respond_by = None;
                }
                ReturnEventType::Delivered if in_return => {
                    t.next.return_shipped = true;
                    t.next.return_delivered = true;
                    t.next.awaiting = Awaiting::Seller;
                    t.next.respond_by = None;
                }
                ReturnEventType::InspectionAccepted
                | ReturnEventType::InspectionDamagedAsClaimed
                    if in_return =>
                {
                    t.next.return_shipped = true;
                    t.next.return_delivered = true;
                    t.push(
                        EventType::ReturnUpdated,
                        update.notes.clone(),
                        EventPayload::ReturnUpdate(update),
                    );
                    t.next.state = DisputeState::Resolved;
                    t.next.awaiting = Awaiting::Nobody;
                    t.next.respond_by = None;
                    t.next.closed_at = Some(now);
                    let outcome = t.next.outcome.clone();
                    t.push(
                        EventType::Resolved,
                        "the return passed inspection",
                        outcome.map_or(EventPayload::None, EventPayload::Outcome),
                    );
                    return Ok(t.finish());
                }
                ReturnEventType::InspectionDamagedInTransit
                | ReturnEventType::InspectionWrongOrEmpty
                    if in_return =>
                {
                    t.next.return_shipped = true;
                    t.next.return_delivered = true;
                    // The refunds service cancels the refund held for this inspection when it
                    // hears of the failure (from labels), so nothing of it is paid and the next
                    // ruling requests a new refund within the full order total.
                    t.drop_held_refund();
                    t.next.state = DisputeState::Escalated;
                    t.next.awaiting = Awaiting::Arbiter;
                    t.next.escalated_at = Some(now);
                    t.next.respond_by = Some(now + policy.arbiter_ruling_window());
                    t.push(
                        EventType::ReturnInspectionFailed,
                        format!("inspection: {}; back to platform review", update.kind),
                        EventPayload::ReturnUpdate(update),
                    );
                    return Ok(t.finish());
                }
                // Progress outside an awaited return (late scans, voided labels) is kept in
                // the history but changes nothing: the relay must not retry it forever.
                _ => {}
            }
            t.push(
                EventType::ReturnUpdated,
                update.notes.clone(),
                EventPayload::ReturnUpdate(update),
            );
            Ok(t.finish())
        }
    }
}

/// Which side of the dispute an actor is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Buyer,
    Seller,
}

impl Party {
    fn name(&self) -> &'static str {
        match self {
            Party::Buyer => "buyer",
            Party::Seller => "seller",
        }
    }
}

/// Refuses unless `by` is the dispute's buyer (`what` says what only the buyer may do).
fn require_buyer(dispute: &Dispute, by: &Actor, what: &str) -> Result<(), DomainError> {
    if party_of(dispute, by)? != Party::Buyer {
        return Err(DomainError::rule("buyer_only", what));
    }
    Ok(())
}

fn party_of(dispute: &Dispute, actor: &Actor) -> Result<Party, DomainError> {
    match actor.role {
        Role::Buyer if actor.id == dispute.buyer_id.as_str() => Ok(Party::Buyer),
        Role::Seller if actor.id == dispute.seller_id.as_str() => Ok(Party::Seller),
        _ => Err(DomainError::rule(
            "not_a_party",
            format!(
                "{} {} is not a party to dispute {}",
                actor.role, actor.id, dispute.id
            ),
        )),
    }
}

/// The pending offer `offer_id`, made by the other party.
fn answerable_offer(
    dispute: &Dispute,
    offer_id: OfferId,
    party: Party,
) -> Result<&Offer, DomainError> {
    let offer = dispute
        .offers
        .iter()
        .find(|o| o.id == offer_id)
        .ok_or_else(|| {
            DomainError::validation("offer_id", format!("no offer {offer_id} on this dispute"))
        })?;
    if offer.status != OfferStatus::Pending {
        return Err(DomainError::rule(
            "offer_not_pending",
            format!("offer {} is {}, not PENDING", offer.number, offer.status),
        ));
    }
    let made_by_buyer = offer.made_by.role == Role::Buyer;
    if made_by_buyer == (party == Party::Buyer) {
        return Err(DomainError::rule(
            "own_offer",
            format!(
                "offer {} is the {}'s own; only the other party may answer it",
                offer.number,
                party.name()
            ),
        ));
    }
    Ok(offer)
}

fn check_evidence_ids(dispute: &Dispute, ids: &[EvidenceId]) -> Result<(), DomainError> {
    for (i, id) in ids.iter().enumerate() {
        if !dispute.evidence.iter().any(|e| e.id == *id) {
            return Err(DomainError::validation(
                format!("evidence_ids[{i}]"),
                format!("no evidence {id} on this dispute"),
            ));
        }
    }
    Ok(())
}

fn not_running(dispute: &Dispute, kind: DeadlineKind) -> DomainError {
    DomainError::rule(
        "deadline_not_running",
        format!(
            "no {kind} deadline runs in state {} (awaiting {})",
            dispute.state, dispute.awaiting
        ),
    )
}

fn not_due(kind: DeadlineKind, due: Timestamp, now: Timestamp) -> DomainError {
    DomainError::rule(
        "deadline_not_due",
        format!("{kind} is due at {}; now is {}", fmt_ts(due), fmt_ts(now)),
    )
}

/// Dates in messages: RFC 3339 to the second, UTC.
pub fn fmt_ts(at: Timestamp) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------------------------------
// Platform review guidelines.
// ---------------------------------------------------------------------------------------

/// The guideline recommendation for an arbiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    pub outcome: RulingOutcome,
    pub amount: Option<Money>,
    pub return_required: bool,
    pub postage_payer: Option<PostagePayer>,
    /// One line per guideline that fired, in evaluation order.
    pub reasons: Vec<String>,
}

/// DOMAIN.md "Platform review" as a recommendation with the reasons that fired.
///
/// Evaluation order: a changed mind is not a protection case; then the reason-specific
/// guidelines (not received with tracking, wrong item with photos, damage with media); then
/// the contested-return rule for orders above USD 50; a return postage at or above the item's
/// value overrides any return (refund, the buyer keeps the item).
pub fn recommend_ruling(
    dispute: &Dispute,
    policy: &Policy,
    fx: &FxTable,
) -> Result<Recommendation, DomainError> {
    let total = dispute.order_total;
    let buyer_evidence: Vec<&Evidence> = dispute
        .evidence
        .iter()
        .filter(|e| e.uploaded_by.role == Role::Buyer)
        .collect();
    let seller_has_evidence = dispute
        .evidence
        .iter()
        .any(|e| e.uploaded_by.role == Role::Seller);
    let buyer_media = buyer_evidence.iter().any(|e| e.is_photo_or_video());
    let requested_partial = dispute
        .requested
        .amount
        .filter(|a| *a != total && dispute.requested.kind != ResolutionType::FullRefund);
    let mut reasons = Vec::new();

    if dispute.reason == DisputeReason::ChangedMind {
        reasons.push(
            "changed mind and the item matches the listing: not a protection case; no refund unless the seller accepts a return, and then the buyer pays postage".to_owned(),
        );
        return Ok(Recommendation {
            outcome: RulingOutcome::SellerFavor,
            amount: None,
            return_required: false,
            postage_payer: None,
            reasons,
        });
    }

    let (mut outcome, mut amount) = match requested_partial {
        Some(a) => (RulingOutcome::RefundPartial, Some(a)),
        None => (RulingOutcome::RefundFull, Some(total)),
    };
    let mut return_possible = true;
    match dispute.reason {
        DisputeReason::NotReceived if !buyer_evidence.is_empty() => {
            reasons.push("not received, with tracking evidence: full refund, no return".to_owned());
            outcome = RulingOutcome::RefundFull;
            amount = Some(total);
            return_possible = false;
        }
        DisputeReason::WrongItem if buyer_media => {
            reasons.push("wrong item, with photos: full refund, no return".to_owned());
            outcome = RulingOutcome::RefundFull;
            amount = Some(total);
        }
        DisputeReason::Damaged if buyer_media => {
            reasons.push(format!(
                "significant damage, with photos or video: {} refund, no return",
                if outcome == RulingOutcome::RefundPartial {
                    "partial"
                } else {
                    "full"
                }
            ));
        }
        _ if buyer_evidence.is_empty() && seller_has_evidence && dispute.seller_contested => {
            reasons.push("no evidence from the buyer and the seller contests with evidence: ruling for the seller".to_owned());
            return Ok(Recommendation {
                outcome: RulingOutcome::SellerFavor,
                amount: None,
                return_required: false,
                postage_payer: None,
                reasons,
            });
        }
        _ => {
            if dispute.requested.kind == ResolutionType::Replacement {
                outcome = RulingOutcome::Replacement;
                amount = None;
            }
            reasons.push(format!(
                "{} is a protection case with no specific guideline: the buyer's request stands",
                dispute.reason
            ));
        }
    }

    let mut return_required = false;
    let above = policy.is_above_contested_return_threshold(&total, fx)?;
    if return_possible
        && above
        && dispute.seller_contested
        && seller_has_evidence
        && outcome.refunds_buyer()
    {
        reasons.push(format!(
            "order of {total} is above USD {} and the seller contests with evidence: return required before refund",
            policy.contested_return_threshold_usd_minor() / 100
        ));
        return_required = true;
    }
    if let Some(postage) = dispute.return_postage
        && postage.currency == total.currency
        && postage.minor_units >= total.minor_units
        && outcome.refunds_buyer()
    {
        reasons.push(format!(
            "return postage {postage} is at or above the item's value {total}: refund, the buyer keeps the item"
        ));
        return_required = false;
    }
    Ok(Recommendation {
        outcome,
        amount,
        return_required,
        postage_payer: return_required.then(|| dispute.reason.default_postage_payer()),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::CurrencyCode;
    use chrono::TimeZone;

    fn at(day: u32) -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 3, day, 9, 0, 0)
            .single()
            .expect("valid date")
    }

    fn usd(minor: i64) -> Money {
        Money::new(CurrencyCode::USD, minor)
    }

    fn order(carrier: ShippingCarrier) -> OrderFacts {
        OrderFacts {
            order_id: OrderId::parse("o-1").expect("id"),
            buyer_id: PartyId::parse("b-1").expect("id"),
            seller_id: PartyId::parse("s-1").expect("id"),
            total: usd(8000),
            payment_method: PaymentMethod::Card,
            buyer_tier: BuyerTier::Standard,
            carrier,
            placed_at: at(1),
            shipped_at: Some(at(2)),
            promised_ship_by: None,
            delivered_at: Some(at(5)),
            destination_country: "GB".into(),
            free_return: false,
            cancelled_at: None,
        }
    }

    fn buyer() -> Actor {
        Actor::new("b-1", Role::Buyer)
    }
    fn seller() -> Actor {
        Actor::new("s-1", Role::Seller)
    }
    fn arbiter() -> Actor {
        Actor::new("a-1", Role::Arbiter)
    }

    fn photo() -> NewEvidence {
        NewEvidence {
            kind: EvidenceKind::Photo,
            content_type: "image/jpeg".into(),
            size_bytes: 1000,
            sha256: "a".repeat(64),
            uri: "https://example.test/p.jpg".into(),
            file_name: "p.jpg".into(),
        }
    }

    fn request(reason: DisputeReason, evidence: Vec<NewEvidence>) -> OpenRequest {
        OpenRequest {
            kind: DisputeKind::RefundOnly,
            reason,
            resolution_type: ResolutionType::FullRefund,
            amount: None,
            description: "it broke".into(),
            evidence,
        }
    }

    fn open_at(
        order: &OrderFacts,
        req: OpenRequest,
        now: Timestamp,
    ) -> Result<Opened, DomainError> {
        let ids = NewIds::fresh(req.evidence.len());
        open_dispute(
            order,
            &ProtectionClock::default(),
            &OpeningContext::default(),
            &buyer(),
            req,
            ids,
            now,
            &Policy::classic(),
        )
    }

    fn damaged() -> Dispute {
        open_at(
            &order(ShippingCarrier::Dhl),
            request(DisputeReason::Damaged, vec![photo()]),
            at(10),
        )
        .expect("opens")
        .dispute
    }

    fn rule_of(err: DomainError) -> &'static str {
        match err {
            DomainError::RuleViolated { rule, .. } => rule,
            other => panic!("expected a rule violation, got {other:?}"),
        }
    }

    fn offer(by: Actor, kind: ResolutionType, amount: Option<Money>) -> Command {
        Command::MakeOffer {
            by,
            offer_id: OfferId::new(),
            kind,
            amount,
            note: String::new(),
        }
    }

    #[test]
    fn a_dispute_holds_at_most_fifty_evidence_items() {
        let policy = Policy::classic();
        let mut d = damaged();
        while d.evidence.len() < MAX_EVIDENCE_PER_DISPUTE {
            d = apply(
                &d,
                Command::AddEvidence {
                    by: seller(),
                    evidence_id: EvidenceId::new(),
                    evidence: photo(),
                },
                at(11),
                &policy,
            )
            .expect("room for more")
            .0;
        }
        let refused = apply(
            &d,
            Command::AddEvidence {
                by: seller(),
                evidence_id: EvidenceId::new(),
                evidence: photo(),
            },
            at(11),
            &policy,
        )
        .expect_err("the fifty-first is refused");
        assert!(
            matches!(
                refused,
                DomainError::RuleViolated {
                    rule: "evidence_limit",
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn a_dispute_opens_six_days_after_shipping_and_not_before() {
        let o = order(ShippingCarrier::Dhl);
        let err = open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(7))
            .expect_err("too early");
        assert_eq!(rule_of(err.clone()), "protection_window_not_open");
        assert!(err.to_string().contains("2026-03-08T09:00:00Z"), "{err}");
        assert!(open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(8)).is_ok());
    }

    #[test]
    fn the_window_closes_by_carrier_class_and_names_the_date() {
        for (carrier, days) in [
            (ShippingCarrier::Ups, 23),
            (ShippingCarrier::SfExpress, 27),
            (ShippingCarrier::ChinaPost, 39),
        ] {
            let o = order(carrier);
            let closes = at(2) + Duration::days(days);
            let before = closes - Duration::seconds(1);
            let opened =
                open_at(&o, request(DisputeReason::Damaged, vec![photo()]), before).expect("open");
            assert_eq!(opened.dispute.protection_time_left, Duration::seconds(1));
            let err = open_at(&o, request(DisputeReason::Damaged, vec![photo()]), closes)
                .expect_err("closed");
            assert!(err.to_string().contains(&fmt_ts(closes)), "{err}");
            assert_eq!(rule_of(err), "protection_window_closed");
        }
    }

    #[test]
    fn an_unshipped_order_counts_from_the_promised_ship_date() {
        let mut o = order(ShippingCarrier::Dhl);
        o.shipped_at = None;
        o.promised_ship_by = Some(at(3));
        assert!(
            open_at(
                &o,
                request(DisputeReason::NotReceived, vec![photo()]),
                at(8)
            )
            .is_err()
        );
        assert!(
            open_at(
                &o,
                request(DisputeReason::NotReceived, vec![photo()]),
                at(9)
            )
            .is_ok()
        );
        o.promised_ship_by = None;
        let err = open_at(
            &o,
            request(DisputeReason::NotReceived, vec![photo()]),
            at(9),
        )
        .expect_err("no anchor");
        assert_eq!(rule_of(err), "order_not_shipped");
    }

    #[test]
    fn quality_reasons_need_photos_and_non_delivery_any_evidence() {
        let o = order(ShippingCarrier::Dhl);
        let mut screenshot = photo();
        screenshot.kind = EvidenceKind::TrackingScreenshot;
        let err = open_at(
            &o,
            request(DisputeReason::WrongItem, vec![screenshot.clone()]),
            at(10),
        )
        .expect_err("no photo");
        assert_eq!(rule_of(err), "evidence_required");
        let err = open_at(&o, request(DisputeReason::NotReceived, vec![]), at(10))
            .expect_err("no evidence");
        assert_eq!(rule_of(err), "evidence_required");
        assert!(
            open_at(
                &o,
                request(DisputeReason::NotReceived, vec![screenshot]),
                at(10)
            )
            .is_ok()
        );
        assert!(open_at(&o, request(DisputeReason::ChangedMind, vec![]), at(10)).is_ok());
    }

    #[test]
    fn bad_input_is_a_validation_error_naming_the_field() {
        let o = order(ShippingCarrier::Dhl);
        let mut req = request(DisputeReason::Damaged, vec![photo()]);
        req.description = "  ".into();
        assert!(
            matches!(open_at(&o, req, at(10)), Err(DomainError::Validation { field, .. }) if field == "description")
        );
        let mut req = request(DisputeReason::Damaged, vec![photo()]);
        req.resolution_type = ResolutionType::PartialRefund;
        req.amount = Some(usd(8001));
        assert!(
            matches!(open_at(&o, req, at(10)), Err(DomainError::Validation { field, reason }) if field == "requested_resolution.amount" && reason.contains("USD 80.00"))
        );
        let mut bad = photo();
        bad.content_type = "application/x-msdownload".into();
        assert!(
            matches!(open_at(&o, request(DisputeReason::Damaged, vec![bad]), at(10)), Err(DomainError::Validation { field, .. }) if field == "evidence[0].content_type")
        );
        let mut big = photo();
        big.size_bytes = MAX_EVIDENCE_BYTES + 1;
        assert!(
            matches!(open_at(&o, request(DisputeReason::Damaged, vec![big]), at(10)), Err(DomainError::Validation { field, .. }) if field == "evidence[0].size_bytes")
        );
    }

    #[test]
    fn only_the_buyer_of_the_order_may_open_and_only_once_at_a_time() {
        let o = order(ShippingCarrier::Dhl);
        let policy = Policy::classic();
        let err = open_dispute(
            &o,
            &ProtectionClock::default(),
            &OpeningContext::default(),
            &Actor::new("b-2", Role::Buyer),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(10),
            &policy,
        )
        .expect_err("not theirs");
        assert_eq!(rule_of(err), "not_the_buyers_order");
        let context = OpeningContext {
            active_dispute: Some((DisputeId::new(), DisputeState::Negotiating)),
            ..Default::default()
        };
        let err = open_dispute(
            &o,
            &ProtectionClock::default(),
            &context,
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(10),
            &policy,
        )
        .expect_err("second");
        assert_eq!(rule_of(err), "one_active_dispute_per_order");
    }

    #[test]
    fn withdrawing_resumes_the_clock_with_the_time_left_and_allows_one_reopen() {
        let o = order(ShippingCarrier::Dhl); // closes at day 25
        let policy = Policy::classic();
        let opened =
            open_at(&o, request(DisputeReason::Damaged, vec![photo()]), at(10)).expect("open");
        assert_eq!(opened.clock.paused_time_left, Some(Duration::days(15)));
        assert_eq!(
            protection_window(&o, &opened.clock, &policy).and_then(|w| w.closes_at),
            None
        );
        let (cancelled, _) = apply(
            &opened.dispute,
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(20),
            &policy,
        )
        .expect("withdraw");
        assert_eq!(cancelled.state, DisputeState::Cancelled);
        let clock = resume_protection(&opened.clock, &cancelled, at(20));
        assert_eq!(
            protection_window(&o, &clock, &policy).and_then(|w| w.closes_at),
            Some(at(20) + Duration::days(15))
        );
        // Reopening within the resumed window works once.
        let reopened = open_dispute(
            &o,
            &clock,
            &OpeningContext::default(),
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(30),
            &policy,
        )
        .expect("reopen");
        assert!(reopened.dispute.reopened);
        let (cancelled, _) = apply(
            &reopened.dispute,
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(31),
            &policy,
        )
        .expect("withdraw");
        let clock = resume_protection(&reopened.clock, &cancelled, at(31));
        let err = open_dispute(
            &o,
            &clock,
            &OpeningContext::default(),
            &buyer(),
            request(DisputeReason::Damaged, vec![photo()]),
            NewIds::fresh(1),
            at(31),
            &policy,
        )
        .expect_err("twice");
        assert_eq!(rule_of(err), "reopen_allowance_used");
    }

    #[test]
    fn seller_counter_then_buyer_accepts_resolves_with_a_partial_refund() {
        let policy = Policy::classic();
        let d = damaged();
        let (d, _) = apply(
            &d,
            offer(seller(), ResolutionType::PartialRefund, Some(usd(3000))),
            at(11),
            &policy,
        )
        .expect("counter");
        assert_eq!(
            (d.state, d.awaiting),
            (DisputeState::Negotiating, Awaiting::Buyer)
        );
        assert_eq!(d.offers[0].status, OfferStatus::Superseded);
        let id = d.offers[1].id;
        let (d, events) = apply(
            &d,
            Command::AcceptOffer {
                by: buyer(),
                offer_id: id,
            },
            at(12),
            &policy,
        )
        .expect("accept");
        assert_eq!(d.state, DisputeState::Resolved);
        let outcome = d.outcome.clone().expect("outcome");
        assert_eq!(
            (outcome.ruling, outcome.amount),
            (RulingOutcome::RefundPartial, Some(usd(3000)))
        );
        let refund = events.iter().find_map(|e| match &e.payload {
            EventPayload::Refund(r) => Some(*r),
            _ => None,
        });
        assert_eq!(
            refund,
            Some(RefundRequest {
                amount: usd(3000),
                release: RefundRelease::Immediate
            })
        );
        assert_eq!(d.version, 3);
    }

    #[test]
    fn a_party_cannot_accept_its_own_offer_and_a_reject_needs_a_reason() {
        let policy = Policy::classic();
        let d = damaged();
        let id = d.offers[0].id;
        assert_eq!(
            rule_of(
                apply(
                    &d,
                    Command::AcceptOffer {
                        by: buyer(),
                        offer_id: id
                    },
                    at(11),
                    &policy
                )
                .expect_err("own")
            ),
            "own_offer"
        );
        assert!(
            matches!(apply(&d, Command::RejectOffer { by: seller(), offer_id: id, reason: " ".into() }, at(11), &policy), Err(DomainError::Validation { field, .. }) if field == "reason")
        );
        assert_eq!(
            rule_of(
                apply(
                    &d,
                    Command::AcceptOffer {
                        by: Actor::new("s-2", Role::Seller),
                        offer_id: id
                    },
                    at(11),
                    &policy
                )
                .expect_err("stranger")
            ),
            "not_a_party"
        );
    }

    #[test]
    fn seller_silence_past_the_window_grants_the_buyers_request() {
        let policy = Policy::classic();
        let d = damaged();
        assert_eq!(d.deadline(), Some((DeadlineKind::SellerResponse, at(25))));
        assert_eq!(
            rule_of(apply(&d, Command::SellerResponseExpired, at(24), &policy).expect_err("early")),
            "deadline_not_due"
        );
        let (d, events) =
            apply(&d, Command::SellerResponseExpired, at(25), &policy).expect("expired");
        assert_eq!(d.state, DisputeState::Resolved);
        let outcome = d.outcome.expect("outcome");
        assert_eq!(
            (outcome.ruling, outcome.source, outcome.amount),
            (
                RulingOutcome::RefundFull,
                OutcomeSource::SellerSilent,
                Some(usd(8000))
            )
        );
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::SellerResponseExpired,
                EventType::RefundRequested,
                EventType::Resolved
            ]
        );
    }

    #[test]
    fn reject_escalate_and_a_ruling_with_return_authorises_the_return() {
        let policy = Policy::classic();
        let d = damaged();
        let err = apply(
            &d,
            Command::Escalate {
                by: buyer(),
                reason: String::new(),
            },
            at(11),
            &policy,
        )
        .expect_err("too soon");
        assert_eq!(
            err.to_string(),
            "cannot escalate in state OPEN; allowed: NEGOTIATING"
        );
        let id = d.offers[0].id;
        let (d, _) = apply(
            &d,
            Command::RejectOffer {
                by: seller(),
                offer_id: id,
                reason: "works for me".into(),
            },
            at(11),
            &policy,
        )
        .expect("reject");
        let (d, _) = apply(
            &d,
            Command::Escalate {
                by: buyer(),
                reason: "no".into(),
            },
            at(12),
            &policy,
        )
        .expect("escalate");
        assert_eq!(
            (d.state, d.awaiting, d.respond_by),
            (DisputeState::Escalated, Awaiting::Arbiter, Some(at(22)))
        );
        let ruling = Ruling {
            outcome: RulingOutcome::RefundFull,
            amount: None,
            return_required: true,
            rationale: "send it back".into(),
            postage_payer: None,
        };
        let (d, events) = apply(
            &d,
            Command::Rule {
                by: arbiter(),
                ruling,
            },
            at(13),
            &policy,
        )
        .expect("rule");
        assert_eq!(
            (d.state, d.awaiting),
            (DisputeState::AwaitingReturn, Awaiting::Buyer)
        );
        assert_eq!(d.deadline(), Some((DeadlineKind::ReturnShipBy, at(20))));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::Ruled,
                EventType::ReturnAuthorised,
                EventType::RefundRequested
            ]
        );
        // Shipped, delivered, inspected: resolved.
        let update = |kind| Command::ReturnEvent {
            update: ReturnUpdate {
                label_id: "l-1".into(),
                kind,
                tracking_number: String::new(),
                notes: String::new(),
                postage: None,
            },
        };
        let (d, _) = apply(
            &d,
            update(ReturnEventType::AcceptedByCarrier),
            at(14),
            &policy,
        )
        .expect("shipped");
        assert_eq!(d.deadline(), None);
        let (d, _) =
            apply(&d, update(ReturnEventType::Delivered), at(16), &policy).expect("delivered");
        let (done, _) = apply(
            &d,
            update(ReturnEventType::InspectionAccepted),
            at(17),
            &policy,
        )
        .expect("inspected");
        assert_eq!(done.state, DisputeState::Resolved);
        let (review, _) = apply(
            &d,
            update(ReturnEventType::InspectionWrongOrEmpty),
            at(17),
            &policy,
        )
        .expect("inspected");
        assert_eq!(
            (review.state, review.awaiting),
            (DisputeState::Escalated, Awaiting::Arbiter)
        );
        // Refunds cancels the held refund on the failed inspection, so none of it is paid and
        // a new ruling without return asks again for the full total.
        assert_eq!(review.refund_requested, usd(0));
        let ruling = Ruling {
            outcome: RulingOutcome::RefundFull,
            amount: None,
            return_required: false,
            rationale: "keep it".into(),
            postage_payer: None,
        };
        let (done, events) = apply(
            &review,
            Command::Rule {
                by: arbiter(),
                ruling,
            },
            at(18),
            &policy,
        )
        .expect("re-rule");
        assert_eq!(done.state, DisputeState::Resolved);
        assert!(events.iter().any(|e| e.payload
            == EventPayload::Refund(RefundRequest {
                amount: usd(8000),
                release: RefundRelease::Immediate
            })));
    }

    #[test]
    fn a_return_not_shipped_by_its_deadline_closes_for_the_seller() {
        let policy = Policy::classic();
        let d = damaged();
        let (d, _) = apply(
            &d,
            offer(seller(), ResolutionType::ReturnAndRefund, None),
            at(11),
            &policy,
        )
        .expect("counter");
        let id = d.offers[1].id;
        let (d, _) = apply(
            &d,
            Command::AcceptOffer {
                by: buyer(),
                offer_id: id,
            },
            at(12),
            &policy,
        )
        .expect("accept");
        assert_eq!(d.state, DisputeState::AwaitingReturn);
        assert!(
            d.refund_requested.is_positive(),
            "a refund is held for the return"
        );
        let ship_by = d.respond_by.expect("ship-by deadline");
        let (d, events) =
            apply(&d, Command::ReturnShipByExpired, at(19), &policy).expect("expired");
        // Refunds is told to cancel the held refund, which then no longer counts as paid.
        let told: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.payload {
                EventPayload::ReturnNotShipped(r) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(told, [ReturnNotShipped { ship_by }]);
        assert!(!d.refund_requested.is_positive());
        let outcome = d.outcome.expect("outcome");
        assert_eq!(
            (d.state, outcome.ruling, outcome.source),
            (
                DisputeState::Resolved,
                RulingOutcome::SellerFavor,
                OutcomeSource::ReturnNotShipped
            )
        );
    }

    #[test]
    fn a_free_return_within_fifteen_days_of_delivery_is_authorised_at_once() {
        let mut o = order(ShippingCarrier::Dhl);
        o.free_return = true;
        let mut req = request(DisputeReason::ChangedMind, vec![]);
        req.kind = DisputeKind::ReturnAndRefund;
        let opened = open_at(&o, req.clone(), at(20)).expect("open");
        assert_eq!(opened.dispute.state, DisputeState::AwaitingReturn);
        let outcome = opened.dispute.outcome.clone().expect("outcome");
        assert_eq!(
            (outcome.source, outcome.postage_payer),
            (OutcomeSource::FreeReturn, Some(PostagePayer::Platform))
        );
        assert!(
            opened
                .events
                .iter()
                .any(|e| e.kind == EventType::ReturnAuthorised)
        );
        // Day 21 is 16 days after delivery: a paid return, waiting for the seller.
        let late = open_at(&o, req, at(21)).expect("open");
        assert_eq!(late.dispute.state, DisputeState::Open);
    }

    #[test]
    fn cancelling_an_order_is_possible_only_before_shipment_within_seven_days() {
        let policy = Policy::classic();
        let mut o = order(ShippingCarrier::Dhl);
        assert_eq!(
            rule_of(check_cancel_order(&o, at(2), &policy).expect_err("shipped")),
            "order_already_shipped"
        );
        o.shipped_at = None;
        assert!(check_cancel_order(&o, at(8), &policy).is_ok());
        assert_eq!(
            rule_of(check_cancel_order(&o, at(9), &policy).expect_err("late")),
            "cancellation_window_closed"
        );
    }

    #[test]
    fn the_recommendation_follows_the_guidelines_with_reasons() {
        let policy = Policy::classic();
        let fx = FxTable::default();
        let mut screenshot = photo();
        screenshot.kind = EvidenceKind::TrackingScreenshot;
        let not_received = open_at(
            &order(ShippingCarrier::Dhl),
            request(DisputeReason::NotReceived, vec![screenshot]),
            at(10),
        )
        .expect("open")
        .dispute;
        let r = recommend_ruling(&not_received, &policy, &fx).expect("recommend");
        assert_eq!(
            (r.outcome, r.return_required),
            (RulingOutcome::RefundFull, false)
        );
        assert!(r.reasons[0].starts_with("not received"));

        let changed = open_at(
            &order(ShippingCarrier::Dhl),
            request(DisputeReason::ChangedMind, vec![]),
            at(10),
        )
        .expect("open")
        .dispute;
        assert_eq!(
            recommend_ruling(&changed, &policy, &fx).expect("r").outcome,
            RulingOutcome::SellerFavor
        );

        // Seller contests a USD 80 order with evidence: return required.
        let d = damaged();
        let (d, _) = apply(
            &d,
            Command::AddEvidence {
                by: seller(),
                evidence_id: EvidenceId::new(),
                evidence: photo(),
            },
            at(11),
            &policy,
        )
        .expect("evidence");
        let id = d.offers[0].id;
        let (mut d, _) = apply(
            &d,
            Command::RejectOffer {
                by: seller(),
                offer_id: id,
                reason: "fine when shipped".into(),
            },
            at(11),
            &policy,
        )
        .expect("reject");
        let r = recommend_ruling(&d, &policy, &fx).expect("recommend");
        assert!(r.return_required, "{r:?}");
        assert_eq!(r.reasons.len(), 2);
        assert_eq!(r.postage_payer, Some(PostagePayer::Seller));
        // ...unless return postage costs as much as the item.
        d.return_postage = Some(usd(9000));
        let r = recommend_ruling(&d, &policy, &fx).expect("recommend");
        assert!(!r.return_required);
        assert_eq!(r.reasons.len(), 3);
    }

    #[test]
    fn terminal_states_refuse_every_action_naming_the_state() {
        let policy = Policy::classic();
        let (d, _) = apply(
            &damaged(),
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(11),
            &policy,
        )
        .expect("cancel");
        let err = apply(
            &d,
            offer(seller(), ResolutionType::FullRefund, None),
            at(12),
            &policy,
        )
        .expect_err("terminal");
        assert_eq!(
            err.to_string(),
            "cannot make an offer in state CANCELLED; allowed: OPEN, NEGOTIATING"
        );
    }

    #[test]
    fn every_transition_lands_in_the_state_the_table_gives() {
        use DisputeState::*;
        let policy = Policy::classic();
        let open = damaged();
        let first = open.offers[0].id;
        let reject = |by: Actor, offer_id| Command::RejectOffer {
            by,
            offer_id,
            reason: "no".into(),
        };
        let (negotiating, _) =
            apply(&open, reject(seller(), first), at(11), &policy).expect("reject");
        let (escalated, _) = apply(
            &negotiating,
            Command::Escalate {
                by: buyer(),
                reason: String::new(),
            },
            at(12),
            &policy,
        )
        .expect("escalate");
        let rule = |return_required| Command::Rule {
            by: arbiter(),
            ruling: Ruling {
                outcome: RulingOutcome::RefundFull,
                amount: None,
                return_required,
                rationale: "r".into(),
                postage_payer: None,
            },
        };
        let (awaiting, _) = apply(&escalated, rule(true), at(13), &policy).expect("rule");
        let withdraw = || Command::Cancel {
            by: buyer(),
            reason: String::new(),
        };
        let inspected = |kind| Command::ReturnEvent {
            update: ReturnUpdate {
                label_id: "l".into(),
                kind,
                tracking_number: String::new(),
                notes: String::new(),
                postage: None,
            },
        };
        let table: Vec<(&str, &Dispute, Command, Timestamp, DisputeState)> = vec![
            (
                "seller counters",
                &open,
                offer(seller(), ResolutionType::PartialRefund, Some(usd(100))),
                at(11),
                Negotiating,
            ),
            (
                "buyer revises the request",
                &open,
                offer(buyer(), ResolutionType::PartialRefund, Some(usd(100))),
                at(11),
                Open,
            ),
            (
                "seller accepts the request",
                &open,
                Command::AcceptOffer {
                    by: seller(),
                    offer_id: first,
                },
                at(11),
                Resolved,
            ),
            (
                "seller rejects",
                &open,
                reject(seller(), first),
                at(11),
                Negotiating,
            ),
            (
                "seller silent",
                &open,
                Command::SellerResponseExpired,
                at(25),
                Resolved,
            ),
            ("withdrawn while open", &open, withdraw(), at(11), Cancelled),
            (
                "buyer escalates",
                &negotiating,
                Command::Escalate {
                    by: buyer(),
                    reason: String::new(),
                },
                at(12),
                Escalated,
            ),
            (
                "buyer counters",
                &negotiating,
                offer(buyer(), ResolutionType::ReturnAndRefund, None),
                at(12),
                Negotiating,
            ),
            (
                "withdrawn while negotiating",
                &negotiating,
                withdraw(),
                at(12),
                Cancelled,
            ),
            (
                "ruling without return",
                &escalated,
                rule(false),
                at(13),
                Resolved,
            ),
            (
                "ruling with return",
                &escalated,
                rule(true),
                at(13),
                AwaitingReturn,
            ),
            (
                "withdrawn in review",
                &escalated,
                withdraw(),
                at(13),
                Cancelled,
            ),
            (
                "return not shipped in time",
                &awaiting,
                Command::ReturnShipByExpired,
                at(20),
                Resolved,
            ),
            (
                "inspection passed",
                &awaiting,
                inspected(ReturnEventType::InspectionDamagedAsClaimed),
                at(18),
                Resolved,
            ),
            (
                "inspection failed",
                &awaiting,
                inspected(ReturnEventType::InspectionDamagedInTransit),
                at(18),
                Escalated,
            ),
        ];
        for (name, from, command, now, expected) in table {
            let (next, events) =
                apply(from, command, now, &policy).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(next.state, expected, "{name}");
            assert!(
                events
                    .iter()
                    .all(|e| e.from == Some(from.state) && e.to == expected),
                "{name}"
            );
        }
    }

    #[test]
    fn disputes_round_trip_through_json() {
        let d = damaged();
        let text = serde_json::to_string(&d).expect("serialise");
        let back: Dispute = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, d);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One abstract move; turned into a command that fits the current dispute.
        fn command_for(d: &Dispute, step: u8, amount: i64) -> Command {
            let pending = d.pending_offer().map(|o| (o.id, o.made_by.role));
            let answerer = |role| {
                if role == Role::Buyer {
                    seller()
                } else {
                    buyer()
                }
            };
            match step % 12 {
                0 => offer(seller(), ResolutionType::PartialRefund, Some(usd(amount))),
                1 => offer(buyer(), ResolutionType::ReturnAndRefund, None),
                2 => match pending {
                    Some((id, role)) => Command::AcceptOffer {
                        by: answerer(role),
                        offer_id: id,
                    },
                    None => Command::SellerResponseExpired,
                },
                3 => match pending {
                    Some((id, role)) => Command::RejectOffer {
                        by: answerer(role),
                        offer_id: id,
                        reason: "no".into(),
                    },
                    None => Command::ReturnShipByExpired,
                },
                4 => Command::Escalate {
                    by: buyer(),
                    reason: String::new(),
                },
                5 => Command::Rule {
                    by: arbiter(),
                    ruling: Ruling {
                        outcome: RulingOutcome::RefundPartial,
                        amount: Some(usd(amount)),
                        return_required: amount % 2 == 0,
                        rationale: "r".into(),
                        postage_payer: None,
                    },
                },
                6 => Command::Cancel {
                    by: buyer(),
                    reason: String::new(),
                },
                7 => Command::SellerResponseExpired,
                8 => Command::ReturnShipByExpired,
                9 => Command::SendMessage {
                    by: seller(),
                    body: "hi".into(),
                    evidence_ids: vec![],
                },
                10 => Command::ReturnEvent {
                    update: ReturnUpdate {
                        label_id: "l".into(),
                        kind: ReturnEventType::ALL[(amount as usize) % ReturnEventType::ALL.len()],
                        tracking_number: String::new(),
                        notes: String::new(),
                        postage: None,
                    },
                },
                _ => offer(seller(), ResolutionType::FullRefund, None),
            }
        }

        fn check_invariants(d: &Dispute) {
            let pending = d
                .offers
                .iter()
                .filter(|o| o.status == OfferStatus::Pending)
                .count();
            assert!(pending <= 1, "at most one pending offer");
            for (i, o) in d.offers.iter().enumerate() {
                assert_eq!(o.number as usize, i + 1, "offers are numbered from one");
            }
            assert!(
                d.refund_requested.minor_units <= d.order_total.minor_units,
                "never more than paid"
            );
            match d.state {
                DisputeState::Resolved => {
                    assert!(d.outcome.is_some());
                    assert!(d.closed_at.is_some());
                }
                DisputeState::Cancelled => assert!(d.closed_at.is_some()),
                DisputeState::AwaitingReturn => {
                    assert!(d.outcome.as_ref().is_some_and(|o| o.return_required));
                }
                DisputeState::Escalated => assert!(d.escalated_at.is_some()),
                _ => assert!(d.closed_at.is_none()),
            }
            if d.state.is_terminal() {
                assert_eq!(d.awaiting, Awaiting::Nobody);
                assert_eq!(d.respond_by, None);
                assert_eq!(pending, 0);
                assert_eq!(d.deadline(), None);
            }
            if d.state == DisputeState::Escalated {
                assert_eq!(pending, 0, "escalation closes pending offers");
            }
        }

        proptest! {
            #[test]
            fn every_sequence_of_commands_keeps_the_invariants(
                steps in proptest::collection::vec((0u8..12, 1i64..=8000, 0i64..40), 0..30)
            ) {
                let policy = Policy::classic();
                let mut d = damaged();
                let mut now = at(10);
                for (step, amount, hours) in steps {
                    now += Duration::hours(hours * 12);
                    let command = command_for(&d, step, amount);
                    let before = d.clone();
                    match apply(&d, command, now, &policy) {
                        Ok((next, events)) => {
                            prop_assert_eq!(next.version, before.version + 1);
                            prop_assert!(!events.is_empty(), "every transition writes history");
                            prop_assert!(events.iter().all(|e| e.to == next.state && e.from == Some(before.state)));
                            if before.state.is_terminal() {
                                prop_assert_eq!(&next.state, &before.state, "terminal states stay");
                            }
                            d = next;
                        }
                        Err(_) => prop_assert_eq!(&d, &before),
                    }
                    check_invariants(&d);
                }
            }
        }
    }
}
