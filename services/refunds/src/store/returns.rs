//! `return_events`: return progress reported per order and label, kept so a refund requested
//! after the event (relays may deliver out of order) is gated and deducted at once.

use returns_domain::ids::OrderId;
use returns_domain::refund::{Deduction, ReturnProgress, ReturnState};
use returns_platform::ApiError;
use returns_platform::db::Tx;

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

/// Records a return event (a repeat of the same step for the same label changes nothing, so
/// the first label's deductions are the ones kept).
pub async fn record_return_event(tx: &mut Tx, event: &ReturnEvent) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO return_events (order_id, return_label_id, progress, occurred_at, \
         received_at, notes, dispute_id, deductions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id, return_label_id, progress) DO NOTHING",
    )
    .bind(event.order_id.as_str())
    .bind(&event.return_label_id)
    .bind(event.progress.code())
    .bind(event.occurred_at)
    .bind(event.received_at)
    .bind(&event.notes)
    .bind(&event.dispute_id)
    .bind(deductions_json(&event.deductions)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The LABEL_CREATED reports of an order that carried deductions, oldest first, for a refund
/// requested after its label.
pub async fn label_deductions(
    tx: &mut Tx,
    order_id: &OrderId,
) -> Result<Vec<ReturnEvent>, ApiError> {
    let records: Vec<ReturnEventRecord> = sqlx::query_as(
        "SELECT order_id, return_label_id, dispute_id, progress, occurred_at, received_at, \
         notes, deductions FROM return_events WHERE order_id = $1 AND progress = $2 \
         AND deductions <> '[]' ORDER BY received_at, return_label_id",
    )
    .bind(order_id.as_str())
    .bind(ReturnProgress::LabelCreated.code())
    .fetch_all(&mut **tx)
    .await?;
    records.into_iter().map(ReturnEvent::try_from).collect()
}

/// How far the return behind a refund has come: the events for its label (or, for a refund
/// naming no label, every event of its order), plus events reported without a label.
pub async fn return_state(
    tx: &mut Tx,
    order_id: &OrderId,
    return_label_id: &str,
) -> Result<ReturnState, ApiError> {
    let codes: Vec<String> = if return_label_id.is_empty() {
        sqlx::query_scalar("SELECT progress FROM return_events WHERE order_id = $1")
            .bind(order_id.as_str())
            .fetch_all(&mut **tx)
            .await?
    } else {
        sqlx::query_scalar(
            "SELECT progress FROM return_events WHERE order_id = $1 \
             AND return_label_id IN ($2, '')",
        )
        .bind(order_id.as_str())
        .bind(return_label_id)
        .fetch_all(&mut **tx)
        .await?
    };
    let reports = codes
        .iter()
        .map(|code| stored_code(code))
        .collect::<Result<Vec<ReturnProgress>, ApiError>>()?;
    Ok(ReturnState::from_progress(reports))
}
