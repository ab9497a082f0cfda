//! `return_events`: return progress reported per order and label, kept so a refund requested
//! after the event (relays may deliver out of order) is gated and deducted at once.

use returns_domain::ids::OrderId;
use returns_domain::refund::{Deduction, ReturnProgress, ReturnState};
use returns_platform::ApiError;
use returns_platform::db::Tx;
use returns_platform::write_batch::WriteBatch;

use super::captures::{CHARGED_BACK_MINOR, REFUNDED_MINOR};
use super::{deductions_json, stored_code, stored_deductions};

/// A return report as kept for refunds requested after it.
#[derive(Debug, Clone)]
pub struct ReturnEvent {
    pub order_id: OrderId,
    pub return_label_id: String,
    pub dispute_id: String,
    pub progress: ReturnProgress,
    pub occurred_at: i64,
    pub received_at: i64,
    pub notes: String,
    pub deductions: Vec<Deduction>,
}

/// A `return_events` row as stored.
#[derive(sqlx::FromRow)]
struct ReturnEventRecord {
    #[sqlx(try_from = "String")]
    order_id: OrderId,
    return_label_id: String,
    dispute_id: String,
    progress: String,
    occurred_at: i64,
    received_at: i64,
    notes: String,
    deductions: String,
}

impl TryFrom<ReturnEventRecord> for ReturnEvent {
    type Error = ApiError;

    fn try_from(record: ReturnEventRecord) -> Result<Self, ApiError> {
        Ok(ReturnEvent {
            order_id: record.order_id,
            return_label_id: record.return_label_id,
            dispute_id: record.dispute_id,
            progress: stored_code(&record.progress)?,
            occurred_at: record.occurred_at,
            received_at: record.received_at,
            notes: record.notes,
            deductions: stored_deductions(&record.deductions)?,
        })
    }
}

/// Records a return event, pushed into `batch` (a repeat of the same step for the same label
/// changes nothing, so the first label's deductions are the ones kept).
pub fn record_return_event(batch: &mut WriteBatch, event: &ReturnEvent) -> Result<(), ApiError> {
    let deductions = deductions_json(&event.deductions)?;
    batch
        .push(
            "INSERT INTO return_events (order_id, return_label_id, progress, occurred_at, \
             received_at, notes, dispute_id, deductions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (order_id, return_label_id, progress) DO NOTHING",
        )
        .bind(event.order_id.as_str().to_owned())
        .bind(event.return_label_id.clone())
        .bind(event.progress.code().to_owned())
        .bind(event.occurred_at)
        .bind(event.received_at)
        .bind(event.notes.clone())
        .bind(event.dispute_id.clone())
        .bind(deductions);
    Ok(())
}

/// What creating a refund on an order reads, in one statement: what the order's capture has
/// already given (refunds that still count, chargebacks) and every return report of the
/// order, oldest first. Read after the capture row is locked, so the sums are current.
#[derive(Debug, Clone)]
pub struct RefundContext {
    pub refunded_minor: i64,
    pub charged_back_minor: i64,
    pub events: Vec<ReturnEvent>,
}

impl RefundContext {
    /// The LABEL_CREATED reports that carried deductions, oldest first: a refund requested
    /// after its label has the label's postage deducted.
    pub fn label_deductions(&self) -> impl Iterator<Item = &ReturnEvent> {
        self.events.iter().filter(|event| {
            event.progress == ReturnProgress::LabelCreated && !event.deductions.is_empty()
        })
    }

    /// How far the return behind a refund for `return_label_id` has come (as
    /// [`ReturnReports::state`] says).
    pub fn return_state(&self, return_label_id: &str) -> ReturnState {
        state_for(
            return_label_id,
            self.events
                .iter()
                .map(|event| (event.return_label_id.as_str(), event.progress)),
        )
    }
}

/// One row of [`refund_context`]: the sums, and a return report if the order has any (a
/// LEFT JOIN, so an order without reports still gives its sums).
#[derive(sqlx::FromRow)]
struct RefundContextRow {
    refunded: i64,
    charged_back: i64,
    #[sqlx(flatten)]
    event: MaybeReturnEventRecord,
}

#[derive(sqlx::FromRow)]
struct MaybeReturnEventRecord {
    order_id: Option<String>,
    return_label_id: Option<String>,
    dispute_id: Option<String>,
    progress: Option<String>,
    occurred_at: Option<i64>,
    received_at: Option<i64>,
    notes: Option<String>,
    deductions: Option<String>,
}

/// Reads the [`RefundContext`] of `order_id` in `tx`.
pub async fn refund_context(tx: &mut Tx, order_id: &OrderId) -> Result<RefundContext, ApiError> {
    let rows: Vec<RefundContextRow> = sqlx::query_as(&format!(
        "SELECT s.refunded, s.charged_back, e.order_id, e.return_label_id, e.dispute_id, \
         e.progress, e.occurred_at, e.received_at, e.notes, e.deductions \
         FROM (SELECT {REFUNDED_MINOR} AS refunded, {CHARGED_BACK_MINOR} AS charged_back) s \
         LEFT JOIN return_events e ON e.order_id = $1 \
         ORDER BY e.received_at, e.return_label_id"
    ))
    .bind(order_id.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut context = RefundContext {
        refunded_minor: 0,
        charged_back_minor: 0,
        events: Vec::with_capacity(rows.len()),
    };
    for row in rows {
        context.refunded_minor = row.refunded;
        context.charged_back_minor = row.charged_back;
        let e = row.event;
        let (
            Some(order_id),
            Some(return_label_id),
            Some(dispute_id),
            Some(progress),
            Some(occurred_at),
            Some(received_at),
            Some(notes),
            Some(deductions),
        ) = (
            e.order_id,
            e.return_label_id,
            e.dispute_id,
            e.progress,
            e.occurred_at,
            e.received_at,
            e.notes,
            e.deductions,
        )
        else {
            continue;
        };
        let order_id = OrderId::try_from(order_id)
            .map_err(|_| ApiError::internal(std::io::Error::other("a stored order id")))?;
        context
            .events
            .push(ReturnEvent::try_from(ReturnEventRecord {
                order_id,
                return_label_id,
                dispute_id,
                progress,
                occurred_at,
                received_at,
                notes,
                deductions,
            })?);
    }
    Ok(context)
}

/// The return reports of one order as a refund's gate needs them: the label each was
/// reported for and how far the return came.
#[derive(Debug, Clone, Default)]
pub struct ReturnReports(Vec<(String, ReturnProgress)>);

impl ReturnReports {
    /// Adds a report the current transaction records: its write is deferred, so the read
    /// before it did not see it.
    pub fn add(&mut self, return_label_id: &str, progress: ReturnProgress) {
        self.0.push((return_label_id.to_owned(), progress));
    }

    /// How far the return behind a refund for `return_label_id` has come: the reports for its
    /// label (or, for a refund naming no label, every report of its order), plus those
    /// reported without a label.
    pub fn state(&self, return_label_id: &str) -> ReturnState {
        state_for(
            return_label_id,
            self.0
                .iter()
                .map(|(label, progress)| (label.as_str(), *progress)),
        )
    }
}

/// Every return report of `order_id`, read in `tx`.
pub async fn return_reports(tx: &mut Tx, order_id: &OrderId) -> Result<ReturnReports, ApiError> {
    let reports: Vec<(String, String)> =
        sqlx::query_as("SELECT return_label_id, progress FROM return_events WHERE order_id = $1")
            .bind(order_id.as_str())
            .fetch_all(&mut **tx)
            .await?;
    reports
        .into_iter()
        .map(|(label, code)| Ok((label, stored_code(&code)?)))
        .collect::<Result<Vec<_>, ApiError>>()
        .map(ReturnReports)
}

/// The state of the return behind a refund for `refund_label`, from an order's reports as
/// (label, progress) pairs: the ones that [concern](concerns_label) it.
fn state_for<'a>(
    refund_label: &str,
    reports: impl Iterator<Item = (&'a str, ReturnProgress)>,
) -> ReturnState {
    ReturnState::from_progress(
        reports
            .filter(|(label, _)| concerns_label(refund_label, label))
            .map(|(_, progress)| progress),
    )
}

/// Whether a report for `report_label` tells how far the return behind a refund for
/// `refund_label` came: a refund naming no label hears every report of its order, one naming
/// a label hears that label's and those reported without a label.
fn concerns_label(refund_label: &str, report_label: &str) -> bool {
    refund_label.is_empty() || report_label == refund_label || report_label.is_empty()
}
