//! Client idempotency keys (docs/architecture.md, "The flow of one request"): every mutating
//! RPC takes a `request_id`; a retry with the same key and body gets the first response back,
//! the same key with another body is refused, and nothing changes twice.
//!
//! The key is recorded inside the same transaction as the change it guards, so a crash
//! between the change and the record cannot happen. Keys are scoped by operation and caller,
//! so two buyers cannot collide (or probe each other's keys).
//!
//! [`crate::mutation::mutate`] is the one user: [`record_first`] at the end of the
//! transaction, its insert doubling as the lookup, one statement on every new request. Only when it finds the key
//!   already there (a retry, or a concurrent duplicate that committed first) does the caller
//!   drop its transaction and answer from [`recorded`]; and when the work itself is refused
//!   (a retried OpenDispute meets its own dispute), [`recorded`] tells a retry from a real
//!   refusal. The work of a retry runs again and is rolled back, so this suits transactions
//!   with no effect outside the database, which every service transaction is.

use prost::Message;
use sha2::{Digest, Sha256};

use sqlx::any::AnyRow;

use crate::db::{Database, column};
use crate::error::ApiError;
use crate::write_batch::WriteBatch;

/// A stable fingerprint of a request body: SHA-256 of its protobuf encoding.
pub fn request_hash<M: Message>(request: &M) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The response recorded for `request_id`, read outside any transaction: what a caller of
/// [`record_first`] answers with when the key was already there or its work was refused.
///
/// Errors with ALREADY_EXISTS when the key was used for a different body.
pub async fn recorded<R: Message + Default>(
    db: &Database,
    operation: &str,
    caller_id: &str,
    request_id: &str,
    request_hash: &str,
) -> Result<Option<R>, ApiError> {
    let row = sqlx::query(
        "SELECT request_hash, response FROM idempotency_keys \
         WHERE operation = $1 AND caller_id = $2 AND request_id = $3",
    )
    .bind(operation)
    .bind(caller_id)
    .bind(request_id)
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| stored_response(&row, operation, request_id, request_hash))
        .transpose()
}

/// The answer to a retry whose first call recorded its key but has not committed yet (so it
/// has not answered either): ABORTED, try again.
pub fn in_flight(operation: &str, request_id: &str) -> ApiError {
    ApiError::Aborted(format!(
        "the {operation} request {request_id:?} is still being committed by an earlier call; \
         retry with the same request_id for its response"
    ))
}

/// The response in a stored key's row, if it was stored for the same body.
fn stored_response<R: Message + Default>(
    row: &AnyRow,
    operation: &str,
    request_id: &str,
    request_hash: &str,
) -> Result<R, ApiError> {
    let stored_hash: String = column(row, "request_hash")?;
    if stored_hash != request_hash {
        return Err(ApiError::AlreadyExists(format!(
            "request_id {request_id:?} was already used for a different {operation} request; \
             use a new request_id for a new request"
        )));
    }
    let bytes: Vec<u8> = column(row, "response")?;
    R::decode(bytes.as_slice()).map_err(ApiError::internal)
}

/// Adds to the transaction's writes the record of a request's response, unless its key is
/// already recorded, and returns that statement's place in the batch: it changes one row when
/// this request recorded the key (commit), none when an earlier request with the key did
/// (drop the transaction and answer from [`recorded`]). On PostgreSQL a concurrent duplicate
/// waits on it for the first to commit or roll back, then sees its row or records its own. On
/// SQLite the first may be in the same group-commit batch, recorded but not yet durable:
/// [`recorded`] does not see it yet and the caller answers [`in_flight`].
pub fn record_first<R: Message>(
    writes: &mut WriteBatch,
    operation: &str,
    caller_id: &str,
    request_id: &str,
    request_hash: &str,
    response: &R,
    now_micros: i64,
) -> usize {
    writes
        .push(
            "INSERT INTO idempotency_keys \
             (operation, caller_id, request_id, request_hash, response, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (operation, caller_id, request_id) DO NOTHING",
        )
        .bind(operation.to_owned())
        .bind(caller_id.to_owned())
        .bind(request_id.to_owned())
        .bind(request_hash.to_owned())
        .bind(response.encode_to_vec())
        .bind(now_micros);
    writes.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Database;
    use crate::testing::TestDatabase;

    use crate::test_probe::MIGRATIONS;

    /// Runs [`record_first`] on its own: true when it recorded the key.
    async fn record<R: Message>(
        tx: &mut crate::db::Tx,
        operation: &str,
        caller_id: &str,
        request_id: &str,
        hash: &str,
        response: &R,
        now: i64,
    ) -> bool {
        let mut writes = WriteBatch::new();
        let statement = record_first(
            &mut writes,
            operation,
            caller_id,
            request_id,
            hash,
            response,
            now,
        );
        writes.execute(tx).await.expect("record")[statement] == 1
    }

    #[tokio::test]
    async fn record_first_records_once_and_a_retry_answers_from_the_record() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let body = prost_types::Duration {
            seconds: 7,
            nanos: 0,
        };
        let hash = request_hash(&body);
        let first = prost_types::Timestamp {
            seconds: 42,
            nanos: 0,
        };
        let retried = prost_types::Timestamp {
            seconds: 43,
            nanos: 0,
        };

        let nothing: Option<prost_types::Timestamp> = recorded(&db, "Op", "b-1", "r-1", &hash)
            .await
            .expect("lookup");
        assert!(nothing.is_none());
        let mut tx = db.begin_write().await.expect("begin");
        assert!(record(&mut tx, "Op", "b-1", "r-1", &hash, &first, 1).await);
        tx.commit().await.expect("commit");

        // The retry's work ran again; its record finds the key, so it is dropped.
        let mut tx = db.begin_write().await.expect("begin");
        assert!(!record(&mut tx, "Op", "b-1", "r-1", &hash, &retried, 2).await);
        drop(tx);
        let replayed: Option<prost_types::Timestamp> = recorded(&db, "Op", "b-1", "r-1", &hash)
            .await
            .expect("lookup");
        assert_eq!(replayed, Some(first));
        let other_body = request_hash(&prost_types::Duration {
            seconds: 8,
            nanos: 0,
        });
        assert!(matches!(
            recorded::<prost_types::Timestamp>(&db, "Op", "b-1", "r-1", &other_body).await,
            Err(ApiError::AlreadyExists(_))
        ));
        let mut tx = db.begin_write().await.expect("begin");
        assert!(record(&mut tx, "Op", "b-2", "r-1", &hash, &retried, 3).await);
        tx.commit().await.expect("commit");
    }
}
