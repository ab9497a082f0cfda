//! The `orders` table: the order facts the platform records and the order's protection
//! clock, as versioned documents beside the columns queries filter on.

use returns_domain::ids::OrderId;
use returns_domain::negotiation as n;
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database};
use sqlx::AnyConnection;

use super::document::ORDER;
use super::instant;

/// An order's facts and protection clock as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub facts: n::OrderFacts,
    pub clock: n::ProtectionClock,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct OrderRow {
    #[sqlx(try_from = "String")]
    pub(super) order_id: OrderId,
    pub(super) facts: String,
    pub(super) clock: String,
    pub(super) schema_version: i64,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl OrderRow {
    pub(super) fn into_record(self) -> Result<OrderRecord, ApiError> {
        let key = self.order_id.as_str();
        Ok(OrderRecord {
            facts: ORDER.read(key, self.schema_version, &self.facts)?,
            clock: ORDER.read(key, self.schema_version, &self.clock)?,
            created_at: instant("orders.created_at", self.created_at)?,
            updated_at: instant("orders.updated_at", self.updated_at)?,
        })
    }
}

/// Reads an order; `lock` takes a row lock on PostgreSQL (SQLite's write lock is held already).
pub async fn load_order(
    conn: &mut AnyConnection,
    db: &Database,
    order_id: &str,
    lock: bool,
) -> Result<Option<OrderRecord>, ApiError> {
    let sql = format!(
        "SELECT order_id, facts, clock, schema_version, created_at, updated_at \
         FROM orders WHERE order_id = $1{}",
        if lock { db.for_update() } else { "" }
    );
    sqlx::query_as::<_, OrderRow>(&sql)
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .map(OrderRow::into_record)
        .transpose()
}

/// Inserts or replaces an order's facts and clock.
pub async fn upsert_order(tx: &mut Tx, record: &OrderRecord) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO orders (order_id, buyer_id, seller_id, facts, clock, schema_version, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id) DO UPDATE SET buyer_id = excluded.buyer_id, \
         seller_id = excluded.seller_id, facts = excluded.facts, clock = excluded.clock, \
         schema_version = excluded.schema_version, updated_at = excluded.updated_at",
    )
    .bind(record.facts.order_id.as_str())
    .bind(record.facts.buyer_id.as_str())
    .bind(record.facts.seller_id.as_str())
    .bind(ORDER.write(&record.facts)?)
    .bind(ORDER.write(&record.clock)?)
    .bind(ORDER.current)
    .bind(to_unix_micros(record.created_at))
    .bind(to_unix_micros(record.updated_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds to a change's writes the order's facts and clock as they are now (an order row exists:
/// the change read it).
pub fn update_order(batch: &mut WriteBatch, record: &OrderRecord) -> Result<(), ApiError> {
    push_order_update(batch, record, "")
}

/// Pushes the update of an order to `record`, on `condition` too (SQL starting with ` AND`,
/// its parameters numbered from `$6`, bound by the caller next).
pub(super) fn push_order_update(
    batch: &mut WriteBatch,
    record: &OrderRecord,
    condition: &str,
) -> Result<(), ApiError> {
    batch
        .push(&format!(
            "UPDATE orders SET facts = $1, clock = $2, schema_version = $3, updated_at = $4 \
             WHERE order_id = $5{condition}"
        ))
        .bind(ORDER.write(&record.facts)?)
        .bind(ORDER.write(&record.clock)?)
        .bind(ORDER.current)
        .bind(to_unix_micros(record.updated_at))
        .bind(record.facts.order_id.to_string());
    Ok(())
}
