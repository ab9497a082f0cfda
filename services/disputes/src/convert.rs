//! Wire <-> domain conversions for the disputes service: requests are validated here into
//! domain types (INVALID_ARGUMENT naming the field), domain values become protobuf messages.

use returns_domain::carrier::ShippingCarrier;
use returns_domain::dispute::{
    BuyerTier, DisputeKind, DisputeReason, PaymentMethod, PostagePayer, ResolutionType, Role,
    RulingOutcome,
};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::negotiation::{
    self as n, Awaiting, DisputeState, EventType, EvidenceKind, OfferStatus, OutcomeSource,
    ReturnEventType,
};
use returns_domain::time::Timestamp;
use returns_platform::ApiError;
use returns_proto::common::v1 as common;
use returns_proto::convert::{timestamp_from_proto, timestamp_to_proto};
use returns_proto::disputes::v1 as pb;

/// Defines `to_wire` / `from_wire` for a domain vocabulary and its protobuf enum, matching
/// the domain code to the protobuf name after the enum's prefix.
macro_rules! wire_enum {
    ($to:ident, $from:ident, $domain:ty, $wire:ty, $prefix:literal) => {
        pub fn $to(value: $domain) -> i32 {
            let name = format!("{}{}", $prefix, value.code().to_ascii_uppercase());
            <$wire>::from_str_name(&name).map_or(0, |w| w as i32)
        }

        /// Refuses UNSPECIFIED and unknown numbers, naming `field`.
        pub fn $from(value: i32, field: &str) -> Result<$domain, ApiError> {
            let wire = <$wire>::try_from(value)
                .map_err(|_| ApiError::invalid(field, format!("unknown value {value}")))?;
            let name = wire.as_str_name().strip_prefix($prefix).unwrap_or("");
            if name == "UNSPECIFIED" {
                return Err(ApiError::invalid(field, "is required"));
            }
            <$domain>::parse(name)
                .map_err(|_| ApiError::invalid(field, format!("unsupported value {name}")))
        }
    };
}

wire_enum!(
    kind_to_wire,
    kind_from_wire,
    DisputeKind,
    pb::DisputeKind,
    "DISPUTE_KIND_"
);
wire_enum!(
    reason_to_wire,
    reason_from_wire,
    DisputeReason,
    common::DisputeReason,
    "DISPUTE_REASON_"
);
wire_enum!(
    state_to_wire,
    state_from_wire,
    DisputeState,
    pb::DisputeState,
    "DISPUTE_STATE_"
);
wire_enum!(
    awaiting_to_wire,
    _awaiting_from_wire,
    Awaiting,
    pb::Awaiting,
    "AWAITING_"
);
wire_enum!(
    resolution_to_wire,
    resolution_from_wire,
    ResolutionType,
    pb::ResolutionType,
    "RESOLUTION_TYPE_"
);
wire_enum!(
    ruling_to_wire,
    ruling_from_wire,
    RulingOutcome,
    pb::RulingOutcome,
    "RULING_OUTCOME_"
);
wire_enum!(
    offer_status_to_wire,
    _offer_status_from_wire,
    OfferStatus,
    pb::OfferStatus,
    "OFFER_STATUS_"
);
wire_enum!(
    source_to_wire,
    _source_from_wire,
    OutcomeSource,
    pb::OutcomeSource,
    "OUTCOME_SOURCE_"
);
wire_enum!(
    event_type_to_wire,
    _event_type_from_wire,
    EventType,
    pb::DisputeEventType,
    "DISPUTE_EVENT_TYPE_"
);
wire_enum!(
    return_event_to_wire,
    return_event_from_wire,
    ReturnEventType,
    pb::ReturnEventType,
    "RETURN_EVENT_TYPE_"
);
wire_enum!(
    evidence_kind_to_wire,
    evidence_kind_from_wire,
    EvidenceKind,
    common::EvidenceKind,
    "EVIDENCE_KIND_"
);
wire_enum!(role_to_wire, _role_from_wire, Role, common::Role, "ROLE_");
wire_enum!(
    payment_to_wire,
    payment_from_wire,
    PaymentMethod,
    common::PaymentMethod,
    "PAYMENT_METHOD_"
);
wire_enum!(
    tier_to_wire,
    tier_from_wire,
    BuyerTier,
    common::BuyerTier,
    "BUYER_TIER_"
);
wire_enum!(
    payer_to_wire,
    payer_from_wire,
    PostagePayer,
    common::PostagePayer,
    "POSTAGE_PAYER_"
);

/// Domain error -> API error (a shorthand for `map_err`).
pub fn domain<E: Into<ApiError>>(error: E) -> ApiError {
    error.into()
}

pub fn money_to_wire(money: &Money) -> common::Money {
    common::Money {
        currency_code: money.currency.to_string(),
        minor_units: money.minor_units,
    }
}

/// A required, non-negative amount.
pub fn money_from_wire(money: Option<&common::Money>, field: &str) -> Result<Money, ApiError> {
    let money = money.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    let currency = CurrencyCode::parse(&money.currency_code)
        .map_err(|e| ApiError::invalid(format!("{field}.currency_code"), e.to_string()))?;
    if money.minor_units < 0 {
        return Err(ApiError::invalid(
            format!("{field}.minor_units"),
            "must not be negative",
        ));
    }
    Ok(Money::new(currency, money.minor_units))
}

pub fn optional_money(
    money: Option<&common::Money>,
    field: &str,
) -> Result<Option<Money>, ApiError> {
    match money {
        None => Ok(None),
        Some(m) => money_from_wire(Some(m), field).map(Some),
    }
}

pub fn ts(at: Timestamp) -> prost_types::Timestamp {
    timestamp_to_proto(at)
}

pub fn opt_ts(at: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    at.map(timestamp_to_proto)
}

pub fn ts_from_wire(
    at: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<Timestamp>, ApiError> {
    match at {
        None => Ok(None),
        Some(at) => timestamp_from_proto(at)
            .map(returns_domain::time::truncate_to_micros)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp")),
    }
}

pub fn duration(d: chrono::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

pub fn actor(actor: &n::Actor) -> common::Actor {
    common::Actor {
        id: actor.id.clone(),
        role: role_to_wire(actor.role),
    }
}

pub fn new_evidence(e: &pb::NewEvidence, field: &str) -> Result<n::NewEvidence, ApiError> {
    Ok(n::NewEvidence {
        kind: evidence_kind_from_wire(e.kind, &format!("{field}.kind"))?,
        content_type: e.content_type.clone(),
        size_bytes: e.size_bytes,
        sha256: e.sha256.clone(),
        uri: e.uri.clone(),
        file_name: e.file_name.clone(),
    })
}

pub fn evidence(e: &n::Evidence) -> common::EvidenceRef {
    common::EvidenceRef {
        evidence_id: e.id.to_string(),
        kind: evidence_kind_to_wire(e.kind),
        content_type: e.content_type.clone(),
        size_bytes: e.size_bytes,
        sha256: e.sha256.clone(),
        uri: e.uri.clone(),
        uploaded_by: Some(actor(&e.uploaded_by)),
        file_name: e.file_name.clone(),
        uploaded_at: Some(ts(e.uploaded_at)),
    }
}

pub fn offer(o: &n::Offer) -> pb::Offer {
    pb::Offer {
        offer_id: o.id.to_string(),
        number: i32::try_from(o.number).unwrap_or(i32::MAX),
        made_by: Some(actor(&o.made_by)),
        r#type: resolution_to_wire(o.resolution.kind),
        amount: o.resolution.amount.as_ref().map(money_to_wire),
        note: o.note.clone(),
        status: offer_status_to_wire(o.status),
        created_at: Some(ts(o.created_at)),
        answered_at: opt_ts(o.answered_at),
        rejection_reason: o.rejection_reason.clone(),
    }
}

pub fn outcome(o: &n::Outcome) -> pb::Outcome {
    pb::Outcome {
        r#type: ruling_to_wire(o.ruling),
        amount: o.amount.as_ref().map(money_to_wire),
        return_required: o.return_required,
        rationale: o.rationale.clone(),
        decided_by: Some(actor(&o.decided_by)),
        decided_at: Some(ts(o.decided_at)),
        postage_payer: o.postage_payer.map_or(0, payer_to_wire),
        source: source_to_wire(o.source),
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
        sent_at: Some(ts(m.sent_at)),
    }
}

pub fn dispute(d: &n::Dispute) -> pb::Dispute {
    pb::Dispute {
        dispute_id: d.id.to_string(),
        order_id: d.order_id.to_string(),
        buyer_id: d.buyer_id.to_string(),
        seller_id: d.seller_id.to_string(),
        kind: kind_to_wire(d.kind),
        reason: reason_to_wire(d.reason),
        state: state_to_wire(d.state),
        awaiting: awaiting_to_wire(d.awaiting),
        respond_by: opt_ts(d.respond_by),
        offers: d.offers.iter().map(offer).collect(),
        evidence: d.evidence.iter().map(evidence).collect(),
        outcome: d.outcome.as_ref().map(outcome),
        created_at: Some(ts(d.created_at)),
        updated_at: Some(ts(d.updated_at)),
        description: d.description.clone(),
        requested_resolution: Some(pb::RequestedResolution {
            r#type: resolution_to_wire(d.requested.kind),
            amount: d.requested.amount.as_ref().map(money_to_wire),
        }),
        version: d.version,
        message_count: i32::try_from(d.message_count).unwrap_or(i32::MAX),
        order_total: Some(money_to_wire(&d.order_total)),
        escalated_at: opt_ts(d.escalated_at),
        closed_at: opt_ts(d.closed_at),
        return_label_id: d.return_label_id.clone().unwrap_or_default(),
        protection_time_left: Some(duration(d.protection_time_left)),
        reopened: d.reopened,
    }
}

pub fn event(e: &n::DisputeEvent, dispute_id: &str, sequence: i64) -> pb::DisputeEvent {
    use pb::dispute_event::Payload;
    let payload = match &e.payload {
        n::EventPayload::Offer(o) => Some(Payload::Offer(offer(o))),
        n::EventPayload::Evidence(ev) => Some(Payload::Evidence(evidence(ev))),
        n::EventPayload::Message(m) => Some(Payload::Message(message(m, dispute_id))),
        n::EventPayload::Outcome(o) => Some(Payload::Outcome(outcome(o))),
        n::EventPayload::ReturnUpdate(u) => Some(Payload::ReturnUpdate(pb::ReturnUpdate {
            label_id: u.label_id.clone(),
            r#type: return_event_to_wire(u.kind),
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
        r#type: event_type_to_wire(e.kind),
        actor: Some(actor(&e.actor)),
        occurred_at: Some(ts(e.at)),
        from_state: e.from.map_or(0, state_to_wire),
        to_state: state_to_wire(e.to),
        note: e.note.clone(),
        payload,
    }
}

pub fn order(
    o: &n::OrderFacts,
    clock: &n::ProtectionClock,
    policy: &returns_domain::policy::Policy,
    created_at: Timestamp,
    updated_at: Timestamp,
) -> pb::Order {
    let window = n::protection_window(o, clock, policy);
    pb::Order {
        order_id: o.order_id.to_string(),
        buyer_id: o.buyer_id.to_string(),
        seller_id: o.seller_id.to_string(),
        total: Some(money_to_wire(&o.total)),
        payment_method: payment_to_wire(o.payment_method),
        buyer_tier: tier_to_wire(o.buyer_tier),
        carrier: o.carrier.code().to_owned(),
        placed_at: Some(ts(o.placed_at)),
        shipped_at: opt_ts(o.shipped_at),
        promised_ship_by: opt_ts(o.promised_ship_by),
        delivered_at: opt_ts(o.delivered_at),
        destination_country: o.destination_country.clone(),
        free_return: o.free_return,
        cancelled_at: opt_ts(o.cancelled_at),
        dispute_window_opens_at: window.map(|w| ts(w.opens_at)),
        dispute_window_closes_at: window.and_then(|w| w.closes_at).map(ts),
        protection_time_left: clock.paused_time_left.map(duration),
        created_at: Some(ts(created_at)),
        updated_at: Some(ts(updated_at)),
    }
}

/// Validates a RecordOrder request into order facts (keeping a recorded cancellation).
pub fn order_facts(r: &pb::RecordOrderRequest) -> Result<n::OrderFacts, ApiError> {
    let total = money_from_wire(r.total.as_ref(), "total")?;
    if !total.is_positive() {
        return Err(ApiError::invalid("total.minor_units", "must be positive"));
    }
    // Thresholds (contested returns above USD 50, fast refunds) compare the order in USD: an
    // order in a currency without a rate would fail later, in front of the buyer.
    if returns_domain::money::FxTable::default()
        .to_usd_minor(&total)
        .is_err()
    {
        return Err(ApiError::invalid(
            "total.currency_code",
            format!(
                "{} has no exchange rate configured, so the suite cannot apply its USD thresholds",
                total.currency
            ),
        ));
    }
    let country = r.destination_country.trim().to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            "destination_country",
            "must be an ISO 3166-1 alpha-2 code such as GB",
        ));
    }
    Ok(n::OrderFacts {
        order_id: returns_domain::ids::OrderId::parse(&r.order_id).map_err(domain)?,
        buyer_id: returns_domain::ids::PartyId::parse(&r.buyer_id)
            .map_err(|e| rename(e, "buyer_id"))?,
        seller_id: returns_domain::ids::PartyId::parse(&r.seller_id)
            .map_err(|e| rename(e, "seller_id"))?,
        total,
        payment_method: payment_from_wire(r.payment_method, "payment_method")?,
        buyer_tier: tier_from_wire(r.buyer_tier, "buyer_tier")?,
        carrier: ShippingCarrier::parse(&r.carrier).map_err(domain)?,
        placed_at: ts_from_wire(r.placed_at.as_ref(), "placed_at")?
            .ok_or_else(|| ApiError::invalid("placed_at", "is required"))?,
        shipped_at: ts_from_wire(r.shipped_at.as_ref(), "shipped_at")?,
        promised_ship_by: ts_from_wire(r.promised_ship_by.as_ref(), "promised_ship_by")?,
        delivered_at: ts_from_wire(r.delivered_at.as_ref(), "delivered_at")?,
        destination_country: country,
        free_return: r.free_return,
        cancelled_at: None,
    })
}

/// A validation error of a generic id type, renamed to the request field it came from.
pub fn rename(error: returns_domain::DomainError, field: &str) -> ApiError {
    match error {
        returns_domain::DomainError::Validation { reason, .. } => ApiError::invalid(field, reason),
        other => other.into(),
    }
}
