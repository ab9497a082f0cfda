//! Money as an integer count of minor units plus an ISO 4217 code, with checked arithmetic and
//! an FX table for comparing amounts against thresholds stated in USD.
//!
//! Floats never appear: a refund that is off by a cent is a bug a customer notices. Every
//! operation that could overflow or mix currencies returns a `Result`, so the caller has to say
//! what happens instead of getting a silently wrapped or mislabelled amount.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a money operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Two amounts in different currencies were combined or compared.
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch {
        left: CurrencyCode,
        right: CurrencyCode,
    },
    /// The exact result does not fit in an `i64` of minor units.
    #[error("amount out of range")]
    Overflow,
    /// A negative amount or ratio where only non-negative ones make sense.
    #[error("amount must not be negative")]
    Negative,
    /// Not three uppercase ASCII letters.
    #[error("invalid currency code {0:?}: expected an active ISO 4217 code such as USD")]
    InvalidCurrency(String),
    /// A ratio with a zero denominator.
    #[error("invalid ratio {numerator}/{denominator}")]
    InvalidRatio { numerator: i64, denominator: i64 },
    /// The FX table has no rate for this currency, so a USD threshold cannot be applied.
    #[error("no FX rate configured for {0}")]
    MissingFxRate(CurrencyCode),
    /// An FX rate that cannot be right (zero, or absurdly large).
    #[error("invalid FX rate for {currency}: {reason}")]
    InvalidFxRate {
        currency: CurrencyCode,
        reason: String,
    },
}

/// An ISO 4217 alphabetic code: exactly three uppercase ASCII letters.
///
/// Any such code is accepted, not just the ones the FX table knows, because order facts may
/// carry currencies the thresholds never need; the FX table refuses unknown ones when asked.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CurrencyCode([u8; 3]);

/// Active ISO 4217 currency codes, sorted (funds, precious metals, test and "no currency"
/// codes excluded): money in any other code is refused where it enters the suite.
pub const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

impl CurrencyCode {
    pub const USD: Self = Self(*b"USD");
    pub const EUR: Self = Self(*b"EUR");
    pub const GBP: Self = Self(*b"GBP");
    pub const JPY: Self = Self(*b"JPY");
    pub const CAD: Self = Self(*b"CAD");
    pub const AUD: Self = Self(*b"AUD");
    pub const PLN: Self = Self(*b"PLN");
    pub const CHF: Self = Self(*b"CHF");
    pub const KRW: Self = Self(*b"KRW");
    pub const MXN: Self = Self(*b"MXN");
    pub const CLP: Self = Self(*b"CLP");
    pub const ILS: Self = Self(*b"ILS");
    pub const AED: Self = Self(*b"AED");
    pub const CZK: Self = Self(*b"CZK");
    pub const CNY: Self = Self(*b"CNY");
    pub const HKD: Self = Self(*b"HKD");
    pub const BHD: Self = Self(*b"BHD");
    pub const KWD: Self = Self(*b"KWD");

    /// Accepts exactly three uppercase ASCII letters; lowercase is refused rather than
    /// silently fixed so that stored codes are always canonical.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if ISO_4217.binary_search(&code).is_ok() => Ok(Self([a, b, c])),
            _ => Err(MoneyError::InvalidCurrency(code.chars().take(32).collect())),
        }
    }

    /// The code as text, e.g. `"USD"`.
    pub fn as_str(&self) -> &str {
        // Only `parse` and the constants above build a code, both with ASCII letters, so the
        // bytes are always valid UTF-8; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// How many decimal places the minor unit has (ISO 4217): 0 for JPY, KRW, CLP and the
    /// other zero-decimal currencies, 3 for the Gulf dinars, 2 otherwise.
    pub fn minor_exponent(&self) -> u32 {
        match &self.0 {
            b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG"
            | b"RWF" | b"UGX" | b"UYI" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
            b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CurrencyCode {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for CurrencyCode {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CurrencyCode> for String {
    fn from(code: CurrencyCode) -> Self {
        code.as_str().to_owned()
    }
}

/// An amount of one currency in minor units (cents for USD, yen for JPY).
///
/// The fields are public because every combination of a valid code and an `i64` is a valid
/// amount; signed because ledgers record movements in both directions. Rules that need a
/// non-negative or positive amount say so with [`Money::ensure_non_negative`] or
/// [`Money::is_positive`]. There is deliberately no `PartialOrd`: comparing USD with EUR must be
/// an error, so use [`Money::checked_cmp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub currency: CurrencyCode,
    pub minor_units: i64,
}

impl Money {
    pub fn new(currency: CurrencyCode, minor_units: i64) -> Self {
        Self {
            currency,
            minor_units,
        }
    }

    /// Zero of `currency`, the start of a sum.
    pub fn zero(currency: CurrencyCode) -> Self {
        Self::new(currency, 0)
    }

    pub fn currency(&self) -> CurrencyCode {
        self.currency
    }

    pub fn minor_units(&self) -> i64 {
        self.minor_units
    }

    pub fn is_zero(&self) -> bool {
        self.minor_units == 0
    }

    pub fn is_positive(&self) -> bool {
        self.minor_units > 0
    }

    pub fn is_negative(&self) -> bool {
        self.minor_units < 0
    }

    /// Returns the amount unchanged, or `Negative` if it is below zero.
    pub fn ensure_non_negative(self) -> Result<Self, MoneyError> {
        if self.is_negative() {
            Err(MoneyError::Negative)
        } else {
            Ok(self)
        }
    }

    /// `Ok(())` when both amounts are in the same currency.
    pub fn ensure_same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.ensure_same_currency(&other)?;
        self.minor_units
            .checked_add(other.minor_units)
            .map(|sum| Money::new(self.currency, sum))
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.ensure_same_currency(&other)?;
        self.minor_units
            .checked_sub(other.minor_units)
            .map(|diff| Money::new(self.currency, diff))
            .ok_or(MoneyError::Overflow)
    }

    /// Sums amounts that must all be in `currency` (for example every refund of an order).
    pub fn checked_sum<I>(currency: CurrencyCode, amounts: I) -> Result<Money, MoneyError>
    where
        I: IntoIterator<Item = Money>,
    {
        amounts
            .into_iter()
            .try_fold(Money::zero(currency), Money::checked_add)
    }

    /// Compares two amounts of the same currency.
    pub fn checked_cmp(&self, other: &Money) -> Result<Ordering, MoneyError> {
        self.ensure_same_currency(other)?;
        Ok(self.minor_units.cmp(&other.minor_units))
    }

    /// `self * numerator / denominator`, truncated toward zero.
    ///
    /// Truncation is the conservative choice for partial refunds: a share computed this way
    /// never exceeds the exact share, so a ratio of at most one never exceeds the base. The
    /// intermediate product is computed in `i128`, so only a final result outside `i64`
    /// overflows. Negative ratios are refused; a zero denominator is an `InvalidRatio`.
    pub fn checked_mul_ratio(self, numerator: i64, denominator: i64) -> Result<Money, MoneyError> {
        if denominator == 0 {
            return Err(MoneyError::InvalidRatio {
                numerator,
                denominator,
            });
        }
        if numerator < 0 || denominator < 0 {
            return Err(MoneyError::Negative);
        }
        let exact = i128::from(self.minor_units) * i128::from(numerator);
        let scaled = exact / i128::from(denominator);
        i64::try_from(scaled)
            .map(|minor| Money::new(self.currency, minor))
            .map_err(|_| MoneyError::Overflow)
    }

    /// `percent`% of the amount, truncated toward zero (see [`Money::checked_mul_ratio`]).
    pub fn percent(self, percent: i64) -> Result<Money, MoneyError> {
        self.checked_mul_ratio(percent, 100)
    }
}

impl fmt::Display for Money {
    /// "USD 12.34", "JPY 1200", "KWD -1.234": the code, then the amount in major units with
    /// exactly the currency's number of decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.minor_exponent();
        let sign = if self.minor_units < 0 { "-" } else { "" };
        // `unsigned_abs` so that i64::MIN prints instead of overflowing.
        let magnitude = self.minor_units.unsigned_abs();
        if exponent == 0 {
            return write!(f, "{} {sign}{magnitude}", self.currency);
        }
        let scale = 10u64.pow(exponent);
        write!(
            f,
            "{} {sign}{}.{:0width$}",
            self.currency,
            magnitude / scale,
            magnitude % scale,
            width = exponent as usize
        )
    }
}

/// Parts per million: the fixed-point unit of FX rates (1 USD = 1_000_000).
pub const PPM: u64 = 1_000_000;

/// The largest rate accepted (one unit worth a million dollars); a bound that keeps every
/// conversion inside `i128` and catches rates typed in the wrong unit.
const MAX_RATE_PPM: u64 = 1_000_000 * PPM;

/// How many US dollars one major unit of each currency is worth, in parts per million.
///
/// Only used to compare amounts with thresholds stated in USD (contested returns above USD 50,
/// fast refunds up to USD 25 / 100); money itself is never converted. Loaded from data
/// (`[rates_ppm]` in TOML, e.g. `EUR = 1080000`), and always has USD at exactly 1_000_000.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FxTableData", into = "FxTableData")]
pub struct FxTable {
    rates_ppm: BTreeMap<CurrencyCode, u64>,
}

/// The serialised shape of an [`FxTable`], validated on the way in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FxTableData {
    rates_ppm: BTreeMap<CurrencyCode, u64>,
}

impl TryFrom<FxTableData> for FxTable {
    type Error = MoneyError;
    fn try_from(data: FxTableData) -> Result<Self, Self::Error> {
        FxTable::new(data.rates_ppm)
    }
}

impl From<FxTable> for FxTableData {
    fn from(table: FxTable) -> Self {
        Self {
            rates_ppm: table.rates_ppm,
        }
    }
}

/// Illustrative mid-market rates (USD per unit, in ppm) for the currencies of the countries the
/// suite ships to. Production deployments load their own table; tests rely on these values.
const DEFAULT_RATES_PPM: [(CurrencyCode, u64); 16] = [
    (CurrencyCode::USD, 1_000_000),
    (CurrencyCode::EUR, 1_080_000),
    (CurrencyCode::GBP, 1_270_000),
    (CurrencyCode::JPY, 6_700),
    (CurrencyCode::CAD, 730_000),
    (CurrencyCode::AUD, 660_000),
    (CurrencyCode::PLN, 250_000),
    (CurrencyCode::CHF, 1_130_000),
    (CurrencyCode::KRW, 730),
    (CurrencyCode::MXN, 55_000),
    (CurrencyCode::CLP, 1_060),
    (CurrencyCode::ILS, 270_000),
    (CurrencyCode::AED, 272_294),
    (CurrencyCode::CZK, 44_000),
    (CurrencyCode::CNY, 138_000),
    (CurrencyCode::HKD, 128_205),
];

impl Default for FxTable {
    fn default() -> Self {
        Self {
            rates_ppm: DEFAULT_RATES_PPM.into_iter().collect(),
        }
    }
}

impl FxTable {
    /// Builds a table, refusing zero or absurd rates and a USD rate other than 1.
    pub fn new<I>(rates_ppm: I) -> Result<Self, MoneyError>
    where
        I: IntoIterator<Item = (CurrencyCode, u64)>,
    {
        let rates_ppm: BTreeMap<_, _> = rates_ppm.into_iter().collect();
        for (&currency, &rate) in &rates_ppm {
            let reason = if rate == 0 {
                Some("rate must be positive".to_owned())
            } else if rate > MAX_RATE_PPM {
                Some(format!(
                    "rate {rate} ppm is above the maximum {MAX_RATE_PPM}"
                ))
            } else if currency == CurrencyCode::USD && rate != PPM {
                Some(format!("USD must be exactly {PPM} ppm, got {rate}"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(MoneyError::InvalidFxRate { currency, reason });
            }
        }
        let mut table = Self { rates_ppm };
        // USD is implied: thresholds are in USD, so a table can never lack it.
        table.rates_ppm.insert(CurrencyCode::USD, PPM);
        Ok(table)
    }

    /// Parses a TOML document with a `[rates_ppm]` table.
    pub fn from_toml_str(text: &str) -> Result<Self, MoneyError> {
        toml::from_str(text).map_err(|e| MoneyError::InvalidFxRate {
            currency: CurrencyCode::USD,
            reason: format!("cannot parse FX table: {}", e.message()),
        })
    }

    /// The rate of `currency` in USD ppm, if configured.
    pub fn rate_ppm(&self, currency: CurrencyCode) -> Option<u64> {
        self.rates_ppm.get(&currency).copied()
    }

    /// The currencies the table knows, in code order.
    pub fn currencies(&self) -> impl Iterator<Item = CurrencyCode> + '_ {
        self.rates_ppm.keys().copied()
    }

    /// The amount's value in US cents, rounded away from zero.
    ///
    /// Rounding away from zero is the conservative choice for thresholds: an amount never
    /// looks smaller in USD than it is, so a limit stated as "up to USD 25" is never exceeded
    /// through rounding.
    pub fn to_usd_minor(&self, money: &Money) -> Result<i64, MoneyError> {
        let rate = self
            .rate_ppm(money.currency)
            .ok_or(MoneyError::MissingFxRate(money.currency))?;
        // usd_cents = minor / 10^exp * rate / 10^6 * 10^2, kept exact in i128 until the division.
        let numerator = i128::from(money.minor_units)
            .checked_mul(i128::from(rate))
            .and_then(|n| n.checked_mul(100))
            .ok_or(MoneyError::Overflow)?;
        let denominator = 10i128.pow(money.currency.minor_exponent()) * i128::from(PPM);
        let quotient = numerator / denominator;
        let remainder = numerator % denominator;
        // Integer division truncated toward zero; step one further away from zero when inexact.
        let rounded = match remainder.cmp(&0) {
            Ordering::Greater => quotient + 1,
            Ordering::Less => quotient - 1,
            Ordering::Equal => quotient,
        };
        i64::try_from(rounded).map_err(|_| MoneyError::Overflow)
    }

    /// Compares the amount's USD value with `usd_minor` US cents.
    pub fn cmp_usd(&self, money: &Money, usd_minor: i64) -> Result<Ordering, MoneyError> {
        Ok(self.to_usd_minor(money)?.cmp(&usd_minor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(code: &str, minor: i64) -> Money {
        Money::new(
            CurrencyCode::parse(code).expect("valid test currency"),
            minor,
        )
    }

    #[test]
    fn currency_codes_must_be_three_uppercase_letters() {
        assert_eq!(CurrencyCode::parse("USD"), Ok(CurrencyCode::USD));
        for bad in ["usd", "US", "USDT", "", "U5D", "ÜSD", " USD"] {
            assert!(
                matches!(
                    CurrencyCode::parse(bad),
                    Err(MoneyError::InvalidCurrency(_))
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn money_displays_with_the_currencys_number_of_decimals() {
        assert_eq!(money("USD", 1234).to_string(), "USD 12.34");
        assert_eq!(money("USD", 5).to_string(), "USD 0.05");
        assert_eq!(money("USD", -5).to_string(), "USD -0.05");
        assert_eq!(money("JPY", 1200).to_string(), "JPY 1200");
        assert_eq!(money("KRW", 15000).to_string(), "KRW 15000");
        assert_eq!(money("CLP", 990).to_string(), "CLP 990");
        assert_eq!(money("KWD", 1234).to_string(), "KWD 1.234");
        assert_eq!(money("BHD", -1).to_string(), "BHD -0.001");
        assert_eq!(
            money("EUR", i64::MIN).to_string(),
            "EUR -92233720368547758.08"
        );
    }

    #[test]
    fn adding_different_currencies_is_a_mismatch_not_a_sum() {
        let err = money("USD", 100).checked_add(money("EUR", 100));
        assert_eq!(
            err,
            Err(MoneyError::CurrencyMismatch {
                left: CurrencyCode::USD,
                right: CurrencyCode::EUR
            })
        );
    }

    #[test]
    fn overflow_is_reported_not_wrapped() {
        assert_eq!(
            money("USD", i64::MAX).checked_add(money("USD", 1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            money("USD", i64::MIN).checked_sub(money("USD", 1)),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn ratios_truncate_and_refuse_bad_ratios() {
        assert_eq!(money("USD", 999).percent(50), Ok(money("USD", 499)));
        assert_eq!(
            money("USD", 1000).checked_mul_ratio(1, 3),
            Ok(money("USD", 333))
        );
        assert_eq!(
            money("USD", i64::MAX).checked_mul_ratio(i64::MAX, i64::MAX),
            Ok(money("USD", i64::MAX))
        );
        assert_eq!(
            money("USD", i64::MAX).checked_mul_ratio(2, 1),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            money("USD", 10).checked_mul_ratio(1, 0),
            Err(MoneyError::InvalidRatio {
                numerator: 1,
                denominator: 0
            })
        );
        assert_eq!(
            money("USD", 10).checked_mul_ratio(-1, 2),
            Err(MoneyError::Negative)
        );
    }

    #[test]
    fn checked_sum_adds_a_list_and_stops_at_the_first_mismatch() {
        let sum = Money::checked_sum(CurrencyCode::USD, [money("USD", 1), money("USD", 2)]);
        assert_eq!(sum, Ok(money("USD", 3)));
        let mixed = Money::checked_sum(CurrencyCode::USD, [money("USD", 1), money("EUR", 2)]);
        assert!(matches!(mixed, Err(MoneyError::CurrencyMismatch { .. })));
        assert_eq!(
            Money::checked_sum(CurrencyCode::JPY, []),
            Ok(money("JPY", 0))
        );
    }

    #[test]
    fn comparing_amounts_requires_one_currency() {
        assert_eq!(
            money("USD", 1).checked_cmp(&money("USD", 2)),
            Ok(Ordering::Less)
        );
        assert!(money("USD", 1).checked_cmp(&money("GBP", 2)).is_err());
    }

    #[test]
    fn negative_amounts_are_caught_by_ensure_non_negative() {
        assert_eq!(
            money("USD", -1).ensure_non_negative(),
            Err(MoneyError::Negative)
        );
        assert_eq!(money("USD", 0).ensure_non_negative(), Ok(money("USD", 0)));
        assert!(money("USD", 1).is_positive() && !money("USD", 0).is_positive());
        assert!(money("USD", 0).is_zero());
    }

    #[test]
    fn money_serialises_as_code_and_minor_units() {
        let json = serde_json::to_string(&money("EUR", 1999)).expect("serialises");
        assert_eq!(json, r#"{"currency":"EUR","minor_units":1999}"#);
        let back: Money = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, money("EUR", 1999));
        assert!(serde_json::from_str::<Money>(r#"{"currency":"eur","minor_units":1}"#).is_err());
    }

    #[test]
    fn the_default_fx_table_covers_the_suites_currencies() {
        let table = FxTable::default();
        for code in [
            "USD", "EUR", "GBP", "JPY", "CAD", "AUD", "PLN", "CHF", "KRW", "MXN", "CLP", "ILS",
            "AED", "CZK", "CNY", "HKD",
        ] {
            let currency = CurrencyCode::parse(code).expect("valid code");
            assert!(table.rate_ppm(currency).is_some(), "{code} missing");
        }
        assert_eq!(table.currencies().count(), 16);
    }

    #[test]
    fn usd_converts_to_itself_exactly() {
        let table = FxTable::default();
        assert_eq!(table.to_usd_minor(&money("USD", 5000)), Ok(5000));
        assert_eq!(table.to_usd_minor(&money("USD", -7)), Ok(-7));
    }

    #[test]
    fn conversion_accounts_for_the_minor_unit_exponent() {
        let table = FxTable::default();
        // EUR 50.00 at 1.08 = USD 54.00 exactly.
        assert_eq!(table.to_usd_minor(&money("EUR", 5000)), Ok(5400));
        // JPY 10000 (no minor unit) at 0.0067 = USD 67.00 exactly.
        assert_eq!(table.to_usd_minor(&money("JPY", 10_000)), Ok(6700));
        // KRW 100000 at 0.00073 = USD 73.00.
        assert_eq!(table.to_usd_minor(&money("KRW", 100_000)), Ok(7300));
        // CLP 1000 at 0.00106 = USD 1.06.
        assert_eq!(table.to_usd_minor(&money("CLP", 1000)), Ok(106));
    }

    #[test]
    fn conversion_rounds_away_from_zero_so_limits_are_never_undershot() {
        let table = FxTable::default();
        // JPY 1 = USD 0.0067 → 0.67 cents → rounds up to 1 cent.
        assert_eq!(table.to_usd_minor(&money("JPY", 1)), Ok(1));
        // EUR 0.01 = 1.08 cents → 2 cents.
        assert_eq!(table.to_usd_minor(&money("EUR", 1)), Ok(2));
        assert_eq!(table.to_usd_minor(&money("EUR", -1)), Ok(-2));
        assert_eq!(table.to_usd_minor(&money("EUR", 0)), Ok(0));
        // Three-decimal currencies: KWD 1.000 at 3.25 USD.
        let kwd = FxTable::new([(CurrencyCode::KWD, 3_250_000)]).expect("valid table");
        assert_eq!(kwd.to_usd_minor(&money("KWD", 1000)), Ok(325));
        assert_eq!(kwd.to_usd_minor(&money("KWD", 1)), Ok(1));
    }

    #[test]
    fn conversion_of_an_unknown_currency_or_a_huge_amount_is_an_error() {
        let table = FxTable::default();
        assert_eq!(
            table.to_usd_minor(&money("SEK", 100)),
            Err(MoneyError::MissingFxRate(
                CurrencyCode::parse("SEK").expect("valid")
            ))
        );
        assert_eq!(
            table.to_usd_minor(&money("GBP", i64::MAX)),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn fx_thresholds_compare_in_usd() {
        let table = FxTable::default();
        // GBP 19.68 = USD 24.9936 → 2500 cents (rounded up): at the limit, not over it.
        assert_eq!(
            table.cmp_usd(&money("GBP", 1968), 2500),
            Ok(Ordering::Equal)
        );
        assert_eq!(
            table.cmp_usd(&money("GBP", 1969), 2500),
            Ok(Ordering::Greater)
        );
    }

    #[test]
    fn fx_tables_load_from_toml_and_refuse_bad_rates() {
        let table = FxTable::from_toml_str("[rates_ppm]\nEUR = 1100000\nSEK = 95000\n")
            .expect("valid table");
        assert_eq!(table.rate_ppm(CurrencyCode::EUR), Some(1_100_000));
        assert_eq!(
            table.rate_ppm(CurrencyCode::USD),
            Some(PPM),
            "USD is implied"
        );
        for bad in [
            "[rates_ppm]\nEUR = 0\n",
            "[rates_ppm]\nUSD = 900000\n",
            "[rates_ppm]\neur = 1\n",
            "[rates_ppm]\nEUR = -5\n",
            "[rates_ppm]\nEUR = 1000000000000001\n",
            "[rates]\nEUR = 1\n",
            "not toml",
        ] {
            assert!(
                FxTable::from_toml_str(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
