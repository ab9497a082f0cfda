//! Business-day arithmetic: weekends (Saturday, Sunday) plus configured holidays are skipped.
//!
//! Refund timelines are promised in business days ("card: 5-15 business days"), so the refunds
//! service turns a request time into an expected window with this calendar. Dates are UTC
//! calendar dates: the suite serves buyers in many time zones and one global calendar keeps
//! the promise the same for everyone; a holiday list is data, loaded from configuration.

use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Included};

use chrono::{Datelike, Days, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A span of business days, e.g. card refunds arrive 5 to 15 business days after submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessDayRange {
    /// The soonest the money can arrive, in business days.
    pub earliest: u32,
    /// The latest it should arrive; never below `earliest` (checked by `Policy::validate`).
    pub latest: u32,
}

impl BusinessDayRange {
    pub fn new(earliest: u32, latest: u32) -> Self {
        Self { earliest, latest }
    }

    /// Whether the range is well-formed (`earliest <= latest`).
    pub fn is_valid(&self) -> bool {
        self.earliest <= self.latest
    }
}

/// Which days are business days: every Monday to Friday that is not in `holidays`.
///
/// Deserialises from a plain list of ISO dates, e.g. `["2026-12-25", "2027-01-01"]`
/// (strings, also in TOML). Holidays on a weekend are allowed and change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BusinessCalendar {
    pub holidays: BTreeSet<NaiveDate>,
}

impl BusinessCalendar {
    pub fn new<I: IntoIterator<Item = NaiveDate>>(holidays: I) -> Self {
        Self {
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Weekends only, no holidays.
    pub fn weekends_only() -> Self {
        Self::default()
    }

    pub fn is_holiday(&self, date: NaiveDate) -> bool {
        self.holidays.contains(&date)
    }

    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        !is_weekend(date) && !self.is_holiday(date)
    }

    /// The `n`-th business day strictly after `date`.
    ///
    /// `date` itself never counts, so from a Friday `+1` is the next Monday, and from a
    /// Saturday `+1` is also that Monday. For `n == 0` the result is `date` when it is a
    /// business day, otherwise the next business day: "zero business days" means "today, or
    /// the first day work happens". The result is always a business day, except that it
    /// saturates at `NaiveDate::MAX` instead of panicking, far beyond any real input.
    pub fn add_business_days(&self, date: NaiveDate, n: u32) -> NaiveDate {
        if n == 0 {
            return if self.is_business_day(date) {
                date
            } else {
                self.add_business_days(date, 1)
            };
        }
        let mut current = date;
        let mut remaining = u64::from(n);
        loop {
            if remaining > 5 {
                // Jump whole weeks: (current, current + 7w] always holds exactly 5w weekdays,
                // minus the weekday holidays in it. Taking w = (remaining - 1) / 5 leaves at
                // least one business day to find, so the answer lies strictly after the jump
                // target and the day-by-day walk below finds it.
                let weeks = (remaining - 1) / 5;
                let Some(target) = current.checked_add_days(Days::new(weeks * 7)) else {
                    return NaiveDate::MAX;
                };
                let holidays = self.weekday_holidays_in(current, target);
                remaining -= weeks * 5 - holidays;
                current = target;
                continue;
            }
            let Some(next) = current.succ_opt() else {
                return NaiveDate::MAX;
            };
            current = next;
            if self.is_business_day(current) {
                remaining -= 1;
                if remaining == 0 {
                    return current;
                }
            }
        }
    }

    /// The number of business days in `(start, end]`, negated when `end` is before `start`.
    ///
    /// This is the inverse of [`Self::add_business_days`]: for a business day `d`,
    /// `business_days_between(d, add_business_days(d, n)) == n`.
    pub fn business_days_between(&self, start: NaiveDate, end: NaiveDate) -> i64 {
        if end >= start {
            self.count_after_up_to(start, end)
        } else {
            -self.count_after_up_to(end, start)
        }
    }

    /// The expected arrival window of something promised `range` business days after `start`.
    ///
    /// Both ends keep `start`'s UTC time of day: a refund submitted on Friday at 10:00 with
    /// `{5, 15}` is expected from the fifth business day at 10:00 to the fifteenth at 10:00.
    /// Keeping the time (rather than snapping to end of day) makes the window exactly a whole
    /// number of business days long, and the same request always yields the same window.
    pub fn expected_window(
        &self,
        start: Timestamp,
        range: BusinessDayRange,
    ) -> (Timestamp, Timestamp) {
        (
            self.add_business_days_at(start, range.earliest),
            self.add_business_days_at(start, range.latest),
        )
    }

    /// [`Self::add_business_days`] on a timestamp, keeping its UTC time of day.
    pub fn add_business_days_at(&self, start: Timestamp, n: u32) -> Timestamp {
        self.add_business_days(start.date_naive(), n)
            .and_time(start.time())
            .and_utc()
    }

    /// Business days in `(start, end]` with `start <= end`, computed without walking the days.
    fn count_after_up_to(&self, start: NaiveDate, end: NaiveDate) -> i64 {
        let days = (end - start).num_days();
        let (weeks, rest) = (days / 7, days % 7);
        let start_weekday = i64::from(start.weekday().num_days_from_monday());
        // Every full week contributes five weekdays; the leftover days after them are
        // start + 7w + 1 ..= start + 7w + rest, whose weekdays follow start's.
        let rest_weekdays = (1..=rest).filter(|k| (start_weekday + k) % 7 < 5).count();
        let weekdays = weeks * 5 + rest_weekdays as i64;
        weekdays - self.weekday_holidays_in(start, end) as i64
    }

    /// Holidays falling on a weekday in `(start, end]`; weekend holidays are not extra days off.
    fn weekday_holidays_in(&self, start: NaiveDate, end: NaiveDate) -> u64 {
        if end <= start {
            return 0;
        }
        self.holidays
            .range((Excluded(start), Included(end)))
            .filter(|d| !is_weekend(**d))
            .count() as u64
    }
}

fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    /// Christmas 2026 and New Year 2027, both Fridays.
    fn year_end() -> BusinessCalendar {
        BusinessCalendar::new([date(2026, 12, 25), date(2027, 1, 1)])
    }

    // The calendar around the holidays, checked against `cal 12 2026` and `cal 1 2027`:
    //   Fri 12-18 | Sat 19  Sun 20 | Mon 21  Tue 22  Wed 23  Thu 24  Fri 25 (holiday)
    //   Sat 26  Sun 27 | Mon 28  Tue 29  Wed 30  Thu 31  Fri 01-01 (holiday)
    //   Sat 02  Sun 03 | Mon 04  Tue 05  Wed 06  Thu 07  Fri 08 | Mon 11 ... Fri 15 | Mon 18 Tue 19
    #[test]
    fn adding_business_days_matches_a_hand_checked_table_with_holidays() {
        let cal = year_end();
        let table = [
            // From Friday 12-18, a business day, so +0 is the day itself.
            (date(2026, 12, 18), 0, date(2026, 12, 18)),
            // +1 skips the weekend.
            (date(2026, 12, 18), 1, date(2026, 12, 21)),
            // Mon 21 (1), Tue 22 (2), Wed 23 (3), Thu 24 (4).
            (date(2026, 12, 18), 4, date(2026, 12, 24)),
            // The fifth would be Fri 25, a holiday, then the weekend: Mon 28.
            (date(2026, 12, 18), 5, date(2026, 12, 28)),
            // Tue 29 (6), Wed 30 (7), Thu 31 (8), then Fri 01-01 is a holiday: Mon 01-04 (9).
            (date(2026, 12, 18), 8, date(2026, 12, 31)),
            (date(2026, 12, 18), 9, date(2027, 1, 4)),
            // Tue 01-05 (10), Wed 6 (11), Thu 7 (12), Fri 8 (13), Mon 11 (14), Tue 12 (15).
            (date(2026, 12, 18), 10, date(2027, 1, 5)),
            (date(2026, 12, 18), 15, date(2027, 1, 12)),
            // Wed 13 (16), Thu 14 (17), Fri 15 (18), Mon 18 (19), Tue 19 (20).
            (date(2026, 12, 18), 20, date(2027, 1, 19)),
            // From Saturday 12-19: +0 rolls to Monday, +1 is also Monday (the start never counts).
            (date(2026, 12, 19), 0, date(2026, 12, 21)),
            (date(2026, 12, 19), 1, date(2026, 12, 21)),
            // Mon 21 (1) .. Thu 24 (4), Mon 28 (5).
            (date(2026, 12, 19), 5, date(2026, 12, 28)),
            // From Thursday 12-24: the next business day is after the holiday and the weekend.
            (date(2026, 12, 24), 1, date(2026, 12, 28)),
            // From the holiday itself: +0 rolls to Mon 28; +3 is Mon 28, Tue 29, Wed 30.
            (date(2026, 12, 25), 0, date(2026, 12, 28)),
            (date(2026, 12, 25), 3, date(2026, 12, 30)),
        ];
        for (start, n, expected) in table {
            assert_eq!(
                cal.add_business_days(start, n),
                expected,
                "{start} + {n} business days"
            );
        }
    }

    #[test]
    fn without_the_holiday_christmas_is_an_ordinary_friday() {
        let cal = BusinessCalendar::weekends_only();
        assert_eq!(
            cal.add_business_days(date(2026, 12, 18), 5),
            date(2026, 12, 25)
        );
        assert!(cal.is_business_day(date(2026, 12, 25)));
        assert!(!year_end().is_business_day(date(2026, 12, 25)));
    }

    #[test]
    fn counting_business_days_matches_the_same_table() {
        let cal = year_end();
        // Mon 21 .. Thu 24 and Mon 28: five, the holiday and the weekend not counted.
        assert_eq!(
            cal.business_days_between(date(2026, 12, 18), date(2026, 12, 28)),
            5
        );
        assert_eq!(
            cal.business_days_between(date(2026, 12, 28), date(2026, 12, 18)),
            -5
        );
        assert_eq!(
            cal.business_days_between(date(2026, 12, 18), date(2027, 1, 19)),
            20
        );
        // A weekend alone holds no business days; a span ending on a holiday skips it.
        assert_eq!(
            cal.business_days_between(date(2026, 12, 19), date(2026, 12, 20)),
            0
        );
        assert_eq!(
            cal.business_days_between(date(2026, 12, 24), date(2026, 12, 25)),
            0
        );
        assert_eq!(
            cal.business_days_between(date(2026, 12, 18), date(2026, 12, 18)),
            0
        );
    }

    #[test]
    fn a_holiday_on_a_weekend_changes_nothing() {
        let cal = BusinessCalendar::new([date(2026, 12, 26)]);
        assert_eq!(
            cal.add_business_days(date(2026, 12, 18), 10),
            BusinessCalendar::weekends_only().add_business_days(date(2026, 12, 18), 10)
        );
        assert_eq!(
            cal.business_days_between(date(2026, 12, 18), date(2027, 1, 1)),
            10
        );
    }

    #[test]
    fn the_expected_window_keeps_the_time_of_day() {
        let cal = year_end();
        let start = Utc
            .with_ymd_and_hms(2026, 12, 18, 10, 30, 0)
            .single()
            .expect("valid");
        let (earliest, latest) = cal.expected_window(start, BusinessDayRange::new(5, 15));
        assert_eq!(
            earliest,
            Utc.with_ymd_and_hms(2026, 12, 28, 10, 30, 0)
                .single()
                .expect("valid")
        );
        assert_eq!(
            latest,
            Utc.with_ymd_and_hms(2027, 1, 12, 10, 30, 0)
                .single()
                .expect("valid")
        );
    }

    #[test]
    fn huge_counts_saturate_instead_of_panicking() {
        let cal = BusinessCalendar::weekends_only();
        assert_eq!(
            cal.add_business_days(date(2026, 1, 1), u32::MAX),
            NaiveDate::MAX
        );
    }

    #[test]
    fn the_calendar_deserialises_from_a_list_of_iso_dates() {
        let cal: BusinessCalendar =
            serde_json::from_str(r#"["2026-12-25", "2027-01-01"]"#).expect("parses");
        assert_eq!(cal, year_end());

        #[derive(Deserialize)]
        struct Config {
            holidays: BusinessCalendar,
        }
        let config: Config =
            toml::from_str("holidays = [\"2026-12-25\", \"2027-01-01\"]").expect("parses");
        assert_eq!(config.holidays, year_end());
        assert!(serde_json::from_str::<BusinessCalendar>(r#"["2026-02-30"]"#).is_err());
    }
}
