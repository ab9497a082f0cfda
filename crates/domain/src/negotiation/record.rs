//! The dispute record: the dispute as stored, its offers, its outcome and its messages.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::evidence::Evidence;
use super::parties::Actor;
use super::resolution::Resolution;
use super::vocabulary::{Awaiting, DeadlineKind, DisputeState, OfferStatus, OutcomeSource};
use crate::dispute::{DisputeKind, DisputeReason, PostagePayer, Role, RulingOutcome};
use crate::ids::{DisputeId, EventId, EvidenceId, OfferId, OrderId, PartyId};
use crate::money::Money;
use crate::time::Timestamp;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::negotiation::fixtures::*;

    #[test]
    fn disputes_round_trip_through_json() {
        let d = damaged();
        let text = serde_json::to_string(&d).expect("serialise");
        let back: Dispute = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, d);
    }
}
