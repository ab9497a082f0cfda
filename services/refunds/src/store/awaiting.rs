//! `refunds_awaiting_capture`: relayed refund requests that arrived before their order's
//! capture, kept until RecordCapture turns them into refunds.

use returns_domain::ids::{OrderId, RefundId};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::ApiError;
use returns_platform::db::Tx;

/// A relayed refund request kept until its order's capture is recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AwaitingCapture {
    pub message_id: String,
    #[sqlx(try_from = "String")]
    pub order_id: OrderId,
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
    .bind(kept.order_id.as_str())
    .bind(&kept.dispute_id)
    .bind(kept.request.as_slice())
    .bind(kept.received_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `message_id` was kept to wait for a capture (resolved since or not).
pub async fn was_kept_for_capture(tx: &mut Tx, message_id: &str) -> Result<bool, ApiError> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT message_id FROM refunds_awaiting_capture WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

/// The unresolved kept requests of an order, oldest first. Callers hold the order's key
/// lock ([`returns_platform::Database::lock_key`]), so none can be added until their
/// transaction ends.
pub async fn awaiting_capture(
    tx: &mut Tx,
    order_id: &OrderId,
) -> Result<Vec<AwaitingCapture>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT message_id, order_id, dispute_id, request, received_at \
         FROM refunds_awaiting_capture WHERE order_id = $1 AND resolved_at IS NULL \
         ORDER BY received_at, message_id",
    )
    .bind(order_id.as_str())
    .fetch_all(&mut **tx)
    .await?)
}

/// Marks a kept request done: `outcome` is `created` (with the refund) or the rule that
/// refused it.
pub async fn resolve_awaiting_capture(
    tx: &mut Tx,
    message_id: &str,
    outcome: &str,
    refund_id: Option<&RefundId>,
    now: Timestamp,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE refunds_awaiting_capture SET resolved_at = $1, outcome = $2, refund_id = $3 \
         WHERE message_id = $4",
    )
    .bind(to_unix_micros(now))
    .bind(outcome)
    .bind(refund_id.map(RefundId::to_string))
    .bind(message_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
