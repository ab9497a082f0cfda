//! Opening a service's database (SQLite by default, PostgreSQL in production), applying its
//! embedded migrations, and beginning write transactions the safe way for each backend.
//!
//! Services use one code path for both backends through sqlx's `Any` driver, which keeps the
//! column types to the portable set: TEXT, 64-bit integers (BIGINT / INTEGER), and bytes.
//! Instants are stored as microseconds since the Unix epoch, money as minor units plus a
//! currency code, booleans as 0/1. Sums are written `CAST(SUM(x) AS BIGINT)` because
//! PostgreSQL widens `SUM(bigint)` to NUMERIC, which `Any` cannot decode.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::query::QueryAs;
use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Execute, Executor, FromRow, TransactionManager,
};

pub use crate::combined_writes::CombinedWriteStats;
use crate::combined_writes::{self, CombinedWrites};
use crate::config::{redact_url, scrub_secrets};
use crate::error::ApiError;
pub use crate::group_commit::{BatchFailed, BatchLimits, GroupCommitStats};
use crate::group_commit::{GroupCommit, GroupTx, Verdict};
use crate::kept_connections::{KeptConnection, KeptConnections};
use crate::sqlite_reads::PointReaders;
use crate::worker::WorkSignal;
use crate::write_batch::{Judge, WriteBatch};

/// The settings every SQLite connection starts with, pooled readers and the writer alike.
///
/// `synchronous = FULL`: in WAL mode each COMMIT fsyncs the log, so a write that answered
/// survives a power cut, not only a process crash (NORMAL's promise). The group commit makes
/// that one fsync per batch rather than per transaction, which is what makes FULL affordable;
/// there is no setting for it because no deployment should answer before its write is durable.
/// `busy_timeout` still matters for the few single-statement writes made through the pool,
/// which wait for the writer connection's batch to commit.
/// `temp_store = MEMORY`: each write transaction is a savepoint inside the batch, and SQLite
/// copies every page a savepoint changes into a statement journal first; in a temporary file
/// that is a write() per page (a fifth of the writer's time in profiles), in memory a copy.
/// The journal lives only until the savepoint is released, so it stays small.
/// `cache_size = -16384` (16 MiB a connection, where SQLite's default is 2 MiB): a read by
/// an index ends in a lookup of each row in the table's B-tree. At a million disputes that
/// tree's interior pages alone are several MiB; with the default cache they are evicted and
/// fetched from the operating system again by nearly every lookup, so a page of 50 disputes
/// cost half as much again as at ten thousand. A connection's cache holds only pages it
/// read, so a small database costs no more memory than before.
/// `wal_autocheckpoint = 10000`: checkpoints are the checkpointer thread's
/// ([`crate::wal_checkpointer`]), outside the write lock; SQLite's own, inside a COMMIT,
/// only if the log ever reaches 10,000 pages (about 40 MiB) because that thread fell behind.
const SQLITE_SESSION: &str = "PRAGMA journal_mode = WAL; \
                              PRAGMA busy_timeout = 10000; \
                              PRAGMA synchronous = FULL; \
                              PRAGMA temp_store = MEMORY; \
                              PRAGMA cache_size = -16384; \
                              PRAGMA wal_autocheckpoint = 10000; \
                              PRAGMA foreign_keys = ON;";

/// How long a pooled PostgreSQL connection may sit idle and still be handed out without a
/// ping: sqlx pings every connection it hands out by default, a round trip before every
/// transaction and every read; one used moments ago is almost surely alive, and one that is
/// not fails its first statement like any other dropped connection.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(5);

/// How many of a PostgreSQL pool's fifteen connections point reads, lists, transactions
/// and the other reads made on a [`Database::read_connection`] use at once, kept between
/// uses (see [`crate::kept_connections`]): the other three stay in the pool for the code
/// that uses it directly (the relay, the workers, a few single reads). Ten left GetDispute
/// level from C = 16 to 32 in a run (12,504 and 12,469 calls/s), where a first version
/// without a limit, up to fifteen, gained 14-16%; twelve gained 15%.
const KEPT_CONNECTIONS: usize = 12;

/// The combined writes' connections plan each statement once, generically: a combined
/// statement's text differs with its member count, so each text runs on each connection
/// less often than PostgreSQL's five custom plans before it settles on a generic one, and
/// planning a statement of dozens of parts showed as 6% of PostgreSQL's time. Their
/// statements are inserts and updates by key, whose plan does not depend on the values.
const COMBINED_WRITES_SESSION: &str = "SET plan_cache_mode = force_generic_plan";

/// A PostgreSQL pool of `connections`, each pinged before use when it has been idle a while
/// (a network or a proxy may have dropped it).
fn postgres_pool(connections: usize) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A write transaction on either backend: an ordinary pooled transaction on PostgreSQL, a
/// savepoint in the writer's current batch on SQLite (see [`crate::group_commit`]).
///
/// It derefs to the connection (`&mut *tx`, `&mut **tx` in helpers taking `&mut Tx`), ends
/// with [`Tx::commit`] or [`Tx::rollback`], and is rolled back if dropped without either.
pub struct Tx {
    inner: TxInner,
    /// Writes deferred to the end of the transaction (see [`Tx::writes`]).
    writes: WriteBatch,
    /// The transaction wrote work for a background worker (see [`Tx::makes_work`]).
    makes_work: bool,
}

enum TxInner {
    Pooled(PooledTx),
    Grouped(GroupTx),
}

/// The transaction manager of sqlx's `Any` driver: BEGIN, COMMIT and ROLLBACK as
/// `sqlx::Transaction` sends them, with the connection's transaction depth kept in step.
type AnyTransactions = <Any as sqlx::Database>::TransactionManager;

/// A PostgreSQL transaction on a kept connection ([`crate::kept_connections`]): begun and
/// ended through sqlx's own transaction manager, as `sqlx::Transaction` would, but after its
/// COMMIT or ROLLBACK the connection is kept for the next use rather than given back to the
/// pool, whose check on return is one more round trip after every transaction.
struct PooledTx {
    /// `None` once committed or rolled back.
    connection: Option<KeptConnection>,
}

impl PooledTx {
    async fn begin(connections: &Arc<KeptConnections>) -> Result<PooledTx, sqlx::Error> {
        let mut connection = connections.take().await?;
        // A failed BEGIN drops the connection: the pool checks it.
        AnyTransactions::begin(&mut connection, None).await?;
        Ok(PooledTx {
            connection: Some(connection),
        })
    }

    /// COMMITs (`commit`) or ROLLs BACK, then keeps the connection if that ended the
    /// transaction; a COMMIT the database refused leaves it inside one, and the pool closes
    /// such a connection when it comes back (see `after_release` in [`Database::open_with`]).
    async fn end(mut self, commit: bool) -> Result<(), sqlx::Error> {
        let Some(mut connection) = self.connection.take() else {
            return Ok(());
        };
        let ended = if commit {
            AnyTransactions::commit(&mut connection).await
        } else {
            AnyTransactions::rollback(&mut connection).await
        };
        connection.keep_if_completed(&ended);
        ended
    }

    fn connection(&self) -> &AnyConnection {
        // Only `end`, which consumes the transaction, takes the connection out.
        self.connection
            .as_deref()
            .unwrap_or_else(|| unreachable!("a PooledTx holds its connection until it ends"))
    }

    fn connection_mut(&mut self) -> &mut AnyConnection {
        self.connection
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("a PooledTx holds its connection until it ends"))
    }
}

impl Drop for PooledTx {
    /// Dropped before it ended (its request failed or was cancelled): as `sqlx::Transaction`
    /// does, queue a ROLLBACK, which goes out before anything else on the connection; the
    /// connection goes back to the pool, whose check on return sends it.
    fn drop(&mut self) {
        if let Some(connection) = &mut self.connection {
            AnyTransactions::start_rollback(connection);
        }
    }
}

impl Tx {
    /// A transaction with nothing deferred yet.
    fn over(inner: TxInner) -> Tx {
        Tx {
            inner,
            writes: WriteBatch::new(),
            makes_work: false,
        }
    }

    /// Commits. On SQLite it returns once the whole batch is durable, with the batch's error
    /// if its COMMIT failed.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        if !self.writes.is_empty() {
            // Only `mutate` runs deferred writes (with the request's key); committing without
            // them would silently lose them, so the transaction rolls back instead.
            return Err(sqlx::Error::Protocol(
                "a transaction with deferred writes was committed without running them".into(),
            ));
        }
        match self.inner {
            TxInner::Pooled(tx) => tx.end(true).await,
            TxInner::Grouped(tx) => tx.commit().await,
        }
    }

    /// Writes deferred to the end of the transaction: [`crate::mutation::mutate`] runs them
    /// after the handler's body, in one batch with the request's idempotency key, so a change
    /// decided in the body costs one statement for all it writes. Push only what the body
    /// does not read back: deferred writes are not visible until the body has returned.
    pub fn writes(&mut self) -> &mut WriteBatch {
        &mut self.writes
    }

    /// The deferred writes, leaving none.
    pub fn take_writes(&mut self) -> WriteBatch {
        std::mem::take(&mut self.writes)
    }

    /// Marks the transaction as writing work for a background worker of its database (an
    /// outbox row, a refund to settle): whoever commits it then calls
    /// [`Database::work_committed`] ([`crate::mutation::mutate`] does), so the worker runs
    /// now rather than at its next poll. A transaction that makes no such work wakes nobody:
    /// a busy service would otherwise send its relay and workers looking for work after
    /// every commit, each pass a read (and on SQLite a turn on the writer) for nothing.
    pub fn makes_work(&mut self) {
        self.makes_work = true;
    }

    /// Whether [`Tx::makes_work`] was called, directly or by a write batch it ran.
    pub fn made_work(&self) -> bool {
        self.makes_work || self.writes.makes_work
    }

    /// The engine the transaction runs on: a pooled transaction is PostgreSQL's, a grouped one
    /// SQLite's (see [`Database::begin_write`]).
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Pooled(_) => Backend::Postgres,
            TxInner::Grouped(_) => Backend::Sqlite,
        }
    }

    /// Runs `writes` as the transaction's last statement and ends it: commits (returning
    /// once the change is durable) when they ran as expected and statement `must_change_one`
    /// changed one row, rolls back otherwise. On SQLite the whole of it is one turn's work on
    /// the writer (see `GroupTx::finish`). A transaction of one batch and nothing else is
    /// [`Database::finish_alone`]'s.
    pub(crate) async fn finish(
        self,
        writes: WriteBatch,
        must_change_one: usize,
    ) -> Result<Finished, ApiError> {
        let made_work = self.made_work() || writes.makes_work;
        let (prepared, judge) = writes.prepare(self.backend())?;
        let verdict = finishing(judge, must_change_one, made_work);
        let mut rest = match self.inner {
            // The batch and the end of the transaction in one turn's task on the writer.
            TxInner::Grouped(tx) if !prepared.is_empty() => {
                return Ok(tx.finish(prepared, verdict).await?);
            }
            inner => Tx::over(inner),
        };
        let ran = match &mut rest.inner {
            TxInner::Pooled(tx) => prepared.run(tx.connection_mut()).await,
            // An empty batch on SQLite: nothing to run.
            TxInner::Grouped(_) => Ok(Vec::new()),
        };
        match verdict(ran) {
            Verdict::Commit(finished) => rest.commit().await.map(|()| finished),
            Verdict::RollBack(finished) => rest.rollback().await.map(|()| finished),
        }
        .map_err(ApiError::from)
    }

    /// Rolls back this transaction's changes (only its own on SQLite; the batch goes on).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Pooled(tx) => tx.end(false).await,
            TxInner::Grouped(tx) => tx.rollback().await,
        }
    }
}

/// How the end of [`Tx::finish`] (and of [`Database::finish_alone`]) reads what the final
/// batch did: commit when it ran as expected and statement `must_change_one` changed one row.
fn finishing(
    judge: Judge,
    must_change_one: usize,
    made_work: bool,
) -> impl FnOnce(Result<Vec<u64>, sqlx::Error>) -> Verdict<Finished> + Send + 'static {
    move |ran| match judge.judge(ran) {
        Ok(rows) if rows.get(must_change_one) == Some(&1) => {
            Verdict::Commit(Finished::Committed { made_work })
        }
        Ok(_) => Verdict::RollBack(Finished::NotChanged),
        Err(error) => Verdict::RollBack(Finished::Refused(error)),
    }
}

/// A connection for reads outside any transaction (see [`Database::read_connection`]); it
/// derefs to the connection, so `&mut *connection` is an executor.
pub struct ReadConnection(ReadInner);

enum ReadInner {
    Kept(KeptConnection),
    Pooled(sqlx::pool::PoolConnection<Any>),
}

impl ReadConnection {
    /// Its reads ran to their end (answered, or refused by the database): on PostgreSQL the
    /// connection is kept for the next use, unchecked.
    pub fn done(self) {
        if let ReadInner::Kept(connection) = self.0 {
            connection.keep();
        }
    }
}

impl Deref for ReadConnection {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            ReadInner::Kept(connection) => connection,
            ReadInner::Pooled(connection) => connection,
        }
    }
}

impl DerefMut for ReadConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            ReadInner::Kept(connection) => connection,
            ReadInner::Pooled(connection) => connection,
        }
    }
}

impl std::fmt::Debug for ReadConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            ReadInner::Kept(_) => "kept",
            ReadInner::Pooled(_) => "pooled",
        };
        f.debug_struct("ReadConnection")
            .field("kind", &kind)
            .finish()
    }
}

/// How [`Tx::finish`] ended a transaction.
pub(crate) enum Finished {
    /// Committed and durable; whether it made work for a worker (see [`Tx::makes_work`]).
    Committed { made_work: bool },
    /// Rolled back: the writes ran, but the statement that had to change one row did not.
    NotChanged,
    /// Rolled back: the writes were refused (an expectation, a unique index, an error).
    Refused(ApiError),
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.inner {
            TxInner::Pooled(tx) => tx.connection(),
            TxInner::Grouped(tx) => tx.connection_ref(),
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.inner {
            TxInner::Pooled(tx) => tx.connection_mut(),
            TxInner::Grouped(tx) => tx.connection(),
        }
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            TxInner::Pooled(_) => "pooled",
            TxInner::Grouped(_) => "group commit",
        };
        f.debug_struct("Tx").field("kind", &kind).finish()
    }
}

/// Which engine a [`Database`] talks to; a few statements differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The platform's own tables (idempotency keys, outbox, inbox, health probe), in every
/// service's database, applied before the service's migrations. Their versions are
/// 0001, 0002, 0010, 0011 (kept from when each service carried a copy, so existing databases
/// see the same history) and 1000 upwards from now on; services number theirs from 0003,
/// skipping those, below 1000.
pub static PLATFORM_MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("migrations/sqlite"),
    postgres: &sqlx::migrate!("migrations/postgres"),
};

/// The migrations of one service, one directory per backend (forward only).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// A service's connection pool plus what it needs to know about the backend.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's one writer; `None` on PostgreSQL.
    writer: Option<Arc<GroupCommit>>,
    /// SQLite's point reads on the calling thread; `None` on PostgreSQL.
    point_readers: Option<Arc<PointReaders>>,
    /// PostgreSQL's connections kept between point reads, transactions and the reads on a
    /// [`Database::read_connection`] (see [`crate::kept_connections`]); `None` on SQLite.
    kept: Option<Arc<KeptConnections>>,
    /// PostgreSQL's transactions of one batch alone, many to a statement; `None` on SQLite.
    combined_writes: Option<Arc<CombinedWrites>>,
    /// Wakes this database's background workers (its relay, its service's own) after a
    /// commit: per database, so a commit in one service does not send every worker of the
    /// process to look for work that can only be in its own database.
    work: WorkSignal,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("unsupported database URL {0} (use sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    #[error(
        "in-memory SQLite is not supported ({0}): the writers and the readers are separate \
         connections, each of which would see a database of its own; name a file"
    )]
    InMemorySqlite(String),
    #[error("cannot create the folder for {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    /// `reason` is the driver's own words (connection refused, password authentication
    /// failed, database does not exist...) with the URL's secrets scrubbed out; the driver's
    /// error is not kept as a source, so no error chain can print it unscrubbed.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("migrations failed on {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

static INSTALL_DRIVERS: Once = Once::new();

/// How long the first connection may take before start-up gives up on the database: long
/// enough for a remote server's TLS handshake, short enough that a black-holed host is
/// reported while someone is still watching.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`DatabaseError::Connect`] for `url`, its reason cleaned of the URL's secrets.
fn connect_error(url: &str, reason: impl std::fmt::Display) -> DatabaseError {
    DatabaseError::Connect {
        url: redact_url(url),
        reason: scrub_secrets(&reason.to_string(), url),
    }
}

/// One direct connection attempt before the pool is built. The pool retries a refused
/// connection until its acquire timeout and then reports only `PoolTimedOut`; a single
/// attempt reports the real cause at once.
async fn try_connect(url: &str) -> Result<(), DatabaseError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
        Ok(Ok(connection)) => {
            // Only the answer mattered; a failed goodbye changes nothing.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(connect_error(url, error)),
        Err(_) => Err(connect_error(
            url,
            format!(
                "no answer within {} s (is the host reachable and the port right?)",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

impl Database {
    /// Connects to `url`, creating a SQLite file (and its folder) when needed, and applies
    /// the service's migrations for that backend.
    pub async fn open(url: &str, migrations: Migrations) -> Result<Database, DatabaseError> {
        Database::open_with(url, migrations, BatchLimits::default()).await
    }

    /// [`Database::open`] with the SQLite group commit's batch bounds chosen (tests use it to
    /// make batches of a known size).
    pub async fn open_with(
        url: &str,
        migrations: Migrations,
        limits: BatchLimits,
    ) -> Result<Database, DatabaseError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DatabaseError::UnsupportedUrl(redact_url(url)));
        };
        let sqlite_file = match backend {
            Backend::Sqlite => Some(prepare_sqlite_file(url)?),
            Backend::Postgres => None,
        };
        try_connect(url).await?;
        let options = match backend {
            // SQLite allows one writer at a time: write transactions go through the group
            // commit's own connection; the pool's handful serve concurrent reads in WAL mode.
            // No ping before handing a connection out (sqlx's default): a connection to a
            // local file cannot have been dropped by a network, and the ping is a hop to the
            // connection's thread and back before every read.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                .test_before_acquire(false)
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        connection.execute(SQLITE_SESSION).await?;
                        Ok(())
                    })
                }),
            // Sixteen connections a service in all: these and the combined writes' own.
            Backend::Postgres => postgres_pool(16 - combined_writes::RUNNERS),
        }
        // A connection that comes back still inside a transaction (its COMMIT or ROLLBACK
        // failed, say on a full disk) is closed, not reused: reused, every later BEGIN on it
        // fails ("begin_with at non-zero transaction depth") until the process restarts.
        .after_release(|connection, _| {
            Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(connection)) })
        })
        .acquire_timeout(Duration::from_secs(10));
        let pool = options
            .connect(url)
            .await
            .map_err(|error| connect_error(url, error))?;
        let (platform, service) = match backend {
            Backend::Sqlite => (PLATFORM_MIGRATIONS.sqlite, migrations.sqlite),
            Backend::Postgres => (PLATFORM_MIGRATIONS.postgres, migrations.postgres),
        };
        // Two sets share sqlx's one history table, with disjoint version numbers: each set
        // must ignore the other's applied versions rather than call them missing.
        for set in [platform, service] {
            let migrator = Migrator {
                migrations: set.migrations.clone(),
                ignore_missing: true,
                locking: set.locking,
                no_tx: set.no_tx,
            };
            migrator
                .run(&pool)
                .await
                .map_err(|source| DatabaseError::Migrate {
                    url: redact_url(url),
                    source,
                })?;
        }
        let point_readers = sqlite_file
            .as_ref()
            .map(|file| Arc::new(PointReaders::new(file.clone(), SQLITE_SESSION)));
        let writer = match sqlite_file {
            // Opened after the migrations, which need the write lock through the pool.
            Some(file) => Some(
                GroupCommit::open(
                    (*pool.connect_options()).clone(),
                    file,
                    SQLITE_SESSION,
                    limits,
                )
                .await
                .map_err(|error| connect_error(url, error))?,
            ),
            None => None,
        };
        let combined_writes = match backend {
            Backend::Postgres => {
                let runners = postgres_pool(combined_writes::RUNNERS)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection.execute(COMBINED_WRITES_SESSION).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await
                    .map_err(|error| connect_error(url, error))?;
                Some(Arc::new(CombinedWrites::start(
                    runners,
                    pool.clone(),
                    PING_WHEN_IDLE_FOR,
                )))
            }
            Backend::Sqlite => None,
        };
        let kept = match backend {
            Backend::Postgres => Some(Arc::new(KeptConnections::new(
                pool.clone(),
                KEPT_CONNECTIONS,
                PING_WHEN_IDLE_FOR,
            ))),
            Backend::Sqlite => None,
        };
        Ok(Database {
            pool,
            backend,
            writer,
            point_readers,
            kept,
            combined_writes,
            work: WorkSignal::default(),
        })
    }

    /// Proves the database takes a committed write (a one-row upsert): what health reports.
    pub async fn probe_write(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO health_probe (id, probed_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
        )
        .bind(crate::outbox::wall_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The pool, for reads and single-statement writes.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A read by key of committed rows, at most one row: on SQLite run on the calling thread
    /// (see [`crate::sqlite_reads`]; for statements that read a few rows by an index, never a
    /// scan), on PostgreSQL through the pool. The same query, decoded the same way, either way.
    pub async fn fetch_point<'q, T>(
        &self,
        mut query: QueryAs<'q, Any, T, AnyArguments<'q>>,
    ) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin + 'q,
    {
        let Some(readers) = &self.point_readers else {
            let Some(connections) = &self.kept else {
                return query.fetch_optional(&self.pool).await;
            };
            let mut connection = connections.take().await?;
            let row = query.fetch_optional(&mut *connection).await;
            connection.keep_if_completed(&row);
            return row;
        };
        let values = query
            .take_arguments()
            .map_err(sqlx::Error::Encode)?
            .map(|arguments| arguments.values.0)
            .unwrap_or_default();
        readers
            .fetch(query.sql(), &values, 1)?
            .first()
            .map(T::from_row)
            .transpose()
    }

    /// A connection for reads outside any transaction: on PostgreSQL a kept one (see
    /// [`crate::kept_connections`]), on SQLite one of the pool's. Call
    /// [`ReadConnection::done`] once its reads ran to their end; dropped without that (a read
    /// failed, or its caller stopped waiting), the pool takes it back and checks it.
    pub async fn read_connection(&self) -> Result<ReadConnection, sqlx::Error> {
        Ok(ReadConnection(match &self.kept {
            Some(kept) => ReadInner::Kept(kept.take().await?),
            None => ReadInner::Pooled(self.pool.acquire().await?),
        }))
    }

    /// Every row of a read outside any transaction (a page of a list), on a
    /// [`Database::read_connection`].
    pub async fn fetch_all<'q, T>(
        &self,
        query: QueryAs<'q, Any, T, AnyArguments<'q>>,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin + 'q,
    {
        let mut connection = self.read_connection().await?;
        let rows = query.fetch_all(&mut *connection).await;
        if let Ok(_) | Err(sqlx::Error::Database(_)) = &rows {
            connection.done();
        }
        rows
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool's connections idle now: in the pool, or kept between uses (which the pool
    /// counts as in use).
    pub fn idle_connections(&self) -> usize {
        self.pool.num_idle() + self.kept.as_ref().map_or(0, |kept| kept.kept())
    }

    /// Wakes the workers watching this database; call after committing work for them
    /// (outbox rows, a refund to settle). [`crate::mutation::mutate`] does it for every
    /// change whose transaction says it [made work](Tx::makes_work).
    pub fn work_committed(&self) {
        self.work.notify();
    }

    /// What a worker of this database waits on between passes.
    pub fn work_signal(&self) -> &WorkSignal {
        &self.work
    }

    /// Begins a transaction that will write.
    ///
    /// On SQLite it waits for its turn on the database's one writer (FIFO, at most
    /// [`crate::group_commit::TURN_TIMEOUT`], then `PoolTimedOut`) and runs as a savepoint in
    /// the writer's batch, whose outer transaction holds SQLite's write lock (`BEGIN
    /// IMMEDIATE`), so a read-then-write never meets SQLITE_BUSY. Do not begin a second
    /// write transaction while holding one: on SQLite it waits for the first, which waits
    /// for it, until the turn timeout. On PostgreSQL it is an ordinary transaction, on a
    /// kept connection (see `PooledTx`).
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        Ok(Tx::over(match &self.writer {
            Some(writer) => TxInner::Grouped(writer.begin().await?),
            None => match &self.kept {
                Some(kept) => TxInner::Pooled(PooledTx::begin(kept).await?),
                // Every database has a writer (SQLite) or kept connections (PostgreSQL).
                None => {
                    return Err(sqlx::Error::Protocol(
                        "a database with neither a writer nor kept connections".into(),
                    ));
                }
            },
        }))
    }

    /// Returns once every write transaction that began before this call is durable (or has
    /// failed). On SQLite a transaction can read what an earlier member of its batch wrote
    /// before that batch commits; one that then ends without committing (a refusal, a
    /// "nothing to do") must call this before answering from what it read, or its caller
    /// could act on a write that is not durable yet. A committed transaction needs nothing:
    /// its commit already waited for the batch. No-op on PostgreSQL, whose transactions only
    /// ever read committed rows.
    pub async fn wait_for_earlier_commits(&self) -> Result<(), sqlx::Error> {
        match &self.writer {
            Some(writer) => writer.batch_writer().wait_for_earlier_commits().await,
            None => Ok(()),
        }
    }

    /// A transaction of `writes` alone, decided before it began, ended as [`Tx::finish`]
    /// ends one: on SQLite a job for the batch writer, which runs it back to back with the
    /// others waiting, many to one COMMIT; on PostgreSQL one self-checking statement run on
    /// its own, which is a transaction by itself (no BEGIN, no COMMIT: one round trip, see
    /// [`WriteBatch::self_checked`]), shared with the batches waiting beside it when
    /// there are any ([`crate::combined_writes`]). Committed or not, it returns only once
    /// every write it could have met is durable (the batch writer answers after its batch's
    /// COMMIT; PostgreSQL reads only committed rows), so a refusal needs no
    /// [`Database::wait_for_earlier_commits`].
    pub(crate) async fn finish_alone(
        &self,
        writes: WriteBatch,
        must_change_one: usize,
    ) -> Result<Finished, ApiError> {
        if let Some(combined) = &self.combined_writes {
            return combined.run(writes, must_change_one).await;
        }
        let Some(writer) = &self.writer else {
            // Every database has one or the other (`Database::open_with`).
            return Err(ApiError::internal(std::io::Error::other(
                "a database without a writer or combined writes",
            )));
        };
        let made_work = writes.makes_work;
        let (statements, arguments, judge) = writes.into_parts()?;
        let verdict = finishing(judge, must_change_one, made_work);
        Ok(writer
            .batch_writer()
            .run(statements, arguments, verdict)
            .await?)
    }

    /// Runs one writing statement on its own and returns the rows it changed. On SQLite it
    /// takes its turn on the writer like any write transaction (a statement on a pooled
    /// connection would instead wait on SQLite's lock, sleeping in `busy_timeout` while a
    /// batch is open); on PostgreSQL it runs on the pool, one round trip.
    pub async fn execute_write<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<u64, sqlx::Error> {
        if self.writer.is_none() {
            return Ok(query.execute(&self.pool).await?.rows_affected());
        }
        let mut tx = self.begin_write().await?;
        let changed = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(changed)
    }

    /// What SQLite's group commit has done since the database was opened (`None` on
    /// PostgreSQL, which commits each transaction on its own).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.writer.as_ref().map(|writer| writer.stats())
    }

    /// The count of checkpoints SQLite's checkpointer thread has run (`None` on PostgreSQL,
    /// which checkpoints itself).
    #[cfg(test)]
    pub(crate) fn checkpoint_runs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.writer.as_ref().map(|writer| writer.checkpoint_runs())
    }

    /// Counters of PostgreSQL's combined writes (`None` on SQLite).
    pub fn combined_write_stats(&self) -> Option<CombinedWriteStats> {
        self.combined_writes
            .as_ref()
            .map(|combined| combined.stats())
    }

    #[cfg(test)]
    pub(crate) fn combined_writes(&self) -> Option<&CombinedWrites> {
        self.combined_writes.as_deref()
    }

    /// Writers waiting for their turn on SQLite's writer right now (0 on PostgreSQL).
    pub fn queued_writers(&self) -> usize {
        self.writer.as_ref().map_or(0, |writer| writer.queued())
    }

    /// `FOR UPDATE` on PostgreSQL, nothing on SQLite (whose write lock is already held
    /// by [`Database::begin_write`]): appended to a SELECT that must lock what it reads.
    pub fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL so concurrent workers claim different rows.
    pub fn for_update_skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Serialises the transactions that take the same `key` until `tx` ends, for facts that
    /// may not have a row to lock yet (FOR UPDATE cannot lock a row that does not exist).
    ///
    /// A transaction-scoped advisory lock on PostgreSQL; nothing on SQLite, whose
    /// one writer ([`Database::begin_write`]) already serialises every write transaction. The
    /// statement is executed, not decoded: `Any` cannot decode PostgreSQL's `void`.
    pub async fn lock_key(&self, tx: &mut Tx, key: &str) -> Result<(), ApiError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to come back, and on SQLite commits
    /// the writer's open batch and refuses later write transactions.
    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        if let Some(kept) = &self.kept {
            kept.close();
        }
        self.pool.close().await;
    }
}

/// The file of a SQLite database, its folder created (0700) and, when the URL asks for the
/// file to be created (`mode=rwc`) and it does not exist yet, the empty file (0600): SQLite
/// would otherwise create it world-readable (0644 under the usual umask), and its `-wal` and
/// `-shm` files copy the database file's mode. Existing files and folders are left as
/// their owner set them.
fn prepare_sqlite_file(url: &str) -> Result<std::path::PathBuf, DatabaseError> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|_| DatabaseError::UnsupportedUrl(redact_url(url)))?;
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let mode = |wanted: &str| query.split('&').any(|pair| pair == wanted);
    if mode("mode=memory") || url.contains(":memory:") {
        return Err(DatabaseError::InMemorySqlite(redact_url(url)));
    }
    let path = options.get_filename();
    let create_error = |source| DatabaseError::CreateDir {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        private_dir_all(parent).map_err(create_error)?;
    }
    if mode("mode=rwc") {
        match private_new_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(create_error(error));
            }
            _ => {}
        }
    }
    Ok(path.to_path_buf())
}

/// `create_dir_all`, with the folders it creates readable by their owner only.
pub fn private_dir_all(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Creates a new, empty file readable by its owner only (AlreadyExists if there is one).
fn private_new_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// True for failures a retry of the whole transaction can cure: PostgreSQL serialization
/// failures (40001) and deadlocks (40P01), SQLite busy/locked.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001") | Some("40P01") | Some("5") | Some("6") | Some("517") | Some("262")
        ),
        _ => false,
    }
}

fn api_error_is_retryable(error: &ApiError) -> bool {
    match error {
        ApiError::Internal(cause) => cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_retryable),
        _ => false,
    }
}

/// Runs `operation` (typically: begin, read, decide, write, commit) again when the database
/// reports a serialization failure or deadlock, up to a few times with a short jittered pause.
pub async fn retry_conflicts<T, Fut>(mut operation: impl FnMut() -> Fut) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    const ATTEMPTS: u32 = 6;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match operation().await {
            Err(error) if attempt < ATTEMPTS && api_error_is_retryable(&error) => {
                let jitter: u64 = rand::random_range(0..10);
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt) + jitter)).await;
            }
            result => return result,
        }
    }
}

/// Reads a column, turning a missing or mistyped column into an internal error rather than
/// a panic (rows come from the database, which a server never trusts blindly).
pub fn column<'r, T>(row: &'r AnyRow, name: &str) -> Result<T, ApiError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_probe::MIGRATIONS;

    async fn open_test_database() -> (Database, crate::testing::TestDatabase) {
        let target = crate::testing::TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        // CI runs these tests a second time on PostgreSQL; make sure that run really is.
        assert_eq!(db.backend() == Backend::Postgres, target.is_postgres());
        (db, target)
    }

    #[tokio::test]
    async fn migrations_apply_and_portable_types_round_trip() {
        let (db, _dir) = open_test_database().await;
        let mut tx = db.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, $3, $4)")
            .bind("p-1")
            .bind(i64::MAX)
            .bind(1_700_000_000_000_000_i64)
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let row = sqlx::query(
            "SELECT id, amount, at_micros, flag, CAST(SUM(amount) AS BIGINT) AS total \
             FROM probe GROUP BY id, amount, at_micros, flag",
        )
        .fetch_one(db.pool())
        .await
        .expect("select");
        assert_eq!(column::<String>(&row, "id").expect("id"), "p-1");
        assert_eq!(column::<i64>(&row, "amount").expect("amount"), i64::MAX);
        assert_eq!(column::<i64>(&row, "total").expect("total"), i64::MAX);
        assert!(column::<i64>(&row, "missing").is_err());
    }

    /// Each of SQLite's connections would open a database of its own in memory, so the
    /// writers' changes would never reach the readers: such a URL is refused, with why.
    #[tokio::test]
    async fn an_in_memory_sqlite_database_is_refused_with_the_reason() {
        for url in ["sqlite::memory:", "sqlite://returns.db?mode=memory"] {
            match Database::open(url, MIGRATIONS).await {
                Err(error @ DatabaseError::InMemorySqlite(_)) => {
                    assert!(error.to_string().contains("name a file"), "{error}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    /// `synchronous = FULL` (a write that answered survives a power cut), the in-memory
    /// statement journal and the 16 MiB page cache hold on the writer, on every pooled reader
    /// and on the point readers; the writer and the pool checkpoint only at 10,000 pages.
    #[tokio::test]
    async fn sqlite_connections_are_durable_journal_savepoints_in_memory_and_cache_16_mib() {
        let (db, _target) = open_test_database().await;
        if db.backend() != Backend::Sqlite {
            return;
        }
        // synchronous: 2 = FULL; temp_store: 2 = MEMORY; then the page cache (negative: KiB).
        const SETTINGS: &str = "SELECT (SELECT synchronous FROM pragma_synchronous), \
                                (SELECT temp_store FROM pragma_temp_store), \
                                (SELECT cache_size FROM pragma_cache_size)";
        // Read apart: SQLite offers no table-valued form of a pragma that can also be set.
        const CHECKPOINT_AT: &str = "PRAGMA wal_autocheckpoint";
        let expected = (2, 2, -16384);
        let mut tx = db.begin_write().await.expect("begin");
        let writer: (i64, i64, i64) = sqlx::query_as(SETTINGS)
            .fetch_one(&mut *tx)
            .await
            .expect("the writer's settings");
        let writer_checkpoint: i64 = sqlx::query_scalar(CHECKPOINT_AT)
            .fetch_one(&mut *tx)
            .await
            .expect("the writer's checkpoint threshold");
        tx.rollback().await.expect("rollback");
        assert_eq!(writer, expected, "the writer's settings");
        let reader: (i64, i64, i64) = sqlx::query_as(SETTINGS)
            .fetch_one(db.pool())
            .await
            .expect("a reader's settings");
        assert_eq!(reader, expected, "a reader's settings");
        // Checkpoints are the checkpointer thread's (`wal_checkpointer`); SQLite's own in a
        // COMMIT only as a backstop, on the connections that commit.
        let reader_checkpoint: i64 = sqlx::query_scalar(CHECKPOINT_AT)
            .fetch_one(db.pool())
            .await
            .expect("a reader's checkpoint threshold");
        assert_eq!((writer_checkpoint, reader_checkpoint), (10_000, 10_000));
        let point_sql = format!("{SETTINGS} WHERE $1 = 1");
        let point = sqlx::query_as::<_, (i64, i64, i64)>(&point_sql).bind(1_i64);
        assert_eq!(
            db.fetch_point(point).await.expect("point read"),
            Some(expected),
            "a point reader's settings"
        );
    }

    #[tokio::test]
    async fn a_duplicate_key_maps_to_already_exists() {
        let (db, _dir) = open_test_database().await;
        let insert = "INSERT INTO probe (id, amount, at_micros, flag) VALUES ('dup', 1, 1, 0)";
        sqlx::query(insert).execute(db.pool()).await.expect("first");
        let error = sqlx::query(insert)
            .execute(db.pool())
            .await
            .expect_err("second insert of the same key");
        assert!(matches!(ApiError::from(error), ApiError::AlreadyExists(_)));
    }

    #[tokio::test]
    async fn concurrent_read_then_write_transactions_all_commit() {
        // The SQLite trap: deferred read-then-write transactions fail with SQLITE_BUSY.
        // With BEGIN IMMEDIATE (and FOR UPDATE on PostgreSQL) every increment lands.
        let (db, _dir) = open_test_database().await;
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('counter', 0, 0, 0)")
            .execute(db.pool())
            .await
            .expect("seed");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                retry_conflicts(|| async {
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
                    tx.commit().await?;
                    Ok::<_, ApiError>(())
                })
                .await
            }));
        }
        for task in tasks {
            task.await.expect("join").expect("increment");
        }
        let row = sqlx::query("SELECT amount FROM probe WHERE id = 'counter'")
            .fetch_one(db.pool())
            .await
            .expect("read");
        assert_eq!(column::<i64>(&row, "amount").expect("amount"), 16);
    }

    /// On PostgreSQL the connections of ended transactions are kept and handed to the next
    /// ones: a connection kept while still inside a transaction would turn the next BEGIN
    /// into a savepoint of the old one, and its COMMIT would never reach the database.
    #[tokio::test]
    async fn transactions_dropped_or_rolled_back_leave_nothing_and_the_next_ones_commit() {
        let (db, _dir) = open_test_database().await;
        let insert = |id: String| {
            sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
                .bind(id)
        };
        for round in 0..3 {
            let mut dropped = db.begin_write().await.expect("begin");
            insert(format!("dropped-{round}"))
                .execute(&mut *dropped)
                .await
                .expect("insert");
            drop(dropped);
            let mut rolled_back = db.begin_write().await.expect("begin");
            insert(format!("rolled-back-{round}"))
                .execute(&mut *rolled_back)
                .await
                .expect("insert");
            rolled_back.rollback().await.expect("rollback");
            let mut committed = db.begin_write().await.expect("begin");
            insert(format!("committed-{round}"))
                .execute(&mut *committed)
                .await
                .expect("insert");
            committed.commit().await.expect("commit");
        }
        // Read on a connection of the pool's own, outside every kept one.
        let mut fresh = db.pool().acquire().await.expect("connection");
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM probe ORDER BY id")
            .fetch_all(&mut *fresh)
            .await
            .expect("read");
        assert_eq!(ids, ["committed-0", "committed-1", "committed-2"]);
        if let Some(kept) = &db.kept {
            assert!(
                kept.kept() >= 1,
                "the committed transactions' connections are kept"
            );
        }
    }

    /// A list's read keeps its connection on PostgreSQL; a read connection dropped before
    /// `done` (its read failed, or its caller stopped waiting) is not kept. SQLite reads
    /// through the pool either way, and the reads answer the same.
    #[tokio::test]
    async fn reads_keep_their_connection_only_once_they_ran_to_their_end() {
        let (db, _dir) = open_test_database().await;
        let kept = || db.kept.as_ref().map(|kept| kept.kept());
        let before = kept();
        assert!(
            matches!(before, None | Some(0)),
            "nothing kept before the first read"
        );
        let rows: Vec<(i64,)> = db
            .fetch_all(sqlx::query_as(
                "SELECT CAST(1 AS BIGINT) UNION ALL SELECT 2",
            ))
            .await
            .expect("read");
        assert_eq!(rows, [(1,), (2,)]);
        assert_eq!(
            kept(),
            before.map(|_| 1),
            "kept after the read on PostgreSQL"
        );
        let mut abandoned = db.read_connection().await.expect("connection");
        let one: i64 = sqlx::query_scalar("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&mut *abandoned)
            .await
            .expect("read");
        assert_eq!(one, 1);
        assert_eq!(kept(), before.map(|_| 0), "in use, not kept");
        drop(abandoned);
        assert_eq!(
            kept(),
            before.map(|_| 0),
            "dropped before done: back to the pool"
        );
        let mut finished = db.read_connection().await.expect("connection");
        sqlx::query_scalar::<_, i64>("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&mut *finished)
            .await
            .expect("read");
        finished.done();
        assert_eq!(kept(), before.map(|_| 1), "done: kept");
    }

    #[test]
    fn unsupported_urls_are_refused_without_leaking_passwords() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let error = runtime
            .block_on(Database::open("mysql://u:pw@h/db", MIGRATIONS))
            .expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("unsupported"));
        assert!(!text.contains("pw@"));
    }

    /// Adds `password=...` to a URL's query, which the server may ignore (trust auth) but
    /// every message must hide.
    fn with_password(url: &str, password: &str) -> String {
        let join = if url.contains('?') { '&' } else { '?' };
        format!("{url}{join}password={password}")
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_named_at_once_without_the_password() {
        // A loopback port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let url = with_password(
            &format!("postgres://app:userinfo-secret@127.0.0.1:{port}/returns"),
            "query-secret",
        );
        let started = std::time::Instant::now();
        let error = Database::open(&url, MIGRATIONS)
            .await
            .expect_err("nobody listens there");
        let text = format!("{error} {error:?}");
        assert!(
            started.elapsed() < CONNECT_TIMEOUT,
            "took {:?}: {text}",
            started.elapsed()
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("PoolTimedOut"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("userinfo-secret"), "{text}");
        assert!(!text.contains("query-secret"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_database_is_named_without_the_password() {
        let target = crate::testing::TestDatabase::create().await;
        let (url, cause) = if target.is_postgres() {
            // The test database's name with a suffix: a database that does not exist.
            let (base, query) = match target.url.split_once('?') {
                Some((base, query)) => (base.to_owned(), format!("?{query}")),
                None => (target.url.clone(), String::new()),
            };
            (
                with_password(&format!("{base}_missing{query}"), "query-secret"),
                "does not exist",
            )
        } else {
            // Without mode=rwc SQLite opens only an existing file (and takes no password).
            let base = target.url.split_once('?').map_or(&*target.url, |(b, _)| b);
            (
                base.replace("test.db", "missing.db"),
                "unable to open database file",
            )
        };
        let error = Database::open(&url, MIGRATIONS)
            .await
            .expect_err("no such database");
        let text = error.to_string();
        assert!(text.contains(cause), "{text}");
        assert!(!text.contains("query-secret"), "{text}");
        if target.is_postgres() {
            assert!(text.contains("password=[redacted]"), "{text}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sqlite_files_and_their_folders_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| {
            let mode = std::fs::metadata(path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
                .permissions()
                .mode();
            // Octal text, so a failure reads "644" rather than 420.
            format!("{:03o}", mode & 0o777)
        };
        // A file-system property of SQLite files: the same on either test backend.
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("data").join("nested");
        let file = folder.join("service.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = Database::open(&url, MIGRATIONS).await.expect("open");
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('p', 1, 1, 0)")
            .execute(db.pool())
            .await
            .expect("a write, so the WAL exists");
        assert_eq!(mode(&dir.path().join("data")), "700");
        assert_eq!(mode(&folder), "700");
        assert_eq!(mode(&file), "600");
        let wal = folder.join("service.db-wal");
        assert_eq!(mode(&wal), "600");
        db.close().await;

        // An existing file keeps the mode its owner chose.
        let shared = dir.path().join("shared.db");
        std::fs::write(&shared, b"").expect("create");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let db = Database::open(
            &format!("sqlite://{}?mode=rwc", shared.display()),
            MIGRATIONS,
        )
        .await
        .expect("open an existing file");
        db.close().await;
        assert_eq!(mode(&shared), "640");
    }
}
