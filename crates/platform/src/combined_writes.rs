//! PostgreSQL: transactions of one write batch alone that arrive together run as one
//! statement, so they share one parse-bind-execute, one commit and one flush of the WAL.
//!
//! A transaction decided before it began, whose only statements are one final
//! [`WriteBatch`] (what [`crate::mutation::mutate_on_snapshot`] makes, as OpenDispute does),
//! runs on PostgreSQL as one self-checking statement outside any transaction
//! ([`WriteBatch::self_checked`]). Measured with pgbench on the 2-core machine, such a
//! statement costs PostgreSQL about as much again in its fixed part (the protocol messages,
//! the executor's set-up, the commit, the WAL flush) as in its writes: eight openings as one
//! statement ran at 2.1 times the openings per second of eight statements (see
//! docs/performance.md). So the batches are handed to a dispatcher here:
//!
//! - Up to [`RUNNERS`] statements run at once, each on a connection of the runners' own
//!   (planning each statement once, see `COMBINED_WRITES_SESSION` in db.rs). A batch that finds
//!   a runner free runs alone at once, exactly as it would without this module: no wait is
//!   added to a call that has nothing to share its statement with.
//! - Batches that arrive while every runner is busy wait, and the next free runner takes all
//!   of them (up to [`MAX_MEMBERS`]): those with the same statements (the same kind of
//!   change, so the combined text repeats and its prepared statement is reused) become one
//!   statement: the members' rows for a table in one multi-row insert where the checks
//!   still judge each member (see `combined_statement`), their other parts and checks side
//!   by side, each member's placeholders moved past the earlier members'.
//! - The combined statement commits every member or none: any member's check that fails
//!   raises inside it, as does a unique index, a foreign key or a deadlock. Then each member
//!   runs again alone, one after the other (on the database's pool, so that the runner goes
//!   on with the batches waiting meanwhile), and gets the outcome it would have had alone
//!   (its own refusal, or its commit). A member's check may have failed only because of
//!   another member (two changes of one order, whose second update finds the row already
//!   changed by the same statement): alone, after the others committed, it is judged on
//!   committed rows.
//! - A connection that broke under the combined statement leaves its outcome unknown; the
//!   members run again alone as well, which is safe because every such batch's last check is
//!   its request's key record: a member that did commit finds its key and is answered with
//!   its first response, as a client's retry would be.
//! - The runners are spawned tasks owning their members: a caller that gives up (a cancelled
//!   RPC) does not cut a statement off halfway or leave the others unanswered.
//!
//! Isolation: every member of a combined statement is judged on the same snapshot and none
//! sees another's writes, as between two concurrent transactions under READ COMMITTED, the
//! level the suite's PostgreSQL transactions run at. Two members that change the same row
//! cannot both commit in one statement (the second finds the row already changed by the same
//! statement: its check fails, or PostgreSQL refuses the statement), so the changes that
//! serialize on a row (an order's openings, a buyer's free returns) still do. A combined
//! statement and another transaction (a member running again alone, another RPC's) that
//! change the same rows in opposite orders can deadlock; PostgreSQL breaks the deadlock
//! after its `deadlock_timeout` (a second by default) by failing one of them, and a failed
//! combined statement's members run alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyArguments;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::db::Finished;
use crate::error::ApiError;
use crate::kept_connections::KeptConnections;
use crate::write_batch::{SelfChecked, WriteBatch, renumber, self_checked_statement};

/// Combined statements in flight at once, each on a connection of its own (one of a
/// service's sixteen). Chosen by measurement (docs/performance.md): since the members' rows
/// share multi-row inserts, one runner answers the most openings, its statements gathering
/// the most members (OpenDispute at C = 32: 3,994 / 4,072 calls/s with one runner, 3,648 /
/// 3,698 with two, 3,639 / 3,688 with three, 3,475 / 3,567 with four).
pub(crate) const RUNNERS: usize = 1;

/// Batches in one statement at most: bounds the work a failed statement makes run again,
/// and the distinct combined statements a connection keeps prepared per kind of change.
pub(crate) const MAX_MEMBERS: usize = 16;

/// Bound values in one statement at most; PostgreSQL's protocol allows 65,535.
const MAX_PARAMETERS: usize = 32_000;

/// Counters of the combined writes of one database since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CombinedWriteStats {
    /// Statements run, each for one batch or several.
    pub statements: u64,
    /// Batches committed by a statement of several.
    pub combined_members: u64,
    /// Statements of several that failed, whose members then ran again alone.
    pub fallbacks: u64,
}

struct Job {
    batch: SelfChecked,
    /// The caller's span: a statement run for this batch alone runs in it, so its trace
    /// (and its count of round trips) shows the statement as its own.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Finished, ApiError>>,
}

#[derive(Default)]
struct Counters {
    statements: AtomicU64,
    combined_members: AtomicU64,
    fallbacks: AtomicU64,
    /// Batches handed over and not yet taken by a runner.
    queued: AtomicUsize,
}

/// The handle a PostgreSQL [`crate::db::Database`] keeps; the dispatcher ends when the last
/// clone of the database is dropped.
pub(crate) struct CombinedWrites {
    jobs: mpsc::UnboundedSender<Job>,
    /// The dispatcher's; kept here for tests to hold.
    #[cfg_attr(not(test), allow(dead_code))]
    runners: Arc<Semaphore>,
    /// The runners' own connections; kept here for tests to inspect.
    #[cfg_attr(not(test), allow(dead_code))]
    pool: AnyPool,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CombinedWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedWrites").finish_non_exhaustive()
    }
}

impl CombinedWrites {
    /// Starts the dispatcher on the current runtime; it runs statements on `pool`, whose
    /// connections are the runners' own (one each), and the members of a statement that
    /// failed on `shared`, the database's pool.
    pub(crate) fn start(
        pool: AnyPool,
        shared: AnyPool,
        ping_when_idle_for: Duration,
    ) -> CombinedWrites {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let runners = Arc::new(Semaphore::new(RUNNERS));
        let counters = Arc::new(Counters::default());
        tokio::spawn(dispatch(
            Pools {
                // Every runner keeps its connection from one statement to the next.
                runners: Arc::new(KeptConnections::new(
                    pool.clone(),
                    RUNNERS,
                    ping_when_idle_for,
                )),
                shared,
            },
            receiver,
            Arc::clone(&runners),
            Arc::clone(&counters),
        ));
        CombinedWrites {
            jobs,
            runners,
            pool,
            counters,
        }
    }

    /// Runs `writes` as a transaction of that batch alone (see
    /// [`crate::db::Database::finish_alone`]), with whatever else is waiting.
    pub(crate) async fn run(
        &self,
        writes: WriteBatch,
        must_change_one: usize,
    ) -> Result<Finished, ApiError> {
        let batch = writes.self_checked(must_change_one)?;
        let (reply, answer) = oneshot::channel();
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        let span = tracing::Span::current();
        if self.jobs.send(Job { batch, span, reply }).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(dispatcher_gone());
        }
        answer.await.map_err(|_| dispatcher_gone())?
    }

    pub(crate) fn stats(&self) -> CombinedWriteStats {
        CombinedWriteStats {
            statements: self.counters.statements.load(Ordering::Relaxed),
            combined_members: self.counters.combined_members.load(Ordering::Relaxed),
            fallbacks: self.counters.fallbacks.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Batches handed over that no runner has taken yet.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::SeqCst)
    }

    /// Keeps every runner busy until the guard is dropped: batches handed over meanwhile
    /// wait, and are taken together. For tests, which need batches that arrive together.
    #[cfg(test)]
    pub(crate) async fn hold_runners(&self) -> tokio::sync::OwnedSemaphorePermit {
        let runners = u32::try_from(RUNNERS).expect("a handful of runners");
        Arc::clone(&self.runners)
            .acquire_many_owned(runners)
            .await
            .expect("the runners' semaphore is never closed")
    }
}

fn dispatcher_gone() -> ApiError {
    ApiError::internal(std::io::Error::other(
        "the combined writes' dispatcher stopped before answering",
    ))
}

/// Takes batches as they come: each waits for a free runner, which takes it and every batch
/// waiting behind it.
async fn dispatch(
    pools: Pools,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    runners: Arc<Semaphore>,
    counters: Arc<Counters>,
) {
    while let Some(first) = jobs.recv().await {
        let Ok(runner) = Arc::clone(&runners).acquire_owned().await else {
            return;
        };
        let mut taken = vec![first];
        while taken.len() < MAX_MEMBERS {
            match jobs.try_recv() {
                Ok(job) => taken.push(job),
                Err(_) => break,
            }
        }
        counters.queued.fetch_sub(taken.len(), Ordering::SeqCst);
        let pools = pools.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            for group in same_statements(taken) {
                run_group(&pools, &counters, group).await;
            }
            drop(runner);
        });
    }
}

/// `jobs` in groups of the same statements (in the order each kind first came), each group
/// within [`MAX_PARAMETERS`].
fn same_statements(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        let parameters = job.batch.arguments.values.0.len();
        let fits = |group: &Vec<Job>| {
            group[0].batch.statements == job.batch.statements
                && group
                    .iter()
                    .map(|j| j.batch.arguments.values.0.len())
                    .sum::<usize>()
                    + parameters
                    <= MAX_PARAMETERS
        };
        match groups.iter_mut().find(|group| fits(group)) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

/// The runners' connections, and the database's pool, where the members of a statement
/// that failed run again.
#[derive(Clone)]
struct Pools {
    runners: Arc<KeptConnections>,
    shared: AnyPool,
}

/// Runs a group as one statement (alone when it is one batch), and answers each member.
async fn run_group(pools: &Pools, counters: &Arc<Counters>, mut group: Vec<Job>) {
    counters.statements.fetch_add(1, Ordering::Relaxed);
    if group.len() == 1 {
        let job = group.remove(0);
        let finished = match pools.runners.take().await {
            Ok(mut connection) => {
                let finished = job.batch.run(&mut *connection).instrument(job.span).await;
                // An Err is a failed connection; a refusal is an answer like any other.
                if finished.is_ok() {
                    connection.keep();
                }
                finished
            }
            Err(error) => Err(ApiError::from(error)),
        };
        // A caller that stopped waiting needs no answer.
        let _ = job.reply.send(finished);
        return;
    }
    // One statement for several calls: a span of its own, which each call's trace links to.
    let span = tracing::info_span!("combined writes", members = group.len());
    for job in &group {
        span.follows_from(job.span.id());
    }
    let members: Vec<&SelfChecked> = group.iter().map(|job| &job.batch).collect();
    let (sql, arguments) = combined_statement(&members);
    let ran = match pools.runners.take().await {
        Ok(mut connection) => {
            let ran = sqlx::query_with(&sql, arguments)
                .execute(&mut *connection)
                .instrument(span)
                .await;
            connection.keep_if_completed(&ran);
            ran
        }
        Err(error) => Err(error),
    };
    match ran {
        Ok(_) => {
            counters
                .combined_members
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for job in group {
                let made_work = job.batch.made_work;
                let _ = job.reply.send(Ok(Finished::Committed { made_work }));
            }
        }
        Err(error) => {
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(members = group.len(), %error,
                "a combined write statement failed; its members run again alone");
            // Off the runner, which goes on with the batches waiting meanwhile; one after
            // the other, so each is judged on what the ones before it committed.
            let shared = pools.shared.clone();
            let counters = Arc::clone(counters);
            tokio::spawn(async move {
                for job in group {
                    counters.statements.fetch_add(1, Ordering::Relaxed);
                    let _ = job
                        .reply
                        .send(job.batch.run(&shared).instrument(job.span).await);
                }
            });
        }
    }
}

/// The members as one self-checking statement, with the values of every member in order.
/// A part that inserts rows by a `VALUES` list (see [`ValuesInsert`]) becomes one multi-row
/// insert of every member's rows when its check can still tell whether each member's rows
/// went in; every other part (an update, a conditional insert) stays one per member, its
/// placeholders moved past the earlier members' values. Measured with pgbench, eight openings
/// whose inserts are multi-row ran at 1.24 times the openings per second of the same eight
/// side by side (docs/performance.md): PostgreSQL sets up one insert's executor, and enters
/// each index's code, once for all the rows.
fn combined_statement(members: &[&SelfChecked]) -> (String, AnyArguments<'static>) {
    let mut offsets = Vec::with_capacity(members.len());
    let mut arguments = AnyArguments::default();
    for member in members {
        offsets.push(arguments.values.0.len());
        arguments
            .values
            .0
            .extend(member.arguments.values.0.iter().cloned());
    }
    let (mut parts, mut checks) = (Vec::new(), Vec::new());
    // Members of one group share their statements (`same_statements`) and, unless an
    // expectation depends on what a member decided, their checks; only then is a part merged.
    let first = members.first();
    let alike = first.is_some_and(|first| {
        members
            .iter()
            .all(|member| member.statements == first.statements && member.checks == first.checks)
    });
    let parts_of_any = members
        .iter()
        .map(|m| m.statements.len())
        .max()
        .unwrap_or(0);
    for index in 0..parts_of_any {
        let merged = first.filter(|_| alike).and_then(|first| {
            let insert = ValuesInsert::parse(first.statements.get(index)?)?;
            let part_checks: Vec<u64> = first
                .checks
                .iter()
                .filter(|(checked, _)| *checked == index)
                .map(|(_, rows)| *rows)
                .collect();
            part_checks
                .iter()
                .all(|rows| insert.judges_each_member_by(*rows))
                .then_some((insert, part_checks))
        });
        let Some((insert, part_checks)) = merged else {
            for (member, offset) in members.iter().zip(&offsets) {
                let Some(own) = member.statements.get(index) else {
                    continue;
                };
                checks.extend(
                    member
                        .checks
                        .iter()
                        .filter(|(checked, _)| *checked == index)
                        .map(|(_, rows)| (parts.len(), *rows)),
                );
                parts.push(renumber(own, *offset));
            }
            continue;
        };
        let members_count = members.len() as u64;
        for rows in part_checks {
            checks.push((parts.len(), rows * members_count));
        }
        let tuples: Vec<String> = offsets
            .iter()
            .map(|offset| renumber(insert.tuples, *offset))
            .collect();
        parts.push(format!(
            "{}{}{}",
            insert.head,
            tuples.join(", "),
            insert.tail
        ));
    }
    (self_checked_statement(&parts, &checks), arguments)
}

/// An `INSERT INTO table (columns) VALUES (...), (...) [ON CONFLICT ...]` statement split
/// around its rows, so that several members' rows can share one insert. Only a statement
/// whose placeholders are all in its rows qualifies (what precedes and follows them is
/// the same text for every member).
#[derive(Debug, PartialEq, Eq)]
struct ValuesInsert<'a> {
    /// Up to and including `VALUES `.
    head: &'a str,
    /// The rows, each a parenthesized tuple, separated by commas.
    tuples: &'a str,
    rows: u64,
    /// What follows the rows (an `ON CONFLICT` clause, or nothing).
    tail: &'a str,
}

impl<'a> ValuesInsert<'a> {
    fn parse(sql: &'a str) -> Option<ValuesInsert<'a>> {
        const VALUES: &str = " VALUES ";
        let target = sql.strip_prefix("INSERT INTO ")?;
        let values_at = target.find(VALUES)?;
        // A table and its column list, nothing else (no SELECT, no expression).
        if !target[..values_at]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _,.()".contains(c))
        {
            return None;
        }
        let head_len = "INSERT INTO ".len() + values_at + VALUES.len();
        let (head, rest) = sql.split_at(head_len);
        let bytes = rest.as_bytes();
        let (mut at, mut rows) = (0, 0);
        loop {
            if bytes.get(at) != Some(&b'(') {
                return None;
            }
            at = closing_parenthesis(rest, at)? + 1;
            rows += 1;
            let after_spaces = at + rest[at..].len() - rest[at..].trim_start().len();
            if bytes.get(after_spaces) != Some(&b',') {
                break;
            }
            at = after_spaces + 1;
            at += rest[at..].len() - rest[at..].trim_start().len();
        }
        let (tuples, tail) = rest.split_at(at);
        if tail.contains('$') || tail.contains("RETURNING") {
            return None;
        }
        Some(ValuesInsert {
            head,
            tuples,
            rows,
            tail,
        })
    }

    /// Whether a check that each member's copy changed `rows` rows still judges each member
    /// when the copies are one insert and the check their sum. Each member's copy inserts
    /// between none of its rows (all skipped by `ON CONFLICT DO NOTHING`) and all of them,
    /// so a sum of all or of none holds only if it holds for every member; any other count
    /// could hide one member's shortfall behind another's.
    fn judges_each_member_by(&self, rows: u64) -> bool {
        rows == 0 || rows == self.rows
    }
}

/// The index of the `)` closing the `(` at `open` in `sql`, skipping quoted literals.
fn closing_parenthesis(sql: &str, open: usize) -> Option<usize> {
    let (mut depth, mut quoted) = (0_usize, false);
    for (at, byte) in sql.bytes().enumerate().skip(open) {
        match byte {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(statements: &[&str], values: &[i64], checks: &[(usize, u64)]) -> SelfChecked {
        let mut batch = WriteBatch::new();
        let mut values = values.iter();
        for statement in statements {
            batch.push(statement);
            for _ in 0..statement.matches('$').count() {
                batch.bind(*values.next().expect("a value per placeholder"));
            }
        }
        let must_change_one = statements.len() - 1;
        let mut checked = batch.self_checked(must_change_one).expect("checked");
        checked.checks = checks.to_vec();
        checked
    }

    #[test]
    fn members_rows_share_one_insert_and_their_other_parts_follow_each_other() {
        let statements = [
            "UPDATE a SET x = $1 WHERE y = $2",
            // Each statement in its own numbering: the batch moves this one's to $3.
            "INSERT INTO k (id, at) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING",
        ];
        let first = member(&statements, &[1, 2, 3], &[(0, 1), (1, 1)]);
        let second = member(&statements, &[4, 5, 6], &[(0, 1), (1, 1)]);
        let (sql, arguments) = combined_statement(&[&first, &second]);
        assert_eq!(
            sql,
            "WITH batch_0 AS (UPDATE a SET x = $1 WHERE y = $2 RETURNING 1), \
             batch_1 AS (UPDATE a SET x = $4 WHERE y = $5 RETURNING 1), \
             batch_2 AS (INSERT INTO k (id, at) VALUES ($3, 0), ($6, 0) \
             ON CONFLICT (id) DO NOTHING RETURNING 1) \
             SELECT returns_write_batch_check(ARRAY[0, 1, 2]::integer[], \
             ARRAY[(SELECT COUNT(*) FROM batch_0), (SELECT COUNT(*) FROM batch_1), \
             (SELECT COUNT(*) FROM batch_2)]::bigint[], ARRAY[1, 1, 2]::bigint[])"
        );
        let values: Vec<String> = arguments
            .values
            .0
            .iter()
            .map(|value| format!("{value:?}"))
            .collect();
        assert_eq!(
            values,
            [1, 2, 3, 4, 5, 6].map(|v| format!("BigInt({v})")),
            "every member's values, in order"
        );
    }

    /// A sum of the members' rows that could hide one member's shortfall behind another's
    /// keeps the insert one per member; so do members whose checks differ.
    #[test]
    fn an_insert_stays_one_per_member_when_its_check_could_not_judge_each() {
        let two_rows = ["INSERT INTO k (id) VALUES ($1), ($2) ON CONFLICT (id) DO NOTHING"];
        let first = member(&two_rows, &[1, 2], &[(0, 1)]);
        let second = member(&two_rows, &[3, 4], &[(0, 1)]);
        let (sql, _) = combined_statement(&[&first, &second]);
        assert!(
            sql.starts_with(
                "WITH batch_0 AS (INSERT INTO k (id) VALUES ($1), ($2) ON CONFLICT (id) \
                 DO NOTHING RETURNING 1), batch_1 AS (INSERT INTO k (id) VALUES ($3), ($4) "
            ),
            "{sql}"
        );
        assert!(sql.ends_with("ARRAY[1, 1]::bigint[])"), "{sql}");

        let both = member(&two_rows, &[1, 2], &[(0, 2)]);
        let none = member(&two_rows, &[3, 4], &[(0, 0)]);
        let (sql, _) = combined_statement(&[&both, &none]);
        assert!(sql.contains("batch_1 AS"), "checks differ: {sql}");

        // Statements that differ (never grouped so, but the text must not lose a part).
        let longer = member(&[two_rows[0], "UPDATE a SET x = $1"], &[5, 6, 7], &[(1, 1)]);
        let (sql, _) = combined_statement(&[&both, &longer]);
        assert!(
            sql.contains("batch_2 AS (UPDATE a SET x = $5 RETURNING 1)")
                && sql.ends_with("ARRAY[2, 1]::bigint[])"),
            "every part of each: {sql}"
        );

        let all = member(&two_rows, &[3, 4], &[(0, 2)]);
        let (sql, _) = combined_statement(&[&both, &all]);
        assert!(
            sql.contains("VALUES ($1), ($2), ($3), ($4) ON CONFLICT")
                && sql.ends_with("ARRAY[4]::bigint[])"),
            "all rows of each: {sql}"
        );
    }

    #[test]
    fn only_an_insert_of_values_whose_placeholders_are_all_in_its_rows_is_split() {
        let insert = ValuesInsert::parse(
            "INSERT INTO t (a, b) VALUES ($1, '(x'), (lower($2), 0) ON CONFLICT (a) DO NOTHING",
        );
        assert_eq!(
            insert,
            Some(ValuesInsert {
                head: "INSERT INTO t (a, b) VALUES ",
                tuples: "($1, '(x'), (lower($2), 0)",
                rows: 2,
                tail: " ON CONFLICT (a) DO NOTHING",
            })
        );
        for not_split in [
            "UPDATE t SET a = $1",
            "INSERT INTO t (a) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM t)",
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET b = $2",
            "INSERT INTO t (a) VALUES ($1",
            "INSERT INTO t (a) VALUES $1",
        ] {
            assert_eq!(ValuesInsert::parse(not_split), None, "{not_split}");
        }
    }

    /// The runners' connections plan generically (see `COMBINED_WRITES_SESSION` in db.rs);
    /// SQLite has no combined writes (its batch writer does their work).
    #[tokio::test]
    async fn the_runners_connections_plan_each_statement_once() {
        let target = crate::testing::TestDatabase::create().await;
        let db = crate::db::Database::open(&target.url, crate::test_probe::MIGRATIONS)
            .await
            .expect("open");
        let Some(combined) = db.combined_writes() else {
            assert!(db.combined_write_stats().is_none());
            assert_eq!(db.backend(), crate::db::Backend::Sqlite);
            return;
        };
        let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
            .fetch_one(combined.pool())
            .await
            .expect("setting");
        assert_eq!(mode, "force_generic_plan");
        let others: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
            .fetch_one(db.pool())
            .await
            .expect("setting");
        assert_eq!(
            others, "auto",
            "the other connections keep PostgreSQL's default"
        );
        assert_eq!(
            combined.pool().options().get_max_connections()
                + db.pool().options().get_max_connections(),
            16,
            "sixteen connections a service in all"
        );
    }

    #[test]
    fn only_batches_of_the_same_statements_share_a_statement() {
        let job = |statements: &[&str]| Job {
            batch: member(statements, &[1; 4], &[]),
            span: tracing::Span::none(),
            reply: oneshot::channel().0,
        };
        let groups = same_statements(vec![
            job(&["INSERT INTO a VALUES ($1)", "INSERT INTO k VALUES ($1)"]),
            job(&["INSERT INTO b VALUES ($1)", "INSERT INTO k VALUES ($1)"]),
            job(&["INSERT INTO a VALUES ($1)", "INSERT INTO k VALUES ($1)"]),
        ]);
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [2, 1],
            "the two of one kind together, in the order kinds came"
        );
        assert!(groups[1][0].batch.statements[0].starts_with("INSERT INTO b"));
    }
}
