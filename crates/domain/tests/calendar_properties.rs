//! Property tests for business-day arithmetic, checked against a day-by-day reference model.

use std::collections::BTreeSet;

use chrono::{Datelike, Days, NaiveDate, Weekday};
use proptest::prelude::*;
use returns_domain::calendar::BusinessCalendar;

fn base() -> NaiveDate {
    NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid date")
}

fn offset(days: u64) -> NaiveDate {
    base()
        .checked_add_days(Days::new(days))
        .expect("offsets stay in range")
}

/// A start date within twenty years, and holidays dense enough around it to matter (up to 80
/// within the ~2.5 years after it, landing on weekdays and weekends alike).
fn date_and_calendar() -> impl Strategy<Value = (NaiveDate, BusinessCalendar)> {
    (0u64..7300).prop_flat_map(|start| {
        let holidays =
            proptest::collection::btree_set(start.saturating_sub(10)..start + 900, 0..80);
        (
            Just(offset(start)),
            holidays.prop_map(|days| BusinessCalendar::new(days.into_iter().map(offset))),
        )
    })
}

/// The obviously correct model: walk one day at a time and count the business days.
fn reference_is_business_day(holidays: &BTreeSet<NaiveDate>, d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !holidays.contains(&d)
}

fn reference_add(holidays: &BTreeSet<NaiveDate>, start: NaiveDate, n: u32) -> NaiveDate {
    let mut d = start;
    if n == 0 {
        while !reference_is_business_day(holidays, d) {
            d = d.succ_opt().expect("in range");
        }
        return d;
    }
    let mut left = n;
    while left > 0 {
        d = d.succ_opt().expect("in range");
        if reference_is_business_day(holidays, d) {
            left -= 1;
        }
    }
    d
}

proptest! {
    #[test]
    fn adding_business_days_always_lands_on_a_business_day(
        (start, cal) in date_and_calendar(), n in 0u32..400
    ) {
        let end = cal.add_business_days(start, n);
        prop_assert!(cal.is_business_day(end), "{} + {} = {} ({})", start, n, end, end.weekday());
        prop_assert!(end >= start);
    }

    #[test]
    fn adding_business_days_agrees_with_walking_day_by_day(
        (start, cal) in date_and_calendar(), n in 0u32..400
    ) {
        prop_assert_eq!(cal.add_business_days(start, n), reference_add(&cal.holidays, start, n));
    }

    #[test]
    fn counting_undoes_adding_from_a_business_day(
        (start, cal) in date_and_calendar(), n in 0u32..400
    ) {
        let start = cal.add_business_days(start, 0);
        prop_assert!(cal.is_business_day(start));
        let end = cal.add_business_days(start, n);
        prop_assert_eq!(cal.business_days_between(start, end), i64::from(n));
        prop_assert_eq!(cal.business_days_between(end, start), -i64::from(n));
    }

    #[test]
    fn adding_more_business_days_never_lands_earlier(
        (start, cal) in date_and_calendar(), n in 0u32..400
    ) {
        let here = cal.add_business_days(start, n);
        let next = cal.add_business_days(start, n + 1);
        prop_assert!(here <= next);
        // Strictly later except from a non-business day, where +0 and +1 both name the
        // first business day after it.
        if n >= 1 || cal.is_business_day(start) {
            prop_assert!(here < next);
        }
    }

    #[test]
    fn counting_agrees_with_walking_day_by_day(
        (start, cal) in date_and_calendar(), span in 0u64..900
    ) {
        let end = start.checked_add_days(Days::new(span)).expect("in range");
        let walked = start
            .iter_days()
            .skip(1)
            .take_while(|d| *d <= end)
            .filter(|d| reference_is_business_day(&cal.holidays, *d))
            .count();
        prop_assert_eq!(cal.business_days_between(start, end), walked as i64);
    }
}
