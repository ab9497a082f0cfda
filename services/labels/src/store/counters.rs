//! The two counters of label issue: free returns used per buyer per calendar month
//! (`free_return_quota`) and the last tracking serial per carrier (`tracking_serials`).

use std::collections::HashMap;
use std::ops::Range;

use returns_platform::db::Tx;
use returns_platform::{ApiError, Database};
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

/// Tracking serials handed out from blocks: a block of serials is taken from the carrier's
/// `tracking_serials` row in a transaction of its own (committed before any of it is used),
/// and labels then use them from memory. A label's transaction so no longer locks the
/// carrier's row until it commits, which on PostgreSQL made every label of a carrier wait
/// for the one before. Serials stay unique per carrier across replicas and restarts (each
/// block moves the row past itself); what a process did not use before it stopped is
/// skipped, so serials have gaps, which tracking numbers allow.
#[derive(Debug)]
pub struct SerialBlocks {
    size: u64,
    blocks: tokio::sync::Mutex<HashMap<String, Range<u64>>>,
}

/// Serials a block holds: one refill in a hundred labels of a carrier.
pub const SERIAL_BLOCK: u64 = 100;

impl SerialBlocks {
    pub fn new(size: u64) -> Self {
        SerialBlocks {
            size: size.max(1),
            blocks: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The carrier's next serial from this process's block, taking a new block when it is
    /// used up. Call it outside any write transaction: the block is its own.
    pub async fn next(&self, db: &Database, provider_code: &str) -> Result<u64, ApiError> {
        let mut blocks = self.blocks.lock().await;
        let block = blocks.entry(provider_code.to_owned()).or_insert(0..0);
        if let Some(serial) = block.next() {
            return Ok(serial);
        }
        *block = take_block(db, provider_code, self.size).await?;
        block
            .next()
            .ok_or_else(|| super::corrupt(format!("an empty serial block for {provider_code}")))
    }
}

/// Moves the carrier's row `size` serials on and returns the serials passed over.
async fn take_block(db: &Database, provider_code: &str, size: u64) -> Result<Range<u64>, ApiError> {
    let step = i64::try_from(size).map_err(ApiError::internal)?;
    let mut tx = db.begin_write().await?;
    let last: i64 = sqlx::query_scalar(
        "INSERT INTO tracking_serials (provider_code, last_serial) VALUES ($1, $2) \
         ON CONFLICT (provider_code) DO UPDATE SET last_serial = tracking_serials.last_serial + $2 \
         RETURNING last_serial",
    )
    .bind(provider_code)
    .bind(step)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let last =
        u64::try_from(last).map_err(|_| super::corrupt(format!("tracking serial {last}")))?;
    Ok(last.saturating_sub(size) + 1..last + 1)
}

/// The carrier's next tracking serial (1 for its first label), in the label's transaction:
/// what a label uses when the serial taken for it beforehand (see [`SerialBlocks`]) was for
/// another carrier (its authorisation changed in between).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::database;

    #[tokio::test]
    async fn serials_from_blocks_are_unique_across_replicas_and_the_in_transaction_path() {
        let (db, _target) = database().await;
        // Two replicas (two allocators over one database), blocks of three.
        let (first, second) = (SerialBlocks::new(3), SerialBlocks::new(3));
        let mut handed_out = Vec::new();
        for _ in 0..4 {
            handed_out.push(first.next(&db, "EVRI").await.expect("serial"));
            handed_out.push(second.next(&db, "EVRI").await.expect("serial"));
        }
        // Each takes its own block (1-3 and 4-6) and its next one after both (7-9, 10-12).
        assert_eq!(handed_out, vec![1, 4, 2, 5, 3, 6, 7, 10]);
        // A label whose serial is taken inside its transaction gets one past every block.
        let mut tx = db.begin_write().await.expect("begin");
        let inside = next_tracking_serial(&mut tx, "EVRI").await.expect("serial");
        tx.commit().await.expect("commit");
        assert_eq!(inside, 13);
        assert_eq!(first.next(&db, "EVRI").await.expect("serial"), 8);
        // Each carrier has its own row and blocks.
        assert_eq!(first.next(&db, "ROYAL_MAIL").await.expect("serial"), 1);
        // A restart forgets its block: the next one starts past what the row says.
        let restarted = SerialBlocks::new(3);
        assert_eq!(restarted.next(&db, "EVRI").await.expect("serial"), 14);
    }
}
