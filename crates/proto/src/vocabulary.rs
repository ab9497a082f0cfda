//! Every domain vocabulary paired with its protobuf enum, in one table. The trait lives in
//! this crate, so the pairing can only be written here: a service cannot grow its own
//! mapping, and the round-trip test below covers every pair.

use returns_domain::dispute::{
    BuyerTier, DisputeKind, DisputeReason, PaymentMethod, PostagePayer, ResolutionType, Role,
    RulingOutcome,
};
use returns_domain::negotiation::{
    Awaiting, DisputeState, EventType, EvidenceKind, OfferStatus, OutcomeSource, RefundRelease,
    ReturnEventType,
};
use returns_domain::refund::{
    DeductionKind, RefundReason, RefundStatus, ReleaseCondition, ReturnProgress,
};
use returns_domain::returns::{
    FreeReturnEligibility, InspectionResult, LabelStatus, LocationKind, PickupStatus, ReturnMethod,
    ServiceType, TrackingEventType,
};

use crate::refunds::v1 as refunds;
use crate::wire_enum;
use crate::{common::v1 as common, disputes::v1 as disputes, labels::v1 as labels};

// Shared vocabulary (returns.common.v1).
wire_enum!(EvidenceKind => common::EvidenceKind, "EVIDENCE_KIND_");
wire_enum!(Role => common::Role, "ROLE_");
wire_enum!(PaymentMethod => common::PaymentMethod, "PAYMENT_METHOD_");
wire_enum!(BuyerTier => common::BuyerTier, "BUYER_TIER_");
wire_enum!(DisputeReason => common::DisputeReason, "DISPUTE_REASON_");
wire_enum!(PostagePayer => common::PostagePayer, "POSTAGE_PAYER_");

// Disputes.
wire_enum!(DisputeKind => disputes::DisputeKind, "DISPUTE_KIND_");
wire_enum!(DisputeState => disputes::DisputeState, "DISPUTE_STATE_");
wire_enum!(Awaiting => disputes::Awaiting, "AWAITING_");
wire_enum!(ResolutionType => disputes::ResolutionType, "RESOLUTION_TYPE_");
wire_enum!(RulingOutcome => disputes::RulingOutcome, "RULING_OUTCOME_");
wire_enum!(OfferStatus => disputes::OfferStatus, "OFFER_STATUS_");
wire_enum!(OutcomeSource => disputes::OutcomeSource, "OUTCOME_SOURCE_");
wire_enum!(EventType => disputes::DisputeEventType, "DISPUTE_EVENT_TYPE_");
wire_enum!(ReturnEventType => disputes::ReturnEventType, "RETURN_EVENT_TYPE_");

// Labels.
wire_enum!(LabelStatus => labels::LabelStatus, "LABEL_STATUS_");
wire_enum!(TrackingEventType => labels::TrackingEventType, "TRACKING_EVENT_TYPE_");
wire_enum!(InspectionResult => labels::InspectionResult, "INSPECTION_RESULT_");
wire_enum!(FreeReturnEligibility => labels::FreeReturnEligibility, "FREE_RETURN_ELIGIBILITY_");
wire_enum!(ReturnMethod => labels::ReturnMethod, "RETURN_METHOD_");
wire_enum!(ServiceType => labels::ServiceType, "SERVICE_TYPE_");
wire_enum!(PickupStatus => labels::PickupStatus, "PICKUP_STATUS_");
wire_enum!(LocationKind => labels::LocationKind, "LOCATION_KIND_");

// Refunds.
wire_enum!(RefundStatus => refunds::RefundStatus, "REFUND_STATUS_");
wire_enum!(ReleaseCondition => refunds::ReleaseCondition, "RELEASE_CONDITION_");
wire_enum!(RefundRelease => refunds::ReleaseCondition, "RELEASE_CONDITION_");
wire_enum!(RefundReason => refunds::RefundReason, "REFUND_REASON_");
wire_enum!(ReturnProgress => refunds::ReturnProgress, "RETURN_PROGRESS_");
wire_enum!(DeductionKind => refunds::DeductionKind, "DEDUCTION_KIND_");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::check_round_trip;

    #[test]
    fn every_domain_vocabulary_round_trips_through_its_protobuf_enum() {
        let results = [
            ("EvidenceKind", check_round_trip::<EvidenceKind>()),
            ("Role", check_round_trip::<Role>()),
            ("PaymentMethod", check_round_trip::<PaymentMethod>()),
            ("BuyerTier", check_round_trip::<BuyerTier>()),
            ("DisputeReason", check_round_trip::<DisputeReason>()),
            ("PostagePayer", check_round_trip::<PostagePayer>()),
            ("DisputeKind", check_round_trip::<DisputeKind>()),
            ("DisputeState", check_round_trip::<DisputeState>()),
            ("Awaiting", check_round_trip::<Awaiting>()),
            ("ResolutionType", check_round_trip::<ResolutionType>()),
            ("RulingOutcome", check_round_trip::<RulingOutcome>()),
            ("OfferStatus", check_round_trip::<OfferStatus>()),
            ("OutcomeSource", check_round_trip::<OutcomeSource>()),
            ("EventType", check_round_trip::<EventType>()),
            ("ReturnEventType", check_round_trip::<ReturnEventType>()),
            ("LabelStatus", check_round_trip::<LabelStatus>()),
            ("TrackingEventType", check_round_trip::<TrackingEventType>()),
            ("InspectionResult", check_round_trip::<InspectionResult>()),
            (
                "FreeReturnEligibility",
                check_round_trip::<FreeReturnEligibility>(),
            ),
            ("ReturnMethod", check_round_trip::<ReturnMethod>()),
            ("ServiceType", check_round_trip::<ServiceType>()),
            ("PickupStatus", check_round_trip::<PickupStatus>()),
            ("LocationKind", check_round_trip::<LocationKind>()),
            ("RefundStatus", check_round_trip::<RefundStatus>()),
            ("ReleaseCondition", check_round_trip::<ReleaseCondition>()),
            ("RefundRelease", check_round_trip::<RefundRelease>()),
            ("RefundReason", check_round_trip::<RefundReason>()),
            ("ReturnProgress", check_round_trip::<ReturnProgress>()),
            ("DeductionKind", check_round_trip::<DeductionKind>()),
        ];
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(name, result)| result.err().map(|e| format!("{name}: {e}")))
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
