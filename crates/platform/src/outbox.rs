//! The transactional outbox and inbox, and the operator's view of the outbox.
//!
//! A state change and the message it causes are written in the same transaction: a service
//! adds it with [`enqueue`] to the writes of its open transaction, so either both land or
//! neither does.
//! A relay later delivers each row to the service it is for, at least once; the receiver
//! calls [`accept_once`] in the same transaction as its own change, so a redelivery is
//! recognised and applied zero more times.
//!
//! A row is PENDING until its receiver accepts it (DELIVERED). A receiver's final refusal,
//! or failing past the attempt limit, makes it DEAD: kept with its last error and attempt
//! count until an operator retries it (PENDING again) or discards it with a reason
//! (DISCARDED). Nothing is ever marked delivered that was not.
//!
//! Outbox times (`created_at`, `next_attempt_at`, ...) are wall-clock microseconds: delivery
//! is transport timing, not business time, so moving the test clock neither delays nor
//! hurries it.
//!
//! The payload is the encoded request of the receiving RPC (for example a
//! `refunds.v1.CreateRefundRequest` whose `message_id` is the outbox id), so delivery is a
//! plain gRPC call and the receiver needs no second API for relayed messages.

use prost::Message;
use returns_domain::ids::MessageId;
use returns_domain::time::Timestamp;
use returns_proto::{Destination, Rpc};
use sqlx::any::AnyRow;

use crate::db::{Database, Tx, column};
use crate::error::ApiError;
use crate::write_batch::WriteBatch;

/// A message for another service, written with the change that causes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The receiving service.
    pub destination: Destination,
    /// The receiving RPC, e.g. `CreateRefund`.
    pub kind: &'static str,
    /// The encoded request for that RPC.
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    /// A call of `rpc` (a generated constant such as `rpcs::refunds::CREATE_REFUND`), which
    /// only compiles with that RPC's request type: a misspelt destination or method, or the
    /// wrong message, is a build error rather than a dead letter.
    pub fn new<M: Message>(rpc: Rpc<M>, request: &M) -> Self {
        OutboxMessage {
            destination: rpc.destination,
            kind: rpc.method,
            payload: request.encode_to_vec(),
        }
    }
}

/// The fully qualified gRPC service of a stored destination name.
pub fn grpc_service(destination: &str) -> Option<&'static str> {
    Destination::from_name(destination).map(Destination::grpc_service)
}

/// Microseconds since the Unix epoch on the wall clock (outbox times are never business time).
pub fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Adds `message` under `message_id` to the writes of the caller's transaction, due for
/// delivery at once (the row lands when the batch runs in that transaction, or never).
///
/// The id is chosen by the caller because it usually also goes inside the payload (the
/// receiver deduplicates by it). `traceparent` is the W3C context of the span that caused
/// the message, so the delivery continues the same trace; `None` takes the current span's.
/// The batch is marked as [making work](WriteBatch::makes_work), so the commit that lands it
/// wakes the relay.
pub fn enqueue(
    batch: &mut WriteBatch,
    message_id: &MessageId,
    message: &OutboxMessage,
    traceparent: Option<&str>,
) -> Result<(), ApiError> {
    // The receiver's edge would refuse what this edge lets through: check it here, where the
    // sender can still fail its own request, not in a delivery that fails for ever.
    crate::edge::validate_payload(
        message.destination.grpc_service(),
        message.kind,
        &message.payload,
    )?;
    let now = wall_micros();
    let traceparent = traceparent
        .map(str::to_string)
        .or_else(crate::trace_context::current_traceparent);
    batch
        .makes_work()
        .push(
            "INSERT INTO outbox \
             (message_id, destination, kind, payload, traceparent, created_at, attempts, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(message_id.to_string())
        .bind(message.destination.name())
        .bind(message.kind)
        .bind(message.payload.clone())
        .bind(traceparent)
        .bind(now)
        .bind(now);
    Ok(())
}

/// Records that `message_id` was received, in the receiver's transaction.
///
/// Returns `true` the first time and `false` for every redelivery; on `false` the caller
/// skips its change (and typically answers with the current state).
pub async fn accept_once(
    tx: &mut Tx,
    message_id: &str,
    source: &str,
    now: Timestamp,
) -> Result<bool, ApiError> {
    if message_id.is_empty() {
        return Err(ApiError::invalid(
            "message_id",
            "is required for relayed messages",
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO inbox (message_id, source, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(source)
    .bind(returns_domain::time::to_unix_micros(now))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Pending,
    Dead,
    Delivered,
    Discarded,
}

/// An outbox row as operators see it (no payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub message_id: String,
    pub destination: String,
    pub kind: String,
    pub state: MessageState,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Wall-clock microseconds.
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub dead_at: Option<i64>,
    pub discard_reason: Option<String>,
}

const ENTRY_COLUMNS: &str = "message_id, destination, kind, attempts, last_error, created_at, \
     next_attempt_at, delivered_at, dead_at, discarded_at, discard_reason";

impl OutboxEntry {
    fn from_row(row: &AnyRow) -> Result<OutboxEntry, ApiError> {
        let delivered_at: Option<i64> = column(row, "delivered_at")?;
        let dead_at: Option<i64> = column(row, "dead_at")?;
        let discarded_at: Option<i64> = column(row, "discarded_at")?;
        let state = match (delivered_at, dead_at, discarded_at) {
            (Some(_), _, _) => MessageState::Delivered,
            (None, _, Some(_)) => MessageState::Discarded,
            (None, Some(_), None) => MessageState::Dead,
            (None, None, None) => MessageState::Pending,
        };
        Ok(OutboxEntry {
            message_id: column(row, "message_id")?,
            destination: column(row, "destination")?,
            kind: column(row, "kind")?,
            state,
            attempts: column(row, "attempts")?,
            last_error: column(row, "last_error")?,
            created_at: column(row, "created_at")?,
            next_attempt_at: column(row, "next_attempt_at")?,
            dead_at,
            discard_reason: column(row, "discard_reason")?,
        })
    }
}

/// Counts an operator watches: dead letters, and how much is waiting and for how long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxHealth {
    pub dead: i64,
    pub pending: i64,
    /// `created_at` (wall micros) of the oldest pending message.
    pub oldest_pending_created_at: Option<i64>,
}

impl OutboxHealth {
    /// Age of the oldest pending message at wall time `now_micros`, in whole seconds.
    pub fn oldest_pending_age_seconds(&self, now_micros: i64) -> i64 {
        self.oldest_pending_created_at
            .map(|created| now_micros.saturating_sub(created).max(0) / 1_000_000)
            .unwrap_or(0)
    }
}

/// Dead and pending counts of the outbox of `db`.
pub async fn health(db: &Database) -> Result<OutboxHealth, ApiError> {
    let row = sqlx::query(
        "SELECT \
           (SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL AND discarded_at IS NULL \
              AND delivered_at IS NULL) AS dead, \
           (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending, \
           (SELECT MIN(created_at) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL) \
              AS oldest",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(OutboxHealth {
        dead: column(&row, "dead")?,
        pending: column(&row, "pending")?,
        oldest_pending_created_at: column(&row, "oldest")?,
    })
}

/// Undelivered messages (dead only, or pending and dead), oldest first, after the
/// `(created_at, message_id)` position `after`.
pub async fn list_undelivered(
    db: &Database,
    dead_only: bool,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<OutboxEntry>, ApiError> {
    let filter = if dead_only {
        "dead_at IS NOT NULL AND discarded_at IS NULL AND delivered_at IS NULL"
    } else {
        "delivered_at IS NULL AND discarded_at IS NULL"
    };
    let (after_created, after_id) = after.unwrap_or((i64::MIN, String::new()));
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM outbox WHERE {filter} \
         AND (created_at > $1 OR (created_at = $1 AND message_id > $2)) \
         ORDER BY created_at, message_id LIMIT $3"
    ))
    .bind(after_created)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(OutboxEntry::from_row).collect()
}

/// One message by id.
pub async fn get(db: &Database, message_id: &str) -> Result<Option<OutboxEntry>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM outbox WHERE message_id = $1"
    ))
    .bind(message_id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(OutboxEntry::from_row).transpose()
}

/// Makes a dead or backing-off message due now, attempts starting over. Refused for a
/// message already delivered or discarded.
pub async fn retry(db: &Database, message_id: &str) -> Result<OutboxEntry, ApiError> {
    let now = wall_micros();
    let changed = db
        .execute_write(
            sqlx::query(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $1 \
         WHERE message_id = $2 AND delivered_at IS NULL AND discarded_at IS NULL",
            )
            .bind(now)
            .bind(message_id),
        )
        .await?;
    let entry = get(db, message_id)
        .await?
        .ok_or_else(|| ApiError::not_found("outbox message", message_id))?;
    if changed == 0 {
        return Err(ApiError::precondition(
            "outbox_message_closed",
            format!(
                "message {message_id} is {:?}; only pending or dead messages can be retried",
                entry.state
            ),
        ));
    }
    tracing::info!(%message_id, destination = %entry.destination, kind = %entry.kind,
        "outbox message retried by an operator");
    Ok(entry)
}

/// Closes a dead message without delivering it, keeping `reason`.
pub async fn discard(
    db: &Database,
    message_id: &str,
    reason: &str,
) -> Result<OutboxEntry, ApiError> {
    let changed = db
        .execute_write(
            sqlx::query(
                "UPDATE outbox SET discarded_at = $1, discard_reason = $2 \
         WHERE message_id = $3 AND dead_at IS NOT NULL AND discarded_at IS NULL \
         AND delivered_at IS NULL",
            )
            .bind(wall_micros())
            .bind(reason)
            .bind(message_id),
        )
        .await?;
    let entry = get(db, message_id)
        .await?
        .ok_or_else(|| ApiError::not_found("outbox message", message_id))?;
    if changed == 0 {
        return Err(ApiError::precondition(
            "outbox_message_not_dead",
            format!(
                "message {message_id} is {:?}; only dead messages can be discarded",
                entry.state
            ),
        ));
    }
    tracing::warn!(%message_id, destination = %entry.destination, kind = %entry.kind, %reason,
        "outbox message discarded by an operator");
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;
    use chrono::{TimeZone, Utc};

    use crate::test_probe::MIGRATIONS;

    #[test]
    fn a_message_its_receiver_would_refuse_is_refused_before_it_is_written() {
        let poison = OutboxMessage::new(
            returns_proto::rpcs::refunds::CREATE_REFUND,
            &returns_proto::refunds::v1::CreateRefundRequest {
                order_id: "o-1".into(),
                note: "nul \0 inside".into(),
                ..Default::default()
            },
        );
        let mut batch = WriteBatch::new();
        let refused = enqueue(&mut batch, &MessageId::new(), &poison, None);
        assert!(
            matches!(refused, Err(ApiError::InvalidArgument(_))),
            "{refused:?}"
        );
        assert!(batch.is_empty(), "nothing was added to the writes");
    }

    #[tokio::test]
    async fn a_message_lands_only_with_its_transaction_and_is_accepted_once() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let now = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("time");
        let message = OutboxMessage::new(
            returns_proto::rpcs::refunds::CREATE_REFUND,
            &returns_proto::refunds::v1::CreateRefundRequest {
                order_id: "o-1".into(),
                ..Default::default()
            },
        );

        let rolled_back = MessageId::new();
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        enqueue(&mut batch, &rolled_back, &message, None).expect("enqueue");
        batch.execute(&mut tx).await.expect("write");
        tx.rollback().await.expect("rollback");

        let committed = MessageId::new();
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        enqueue(&mut batch, &committed, &message, Some("00-abc-def-01")).expect("enqueue");
        batch.execute(&mut tx).await.expect("write");
        tx.commit().await.expect("commit");

        let rows = sqlx::query("SELECT message_id, payload FROM outbox")
            .fetch_all(db.pool())
            .await
            .expect("select");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            column::<String>(&rows[0], "message_id").expect("id"),
            committed.to_string()
        );
        assert_eq!(
            column::<Vec<u8>>(&rows[0], "payload").expect("payload"),
            message.payload
        );

        let mut tx = db.begin_write().await.expect("begin");
        assert!(
            accept_once(&mut tx, "m-1", "disputes", now)
                .await
                .expect("first")
        );
        assert!(
            !accept_once(&mut tx, "m-1", "disputes", now)
                .await
                .expect("again")
        );
        tx.commit().await.expect("commit");
        let mut tx = db.begin_write().await.expect("begin");
        assert!(
            !accept_once(&mut tx, "m-1", "disputes", now)
                .await
                .expect("later")
        );
        assert!(accept_once(&mut tx, "", "disputes", now).await.is_err());
    }
}
