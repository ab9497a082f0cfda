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
//!   batch; each write transaction of the application runs inside `SAVEPOINT request`.
//! - A transaction's commit leaves its savepoint to be RELEASEd (its changes joining the
//!   batch) by whoever uses the connection next, in the same call as their own first
//!   statements: the next transaction's opening (`RELEASE ...; SAVEPOINT request`), or the
//!   batch's COMMIT.
//! - A transaction decided before it began, whose only statements are one final write batch,
//!   does not take turns here: the batch writer ([`crate::batch_writer`]) runs it, on a
//!   connection of its own, while it holds the writer as a turn of its own.
//! - The committing member waits for the batch's COMMIT. The turn that ends with nobody
//!   queued behind it, or with the batch at its size or age bound ([`BatchLimits`]), issues
//!   the COMMIT and wakes every member with the result. So no member answers before its
//!   changes are durable, and if the COMMIT (or a RELEASE riding with another's statements)
//!   fails every member gets the error.
//! - A transaction that fails, is rolled back or is dropped without a commit is rolled back to
//!   its savepoint; the batch goes on without it. A drop cannot wait, so it leaves the rollback
//!   owed and a finisher task (or the next turn, whichever comes first) does it before the
//!   connection is used again, the way sqlx does for its own `Transaction`.
//! - The statements this module issues (BEGIN, SAVEPOINT, RELEASE, COMMIT, and a final batch
//!   carrying them) run in spawned tasks, so a caller that gives up (a cancelled RPC) cannot
//!   cut one off halfway and leave the batch in a state nobody knows.
//! - After a failed batch the connection is replaced before its next use, as the pool
//!   discards a connection left inside a failed transaction.
//!
//! Isolation: each transaction's changes are all-or-nothing (its savepoint), and transactions
//! run one after another. A later member of a batch sees an earlier member's released changes
//! before they are durable; that is harmless because both commit or fail together and neither
//! has answered its client before the COMMIT.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use crate::batch_writer::BatchWriter;
use crate::wal_checkpointer::Checkpointer;
use crate::write_batch::PreparedBatch;

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
    /// Calls this module made to SQLite's thread (openings, final batches, rollbacks,
    /// COMMITs), each a hop there and back while the writer is held: what the riding of
    /// openings and releases on other statements saves shows here.
    pub calls: u64,
}

/// A member's opening, by what the connection holds: the batch's first member opens the outer
/// transaction too; a member after one that committed releases that one's savepoint first.
const OPEN_BATCH: &str = "BEGIN IMMEDIATE; SAVEPOINT request";
const RELEASE_AND_OPEN: &str = "RELEASE SAVEPOINT request; SAVEPOINT request";
const SAVEPOINT: &str = "SAVEPOINT request";
const COMMIT: &str = "COMMIT";
const RELEASE_AND_COMMIT: &str = "RELEASE SAVEPOINT request; COMMIT";
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
    calls: AtomicU64,
    /// The thread that runs one-batch transactions on a connection of its own (see
    /// [`crate::batch_writer`]).
    batch_writer: BatchWriter,
    /// The thread that checkpoints the log, told of every COMMIT of both writers.
    checkpointer: Checkpointer,
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
    /// The last member committed, and its savepoint (holding its changes) is still open: the
    /// next statement on the connection RELEASEs it first. Only ever set inside an open
    /// batch.
    release_owed: bool,
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
    /// Also starts the batch writer, on `file` (the database's), which takes its turns on
    /// the runtime this is called on, and the checkpointer ([`crate::wal_checkpointer`]).
    pub(crate) async fn open(
        options: AnyConnectOptions,
        file: PathBuf,
        session: &'static str,
        limits: BatchLimits,
    ) -> Result<Arc<GroupCommit>, sqlx::Error> {
        let connection = connect(&options, session).await?;
        let checkpointer = Checkpointer::start(&file, session)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|error| sqlx::Error::Io(std::io::Error::other(error)))?;
        let mut started = Ok(());
        let group_commit = Arc::new_cyclic(|weak| GroupCommit {
            batch_writer: BatchWriter::start(file, session, limits, weak.clone(), runtime)
                .unwrap_or_else(|error| {
                    started = Err(error);
                    BatchWriter::stopped()
                }),
            writer: Arc::new(Mutex::new(Writer {
                connection,
                in_request: false,
                batch: None,
                release_owed: false,
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
            calls: AtomicU64::new(0),
            checkpointer,
        });
        started.map(|()| group_commit)
    }

    /// The count of checkpoints the checkpointer thread has run.
    #[cfg(test)]
    pub(crate) fn checkpoint_runs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.checkpointer.runs()
    }

    /// The thread for one-batch transactions.
    pub(crate) fn batch_writer(&self) -> &BatchWriter {
        &self.batch_writer
    }

    /// Counts a batch the batch writer committed (and tells the checkpointer).
    pub(crate) fn count_batch(&self, members: usize) {
        self.checkpointer.committed();
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.transactions
            .fetch_add(members as u64, Ordering::Relaxed);
    }

    /// Counts a batch of the batch writer that failed.
    pub(crate) fn count_failed_batch(&self) {
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// The batch writer's turn (see [`crate::batch_writer`]): the writer connection's open
    /// batch is committed first, since the batch writer's transaction is on a connection of
    /// its own and SQLite lets one write at a time. It queues like any writer (so the turn
    /// ahead may leave that batch open for it to commit).
    pub(crate) async fn take_turn_for_batch_writer(
        self: Arc<Self>,
    ) -> Result<BatchWriterTurn, sqlx::Error> {
        let mut turn = self.queue_for_turn().await?;
        // Nothing is left to a finisher: whatever happens, the turn ends here or with the
        // batch writer's batch.
        turn.ended = true;
        turn.prepare().await?;
        turn.commit_batch().await;
        Ok(BatchWriterTurn { _turn: turn })
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            held: Duration::from_nanos(self.held_nanos.load(Ordering::Relaxed)),
            waited: Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed)),
            calls: self.calls.load(Ordering::Relaxed),
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

    /// Waits for the writer (in FIFO order, counted as queued meanwhile) and settles what the
    /// turn before left owed.
    async fn queue_for_turn(self: Arc<Self>) -> Result<Turn, sqlx::Error> {
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
        Ok(turn)
    }

    async fn take_turn(self: Arc<Self>) -> Result<Turn, sqlx::Error> {
        let mut turn = self.queue_for_turn().await?;
        let ready = match turn.prepare().await {
            Ok(()) => turn.open_savepoint().await,
            other => other,
        };
        match ready {
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

/// The writer held by the batch writer's thread: nothing of the writer connection is open
/// while it is held, and dropping it hands the writer on.
pub(crate) struct BatchWriterTurn {
    _turn: Turn,
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
        self.count_call();
        if let Err(error) = self.writer.connection.execute(ROLLBACK_TO).await {
            self.fail_batch(Arc::new(error)).await;
        }
    }

    fn count_call(&self) {
        self.shared.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Readies the connection for the turn: refuses once closed, replaces a connection that
    /// saw a failed batch.
    async fn prepare(&mut self) -> Result<(), sqlx::Error> {
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
        Ok(())
    }

    /// The statements that open this turn's savepoint; the state changes they make are
    /// recorded by [`Turn::opening_sent`].
    fn opening(&self) -> &'static str {
        if self.writer.batch.is_none() {
            OPEN_BATCH
        } else if self.writer.release_owed {
            RELEASE_AND_OPEN
        } else {
            SAVEPOINT
        }
    }

    /// Records the opening as done, before it is sent: if its call fails or stops halfway,
    /// [`Turn::opening_failed`] undoes the whole batch, which is the only safe reading of a
    /// call that may have released another member's savepoint.
    fn opening_sent(&mut self) {
        let writer = &mut *self.writer;
        if writer.batch.is_none() {
            writer.batch = Some(Batch {
                opened: Instant::now(),
                members: Vec::new(),
            });
        }
        writer.release_owed = false;
        writer.in_request = true;
    }

    /// The opening failed: whatever of it ran, the batch's work (and another member's release
    /// in it) is in doubt, so the batch fails and the connection is replaced. Returns the
    /// error for this transaction.
    async fn opening_failed(&mut self, error: sqlx::Error) -> sqlx::Error {
        self.writer.in_request = false;
        self.writer.reconnect = true;
        let alone = self
            .writer
            .batch
            .as_ref()
            .is_none_or(|batch| batch.members.is_empty());
        if alone {
            // Nobody else's work was in doubt: this transaction gets SQLite's own error (a
            // busy BEGIN stays retryable) and the connection starts clean.
            self.writer.release_owed = false;
            if self.writer.batch.take().is_some() {
                let _ = self.writer.connection.execute("ROLLBACK").await;
            }
            return error;
        }
        let error = Arc::new(error);
        self.fail_batch(Arc::clone(&error)).await;
        batch_error(&error)
    }

    async fn open_savepoint(&mut self) -> Result<(), sqlx::Error> {
        let opening = self.opening();
        self.opening_sent();
        self.count_call();
        match self.writer.connection.execute(opening).await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.opening_failed(error).await),
        }
    }

    /// Joins the transaction's changes to the batch (its savepoint is released by the next
    /// statement on the connection); the receiver says when they are durable. No statement
    /// of its own: a COMMIT is issued by [`Turn::end`] when due.
    fn join_batch(&mut self) -> Result<oneshot::Receiver<BatchOutcome>, sqlx::Error> {
        let (sender, receiver) = oneshot::channel();
        let writer = &mut *self.writer;
        writer.in_request = false;
        writer.release_owed = true;
        match writer.batch.as_mut() {
            Some(batch) => batch.members.push(sender),
            // Only a statement of the transaction itself (a raw COMMIT or ROLLBACK) can have
            // ended the outer transaction under it.
            None => return Err(outer_transaction_lost()),
        }
        Ok(receiver)
    }

    /// Rolls the transaction back to its savepoint, leaving the batch to the others.
    async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        let mut outcome = Ok(());
        if self.writer.in_request {
            self.writer.in_request = false;
            self.count_call();
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
        // The last member's release rides with the COMMIT.
        let statement = if std::mem::take(&mut self.writer.release_owed) {
            RELEASE_AND_COMMIT
        } else {
            COMMIT
        };
        self.count_call();
        match self.writer.connection.execute(statement).await {
            Ok(_) => {
                self.shared.checkpointer.committed();
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
        self.writer.release_owed = false;
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

/// What the judge of a final batch decides ([`GroupTx::finish`]).
pub(crate) enum Verdict<T> {
    /// Commit the transaction, then answer `T` once the batch is durable.
    Commit(T),
    /// Roll the transaction back and answer `T`.
    RollBack(T),
}

impl GroupTx {
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.turn.writer.connection
    }

    pub(crate) fn connection_ref(&self) -> &AnyConnection {
        &self.turn.writer.connection
    }

    /// Hands the writer on and returns once the batch holding the transaction is durable.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        let mut turn = self.turn;
        let receiver = turn.join_batch()?;
        end_turn(turn).await?;
        durable(receiver).await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        let mut turn = self.turn;
        tokio::spawn(async move { turn.rollback().await })
            .await
            .map_err(task_failed)?
    }

    /// Runs `batch` (the transaction's last statements, one call to SQLite's thread) and ends the transaction by what `judge` makes of the rows each
    /// statement changed (or the error): commits it and answers once the batch is durable,
    /// or rolls it back. All of it runs in one spawned task, so a caller that gives up cannot
    /// cut it off halfway.
    pub(crate) async fn finish<T, Judge>(
        self,
        batch: PreparedBatch,
        judge: Judge,
    ) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        Judge: FnOnce(Result<Vec<u64>, sqlx::Error>) -> Verdict<T> + Send + 'static,
    {
        let mut turn = self.turn;
        let ended = tokio::spawn(async move {
            turn.count_call();
            let ran = batch.run(&mut turn.writer.connection).await;
            match judge(ran) {
                Verdict::Commit(answer) => {
                    let receiver = turn.join_batch();
                    turn.end().await;
                    Ok::<_, sqlx::Error>((answer, Some(receiver?)))
                }
                Verdict::RollBack(answer) => {
                    turn.rollback().await?;
                    Ok((answer, None))
                }
            }
        })
        .await
        .map_err(task_failed)??;
        match ended {
            (answer, Some(receiver)) => durable(receiver).await.map(|()| answer),
            (answer, None) => Ok(answer),
        }
    }
}

/// Ends a turn that needs no statement of its own unless its batch is due, in which case the
/// COMMIT runs in a spawned task (see the module documentation).
async fn end_turn(mut turn: Turn) -> Result<(), sqlx::Error> {
    if turn.writer.batch.is_some() && turn.batch_due(0) {
        tokio::spawn(async move { turn.end().await })
            .await
            .map_err(task_failed)?;
    } else {
        turn.ended = true;
    }
    Ok(())
}

/// Waits for the COMMIT of a member's batch.
async fn durable(receiver: oneshot::Receiver<BatchOutcome>) -> Result<(), sqlx::Error> {
    match receiver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(batch_error(&error)),
        // The sender went without an answer: only a panic in the committing turn does that,
        // and then nothing says the changes are durable.
        Err(_) => Err(outer_transaction_lost()),
    }
}

/// The error a member of a failed batch gets: the batch's own, by message (one
/// `sqlx::Error` cannot be handed to several callers).
#[derive(Debug, thiserror::Error)]
#[error("the group commit of this transaction failed: {0}")]
pub struct BatchFailed(pub Arc<sqlx::Error>);

pub(crate) fn batch_error(error: &Arc<sqlx::Error>) -> sqlx::Error {
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
    use crate::db::{Backend, Database, Finished, Tx, column};
    use crate::error::ApiError;
    use crate::write_batch::WriteBatch;

    use crate::test_probe::{
        create_parent_and_child_checked_at_commit, database_without_age_bound, until_queued,
    };

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

    fn stats(db: &Database) -> GroupCommitStats {
        db.group_commit_stats().unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_all_land() {
        let (db, _target) = database_without_age_bound().await;
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
        let (db, _target) = database_without_age_bound().await;
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

    /// A transaction ending with one batch ([`Tx::finish`]): `id` inserted, and when
    /// `refuse`, a statement whose expectation fails, so it is rolled back.
    async fn finish_with_batch(db: &Database, id: &'static str, refuse: bool) -> &'static str {
        let tx = db.begin_write().await.expect("begin");
        let mut writes = WriteBatch::new();
        writes
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
            .bind(id);
        if refuse {
            writes
                .push("UPDATE probe SET amount = 2 WHERE id = 'missing'")
                .expect_rows(1, ApiError::Aborted("missing".into()));
        }
        match tx.finish(writes, 0).await.expect("finish") {
            Finished::Committed { .. } => "committed",
            Finished::Refused(_) => "refused",
            Finished::NotChanged => "not changed",
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committed_savepoint_is_released_by_the_next_call_on_the_connection() {
        let (db, _target) = database_without_age_bound().await;
        let before = stats(&db);
        let mut first = db.begin_write().await.expect("begin");
        insert(&mut first, "a").await.expect("insert a");
        // Queued in this order behind `first` (tokio's lock is FIFO): three members ending
        // with a final batch, the second refused, and one committing on its own.
        let mut queued = Vec::new();
        for (n, (id, refuse)) in [("b", false), ("c", true), ("d", false)]
            .into_iter()
            .enumerate()
        {
            let db2 = db.clone();
            queued.push(tokio::spawn(async move {
                finish_with_batch(&db2, id, refuse).await
            }));
            until_queued(&db, n + 1).await;
        }
        let ordinary = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                insert(&mut tx, "e").await?;
                tx.commit().await
            }
        });
        until_queued(&db, 4).await;
        first.commit().await.expect("the batch commits");
        let mut outcomes = Vec::new();
        for member in queued {
            outcomes.push(member.await.expect("join"));
        }
        ordinary
            .await
            .expect("join")
            .expect("the ordinary member commits");
        assert_eq!(outcomes, ["committed", "refused", "committed"]);
        assert_eq!(ids(&db).await, ["a", "b", "d", "e"], "c rolled back alone");
        if db.backend() == Backend::Sqlite {
            let after = stats(&db);
            assert_eq!(
                after.batches - before.batches,
                1,
                "one COMMIT for the batch"
            );
            assert_eq!(after.transactions - before.transactions, 4);
            // a's opening (a's own insert is no call of the group commit's); b's opening
            // (with a's release) and batch; c's opening (with b's release), batch and
            // rollback; d's opening (nothing owed after a rollback) and batch; e's opening
            // (with d's release); the COMMIT (with e's release). Releases on calls of their
            // own would make it 14.
            assert_eq!(after.calls - before.calls, 10);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_dropped_without_commit_leaves_nothing_behind() {
        let (db, _target) = database_without_age_bound().await;
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
        let (db, _target) = database_without_age_bound().await;
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
        let (db, _target) = database_without_age_bound().await;
        // A member that breaks a foreign key checked only at COMMIT makes the COMMIT of its
        // whole batch fail, as a full disk would.
        create_parent_and_child_checked_at_commit(&db).await;
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
        let (db, _target) = database_without_age_bound().await;
        let mut tx = db.begin_write().await.expect("begin");
        insert(&mut tx, "before close").await.expect("insert");
        tx.commit().await.expect("commit");
        db.close().await;
        assert!(db.begin_write().await.is_err());
    }
}
