//! The vocabulary of disputes and refunds: kinds, reasons, resolutions, outcomes, roles.
//!
//! Only the words live here; the dispute state machine builds on them. Each word has a stable
//! uppercase code (lowercase for roles, to match the `role` claim of tokens) used in storage,
//! outbox payloads and error messages, independent of the protobuf enum names.

use crate::macros::code_enum;

code_enum! {
    /// What the buyer asks for when opening a dispute.
    pub enum DisputeKind as "kind" {
        /// Keep the item (or it never came) and get money back.
        RefundOnly => "REFUND_ONLY",
        /// Send the item back, then get money back.
        ReturnAndRefund => "RETURN_AND_REFUND",
    }
}

code_enum! {
    /// Why the buyer opened the dispute: the eleven reasons of docs/domain.md, "Opening a dispute".
    pub enum DisputeReason as "reason" {
        NotReceived => "NOT_RECEIVED",
        NotAsDescribed => "NOT_AS_DESCRIBED",
        Damaged => "DAMAGED",
        WrongItem => "WRONG_ITEM",
        Counterfeit => "COUNTERFEIT",
        QualityProblem => "QUALITY_PROBLEM",
        MissingParts => "MISSING_PARTS" | "MISSING_PARTS_OR_ACCESSORIES",
        QuantityShortage => "QUANTITY_SHORTAGE",
        ShippingMethodNotAsDescribed => "SHIPPING_METHOD_NOT_AS_DESCRIBED",
        /// Personal reasons: the item matches the listing but the buyer no longer wants it.
        ChangedMind => "CHANGED_MIND" | "PERSONAL_REASONS",
        LateDelivery => "LATE_DELIVERY",
    }
}

impl DisputeReason {
    /// Quality reasons need photos or video at opening; for non-delivery a tracking
    /// screenshot is enough, and the remaining reasons need no particular media.
    pub fn requires_photo_or_video(&self) -> bool {
        matches!(
            self,
            Self::NotAsDescribed
                | Self::Damaged
                | Self::WrongItem
                | Self::Counterfeit
                | Self::QualityProblem
                | Self::MissingParts
                | Self::QuantityShortage
        )
    }

    /// Whether the seller (or its carrier) is at fault, which decides who pays return postage.
    ///
    /// Every reason except a change of mind is about the seller's performance: the item, its
    /// delivery, or the promised shipping method. A changed mind is the buyer's own choice.
    pub fn is_seller_error(&self) -> bool {
        !matches!(self, Self::ChangedMind)
    }

    /// Whether buyer protection covers the reason at all. A changed mind is not a protection
    /// case: no refund unless the seller accepts a return.
    pub fn is_protection_case(&self) -> bool {
        self.is_seller_error()
    }

    /// Who pays return postage by default: the seller when at fault (the platform may take
    /// over, which is an arbiter's call), otherwise the buyer, deducted from the refund.
    pub fn default_postage_payer(&self) -> PostagePayer {
        if self.is_seller_error() {
            PostagePayer::Seller
        } else {
            PostagePayer::Buyer
        }
    }
}

code_enum! {
    /// A resolution asked for or offered during negotiation.
    pub enum ResolutionType as "resolution_type" {
        FullRefund => "FULL_REFUND",
        /// Needs an amount no larger than what was paid.
        PartialRefund => "PARTIAL_REFUND",
        Replacement => "REPLACEMENT",
        /// Offered as a counter; the buyer's opening request is one of the other three.
        ReturnAndRefund => "RETURN_AND_REFUND",
    }
}

impl ResolutionType {
    /// Only a partial refund carries an amount; the others are determined by the order.
    pub fn requires_amount(&self) -> bool {
        matches!(self, Self::PartialRefund)
    }

    /// Whether a buyer may ask for this when opening a dispute (full refund, partial refund
    /// or replacement); a return-and-refund is asked for through the dispute kind instead.
    pub fn is_openable(&self) -> bool {
        !matches!(self, Self::ReturnAndRefund)
    }
}

code_enum! {
    /// An arbiter's ruling on an escalated dispute.
    pub enum RulingOutcome as "outcome" {
        RefundFull => "REFUND_FULL",
        /// Needs an amount no larger than what was paid.
        RefundPartial => "REFUND_PARTIAL",
        Replacement => "REPLACEMENT",
        /// Nothing for the buyer, whose last resort is a card chargeback.
        SellerFavor => "SELLER_FAVOR",
    }
}

impl RulingOutcome {
    pub fn requires_amount(&self) -> bool {
        matches!(self, Self::RefundPartial)
    }

    /// Whether the ruling moves money to the buyer.
    pub fn refunds_buyer(&self) -> bool {
        matches!(self, Self::RefundFull | Self::RefundPartial)
    }
}

code_enum! {
    /// How the order was paid, which decides how long a refund takes to arrive.
    pub enum PaymentMethod as "payment_method" {
        Card => "CARD",
        /// An Alipay-like wallet balance.
        Wallet => "WALLET",
    }
}

code_enum! {
    /// The buyer's membership tier; Platinum and Diamond get fast refunds.
    pub enum BuyerTier as "buyer_tier" {
        Standard => "STANDARD",
        Gold => "GOLD",
        Platinum => "PLATINUM",
        Diamond => "DIAMOND",
    }
}

code_enum! {
    /// Who pays for a return shipment.
    pub enum PostagePayer as "postage_payer" {
        Seller => "SELLER",
        Platform => "PLATFORM",
        /// Deducted from the buyer's refund.
        Buyer => "BUYER",
    }
}

code_enum! {
    /// An actor of the suite; the `role` claim of a token.
    pub enum Role as "role" {
        Buyer => "buyer",
        Seller => "seller",
        /// The platform's dispute team.
        Arbiter => "arbiter",
        /// Internal services: orders, payments, and the suite's own services calling each other.
        Platform => "platform",
        /// Carrier integrations: labels, tracking scans, drop-off locations, pickups.
        Carrier => "carrier",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DomainError;

    #[test]
    fn there_are_eleven_reasons_each_with_a_round_tripping_code() {
        assert_eq!(DisputeReason::ALL.len(), 11);
        for reason in DisputeReason::ALL {
            assert_eq!(DisputeReason::parse(reason.code()), Ok(*reason));
            assert_eq!(reason.code().parse::<DisputeReason>(), Ok(*reason));
        }
    }

    #[test]
    fn quality_reasons_require_photos_and_the_others_do_not() {
        let needing: Vec<_> = DisputeReason::ALL
            .iter()
            .filter(|r| r.requires_photo_or_video())
            .map(|r| r.code())
            .collect();
        assert_eq!(
            needing,
            [
                "NOT_AS_DESCRIBED",
                "DAMAGED",
                "WRONG_ITEM",
                "COUNTERFEIT",
                "QUALITY_PROBLEM",
                "MISSING_PARTS",
                "QUANTITY_SHORTAGE"
            ]
        );
        assert!(!DisputeReason::NotReceived.requires_photo_or_video());
        assert!(!DisputeReason::ChangedMind.requires_photo_or_video());
    }

    #[test]
    fn only_a_changed_mind_makes_the_buyer_pay_return_postage() {
        for reason in DisputeReason::ALL {
            let expected = if *reason == DisputeReason::ChangedMind {
                PostagePayer::Buyer
            } else {
                PostagePayer::Seller
            };
            assert_eq!(reason.default_postage_payer(), expected, "{reason}");
        }
        assert!(!DisputeReason::ChangedMind.is_protection_case());
        assert!(DisputeReason::WrongItem.is_seller_error());
    }

    #[test]
    fn reasons_accept_the_spellings_of_the_source_articles() {
        assert_eq!(
            DisputeReason::parse("personal-reasons"),
            Ok(DisputeReason::ChangedMind)
        );
        assert_eq!(
            DisputeReason::parse("missing parts or accessories"),
            Ok(DisputeReason::MissingParts)
        );
    }

    #[test]
    fn roles_use_the_lowercase_token_claim_spelling() {
        let names: Vec<_> = Role::ALL.iter().map(Role::as_str).collect();
        assert_eq!(names, ["buyer", "seller", "arbiter", "platform", "carrier"]);
        assert_eq!(Role::parse("ARBITER"), Ok(Role::Arbiter));
        assert_eq!(
            serde_json::to_string(&Role::Carrier).expect("serialises"),
            "\"carrier\""
        );
        assert!(matches!(
            Role::parse("admin"),
            Err(DomainError::Validation { ref field, .. }) if field == "role"
        ));
    }

    #[test]
    fn only_partial_resolutions_carry_an_amount() {
        let with_amount: Vec<_> = ResolutionType::ALL
            .iter()
            .filter(|r| r.requires_amount())
            .collect();
        assert_eq!(with_amount, [&ResolutionType::PartialRefund]);
        assert!(RulingOutcome::RefundPartial.requires_amount());
        assert!(!RulingOutcome::SellerFavor.refunds_buyer());
        assert!(!ResolutionType::ReturnAndRefund.is_openable());
    }

    #[test]
    fn every_vocabulary_round_trips_through_its_code() {
        fn check<T>(all: &[T])
        where
            T: Copy + PartialEq + std::fmt::Debug + std::str::FromStr<Err = DomainError>,
            T: std::fmt::Display,
        {
            for v in all {
                assert_eq!(v.to_string().parse::<T>(), Ok(*v));
            }
        }
        check(DisputeKind::ALL);
        check(ResolutionType::ALL);
        check(RulingOutcome::ALL);
        check(PaymentMethod::ALL);
        check(BuyerTier::ALL);
        check(PostagePayer::ALL);
        check(Role::ALL);
    }
}
