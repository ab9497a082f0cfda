//! The two counters of label issue: free returns used per buyer per calendar month
//! (`free_return_quota`) and the last tracking serial per carrier (`tracking_serials`).

use returns_platform::ApiError;
use returns_platform::db::Tx;
use sqlx::AnyConnection;

/// Free returns the buyer has used in `month`.
pub async fn quota_used(
    conn: &mut AnyConnection,
    buyer_id: &str,
    month: &str,
) -> Result<u32, ApiError> {
    let used: Option<i64> =
        sqlx::query_scalar("SELECT used FROM free_return_quota WHERE buyer_id = $1 AND month = $2")
            .bind(buyer_id)
            .bind(month)
            .fetch_optional(conn)
            .await?;
    Ok(used.map_or(0, |used| u32::try_from(used).unwrap_or(0)))
}

/// Counts one free return if the buyer is still below `limit` in `month`: true when it was
/// counted. One upsert: the month's counter starts at 1 with the buyer's first free return,
/// and the condition in its update is what holds under concurrency (the row is locked by
/// whichever request counts first; the others see its count).
pub async fn take_free_return(
    tx: &mut Tx,
    buyer_id: &str,
    month: &str,
    limit: u32,
) -> Result<bool, ApiError> {
    let taken = sqlx::query(
        "INSERT INTO free_return_quota (buyer_id, month, used) VALUES ($1, $2, 1) \
         ON CONFLICT (buyer_id, month) DO UPDATE SET used = free_return_quota.used + 1 \
         WHERE free_return_quota.used < $3",
    )
    .bind(buyer_id)
    .bind(month)
    .bind(i64::from(limit))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// Gives a free return back to the month it was counted in.
pub async fn give_back_free_return(
    tx: &mut Tx,
    buyer_id: &str,
    month: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE free_return_quota SET used = used - 1 \
         WHERE buyer_id = $1 AND month = $2 AND used > 0",
    )
    .bind(buyer_id)
    .bind(month)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The carrier's next tracking serial (1 for its first label).
pub async fn next_tracking_serial(tx: &mut Tx, provider_code: &str) -> Result<u64, ApiError> {
    let serial: i64 = sqlx::query_scalar(
        "INSERT INTO tracking_serials (provider_code, last_serial) VALUES ($1, 1) \
         ON CONFLICT (provider_code) DO UPDATE SET last_serial = tracking_serials.last_serial + 1 \
         RETURNING last_serial",
    )
    .bind(provider_code)
    .fetch_one(&mut **tx)
    .await?;
    u64::try_from(serial).map_err(|_| super::corrupt(format!("tracking serial {serial}")))
}
