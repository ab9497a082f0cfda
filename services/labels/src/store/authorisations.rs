//! `return_authorisations`: one row per order, written when disputes authorises a return;
//! `label_id` is the order's live label, claimed with a conditional update so two concurrent
//! requests cannot both issue one.

use returns_domain::dispute::{DisputeReason, PostagePayer};
use returns_domain::ids::{LabelId, OrderId, PartyId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::time::Timestamp;
use returns_platform::ApiError;
use returns_platform::db::Tx;
use returns_platform::write_batch::WriteBatch;
use returns_proto::common::v1 as common;
use sqlx::AnyConnection;

use super::{Encoded, corrupt, instant, optional_instant};

const COLUMNS: &str = "order_id, dispute_id, buyer_id, seller_id, destination_country, \
     item_value_currency, item_value_minor, delivered_at, free_return, postage_payer, ship_by, \
     reason, return_to, authorised_at, label_id";

/// A return authorisation as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthorisationRow {
    #[sqlx(try_from = "String")]
    pub order_id: OrderId,
    pub dispute_id: String,
    #[sqlx(try_from = "String")]
    pub buyer_id: PartyId,
    #[sqlx(try_from = "String")]
    pub seller_id: PartyId,
    pub destination_country: String,
    #[sqlx(try_from = "String")]
    pub item_value_currency: CurrencyCode,
    pub item_value_minor: i64,
    pub delivered_at: Option<i64>,
    pub free_return: i64,
    pub postage_payer: Option<String>,
    pub ship_by: Option<i64>,
    #[sqlx(try_from = "String")]
    pub reason: DisputeReason,
    pub return_to: Option<Encoded<common::Address>>,
    pub authorised_at: i64,
    pub label_id: Option<String>,
}

impl AuthorisationRow {
    pub fn item_value(&self) -> Money {
        Money::new(self.item_value_currency, self.item_value_minor)
    }

    pub fn is_free_return_listing(&self) -> bool {
        self.free_return != 0
    }

    pub fn delivered_at(&self) -> Result<Option<Timestamp>, ApiError> {
        optional_instant(self.delivered_at)
    }

    pub fn ship_by(&self) -> Result<Option<Timestamp>, ApiError> {
        optional_instant(self.ship_by)
    }

    pub fn authorised_at(&self) -> Result<Timestamp, ApiError> {
        instant(self.authorised_at)
    }

    /// Who disputes said pays the postage, if it said.
    pub fn postage_payer(&self) -> Result<Option<PostagePayer>, ApiError> {
        self.postage_payer
            .as_deref()
            .map(|code| PostagePayer::parse(code).map_err(|e| corrupt(e.to_string())))
            .transpose()
    }

    pub fn has_label(&self) -> bool {
        self.label_id.is_some()
    }
}

/// What disputes authorised, as it is written.
#[derive(Debug, Clone)]
pub struct NewAuthorisation<'a> {
    pub order_id: &'a OrderId,
    pub dispute_id: &'a str,
    pub buyer_id: &'a PartyId,
    pub seller_id: &'a PartyId,
    pub destination_country: &'a str,
    pub item_value: Money,
    pub delivered_at: Option<i64>,
    pub free_return: bool,
    pub postage_payer: Option<PostagePayer>,
    pub ship_by: Option<i64>,
    pub reason: DisputeReason,
    pub return_to: Option<&'a common::Address>,
    pub authorised_at: i64,
}

/// An order's authorisation.
pub async fn load(
    conn: &mut AnyConnection,
    order_id: &OrderId,
    lock: &str,
) -> Result<Option<AuthorisationRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM return_authorisations WHERE order_id = $1{lock}"
    ))
    .bind(order_id.as_str())
    .fetch_optional(conn)
    .await?)
}

/// The authorisation with what its buyer has used of the free-return quota of `month`, in
/// one statement (`lock` applies to the authorisation row only).
pub async fn load_with_quota_used(
    conn: &mut AnyConnection,
    order_id: &OrderId,
    month: &str,
    lock: &str,
) -> Result<Option<(AuthorisationRow, u32)>, ApiError> {
    let row: Option<WithQuotaUsed> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, (SELECT q.used FROM free_return_quota q \
          WHERE q.buyer_id = return_authorisations.buyer_id AND q.month = $2) AS quota_used \
         FROM return_authorisations WHERE order_id = $1{lock}"
    ))
    .bind(order_id.as_str())
    .bind(month)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| {
        let used = row
            .quota_used
            .map_or(0, |used| u32::try_from(used).unwrap_or(0));
        (row.authorisation, used)
    }))
}

#[derive(sqlx::FromRow)]
struct WithQuotaUsed {
    #[sqlx(flatten)]
    authorisation: AuthorisationRow,
    quota_used: Option<i64>,
}

impl NewAuthorisation<'_> {
    /// The row [`replace`] writes, as a later read would return it.
    pub fn row(&self) -> AuthorisationRow {
        AuthorisationRow {
            order_id: self.order_id.clone(),
            dispute_id: self.dispute_id.to_owned(),
            buyer_id: self.buyer_id.clone(),
            seller_id: self.seller_id.clone(),
            destination_country: self.destination_country.to_owned(),
            item_value_currency: self.item_value.currency,
            item_value_minor: self.item_value.minor_units,
            delivered_at: self.delivered_at,
            free_return: i64::from(self.free_return),
            postage_payer: self.postage_payer.map(|p| p.code().to_owned()),
            ship_by: self.ship_by,
            reason: self.reason,
            return_to: self.return_to.cloned().map(Encoded),
            authorised_at: self.authorised_at,
            label_id: None,
        }
    }
}

/// Replaces the order's authorisation (one without a label: the caller checked) by `new`,
/// pushed into `batch`: one upsert, whether the order had one or not.
pub fn replace(batch: &mut WriteBatch, new: &NewAuthorisation<'_>) {
    batch
        .push(&format!(
            "INSERT INTO return_authorisations ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL) \
             ON CONFLICT (order_id) DO UPDATE SET dispute_id = excluded.dispute_id, \
             buyer_id = excluded.buyer_id, seller_id = excluded.seller_id, \
             destination_country = excluded.destination_country, \
             item_value_currency = excluded.item_value_currency, \
             item_value_minor = excluded.item_value_minor, delivered_at = excluded.delivered_at, \
             free_return = excluded.free_return, postage_payer = excluded.postage_payer, \
             ship_by = excluded.ship_by, reason = excluded.reason, \
             return_to = excluded.return_to, authorised_at = excluded.authorised_at, \
             label_id = NULL"
        ))
        .bind(new.order_id.as_str().to_owned())
        .bind(new.dispute_id.to_owned())
        .bind(new.buyer_id.as_str().to_owned())
        .bind(new.seller_id.as_str().to_owned())
        .bind(new.destination_country.to_owned())
        .bind(new.item_value.currency.as_str().to_owned())
        .bind(new.item_value.minor_units)
        .bind(new.delivered_at)
        .bind(i64::from(new.free_return))
        .bind(new.postage_payer.map(|p| p.code().to_owned()))
        .bind(new.ship_by)
        .bind(new.reason.code().to_owned())
        .bind(new.return_to.map(prost::Message::encode_to_vec))
        .bind(new.authorised_at);
}

/// Makes `label_id` the order's live label if it has none: false when another request got
/// there first.
/// Records `label_id` as the order's live label, pushed into `batch`: the batch fails with
/// `taken` when the order already has one.
pub fn claim_label(
    batch: &mut WriteBatch,
    order_id: &OrderId,
    label_id: &LabelId,
    taken: ApiError,
) {
    batch
        .push(
            "UPDATE return_authorisations SET label_id = $1 \
             WHERE order_id = $2 AND label_id IS NULL",
        )
        .bind(label_id.to_string())
        .bind(order_id.as_str().to_owned())
        .expect_rows(1, taken);
}

/// Frees the order for a new label when `label_id` is its live one.
pub async fn release_label(
    tx: &mut Tx,
    order_id: &OrderId,
    label_id: &LabelId,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE return_authorisations SET label_id = NULL WHERE order_id = $1 AND label_id = $2",
    )
    .bind(order_id.as_str())
    .bind(label_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
