//! Injected time: a `Clock` trait, the system clock for production and a manual clock for tests.
//!
//! Every deadline in the suite is computed from `Clock::now`, never from the system time
//! directly (docs/delivery.md, "One clock per purpose"), so a test can move time forward by
//! fifteen days and watch a seller's response window lapse. Timestamps are kept at
//! microsecond precision because storage keeps them as `i64` microseconds since the Unix
//! epoch; truncating at the source means a value read back from the database equals the value
//! written.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SubsecRound, Utc};

/// The one timestamp type of the suite: UTC, microsecond precision by convention.
pub type Timestamp = DateTime<Utc>;

/// A source of "now". Object-safe so services can hold an `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, truncated to microseconds.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The wall clock, for production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_to_micros(Utc::now())
    }
}

/// A clock that only moves when told to, for tests and the `RETURNS_TEST_CLOCK` mode.
///
/// Clones share one time (the state sits behind an `Arc`), so the three services of the suite
/// launcher can be handed clones of one clock and see the same "now".
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock showing `start` (truncated to microseconds).
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(truncate_to_micros(start))),
        }
    }

    /// Moves time forward by `by` and returns the new time.
    ///
    /// Takes a `std::time::Duration` so the clock can never be advanced backwards: deadlines
    /// that already fired must stay fired. Advancing past the last representable instant
    /// stops there instead of panicking. Sub-microsecond parts of `by` are dropped.
    pub fn advance(&self, by: std::time::Duration) -> Timestamp {
        let mut now = self.lock();
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        let next = now
            .checked_add_signed(chrono::Duration::microseconds(micros))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        *now = truncate_to_micros(next);
        *now
    }

    /// Moves time forward by whole seconds; the shape of the test-clock RPC `AdvanceClock`.
    pub fn advance_secs(&self, seconds: u64) -> Timestamp {
        self.advance(std::time::Duration::from_secs(seconds))
    }

    /// Sets the clock to `to`, forwards or backwards.
    ///
    /// Unlike `advance` this may go back; it exists for test set-up (placing "now" before an
    /// order's ship date), not for moving a running suite.
    pub fn set(&self, to: Timestamp) {
        *self.lock() = truncate_to_micros(to);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // A panic while holding the lock cannot leave a half-written timestamp behind (the
        // write is a single assignment), so a poisoned lock is still safe to use.
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.lock()
    }
}

/// Drops everything below a microsecond, the precision storage keeps.
pub fn truncate_to_micros(ts: Timestamp) -> Timestamp {
    ts.trunc_subsecs(6)
}

/// Microseconds since the Unix epoch, the storage representation of a [`Timestamp`].
///
/// Every `DateTime<Utc>` chrono can represent fits in an `i64` of microseconds, so this
/// cannot fail; nanoseconds are truncated.
pub fn to_unix_micros(ts: Timestamp) -> i64 {
    ts.timestamp_micros()
}

/// The inverse of [`to_unix_micros`]; `None` for values outside chrono's range, which can
/// only come from corrupt storage.
pub fn from_unix_micros(micros: i64) -> Option<Timestamp> {
    DateTime::<Utc>::from_timestamp_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> Timestamp {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .expect("valid test date")
    }

    #[test]
    fn clones_of_a_manual_clock_share_one_time() {
        let clock = ManualClock::new(at(2026, 1, 1));
        let other = clock.clone();
        clock.advance(std::time::Duration::from_secs(15 * 24 * 3600));
        assert_eq!(other.now(), at(2026, 1, 16));
    }

    #[test]
    fn advance_returns_the_new_time_and_set_can_rewind_for_setup() {
        let clock = ManualClock::new(at(2026, 1, 1));
        assert_eq!(clock.advance_secs(24 * 3600), at(2026, 1, 2));
        clock.set(at(2025, 6, 1));
        assert_eq!(clock.now(), at(2025, 6, 1));
    }

    #[test]
    fn advancing_past_the_end_of_time_saturates_instead_of_panicking() {
        let clock = ManualClock::new(at(2026, 1, 1));
        let end = clock.advance(std::time::Duration::MAX);
        assert_eq!(end, truncate_to_micros(DateTime::<Utc>::MAX_UTC));
        assert_eq!(clock.advance_secs(1), end);
    }

    #[test]
    fn manual_clock_time_is_truncated_to_microseconds() {
        let start = at(2026, 1, 1) + chrono::Duration::nanoseconds(1_234_567);
        let clock = ManualClock::new(start);
        assert_eq!(
            clock.now(),
            at(2026, 1, 1) + chrono::Duration::microseconds(1_234)
        );
        clock.advance(std::time::Duration::from_nanos(999));
        assert_eq!(
            clock.now(),
            at(2026, 1, 1) + chrono::Duration::microseconds(1_234)
        );
    }

    #[test]
    fn system_clock_readings_survive_a_round_trip_through_storage_micros() {
        let now = SystemClock.now();
        assert_eq!(from_unix_micros(to_unix_micros(now)), Some(now));
    }

    #[test]
    fn unix_micros_round_trip_and_reject_out_of_range_values() {
        let ts = at(2026, 12, 18);
        assert_eq!(to_unix_micros(ts), 1_797_595_200_000_000);
        assert_eq!(from_unix_micros(1_797_595_200_000_000), Some(ts));
        assert_eq!(from_unix_micros(i64::MAX), None);
    }

    #[test]
    fn a_clock_can_be_shared_as_a_trait_object() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(at(2026, 3, 1)));
        assert_eq!(clock.now(), at(2026, 3, 1));
    }
}
