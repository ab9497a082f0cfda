//! The `disputes` table: the dispute document (versioned JSON of the domain struct) with the
//! plain columns queries filter, sort and lock on, the opening rules' view of an order's
//! disputes, and the ListDisputes keyset query.
//!
//! Every update is conditional on the version that was read, so a lost race can never
//! overwrite a winner.

use returns_domain::ids::DisputeId;
use returns_domain::negotiation::{self as n, DisputeState, OutcomeSource};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::paging::{Cursor, KeysetQuery, PageRequest};
use returns_platform::{ApiError, Database};
use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, FromRow};

use super::document::DISPUTE;
use super::{deadlines, events, messages};

/// The columns a dispute is read from.
const DISPUTE_COLUMNS: &str = "dispute_id, data, schema_version, version";

#[derive(Debug, sqlx::FromRow)]
struct DisputeRow {
    #[sqlx(try_from = "String")]
    dispute_id: DisputeId,
    data: String,
    schema_version: i64,
    /// The optimistic-concurrency version: the column is the truth, whatever the document says.
    version: i64,
}

impl DisputeRow {
    fn into_dispute(self) -> Result<n::Dispute, ApiError> {
        let mut dispute: n::Dispute = DISPUTE.read(
            &self.dispute_id.to_string(),
            self.schema_version,
            &self.data,
        )?;
        dispute.version = self.version;
        Ok(dispute)
    }
}

/// Reads a dispute; `lock` takes a row lock on PostgreSQL (SQLite's write lock is held already).
pub async fn load_dispute(
    conn: &mut AnyConnection,
    db: &Database,
    id: &DisputeId,
    lock: bool,
) -> Result<Option<n::Dispute>, ApiError> {
    let sql = format!(
        "SELECT {DISPUTE_COLUMNS} FROM disputes WHERE dispute_id = $1{}",
        if lock { db.for_update() } else { "" }
    );
    sqlx::query_as::<_, DisputeRow>(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .map(DisputeRow::into_dispute)
        .transpose()
}

#[derive(Debug, sqlx::FromRow)]
struct OrderDisputeRow {
    #[sqlx(try_from = "String")]
    dispute_id: DisputeId,
    state: String,
}

/// What the opening rules need to know about the order's other disputes.
pub async fn opening_context(
    tx: &mut Tx,
    buyer_id: &str,
    order_id: &str,
    now: Timestamp,
) -> Result<n::OpeningContext, ApiError> {
    let rows = sqlx::query_as::<_, OrderDisputeRow>(
        "SELECT dispute_id, state FROM disputes WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut context = n::OpeningContext::default();
    for row in rows {
        let state = DisputeState::parse(&row.state).map_err(ApiError::internal)?;
        if state.is_active() {
            context.active_dispute = Some((row.dispute_id, state));
        } else if state == DisputeState::Resolved {
            context.resolved_before = true;
        }
    }
    let free_returns: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM disputes \
         WHERE buyer_id = $1 AND free_return_month = $2",
    )
    .bind(buyer_id)
    .bind(month(now))
    .fetch_one(&mut **tx)
    .await?;
    context.free_returns_this_month = u32::try_from(free_returns).unwrap_or(u32::MAX);
    Ok(context)
}

fn month(at: Timestamp) -> String {
    at.format("%Y-%m").to_string()
}

/// 'YYYY-MM' of a dispute authorised as a free return: the buyer's monthly quota counts these.
fn free_return_month(dispute: &n::Dispute) -> Option<String> {
    dispute
        .outcome
        .as_ref()
        .filter(|o| o.source == OutcomeSource::FreeReturn)
        .map(|o| month(o.decided_at))
}

/// The columns every write of a dispute sets, bound as `$1`..`$6` in this order: state,
/// free-return month, document, its schema version, version, updated_at.
fn bind_changed<'q>(
    query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    dispute: &n::Dispute,
) -> Result<sqlx::query::Query<'q, Any, AnyArguments<'q>>, ApiError> {
    Ok(query
        .bind(dispute.state.code())
        .bind(free_return_month(dispute))
        .bind(DISPUTE.write(dispute)?)
        .bind(DISPUTE.current)
        .bind(dispute.version)
        .bind(to_unix_micros(dispute.updated_at)))
}

/// Writes a new dispute with its first history, deadline and outbox messages; returns
/// whether outbox rows were written.
pub async fn insert_dispute(
    tx: &mut Tx,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let insert = sqlx::query(
        "INSERT INTO disputes (state, free_return_month, data, schema_version, version, \
         updated_at, dispute_id, order_id, buyer_id, seller_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    );
    bind_changed(insert, dispute)?
        .bind(dispute.id.to_string())
        .bind(dispute.order_id.as_str())
        .bind(dispute.buyer_id.as_str())
        .bind(dispute.seller_id.as_str())
        .bind(to_unix_micros(dispute.created_at))
        .execute(&mut **tx)
        .await
        .map_err(|error| match ApiError::from(error) {
            ApiError::AlreadyExists(_) => ApiError::precondition(
                "one_active_dispute_per_order",
                format!("order {} already has an active dispute", dispute.order_id),
            ),
            other => other,
        })?;
    write_effects(tx, dispute, history, order, now).await
}

/// Writes the result of a transition: the dispute (only if still at `read_version`), its
/// history, its deadline and the outbox messages. Returns whether outbox rows were written.
pub async fn save_transition(
    tx: &mut Tx,
    read_version: i64,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    // The free-return month, once set, stays: the quota counts the month it was granted in.
    let update = sqlx::query(
        "UPDATE disputes SET state = $1, free_return_month = COALESCE(free_return_month, $2), \
         data = $3, schema_version = $4, version = $5, updated_at = $6 \
         WHERE dispute_id = $7 AND version = $8",
    );
    let updated = bind_changed(update, dispute)?
        .bind(dispute.id.to_string())
        .bind(read_version)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if updated != 1 {
        return Err(ApiError::Aborted(format!(
            "dispute {} changed while this request was applied; read it again and retry",
            dispute.id
        )));
    }
    write_effects(tx, dispute, history, order, now).await
}

/// History rows, the deadline of the new state and the outbox messages of a change.
async fn write_effects(
    tx: &mut Tx,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    events::append_events(tx, &dispute.id, history).await?;
    deadlines::schedule_deadline(tx, dispute, now).await?;
    messages::enqueue_effects(tx, dispute, history, order).await
}

/// The filters of a ListDisputes page; `None` is "any".
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    pub buyer_id: Option<&'a str>,
    pub seller_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub state: Option<DisputeState>,
}

impl ListFilter<'_> {
    /// The filter values in a fixed order (empty for unset), which page tokens are bound to.
    pub fn token_binding(&self) -> [&str; 4] {
        [
            self.buyer_id.unwrap_or(""),
            self.seller_id.unwrap_or(""),
            self.order_id.unwrap_or(""),
            self.state.map_or("", |s| s.code()),
        ]
    }
}

/// The keyset of a listed dispute: where the next page starts.
pub fn list_cursor(dispute: &n::Dispute) -> Cursor {
    Cursor {
        sort_key: to_unix_micros(dispute.created_at),
        id: dispute.id.to_string(),
    }
}

/// One page of disputes, newest first; fetches one more than the page (`page.finish` trims it).
pub async fn list_disputes(
    db: &Database,
    filter: &ListFilter<'_>,
    page: &PageRequest,
) -> Result<Vec<n::Dispute>, ApiError> {
    let rows = list_query(filter, page)
        .query()
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|row| DisputeRow::from_row(row)?.into_dispute())
        .collect()
}

/// The SQL of a ListDisputes page with its values: only the filters given (each has an index
/// ending in the keyset key), newest first by (created_at, dispute_id), so a page deep in the
/// list costs what the first does.
fn list_query(filter: &ListFilter<'_>, page: &PageRequest) -> KeysetQuery {
    let mut query = KeysetQuery::select(format!("SELECT {DISPUTE_COLUMNS} FROM disputes"));
    query.equals("buyer_id", filter.buyer_id);
    query.equals("seller_id", filter.seller_id);
    query.equals("order_id", filter.order_id);
    query.equals("state", filter.state.map(|s| s.code()));
    query.newest_first(page, "created_at", "dispute_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_platform::Backend;
    use returns_platform::testing::TestDatabase;

    /// The query plan of one ListDisputes page, as text.
    async fn plan(db: &Database, filter: &ListFilter<'_>, page: &PageRequest) -> String {
        let query = list_query(filter, page);
        let mut tx = db.begin_write().await.expect("begin");
        let explain = match db.backend() {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {}", query.sql()),
            Backend::Postgres => {
                // On a near-empty table a sequential scan is cheapest anyway; what matters
                // is whether an index can serve the query at all.
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut *tx)
                    .await
                    .expect("set");
                format!("EXPLAIN {}", query.sql())
            }
        };
        let rows = query
            .bind_to(sqlx::query(&explain))
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        let mut text = String::new();
        for row in &rows {
            let line: String = match db.backend() {
                Backend::Sqlite => returns_platform::db::column(row, "detail").expect("detail"),
                Backend::Postgres => returns_platform::db::column(row, "QUERY PLAN").expect("plan"),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    #[tokio::test]
    async fn every_list_filter_is_served_by_its_index_at_any_depth() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, crate::MIGRATIONS)
            .await
            .expect("open");
        let first = PageRequest::parse(20, "", &[]).expect("first page");
        // A token for a page deep in the list, whatever the filters are.
        let deep = |filter: &ListFilter<'_>| {
            let page = PageRequest::parse(1, "", &filter.token_binding()).expect("page");
            let mut rows = vec![1, 2];
            let token = page.finish(&mut rows, |_| Cursor {
                sort_key: 1_780_000_000_000_000,
                id: "01900000-0000-7000-8000-000000000000".into(),
            });
            PageRequest::parse(20, &token, &filter.token_binding()).expect("deep page")
        };
        let cases = [
            (
                ListFilter {
                    buyer_id: Some("b-1"),
                    ..Default::default()
                },
                "disputes_by_buyer",
            ),
            (
                ListFilter {
                    seller_id: Some("s-1"),
                    ..Default::default()
                },
                "disputes_by_seller",
            ),
            (
                ListFilter {
                    order_id: Some("o-1"),
                    ..Default::default()
                },
                "disputes_by_order",
            ),
            (
                ListFilter {
                    state: Some(DisputeState::Open),
                    ..Default::default()
                },
                "disputes_by_state",
            ),
            (ListFilter::default(), "disputes_by_created"),
        ];
        for (filter, index) in &cases {
            let deep = deep(filter);
            let pages: &[&PageRequest] = if filter.token_binding() == ["", "", "", ""] {
                // The first unfiltered page reads the newest rows of the whole table.
                &[&deep]
            } else {
                &[&first, &deep]
            };
            for page in pages {
                let plan = plan(&db, filter, page).await;
                let sql = list_query(filter, page).sql().to_owned();
                // A range search on the filter's own index: SQLite says SEARCH (a SCAN reads
                // the whole table), PostgreSQL puts the condition in an Index Cond rather
                // than a Filter over scanned rows. Neither sorts after the scan.
                assert!(
                    plan.contains(index),
                    "{sql:?} does not use {index}:\n{plan}"
                );
                let searches =
                    plan.contains("SEARCH disputes USING") || plan.contains("Index Cond");
                assert!(searches, "{sql:?} is not an index range scan:\n{plan}");
                assert!(
                    !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
                    "{sql:?} sorts after the scan:\n{plan}"
                );
            }
        }
    }
}
