//! `refund_ledger`: the append-only movements of refunds between statuses, and the
//! settlement report summed from them.

use chrono::Datelike;
use returns_domain::dispute::PaymentMethod;
use returns_domain::ids::LedgerEntryId;
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::refund::RefundStatus;
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database};

use super::refunds::RefundRow;
use super::stored_code;

/// The UTC calendar day of an instant, "YYYY-MM-DD", the report's grouping key.
pub fn day_of(at: Timestamp) -> String {
    format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day())
}

/// Appends the ledger movements of a refund going from `before` (status and net amount it
/// counted with; `None` for a new refund) to its current status and net amount.
///
/// Pushed into `batch`, so the movements go to the database with the rest of the change (a
/// caller outside [`returns_platform::mutation::mutate`] executes its batch before COMMIT).
pub fn append_ledger(
    batch: &mut WriteBatch,
    before: Option<(RefundStatus, Money)>,
    refund: &RefundRow,
    now: Timestamp,
) {
    if before == Some((refund.status, refund.net)) {
        return;
    }
    let day = day_of(now);
    let at = to_unix_micros(now);
    let mut entries = Vec::with_capacity(2);
    if let Some((status, net)) = before {
        entries.push((status, -net.minor_units, -1_i64));
    }
    entries.push((refund.status, refund.net.minor_units, 1));
    for (status, amount, count) in entries {
        batch
            .push(
                "INSERT INTO refund_ledger (entry_id, refund_id, order_id, currency, \
                 payment_method, status, amount_minor, count_delta, day, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(LedgerEntryId::new().to_string())
            .bind(refund.refund_id.to_string())
            .bind(refund.order_id.as_str().to_owned())
            .bind(refund.amount.currency.to_string())
            .bind(refund.method.code())
            .bind(status.code())
            .bind(amount)
            .bind(count)
            .bind(day.clone())
            .bind(at);
    }
}

/// One group of the settlement report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub day: String,
    pub currency: CurrencyCode,
    pub method: PaymentMethod,
    pub status: RefundStatus,
    pub count: i64,
    pub total_minor: i64,
}

/// A report group as summed by the database.
#[derive(sqlx::FromRow)]
struct ReportRecord {
    day: String,
    #[sqlx(try_from = "String")]
    currency: CurrencyCode,
    payment_method: String,
    status: String,
    refunds: i64,
    total: i64,
}

impl TryFrom<ReportRecord> for ReportRow {
    type Error = ApiError;

    fn try_from(record: ReportRecord) -> Result<Self, ApiError> {
        Ok(ReportRow {
            day: record.day,
            currency: record.currency,
            method: stored_code(&record.payment_method)?,
            status: stored_code(&record.status)?,
            count: record.refunds,
            total_minor: record.total,
        })
    }
}

/// Ledger movements in `[start, end)` summed by day, currency, method and status; only in
/// `currency` when one is given.
pub async fn report_rows(
    db: &Database,
    start: i64,
    end: i64,
    currency: Option<CurrencyCode>,
) -> Result<Vec<ReportRow>, ApiError> {
    let only_currency = if currency.is_some() {
        " AND currency = $3"
    } else {
        ""
    };
    let sql = format!(
        "SELECT day, currency, payment_method, status, \
         CAST(SUM(count_delta) AS BIGINT) AS refunds, \
         CAST(SUM(amount_minor) AS BIGINT) AS total \
         FROM refund_ledger WHERE at >= $1 AND at < $2{only_currency} \
         GROUP BY day, currency, payment_method, status \
         ORDER BY day, currency, payment_method, status"
    );
    let mut query = sqlx::query_as::<_, ReportRecord>(&sql)
        .bind(start)
        .bind(end);
    if let Some(currency) = currency {
        query = query.bind(currency.to_string());
    }
    let records = query.fetch_all(db.pool()).await?;
    records.into_iter().map(ReportRow::try_from).collect()
}
