//! Evidence rules: the accepted file types and sizes, what each dispute reason needs when a
//! dispute opens, how many items one dispute holds, and which items a message may cite.

use serde::{Deserialize, Serialize};

use super::parties::Actor;
use super::record::Dispute;
use super::text::{optional_text, required_text};
use super::vocabulary::EvidenceKind;
use crate::dispute::DisputeReason;
use crate::error::DomainError;
use crate::ids::EvidenceId;
use crate::time::Timestamp;

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
    pub(super) fn is_photo_or_video(&self) -> bool {
        matches!(self.kind, EvidenceKind::Photo | EvidenceKind::Video)
    }
}

/// How a dispute ended (or will end once a required return passes inspection).
/// What the reason needs as evidence when a dispute opens, after every piece passes its own
/// checks: a photo or video for the quality reasons, any evidence (a tracking screenshot is
/// enough) for non-delivery.
pub(super) fn check_opening_evidence(
    reason: DisputeReason,
    evidence: &[NewEvidence],
) -> Result<(), DomainError> {
    for (i, evidence) in evidence.iter().enumerate() {
        evidence.validate(&format!("evidence[{i}]"))?;
    }
    if reason.requires_photo_or_video()
        && !evidence
            .iter()
            .any(|e| matches!(e.kind, EvidenceKind::Photo | EvidenceKind::Video))
    {
        return Err(DomainError::rule(
            "evidence_required",
            format!("reason {reason} needs at least one photo or video as evidence"),
        ));
    }
    if reason == DisputeReason::NotReceived && evidence.is_empty() {
        return Err(DomainError::rule(
            "evidence_required",
            "reason NOT_RECEIVED needs evidence; a tracking screenshot is enough",
        ));
    }
    Ok(())
}

/// Refuses one more item once the dispute holds [`MAX_EVIDENCE_PER_DISPUTE`].
pub(super) fn check_room_for_evidence(dispute: &Dispute) -> Result<(), DomainError> {
    if dispute.evidence.len() >= MAX_EVIDENCE_PER_DISPUTE {
        return Err(DomainError::RuleViolated {
            rule: "evidence_limit",
            detail: format!("a dispute holds at most {MAX_EVIDENCE_PER_DISPUTE} evidence items"),
        });
    }
    Ok(())
}

/// A message may cite only evidence already on the dispute.
pub(super) fn check_evidence_ids(dispute: &Dispute, ids: &[EvidenceId]) -> Result<(), DomainError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::ShippingCarrier;
    use crate::dispute::DisputeReason;
    use crate::error::DomainError;
    use crate::ids::EvidenceId;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

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
}
