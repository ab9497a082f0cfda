//! Message builders of the disputes service: domain values as protobuf messages, with the
//! toolkit's conversions (`WireEnum::to_wire`, `Money` into the wire money, timestamps).
//! Requests are parsed with `returns_proto::convert` where the handlers read them.

use returns_domain::negotiation as n;
use returns_domain::policy::Policy;
use returns_domain::time::Timestamp;
use returns_proto::common::v1 as common;
use returns_proto::convert::{WireEnum, duration_to_proto, timestamp_to_proto};
use returns_proto::disputes::v1 as pb;

use crate::store::OrderRecord;

fn ts(at: Timestamp) -> Option<prost_types::Timestamp> {
    Some(timestamp_to_proto(at))
}

fn opt_ts(at: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    at.map(timestamp_to_proto)
}

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub fn actor(actor: &n::Actor) -> common::Actor {
    common::Actor {
        id: actor.id.clone(),
        role: actor.role.to_wire(),
    }
}

pub fn evidence(e: &n::Evidence) -> common::EvidenceRef {
    common::EvidenceRef {
        evidence_id: e.id.to_string(),
        kind: e.kind.to_wire(),
        content_type: e.content_type.clone(),
        size_bytes: e.size_bytes,
        sha256: e.sha256.clone(),
        uri: e.uri.clone(),
        uploaded_by: Some(actor(&e.uploaded_by)),
        file_name: e.file_name.clone(),
        uploaded_at: ts(e.uploaded_at),
    }
}

pub fn offer(o: &n::Offer) -> pb::Offer {
    pb::Offer {
        offer_id: o.id.to_string(),
        number: count(o.number),
        made_by: Some(actor(&o.made_by)),
        r#type: o.resolution.kind.to_wire(),
        amount: o.resolution.amount.map(Into::into),
        note: o.note.clone(),
        status: o.status.to_wire(),
        created_at: ts(o.created_at),
        answered_at: opt_ts(o.answered_at),
        rejection_reason: o.rejection_reason.clone(),
    }
}

pub fn outcome(o: &n::Outcome) -> pb::Outcome {
    pb::Outcome {
        r#type: o.ruling.to_wire(),
        amount: o.amount.map(Into::into),
        return_required: o.return_required,
        rationale: o.rationale.clone(),
        decided_by: Some(actor(&o.decided_by)),
        decided_at: ts(o.decided_at),
        postage_payer: o.postage_payer.map_or(0, WireEnum::to_wire),
        source: o.source.to_wire(),
        accepted_offer_id: o
            .accepted_offer
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

pub fn message(m: &n::Message, dispute_id: &str) -> pb::Message {
    pb::Message {
        message_id: m.id.to_string(),
        dispute_id: dispute_id.to_owned(),
        author: Some(actor(&m.author)),
        body: m.body.clone(),
        evidence_ids: m.evidence_ids.iter().map(|id| id.to_string()).collect(),
        sent_at: ts(m.sent_at),
    }
}

pub fn dispute(d: &n::Dispute) -> pb::Dispute {
    pb::Dispute {
        dispute_id: d.id.to_string(),
        order_id: d.order_id.to_string(),
        buyer_id: d.buyer_id.to_string(),
        seller_id: d.seller_id.to_string(),
        kind: d.kind.to_wire(),
        reason: d.reason.to_wire(),
        state: d.state.to_wire(),
        awaiting: d.awaiting.to_wire(),
        respond_by: opt_ts(d.respond_by),
        offers: d.offers.iter().map(offer).collect(),
        evidence: d.evidence.iter().map(evidence).collect(),
        outcome: d.outcome.as_ref().map(outcome),
        created_at: ts(d.created_at),
        updated_at: ts(d.updated_at),
        description: d.description.clone(),
        requested_resolution: Some(pb::RequestedResolution {
            r#type: d.requested.kind.to_wire(),
            amount: d.requested.amount.map(Into::into),
        }),
        version: d.version,
        message_count: count(d.message_count),
        order_total: Some(d.order_total.into()),
        escalated_at: opt_ts(d.escalated_at),
        closed_at: opt_ts(d.closed_at),
        return_label_id: d.return_label_id.clone().unwrap_or_default(),
        protection_time_left: Some(duration_to_proto(d.protection_time_left)),
        reopened: d.reopened,
    }
}

/// A history entry; `sequence` is its place in the dispute's history.
pub fn event(e: &n::DisputeEvent, dispute_id: &str, sequence: i64) -> pb::DisputeEvent {
    use pb::dispute_event::Payload;
    let payload = match &e.payload {
        n::EventPayload::Offer(o) => Some(Payload::Offer(offer(o))),
        n::EventPayload::Evidence(ev) => Some(Payload::Evidence(evidence(ev))),
        n::EventPayload::Message(m) => Some(Payload::Message(message(m, dispute_id))),
        n::EventPayload::Outcome(o) => Some(Payload::Outcome(outcome(o))),
        n::EventPayload::ReturnUpdate(u) => Some(Payload::ReturnUpdate(pb::ReturnUpdate {
            label_id: u.label_id.clone(),
            r#type: u.kind.to_wire(),
            tracking_number: u.tracking_number.clone(),
            notes: u.notes.clone(),
        })),
        // Refund requests, return authorisations and the not-shipped notice are summarised in
        // the note.
        n::EventPayload::Refund(_)
        | n::EventPayload::ReturnAuthorisation(_)
        | n::EventPayload::ReturnNotShipped(_)
        | n::EventPayload::None => None,
    };
    pb::DisputeEvent {
        event_id: e.id.to_string(),
        dispute_id: dispute_id.to_owned(),
        sequence,
        r#type: e.kind.to_wire(),
        actor: Some(actor(&e.actor)),
        occurred_at: ts(e.at),
        from_state: e.from.map_or(0, WireEnum::to_wire),
        to_state: e.to.to_wire(),
        note: e.note.clone(),
        payload,
    }
}

/// An order with the protection window its facts and clock give under `policy`.
pub fn order(record: &OrderRecord, policy: &Policy) -> pb::Order {
    let o = &record.facts;
    let clock = &record.clock;
    let window = n::protection_window(o, clock, policy);
    pb::Order {
        order_id: o.order_id.to_string(),
        buyer_id: o.buyer_id.to_string(),
        seller_id: o.seller_id.to_string(),
        total: Some(o.total.into()),
        payment_method: o.payment_method.to_wire(),
        buyer_tier: o.buyer_tier.to_wire(),
        carrier: o.carrier.code().to_owned(),
        placed_at: ts(o.placed_at),
        shipped_at: opt_ts(o.shipped_at),
        promised_ship_by: opt_ts(o.promised_ship_by),
        delivered_at: opt_ts(o.delivered_at),
        destination_country: o.destination_country.clone(),
        free_return: o.free_return,
        cancelled_at: opt_ts(o.cancelled_at),
        dispute_window_opens_at: window.map(|w| timestamp_to_proto(w.opens_at)),
        dispute_window_closes_at: window.and_then(|w| w.closes_at).map(timestamp_to_proto),
        protection_time_left: clock.paused_time_left.map(duration_to_proto),
        created_at: ts(record.created_at),
        updated_at: ts(record.updated_at),
    }
}

/// A ruling recommendation.
pub fn recommendation(r: n::Recommendation) -> pb::RulingRecommendation {
    pb::RulingRecommendation {
        outcome: r.outcome.to_wire(),
        return_required: r.return_required,
        reasons: r.reasons,
        amount: r.amount.map(Into::into),
        postage_payer: r.postage_payer.map_or(0, WireEnum::to_wire),
    }
}
