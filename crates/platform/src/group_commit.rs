//! Group commit for SQLite: one writer connection per database, write transactions taking
//! turns on it in FIFO order, and one COMMIT (one fsync of the WAL) for a whole batch of them.
//!
//! SQLite lets one connection write at a time. Eight pooled connections racing for that lock
//! sleep and retry in SQLite's busy handler, so an unlucky writer loses again and again (p99 of
//! hundreds of milliseconds, maxima of seconds), and with `synchronous = FULL` every commit
//! would pay its own fsync. Here writers queue on an async lock instead, and the batch shares
//! the fsync:
//!
//! - The writer connection keeps one outer transaction (`BEGIN IMMEDIATE`) open across a
//!   batch; each write transaction of the application runs inside `SAVEPOINT request`. When a
//!   writer is queued, the release of one savepoint and the opening of the next go to SQLite
//!   in one call, so a transaction costs its own statements plus one.
//! - A transaction's commit RELEASEs its savepoint (its changes join the batch) and waits for
//!   the batch's COMMIT. The turn that ends with nobody queued behind it, or with the batch at
//!   its size or age bound ([`BatchLimits`]), issues the COMMIT and wakes every member with the
//!   result. So no member answers before its changes are durable, and if the COMMIT fails
//!   every member gets the error.
//! - A transaction that fails, is rolled back or is dropped without a commit is rolled back to
//!   its savepoint; the batch goes on without it. A drop cannot wait, so it leaves the rollback
//!   owed and a finisher task (or the next turn, whichever comes first) does it before the
//!   connection is used again, the way sqlx does for its own `Transaction`.
//! - The statements this module issues (BEGIN, SAVEPOINT, RELEASE, COMMIT) run in spawned
//!   tasks, so a caller that gives up (a cancelled RPC) cannot cut one off halfway and leave
//!   the batch in a state nobody knows.
//! - After a failed batch the connection is replaced before its next use, as the pool
//!   discards a connection left inside a failed transaction.
//!
//! Isolation: each transaction's changes are all-or-nothing (its savepoint), and transactions
//! run one after another. A later member of a batch sees an earlier member's released changes
//! before they are durable; that is harmless because both commit or fail together and neither
//! has answered its client before the COMMIT.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

/// When a batch is committed even though more writers are queued behind it. The size bound
/// caps what one failed COMMIT can take down; the age bound caps how long the first member
/// waits for the fsync while later ones keep arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Released transactions in one batch.
    pub max_members: usize,
    /// Time since the batch's `BEGIN IMMEDIATE`.
    pub max_age: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_members: 64,
            max_age: Duration::from_millis(8),
        }
    }
}

/// How long a writer waits for its turn before giving up with `PoolTimedOut` (RESOURCE_EXHAUSTED
/// at the edge): the bound the old `busy_timeout` gave, so a transaction that never ends
/// (or a nested `begin_write` in the same task) fails loudly instead of hanging the service.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the group commit of one database since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// COMMITs issued that succeeded.
    pub batches: u64,
    /// Transactions made durable by them.
    pub transactions: u64,
    /// Batches whose COMMIT (or outer transaction) failed.
    pub failed_batches: u64,
    /// How long turns held the writer (their statements, the hops to SQLite's thread and
    /// back, the COMMITs they issued): over a window, its share of the window is how busy
    /// the one writer was, the bound of the database's write throughput.
    pub held: Duration,
    /// How long writers waited for their turns, summed over the writers.
    pub waited: Duration,
}

const SAVEPOINT: &str = "SAVEPOINT request";
const RELEASE: &str = "RELEASE SAVEPOINT request";
/// A member's release and the next member's savepoint in one call to the writer's thread, when
/// a writer is queued to take it: one hop fewer per transaction under load.
const RELEASE_AND_OPEN_NEXT: &str = "RELEASE SAVEPOINT request; SAVEPOINT request";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT request; RELEASE SAVEPOINT request";

/// What every member of a batch learns: `Ok` once the COMMIT returned, or its error.
type BatchOutcome = Result<(), Arc<sqlx::Error>>;

/// The writer of one SQLite database, shared by every clone of its `Database`.
pub(crate) struct GroupCommit {
    writer: Arc<Mutex<Writer>>,
    /// Writers waiting for their turn (not counting the one that has it): while any are, a
    /// turn that ends leaves the batch open for them.
    queued: AtomicUsize,
    options: AnyConnectOptions,
    session: &'static str,
    limits: BatchLimits,
    batches: AtomicU64,
    transactions: AtomicU64,
    failed_batches: AtomicU64,
    held_nanos: AtomicU64,
    waited_nanos: AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The state behind the write lock.
struct Writer {
    connection: AnyConnection,
    /// True while a transaction's savepoint is open: when a turn ends with it still set (the
    /// transaction was dropped), the next turn owes the rollback.
    in_request: bool,
    /// The open outer transaction and the members waiting for its COMMIT.
    batch: Option<Batch>,
    /// A savepoint opened, empty, for the next turn by the release of the one before
    /// ([`RELEASE_AND_OPEN_NEXT`]): the next turn uses it instead of opening its own. Only
    /// ever set inside an open batch; a COMMIT or ROLLBACK of the batch ends it.
    spare_savepoint: bool,
    /// The connection saw a failed batch: replace it before using it again.
    reconnect: bool,
    closed: bool,
}

struct Batch {
    opened: Instant,
    members: Vec<oneshot::Sender<BatchOutcome>>,
}

impl GroupCommit {
    /// Opens the writer connection with the same options and session settings as the pool's.
    pub(crate) async fn open(
        options: AnyConnectOptions,
        session: &'static str,
        limits: BatchLimits,
    ) -> Result<Arc<GroupCommit>, sqlx::Error> {
        let connection = connect(&options, session).await?;
        Ok(Arc::new(GroupCommit {
            writer: Arc::new(Mutex::new(Writer {
                connection,
                in_request: false,
                batch: None,
                spare_savepoint: false,
                reconnect: false,
                closed: false,
            })),
            queued: AtomicUsize::new(0),
            options,
            session,
            limits,
            batches: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            held_nanos: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        }))
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            held: Duration::from_nanos(self.held_nanos.load(Ordering::Relaxed)),
            waited: Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Adds `elapsed` to a time counter (nanoseconds; u64 lasts five centuries).
    fn add_time(counter: &AtomicU64, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writers waiting for their turn right now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Waits for this writer's turn and opens its savepoint (in the batch open, or a new one).
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<GroupTx, sqlx::Error> {
        let shared = Arc::clone(self);
        let turn = tokio::spawn(async move { shared.take_turn().await })
            .await
            .map_err(task_failed)??;
        Ok(GroupTx { turn })
    }

    async fn take_turn(self: Arc<Self>) -> Result<Turn, sqlx::Error> {
        let ticket = QueueTicket::new(&self);
        let queued_at = Instant::now();
        let writer = tokio::time::timeout(TURN_TIMEOUT, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        GroupCommit::add_time(&self.waited_nanos, queued_at.elapsed());
        ticket.admit();
        let mut turn = Turn {
            taken_at: Instant::now(),
            writer,
            shared: self,
            ended: false,
        };
        turn.settle().await;
        match turn.open_savepoint().await {
            Ok(()) => Ok(turn),
            Err(error) => {
                turn.end().await;
                Err(error)
            }
        }
    }

    /// Waits for the turns before it, commits what is open and refuses later writers.
    pub(crate) async fn close(self: &Arc<Self>) {
        let writer = Arc::clone(&self.writer).lock_owned().await;
        let mut turn = Turn {
            taken_at: Instant::now(),
            writer,
            shared: Arc::clone(self),
            ended: false,
        };
        turn.settle().await;
        turn.commit_batch().await;
        turn.writer.closed = true;
        turn.ended = true;
    }
}

/// Opens one connection and applies the session settings (WAL, synchronous, foreign keys).
async fn connect(
    options: &AnyConnectOptions,
    session: &'static str,
) -> Result<AnyConnection, sqlx::Error> {
    let mut connection = options.connect().await?;
    connection.execute(session).await?;
    Ok(connection)
}

/// Counts a writer as queued from before it asks for the lock until it has it, so the turn
/// ahead of it knows to leave the batch open.
struct QueueTicket<'a> {
    shared: &'a Arc<GroupCommit>,
    admitted: bool,
}

impl<'a> QueueTicket<'a> {
    fn new(shared: &'a Arc<GroupCommit>) -> Self {
        shared.queued.fetch_add(1, Ordering::SeqCst);
        QueueTicket {
            shared,
            admitted: false,
        }
    }

    fn admit(mut self) {
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        self.admitted = true;
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            // A turn ahead may have left the batch open for this writer, which gave up
            // waiting: someone must still commit it.
            spawn_finisher(self.shared);
        }
    }
}

/// Holding the writer. A turn that is dropped without ending (its transaction was dropped,
/// or its task was cancelled) leaves its clean-up to a finisher task.
struct Turn {
    /// When the writer was taken: the turn holds it until it is dropped.
    taken_at: Instant,
    writer: OwnedMutexGuard<Writer>,
    shared: Arc<GroupCommit>,
    ended: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        GroupCommit::add_time(&self.shared.held_nanos, self.taken_at.elapsed());
        if !self.ended {
            spawn_finisher(&self.shared);
        }
    }
}

/// Takes a turn only to do what an abandoned one left: the owed rollback, and the COMMIT if
/// no writer is queued to carry the batch on. Without a runtime (the process is ending) the
/// next turn does it instead.
fn spawn_finisher(shared: &Arc<GroupCommit>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = Arc::clone(shared);
    runtime.spawn(async move {
        let writer = Arc::clone(&shared.writer).lock_owned().await;
        let mut turn = Turn {
            taken_at: Instant::now(),
            writer,
            shared,
            ended: false,
        };
        turn.settle().await;
        turn.end().await;
    });
}

impl Turn {
    /// Rolls back a savepoint the previous turn left open. If that fails the outer
    /// transaction is gone with it (SQLite rolls a whole transaction back on some errors, a
    /// full disk among them), and so is the batch's work: its members get the error.
    async fn settle(&mut self) {
        if !self.writer.in_request {
            return;
        }
        self.writer.in_request = false;
        if let Err(error) = self.writer.connection.execute(ROLLBACK_TO).await {
            self.fail_batch(Arc::new(error)).await;
        }
    }

    async fn open_savepoint(&mut self) -> Result<(), sqlx::Error> {
        let writer = &mut *self.writer;
        if writer.closed {
            return Err(sqlx::Error::PoolClosed);
        }
        if writer.reconnect {
            let fresh = connect(&self.shared.options, self.shared.session).await?;
            let old = std::mem::replace(&mut writer.connection, fresh);
            // The old connection is discarded whatever it says on the way out.
            let _ = old.close().await;
            writer.reconnect = false;
        }
        if writer.batch.is_none() {
            writer.spare_savepoint = false;
            // The batch's outer transaction and this turn's savepoint in one call.
            if let Err(error) = writer
                .connection
                .execute("BEGIN IMMEDIATE; SAVEPOINT request")
                .await
            {
                // Whatever of the two ran, the replacement connection starts clean.
                writer.reconnect = true;
                return Err(error);
            }
            writer.batch = Some(Batch {
                opened: Instant::now(),
                members: Vec::new(),
            });
        } else if writer.spare_savepoint {
            writer.spare_savepoint = false;
        } else {
            writer.connection.execute(SAVEPOINT).await?;
        }
        writer.in_request = true;
        Ok(())
    }

    /// Joins the transaction's changes to the batch; the receiver says when they are durable.
    async fn release(&mut self) -> Result<oneshot::Receiver<BatchOutcome>, sqlx::Error> {
        // A writer is queued and the batch stays open for it: open its savepoint now, in the
        // same call (if it gives up instead, the batch's COMMIT ends the empty savepoint).
        let open_next = self.writer.batch.is_some() && !self.batch_due(1);
        let statement = if open_next {
            RELEASE_AND_OPEN_NEXT
        } else {
            RELEASE
        };
        let released = self.writer.connection.execute(statement).await;
        let outcome = match released {
            Ok(_) => {
                self.writer.in_request = false;
                self.writer.spare_savepoint = open_next;
                let (sender, receiver) = oneshot::channel();
                match self.writer.batch.as_mut() {
                    Some(batch) => {
                        batch.members.push(sender);
                        Ok(receiver)
                    }
                    // Only a statement of the transaction itself (a raw COMMIT or ROLLBACK)
                    // can have ended the outer transaction under it.
                    None => Err(outer_transaction_lost()),
                }
            }
            Err(error) => {
                self.settle().await;
                Err(error)
            }
        };
        self.end().await;
        outcome
    }

    /// Rolls the transaction back to its savepoint, leaving the batch to the others.
    async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        let mut outcome = Ok(());
        if self.writer.in_request {
            self.writer.in_request = false;
            if let Err(error) = self.writer.connection.execute(ROLLBACK_TO).await {
                let error = Arc::new(error);
                outcome = Err(batch_error(&error));
                self.fail_batch(error).await;
            }
        }
        self.end().await;
        outcome
    }

    /// Ends the turn: commits the batch if nobody is queued to carry it on or it reached a
    /// bound, otherwise leaves it open for the next writer.
    async fn end(&mut self) {
        if self.writer.batch.is_some() && self.batch_due(0) {
            self.commit_batch().await;
        }
        self.ended = true;
    }

    /// Whether the open batch (with `joining` more members) is to be committed now: nobody is
    /// queued to carry it on, or it reached a bound. False without an open batch.
    fn batch_due(&self, joining: usize) -> bool {
        let Some(batch) = &self.writer.batch else {
            return false;
        };
        let limits = self.shared.limits;
        self.shared.queued() == 0
            || batch.members.len() + joining >= limits.max_members
            || batch.opened.elapsed() >= limits.max_age
    }

    async fn commit_batch(&mut self) {
        let Some(batch) = self.writer.batch.take() else {
            return;
        };
        // The COMMIT (or the ROLLBACK of a failure) ends a spare savepoint with the batch.
        self.writer.spare_savepoint = false;
        match self.writer.connection.execute("COMMIT").await {
            Ok(_) => {
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .transactions
                    .fetch_add(batch.members.len() as u64, Ordering::Relaxed);
                for member in batch.members {
                    // A member that stopped waiting (cancelled) needs no answer.
                    let _ = member.send(Ok(()));
                }
            }
            Err(error) => self.discard_batch(batch, Arc::new(error)).await,
        }
    }

    async fn fail_batch(&mut self, error: Arc<sqlx::Error>) {
        self.writer.spare_savepoint = false;
        if let Some(batch) = self.writer.batch.take() {
            self.discard_batch(batch, error).await;
        }
    }

    /// Rolls back what SQLite kept of a failed batch, tells every member, and has the
    /// connection replaced before its next use.
    async fn discard_batch(&mut self, batch: Batch, error: Arc<sqlx::Error>) {
        // It may already be gone ("no transaction is active"); the connection is replaced
        // either way.
        let _ = self.writer.connection.execute("ROLLBACK").await;
        self.writer.reconnect = true;
        self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(members = batch.members.len(), %error,
            "a SQLite group commit failed; every transaction of the batch gets the error");
        for member in batch.members {
            let _ = member.send(Err(Arc::clone(&error)));
        }
    }
}

/// A write transaction of the group commit: a savepoint on the writer connection, which it
/// holds (derefs to) until it commits, rolls back or is dropped.
pub(crate) struct GroupTx {
    turn: Turn,
}

impl GroupTx {
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.turn.writer.connection
    }

    pub(crate) fn connection_ref(&self) -> &AnyConnection {
        &self.turn.writer.connection
    }

    /// Releases the savepoint, hands the writer on and returns once the batch is durable.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        let mut turn = self.turn;
        let receiver = tokio::spawn(async move { turn.release().await })
            .await
            .map_err(task_failed)??;
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(batch_error(&error)),
            // The sender went without an answer: only a panic in the committing turn does
            // that, and then nothing says the changes are durable.
            Err(_) => Err(outer_transaction_lost()),
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        let mut turn = self.turn;
        tokio::spawn(async move { turn.rollback().await })
            .await
            .map_err(task_failed)?
    }
}

/// The error a member of a failed batch gets: the batch's own, by message (one
/// `sqlx::Error` cannot be handed to several callers).
#[derive(Debug, thiserror::Error)]
#[error("the group commit of this transaction failed: {0}")]
pub struct BatchFailed(pub Arc<sqlx::Error>);

fn batch_error(error: &Arc<sqlx::Error>) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(BatchFailed(Arc::clone(error))))
}

fn outer_transaction_lost() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "the batch's outer transaction ended before this transaction was committed",
    ))
}

fn task_failed(error: tokio::task::JoinError) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "the group commit task ended abnormally: {error}"
    )))
}

#[cfg(test)]
mod tests {
    //! These run on both backends like every storage test. On PostgreSQL the same
    //! transactions are ordinary ones, so the assertions say what each backend promises:
    //! every transaction lands or fails on its own there, with its batch here.

    use super::*;
    use crate::db::{Backend, Database, Migrations, Tx, column};
    use crate::testing::TestDatabase;

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    /// Batches end only when nobody is queued (or at 64 members), never by age, so a test
    /// decides what goes into one however slow the machine is.
    const NO_AGE_BOUND: BatchLimits = BatchLimits {
        max_members: 64,
        max_age: Duration::from_secs(3600),
    };

    async fn open() -> (Database, TestDatabase) {
        let target = TestDatabase::create().await;
        let db = Database::open_with(&target.url, MIGRATIONS, NO_AGE_BOUND)
            .await
            .expect("open");
        assert_eq!(db.backend() == Backend::Postgres, target.is_postgres());
        (db, target)
    }

    async fn insert(tx: &mut Tx, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn ids(db: &Database) -> Vec<String> {
        sqlx::query("SELECT id FROM probe ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("read")
            .iter()
            .map(|row| column::<String>(row, "id").expect("id"))
            .collect()
    }

    /// Waits (bounded) until `n` writers queue behind the one holding SQLite's writer, so
    /// the holder's commit leaves the batch open for them. PostgreSQL has no queue.
    async fn until_queued(db: &Database, n: usize) {
        if db.backend() == Backend::Postgres {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.queued_writers() < n {
            assert!(Instant::now() < deadline, "{n} writers never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn stats(db: &Database) -> GroupCommitStats {
        db.group_commit_stats().unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_all_land() {
        let (db, _target) = open().await;
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('counter', 0, 0, 0)")
            .execute(db.pool())
            .await
            .expect("seed");
        let before = stats(&db);
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(async move {
                    crate::db::retry_conflicts(|| async {
                        let mut tx = db.begin_write().await?;
                        let row = sqlx::query(&format!(
                            "SELECT amount FROM probe WHERE id = 'counter'{}",
                            db.for_update()
                        ))
                        .fetch_one(&mut *tx)
                        .await?;
                        let amount: i64 = column(&row, "amount")?;
                        sqlx::query("UPDATE probe SET amount = $1 WHERE id = 'counter'")
                            .bind(amount + 1)
                            .execute(&mut *tx)
                            .await?;
                        insert(&mut tx, &format!("row-{n:02}")).await?;
                        tx.commit().await?;
                        Ok::<_, crate::error::ApiError>(())
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join").expect("transaction");
        }
        let row = sqlx::query("SELECT amount FROM probe WHERE id = 'counter'")
            .fetch_one(db.pool())
            .await
            .expect("read");
        assert_eq!(column::<i64>(&row, "amount").expect("amount"), 40);
        assert_eq!(ids(&db).await.len(), 41);
        if db.backend() == Backend::Sqlite {
            let after = stats(&db);
            assert_eq!(after.transactions - before.transactions, 40);
            assert!(after.batches > before.batches);
            assert!(after.batches - before.batches <= 40);
            assert_eq!(after.failed_batches, 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_failing_in_the_middle_of_a_batch_rolls_back_alone() {
        let (db, _target) = open().await;
        let before = stats(&db);
        let mut first = db.begin_write().await.expect("begin");
        insert(&mut first, "a").await.expect("insert a");

        let failing = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                insert(&mut tx, "b").await?;
                // A duplicate key: the statement fails and the transaction is dropped by `?`.
                insert(&mut tx, "b").await?;
                tx.commit().await
            }
        });
        until_queued(&db, 1).await;
        let last = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                // Within the batch the earlier member's released change is visible.
                let seen = sqlx::query("SELECT id FROM probe WHERE id = 'a'")
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                insert(&mut tx, "c").await?;
                tx.commit().await.map(|()| seen)
            }
        });
        until_queued(&db, 2).await;
        first
            .commit()
            .await
            .expect("the first member's batch commits");

        let refused = failing.await.expect("join");
        assert!(refused.is_err(), "{refused:?}");
        let saw_a = last.await.expect("join").expect("the last member commits");
        assert_eq!(ids(&db).await, ["a", "c"]);
        if db.backend() == Backend::Sqlite {
            assert!(
                saw_a,
                "a later member sees the earlier one's released changes"
            );
            let after = stats(&db);
            assert_eq!(
                after.batches - before.batches,
                1,
                "one COMMIT for the batch"
            );
            assert_eq!(after.transactions - before.transactions, 2);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_dropped_without_commit_leaves_nothing_behind() {
        let (db, _target) = open().await;
        let mut dropped = db.begin_write().await.expect("begin");
        insert(&mut dropped, "dropped").await.expect("insert");
        drop(dropped);
        let mut kept = db
            .begin_write()
            .await
            .expect("the next writer gets its turn");
        insert(&mut kept, "kept").await.expect("insert");
        kept.commit().await.expect("commit");

        let mut rolled_back = db.begin_write().await.expect("begin");
        insert(&mut rolled_back, "rolled back")
            .await
            .expect("insert");
        rolled_back.rollback().await.expect("rollback");
        assert_eq!(ids(&db).await, ["kept"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_last_member_is_dropped_still_commits_the_others() {
        // Nobody is queued behind the dropped transaction to carry the batch on: its
        // finisher must do the rollback and the COMMIT the first member waits for.
        let (db, _target) = open().await;
        let mut first = db.begin_write().await.expect("begin");
        insert(&mut first, "first").await.expect("insert");
        let (inserted_tx, inserted) = oneshot::channel::<()>();
        let (drop_tx, drop_now) = oneshot::channel::<()>();
        let abandoned = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await.expect("begin");
                insert(&mut tx, "abandoned").await.expect("insert");
                let _ = inserted_tx.send(());
                let _ = drop_now.await;
                drop(tx);
            }
        });
        until_queued(&db, 1).await;
        let committed = tokio::spawn(first.commit());
        inserted.await.expect("the second member inserted");
        let _ = drop_tx.send(());
        abandoned.await.expect("join");
        committed
            .await
            .expect("join")
            .expect("the first member's batch still commits");
        assert_eq!(ids(&db).await, ["first"]);
        let mut next = db.begin_write().await.expect("the writer is free again");
        insert(&mut next, "next").await.expect("insert");
        next.commit().await.expect("commit");
        assert_eq!(ids(&db).await, ["first", "next"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_reaches_every_member_and_the_writer_recovers() {
        let (db, _target) = open().await;
        // A deferred foreign key is checked only at COMMIT: a member that breaks it makes
        // the COMMIT of its whole batch fail, as a full disk would.
        for statement in [
            "CREATE TABLE parent (id TEXT PRIMARY KEY)",
            "CREATE TABLE child (id TEXT PRIMARY KEY, parent TEXT NOT NULL \
             REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        ] {
            sqlx::query(statement)
                .execute(db.pool())
                .await
                .expect("create");
        }
        let before = stats(&db);
        let mut sound = db.begin_write().await.expect("begin");
        insert(&mut sound, "sound").await.expect("insert");
        let breaking = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                sqlx::query("INSERT INTO child (id, parent) VALUES ('orphan', 'missing')")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        });
        until_queued(&db, 1).await;
        let sound = sound.commit().await;
        let broken = breaking.await.expect("join");
        assert!(broken.is_err(), "the breaking member is told: {broken:?}");
        match db.backend() {
            Backend::Sqlite => {
                let error = sound.expect_err("its batch mate is told too");
                assert!(error.to_string().contains("FOREIGN KEY"), "{error}");
                assert!(ids(&db).await.is_empty(), "nothing of the batch landed");
                let after = stats(&db);
                assert_eq!(after.failed_batches - before.failed_batches, 1);
            }
            Backend::Postgres => {
                sound.expect("a transaction commits on its own");
                assert_eq!(ids(&db).await, ["sound"]);
            }
        }
        let mut later = db.begin_write().await.expect("the writer is usable again");
        insert(&mut later, "later").await.expect("insert");
        later.commit().await.expect("commit");
        assert!(ids(&db).await.contains(&"later".to_string()));
    }

    #[tokio::test]
    async fn a_closed_database_refuses_new_write_transactions() {
        let (db, _target) = open().await;
        let mut tx = db.begin_write().await.expect("begin");
        insert(&mut tx, "before close").await.expect("insert");
        tx.commit().await.expect("commit");
        db.close().await;
        assert!(db.begin_write().await.is_err());
    }
}
