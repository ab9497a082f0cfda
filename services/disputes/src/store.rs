//! Storage: orders, disputes, their append-only history, deadlines and the outbox messages
//! a transition causes, all written inside the caller's transaction.
//!
//! Rows are private to this module: the domain types travel as JSON in `facts`, `clock` and
//! `data`, next to the plain columns queries filter, sort and lock on. Every dispute update is
//! conditional on the version that was read, so a lost race can never overwrite a winner.

use returns_domain::ids::{DisputeId, MessageId};
use returns_domain::negotiation::{
    self as n, DisputeState, EventPayload, OutcomeSource, RefundRelease,
};
use returns_domain::time::{Timestamp, from_unix_micros, to_unix_micros};
use returns_platform::db::{Tx, column};
use returns_platform::outbox::{OutboxMessage, enqueue};
use returns_platform::trace_context::current_traceparent;
use returns_platform::{ApiError, Database};
use returns_proto::labels::v1 as labels;
use returns_proto::refunds::v1 as refunds;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

use crate::convert;

/// An order's facts and protection clock as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub facts: n::OrderFacts,
    pub clock: n::ProtectionClock,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn json_error(error: serde_json::Error) -> ApiError {
    ApiError::internal(error)
}

fn instant(row: &AnyRow, name: &str) -> Result<Timestamp, ApiError> {
    let micros: i64 = column(row, name)?;
    from_unix_micros(micros).ok_or_else(|| {
        ApiError::internal(std::io::Error::other(format!(
            "{name} out of range: {micros}"
        )))
    })
}

fn order_from_row(row: &AnyRow) -> Result<OrderRecord, ApiError> {
    let facts: String = column(row, "facts")?;
    let clock: String = column(row, "clock")?;
    Ok(OrderRecord {
        facts: serde_json::from_str(&facts).map_err(json_error)?,
        clock: serde_json::from_str(&clock).map_err(json_error)?,
        created_at: instant(row, "created_at")?,
        updated_at: instant(row, "updated_at")?,
    })
}

/// Reads an order; `lock` takes a row lock on PostgreSQL (SQLite's write lock is held already).
pub async fn load_order(
    conn: &mut AnyConnection,
    db: &Database,
    order_id: &str,
    lock: bool,
) -> Result<Option<OrderRecord>, ApiError> {
    let sql = format!(
        "SELECT facts, clock, created_at, updated_at FROM orders WHERE order_id = $1{}",
        if lock { db.for_update() } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(order_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(order_from_row).transpose()
}

/// Inserts or replaces an order's facts and clock.
pub async fn upsert_order(tx: &mut Tx, record: &OrderRecord) -> Result<(), ApiError> {
    let facts = serde_json::to_string(&record.facts).map_err(json_error)?;
    let clock = serde_json::to_string(&record.clock).map_err(json_error)?;
    sqlx::query(
        "INSERT INTO orders (order_id, buyer_id, seller_id, facts, clock, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (order_id) DO UPDATE SET buyer_id = excluded.buyer_id, \
         seller_id = excluded.seller_id, facts = excluded.facts, clock = excluded.clock, \
         updated_at = excluded.updated_at",
    )
    .bind(record.facts.order_id.as_str())
    .bind(record.facts.buyer_id.as_str())
    .bind(record.facts.seller_id.as_str())
    .bind(facts)
    .bind(clock)
    .bind(to_unix_micros(record.created_at))
    .bind(to_unix_micros(record.updated_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn dispute_from_row(row: &AnyRow) -> Result<n::Dispute, ApiError> {
    let data: String = column(row, "data")?;
    let mut dispute: n::Dispute = serde_json::from_str(&data).map_err(json_error)?;
    dispute.version = column(row, "version")?;
    Ok(dispute)
}

/// Reads a dispute; `lock` as in [`load_order`].
pub async fn load_dispute(
    conn: &mut AnyConnection,
    db: &Database,
    id: &DisputeId,
    lock: bool,
) -> Result<Option<n::Dispute>, ApiError> {
    let sql = format!(
        "SELECT data, version FROM disputes WHERE dispute_id = $1{}",
        if lock { db.for_update() } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(dispute_from_row).transpose()
}

/// What the opening rules need to know about the order's other disputes.
pub async fn opening_context(
    tx: &mut Tx,
    buyer_id: &str,
    order_id: &str,
    now: Timestamp,
) -> Result<n::OpeningContext, ApiError> {
    let rows = sqlx::query("SELECT dispute_id, state FROM disputes WHERE order_id = $1")
        .bind(order_id)
        .fetch_all(&mut **tx)
        .await?;
    let mut context = n::OpeningContext::default();
    for row in rows {
        let state: String = column(&row, "state")?;
        let state = DisputeState::parse(&state).map_err(ApiError::internal)?;
        if state.is_active() {
            let id: String = column(&row, "dispute_id")?;
            context.active_dispute =
                Some((DisputeId::parse(&id).map_err(ApiError::internal)?, state));
        } else if state == DisputeState::Resolved {
            context.resolved_before = true;
        }
    }
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM disputes WHERE buyer_id = $1 AND free_return_month = $2",
    )
    .bind(buyer_id)
    .bind(month(now))
    .fetch_one(&mut **tx)
    .await?;
    let count: i64 = column(&row, "n")?;
    context.free_returns_this_month = u32::try_from(count).unwrap_or(u32::MAX);
    Ok(context)
}

fn month(at: Timestamp) -> String {
    at.format("%Y-%m").to_string()
}

fn free_return_month(dispute: &n::Dispute) -> Option<String> {
    dispute
        .outcome
        .as_ref()
        .filter(|o| o.source == OutcomeSource::FreeReturn)
        .map(|o| month(o.decided_at))
}

/// Writes a new dispute with its first history, deadline and outbox messages.
pub async fn insert_dispute(
    tx: &mut Tx,
    dispute: &n::Dispute,
    events: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let data = serde_json::to_string(dispute).map_err(json_error)?;
    sqlx::query(
        "INSERT INTO disputes (dispute_id, order_id, buyer_id, seller_id, state, \
         free_return_month, data, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(dispute.id.to_string())
    .bind(dispute.order_id.as_str())
    .bind(dispute.buyer_id.as_str())
    .bind(dispute.seller_id.as_str())
    .bind(dispute.state.code())
    .bind(free_return_month(dispute))
    .bind(data)
    .bind(dispute.version)
    .bind(to_unix_micros(dispute.created_at))
    .bind(to_unix_micros(dispute.updated_at))
    .execute(&mut **tx)
    .await
    .map_err(|error| match ApiError::from(error) {
        ApiError::AlreadyExists(_) => ApiError::precondition(
            "one_active_dispute_per_order",
            format!("order {} already has an active dispute", dispute.order_id),
        ),
        other => other,
    })?;
    write_effects(tx, dispute, events, order, now).await
}

/// Writes the result of a transition: the dispute (only if still at `read_version`), its
/// history, its deadline and the outbox messages. Returns whether outbox rows were written.
pub async fn save_transition(
    tx: &mut Tx,
    read_version: i64,
    dispute: &n::Dispute,
    events: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let data = serde_json::to_string(dispute).map_err(json_error)?;
    let updated = sqlx::query(
        "UPDATE disputes SET state = $1, data = $2, version = $3, updated_at = $4, \
         free_return_month = COALESCE(free_return_month, $5) \
         WHERE dispute_id = $6 AND version = $7",
    )
    .bind(dispute.state.code())
    .bind(data)
    .bind(dispute.version)
    .bind(to_unix_micros(dispute.updated_at))
    .bind(free_return_month(dispute))
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
    write_effects(tx, dispute, events, order, now).await
}

/// History rows, the deadline of the new state (superseding older ones) and outbox messages.
async fn write_effects(
    tx: &mut Tx,
    dispute: &n::Dispute,
    events: &[n::DisputeEvent],
    order: &n::OrderFacts,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let id = dispute.id.to_string();
    let row = sqlx::query(
        "SELECT CAST(COALESCE(MAX(sequence), 0) AS BIGINT) AS last FROM dispute_events WHERE dispute_id = $1",
    )
    .bind(&id)
    .fetch_one(&mut **tx)
    .await?;
    let mut sequence: i64 = column(&row, "last")?;
    for event in events {
        sequence += 1;
        let data = serde_json::to_string(event).map_err(json_error)?;
        sqlx::query(
            "INSERT INTO dispute_events (event_id, dispute_id, sequence, event_type, actor_id, \
             actor_role, occurred_at, from_state, to_state, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(event.id.to_string())
        .bind(&id)
        .bind(sequence)
        .bind(event.kind.code())
        .bind(&event.actor.id)
        .bind(event.actor.role.code())
        .bind(to_unix_micros(event.at))
        .bind(event.from.map(|s| s.code()))
        .bind(event.to.code())
        .bind(data)
        .execute(&mut **tx)
        .await?;
    }

    // The running deadline is the one the new state implies; any other pending one is stale.
    let deadline = dispute.deadline();
    sqlx::query(
        "UPDATE deadlines SET fired = 2 WHERE dispute_id = $1 AND fired = 0 \
         AND NOT (kind = $2 AND due_at = $3)",
    )
    .bind(&id)
    .bind(deadline.map(|(k, _)| k.code()).unwrap_or(""))
    .bind(deadline.map(|(_, due)| to_unix_micros(due)).unwrap_or(0))
    .execute(&mut **tx)
    .await?;
    if let Some((kind, due)) = deadline {
        sqlx::query(
            "INSERT INTO deadlines (dispute_id, kind, due_at, fired, created_at) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (dispute_id, kind, due_at) DO NOTHING",
        )
        .bind(&id)
        .bind(kind.code())
        .bind(to_unix_micros(due))
        .bind(to_unix_micros(now))
        .execute(&mut **tx)
        .await?;
    }

    let mut wrote = false;
    for event in events {
        match &event.payload {
            EventPayload::Refund(refund) => {
                enqueue_refund(
                    tx,
                    order,
                    Some(dispute),
                    refund.amount,
                    refunds::RefundReason::DisputeResolved,
                    refund.release,
                    event.note.clone(),
                )
                .await?;
                wrote = true;
            }
            EventPayload::ReturnAuthorisation(authorisation) => {
                let message_id = MessageId::new();
                let request = labels::AuthoriseReturnRequest {
                    message_id: message_id.to_string(),
                    order_id: order.order_id.to_string(),
                    dispute_id: id.clone(),
                    buyer_id: order.buyer_id.to_string(),
                    seller_id: order.seller_id.to_string(),
                    destination_country: order.destination_country.clone(),
                    item_value: Some(convert::money_to_wire(&authorisation.item_value)),
                    delivered_at: convert::opt_ts(order.delivered_at),
                    free_return: authorisation.free_return,
                    postage_payer: convert::payer_to_wire(authorisation.postage_payer),
                    ship_by: Some(convert::ts(authorisation.ship_by)),
                    reason: convert::reason_to_wire(dispute.reason),
                    return_to: None,
                };
                let message =
                    OutboxMessage::new(returns_proto::rpcs::labels::AUTHORISE_RETURN, &request);
                let traceparent = current_traceparent();
                enqueue(tx, &message_id, &message, traceparent.as_deref()).await?;
                wrote = true;
            }
            EventPayload::ReturnNotShipped(not_shipped) => {
                enqueue_not_shipped(tx, dispute, not_shipped.ship_by).await?;
                wrote = true;
            }
            _ => {}
        }
    }
    Ok(wrote)
}

/// Writes a `CreateRefund` for the refunds service (request_id = message_id = outbox id).
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_refund(
    tx: &mut Tx,
    order: &n::OrderFacts,
    dispute: Option<&n::Dispute>,
    amount: returns_domain::money::Money,
    reason: refunds::RefundReason,
    release: RefundRelease,
    note: String,
) -> Result<(), ApiError> {
    let message_id = MessageId::new();
    let release = match release {
        RefundRelease::Immediate => refunds::ReleaseCondition::Immediate,
        RefundRelease::OnInspectionPassed => refunds::ReleaseCondition::OnInspectionPassed,
    };
    let request = refunds::CreateRefundRequest {
        request_id: message_id.to_string(),
        message_id: message_id.to_string(),
        order_id: order.order_id.to_string(),
        dispute_id: dispute.map(|d| d.id.to_string()).unwrap_or_default(),
        amount: Some(convert::money_to_wire(&amount)),
        reason: reason as i32,
        release: release as i32,
        return_label_id: dispute
            .and_then(|d| d.return_label_id.clone())
            .unwrap_or_default(),
        deductions: Vec::new(),
        note,
    };
    let message = OutboxMessage::new(returns_proto::rpcs::refunds::CREATE_REFUND, &request);
    // The delivery continues the trace of the request that caused it.
    let traceparent = current_traceparent();
    enqueue(tx, &message_id, &message, traceparent.as_deref()).await
}

/// Writes a `RecordReturnProgress` NOT_SHIPPED for the refunds service (request_id =
/// message_id = outbox id), so it cancels the refund held for an inspection that will never
/// happen. It names the label when one was created, and refunds not tied to a label match too.
async fn enqueue_not_shipped(
    tx: &mut Tx,
    dispute: &n::Dispute,
    ship_by: Timestamp,
) -> Result<(), ApiError> {
    let message_id = MessageId::new();
    let request = refunds::RecordReturnProgressRequest {
        request_id: message_id.to_string(),
        message_id: message_id.to_string(),
        order_id: dispute.order_id.to_string(),
        return_label_id: dispute.return_label_id.clone().unwrap_or_default(),
        dispute_id: dispute.id.to_string(),
        progress: refunds::ReturnProgress::NotShipped.into(),
        occurred_at: Some(convert::ts(ship_by)),
        notes: format!("return not shipped by {}", n::fmt_ts(ship_by)),
        deductions: Vec::new(),
    };
    let message = OutboxMessage::new(
        returns_proto::rpcs::refunds::RECORD_RETURN_PROGRESS,
        &request,
    );
    let traceparent = current_traceparent();
    enqueue(tx, &message_id, &message, traceparent.as_deref()).await
}

/// A page of disputes, newest first (ids are UUID v7, so id order is creation order).
#[derive(Debug, Clone, Copy)]
pub struct ListFilter<'a> {
    pub buyer_id: Option<&'a str>,
    pub seller_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub state: Option<DisputeState>,
    pub before: Option<&'a str>,
    pub limit: i64,
}

pub async fn list_disputes(db: &Database, f: &ListFilter<'_>) -> Result<Vec<n::Dispute>, ApiError> {
    let (sql, values) = list_query(f);
    let mut query = sqlx::query(&sql);
    for value in values {
        query = query.bind(value);
    }
    let rows = query.bind(f.limit).fetch_all(db.pool()).await?;
    rows.iter().map(dispute_from_row).collect()
}

/// The SQL of a ListDisputes page and its text parameters (the limit binds last).
///
/// The WHERE clause names only the filters given, so each query can use its index
/// (`($1 IS NULL OR buyer_id = $1)` makes both planners scan the table); paging is by
/// keyset on the time-ordered id, so a page deep in the list costs what the first does.
fn list_query<'a>(f: &ListFilter<'a>) -> (String, Vec<&'a str>) {
    let filters = [
        ("buyer_id = ", f.buyer_id),
        ("seller_id = ", f.seller_id),
        ("order_id = ", f.order_id),
        ("state = ", f.state.map(|s| s.code())),
        ("dispute_id < ", f.before),
    ];
    let mut sql = String::from("SELECT data, version FROM disputes");
    let mut values = Vec::new();
    for (condition, value) in filters {
        if let Some(value) = value {
            values.push(value);
            sql.push_str(if values.len() == 1 {
                " WHERE "
            } else {
                " AND "
            });
            sql.push_str(condition);
            sql.push_str(&format!("${}", values.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY dispute_id DESC LIMIT ${}",
        values.len() + 1
    ));
    (sql, values)
}

/// A page of a dispute's history after `after_sequence`, oldest first.
pub async fn list_events(
    db: &Database,
    dispute_id: &DisputeId,
    after_sequence: i64,
    limit: i64,
) -> Result<Vec<(i64, n::DisputeEvent)>, ApiError> {
    let rows = sqlx::query(
        "SELECT sequence, data FROM dispute_events WHERE dispute_id = $1 AND sequence > $2 \
         ORDER BY sequence LIMIT $3",
    )
    .bind(dispute_id.to_string())
    .bind(after_sequence)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = column(row, "sequence")?;
            let data: String = column(row, "data")?;
            Ok((sequence, serde_json::from_str(&data).map_err(json_error)?))
        })
        .collect()
}

/// A deadline row that has fallen due.
#[derive(Debug, Clone)]
pub struct DueDeadline {
    pub dispute_id: DisputeId,
    pub kind: n::DeadlineKind,
    pub due_at: i64,
}

pub async fn due_deadlines(
    db: &Database,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<DueDeadline>, ApiError> {
    let rows = sqlx::query(
        "SELECT dispute_id, kind, due_at FROM deadlines WHERE fired = 0 AND due_at <= $1 \
         ORDER BY due_at LIMIT $2",
    )
    .bind(to_unix_micros(now))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = column(row, "dispute_id")?;
            let kind: String = column(row, "kind")?;
            Ok(DueDeadline {
                dispute_id: DisputeId::parse(&id).map_err(ApiError::internal)?,
                kind: n::DeadlineKind::parse(&kind).map_err(ApiError::internal)?,
                due_at: column(row, "due_at")?,
            })
        })
        .collect()
}

/// Claims a due deadline inside `tx`: true when it was still pending (and is now fired).
pub async fn claim_deadline(tx: &mut Tx, d: &DueDeadline) -> Result<bool, ApiError> {
    let updated = sqlx::query(
        "UPDATE deadlines SET fired = 1 WHERE dispute_id = $1 AND kind = $2 AND due_at = $3 AND fired = 0",
    )
    .bind(d.dispute_id.to_string())
    .bind(d.kind.code())
    .bind(d.due_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_platform::testing::TestDatabase;

    /// The query plan of one ListDisputes filter, as text.
    async fn plan(db: &Database, filter: &ListFilter<'_>) -> String {
        let (sql, values) = list_query(filter);
        let mut tx = db.begin_write().await.expect("begin");
        let explain = match db.backend() {
            returns_platform::Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            returns_platform::Backend::Postgres => {
                // On a near-empty table a sequential scan is cheapest anyway; what matters
                // is whether an index can serve the query at all.
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut *tx)
                    .await
                    .expect("set");
                format!("EXPLAIN {sql}")
            }
        };
        let mut query = sqlx::query(&explain);
        for value in values {
            query = query.bind(value);
        }
        let rows = query
            .bind(filter.limit)
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        let mut text = String::new();
        for row in &rows {
            let line: String = match db.backend() {
                returns_platform::Backend::Sqlite => column(row, "detail").expect("detail"),
                returns_platform::Backend::Postgres => column(row, "QUERY PLAN").expect("plan"),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    #[tokio::test]
    async fn every_list_filter_is_served_by_an_index_at_any_depth() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, crate::MIGRATIONS)
            .await
            .expect("open");
        let base = ListFilter {
            buyer_id: None,
            seller_id: None,
            order_id: None,
            state: None,
            before: None,
            limit: 20,
        };
        let deep = Some("01900000-0000-7000-8000-000000000000");
        let filters = [
            ListFilter {
                buyer_id: Some("b-1"),
                ..base
            },
            ListFilter {
                buyer_id: Some("b-1"),
                before: deep,
                ..base
            },
            ListFilter {
                seller_id: Some("s-1"),
                before: deep,
                ..base
            },
            ListFilter {
                order_id: Some("o-1"),
                ..base
            },
            ListFilter {
                state: Some(DisputeState::Open),
                before: deep,
                ..base
            },
        ];
        for filter in &filters {
            let plan = plan(&db, filter).await;
            // A range search on an index whose key holds the filter: SQLite says SEARCH (a
            // SCAN, even "using" the primary key, reads the whole table), PostgreSQL puts
            // the filter in an Index Cond rather than a Filter over scanned rows.
            let uses_index = plan.contains("SEARCH disputes USING") || plan.contains("Index Cond");
            assert!(
                uses_index,
                "{:?} is not served by an index:\n{plan}",
                list_query(filter).0
            );
            assert!(
                !plan.contains("TEMP B-TREE"),
                "a sort after the scan:\n{plan}"
            );
        }
    }
}
