//! Test fixtures shared by the negotiation tests: an order, the parties, evidence, an opened
//! dispute and the small helpers every test of the state machine reads with.

use chrono::TimeZone;

use super::*;
use crate::carrier::ShippingCarrier;
use crate::dispute::{BuyerTier, DisputeKind, DisputeReason, PaymentMethod, ResolutionType, Role};
use crate::error::DomainError;
use crate::ids::{OfferId, OrderId, PartyId};
use crate::money::{CurrencyCode, Money};
use crate::policy::Policy;
use crate::time::Timestamp;

/// Day `day` of March 2026 at 09:00 UTC.
pub(super) fn at(day: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 3, day, 9, 0, 0)
        .single()
        .expect("valid date")
}

pub(super) fn usd(minor: i64) -> Money {
    Money::new(CurrencyCode::USD, minor)
}

/// A USD 80 card order placed on day 1, shipped on day 2 and delivered on day 5.
pub(super) fn order(carrier: ShippingCarrier) -> OrderFacts {
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

pub(super) fn buyer() -> Actor {
    Actor::new("b-1", Role::Buyer)
}
pub(super) fn seller() -> Actor {
    Actor::new("s-1", Role::Seller)
}
pub(super) fn arbiter() -> Actor {
    Actor::new("a-1", Role::Arbiter)
}

/// A valid photo; tests change its kind or size to make other evidence.
pub(super) fn photo() -> NewEvidence {
    NewEvidence {
        kind: EvidenceKind::Photo,
        content_type: "image/jpeg".into(),
        size_bytes: 1000,
        sha256: "a".repeat(64),
        uri: "https://example.test/p.jpg".into(),
        file_name: "p.jpg".into(),
    }
}

/// A refund-only request for the full total, with a description.
pub(super) fn request(reason: DisputeReason, evidence: Vec<NewEvidence>) -> OpenRequest {
    OpenRequest {
        kind: DisputeKind::RefundOnly,
        reason,
        resolution_type: ResolutionType::FullRefund,
        amount: None,
        description: "it broke".into(),
        evidence,
    }
}

/// Opens `req` on `order` as its buyer, with a fresh clock and no other disputes.
pub(super) fn open_at(
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

/// A damaged-item dispute with a photo, opened on day 10 on a DHL order (protection would
/// close on day 25; the seller must answer by day 25).
pub(super) fn damaged() -> Dispute {
    open_at(
        &order(ShippingCarrier::Dhl),
        request(DisputeReason::Damaged, vec![photo()]),
        at(10),
    )
    .expect("opens")
    .dispute
}

/// The rule a refusal names; panics on any other error.
pub(super) fn rule_of(err: DomainError) -> &'static str {
    match err {
        DomainError::RuleViolated { rule, .. } => rule,
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

/// A new offer by `by`, with a fresh id and no note.
pub(super) fn offer(by: Actor, kind: ResolutionType, amount: Option<Money>) -> Command {
    Command::MakeOffer {
        by,
        offer_id: OfferId::new(),
        kind,
        amount,
        note: String::new(),
    }
}
