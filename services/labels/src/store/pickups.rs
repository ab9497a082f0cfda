//! `pickups`: courier pickups booked for PICKUP labels; a label shows its latest one.

use returns_domain::ids::LabelId;
use returns_domain::returns::PickupStatus;
use returns_platform::ApiError;
use returns_platform::db::Tx;
use returns_proto::common::v1 as common;
use sqlx::AnyConnection;

use super::Encoded;

const COLUMNS: &str = "pickup_id, label_id, provider_code, window_start, window_end, address, \
     status, confirmation_reference, instructions, created_at, updated_at";

/// A pickup as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PickupRow {
    pub pickup_id: String,
    #[sqlx(try_from = "String")]
    pub label_id: LabelId,
    pub provider_code: String,
    pub window_start: i64,
    pub window_end: i64,
    pub address: Encoded<common::Address>,
    #[sqlx(try_from = "String")]
    pub status: PickupStatus,
    pub confirmation_reference: String,
    pub instructions: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub async fn insert(tx: &mut Tx, pickup: &PickupRow) -> Result<(), ApiError> {
    sqlx::query(&format!(
        "INSERT INTO pickups ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&pickup.pickup_id)
    .bind(pickup.label_id.to_string())
    .bind(&pickup.provider_code)
    .bind(pickup.window_start)
    .bind(pickup.window_end)
    .bind(pickup.address.to_bytes())
    .bind(pickup.status.code())
    .bind(&pickup.confirmation_reference)
    .bind(&pickup.instructions)
    .bind(pickup.created_at)
    .bind(pickup.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn by_id(
    conn: &mut AnyConnection,
    pickup_id: &str,
    lock: &str,
) -> Result<Option<PickupRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pickups WHERE pickup_id = $1{lock}"
    ))
    .bind(pickup_id)
    .fetch_optional(conn)
    .await?)
}

/// Cancels one pickup.
pub async fn cancel(tx: &mut Tx, pickup_id: &str, now: i64) -> Result<(), ApiError> {
    sqlx::query("UPDATE pickups SET status = $1, updated_at = $2 WHERE pickup_id = $3")
        .bind(PickupStatus::Cancelled.code())
        .bind(now)
        .bind(pickup_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Moves the label's open pickups (scheduled or confirmed) to `status`: CANCELLED when the
/// label is voided, COLLECTED when the carrier accepts the parcel.
pub async fn close_open(
    tx: &mut Tx,
    label_id: &LabelId,
    status: PickupStatus,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE pickups SET status = $1, updated_at = $2 \
         WHERE label_id = $3 AND status IN ($4, $5)",
    )
    .bind(status.code())
    .bind(now)
    .bind(label_id.to_string())
    .bind(PickupStatus::Scheduled.code())
    .bind(PickupStatus::Confirmed.code())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Confirms the label's scheduled pickup with the courier's reference: false when there was
/// none to confirm.
pub async fn confirm_scheduled(
    tx: &mut Tx,
    label_id: &LabelId,
    reference: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let confirmed = sqlx::query(
        "UPDATE pickups SET status = $1, confirmation_reference = $2, updated_at = $3 \
         WHERE label_id = $4 AND status = $5",
    )
    .bind(PickupStatus::Confirmed.code())
    .bind(reference)
    .bind(now)
    .bind(label_id.to_string())
    .bind(PickupStatus::Scheduled.code())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(confirmed > 0)
}
