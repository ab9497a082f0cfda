//! The country directory of return partners, as data: `data/carriers.toml`, embedded in the
//! binary and parsed (and validated) once at start.
//!
//! Keeping the partners in a data file means a new partner is a reviewed data change, not a
//! code change, and the tests can walk every country in the file.

use std::collections::BTreeMap;

use returns_domain::DomainError;
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::returns::{ReturnMethod, S10, proprietary_tracking_number};
use serde::Deserialize;

/// The shipped directory.
pub const CARRIERS_TOML: &str = include_str!("../data/carriers.toml");

/// What a partner offers in its country (a domain vocabulary, so it has one wire pairing).
pub use returns_domain::returns::ServiceType;

/// How a carrier's tracking numbers are formed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "format", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackingScheme {
    /// UPU S10 with the operator's country code.
    UpuS10 { service_indicator: String },
    /// The carrier's own numbers: a prefix and a zero-padded serial.
    Proprietary { prefix: String, digits: usize },
}

/// A partner in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carrier {
    pub code: String,
    pub name: String,
    /// ISO 3166-1 alpha-2 country it serves for returns (and, for postal operators, the
    /// country code of its S10 numbers).
    pub country: String,
    pub service_types: Vec<ServiceType>,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub website: String,
    pub tracking: TrackingScheme,
}

impl Carrier {
    pub fn offers_drop_off(&self) -> bool {
        self.serves(ReturnMethod::DropOff)
    }

    pub fn offers_pickup(&self) -> bool {
        self.serves(ReturnMethod::Pickup)
    }

    /// Whether the partner takes labels of `method`.
    pub fn serves(&self, method: ReturnMethod) -> bool {
        self.service_types.iter().any(|s| s.serves(method))
    }

    pub fn is_postal(&self) -> bool {
        matches!(self.tracking, TrackingScheme::UpuS10 { .. })
    }

    /// The tracking number for the carrier's `serial`-th label.
    pub fn tracking_number(&self, serial: u64) -> Result<String, DomainError> {
        match &self.tracking {
            TrackingScheme::UpuS10 { service_indicator } => {
                let serial = u32::try_from(serial)
                    .ok()
                    .filter(|s| *s <= returns_domain::returns::S10_MAX_SERIAL)
                    .ok_or_else(|| {
                        DomainError::rule(
                            "tracking_serial_exhausted",
                            format!("{} has used every S10 serial", self.code),
                        )
                    })?;
                Ok(S10::new(service_indicator, serial, &self.country)?.to_string())
            }
            TrackingScheme::Proprietary { prefix, digits } => {
                proprietary_tracking_number(prefix, serial, *digits)
            }
        }
    }
}

/// A country in the directory with its flat return postage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Country {
    pub code: String,
    pub name: String,
    pub postage: Postage,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postage {
    pub currency: CurrencyCode,
    pub minor_units: i64,
}

impl Country {
    pub fn postage(&self) -> Money {
        Money::new(self.postage.currency, self.postage.minor_units)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    country: Vec<Country>,
    carrier: Vec<Carrier>,
}

/// The loaded directory: countries by code, carriers sorted by country then code.
#[derive(Debug, Clone)]
pub struct Directory {
    countries: BTreeMap<String, Country>,
    carriers: Vec<Carrier>,
}

/// Why the directory file was refused.
#[derive(Debug, thiserror::Error)]
#[error("carrier directory: {0}")]
pub struct DirectoryError(String);

impl Directory {
    /// The directory shipped in `data/carriers.toml`.
    pub fn shipped() -> Result<Directory, DirectoryError> {
        Self::parse(CARRIERS_TOML)
    }

    /// Parses and validates a directory document: unique codes, known countries, at least
    /// one service each, sane postage, tracking schemes that can produce a number.
    pub fn parse(text: &str) -> Result<Directory, DirectoryError> {
        let file: File = toml::from_str(text).map_err(|e| DirectoryError(e.to_string()))?;
        let mut countries = BTreeMap::new();
        for country in file.country {
            if !is_country_code(&country.code) {
                return Err(DirectoryError(format!(
                    "country code {:?} is not two uppercase letters",
                    country.code
                )));
            }
            if country.postage.minor_units <= 0 {
                return Err(DirectoryError(format!(
                    "postage of {} must be positive",
                    country.code
                )));
            }
            if countries.insert(country.code.clone(), country).is_some() {
                return Err(DirectoryError("a country is listed twice".into()));
            }
        }
        let mut carriers = file.carrier;
        carriers.sort_by(|a, b| (&a.country, &a.code).cmp(&(&b.country, &b.code)));
        for (i, carrier) in carriers.iter().enumerate() {
            if carriers[..i].iter().any(|c| c.code == carrier.code) {
                return Err(DirectoryError(format!(
                    "carrier {} is listed twice",
                    carrier.code
                )));
            }
            if !countries.contains_key(&carrier.country) {
                return Err(DirectoryError(format!(
                    "carrier {} serves {} which has no [[country]] entry",
                    carrier.code, carrier.country
                )));
            }
            if carrier.service_types.is_empty() {
                return Err(DirectoryError(format!(
                    "carrier {} offers no service",
                    carrier.code
                )));
            }
            carrier
                .tracking_number(1)
                .map_err(|e| DirectoryError(format!("carrier {}: {e}", carrier.code)))?;
        }
        Ok(Directory {
            countries,
            carriers,
        })
    }

    /// A directory serving no country: what the service falls back to if the shipped file
    /// were ever invalid (a unit test keeps it valid), so every request is refused with
    /// "no return partner" instead of the process crashing.
    pub fn empty() -> Directory {
        Directory {
            countries: BTreeMap::new(),
            carriers: Vec::new(),
        }
    }

    pub fn carriers(&self) -> &[Carrier] {
        &self.carriers
    }

    pub fn carrier(&self, code: &str) -> Option<&Carrier> {
        self.carriers.iter().find(|c| c.code == code)
    }

    pub fn country(&self, code: &str) -> Option<&Country> {
        self.countries.get(code)
    }

    pub fn countries(&self) -> impl Iterator<Item = &Country> {
        self.countries.values()
    }

    /// The partners of a country.
    pub fn in_country(&self, code: &str) -> impl Iterator<Item = &Carrier> {
        let code = code.to_owned();
        self.carriers.iter().filter(move |c| c.country == code)
    }
}

/// Two uppercase ASCII letters.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_directory_lists_every_partner_of_the_domain_rules() {
        let directory = Directory::shipped().expect("valid");
        let drop_off = [
            ("AU", "Australia Post"),
            ("CA", "Canada Post"),
            ("CL", "Correos de Chile"),
            ("FR", "La Poste"),
            ("IL", "Israel Post"),
            ("IT", "Poste Italiane"),
            ("MX", "Correos de Mexico"),
            ("PL", "InPost"),
            ("GB", "Royal Mail"),
            ("US", "USPS"),
        ];
        for (country, name) in drop_off {
            let carrier = directory
                .in_country(country)
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} in {country}"));
            assert!(carrier.offers_drop_off() && !carrier.offers_pickup());
        }
        let pickup = [
            ("CZ", "CZ_PICKUP"),
            ("JP", "SAGAWA"),
            ("KR", "KOREA_POST"),
            ("CH", "SWISS_POST"),
            ("AE", "NAQEL"),
        ];
        for (country, code) in pickup {
            let carrier = directory.carrier(code).expect(code);
            assert_eq!(carrier.country, country);
            assert!(carrier.offers_pickup() && !carrier.offers_drop_off());
        }
        assert_eq!(directory.carriers().len(), 15);
        assert_eq!(
            directory.carrier("CZ_PICKUP").map(|c| c.phone.as_str()),
            Some("225 331 500")
        );
        assert_eq!(
            directory.carrier("INPOST").map(|c| c.service_types.clone()),
            Some(vec![ServiceType::Locker])
        );
    }

    #[test]
    fn postal_operators_issue_s10_numbers_with_their_country_code() {
        let directory = Directory::shipped().expect("valid");
        let royal_mail = directory.carrier("ROYAL_MAIL").expect("listed");
        let number = royal_mail.tracking_number(47_312_482).expect("fits");
        assert_eq!(number, "CR473124829GB");
        assert!(S10::parse(&number).is_ok());
        assert!(royal_mail.tracking_number(100_000_000).is_err());
        let sagawa = directory.carrier("SAGAWA").expect("listed");
        assert_eq!(sagawa.tracking_number(7).expect("fits"), "SGW000000000007");
        assert!(!sagawa.is_postal());
    }

    #[test]
    fn a_directory_with_an_unknown_country_or_duplicate_is_refused() {
        let unknown = r#"
            [[country]]
            code = "GB"
            name = "United Kingdom"
            postage = { currency = "GBP", minor_units = 395 }
            [[carrier]]
            code = "X"
            name = "X"
            country = "FR"
            service_types = ["DROP_OFF"]
            tracking = { format = "UPU_S10", service_indicator = "CR" }
        "#;
        assert!(Directory::parse(unknown).is_err());
        assert!(Directory::parse("country = []\ncarrier = []\n").is_ok());
        assert!(Directory::parse("nonsense").is_err());
    }
}
