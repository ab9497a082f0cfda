//! The platform review guidelines as a recommendation for the arbiter, with the reasons that
//! fired; the arbiter still rules (`Command::Rule`).

use super::evidence::Evidence;
use super::record::Dispute;
use crate::dispute::{DisputeReason, PostagePayer, ResolutionType, Role, RulingOutcome};
use crate::error::DomainError;
use crate::money::{FxTable, Money};
use crate::policy::Policy;

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

/// The platform review guidelines (docs/domain.md, "Platform review") as a recommendation
/// with the reasons that fired.
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
    use crate::carrier::ShippingCarrier;
    use crate::dispute::{DisputeReason, PostagePayer, RulingOutcome};
    use crate::ids::EvidenceId;
    use crate::money::FxTable;
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;

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
}
