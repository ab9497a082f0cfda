//! `return_labels`: one row per label issued, with its journey (status and the instants a
//! scan set) and the seller's inspection; listed newest first by keyset.

use returns_domain::dispute::PostagePayer;
use returns_domain::ids::{LabelId, OrderId, PartyId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::returns::{Journey, LabelStatus, ReturnMethod};
use returns_platform::ApiError;
use returns_platform::paging::{Cursor, PageRequest};
use returns_platform::write_batch::WriteBatch;
use returns_proto::common::v1 as common;
use returns_proto::labels::v1 as pb;
use sqlx::AnyConnection;

use super::{Encoded, optional_instant};
use returns_platform::paging::KeysetQuery;

const COLUMNS: &str = "label_id, order_id, dispute_id, buyer_id, seller_id, method, \
     provider_code, tracking_number, ship_by, paid_by, postage_currency, postage_minor, \
     free_return, quota_month, qr_payload, status, status_at, sender, return_to, inspection, \
     created_at, updated_at, accepted_at, delivered_at, voided_at";

/// A label as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LabelRow {
    #[sqlx(try_from = "String")]
    pub label_id: LabelId,
    #[sqlx(try_from = "String")]
    pub order_id: OrderId,
    pub dispute_id: String,
    #[sqlx(try_from = "String")]
    pub buyer_id: PartyId,
    #[sqlx(try_from = "String")]
    pub seller_id: PartyId,
    #[sqlx(try_from = "String")]
    pub method: ReturnMethod,
    pub provider_code: String,
    pub tracking_number: String,
    pub ship_by: i64,
    #[sqlx(try_from = "String")]
    pub paid_by: PostagePayer,
    #[sqlx(try_from = "String")]
    pub postage_currency: CurrencyCode,
    pub postage_minor: i64,
    pub free_return: i64,
    /// The month whose free-return quota this label used, if it was free.
    pub quota_month: Option<String>,
    pub qr_payload: String,
    #[sqlx(try_from = "String")]
    pub status: LabelStatus,
    pub status_at: Option<i64>,
    pub sender: Encoded<common::Address>,
    pub return_to: Option<Encoded<common::Address>>,
    pub inspection: Option<Encoded<pb::Inspection>>,
    pub created_at: i64,
    pub updated_at: i64,
    pub accepted_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub voided_at: Option<i64>,
}

impl LabelRow {
    pub fn postage(&self) -> Money {
        Money::new(self.postage_currency, self.postage_minor)
    }

    pub fn is_free_return(&self) -> bool {
        self.free_return != 0
    }

    /// The parts of the label a scan can change.
    pub fn journey(&self) -> Result<Journey, ApiError> {
        Ok(Journey {
            status: self.status,
            status_at: optional_instant(self.status_at)?,
            accepted_at: optional_instant(self.accepted_at)?,
            delivered_at: optional_instant(self.delivered_at)?,
        })
    }

    /// The keyset position of this label in a list.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            sort_key: self.created_at,
            id: self.label_id.to_string(),
        }
    }
}

/// A label by id.
pub async fn by_id(
    conn: &mut AnyConnection,
    label_id: &LabelId,
    lock: &str,
) -> Result<Option<LabelRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM return_labels WHERE label_id = $1{lock}"
    ))
    .bind(label_id.to_string())
    .fetch_optional(conn)
    .await?)
}

/// A label by its tracking number (unique across carriers).
pub async fn by_tracking_number(
    conn: &mut AnyConnection,
    tracking_number: &str,
    lock: &str,
) -> Result<Option<LabelRow>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM return_labels WHERE tracking_number = $1{lock}"
    ))
    .bind(tracking_number)
    .fetch_optional(conn)
    .await?)
}

/// Writes a newly issued label, pushed into `batch` with the rest of its change.
pub fn insert(batch: &mut WriteBatch, label: &LabelRow) {
    batch
        .push(&format!(
            "INSERT INTO return_labels ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)"
        ))
        .bind(label.label_id.to_string())
        .bind(label.order_id.as_str().to_owned())
        .bind(label.dispute_id.clone())
        .bind(label.buyer_id.as_str().to_owned())
        .bind(label.seller_id.as_str().to_owned())
        .bind(label.method.code())
        .bind(label.provider_code.clone())
        .bind(label.tracking_number.clone())
        .bind(label.ship_by)
        .bind(label.paid_by.code())
        .bind(label.postage_currency.as_str().to_owned())
        .bind(label.postage_minor)
        .bind(label.free_return)
        .bind(label.quota_month.clone())
        .bind(label.qr_payload.clone())
        .bind(label.status.code())
        .bind(label.status_at)
        .bind(label.sender.to_bytes())
        .bind(label.return_to.as_ref().map(Encoded::to_bytes))
        .bind(label.inspection.as_ref().map(Encoded::to_bytes))
        .bind(label.created_at)
        .bind(label.updated_at)
        .bind(label.accepted_at)
        .bind(label.delivered_at)
        .bind(label.voided_at);
}

/// Writes the parts of a label that change after issue (status, journey, inspection,
/// times), pushed into `batch` with the rest of the change. The label row is locked by the
/// read that loaded it, so nobody else changes it before the batch runs.
pub fn save(batch: &mut WriteBatch, label: &LabelRow) {
    batch
        .push(
            "UPDATE return_labels SET status = $1, status_at = $2, accepted_at = $3, \
             delivered_at = $4, voided_at = $5, inspection = $6, updated_at = $7 \
             WHERE label_id = $8",
        )
        .bind(label.status.code())
        .bind(label.status_at)
        .bind(label.accepted_at)
        .bind(label.delivered_at)
        .bind(label.voided_at)
        .bind(label.inspection.as_ref().map(Encoded::to_bytes))
        .bind(label.updated_at)
        .bind(label.label_id.to_string());
}

/// The filters of a label list; each set one is an equality on its column.
#[derive(Debug, Clone, Copy, Default)]
pub struct LabelFilter<'a> {
    pub buyer_id: Option<&'a str>,
    pub seller_id: Option<&'a str>,
    pub provider_code: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub dispute_id: Option<&'a str>,
    pub status: Option<LabelStatus>,
}

/// A page of labels, newest first; the caller trims it with `page.finish`.
pub async fn list(
    conn: &mut AnyConnection,
    filter: &LabelFilter<'_>,
    page: &PageRequest,
) -> Result<Vec<LabelRow>, ApiError> {
    Ok(list_query(filter, page).query_as().fetch_all(conn).await?)
}

/// The SQL of a page: only the filters given (so each can use its index, which ends in the
/// paging key), then the keyset condition, newest first.
pub(crate) fn list_query(filter: &LabelFilter<'_>, page: &PageRequest) -> KeysetQuery {
    let mut query = KeysetQuery::select(format!("SELECT {COLUMNS} FROM return_labels"));
    query.equals("buyer_id", filter.buyer_id);
    query.equals("seller_id", filter.seller_id);
    query.equals("provider_code", filter.provider_code);
    query.equals("order_id", filter.order_id);
    query.equals("dispute_id", filter.dispute_id);
    query.equals("status", filter.status.map(|s| s.code()));
    query.newest_first(page, "created_at", "label_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::database;
    use returns_platform::Database;
    use returns_platform::testing::{is_index_range, plan_starts_at_cursor, query_plan};

    /// A label with the given parties, carrier, status and creation instant.
    fn label(buyer: &str, seller: &str, provider: &str, status: LabelStatus, at: i64) -> LabelRow {
        let label_id = LabelId::new();
        LabelRow {
            label_id,
            order_id: OrderId::parse(&format!("o-{label_id}")).expect("order id"),
            dispute_id: format!("d-{label_id}"),
            buyer_id: PartyId::parse(buyer).expect("buyer"),
            seller_id: PartyId::parse(seller).expect("seller"),
            method: ReturnMethod::DropOff,
            provider_code: provider.to_owned(),
            tracking_number: format!("T-{label_id}"),
            ship_by: at + 1,
            paid_by: PostagePayer::Seller,
            postage_currency: CurrencyCode::GBP,
            postage_minor: 395,
            free_return: 0,
            quota_month: None,
            qr_payload: String::new(),
            status,
            status_at: None,
            sender: Encoded(common::Address {
                name: "Buyer".into(),
                country_code: "GB".into(),
                ..Default::default()
            }),
            return_to: None,
            inspection: None,
            created_at: at,
            updated_at: at,
            accepted_at: None,
            delivered_at: None,
            voided_at: None,
        }
    }

    /// Every page of `filter` at `size` labels a page, as label ids in order.
    async fn pages(db: &Database, filter: &LabelFilter<'_>, size: i32) -> Vec<Vec<LabelId>> {
        let mut conn = db.pool().acquire().await.expect("connection");
        let mut token = String::new();
        let mut pages = Vec::new();
        loop {
            let page = PageRequest::parse(size, &token, &["fixed"]).expect("page");
            let mut rows = list(&mut conn, filter, &page).await.expect("list");
            token = page.finish(&mut rows, LabelRow::cursor);
            pages.push(rows.iter().map(|r| r.label_id).collect());
            if token.is_empty() {
                return pages;
            }
        }
    }

    #[tokio::test]
    async fn filtered_lists_page_newest_first_through_every_matching_label_once() {
        let (db, _target) = database().await;
        // Several labels share an instant (the test clock stands still): the label id breaks
        // the tie, so no page boundary loses or repeats one.
        let mut labels = Vec::new();
        for i in 0..9_i64 {
            let buyer = if i % 3 == 0 { "b-2" } else { "b-1" };
            let provider = if i % 2 == 0 { "ROYAL_MAIL" } else { "EVRI" };
            let status = if i % 4 == 0 {
                LabelStatus::Voided
            } else {
                LabelStatus::Created
            };
            labels.push(label(buyer, "s-1", provider, status, 1_000 + i / 3));
        }
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        for row in &labels {
            insert(&mut batch, row);
        }
        batch.execute(&mut tx).await.expect("insert");
        tx.commit().await.expect("commit");

        let filters = [
            LabelFilter::default(),
            LabelFilter {
                buyer_id: Some("b-1"),
                ..LabelFilter::default()
            },
            LabelFilter {
                seller_id: Some("s-1"),
                provider_code: Some("ROYAL_MAIL"),
                ..LabelFilter::default()
            },
            LabelFilter {
                buyer_id: Some("b-1"),
                status: Some(LabelStatus::Created),
                ..LabelFilter::default()
            },
            LabelFilter {
                order_id: Some(labels[4].order_id.as_str()),
                ..LabelFilter::default()
            },
            LabelFilter {
                buyer_id: Some("nobody"),
                ..LabelFilter::default()
            },
        ];
        for filter in &filters {
            let matches = |row: &LabelRow| {
                filter.buyer_id.is_none_or(|b| row.buyer_id.as_str() == b)
                    && filter.seller_id.is_none_or(|s| row.seller_id.as_str() == s)
                    && filter.provider_code.is_none_or(|p| row.provider_code == p)
                    && filter.order_id.is_none_or(|o| row.order_id.as_str() == o)
                    && filter.status.is_none_or(|s| row.status == s)
            };
            let mut expected: Vec<&LabelRow> = labels.iter().filter(|r| matches(r)).collect();
            expected.sort_by(|a, b| {
                (b.created_at, b.label_id.to_string()).cmp(&(a.created_at, a.label_id.to_string()))
            });
            let expected: Vec<LabelId> = expected.iter().map(|r| r.label_id).collect();
            let pages = pages(&db, filter, 2).await;
            assert!(pages.iter().all(|p| p.len() <= 2), "{filter:?}: {pages:?}");
            assert_eq!(pages.concat(), expected, "{filter:?}");
        }
    }

    #[tokio::test]
    async fn every_label_filter_is_served_by_an_index_at_any_depth() {
        let (db, _target) = database().await;
        let deep = PageRequest::parse(20, "", &["fixed"])
            .expect("page")
            .finish(
                &mut vec![label("b-1", "s-1", "EVRI", LabelStatus::Created, 5); 21],
                LabelRow::cursor,
            );
        let deep = PageRequest::parse(20, &deep, &["fixed"]).expect("deep page");
        let filters = [
            LabelFilter::default(),
            LabelFilter {
                buyer_id: Some("b-1"),
                ..LabelFilter::default()
            },
            LabelFilter {
                seller_id: Some("s-1"),
                ..LabelFilter::default()
            },
            LabelFilter {
                provider_code: Some("EVRI"),
                ..LabelFilter::default()
            },
            LabelFilter {
                order_id: Some("o-1"),
                ..LabelFilter::default()
            },
            LabelFilter {
                dispute_id: Some("d-1"),
                ..LabelFilter::default()
            },
            LabelFilter {
                status: Some(LabelStatus::Delivered),
                ..LabelFilter::default()
            },
        ];
        for filter in &filters {
            let query = list_query(filter, &deep);
            let plan = query_plan(&db, &query).await;
            assert!(is_index_range(&plan), "{}\n{plan}", query.sql());
            assert!(
                plan_starts_at_cursor(&plan, "created_at", "label_id"),
                "{} does not start the range at the cursor:\n{plan}",
                query.sql()
            );
        }
    }

    #[tokio::test]
    async fn a_labels_journey_is_its_scans_in_carrier_time_and_its_latest_pickup_in_one_read() {
        use crate::store::pickups::{self, PickupRow};
        use crate::store::tracking::{self, EventRow};
        use returns_domain::returns::{PickupStatus, TrackingEventType};

        let (db, _target) = database().await;
        let bare = label("b-1", "s-1", "EVRI", LabelStatus::Created, 1_000);
        let busy = label("b-1", "s-1", "EVRI", LabelStatus::Created, 1_000);
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        insert(&mut batch, &bare);
        insert(&mut batch, &busy);
        batch.execute(&mut tx).await.expect("labels");
        // Scans arriving out of carrier order, and two pickups, the later one the latest.
        let scan = |id: &str, kind, occurred_at| EventRow {
            provider_code: "EVRI".into(),
            carrier_event_id: id.into(),
            label_id: busy.label_id,
            tracking_number: busy.tracking_number.clone(),
            kind,
            occurred_at,
            location: format!("at {id}"),
            details: String::new(),
            received_at: 5_000,
        };
        let delivered = scan("e-2", TrackingEventType::Delivered, 3_000);
        let accepted = scan("e-1", TrackingEventType::Accepted, 2_000);
        // Same carrier time and arrival: the event ids' bytes decide ('B' before 'a'), on
        // both backends, whatever the database's collation says.
        let lower = scan("e-a", TrackingEventType::InTransit, 2_500);
        let upper = scan("e-B", TrackingEventType::InTransit, 2_500);
        for event in [&delivered, &lower, &accepted, &upper] {
            tracking::insert(tx.writes(), event);
        }
        tx.take_writes().execute(&mut tx).await.expect("scans");
        let pickup = |id: &str, created_at, status| PickupRow {
            pickup_id: id.into(),
            label_id: busy.label_id,
            provider_code: "EVRI".into(),
            window_start: 10,
            window_end: 20,
            address: busy.sender.clone(),
            status,
            confirmation_reference: format!("ref {id}"),
            instructions: String::new(),
            created_at,
            updated_at: created_at,
        };
        let latest = pickup("p-2", 1_500, PickupStatus::Scheduled);
        for row in [&pickup("p-1", 1_200, PickupStatus::Cancelled), &latest] {
            pickups::insert(&mut tx, row).await.expect("pickup");
        }
        tx.commit().await.expect("commit");

        let mut conn = db.pool().acquire().await.expect("connection");
        let (events, found) = tracking::journey(&mut conn, &busy.label_id)
            .await
            .expect("journey");
        assert_eq!(events, vec![accepted, upper, lower, delivered]);
        assert_eq!(found, Some(latest));
        let (events, found) = tracking::journey(&mut conn, &bare.label_id)
            .await
            .expect("journey");
        assert!(events.is_empty() && found.is_none(), "{events:?} {found:?}");
    }
}
