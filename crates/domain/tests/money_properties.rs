//! Property tests for money: arithmetic is exact or refused, never wrapped, never mixed.

use proptest::prelude::*;
use returns_domain::money::{CurrencyCode, FxTable, ISO_4217, Money, MoneyError};

fn currency() -> impl Strategy<Value = CurrencyCode> {
    prop::sample::select(ISO_4217)
        .prop_map(|code| CurrencyCode::parse(code).expect("an ISO 4217 code"))
}

proptest! {
    /// Three uppercase letters are not enough: only codes on the ISO 4217 list are money.
    #[test]
    fn only_active_iso_4217_codes_parse(code in "[A-Z]{3}") {
        prop_assert_eq!(CurrencyCode::parse(&code).is_ok(), ISO_4217.contains(&code.as_str()));
    }
}

/// Amounts anywhere in `i64`, with extra weight at the edges where overflow lives.
fn minor_units() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        (i64::MAX - 1000)..=i64::MAX,
        i64::MIN..=(i64::MIN + 1000),
        -1_000_000i64..1_000_000,
    ]
}

fn two_distinct_currencies() -> impl Strategy<Value = (CurrencyCode, CurrencyCode)> {
    (currency(), currency()).prop_filter("currencies must differ", |(a, b)| a != b)
}

proptest! {
    #[test]
    fn addition_is_exact_when_the_sum_fits_and_an_overflow_error_otherwise(
        c in currency(), a in minor_units(), b in minor_units()
    ) {
        let exact = i128::from(a) + i128::from(b);
        let result = Money::new(c, a).checked_add(Money::new(c, b));
        match i64::try_from(exact) {
            Ok(sum) => prop_assert_eq!(result, Ok(Money::new(c, sum))),
            Err(_) => prop_assert_eq!(result, Err(MoneyError::Overflow)),
        }
    }

    #[test]
    fn subtraction_is_exact_when_the_difference_fits_and_an_overflow_error_otherwise(
        c in currency(), a in minor_units(), b in minor_units()
    ) {
        let exact = i128::from(a) - i128::from(b);
        let result = Money::new(c, a).checked_sub(Money::new(c, b));
        match i64::try_from(exact) {
            Ok(diff) => prop_assert_eq!(result, Ok(Money::new(c, diff))),
            Err(_) => prop_assert_eq!(result, Err(MoneyError::Overflow)),
        }
    }

    #[test]
    fn different_currencies_never_combine(
        (left, right) in two_distinct_currencies(), a in minor_units(), b in minor_units()
    ) {
        let mismatch = Err(MoneyError::CurrencyMismatch { left, right });
        prop_assert_eq!(Money::new(left, a).checked_add(Money::new(right, b)), mismatch.clone());
        prop_assert_eq!(Money::new(left, a).checked_sub(Money::new(right, b)), mismatch);
        prop_assert!(Money::new(left, a).checked_cmp(&Money::new(right, b)).is_err());
        prop_assert!(
            Money::checked_sum(left, [Money::new(left, a), Money::new(right, b)]).is_err()
        );
    }

    #[test]
    fn adding_then_subtracting_the_same_amount_gives_back_the_original(
        c in currency(), a in minor_units(), b in minor_units()
    ) {
        let start = Money::new(c, a);
        if let Ok(sum) = start.checked_add(Money::new(c, b)) {
            prop_assert_eq!(sum.checked_sub(Money::new(c, b)), Ok(start));
        }
        if let Ok(diff) = start.checked_sub(Money::new(c, b)) {
            prop_assert_eq!(diff.checked_add(Money::new(c, b)), Ok(start));
        }
    }

    #[test]
    fn a_ratio_of_at_most_one_never_exceeds_the_base(
        c in currency(),
        base in 0i64..=i64::MAX,
        (numerator, denominator) in (1i64..=i64::MAX)
            .prop_flat_map(|d| (0..=d, Just(d))),
    ) {
        let share = Money::new(c, base).checked_mul_ratio(numerator, denominator);
        let share = share.expect("a ratio of at most one cannot overflow a non-negative base");
        prop_assert_eq!(share.currency, c);
        prop_assert!(share.minor_units >= 0);
        prop_assert!(share.minor_units <= base);
        // Truncation: the share is the floor of the exact value.
        let exact = i128::from(base) * i128::from(numerator);
        prop_assert!(i128::from(share.minor_units) * i128::from(denominator) <= exact);
        prop_assert!((i128::from(share.minor_units) + 1) * i128::from(denominator) > exact);
    }

    #[test]
    fn a_percentage_of_at_most_one_hundred_never_exceeds_the_base(
        base in 0i64..=i64::MAX, percent in 0i64..=100
    ) {
        let share = Money::new(CurrencyCode::USD, base).percent(percent);
        prop_assert!(matches!(share, Ok(m) if (0..=base).contains(&m.minor_units)));
    }

    #[test]
    fn usd_conversion_never_rounds_an_amount_down(
        minor in -1_000_000_000_000i64..1_000_000_000_000,
        idx in 0usize..16,
    ) {
        let table = FxTable::default();
        let currency = table.currencies().nth(idx).expect("the default table has 16 currencies");
        let money = Money::new(currency, minor);
        let usd = table.to_usd_minor(&money).expect("in range");
        // Exact USD cents as a fraction: minor * rate * 100 / (10^exp * 10^6).
        let rate = i128::from(table.rate_ppm(currency).expect("known currency"));
        let numerator = i128::from(minor) * rate * 100;
        let denominator = 10i128.pow(currency.minor_exponent()) * 1_000_000;
        // |usd| is the smallest whole number of cents at or above the exact magnitude.
        let usd = i128::from(usd);
        prop_assert_eq!(usd.signum() * numerator.signum() >= 0, true);
        prop_assert!(usd.abs() * denominator >= numerator.abs());
        prop_assert!((usd.abs() - 1) * denominator < numerator.abs());
    }
}
