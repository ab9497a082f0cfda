//! `captures`: what was captured per order, the ceiling of its refunds and chargebacks.

use returns_domain::dispute::{BuyerTier, PaymentMethod};
use returns_domain::ids::{OrderId, PartyId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::refund::CaptureBalance;
use returns_platform::db::Tx;
use returns_platform::{ApiError, Database};

use super::stored_code;

/// What was captured for an order.
#[derive(Debug, Clone)]
pub struct CaptureRow {
    pub order_id: OrderId,
    pub buyer_id: PartyId,
    pub amount: Money,
    pub method: PaymentMethod,
    pub tier: BuyerTier,
    pub captured_at: i64,
    pub payment_reference: String,
    pub created_at: i64,
}

/// A `captures` row as stored.
#[derive(sqlx::FromRow)]
struct CaptureRecord {
    #[sqlx(try_from = "String")]
    order_id: OrderId,
    #[sqlx(try_from = "String")]
    buyer_id: PartyId,
    #[sqlx(try_from = "String")]
    currency: CurrencyCode,
    amount_minor: i64,
    payment_method: String,
    buyer_tier: String,
    captured_at: i64,
    payment_reference: String,
    created_at: i64,
}

impl TryFrom<CaptureRecord> for CaptureRow {
    type Error = ApiError;

    fn try_from(record: CaptureRecord) -> Result<Self, ApiError> {
        Ok(CaptureRow {
            order_id: record.order_id,
            buyer_id: record.buyer_id,
            amount: Money::new(record.currency, record.amount_minor),
            method: stored_code(&record.payment_method)?,
            tier: stored_code(&record.buyer_tier)?,
            captured_at: record.captured_at,
            payment_reference: record.payment_reference,
            created_at: record.created_at,
        })
    }
}

pub async fn insert_capture(tx: &mut Tx, capture: &CaptureRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO captures (order_id, buyer_id, currency, amount_minor, payment_method, \
         buyer_tier, captured_at, payment_reference, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(capture.order_id.as_str())
    .bind(capture.buyer_id.as_str())
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
    order_id: &OrderId,
) -> Result<Option<CaptureRow>, ApiError> {
    let record: Option<CaptureRecord> = sqlx::query_as(&format!(
        "SELECT order_id, buyer_id, currency, amount_minor, payment_method, buyer_tier, \
         captured_at, payment_reference, created_at \
         FROM captures WHERE order_id = $1{}",
        db.for_update()
    ))
    .bind(order_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    record.map(CaptureRow::try_from).transpose()
}

/// The gross amounts of the order `$1`'s refunds that still count (neither FAILED nor
/// CANCELLED), as a scalar subquery: the one definition of what a capture has refunded.
pub const REFUNDED_MINOR: &str = "CAST(COALESCE((SELECT SUM(amount_minor) FROM refunds \
     WHERE order_id = $1 AND status NOT IN ('FAILED', 'CANCELLED')), 0) AS BIGINT)";

/// The chargebacks recorded on the order `$1`, as a scalar subquery.
pub const CHARGED_BACK_MINOR: &str =
    "CAST(COALESCE((SELECT SUM(amount_minor) FROM chargebacks WHERE order_id = $1), 0) AS BIGINT)";

/// The balance of `capture` given the sums [`REFUNDED_MINOR`] and [`CHARGED_BACK_MINOR`] read.
pub fn balance_of(
    capture: &CaptureRow,
    refunded_minor: i64,
    charged_back_minor: i64,
) -> CaptureBalance {
    let currency = capture.amount.currency;
    CaptureBalance {
        captured: capture.amount,
        refunded: Money::new(currency, refunded_minor),
        charged_back: Money::new(currency, charged_back_minor),
    }
}

/// What the capture of an order has taken: refunds that still count plus chargebacks.
pub async fn capture_balance(
    tx: &mut Tx,
    capture: &CaptureRow,
) -> Result<CaptureBalance, ApiError> {
    let (refunded, charged_back): (i64, i64) =
        sqlx::query_as(&format!("SELECT {REFUNDED_MINOR}, {CHARGED_BACK_MINOR}"))
            .bind(capture.order_id.as_str())
            .fetch_one(&mut **tx)
            .await?;
    Ok(balance_of(capture, refunded, charged_back))
}
