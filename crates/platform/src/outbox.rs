//! The transactional outbox and inbox (ARCHITECTURE.md "Cross-service work").
//!
//! A state change and the message it causes are written in the same transaction: a service
//! calls [`enqueue`] with its open write transaction, so either both land or neither does.
//! A relay later delivers each row to the service it is for, at least once; the receiver
//! calls [`accept_once`] in the same transaction as its own change, so a redelivery is
//! recognised and applied zero more times.
//!
//! Each service's migrations carry the two tables (`migrations/*/0002_outbox.sql`).
//!
//! The payload is the encoded request of the receiving RPC (for example a
//! `refunds.v1.CreateRefundRequest` whose `message_id` is the outbox id), so delivery is a
//! plain gRPC call and the receiver needs no second API for relayed messages.

use prost::Message;
use returns_domain::ids::MessageId;
use returns_domain::time::{Timestamp, to_unix_micros};

use crate::db::Tx;
use crate::error::ApiError;

/// A message for another service, written with the change that causes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The receiving service: `disputes`, `labels` or `refunds`.
    pub destination: &'static str,
    /// The receiving RPC, e.g. `CreateRefund`.
    pub kind: &'static str,
    /// The encoded request for that RPC.
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    pub fn new<M: Message>(destination: &'static str, kind: &'static str, request: &M) -> Self {
        OutboxMessage {
            destination,
            kind,
            payload: request.encode_to_vec(),
        }
    }
}

/// Writes `message` under `message_id` in the caller's transaction.
///
/// The id is chosen by the caller because it usually also goes inside the payload (the
/// receiver deduplicates by it). `traceparent` is the W3C context of the span that caused
/// the message, so the delivery continues the same trace; `None` takes the current span's.
pub async fn enqueue(
    tx: &mut Tx,
    message_id: &MessageId,
    message: &OutboxMessage,
    traceparent: Option<&str>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let now = to_unix_micros(now);
    let traceparent = traceparent
        .map(str::to_string)
        .or_else(crate::trace_context::current_traceparent);
    sqlx::query(
        "INSERT INTO outbox \
         (message_id, destination, kind, payload, traceparent, created_at, attempts, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
    )
    .bind(message_id.to_string())
    .bind(message.destination)
    .bind(message.kind)
    .bind(message.payload.clone())
    .bind(traceparent)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
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
    .bind(to_unix_micros(now))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Database, Migrations, column};
    use crate::testing::TestDatabase;
    use chrono::{TimeZone, Utc};

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    #[tokio::test]
    async fn a_message_lands_only_with_its_transaction_and_is_accepted_once() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let now = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("time");
        let message = OutboxMessage::new(
            "refunds",
            "CreateRefund",
            &prost_types::Duration {
                seconds: 5,
                nanos: 0,
            },
        );

        let rolled_back = MessageId::new();
        let mut tx = db.begin_write().await.expect("begin");
        enqueue(&mut tx, &rolled_back, &message, None, now)
            .await
            .expect("enqueue");
        tx.rollback().await.expect("rollback");

        let committed = MessageId::new();
        let mut tx = db.begin_write().await.expect("begin");
        enqueue(&mut tx, &committed, &message, Some("00-abc-def-01"), now)
            .await
            .expect("enqueue");
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
