//! The `disputes` table: the dispute document (versioned JSON of the domain struct) with the
//! plain columns queries filter, sort and lock on, the opening rules' view of an order's
//! disputes, and the ListDisputes keyset query.
//!
//! Every update is conditional on the version that was read, so a lost race can never
//! overwrite a winner.

use returns_domain::ids::{DisputeId, OrderId};
use returns_domain::negotiation::{self as n, DisputeState, OutcomeSource};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::Tx;
use returns_platform::paging::{Cursor, KeysetQuery, PageRequest};
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database};

use super::document::DISPUTE;
use super::orders::{OrderRecord, OrderRow, push_order_update};
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

/// Reads a dispute as committed, without a lock: a point read (on SQLite on the calling
/// thread, see [`Database::fetch_point`]), as GetDispute and the other reads of one dispute
/// make.
pub async fn load_dispute(db: &Database, id: &DisputeId) -> Result<Option<n::Dispute>, ApiError> {
    let sql = format!("SELECT {DISPUTE_COLUMNS} FROM disputes WHERE dispute_id = $1");
    db.fetch_point(sqlx::query_as::<_, DisputeRow>(&sql).bind(id.to_string()))
        .await?
        .map(DisputeRow::into_dispute)
        .transpose()
}

#[derive(Debug, sqlx::FromRow)]
struct DisputeWithOrderRow {
    #[sqlx(flatten)]
    dispute: DisputeRow,
    #[sqlx(try_from = "String")]
    order_id: OrderId,
    facts: String,
    clock: String,
    order_schema_version: i64,
    order_created_at: i64,
    order_updated_at: i64,
}

/// Reads a dispute with its order in one statement, both locked on PostgreSQL (SQLite's write
/// lock is held already): every change of a dispute reads both, and a withdrawal writes the
/// order's clock.
pub async fn load_dispute_with_order(
    tx: &mut Tx,
    db: &Database,
    id: &DisputeId,
) -> Result<Option<(n::Dispute, OrderRecord)>, ApiError> {
    let sql = format!(
        "SELECT d.dispute_id, d.data, d.schema_version, d.version, o.order_id, o.facts, \
         o.clock, o.schema_version AS order_schema_version, o.created_at AS order_created_at, \
         o.updated_at AS order_updated_at \
         FROM disputes d JOIN orders o ON o.order_id = d.order_id \
         WHERE d.dispute_id = $1{}",
        db.for_update()
    );
    let Some(row) = sqlx::query_as::<_, DisputeWithOrderRow>(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let order = OrderRow {
        order_id: row.order_id,
        facts: row.facts,
        clock: row.clock,
        schema_version: row.order_schema_version,
        created_at: row.order_created_at,
        updated_at: row.order_updated_at,
    }
    .into_record()?;
    Ok(Some((row.dispute.into_dispute()?, order)))
}

#[derive(Debug, sqlx::FromRow)]
struct OrderWithDisputesRow {
    #[sqlx(flatten)]
    order: OrderRow,
    /// `dispute_id state` of each of the order's disputes, comma-separated; NULL for none.
    order_disputes: Option<String>,
    free_returns: i64,
}

/// Reads an order, locked on PostgreSQL, with what the opening rules need to know about its
/// disputes and its buyer's free returns this month, in one statement (CancelOrder decides
/// on all three).
pub async fn load_order_with_disputes(
    tx: &mut Tx,
    db: &Database,
    order_id: &str,
    now: Timestamp,
) -> Result<Option<(OrderRecord, n::OpeningContext)>, ApiError> {
    let sql = order_with_disputes_sql(db.for_update());
    let row = sqlx::query_as::<_, OrderWithDisputesRow>(&sql)
        .bind(order_id)
        .bind(month(now))
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|row| Ok(opening_view(order_id, row)?.0))
        .transpose()
}

/// An order as OpenDispute decides on it, read outside any transaction (committed rows, one
/// statement's snapshot), with what the read saw for the writes to check
/// ([`update_order_if_unchanged`]).
#[derive(Debug)]
pub struct OrderForOpening {
    pub order: OrderRecord,
    pub context: n::OpeningContext,
    pub seen: SeenOrder,
}

/// What [`read_order_for_opening`] saw: the order's stored documents, how many disputes the
/// order had, and the buyer's free returns in the month read.
#[derive(Debug)]
pub struct SeenOrder {
    facts: String,
    clock: String,
    schema_version: i64,
    disputes: i64,
    free_returns: i64,
    month: String,
}

/// Reads an order with its disputes and its buyer's free returns this month from the pool
/// (see [`OrderForOpening`]).
pub async fn read_order_for_opening(
    db: &Database,
    order_id: &str,
    now: Timestamp,
) -> Result<Option<OrderForOpening>, ApiError> {
    let month = month(now);
    let sql = order_with_disputes_sql("");
    let read = sqlx::query_as::<_, OrderWithDisputesRow>(&sql)
        .bind(order_id)
        .bind(&month);
    let Some(row) = db.fetch_point(read).await? else {
        return Ok(None);
    };
    let seen = SeenOrder {
        facts: row.order.facts.clone(),
        clock: row.order.clock.clone(),
        schema_version: row.order.schema_version,
        disputes: 0,
        free_returns: row.free_returns,
        month,
    };
    let ((order, context), disputes) = opening_view(order_id, row)?;
    Ok(Some(OrderForOpening {
        order,
        context,
        seen: SeenOrder { disputes, ..seen },
    }))
}

/// Adds the update of an order read by [`read_order_for_opening`] to a change's writes,
/// first of them, conditional on what the opening decided on: the order's documents as read
/// and as many disputes on the order (none active, or the opening was refused; so the same
/// ones). When `grants_free_return` (the opening used one of the buyer's free returns), the
/// buyer's grants row for the month moves from the count read to one more, which fails if
/// another opening moved it first (the `free_return_grants` migration says why). The batch
/// fails with ABORTED otherwise. First, because the opening's own dispute must not be
/// counted: on SQLite the statements run in order.
pub fn update_order_if_unchanged(
    batch: &mut WriteBatch,
    seen: SeenOrder,
    record: &OrderRecord,
    grants_free_return: bool,
) -> Result<(), ApiError> {
    let order_id = record.facts.order_id.to_string();
    let moved = || {
        ApiError::Aborted(format!(
            "order {order_id} or its buyer's free returns changed while a dispute was being \
             opened on it"
        ))
    };
    push_order_update(
        batch,
        record,
        " AND facts = $6 AND clock = $7 AND schema_version = $8 \
         AND (SELECT CAST(COUNT(*) AS BIGINT) FROM disputes d WHERE d.order_id = $9) = $10",
    )?;
    batch
        .bind(seen.facts)
        .bind(seen.clock)
        .bind(seen.schema_version)
        .bind(order_id.clone())
        .bind(seen.disputes)
        .expect_rows(1, moved());
    if grants_free_return {
        batch
            .push(
                "INSERT INTO free_return_grants (buyer_id, month, granted) VALUES ($1, $2, $3) \
                 ON CONFLICT (buyer_id, month) DO UPDATE SET granted = excluded.granted \
                 WHERE free_return_grants.granted < excluded.granted",
            )
            .bind(record.facts.buyer_id.to_string())
            .bind(seen.month)
            .bind(seen.free_returns + 1)
            .expect_rows(1, moved());
    }
    Ok(())
}

/// The order with its disputes (`dispute_id state` pairs) and the buyer's free returns in
/// the month bound as `$2`; `lock` is appended (FOR UPDATE or nothing).
fn order_with_disputes_sql(lock: &str) -> String {
    // Scalar subqueries, not a join: FOR UPDATE locks only the order row, and PostgreSQL
    // refuses FOR UPDATE beside an aggregate at the same level.
    format!(
        "SELECT o.order_id, o.facts, o.clock, o.schema_version, o.created_at, o.updated_at, \
         (SELECT string_agg(d.dispute_id || ' ' || d.state, ',') FROM disputes d \
          WHERE d.order_id = o.order_id) AS order_disputes, \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM disputes f \
          WHERE f.buyer_id = o.buyer_id AND f.free_return_month = $2) AS free_returns \
         FROM orders o WHERE o.order_id = $1{lock}"
    )
}

/// The order and the opening rules' view of it, and how many disputes the order has.
fn opening_view(
    order_id: &str,
    row: OrderWithDisputesRow,
) -> Result<((OrderRecord, n::OpeningContext), i64), ApiError> {
    let mut context = n::OpeningContext {
        free_returns_this_month: u32::try_from(row.free_returns).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let mut disputes = 0;
    for entry in row.order_disputes.as_deref().unwrap_or("").split(',') {
        if entry.is_empty() {
            continue;
        }
        disputes += 1;
        let corrupt = || {
            ApiError::internal(std::io::Error::other(format!(
                "order {order_id}: dispute entry {entry:?}"
            )))
        };
        let (id, state) = entry.split_once(' ').ok_or_else(corrupt)?;
        let id: DisputeId = id.parse().map_err(|_| corrupt())?;
        let state = DisputeState::parse(state).map_err(ApiError::internal)?;
        if state.is_active() {
            context.active_dispute = Some((id, state));
        } else if state == DisputeState::Resolved {
            context.resolved_before = true;
        }
    }
    Ok(((row.order.into_record()?, context), disputes))
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

/// Adds a new dispute to a change's writes, with its first history (numbered from 1),
/// deadline and outbox messages; returns whether there were messages (wake the relay after
/// commit).
pub fn write_opening(
    batch: &mut WriteBatch,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    batch.push(
        "INSERT INTO disputes (state, free_return_month, data, schema_version, version, \
         updated_at, dispute_id, order_id, buyer_id, seller_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    );
    bind_changed(batch, dispute)?;
    batch
        .bind(dispute.id.to_string())
        .bind(dispute.order_id.to_string())
        .bind(dispute.buyer_id.to_string())
        .bind(dispute.seller_id.to_string())
        .bind(to_unix_micros(dispute.created_at));
    // The unique index on an order's active dispute is the last word on a race the opening
    // rules lost (nothing else an opening writes can collide: every other row has a fresh id,
    // and the idempotency record ignores a conflict).
    batch.on_unique_violation(ApiError::precondition(
        "one_active_dispute_per_order",
        format!("order {} already has an active dispute", dispute.order_id),
    ));
    events::append_events(batch, &dispute.id, history, events::Numbering::FromOne)?;
    deadlines::schedule_deadline(batch, dispute, now, deadlines::Pending::None);
    messages::enqueue_effects(batch, dispute, history, order)
}

/// Adds the result of a transition of the dispute read at `read_version` to a change's writes:
/// the dispute (the batch fails with ABORTED unless it is still at that version), its history,
/// deadline and outbox messages; returns whether there were messages.
pub fn write_transition(
    batch: &mut WriteBatch,
    read_version: i64,
    dispute: &n::Dispute,
    history: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    // The free-return month, once set, stays: the quota counts the month it was granted in.
    batch.push(
        "UPDATE disputes SET state = $1, free_return_month = COALESCE(free_return_month, $2), \
         data = $3, schema_version = $4, version = $5, updated_at = $6 \
         WHERE dispute_id = $7 AND version = $8",
    );
    bind_changed(batch, dispute)?;
    batch
        .bind(dispute.id.to_string())
        .bind(read_version)
        .expect_rows(
            1,
            ApiError::Aborted(format!(
                "dispute {} changed while this request was applied; read it again and retry",
                dispute.id
            )),
        );
    events::append_events(batch, &dispute.id, history, events::Numbering::AfterLast)?;
    deadlines::schedule_deadline(batch, dispute, now, deadlines::Pending::Some);
    messages::enqueue_effects(batch, dispute, history, order)
}

/// The columns every write of a dispute sets, bound as `$1`..`$6` in this order: state,
/// free-return month, document, its schema version, version, updated_at.
fn bind_changed(batch: &mut WriteBatch, dispute: &n::Dispute) -> Result<(), ApiError> {
    batch
        .bind(dispute.state.code())
        .bind(free_return_month(dispute))
        .bind(DISPUTE.write(dispute)?)
        .bind(DISPUTE.current)
        .bind(dispute.version)
        .bind(to_unix_micros(dispute.updated_at));
    Ok(())
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
    db.fetch_all(list_query(filter, page).query_as::<DisputeRow>())
        .await?
        .into_iter()
        .map(DisputeRow::into_dispute)
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
    use returns_platform::testing::{
        TestDatabase, is_index_range, plan_starts_at_cursor, query_plan,
    };

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
                let query = list_query(filter, page);
                let plan = query_plan(&db, &query).await;
                let sql = query.sql();
                // A range search on the filter's own index, no sort after it, and a deep
                // page's range starting at its cursor.
                assert!(
                    plan.contains(index),
                    "{sql:?} does not use {index}:\n{plan}"
                );
                assert!(
                    is_index_range(&plan),
                    "{sql:?} is not an index range:\n{plan}"
                );
                if page.after.is_some() {
                    assert!(
                        plan_starts_at_cursor(&plan, "created_at", "dispute_id"),
                        "{sql:?} does not start the range at the cursor:\n{plan}"
                    );
                }
            }
        }
    }
}
