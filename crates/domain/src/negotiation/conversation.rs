//! What the parties add to a dispute without moving it: messages (which may cite the
//! dispute's evidence) and further evidence, in any state before it closes.

use super::events::{DisputeEvent, EventPayload};
use super::evidence::{NewEvidence, check_evidence_ids, check_room_for_evidence};
use super::parties::{Actor, party_of};
use super::record::{Dispute, Message};
use super::text::required_text;
use super::transition::Transition;
use super::vocabulary::EventType;
use crate::error::DomainError;
use crate::ids::{EventId, EvidenceId};
use crate::time::Timestamp;

/// A party writes to the dispute's thread; the message's id is its history entry's id.
pub(super) fn send_message(
    dispute: &Dispute,
    by: Actor,
    body: String,
    evidence_ids: Vec<EvidenceId>,
    now: Timestamp,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
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

/// A party adds a piece of evidence, within the per-dispute limit.
pub(super) fn add_evidence(
    dispute: &Dispute,
    by: Actor,
    evidence_id: EvidenceId,
    evidence: NewEvidence,
    now: Timestamp,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    party_of(dispute, &by)?;
    evidence.validate("evidence")?;
    check_room_for_evidence(dispute)?;
    let stored = evidence.into_evidence(evidence_id, by.clone(), now);
    let mut t = Transition::new(dispute, by, now);
    t.next.evidence.push(stored.clone());
    t.push(EventType::EvidenceAdded, "", EventPayload::Evidence(stored));
    Ok(t.finish())
}
