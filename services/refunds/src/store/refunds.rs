//! `refunds`: one row per refund, with its settlement state (`next_attempt_at`, the lease)
//! and a `version` for optimistic concurrency; and the ListRefunds keyset pages.

use std::sync::LazyLock;

use returns_domain::dispute::PaymentMethod;
use returns_domain::ids::{OrderId, PartyId, RefundId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::refund::{Deduction, RefundReason, RefundStatus, ReleaseCondition};
use returns_platform::db::Tx;
use returns_platform::paging::{Cursor, KeysetQuery, PageRequest};
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database};

use super::{deductions_json, stored_code, stored_deductions};

/// One refund.
#[derive(Debug, Clone)]
pub struct RefundRow {
    pub refund_id: RefundId,
    pub order_id: OrderId,
    /// The dispute that asked for it, as the disputes service names it; empty for none.
    pub dispute_id: String,
    pub buyer_id: PartyId,
    pub amount: Money,
    pub net: Money,
    pub deductions: Vec<Deduction>,
    pub reason: RefundReason,
    pub release: ReleaseCondition,
    /// The return label it waits for, as the labels service names it; empty for none.
    pub return_label_id: String,
    pub status: RefundStatus,
    pub method: PaymentMethod,
    pub expected_earliest: Option<i64>,
    pub expected_latest: Option<i64>,
    pub provider_reference: String,
    pub fast_refund: bool,
    pub attempts: i64,
    pub failure_reason: String,
    pub status_reason: String,
    pub note: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub released_at: Option<i64>,
    pub succeeded_at: Option<i64>,
    /// When the settlement worker next looks at it, business clock (release, expected
    /// arrival, status polls).
    pub next_attempt_at: Option<i64>,
    /// Not before this wall-clock instant: a transient provider failure's backoff.
    pub retry_after: Option<i64>,
    pub claimed_by: Option<String>,
    /// The claim's end, wall clock.
    pub lease_until: Option<i64>,
    pub message_id: Option<String>,
    pub version: i64,
}

impl RefundRow {
    /// The provider idempotency key: derived from the refund id alone, so every submission
    /// of one refund (retries, a second worker, a restart after a crash) carries the same key
    /// and the provider pays it at most once.
    pub fn idempotency_key(&self) -> String {
        format!("refund-{}", self.refund_id)
    }
}

/// Columns a refund is created with and never changes.
const FIXED_COLUMNS: [&str; 12] = [
    "refund_id",
    "order_id",
    "dispute_id",
    "buyer_id",
    "currency",
    "reason",
    "release_condition",
    "return_label_id",
    "payment_method",
    "note",
    "created_at",
    "message_id",
];

/// Columns that change as a refund moves, in the order [`bind_changes`] binds them;
/// [`save_refund`] writes them all.
const CHANGING_COLUMNS: [&str; 18] = [
    "amount_minor",
    "net_minor",
    "deductions",
    "status",
    "expected_earliest",
    "expected_latest",
    "provider_reference",
    "fast_refund",
    "attempts",
    "failure_reason",
    "status_reason",
    "updated_at",
    "released_at",
    "succeeded_at",
    "next_attempt_at",
    "claimed_by",
    "lease_until",
    "retry_after",
];

/// Every column of [`RefundRecord`]: fixed, changing, then the row version.
fn refund_columns() -> impl Iterator<Item = &'static str> {
    FIXED_COLUMNS
        .into_iter()
        .chain(CHANGING_COLUMNS)
        .chain(["version"])
}

/// `SELECT <every column> FROM refunds`, for every query that reads refunds.
static SELECT_REFUNDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM refunds",
        refund_columns().collect::<Vec<_>>().join(", ")
    )
});

static INSERT_REFUND: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<&str> = refund_columns().collect();
    let values: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO refunds ({}) VALUES ({})",
        columns.join(", "),
        values.join(", ")
    )
});

static SAVE_REFUND: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = CHANGING_COLUMNS
        .iter()
        .enumerate()
        .map(|(index, column)| format!("{column} = ${}", index + 1))
        .collect();
    let next = CHANGING_COLUMNS.len() + 1;
    format!(
        "UPDATE refunds SET {}, version = version + 1 WHERE refund_id = ${next} \
         AND version = ${}",
        set.join(", "),
        next + 1
    )
});

/// Binds the values of [`CHANGING_COLUMNS`], in order.
fn bind_changes<'b>(
    batch: &'b mut WriteBatch,
    refund: &RefundRow,
    deductions: String,
) -> &'b mut WriteBatch {
    batch
        .bind(refund.amount.minor_units)
        .bind(refund.net.minor_units)
        .bind(deductions)
        .bind(refund.status.code().to_owned())
        .bind(refund.expected_earliest)
        .bind(refund.expected_latest)
        .bind(refund.provider_reference.clone())
        .bind(i64::from(refund.fast_refund))
        .bind(refund.attempts)
        .bind(refund.failure_reason.clone())
        .bind(refund.status_reason.clone())
        .bind(refund.updated_at)
        .bind(refund.released_at)
        .bind(refund.succeeded_at)
        .bind(refund.next_attempt_at)
        .bind(refund.claimed_by.clone())
        .bind(refund.lease_until)
        .bind(refund.retry_after)
}

/// A `refunds` row as stored.
#[derive(sqlx::FromRow)]
struct RefundRecord {
    #[sqlx(try_from = "String")]
    refund_id: RefundId,
    #[sqlx(try_from = "String")]
    order_id: OrderId,
    dispute_id: String,
    #[sqlx(try_from = "String")]
    buyer_id: PartyId,
    #[sqlx(try_from = "String")]
    currency: CurrencyCode,
    amount_minor: i64,
    net_minor: i64,
    deductions: String,
    reason: String,
    release_condition: String,
    return_label_id: String,
    status: String,
    payment_method: String,
    expected_earliest: Option<i64>,
    expected_latest: Option<i64>,
    provider_reference: String,
    /// 0 or 1: both backends store flags as integers.
    fast_refund: i64,
    attempts: i64,
    failure_reason: String,
    status_reason: String,
    note: String,
    created_at: i64,
    updated_at: i64,
    released_at: Option<i64>,
    succeeded_at: Option<i64>,
    next_attempt_at: Option<i64>,
    retry_after: Option<i64>,
    claimed_by: Option<String>,
    lease_until: Option<i64>,
    message_id: Option<String>,
    version: i64,
}

impl TryFrom<RefundRecord> for RefundRow {
    type Error = ApiError;

    fn try_from(record: RefundRecord) -> Result<Self, ApiError> {
        Ok(RefundRow {
            refund_id: record.refund_id,
            order_id: record.order_id,
            dispute_id: record.dispute_id,
            buyer_id: record.buyer_id,
            amount: Money::new(record.currency, record.amount_minor),
            net: Money::new(record.currency, record.net_minor),
            deductions: stored_deductions(&record.deductions)?,
            reason: stored_code(&record.reason)?,
            release: stored_code(&record.release_condition)?,
            return_label_id: record.return_label_id,
            status: stored_code(&record.status)?,
            method: stored_code(&record.payment_method)?,
            expected_earliest: record.expected_earliest,
            expected_latest: record.expected_latest,
            provider_reference: record.provider_reference,
            fast_refund: record.fast_refund != 0,
            attempts: record.attempts,
            failure_reason: record.failure_reason,
            status_reason: record.status_reason,
            note: record.note,
            created_at: record.created_at,
            updated_at: record.updated_at,
            released_at: record.released_at,
            succeeded_at: record.succeeded_at,
            next_attempt_at: record.next_attempt_at,
            retry_after: record.retry_after,
            claimed_by: record.claimed_by,
            lease_until: record.lease_until,
            message_id: record.message_id,
            version: record.version,
        })
    }
}

fn to_rows(records: Vec<RefundRecord>) -> Result<Vec<RefundRow>, ApiError> {
    records.into_iter().map(RefundRow::try_from).collect()
}

/// Inserts `refund`, pushed into `batch` (the transaction's deferred writes), which then
/// [makes work](WriteBatch::makes_work) for settlement.
pub fn insert_refund(batch: &mut WriteBatch, refund: &RefundRow) -> Result<(), ApiError> {
    let deductions = deductions_json(&refund.deductions)?;
    batch
        .makes_work()
        .push(&INSERT_REFUND)
        .bind(refund.refund_id.to_string())
        .bind(refund.order_id.as_str().to_owned())
        .bind(refund.dispute_id.clone())
        .bind(refund.buyer_id.as_str().to_owned())
        .bind(refund.amount.currency.to_string())
        .bind(refund.reason.code().to_owned())
        .bind(refund.release.code().to_owned())
        .bind(refund.return_label_id.clone())
        .bind(refund.method.code().to_owned())
        .bind(refund.note.clone())
        .bind(refund.created_at)
        .bind(refund.message_id.clone());
    bind_changes(batch, refund, deductions).bind(refund.version);
    Ok(())
}

/// Writes every mutable column of `refund` if nobody changed the row since it was read
/// (`version` check), bumping the version; pushed into `batch`, which fails ABORTED when the
/// row moved (a lost race is never a silent overwrite). A refund's change may make it due for
/// settlement (released, resubmitted): the batch [makes work](WriteBatch::makes_work).
pub fn save_refund(batch: &mut WriteBatch, refund: &mut RefundRow) -> Result<(), ApiError> {
    let deductions = deductions_json(&refund.deductions)?;
    batch.makes_work().push(&SAVE_REFUND);
    bind_changes(batch, refund, deductions)
        .bind(refund.refund_id.to_string())
        .bind(refund.version)
        .expect_rows(
            1,
            ApiError::Aborted(format!(
                "refund {} changed concurrently; retry",
                refund.refund_id
            )),
        );
    refund.version += 1;
    Ok(())
}

pub async fn get_refund(
    db: &Database,
    refund_id: &RefundId,
) -> Result<Option<RefundRow>, ApiError> {
    let record: Option<RefundRecord> =
        sqlx::query_as(&format!("{} WHERE refund_id = $1", *SELECT_REFUNDS))
            .bind(refund_id.to_string())
            .fetch_optional(db.pool())
            .await?;
    record.map(RefundRow::try_from).transpose()
}

/// The refund, locked for the rest of the transaction.
pub async fn lock_refund(
    db: &Database,
    tx: &mut Tx,
    refund_id: &RefundId,
) -> Result<Option<RefundRow>, ApiError> {
    let record: Option<RefundRecord> = sqlx::query_as(&format!(
        "{} WHERE refund_id = $1{}",
        *SELECT_REFUNDS,
        db.for_update()
    ))
    .bind(refund_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    record.map(RefundRow::try_from).transpose()
}

/// The refund a relayed message created, if any.
pub async fn refund_by_message(
    tx: &mut Tx,
    message_id: &str,
) -> Result<Option<RefundRow>, ApiError> {
    let record: Option<RefundRecord> =
        sqlx::query_as(&format!("{} WHERE message_id = $1", *SELECT_REFUNDS))
            .bind(message_id)
            .fetch_optional(&mut **tx)
            .await?;
    record.map(RefundRow::try_from).transpose()
}

/// Refunds of an order in the given states, oldest first, locked.
pub async fn lock_order_refunds(
    db: &Database,
    tx: &mut Tx,
    order_id: &OrderId,
    statuses: &[RefundStatus],
) -> Result<Vec<RefundRow>, ApiError> {
    // Codes are fixed identifiers from the domain enum, never user input.
    let list = statuses
        .iter()
        .map(|status| format!("'{}'", status.code()))
        .collect::<Vec<_>>()
        .join(", ");
    let records: Vec<RefundRecord> = sqlx::query_as(&format!(
        "{} WHERE order_id = $1 AND status IN ({list}) \
         ORDER BY created_at, refund_id{}",
        *SELECT_REFUNDS,
        db.for_update()
    ))
    .bind(order_id.as_str())
    .fetch_all(&mut **tx)
    .await?;
    to_rows(records)
}

/// Refunds gated on a return: those naming the label, and those of the order naming none; a
/// report naming no label reaches every refund of the order, as in
/// [`super::return_state`]. Oldest first, locked.
pub async fn lock_gated_refunds(
    db: &Database,
    tx: &mut Tx,
    order_id: &OrderId,
    return_label_id: &str,
) -> Result<Vec<RefundRow>, ApiError> {
    let only_label = if return_label_id.is_empty() {
        ""
    } else {
        " AND return_label_id IN ($2, '')"
    };
    let sql = format!(
        "{} WHERE order_id = $1{only_label} \
         ORDER BY created_at, refund_id{}",
        *SELECT_REFUNDS,
        db.for_update()
    );
    let mut query = sqlx::query_as::<_, RefundRecord>(&sql).bind(order_id.as_str());
    if !return_label_id.is_empty() {
        query = query.bind(return_label_id);
    }
    to_rows(query.fetch_all(&mut **tx).await?)
}

/// The filters of ListRefunds; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct RefundFilter {
    pub order_id: Option<OrderId>,
    pub buyer_id: Option<PartyId>,
    pub dispute_id: Option<String>,
    pub status: Option<RefundStatus>,
}

impl RefundFilter {
    /// The filter values in a fixed order, empty when unset: what a page token is bound to.
    pub fn token_binding(&self) -> [&str; 4] {
        [
            self.order_id.as_ref().map_or("", OrderId::as_str),
            self.buyer_id.as_ref().map_or("", PartyId::as_str),
            self.dispute_id.as_deref().unwrap_or(""),
            self.status.map_or("", |status| status.code()),
        ]
    }
}

/// One page of ListRefunds.
#[derive(Debug)]
pub struct RefundPage {
    /// Newest first.
    pub refunds: Vec<RefundRow>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// A page of refunds, newest first (by creation instant, then id: refund ids are UUID v7,
/// so the id breaks ties in creation order too).
pub async fn list_refunds(
    db: &Database,
    filter: &RefundFilter,
    page: &PageRequest,
) -> Result<RefundPage, ApiError> {
    let records: Vec<RefundRecord> = db.fetch_all(list_query(filter, page).query_as()).await?;
    let mut refunds = to_rows(records)?;
    let next_page_token = page.finish(&mut refunds, |refund| Cursor {
        sort_key: refund.created_at,
        id: refund.refund_id.to_string(),
    });
    Ok(RefundPage {
        refunds,
        next_page_token,
    })
}

/// The SQL of a ListRefunds page with its values: only the filters given (each has an index
/// ending in the keyset key `(created_at, refund_id)`), newest first, so a page deep in the
/// list is a range scan that starts where the previous page stopped.
fn list_query(filter: &RefundFilter, page: &PageRequest) -> KeysetQuery {
    let mut query = KeysetQuery::select(SELECT_REFUNDS.as_str());
    query.equals("order_id", filter.order_id.as_ref().map(OrderId::as_str));
    query.equals("buyer_id", filter.buyer_id.as_ref().map(PartyId::as_str));
    query.equals("dispute_id", filter.dispute_id.as_deref());
    query.equals("status", filter.status.map(|status| status.code()));
    query.newest_first(page, "created_at", "refund_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_platform::testing::{TestDatabase, plan_starts_at_cursor, query_plan};

    async fn open() -> (TestDatabase, Database) {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, crate::MIGRATIONS)
            .await
            .expect("open");
        (target, db)
    }

    fn usd(minor: i64) -> Money {
        Money::new(CurrencyCode::parse("USD").expect("USD"), minor)
    }

    /// A refund of `order` for `buyer`, created at `created_at`.
    fn refund(order: &str, buyer: &str, status: RefundStatus, created_at: i64) -> RefundRow {
        RefundRow {
            refund_id: RefundId::new(),
            order_id: OrderId::parse(order).expect("order"),
            dispute_id: format!("d-{order}"),
            buyer_id: PartyId::parse(buyer).expect("buyer"),
            amount: usd(100),
            net: usd(100),
            deductions: Vec::new(),
            reason: RefundReason::Goodwill,
            release: ReleaseCondition::Immediate,
            return_label_id: String::new(),
            status,
            method: PaymentMethod::Card,
            expected_earliest: None,
            expected_latest: None,
            provider_reference: String::new(),
            fast_refund: false,
            attempts: 0,
            failure_reason: String::new(),
            status_reason: String::new(),
            note: String::new(),
            created_at,
            updated_at: created_at,
            released_at: None,
            succeeded_at: None,
            next_attempt_at: None,
            retry_after: None,
            claimed_by: None,
            lease_until: None,
            message_id: None,
            version: 0,
        }
    }

    /// Every page of `filter`, `size` at a time.
    async fn all_pages(db: &Database, filter: &RefundFilter, size: i32) -> Vec<Vec<RefundId>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = PageRequest::parse(size, &token, &filter.token_binding()).expect("page");
            let listed = list_refunds(db, filter, &page).await.expect("list");
            pages.push(listed.refunds.iter().map(|r| r.refund_id).collect());
            if listed.next_page_token.is_empty() {
                return pages;
            }
            token = listed.next_page_token;
        }
    }

    #[tokio::test]
    async fn filtered_lists_page_newest_first_across_pages_without_gaps_or_repeats() {
        let (_target, db) = open().await;
        // Seven refunds: b-1 has five (two created in the same microsecond, so the id breaks
        // the tie), b-2 two; o-2 holds one of b-1's and both of b-2's.
        let rows = [
            refund("o-1", "b-1", RefundStatus::Pending, 10),
            refund("o-1", "b-1", RefundStatus::Succeeded, 20),
            refund("o-1", "b-1", RefundStatus::Pending, 30),
            refund("o-1", "b-1", RefundStatus::Pending, 30),
            refund("o-2", "b-1", RefundStatus::OnHold, 40),
            refund("o-2", "b-2", RefundStatus::Pending, 15),
            refund("o-2", "b-2", RefundStatus::Pending, 50),
        ];
        let mut tx = db.begin_write().await.expect("begin");
        for row in &rows {
            insert_refund(tx.writes(), row).expect("insert");
        }
        tx.take_writes().execute(&mut tx).await.expect("insert");
        tx.commit().await.expect("commit");
        let newest_first = |keep: &dyn Fn(&RefundRow) -> bool| -> Vec<RefundId> {
            let mut kept: Vec<&RefundRow> = rows.iter().filter(|r| keep(r)).collect();
            kept.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.refund_id)));
            kept.into_iter().map(|r| r.refund_id).collect()
        };

        let by_buyer = RefundFilter {
            buyer_id: Some(PartyId::parse("b-1").expect("buyer")),
            ..RefundFilter::default()
        };
        let pages = all_pages(&db, &by_buyer, 2).await;
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(
            pages.concat(),
            newest_first(&|r| r.buyer_id.as_str() == "b-1")
        );

        let pending_of_o2 = RefundFilter {
            order_id: Some(OrderId::parse("o-2").expect("order")),
            status: Some(RefundStatus::Pending),
            ..RefundFilter::default()
        };
        assert_eq!(
            all_pages(&db, &pending_of_o2, 1).await.concat(),
            newest_first(&|r| r.order_id.as_str() == "o-2" && r.status == RefundStatus::Pending)
        );

        let by_dispute = RefundFilter {
            dispute_id: Some("d-o-1".into()),
            ..RefundFilter::default()
        };
        assert_eq!(
            all_pages(&db, &by_dispute, 3).await.concat(),
            newest_first(&|r| r.dispute_id == "d-o-1")
        );

        let everything = all_pages(&db, &RefundFilter::default(), 50).await;
        assert_eq!(everything.len(), 1, "one page when everything fits");
        assert_eq!(everything.concat(), newest_first(&|_| true));

        // A token is bound to the filters it was issued for.
        let first = PageRequest::parse(1, "", &by_buyer.token_binding()).expect("page");
        let token = list_refunds(&db, &by_buyer, &first)
            .await
            .expect("list")
            .next_page_token;
        assert!(PageRequest::parse(1, &token, &by_dispute.token_binding()).is_err());
    }

    #[tokio::test]
    async fn every_list_filter_is_served_by_its_index_at_any_depth() {
        let (_target, db) = open().await;
        let deep = Cursor {
            sort_key: 1_780_000_000_000_000,
            id: "01900000-0000-7000-8000-000000000000".into(),
        };
        let filters = [
            RefundFilter::default(),
            RefundFilter {
                order_id: Some(OrderId::parse("o-1").expect("order")),
                ..RefundFilter::default()
            },
            RefundFilter {
                buyer_id: Some(PartyId::parse("b-1").expect("buyer")),
                ..RefundFilter::default()
            },
            RefundFilter {
                dispute_id: Some("d-1".into()),
                ..RefundFilter::default()
            },
            RefundFilter {
                status: Some(RefundStatus::OnHold),
                ..RefundFilter::default()
            },
        ];
        for filter in &filters {
            let first = PageRequest::parse(20, "", &filter.token_binding()).expect("page");
            let mut later = first.clone();
            later.after = Some(deep.clone());
            for page in [first, later] {
                let query = list_query(filter, &page);
                let plan = query_plan(&db, &query).await;
                let sql = query.sql();
                // A range search on an index: SQLite says SEARCH (a SCAN reads the whole
                // table), PostgreSQL puts the conditions in an Index Cond rather than a
                // Filter over scanned rows. Without filters or cursor a full index scan in
                // order is the right plan.
                let ranged =
                    plan.contains("SEARCH refunds USING INDEX") || plan.contains("Index Cond");
                let ordered_full_scan = plan
                    .contains("SCAN refunds USING INDEX refunds_by_created")
                    || plan.contains("Index Scan Backward using refunds_by_created");
                let unfiltered_first_page =
                    page.after.is_none() && filter.token_binding() == ["", "", "", ""];
                assert!(
                    ranged || (unfiltered_first_page && ordered_full_scan),
                    "{sql:?} is not served by an index:\n{plan}"
                );
                if page.after.is_some() {
                    assert!(
                        plan_starts_at_cursor(&plan, "created_at", "refund_id"),
                        "{sql:?} does not start the range at the cursor:\n{plan}"
                    );
                }
                assert!(
                    !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
                    "{sql:?} sorts after the scan:\n{plan}"
                );
            }
        }
    }
}
