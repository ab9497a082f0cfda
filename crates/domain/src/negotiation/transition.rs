//! A transition in progress, shared by every command: the next dispute and the history it
//! appends, and settling a dispute with an outcome (resolved at once, or awaiting a required
//! return with the refund held for its inspection), never asking for more than was paid.

use super::events::{DisputeEvent, EventPayload, RefundRequest, ReturnAuthorisation};
use super::parties::Actor;
use super::record::{Dispute, Outcome};
use super::text::fmt_ts;
use super::vocabulary::{
    Awaiting, DisputeState, EventType, OfferStatus, OutcomeSource, RefundRelease,
};
use crate::dispute::{PostagePayer, RulingOutcome};
use crate::error::DomainError;
use crate::ids::{EventId, OfferId};
use crate::money::Money;
use crate::policy::Policy;
use crate::time::Timestamp;

/// A transition in progress: the next dispute and the history it writes.
pub(super) struct Transition {
    pub(super) from: DisputeState,
    pub(super) next: Dispute,
    pub(super) events: Vec<DisputeEvent>,
    pub(super) actor: Actor,
    pub(super) now: Timestamp,
}

/// An outcome to settle the dispute with.
pub(super) struct Settlement {
    pub(super) ruling: RulingOutcome,
    pub(super) amount: Option<Money>,
    pub(super) return_required: bool,
    pub(super) postage_payer: Option<PostagePayer>,
    pub(super) rationale: String,
    pub(super) decided_by: Actor,
    pub(super) source: OutcomeSource,
    pub(super) accepted_offer: Option<OfferId>,
}

impl Transition {
    pub(super) fn new(dispute: &Dispute, actor: Actor, now: Timestamp) -> Self {
        Transition {
            from: dispute.state,
            next: dispute.clone(),
            events: Vec::new(),
            actor,
            now,
        }
    }

    /// Appends a history entry by this transition's actor at its time.
    pub(super) fn push(&mut self, kind: EventType, note: impl Into<String>, payload: EventPayload) {
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
    pub(super) fn close_pending(&mut self) {
        for offer in &mut self.next.offers {
            if offer.status == OfferStatus::Pending {
                offer.status = OfferStatus::Closed;
                offer.answered_at = Some(self.now);
            }
        }
    }

    /// Ends the negotiation with an outcome: resolved now, or awaiting a required return
    /// (return authorised, refund requested on inspection).
    pub(super) fn settle(&mut self, s: Settlement, policy: &Policy) -> Result<(), DomainError> {
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
    pub(super) fn drop_held_refund(&mut self) {
        self.next.refund_requested = Money::zero(self.next.order_total.currency);
    }

    /// The next dispute and its history, every entry landing in the new state; the version
    /// stays (a dispute being opened is written at version 1).
    pub(super) fn finish_without_version_bump(mut self) -> (Dispute, Vec<DisputeEvent>) {
        let to = self.next.state;
        for e in &mut self.events {
            e.to = to;
        }
        self.next.updated_at = self.now;
        (self.next, self.events)
    }

    /// The next dispute at version + 1 and its history.
    pub(super) fn finish(mut self) -> (Dispute, Vec<DisputeEvent>) {
        self.next.version += 1;
        self.finish_without_version_bump()
    }
}
