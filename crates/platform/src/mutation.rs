//! The one path every mutating RPC takes, in every service: retry on a write conflict, one
//! transaction for the change, the response recorded under the request's key in that same
//! transaction (the insert doubling as the idempotency lookup), commit, and the background
//! workers woken when the change made work for them; a retry of a request answers with its
//! first response.
//!
//! Handlers supply only the middle (`body`: read, decide with the pure domain rules, write);
//! the order of the steps around it is fixed here, so no handler can record a response
//! outside its transaction or forget to wake the relay after writing an outbox row.

use prost::Message;
use returns_domain::time::to_unix_micros;

use crate::auth::Caller;
use crate::context::SuiteContext;
use crate::db::{Database, Finished, Tx, retry_conflicts};
use crate::error::ApiError;
use crate::idempotency::{in_flight, record_first, recorded, request_hash};
use crate::write_batch::WriteBatch;

/// The idempotency key of one mutating request: the operation, who asked, the client's
/// request id and a fingerprint of the body (the same id with another body is refused).
#[derive(Debug, Clone)]
pub struct RequestKey<'a> {
    pub operation: &'static str,
    pub caller_id: &'a str,
    pub request_id: &'a str,
    pub request_hash: String,
}

impl<'a> RequestKey<'a> {
    /// The key of `request`, whose `request_id` the caller has already validated
    /// (`returns_proto::convert::request_id`).
    pub fn new<M: Message>(
        operation: &'static str,
        caller: &'a Caller,
        request_id: &'a str,
        request: &M,
    ) -> Self {
        RequestKey {
            operation,
            caller_id: &caller.id,
            request_id,
            request_hash: request_hash(request),
        }
    }
}

/// Runs `body` once per request key in a write transaction and returns its response; a
/// retry of the same request returns the first response without running `body` again.
///
/// `body` is given the transaction and hands it back with the response (owning it, the body's
/// future can borrow freely from the handler and stay `Send`; an error drops it, which rolls
/// back). It may run more than once when the database reports a conflict (each time in a
/// fresh transaction), so it must not have effects outside the transaction it is given.
pub async fn mutate<Response, Body, Change>(
    db: &Database,
    context: &SuiteContext,
    key: &RequestKey<'_>,
    body: Body,
) -> Result<Response, ApiError>
where
    Response: Message + Default,
    Body: Fn(Tx) -> Change,
    Change: Future<Output = Result<(Tx, Response), ApiError>>,
{
    let (response, made_work) = retry_conflicts(|| async {
        // No lookup first: a new request (the common case) costs one statement for its key,
        // the insert that records it. A retry runs the body again in a transaction that is
        // rolled back, and answers what the first call recorded.
        let tx = db.begin_write().await?;
        let (mut tx, response) = match body(tx).await {
            Ok(done) => done,
            // A retry may be refused by the state its first call left (an offer already
            // accepted): the first call's response is the answer, if there is one.
            Err(error) => {
                // What the body read may be an earlier batch member's write that is not
                // durable yet: answer only once it is (see `wait_for_earlier_commits`).
                db.wait_for_earlier_commits().await?;
                return replay_or(db, key, error).await.map(|r| (r, false));
            }
        };
        let writes = tx.take_writes();
        match write_and_commit(db, context, key, Some(tx), writes, response).await? {
            Written::Committed(response, made_work) => Ok((response, made_work)),
            Written::Replayed(first) => Ok((first, false)),
            Written::Refused(error) => replay_or(db, key, error).await.map(|r| (r, false)),
        }
    })
    .await?;
    if made_work {
        // The change wrote outbox rows or other work for a worker: wake them now rather
        // than at their next poll.
        db.work_committed();
    }
    Ok(response)
}

/// How many times [`mutate_on_snapshot`] reads again when what it read moved before its
/// writes ran.
const SNAPSHOT_ATTEMPTS: u32 = 6;

/// Like [`mutate`], for a change that can decide on committed rows read outside the
/// transaction and say in its writes what must still hold: `body` reads from the pool (each
/// read one consistent snapshot), decides, and returns its writes, each conditional on what
/// it read (a version, a count; [`WriteBatch::expect_rows`] with ABORTED when it moved). The
/// transaction then holds only those writes and the key's record: one statement, and on
/// SQLite one hop on the writer rather than a read, the decision and the writes while every
/// other writer waits.
///
/// When a condition fails, something moved between the read and the write: once the writer
/// that moved it is durable, `body` runs again on fresh rows (up to a few times, then the
/// ABORTED reaches the caller). A refusal by `body` is final: it was decided on rows that
/// were committed, so nothing unconfirmed stands behind it. `body` must not have effects
/// outside the writes it returns.
pub async fn mutate_on_snapshot<Response, Body, Change>(
    db: &Database,
    context: &SuiteContext,
    key: &RequestKey<'_>,
    body: Body,
) -> Result<Response, ApiError>
where
    Response: Message + Default,
    Body: Fn() -> Change,
    Change: Future<Output = Result<(WriteBatch, Response), ApiError>>,
{
    let mut attempt = 0;
    let (response, made_work) = loop {
        attempt += 1;
        let written = retry_conflicts(|| async {
            let (writes, response) = match body().await {
                Ok(done) => done,
                Err(error) => return replay_or(db, key, error).await.map(Written::Replayed),
            };
            write_and_commit(db, context, key, None, writes, response).await
        })
        .await?;
        match written {
            Written::Committed(response, made_work) => break (response, made_work),
            Written::Replayed(first) => return Ok(first),
            // A condition failed: what the body read moved (and the writer that moved it is
            // durable by now, see `write_and_commit`), so read again.
            Written::Refused(ApiError::Aborted(_)) if attempt < SNAPSHOT_ATTEMPTS => continue,
            Written::Refused(error) => return replay_or(db, key, error).await,
        }
    };
    if made_work {
        db.work_committed();
    }
    Ok(response)
}

/// How a change's writes ended.
enum Written<Response> {
    /// Durable; and whether they made work for a worker.
    Committed(Response, bool),
    /// The key was already recorded: the first call's response.
    Replayed(Response),
    /// The writes were refused by what they met (a version that moved, a unique index) and
    /// rolled back; every earlier writer is durable, so the caller may read what refused it.
    Refused(ApiError),
}

/// The end of every change: the body's writes and the key's record run as one batch (one
/// statement, one round trip on PostgreSQL), then the commit: in `tx`, the transaction the
/// body read in, or without one a transaction of the batch alone (on SQLite a job for the
/// batch writer, see [`Database::finish_alone`]).
async fn write_and_commit<Response: Message + Default>(
    db: &Database,
    context: &SuiteContext,
    key: &RequestKey<'_>,
    tx: Option<Tx>,
    mut writes: WriteBatch,
    response: Response,
) -> Result<Written<Response>, ApiError> {
    let key_record = record_first(
        &mut writes,
        key.operation,
        key.caller_id,
        key.request_id,
        &key.request_hash,
        &response,
        to_unix_micros(context.clock.now()),
    );
    // What refused the writes (a version that moved, a unique index, the key already there)
    // may be an earlier batch member's write that is not durable yet: answer (or read again)
    // only once it is. A transaction of the batch alone answers only after its batch's
    // COMMIT (see `Database::finish_alone`), so it has nothing more to wait for.
    let (finished, earlier_durable) = match tx {
        Some(tx) => (tx.finish(writes, key_record).await?, false),
        None => (db.finish_alone(writes, key_record).await?, true),
    };
    if !earlier_durable && !matches!(finished, Finished::Committed { .. }) {
        db.wait_for_earlier_commits().await?;
    }
    match finished {
        Finished::Committed { made_work } => Ok(Written::Committed(response, made_work)),
        Finished::Refused(error) => Ok(Written::Refused(error)),
        // The key was there already: a retry, or a concurrent duplicate.
        Finished::NotChanged => {
            match recorded::<Response>(
                db,
                key.operation,
                key.caller_id,
                key.request_id,
                &key.request_hash,
            )
            .await?
            {
                Some(first) => Ok(Written::Replayed(first)),
                // Recorded by a call whose commit is still on its way (same SQLite batch).
                None => Err(in_flight(key.operation, key.request_id)),
            }
        }
    }
}

/// The response a request's first call recorded, or `error` when there is none (a new
/// request refused on its own merits).
async fn replay_or<Response: Message + Default>(
    db: &Database,
    key: &RequestKey<'_>,
    error: ApiError,
) -> Result<Response, ApiError> {
    match recorded::<Response>(
        db,
        key.operation,
        key.caller_id,
        key.request_id,
        &key.request_hash,
    )
    .await?
    {
        Some(first) => Ok(first),
        None => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_probe::{count_rows, database_with_probe_a, probe_amount};
    use crate::testing::{TestDatabase, test_context};
    use returns_domain::dispute::Role;

    use crate::test_probe::MIGRATIONS;

    fn buyer() -> Caller {
        Caller {
            id: "buyer-1".into(),
            role: Role::Buyer,
            carrier: None,
        }
    }

    /// Inserts one probe row named `id` and answers with the number of probe rows.
    async fn insert_probe(
        db: &Database,
        request: &prost_types::Duration,
        id: &str,
    ) -> Result<prost_types::Duration, ApiError> {
        let caller = buyer();
        let context = test_context();
        let key = RequestKey::new("InsertProbe", &caller, "r-1", request);
        // The body borrows from the handler (`id`, `db`): no clones needed.
        mutate(db, &context, &key, |mut tx| async move {
            let _backend = db.backend();
            sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe")
                .fetch_one(&mut *tx)
                .await?;
            let response = prost_types::Duration {
                seconds: count,
                nanos: 0,
            };
            Ok((tx, response))
        })
        .await
    }

    #[tokio::test]
    async fn a_retried_request_replays_its_first_response_and_changes_nothing_twice() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let request = prost_types::Duration {
            seconds: 7,
            nanos: 0,
        };
        let first = insert_probe(&db, &request, "p-1").await.expect("first");
        // Same key and body: the first response, and the body does not run again (it would
        // insert a second row and answer 2).
        let again = insert_probe(&db, &request, "p-2").await.expect("replay");
        assert_eq!(first, again);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(rows, 1);
        // Same key, another body: refused, nothing written.
        let other = prost_types::Duration {
            seconds: 8,
            nanos: 0,
        };
        // The whole path must stay Send: tonic runs handlers on the multi-threaded runtime.
        let refused = tokio::spawn({
            let db = db.clone();
            async move { insert_probe(&db, &other, "p-3").await }
        })
        .await
        .expect("task");
        assert!(
            matches!(refused, Err(ApiError::AlreadyExists(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_body_leaves_neither_its_change_nor_a_recorded_response() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let request = prost_types::Duration::default();
        insert_probe(&db, &request, "dup").await.expect("first");
        let caller = buyer();
        let context = test_context();
        let key = RequestKey::new("InsertProbe", &caller, "r-2", &request);
        let failed: Result<prost_types::Duration, ApiError> =
            mutate(&db, &context, &key, |mut tx| async move {
                sqlx::query(
                    "INSERT INTO probe (id, amount, at_micros, flag) VALUES ('new', 1, 0, 0)",
                )
                .execute(&mut *tx)
                .await?;
                Err(ApiError::precondition("test_rule", "refused after writing"))
            })
            .await;
        assert!(failed.is_err());
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(rows, 1, "the refused request's row was rolled back");
        let keys: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys WHERE request_id = 'r-2'")
                .fetch_one(db.pool())
                .await
                .expect("count");
        assert_eq!(keys, 0, "no response recorded for a failed request");
    }

    /// A request whose body defers its writes: `ids` inserted, and `amount` set on row `a` only
    /// if it is still 1 (a version check).
    async fn deferred_probe(
        db: &Database,
        request_id: &str,
        ids: &[&str],
    ) -> Result<prost_types::Duration, ApiError> {
        let caller = buyer();
        let context = test_context();
        let request = prost_types::Duration {
            seconds: i64::try_from(ids.len()).expect("few"),
            nanos: 0,
        };
        let key = RequestKey::new("DeferredProbe", &caller, request_id, &request);
        mutate(db, &context, &key, |mut tx| async move {
            for id in ids {
                tx.writes()
                    .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
                    .bind((*id).to_owned());
            }
            tx.writes()
                .push("UPDATE probe SET amount = amount + 1 WHERE id = 'a' AND amount = 1")
                .expect_rows(1, ApiError::Aborted("a moved on".into()));
            Ok((tx, request))
        })
        .await
    }

    #[tokio::test]
    async fn deferred_writes_land_with_the_key_and_a_refused_batch_leaves_nothing() {
        let (db, _target) = database_with_probe_a().await;
        // The body's writes and the key land together...
        deferred_probe(&db, "r-1", &["b", "c"])
            .await
            .expect("first");
        assert_eq!(count_rows(&db, "probe").await, 3);
        assert_eq!(count_rows(&db, "idempotency_keys").await, 1);
        // ...and a retry answers the first response without writing again.
        deferred_probe(&db, "r-1", &["b", "c"])
            .await
            .expect("replay");
        assert_eq!(count_rows(&db, "probe").await, 3);
        // A new request whose version check fails: its error, none of its writes, no key.
        let refused = deferred_probe(&db, "r-2", &["d"]).await;
        assert!(
            matches!(refused, Err(ApiError::Aborted(ref m)) if m == "a moved on"),
            "{refused:?}"
        );
        assert_eq!(count_rows(&db, "probe").await, 3, "d was rolled back");
        assert_eq!(count_rows(&db, "idempotency_keys").await, 1);
    }

    #[tokio::test]
    async fn only_a_change_that_makes_work_wakes_the_workers() {
        let (db, _target) = database_with_probe_a().await;
        let mut commits = db.work_signal().subscribe();
        commits.borrow_and_update();
        // A change with nothing for a worker (the probe rows): no wake-up.
        deferred_probe(&db, "r-1", &["b"])
            .await
            .expect("plain change");
        assert!(
            !commits.has_changed().expect("signal alive"),
            "a change that made no work woke the workers"
        );
        // A change whose batch makes work (as an outbox row does): the workers wake.
        let caller = buyer();
        let context = test_context();
        let request = prost_types::Duration::default();
        let key = RequestKey::new("WorkProbe", &caller, "r-2", &request);
        mutate(&db, &context, &key, |mut tx| async move {
            tx.writes()
                .makes_work()
                .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('w', 1, 0, 0)");
            Ok((tx, request))
        })
        .await
        .expect("change with work");
        assert!(commits.has_changed().expect("signal alive"));
        commits.borrow_and_update();
        // Its replay changes nothing and wakes nobody.
        mutate(&db, &context, &key, |mut tx| async move {
            tx.writes()
                .makes_work()
                .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('w2', 1, 0, 0)");
            Ok((tx, request))
        })
        .await
        .expect("replay");
        assert!(!commits.has_changed().expect("signal alive"));
        assert_eq!(count_rows(&db, "probe").await, 3);
    }

    /// Adds one to probe row `a` on a snapshot: reads its amount from the pool, writes the
    /// amount plus one on condition that it is still what was read, and answers the amount
    /// written. `meddle` runs after the read, before the writes are handed back.
    async fn increment_on_snapshot<F, Meddle>(
        db: &Database,
        request_id: &str,
        meddle: F,
    ) -> Result<prost_types::Duration, ApiError>
    where
        F: Fn() -> Meddle,
        Meddle: Future<Output = ()>,
    {
        let caller = buyer();
        let context = test_context();
        let request = prost_types::Duration::default();
        let key = RequestKey::new("IncrementProbe", &caller, request_id, &request);
        mutate_on_snapshot(db, &context, &key, || async {
            let read: i64 = sqlx::query_scalar("SELECT amount FROM probe WHERE id = 'a'")
                .fetch_one(db.pool())
                .await?;
            meddle().await;
            let mut writes = WriteBatch::new();
            writes
                .push("UPDATE probe SET amount = $1 WHERE id = 'a' AND amount = $2")
                .bind(read + 1)
                .bind(read)
                .expect_rows(1, ApiError::Aborted("a moved on".into()));
            let response = prost_types::Duration {
                seconds: read + 1,
                nanos: 0,
            };
            Ok((writes, response))
        })
        .await
    }

    #[tokio::test]
    async fn a_snapshot_that_moved_before_its_writes_is_read_again() {
        let (db, _target) = database_with_probe_a().await;
        let runs = std::sync::atomic::AtomicUsize::new(0);
        // The first run's read is overtaken by another writer's change (the body holds no
        // turn on the writer while it reads and decides, so that write is not blocked).
        let response = increment_on_snapshot(&db, "r-1", || async {
            if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                db.execute_write(sqlx::query("UPDATE probe SET amount = 10 WHERE id = 'a'"))
                    .await
                    .expect("the other writer");
            }
        })
        .await
        .expect("the second run lands");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(response.seconds, 11, "decided on the fresh read");
        let amount = probe_amount(&db, "a").await;
        assert_eq!(amount, 11, "the other writer's change was not overwritten");
        assert_eq!(count_rows(&db, "idempotency_keys").await, 1);
        // A retry answers the first response and changes nothing.
        let again = increment_on_snapshot(&db, "r-1", || async {})
            .await
            .expect("replay");
        assert_eq!(again.seconds, 11);
        assert_eq!(count_rows(&db, "idempotency_keys").await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_snapshot_changes_lose_no_update() {
        let (db, _target) = database_with_probe_a().await;
        let calls: Vec<_> = (0..8)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(async move {
                    increment_on_snapshot(&db, &format!("r-{n}"), || async {}).await
                })
            })
            .collect();
        let mut written = Vec::new();
        for call in calls {
            match call.await.expect("join") {
                Ok(response) => written.push(response.seconds),
                // Lost the race more times than the attempts allow: it changed nothing.
                Err(ApiError::Aborted(_)) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(!written.is_empty());
        written.sort_unstable();
        let expected: Vec<i64> = (2..2 + written.len() as i64).collect();
        assert_eq!(written, expected, "each success wrote the next amount once");
        let amount = probe_amount(&db, "a").await;
        assert_eq!(amount, 1 + written.len() as i64);
        assert_eq!(
            count_rows(&db, "idempotency_keys").await,
            written.len() as i64
        );
    }

    #[tokio::test]
    async fn a_transaction_with_deferred_writes_refuses_a_plain_commit() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let mut tx = db.begin_write().await.expect("begin");
        tx.writes()
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('x', 1, 0, 0)");
        assert!(tx.commit().await.is_err(), "the writes would be lost");
        assert_eq!(count_rows(&db, "probe").await, 0);
    }
}
