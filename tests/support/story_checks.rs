//! Checks on a story's outcome that the in-process stories and the deployed topology both
//! make: a story's one refund, and the business days of its payment timeline.

use chrono::{DateTime, NaiveDate, Utc};
use returns::stories::StoryOutcome;
use returns_domain::calendar::BusinessCalendar;
use returns_proto::refunds::v1::{Refund, RefundStatus};

fn date(at: &Option<prost_types::Timestamp>) -> NaiveDate {
    at.as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .expect("a timestamp")
        .date_naive()
}

/// Business days from the refund's creation to its expected earliest and latest dates.
pub fn timeline(refund: &Refund) -> (i64, i64) {
    let calendar = BusinessCalendar::weekends_only();
    let created = date(&refund.created_at);
    (
        calendar.business_days_between(created, date(&refund.expected_earliest)),
        calendar.business_days_between(created, date(&refund.expected_latest)),
    )
}

pub fn only_refund(outcome: &StoryOutcome) -> &Refund {
    assert_eq!(outcome.refunds.len(), 1, "{:?}", outcome.refunds);
    &outcome.refunds[0]
}

pub fn assert_succeeded_in_window(refund: &Refund) {
    assert_eq!(refund.status, RefundStatus::Succeeded as i32, "{refund:?}");
    let succeeded = date(&refund.succeeded_at);
    assert!(succeeded >= date(&refund.expected_earliest), "{refund:?}");
    assert!(succeeded <= date(&refund.expected_latest), "{refund:?}");
}
