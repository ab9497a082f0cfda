//! The dispute vocabulary: states, whose turn it is, offer and outcome kinds, evidence kinds,
//! return progress, refund release, self-acting deadlines and history entry types.
//!
//! Each is a `code_enum!`, so the stored code, the wire enum (`crates/proto`) and error
//! messages all spell a value the same way.

use crate::macros::code_enum;

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
