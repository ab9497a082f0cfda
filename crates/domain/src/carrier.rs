//! Shipping carriers of outbound orders and the carrier classes that set the protection window.
//!
//! The class, not the carrier, is what policy keys on: docs/domain.md gives one dispute deadline
//! per class (express 23 days, EMS 27, postal 39 under `classic`). Return-shipment carriers
//! (drop-off partners, pickup couriers) are the labels service's data, not this vocabulary.

use crate::macros::code_enum;

code_enum! {
    /// How fast a carrier is, which decides how long the buyer may wait before disputing.
    pub enum CarrierClass as "carrier_class" {
        /// DHL, TNT, UPS, FedEx.
        Express => "EXPRESS",
        /// Japan Post EMS, SF Express.
        Ems => "EMS",
        /// China Post, Hong Kong Post.
        Postal => "POSTAL",
    }
}

code_enum! {
    /// The carrier an order was shipped with, as recorded in the order facts.
    pub enum ShippingCarrier as "carrier" {
        Dhl => "DHL",
        Ups => "UPS",
        Fedex => "FEDEX" | "FED_EX",
        Tnt => "TNT",
        /// Japan Post EMS.
        Ems => "EMS" | "JAPAN_POST_EMS",
        SfExpress => "SF_EXPRESS",
        ChinaPost => "CHINA_POST",
        HongkongPost => "HONGKONG_POST" | "HONG_KONG_POST",
    }
}

impl ShippingCarrier {
    /// The carrier's class per the protection-window table (docs/domain.md, "The protection
    /// window").
    pub fn class(&self) -> CarrierClass {
        match self {
            Self::Dhl | Self::Ups | Self::Fedex | Self::Tnt => CarrierClass::Express,
            Self::Ems | Self::SfExpress => CarrierClass::Ems,
            Self::ChinaPost | Self::HongkongPost => CarrierClass::Postal,
        }
    }

    /// A human-readable name for messages and labels.
    pub fn display_name(&self) -> &'static str {
        match self {
            Self::Dhl => "DHL",
            Self::Ups => "UPS",
            Self::Fedex => "FedEx",
            Self::Tnt => "TNT",
            Self::Ems => "Japan Post EMS",
            Self::SfExpress => "SF Express",
            Self::ChinaPost => "China Post",
            Self::HongkongPost => "Hong Kong Post",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DomainError;

    #[test]
    fn every_carrier_has_the_class_domain_md_gives_it() {
        use CarrierClass::*;
        use ShippingCarrier as C;
        let table = [
            (C::Dhl, Express),
            (C::Tnt, Express),
            (C::Ups, Express),
            (C::Fedex, Express),
            (C::Ems, Ems),
            (C::SfExpress, Ems),
            (C::ChinaPost, Postal),
            (C::HongkongPost, Postal),
        ];
        assert_eq!(table.len(), ShippingCarrier::ALL.len());
        for (carrier, class) in table {
            assert_eq!(carrier.class(), class, "{carrier}");
        }
    }

    #[test]
    fn carrier_codes_parse_case_insensitively_with_either_separator() {
        let cases = [
            ("DHL", ShippingCarrier::Dhl),
            ("dhl", ShippingCarrier::Dhl),
            ("FedEx", ShippingCarrier::Fedex),
            ("ems", ShippingCarrier::Ems),
            ("SF_EXPRESS", ShippingCarrier::SfExpress),
            ("SF-EXPRESS", ShippingCarrier::SfExpress),
            ("sf-express", ShippingCarrier::SfExpress),
            ("CHINA_POST", ShippingCarrier::ChinaPost),
            ("HONGKONG_POST", ShippingCarrier::HongkongPost),
            ("HONG_KONG_POST", ShippingCarrier::HongkongPost),
            ("hong-kong-post", ShippingCarrier::HongkongPost),
        ];
        for (text, carrier) in cases {
            assert_eq!(ShippingCarrier::parse(text), Ok(carrier), "{text}");
        }
    }

    #[test]
    fn every_carrier_code_round_trips() {
        for carrier in ShippingCarrier::ALL {
            assert_eq!(ShippingCarrier::parse(carrier.code()), Ok(*carrier));
        }
        for class in CarrierClass::ALL {
            assert_eq!(CarrierClass::parse(class.code()), Ok(*class));
        }
    }

    #[test]
    fn unknown_carriers_are_a_validation_error_listing_the_known_codes() {
        match ShippingCarrier::parse("USPS") {
            Err(DomainError::Validation { field, reason }) => {
                assert_eq!(field, "carrier");
                assert!(reason.contains("HONGKONG_POST"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ShippingCarrier::parse("").is_err());
        assert!(ShippingCarrier::parse("SFEXPRESS").is_err());
    }

    #[test]
    fn carriers_serialise_as_their_canonical_code() {
        let json = serde_json::to_string(&ShippingCarrier::HongkongPost).expect("serialises");
        assert_eq!(json, "\"HONGKONG_POST\"");
        let parsed: ShippingCarrier = serde_json::from_str("\"sf-express\"").expect("parses");
        assert_eq!(parsed, ShippingCarrier::SfExpress);
    }
}
