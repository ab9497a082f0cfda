//! The service's tables: captures, refunds, chargebacks, return events, refund requests
//! awaiting their capture, and the ledger.
//!
//! Rows are private to this service (docs/architecture.md, "Crates and what each may
//! import"): each `*Row` is read with `column()` (a bad row is an internal error, never a
//! panic) and turned into domain types here. Every write takes the caller's open transaction
//! so a handler's changes commit together or not at all.

use chrono::Datelike;
use returns_domain::dispute::{BuyerTier, PaymentMethod};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::refund::{
    CaptureBalance, RefundReason, RefundStatus, ReleaseCondition, ReturnProgress, ReturnState,
};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::{Tx, column};
use returns_platform::{ApiError, Database};
use sqlx::any::AnyRow;

use crate::convert;
use returns_proto::refunds::v1 as pb;

fn parse_code<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, returns_domain::DomainError>,
) -> Result<T, ApiError> {
    parse(text).map_err(ApiError::internal)
}

fn stored_currency(text: &str) -> Result<CurrencyCode, ApiError> {
    CurrencyCode::parse(text).map_err(ApiError::internal)
}

/// What was captured for an order.
#[derive(Debug, Clone)]
pub struct CaptureRow {
    pub order_id: String,
    pub buyer_id: String,
    pub amount: Money,
    pub method: PaymentMethod,
    pub tier: BuyerTier,
    pub captured_at: i64,
    pub payment_reference: String,
    pub created_at: i64,
}

impl CaptureRow {
    fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
        let currency = stored_currency(&column::<String>(row, "currency")?)?;
        Ok(CaptureRow {
            order_id: column(row, "order_id")?,
            buyer_id: column(row, "buyer_id")?,
            amount: Money::new(currency, column(row, "amount_minor")?),
            method: parse_code(
                &column::<String>(row, "payment_method")?,
                PaymentMethod::parse,
            )?,
            tier: parse_code(&column::<String>(row, "buyer_tier")?, BuyerTier::parse)?,
            captured_at: column(row, "captured_at")?,
            payment_reference: column(row, "payment_reference")?,
            created_at: column(row, "created_at")?,
        })
    }

    pub fn to_proto(&self, balance: &CaptureBalance) -> Result<pb::Capture, ApiError> {
        Ok(pb::Capture {
            order_id: self.order_id.clone(),
            buyer_id: self.buyer_id.clone(),
            amount: Some(convert::money_to_proto(self.amount)),
            payment_method: convert::payment_method_to_proto(self.method),
            buyer_tier: convert::buyer_tier_to_proto(self.tier),
            captured_at: convert::micros_to_proto(self.captured_at),
            payment_reference: self.payment_reference.clone(),
            refunded: Some(convert::money_to_proto(balance.refunded)),
            charged_back: Some(convert::money_to_proto(balance.charged_back)),
            refundable: Some(convert::money_to_proto(balance.refundable()?)),
            created_at: convert::micros_to_proto(self.created_at),
        })
    }
}

pub async fn insert_capture(tx: &mut Tx, capture: &CaptureRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO captures (order_id, buyer_id, currency, amount_minor, payment_method, \
         buyer_tier, captured_at, payment_reference, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&capture.order_id)
    .bind(&capture.buyer_id)
    .bind(capture.amount.currency.to_string())
    .bind(capture.amount.minor_units)
    .bind(capture.method.code())
    .bind(capture.tier.code())
    .bind(capture.captured_at)
    .bind(&capture.payment_reference)
    .bind(capture.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The capture of `order_id`, locked for the rest of the transaction (FOR UPDATE on
/// PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers).
pub async fn lock_capture(
    db: &Database,
    tx: &mut Tx,
    order_id: &str,
) -> Result<Option<CaptureRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT * FROM captures WHERE order_id = $1{}",
        db.for_update()
    ))
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(CaptureRow::from_row).transpose()
}

pub async fn get_capture(db: &Database, order_id: &str) -> Result<Option<CaptureRow>, ApiError> {
    let row = sqlx::query("SELECT * FROM captures WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(CaptureRow::from_row).transpose()
}

/// What the capture of an order has taken: refunds that still count plus chargebacks.
pub async fn capture_balance(
    tx: &mut Tx,
    capture: &CaptureRow,
) -> Result<CaptureBalance, ApiError> {
    let currency = capture.amount.currency;
    let refunded = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS total FROM refunds \
         WHERE order_id = $1 AND status NOT IN ('FAILED', 'CANCELLED')",
    )
    .bind(&capture.order_id)
    .fetch_one(&mut **tx)
    .await?;
    let charged_back = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS total FROM chargebacks \
         WHERE order_id = $1",
    )
    .bind(&capture.order_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(CaptureBalance {
        captured: capture.amount,
        refunded: Money::new(currency, column(&refunded, "total")?),
        charged_back: Money::new(currency, column(&charged_back, "total")?),
    })
}

/// A withheld amount, stored as JSON in the `deductions` columns.
pub use returns_domain::refund::Deduction;

/// One refund.
#[derive(Debug, Clone)]
pub struct RefundRow {
    pub refund_id: String,
    pub order_id: String,
    pub dispute_id: String,
    pub buyer_id: String,
    pub amount: Money,
    pub net: Money,
    pub deductions: Vec<Deduction>,
    pub reason: RefundReason,
    pub release: ReleaseCondition,
    pub return_label_id: String,
    pub status: RefundStatus,
    pub method: PaymentMethod,
    pub expected_earliest: Option<i64>,
    pub expected_latest: Option<i64>,
    pub provider_reference: String,
    pub fast_refund: bool,
    pub attempts: i64,
    pub failure_reason: String,
    pub status_reason: String,
    pub note: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub released_at: Option<i64>,
    pub succeeded_at: Option<i64>,
    /// When the settlement worker next looks at it, business clock (release, expected
    /// arrival, status polls).
    pub next_attempt_at: Option<i64>,
    /// Not before this wall-clock instant: a transient provider failure's backoff.
    pub retry_after: Option<i64>,
    pub claimed_by: Option<String>,
    /// The claim's end, wall clock.
    pub lease_until: Option<i64>,
    pub message_id: Option<String>,
    pub version: i64,
}

impl RefundRow {
    fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
        let currency = stored_currency(&column::<String>(row, "currency")?)?;
        let deductions: Vec<Deduction> =
            serde_json::from_str(&column::<String>(row, "deductions")?)
                .map_err(ApiError::internal)?;
        Ok(RefundRow {
            refund_id: column(row, "refund_id")?,
            order_id: column(row, "order_id")?,
            dispute_id: column(row, "dispute_id")?,
            buyer_id: column(row, "buyer_id")?,
            amount: Money::new(currency, column(row, "amount_minor")?),
            net: Money::new(currency, column(row, "net_minor")?),
            deductions,
            reason: parse_code(&column::<String>(row, "reason")?, RefundReason::parse)?,
            release: parse_code(
                &column::<String>(row, "release_condition")?,
                ReleaseCondition::parse,
            )?,
            return_label_id: column(row, "return_label_id")?,
            status: parse_code(&column::<String>(row, "status")?, RefundStatus::parse)?,
            method: parse_code(
                &column::<String>(row, "payment_method")?,
                PaymentMethod::parse,
            )?,
            expected_earliest: column(row, "expected_earliest")?,
            expected_latest: column(row, "expected_latest")?,
            provider_reference: column(row, "provider_reference")?,
            fast_refund: column::<i64>(row, "fast_refund")? != 0,
            attempts: column(row, "attempts")?,
            failure_reason: column(row, "failure_reason")?,
            status_reason: column(row, "status_reason")?,
            note: column(row, "note")?,
            created_at: column(row, "created_at")?,
            updated_at: column(row, "updated_at")?,
            released_at: column(row, "released_at")?,
            succeeded_at: column(row, "succeeded_at")?,
            next_attempt_at: column(row, "next_attempt_at")?,
            retry_after: column(row, "retry_after")?,
            claimed_by: column(row, "claimed_by")?,
            lease_until: column(row, "lease_until")?,
            message_id: column(row, "message_id")?,
            version: column(row, "version")?,
        })
    }

    /// The provider idempotency key: derived from the refund id alone, so every submission
    /// of one refund (retries, a second worker, a restart after a crash) carries the same key
    /// and the provider pays it at most once.
    pub fn idempotency_key(&self) -> String {
        format!("refund-{}", self.refund_id)
    }

    pub fn to_proto(&self) -> pb::Refund {
        pb::Refund {
            refund_id: self.refund_id.clone(),
            order_id: self.order_id.clone(),
            dispute_id: self.dispute_id.clone(),
            buyer_id: self.buyer_id.clone(),
            amount: Some(convert::money_to_proto(self.amount)),
            net_amount: Some(convert::money_to_proto(self.net)),
            deductions: self
                .deductions
                .iter()
                .map(|d| pb::Deduction {
                    kind: convert::deduction_kind_to_proto(d.kind),
                    amount: Some(convert::money_to_proto(d.amount)),
                    note: d.note.clone(),
                })
                .collect(),
            reason: convert::reason_to_proto(self.reason),
            release: convert::release_to_proto(self.release),
            return_label_id: self.return_label_id.clone(),
            status: convert::status_to_proto(self.status),
            payment_method: convert::payment_method_to_proto(self.method),
            expected_earliest: self.expected_earliest.and_then(convert::micros_to_proto),
            expected_latest: self.expected_latest.and_then(convert::micros_to_proto),
            provider_reference: self.provider_reference.clone(),
            fast_refund: self.fast_refund,
            attempts: i32::try_from(self.attempts).unwrap_or(i32::MAX),
            failure_reason: self.failure_reason.clone(),
            created_at: convert::micros_to_proto(self.created_at),
            updated_at: convert::micros_to_proto(self.updated_at),
            released_at: self.released_at.and_then(convert::micros_to_proto),
            succeeded_at: self.succeeded_at.and_then(convert::micros_to_proto),
            status_reason: self.status_reason.clone(),
            note: self.note.clone(),
        }
    }
}

pub async fn insert_refund(tx: &mut Tx, refund: &RefundRow) -> Result<(), ApiError> {
    let deductions = serde_json::to_string(&refund.deductions).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO refunds (refund_id, order_id, dispute_id, buyer_id, currency, amount_minor, \
         net_minor, deductions, reason, release_condition, return_label_id, status, \
         payment_method, expected_earliest, expected_latest, provider_reference, fast_refund, \
         attempts, failure_reason, status_reason, note, created_at, updated_at, released_at, \
         succeeded_at, next_attempt_at, claimed_by, lease_until, message_id, version, \
         retry_after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)",
    )
    .bind(&refund.refund_id)
    .bind(&refund.order_id)
    .bind(&refund.dispute_id)
    .bind(&refund.buyer_id)
    .bind(refund.amount.currency.to_string())
    .bind(refund.amount.minor_units)
    .bind(refund.net.minor_units)
    .bind(deductions)
    .bind(refund.reason.code())
    .bind(refund.release.code())
    .bind(&refund.return_label_id)
    .bind(refund.status.code())
    .bind(refund.method.code())
    .bind(refund.expected_earliest)
    .bind(refund.expected_latest)
    .bind(&refund.provider_reference)
    .bind(i64::from(refund.fast_refund))
    .bind(refund.attempts)
    .bind(&refund.failure_reason)
    .bind(&refund.status_reason)
    .bind(&refund.note)
    .bind(refund.created_at)
    .bind(refund.updated_at)
    .bind(refund.released_at)
    .bind(refund.succeeded_at)
    .bind(refund.next_attempt_at)
    .bind(&refund.claimed_by)
    .bind(refund.lease_until)
    .bind(&refund.message_id)
    .bind(refund.version)
    .bind(refund.retry_after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes every mutable column of `refund` if nobody changed the row since it was read
/// (`version` check), bumping the version. A lost race is ABORTED, never a silent overwrite.
pub async fn save_refund(tx: &mut Tx, refund: &mut RefundRow) -> Result<(), ApiError> {
    let deductions = serde_json::to_string(&refund.deductions).map_err(ApiError::internal)?;
    let updated = sqlx::query(
        "UPDATE refunds SET amount_minor = $1, net_minor = $2, deductions = $3, status = $4, \
         expected_earliest = $5, expected_latest = $6, provider_reference = $7, \
         fast_refund = $8, attempts = $9, failure_reason = $10, status_reason = $11, \
         updated_at = $12, released_at = $13, succeeded_at = $14, next_attempt_at = $15, \
         claimed_by = $16, lease_until = $17, retry_after = $18, version = version + 1 \
         WHERE refund_id = $19 AND version = $20",
    )
    .bind(refund.amount.minor_units)
    .bind(refund.net.minor_units)
    .bind(deductions)
    .bind(refund.status.code())
    .bind(refund.expected_earliest)
    .bind(refund.expected_latest)
    .bind(&refund.provider_reference)
    .bind(i64::from(refund.fast_refund))
    .bind(refund.attempts)
    .bind(&refund.failure_reason)
    .bind(&refund.status_reason)
    .bind(refund.updated_at)
    .bind(refund.released_at)
    .bind(refund.succeeded_at)
    .bind(refund.next_attempt_at)
    .bind(&refund.claimed_by)
    .bind(refund.lease_until)
    .bind(refund.retry_after)
    .bind(&refund.refund_id)
    .bind(refund.version)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated != 1 {
        return Err(ApiError::Aborted(format!(
            "refund {} changed concurrently; retry",
            refund.refund_id
        )));
    }
    refund.version += 1;
    Ok(())
}

pub async fn get_refund(db: &Database, refund_id: &str) -> Result<Option<RefundRow>, ApiError> {
    let row = sqlx::query("SELECT * FROM refunds WHERE refund_id = $1")
        .bind(refund_id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(RefundRow::from_row).transpose()
}

/// The refund, locked for the rest of the transaction.
pub async fn lock_refund(
    db: &Database,
    tx: &mut Tx,
    refund_id: &str,
) -> Result<Option<RefundRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT * FROM refunds WHERE refund_id = $1{}",
        db.for_update()
    ))
    .bind(refund_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(RefundRow::from_row).transpose()
}

pub async fn refund_by_message(
    tx: &mut Tx,
    message_id: &str,
) -> Result<Option<RefundRow>, ApiError> {
    let row = sqlx::query("SELECT * FROM refunds WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(RefundRow::from_row).transpose()
}

/// A relayed refund request kept until its order's capture is recorded.
#[derive(Debug, Clone)]
pub struct AwaitingCapture {
    pub message_id: String,
    pub order_id: String,
    pub dispute_id: String,
    /// The encoded `CreateRefundRequest`, validated when it arrived and again (with the
    /// capture) when it is turned into a refund.
    pub request: Vec<u8>,
    pub received_at: i64,
}

pub async fn keep_awaiting_capture(tx: &mut Tx, kept: &AwaitingCapture) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO refunds_awaiting_capture (message_id, order_id, dispute_id, request, \
         received_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&kept.message_id)
    .bind(&kept.order_id)
    .bind(&kept.dispute_id)
    .bind(kept.request.clone())
    .bind(kept.received_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `message_id` was kept to wait for a capture (resolved since or not).
pub async fn was_kept_for_capture(tx: &mut Tx, message_id: &str) -> Result<bool, ApiError> {
    let row = sqlx::query("SELECT message_id FROM refunds_awaiting_capture WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// The unresolved kept requests of an order, oldest first. Callers hold the order's key
/// lock ([`Database::lock_key`]), so none can be added until their transaction ends.
pub async fn awaiting_capture(
    tx: &mut Tx,
    order_id: &str,
) -> Result<Vec<AwaitingCapture>, ApiError> {
    let rows = sqlx::query(
        "SELECT message_id, order_id, dispute_id, request, received_at \
         FROM refunds_awaiting_capture WHERE order_id = $1 AND resolved_at IS NULL \
         ORDER BY received_at, message_id",
    )
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AwaitingCapture {
                message_id: column(row, "message_id")?,
                order_id: column(row, "order_id")?,
                dispute_id: column(row, "dispute_id")?,
                request: column(row, "request")?,
                received_at: column(row, "received_at")?,
            })
        })
        .collect()
}

/// Marks a kept request done: `outcome` is `created` (with the refund) or the rule that
/// refused it.
pub async fn resolve_awaiting_capture(
    tx: &mut Tx,
    message_id: &str,
    outcome: &str,
    refund_id: Option<&str>,
    now: Timestamp,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE refunds_awaiting_capture SET resolved_at = $1, outcome = $2, refund_id = $3 \
         WHERE message_id = $4",
    )
    .bind(to_unix_micros(now))
    .bind(outcome)
    .bind(refund_id)
    .bind(message_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Refunds of an order in the given states, oldest first, locked.
pub async fn lock_order_refunds(
    db: &Database,
    tx: &mut Tx,
    order_id: &str,
    statuses: &[RefundStatus],
) -> Result<Vec<RefundRow>, ApiError> {
    let list = status_list(statuses);
    let rows = sqlx::query(&format!(
        "SELECT * FROM refunds WHERE order_id = $1 AND status IN ({list}) \
         ORDER BY created_at, refund_id{}",
        db.for_update()
    ))
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(RefundRow::from_row).collect()
}

/// Refunds gated on a return: those naming the label, and those of the order naming none; a
/// report naming no label reaches every refund of the order, as in [`return_state`].
pub async fn lock_gated_refunds(
    db: &Database,
    tx: &mut Tx,
    order_id: &str,
    return_label_id: &str,
) -> Result<Vec<RefundRow>, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT * FROM refunds WHERE order_id = $1 \
         AND ($2 = '' OR return_label_id = '' OR return_label_id = $2) \
         ORDER BY created_at, refund_id{}",
        db.for_update()
    ))
    .bind(order_id)
    .bind(return_label_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(RefundRow::from_row).collect()
}

fn status_list(statuses: &[RefundStatus]) -> String {
    // Codes are fixed identifiers from the domain enum, never user input.
    statuses
        .iter()
        .map(|s| format!("'{}'", s.code()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Filters of ListRefunds.
#[derive(Debug, Default)]
pub struct RefundFilter {
    pub order_id: Option<String>,
    pub buyer_id: Option<String>,
    pub dispute_id: Option<String>,
    pub status: Option<RefundStatus>,
    /// Refund ids below this one (the previous page's last), newest first.
    pub before: Option<String>,
}

/// A page of refunds, newest first (refund ids are UUID v7, so they sort by creation).
pub async fn list_refunds(
    db: &Database,
    filter: &RefundFilter,
    limit: i64,
) -> Result<Vec<RefundRow>, ApiError> {
    let mut sql = String::from("SELECT * FROM refunds WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    let mut add = |sql: &mut String, column: &str, op: &str, value: &str| {
        binds.push(value.to_string());
        sql.push_str(&format!(" AND {column} {op} ${}", binds.len()));
    };
    if let Some(order) = &filter.order_id {
        add(&mut sql, "order_id", "=", order);
    }
    if let Some(buyer) = &filter.buyer_id {
        add(&mut sql, "buyer_id", "=", buyer);
    }
    if let Some(dispute) = &filter.dispute_id {
        add(&mut sql, "dispute_id", "=", dispute);
    }
    if let Some(status) = filter.status {
        add(&mut sql, "status", "=", status.code());
    }
    if let Some(before) = &filter.before {
        add(&mut sql, "refund_id", "<", before);
    }
    sql.push_str(&format!(
        " ORDER BY refund_id DESC LIMIT ${}",
        binds.len() + 1
    ));
    let mut query = sqlx::query(&sql);
    for value in &binds {
        query = query.bind(value);
    }
    let rows = query.bind(limit).fetch_all(db.pool()).await?;
    rows.iter().map(RefundRow::from_row).collect()
}

/// A recorded chargeback.
#[derive(Debug, Clone)]
pub struct ChargebackRow {
    pub chargeback_id: String,
    pub order_id: String,
    pub amount: Money,
    pub network_reference: String,
    pub reason: String,
    pub opened_at: i64,
    pub created_at: i64,
}

impl ChargebackRow {
    pub fn to_proto(&self) -> pb::Chargeback {
        pb::Chargeback {
            chargeback_id: self.chargeback_id.clone(),
            order_id: self.order_id.clone(),
            amount: Some(convert::money_to_proto(self.amount)),
            network_reference: self.network_reference.clone(),
            reason: self.reason.clone(),
            opened_at: convert::micros_to_proto(self.opened_at),
            created_at: convert::micros_to_proto(self.created_at),
        }
    }
}

pub async fn insert_chargeback(tx: &mut Tx, chargeback: &ChargebackRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO chargebacks (chargeback_id, order_id, currency, amount_minor, \
         network_reference, reason, opened_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&chargeback.chargeback_id)
    .bind(&chargeback.order_id)
    .bind(chargeback.amount.currency.to_string())
    .bind(chargeback.amount.minor_units)
    .bind(&chargeback.network_reference)
    .bind(&chargeback.reason)
    .bind(chargeback.opened_at)
    .bind(chargeback.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn chargeback_exists(tx: &mut Tx, network_reference: &str) -> Result<bool, ApiError> {
    let row = sqlx::query("SELECT chargeback_id FROM chargebacks WHERE network_reference = $1")
        .bind(network_reference)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// A return report as kept for refunds requested after it.
#[derive(Debug, Clone)]
pub struct ReturnEvent {
    pub order_id: String,
    pub return_label_id: String,
    pub dispute_id: String,
    pub progress: ReturnProgress,
    pub occurred_at: i64,
    pub received_at: i64,
    pub notes: String,
    pub deductions: Vec<Deduction>,
}

/// Records a return event (a repeat of the same step for the same label changes nothing, so
/// the first label's deductions are the ones kept).
pub async fn record_return_event(tx: &mut Tx, event: &ReturnEvent) -> Result<(), ApiError> {
    let deductions = serde_json::to_string(&event.deductions).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO return_events (order_id, return_label_id, progress, occurred_at, \
         received_at, notes, dispute_id, deductions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id, return_label_id, progress) DO NOTHING",
    )
    .bind(&event.order_id)
    .bind(&event.return_label_id)
    .bind(event.progress.code())
    .bind(event.occurred_at)
    .bind(event.received_at)
    .bind(&event.notes)
    .bind(&event.dispute_id)
    .bind(deductions)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The LABEL_CREATED reports of an order that carried deductions, oldest first, for a refund
/// requested after its label.
pub async fn label_deductions(tx: &mut Tx, order_id: &str) -> Result<Vec<ReturnEvent>, ApiError> {
    let rows = sqlx::query(
        "SELECT * FROM return_events WHERE order_id = $1 AND progress = $2 \
         AND deductions <> '[]' ORDER BY received_at, return_label_id",
    )
    .bind(order_id)
    .bind(ReturnProgress::LabelCreated.code())
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(ReturnEvent {
            order_id: column(row, "order_id")?,
            return_label_id: column(row, "return_label_id")?,
            dispute_id: column(row, "dispute_id")?,
            progress: parse_code(&column::<String>(row, "progress")?, ReturnProgress::parse)?,
            occurred_at: column(row, "occurred_at")?,
            received_at: column(row, "received_at")?,
            notes: column(row, "notes")?,
            deductions: serde_json::from_str(&column::<String>(row, "deductions")?)
                .map_err(ApiError::internal)?,
        });
    }
    Ok(out)
}

/// How far the return behind a refund has come: the events for its label (or, for a refund
/// naming no label, every event of its order), plus events reported without a label.
pub async fn return_state(
    tx: &mut Tx,
    order_id: &str,
    return_label_id: &str,
) -> Result<ReturnState, ApiError> {
    let rows = sqlx::query(
        "SELECT progress FROM return_events WHERE order_id = $1 \
         AND ($2 = '' OR return_label_id = $2 OR return_label_id = '')",
    )
    .bind(order_id)
    .bind(return_label_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut reports = Vec::with_capacity(rows.len());
    for row in &rows {
        reports.push(parse_code(
            &column::<String>(row, "progress")?,
            ReturnProgress::parse,
        )?);
    }
    Ok(ReturnState::from_progress(reports))
}

/// The UTC calendar day of an instant, "YYYY-MM-DD", the report's grouping key.
pub fn day_of(at: Timestamp) -> String {
    format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day())
}

/// Appends the ledger movements of a refund going from `before` (status and net amount it
/// counted with; `None` for a new refund) to its current status and net amount.
pub async fn append_ledger(
    tx: &mut Tx,
    before: Option<(RefundStatus, Money)>,
    refund: &RefundRow,
    now: Timestamp,
) -> Result<(), ApiError> {
    if before == Some((refund.status, refund.net)) {
        return Ok(());
    }
    let day = day_of(now);
    let at = to_unix_micros(now);
    let mut entries = Vec::with_capacity(2);
    if let Some((status, net)) = before {
        entries.push((status, -net.minor_units, -1_i64));
    }
    entries.push((refund.status, refund.net.minor_units, 1));
    for (status, amount, count) in entries {
        sqlx::query(
            "INSERT INTO refund_ledger (entry_id, refund_id, order_id, currency, \
             payment_method, status, amount_minor, count_delta, day, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(returns_domain::ids::LedgerEntryId::new().to_string())
        .bind(&refund.refund_id)
        .bind(&refund.order_id)
        .bind(refund.amount.currency.to_string())
        .bind(refund.method.code())
        .bind(status.code())
        .bind(amount)
        .bind(count)
        .bind(&day)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
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

/// Ledger movements in `[start, end)` summed by day, currency, method and status.
pub async fn report_rows(
    db: &Database,
    start: i64,
    end: i64,
    currency: Option<CurrencyCode>,
) -> Result<Vec<ReportRow>, ApiError> {
    let rows = sqlx::query(
        "SELECT day, currency, payment_method, status, \
         CAST(SUM(count_delta) AS BIGINT) AS refunds, \
         CAST(SUM(amount_minor) AS BIGINT) AS total \
         FROM refund_ledger WHERE at >= $1 AND at < $2 AND ($3 = '' OR currency = $3) \
         GROUP BY day, currency, payment_method, status \
         ORDER BY day, currency, payment_method, status",
    )
    .bind(start)
    .bind(end)
    .bind(currency.map(|c| c.to_string()).unwrap_or_default())
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(ReportRow {
            day: column(row, "day")?,
            currency: stored_currency(&column::<String>(row, "currency")?)?,
            method: parse_code(
                &column::<String>(row, "payment_method")?,
                PaymentMethod::parse,
            )?,
            status: parse_code(&column::<String>(row, "status")?, RefundStatus::parse)?,
            count: column(row, "refunds")?,
            total_minor: column(row, "total")?,
        });
    }
    Ok(out)
}
