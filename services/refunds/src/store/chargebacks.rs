//! `chargebacks`: card chargebacks recorded against an order's capture.

use returns_domain::ids::OrderId;
use returns_domain::money::Money;
use returns_platform::ApiError;
use returns_platform::db::Tx;

/// A recorded chargeback.
#[derive(Debug, Clone)]
pub struct ChargebackRow {
    pub chargeback_id: String,
    pub order_id: OrderId,
    pub amount: Money,
    pub network_reference: String,
    pub reason: String,
    pub opened_at: i64,
    pub created_at: i64,
}

pub async fn insert_chargeback(tx: &mut Tx, chargeback: &ChargebackRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO chargebacks (chargeback_id, order_id, currency, amount_minor, \
         network_reference, reason, opened_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&chargeback.chargeback_id)
    .bind(chargeback.order_id.as_str())
    .bind(chargeback.amount.currency.to_string())
    .bind(chargeback.amount.minor_units)
    .bind(&chargeback.network_reference)
    .bind(&chargeback.reason)
    .bind(chargeback.opened_at)
    .bind(chargeback.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a chargeback with this network reference is already recorded.
pub async fn chargeback_exists(tx: &mut Tx, network_reference: &str) -> Result<bool, ApiError> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT chargeback_id FROM chargebacks WHERE network_reference = $1")
            .bind(network_reference)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}
