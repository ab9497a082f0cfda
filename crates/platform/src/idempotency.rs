//! Client idempotency keys (docs/architecture.md, "The flow of one request"): every mutating
//! RPC takes a `request_id`; a retry with the same key and body gets the first response back,
//! the same key with another body is refused, and nothing changes twice.
//!
//! The key is looked up and recorded inside the same transaction as the change it guards, so
//! a crash between the change and the record cannot happen. Keys are scoped by operation and
//! caller, so two buyers cannot collide (or probe each other's keys).

use prost::Message;
use sha2::{Digest, Sha256};

use crate::db::{Tx, column};
use crate::error::ApiError;

/// A stable fingerprint of a request body: SHA-256 of its protobuf encoding.
pub fn request_hash<M: Message>(request: &M) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The response recorded for `request_id`, if this exact request was already applied.
///
/// Errors with ALREADY_EXISTS when the key was used for a different body.
pub async fn replay<R: Message + Default>(
    tx: &mut Tx,
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
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored_hash: String = column(&row, "request_hash")?;
    if stored_hash != request_hash {
        return Err(ApiError::AlreadyExists(format!(
            "request_id {request_id:?} was already used for a different {operation} request; \
             use a new request_id for a new request"
        )));
    }
    let bytes: Vec<u8> = column(&row, "response")?;
    R::decode(bytes.as_slice())
        .map(Some)
        .map_err(ApiError::internal)
}

/// Records the response of a request applied in `tx`, for later replays.
pub async fn record<R: Message>(
    tx: &mut Tx,
    operation: &str,
    caller_id: &str,
    request_id: &str,
    request_hash: &str,
    response: &R,
    now_micros: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO idempotency_keys \
         (operation, caller_id, request_id, request_hash, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(operation)
    .bind(caller_id)
    .bind(request_id)
    .bind(request_hash)
    .bind(response.encode_to_vec())
    .bind(now_micros)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Database, Migrations};
    use crate::testing::TestDatabase;

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    #[tokio::test]
    async fn the_same_key_and_body_replays_and_another_body_is_refused() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let first = prost_types::Duration {
            seconds: 7,
            nanos: 0,
        };
        let other = prost_types::Duration {
            seconds: 8,
            nanos: 0,
        };
        let response = prost_types::Timestamp {
            seconds: 42,
            nanos: 0,
        };

        let mut tx = db.begin_write().await.expect("begin");
        let hash = request_hash(&first);
        let none: Option<prost_types::Timestamp> = replay(&mut tx, "Op", "b-1", "r-1", &hash)
            .await
            .expect("lookup");
        assert!(none.is_none());
        record(&mut tx, "Op", "b-1", "r-1", &hash, &response, 1)
            .await
            .expect("record");
        tx.commit().await.expect("commit");

        let mut tx = db.begin_write().await.expect("begin");
        let replayed: Option<prost_types::Timestamp> = replay(&mut tx, "Op", "b-1", "r-1", &hash)
            .await
            .expect("lookup");
        assert_eq!(replayed, Some(response));
        let refused =
            replay::<prost_types::Timestamp>(&mut tx, "Op", "b-1", "r-1", &request_hash(&other))
                .await;
        assert!(matches!(refused, Err(ApiError::AlreadyExists(_))));
        let other_caller: Option<prost_types::Timestamp> =
            replay(&mut tx, "Op", "b-2", "r-1", &hash)
                .await
                .expect("lookup");
        assert!(other_caller.is_none(), "keys are scoped by caller");
    }
}
