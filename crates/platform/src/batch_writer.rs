//! SQLite transactions that are one write batch and nothing else, run back to back by a thread
//! of the suite's own on a connection of its own, many to one `BEGIN ... COMMIT`.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own and every statement is a
//! message there and a message back, so a transaction on the group commit's writer
//! ([`crate::group_commit`]) holds SQLite's one write lock for its own work *and* for the
//! hand-overs between threads around it: measured, SQLite was busy about 80 µs of the 180 µs
//! an OpenDispute held the writer. A transaction whose decision was made before it began (its
//! only statements are one final [`crate::write_batch::WriteBatch`], as
//! [`crate::mutation::mutate_on_snapshot`] makes) needs no conversation with its caller, so
//! it is handed over whole as a [`Job`]: the thread takes every job waiting, runs each in a
//! savepoint with prepared statements it keeps (rusqlite's cache), decides each by its judge
//! (release, or roll back to the savepoint), and commits them all with one COMMIT, one fsync.
//! A job costs the writer SQLite's own work; the hand-overs are one per batch.
//!
//! The thread writes only while it holds the group commit's turn, so its transactions and the
//! writer connection's are never open at once (SQLite would refuse the second with BUSY): it
//! takes the turn, commits the writer connection's batch if one is open, runs its own batch,
//! and hands the turn on. Every job learns its outcome once its batch's COMMIT has returned,
//! refused ones too (a refusal may rest on an earlier job's write in the same batch), so no
//! caller acts on a write that is not durable. A caller that gives up does not stop its job:
//! the thread owns it, as the spawned tasks of the group commit own theirs.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::Instant;

use rusqlite::Connection;
use sqlx::any::AnyArguments;
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx_core::any::AnyValueKind;
use tokio::sync::oneshot;

use crate::group_commit::{BatchLimits, GroupCommit, Verdict, batch_error};

/// Prepared statements the thread keeps: every statement of every kind of batch the suite's
/// services write, with room to spare (a miss only costs a compile).
const STATEMENT_CACHE: usize = 512;

/// How a job's batch ended for it, told once the batch's COMMIT returned (or failed).
type Deliver = Box<dyn FnOnce(Result<(), Arc<sqlx::Error>>) + Send>;

/// What a job's judge decides: release its savepoint or roll back to it, and how to tell the
/// caller once the batch is over.
struct Decision {
    commit: bool,
    deliver: Deliver,
}

/// One transaction: its statements (placeholders `$1`, `$2`, ... numbered across the whole
/// batch), the values they bind, and the judge of the rows each changed.
pub(crate) struct Job {
    statements: Vec<String>,
    arguments: AnyArguments<'static>,
    decide: Box<dyn FnOnce(Result<Vec<u64>, sqlx::Error>) -> Decision + Send>,
}

/// The sending side kept by the group commit; the thread ends when it is dropped.
pub(crate) struct BatchWriter {
    jobs: Sender<Job>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// Opens the thread's connection to the database file at `path` (with the same session
    /// settings as every other connection) and starts the thread. It needs the runtime that
    /// drives the group commit, to take turns on it.
    pub(crate) fn start(
        path: PathBuf,
        session: &str,
        limits: BatchLimits,
        group_commit: Weak<GroupCommit>,
        runtime: tokio::runtime::Handle,
    ) -> Result<BatchWriter, sqlx::Error> {
        let connection = Connection::open(&path).map_err(to_sqlx_error)?;
        connection.execute_batch(session).map_err(to_sqlx_error)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (jobs, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-batch-writer".to_owned())
            .spawn(move || {
                Thread {
                    connection,
                    jobs: receiver,
                    limits,
                    group_commit,
                    runtime,
                }
                .run()
            })
            .map_err(sqlx::Error::Io)?;
        Ok(BatchWriter { jobs })
    }

    /// A writer whose thread never started, for a group commit that failed to open (it is
    /// dropped at once): every job it is given fails.
    pub(crate) fn stopped() -> BatchWriter {
        BatchWriter {
            jobs: std::sync::mpsc::channel().0,
        }
    }

    /// Runs `statements` as one transaction on the thread and ends it by `judge` (see
    /// [`crate::group_commit::GroupTx::finish`], whose contract this keeps): the answer comes
    /// once the batch holding it is durable.
    pub(crate) async fn run<T, Judge>(
        &self,
        statements: Vec<String>,
        arguments: AnyArguments<'static>,
        judge: Judge,
    ) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        Judge: FnOnce(Result<Vec<u64>, sqlx::Error>) -> Verdict<T> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel::<Result<T, sqlx::Error>>();
        let decide = move |ran| {
            let (commit, answer) = match judge(ran) {
                Verdict::Commit(answer) => (true, answer),
                Verdict::RollBack(answer) => (false, answer),
            };
            let deliver: Deliver = Box::new(move |outcome| {
                // A caller that stopped waiting needs no answer.
                let _ = sender.send(match outcome {
                    Ok(()) => Ok(answer),
                    Err(error) => Err(batch_error(&error)),
                });
            });
            Decision { commit, deliver }
        };
        let job = Job {
            statements,
            arguments,
            decide: Box::new(decide),
        };
        self.jobs.send(job).map_err(|_| writer_gone())?;
        receiver.await.map_err(|_| writer_gone())?
    }

    /// Returns once every job sent before it, and every transaction of the writer
    /// connection committed before it, is durable: an empty job, answered with its batch.
    pub(crate) async fn wait_for_earlier_commits(&self) -> Result<(), sqlx::Error> {
        self.run(Vec::new(), AnyArguments::default(), |_| Verdict::Commit(()))
            .await
    }
}

fn writer_gone() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "SQLite's batch writer stopped before answering",
    ))
}

struct Thread {
    connection: Connection,
    jobs: Receiver<Job>,
    limits: BatchLimits,
    group_commit: Weak<GroupCommit>,
    runtime: tokio::runtime::Handle,
}

impl Thread {
    fn run(self) {
        // Ends when the group commit (every clone of its database) is gone.
        while let Ok(first) = self.jobs.recv() {
            let Some(group_commit) = self.group_commit.upgrade() else {
                return;
            };
            let turn = self
                .runtime
                .block_on(Arc::clone(&group_commit).take_turn_for_batch_writer());
            match turn {
                Ok(turn) => {
                    let (members, outcome) = self.run_batch(first);
                    match &outcome {
                        Ok(()) => group_commit.count_batch(members.len()),
                        Err(error) => {
                            group_commit.count_failed_batch();
                            tracing::warn!(members = members.len(), %error,
                                "a SQLite batch failed; every transaction of it gets the error");
                        }
                    }
                    // The turn is handed on before the members are told, as a COMMIT of the
                    // writer connection does: nothing of this batch needs the writer now.
                    drop(turn);
                    for deliver in members {
                        deliver(outcome.clone());
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    let mut waiting = vec![first];
                    waiting.extend(self.jobs.try_iter());
                    for job in waiting {
                        let decision = (job.decide)(Err(batch_error(&error)));
                        (decision.deliver)(Err(Arc::clone(&error)));
                    }
                }
            }
        }
    }

    /// Opens a batch, runs `first` and every job waiting behind it (up to the batch's
    /// bounds), and commits: the members to tell, and what to tell them.
    fn run_batch(&self, first: Job) -> (Vec<Deliver>, Result<(), Arc<sqlx::Error>>) {
        let opened = Instant::now();
        let mut members = Vec::new();
        if !self.connection.is_autocommit() {
            // A failed batch whose ROLLBACK failed too left its transaction open: end it, or
            // every later BEGIN would fail.
            let _ = self.execute("ROLLBACK");
        }
        if let Err(error) = self.execute("BEGIN IMMEDIATE") {
            let decision = (first.decide)(Err(batch_error(&error)));
            members.push(decision.deliver);
            return (members, Err(error));
        }
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let ran = self.run_job(&job);
            let decision = (job.decide)(ran.map_err(to_sqlx_error));
            let ended = if decision.commit {
                self.execute("RELEASE job")
            } else {
                self.execute("ROLLBACK TO job")
                    .and_then(|()| self.execute("RELEASE job"))
            };
            members.push(decision.deliver);
            if let Err(error) = ended {
                // SQLite may have rolled the whole transaction back under it (a full disk
                // does): nothing of the batch is known to hold.
                let _ = self.execute("ROLLBACK");
                return (members, Err(error));
            }
            let due =
                members.len() >= self.limits.max_members || opened.elapsed() >= self.limits.max_age;
            if !due {
                // Empty or disconnected alike: the batch ends with the jobs it has.
                next = self.jobs.try_recv().ok();
            }
        }
        match self.execute("COMMIT") {
            Ok(()) => (members, Ok(())),
            Err(error) => {
                let _ = self.execute("ROLLBACK");
                (members, Err(error))
            }
        }
    }

    /// Runs a job's statements inside its savepoint: the rows each changed.
    fn run_job(&self, job: &Job) -> Result<Vec<u64>, rusqlite::Error> {
        self.connection
            .prepare_cached("SAVEPOINT job")?
            .raw_execute()?;
        let values = &job.arguments.values.0;
        let mut rows = Vec::with_capacity(job.statements.len());
        for sql in &job.statements {
            let mut statement = self.connection.prepare_cached(sql)?;
            bind_numbered(&mut statement, values)?;
            rows.push(statement.raw_execute()? as u64);
        }
        Ok(rows)
    }

    /// One of the thread's own statements (savepoints, BEGIN, COMMIT), prepared once.
    fn execute(&self, sql: &str) -> Result<(), Arc<sqlx::Error>> {
        self.connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.raw_execute())
            .map(|_| ())
            .map_err(|error| Arc::new(to_sqlx_error(error)))
    }
}

/// Binds each placeholder `$n` of `statement` to `values[n - 1]`, as sqlx's SQLite driver
/// does (SQLite itself sees `$n` as a name).
pub(crate) fn bind_numbered(
    statement: &mut rusqlite::Statement<'_>,
    values: &[AnyValueKind<'_>],
) -> Result<(), rusqlite::Error> {
    for index in 1..=statement.parameter_count() {
        let value = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|number| number.parse::<usize>().ok())
            .and_then(|number| values.get(number.checked_sub(1)?));
        let Some(value) = value else {
            let name = statement.parameter_name(index).unwrap_or("?").to_owned();
            return Err(rusqlite::Error::InvalidParameterName(name));
        };
        bind(statement, index, value)?;
    }
    Ok(())
}

/// Binds one of sqlx's `Any` values as SQLite stores it (booleans as integers, as sqlx's
/// SQLite driver binds them).
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    index: usize,
    value: &AnyValueKind<'_>,
) -> Result<(), rusqlite::Error> {
    match value {
        AnyValueKind::Null(_) => statement.raw_bind_parameter(index, rusqlite::types::Null),
        AnyValueKind::Bool(value) => statement.raw_bind_parameter(index, i64::from(*value)),
        AnyValueKind::SmallInt(value) => statement.raw_bind_parameter(index, i64::from(*value)),
        AnyValueKind::Integer(value) => statement.raw_bind_parameter(index, i64::from(*value)),
        AnyValueKind::BigInt(value) => statement.raw_bind_parameter(index, *value),
        AnyValueKind::Real(value) => statement.raw_bind_parameter(index, f64::from(*value)),
        AnyValueKind::Double(value) => statement.raw_bind_parameter(index, *value),
        AnyValueKind::Text(value) => statement.raw_bind_parameter(index, value.as_ref()),
        AnyValueKind::Blob(value) => statement.raw_bind_parameter(index, value.as_ref()),
        // The enum is non-exhaustive: a kind added by a later sqlx is refused, not guessed.
        _ => Err(rusqlite::Error::InvalidParameterName(format!(
            "a value of a kind this build does not know how to bind, for parameter {index}"
        ))),
    }
}

/// rusqlite's error as the sqlx error the rest of the suite reads: SQLite's extended result
/// code as the code (what `db::is_retryable` matches) and the constraint kinds sqlx's own
/// SQLite driver reports (a unique violation becomes ALREADY_EXISTS, or what the batch says
/// it means).
pub(crate) fn to_sqlx_error(error: rusqlite::Error) -> sqlx::Error {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            }))
        }
        other => sqlx::Error::Io(std::io::Error::other(other)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("(code: {code}) {message}")]
struct SqliteFailure {
    code: i32,
    message: String,
}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both backends, like every storage test: on PostgreSQL `finish_alone` is an ordinary
    //! transaction, and what the batch writer adds (one batch, its counters) is checked on
    //! SQLite only.

    use crate::db::{Backend, Database, Finished};
    use crate::error::ApiError;
    use crate::test_probe::{
        create_parent_and_child_checked_at_commit, database_without_age_bound, until_queued,
    };
    use crate::testing::TestDatabase;
    use crate::write_batch::WriteBatch;

    fn insert(id: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0)")
            .bind(id.to_owned())
            .bind(1_i64);
        batch
    }

    fn outcome(finished: Result<Finished, ApiError>) -> String {
        match finished {
            Ok(Finished::Committed { .. }) => "committed".to_owned(),
            Ok(Finished::NotChanged) => "not changed".to_owned(),
            Ok(Finished::Refused(error)) => format!("refused: {:?}", error.code()),
            Err(ApiError::Internal(cause)) => format!("failed: {cause}"),
            Err(error) => format!("failed: {error}"),
        }
    }

    async fn ids(db: &Database) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM probe ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("ids")
    }

    /// Probe row b's amount, at_micros and flag.
    async fn probe_b(db: &Database) -> (i64, i64, i64) {
        sqlx::query_as("SELECT amount, at_micros, flag FROM probe WHERE id = 'b'")
            .fetch_one(db.pool())
            .await
            .expect("row b")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_jobs_share_one_commit_after_the_writer_connections_batch_and_each_ends_alone()
    {
        let (db, _target) = database_without_age_bound().await;
        let before = db.group_commit_stats().unwrap_or_default();
        // An ordinary transaction holds the writer with a write of its own.
        let mut holder = db.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('a', 1, 0, 0)")
            .execute(&mut *holder)
            .await
            .expect("insert a");
        // Four jobs: a new row; a duplicate of `a` (a unique violation: refused, rolled back);
        // an update that finds no row where one had to change (rolled back); a new row.
        let mut missing = WriteBatch::new();
        missing
            .push("UPDATE probe SET amount = $1 WHERE id = $2")
            .bind(5_i64)
            .bind("nobody".to_owned());
        let batches = [insert("b"), insert("a"), missing, insert("e")];
        let jobs =
            futures::future::join_all(batches.into_iter().map(|batch| db.finish_alone(batch, 0)));
        let mut jobs = std::pin::pin!(jobs);
        // Each job is handed to the thread when first polled; the thread then queues for the
        // writer behind the holder, and an ordinary transaction queues behind the thread.
        assert!(futures::poll!(&mut jobs).is_pending());
        until_queued(&db, 1).await;
        let ordinary = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                sqlx::query(
                    "INSERT INTO probe (id, amount, at_micros, flag) VALUES ('f', 1, 0, 0)",
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
        });
        until_queued(&db, 2).await;
        holder.commit().await.expect("the holder commits");
        let outcomes: Vec<String> = jobs.await.into_iter().map(outcome).collect();
        ordinary
            .await
            .expect("join")
            .expect("the ordinary transaction commits");
        assert_eq!(
            outcomes,
            [
                "committed",
                "refused: AlreadyExists",
                "not changed",
                "committed"
            ]
        );
        assert_eq!(ids(&db).await, ["a", "b", "e", "f"]);
        if db.backend() == Backend::Sqlite {
            let after = db.group_commit_stats().expect("SQLite has a group commit");
            // The holder's batch (left open for the thread, which committed it first), the
            // thread's one batch of four, the ordinary transaction's.
            assert_eq!(after.batches - before.batches, 3);
            assert_eq!(after.transactions - before.transactions, 6);
            assert_eq!(after.failed_batches, before.failed_batches);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_reaches_every_job_of_its_batch_and_the_next_batch_commits() {
        let (db, _target) = database_without_age_bound().await;
        // A job that breaks a foreign key checked only at COMMIT makes the COMMIT of its
        // whole batch fail, as a full disk would.
        create_parent_and_child_checked_at_commit(&db).await;
        let before = db.group_commit_stats().unwrap_or_default();
        let holder = db.begin_write().await.expect("begin");
        let mut orphan = WriteBatch::new();
        orphan
            .push("INSERT INTO child (id, parent) VALUES ($1, $2)")
            .bind("orphan".to_owned())
            .bind("missing".to_owned());
        let jobs = futures::future::join_all([
            db.finish_alone(insert("sound"), 0),
            db.finish_alone(orphan, 0),
        ]);
        let mut jobs = std::pin::pin!(jobs);
        assert!(futures::poll!(&mut jobs).is_pending());
        until_queued(&db, 1).await;
        holder.commit().await.expect("the holder commits");
        let outcomes: Vec<String> = jobs.await.into_iter().map(outcome).collect();
        let failed = |outcome: &String| {
            outcome.starts_with("failed: ") && outcome.to_lowercase().contains("foreign key")
        };
        match db.backend() {
            Backend::Sqlite => {
                assert!(
                    outcomes.iter().all(failed),
                    "both jobs are told: {outcomes:?}"
                );
                assert!(ids(&db).await.is_empty(), "nothing of the batch landed");
                let after = db.group_commit_stats().expect("SQLite has a group commit");
                assert_eq!(after.failed_batches - before.failed_batches, 1);
            }
            Backend::Postgres => {
                // Each job is one statement, a transaction by itself: the orphan's check at
                // its end refuses that statement alone.
                assert_eq!(outcomes[0], "committed", "a transaction commits on its own");
                assert_eq!(outcomes[1], "refused: Internal", "{outcomes:?}");
                assert_eq!(ids(&db).await, ["sound"]);
            }
        }
        assert_eq!(
            outcome(db.finish_alone(insert("later"), 0).await),
            "committed"
        );
        assert!(ids(&db).await.contains(&"later".to_string()));
    }

    #[tokio::test]
    async fn values_of_every_kind_bind_as_sqlx_binds_them_and_a_wait_follows_the_jobs_before_it() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, crate::test_probe::MIGRATIONS)
            .await
            .expect("open");
        let finished = db.finish_alone(insert("b"), 0).await;
        assert_eq!(outcome(finished), "committed");
        db.wait_for_earlier_commits().await.expect("wait");
        assert_eq!(ids(&db).await, ["b"]);
        if db.backend() == Backend::Sqlite {
            // A value of every kind the suite binds reaches SQLite as sqlx's own SQLite
            // driver binds it (PostgreSQL's columns would refuse a 32-bit integer or a
            // boolean for a BIGINT, and its transactions are not the batch writer's).
            let mut kinds = WriteBatch::new();
            kinds
                .push("UPDATE probe SET amount = $1, at_micros = $2, flag = $3 WHERE id = $4")
                .bind(7_i32)
                .bind(Some(9_i64))
                .bind(true)
                .bind("b".to_owned());
            assert_eq!(outcome(db.finish_alone(kinds, 0).await), "committed");
            assert_eq!(probe_b(&db).await, (7, 9, 1));
            // The thread's own connection has every connection's session settings: FULL (2),
            // the 10 s busy timeout, the statement journal in memory (2); the last two are
            // not SQLite's defaults.
            let mut settings = WriteBatch::new();
            settings.push(
                "UPDATE probe SET amount = (SELECT synchronous FROM pragma_synchronous), \
                 at_micros = (SELECT * FROM pragma_busy_timeout), \
                 flag = (SELECT temp_store FROM pragma_temp_store) WHERE id = $1",
            );
            settings.bind("b".to_owned());
            assert_eq!(outcome(db.finish_alone(settings, 0).await), "committed");
            let settings = probe_b(&db).await;
            assert_eq!(
                settings,
                (2, 10_000, 2),
                "synchronous, busy_timeout, temp_store"
            );
        }
    }
}
