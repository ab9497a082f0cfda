//! Retention: idempotency keys, inbox rows and delivered outbox rows are kept for a set time,
//! then deleted by a background [`Worker`] in bounded batches, in every service.
//!
//! What each table is kept for decides its default:
//! - an idempotency key answers a client's retry with the first response; 30 days covers any
//!   client's retry window, and a retry after that is a new request;
//! - an inbox row makes a redelivered message a no-op; the relay gives up on a message after
//!   its attempts (hours of backoff at most) and an operator retries a dead one within days,
//!   so 30 days is ample;
//! - a delivered outbox row is only a record for operators (`returns outbox list`); 7 days.
//!
//! DEAD (and discarded) outbox rows are never swept: they wait for an operator, and they have
//! no `delivered_at`. Pending rows have none either.
//!
//! Clocks: idempotency keys and inbox rows are stamped with the business clock (the test
//! clock in tests), so they age by the `now` the worker is given; outbox times are wall
//! clock (see [`crate::outbox`]), so delivered rows age by wall time.
//!
//! Each statement deletes at most [`BATCH`] rows in its own short write transaction, by an
//! index on the timestamp it ages by (migration `0020_retention.sql` of every service), so a
//! backlog never holds SQLite's write lock or PostgreSQL row locks for long; the worker loop
//! runs again at once while a pass deleted anything.

use std::sync::Mutex;
use std::time::Duration;

use returns_domain::time::{Timestamp, to_unix_micros};

use crate::db::Database;
use crate::error::ApiError;
use crate::outbox::wall_micros;
use crate::worker::Worker;

/// Days an idempotency key or an inbox row is kept by default.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Days a delivered outbox row is kept by default.
pub const DEFAULT_OUTBOX_RETENTION_DAYS: u32 = 7;
/// Rows one statement deletes at most.
pub const BATCH: i64 = 1000;
/// Once a sweep finds nothing old enough, the next waits this long (business time): rows
/// come of age slowly, and the loop is also woken by every commit that wakes the relay.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);
/// The worker loop's poll interval (a sweep is due at most every [`SWEEP_EVERY`]).
pub const RETENTION_POLL: Duration = SWEEP_EVERY;

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Idempotency keys and inbox rows, in days of business time.
    pub days: u32,
    /// Delivered outbox rows, in days of wall time.
    pub outbox_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            days: DEFAULT_RETENTION_DAYS,
            outbox_days: DEFAULT_OUTBOX_RETENTION_DAYS,
        }
    }
}

/// Rows one sweep deleted, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub idempotency_keys: u64,
    pub inbox: u64,
    pub outbox: u64,
}

impl Swept {
    pub fn total(&self) -> u64 {
        self.idempotency_keys + self.inbox + self.outbox
    }
}

/// Deletes expired idempotency keys, inbox rows and delivered outbox rows of one database.
pub struct RetentionSweeper {
    db: Database,
    retention: Retention,
    /// When a sweep last found nothing to delete (business time), to space idle sweeps.
    idle_since: Mutex<Option<Timestamp>>,
}

impl RetentionSweeper {
    pub fn new(db: Database, retention: Retention) -> Self {
        RetentionSweeper {
            db,
            retention,
            idle_since: Mutex::new(None),
        }
    }

    /// One batch per table: what is older than the retention at `now_micros` (business
    /// clock) for keys and inbox rows, at `wall_now_micros` for delivered outbox rows.
    pub async fn sweep(&self, now_micros: i64, wall_now_micros: i64) -> Result<Swept, ApiError> {
        let keep = i64::from(self.retention.days) * MICROS_PER_DAY;
        let keep_outbox = i64::from(self.retention.outbox_days) * MICROS_PER_DAY;
        Ok(Swept {
            idempotency_keys: self
                .delete(
                    "DELETE FROM idempotency_keys WHERE (operation, caller_id, request_id) IN \
                     (SELECT operation, caller_id, request_id FROM idempotency_keys \
                      WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                    now_micros.saturating_sub(keep),
                )
                .await?,
            inbox: self
                .delete(
                    "DELETE FROM inbox WHERE message_id IN \
                     (SELECT message_id FROM inbox \
                      WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
                    now_micros.saturating_sub(keep),
                )
                .await?,
            // Only delivered rows: dead, discarded and pending ones have no delivered_at.
            outbox: self
                .delete(
                    "DELETE FROM outbox WHERE message_id IN \
                     (SELECT message_id FROM outbox \
                      WHERE delivered_at IS NOT NULL AND delivered_at < $1 \
                      ORDER BY delivered_at LIMIT $2)",
                    wall_now_micros.saturating_sub(keep_outbox),
                )
                .await?,
        })
    }

    /// One bounded DELETE in its own write transaction.
    async fn delete(&self, sql: &str, older_than: i64) -> Result<u64, ApiError> {
        let mut tx = self.db.begin_write().await?;
        let deleted = sqlx::query(sql)
            .bind(older_than)
            .bind(BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }
}

#[tonic::async_trait]
impl Worker for RetentionSweeper {
    fn name(&self) -> &'static str {
        "retention"
    }

    /// Rows age into retention with time; a commit never makes one due.
    fn wakes_on_commits(&self) -> bool {
        false
    }

    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        let idle_since = self.idle_since.lock().map(|at| *at).unwrap_or(None);
        if let Some(idle) = idle_since
            && now.signed_duration_since(idle).to_std().unwrap_or_default() < SWEEP_EVERY
        {
            return Ok(0);
        }
        let swept = self.sweep(to_unix_micros(now), wall_micros()).await?;
        if swept.total() > 0 {
            tracing::debug!(?swept, "retention sweep");
        } else if let Ok(mut idle) = self.idle_since.lock() {
            *idle = Some(now);
        }
        Ok(usize::try_from(swept.total()).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Migrations, column};
    use crate::idempotency::{record_first, recorded, request_hash};
    use crate::testing::{TestDatabase, test_start};
    use returns_domain::time::{Clock, ManualClock};

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    const DAY: Duration = Duration::from_secs(86_400);

    fn body(seconds: i64) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos: 0 }
    }

    async fn remember(db: &Database, request_id: &str, at: Timestamp) {
        let mut tx = db.begin_write().await.expect("begin");
        let mut writes = crate::write_batch::WriteBatch::new();
        record_first(
            &mut writes,
            "Op",
            "b-1",
            request_id,
            &request_hash(&body(1)),
            &body(42),
            to_unix_micros(at),
        );
        writes.execute(&mut tx).await.expect("record");
        tx.commit().await.expect("commit");
    }

    async fn replayed(db: &Database, request_id: &str) -> Option<prost_types::Duration> {
        recorded(db, "Op", "b-1", request_id, &request_hash(&body(1)))
            .await
            .expect("replay")
    }

    async fn receive(db: &Database, message_id: &str, at: Timestamp) {
        let mut tx = db.begin_write().await.expect("begin");
        let first = crate::outbox::accept_once(&mut tx, message_id, "test", at)
            .await
            .expect("inbox");
        assert!(first);
        tx.commit().await.expect("commit");
    }

    /// An outbox row as the relay leaves it: delivered, dead, or still pending.
    async fn outbox_row(db: &Database, id: &str, delivered_at: Option<i64>, dead_at: Option<i64>) {
        sqlx::query(
            "INSERT INTO outbox (message_id, destination, kind, payload, created_at, attempts, \
             next_attempt_at, delivered_at, dead_at) VALUES ($1, 'refunds', 'CreateRefund', $2, \
             $3, 1, $3, $4, $5)",
        )
        .bind(id)
        .bind(Vec::<u8>::new())
        .bind(delivered_at.or(dead_at).unwrap_or(0) - 1)
        .bind(delivered_at)
        .bind(dead_at)
        .execute(db.pool())
        .await
        .expect("insert outbox row");
    }

    async fn ids(db: &Database, sql: &str) -> Vec<String> {
        let rows = sqlx::query(sql).fetch_all(db.pool()).await.expect("select");
        let mut ids: Vec<String> = rows
            .iter()
            .map(|row| column(row, "id").expect("id"))
            .collect();
        ids.sort();
        ids
    }

    /// Runs the worker the way its loop does: again at once while a pass deleted anything.
    async fn run_to_idle(worker: &RetentionSweeper, clock: &ManualClock) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            let done = worker.run_once(clock.now()).await.expect("sweep");
            if done == 0 {
                return total;
            }
            total += done;
        }
        panic!("the sweeper never went idle");
    }

    #[tokio::test]
    async fn rows_older_than_the_retention_go_newer_and_dead_ones_stay() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let clock = ManualClock::new(test_start());
        let start = clock.now();
        remember(&db, "r-old", start).await;
        receive(&db, "m-old", start).await;
        clock.advance(DAY * 20);
        remember(&db, "r-new", clock.now()).await;
        receive(&db, "m-new", clock.now()).await;

        // Outbox rows age by wall time: delivered 8 days ago goes, 6 days ago stays; dead
        // rows stay however old.
        let wall = wall_micros();
        let days = |n: i64| n * MICROS_PER_DAY;
        outbox_row(&db, "o-delivered-old", Some(wall - days(8)), None).await;
        outbox_row(&db, "o-delivered-new", Some(wall - days(6)), None).await;
        outbox_row(&db, "o-dead-old", None, Some(wall - days(400))).await;
        outbox_row(&db, "o-pending", None, None).await;

        let worker = RetentionSweeper::new(db.clone(), Retention::default());
        // Day 20: no key or inbox row is 30 days old yet; the old delivered row goes.
        assert_eq!(run_to_idle(&worker, &clock).await, 1);
        // Day 31: the first key and inbox row are past the window, the newer ones are not.
        clock.advance(DAY * 11);
        assert_eq!(run_to_idle(&worker, &clock).await, 2);

        assert_eq!(
            ids(&db, "SELECT request_id AS id FROM idempotency_keys").await,
            ["r-new"]
        );
        assert_eq!(
            ids(&db, "SELECT message_id AS id FROM inbox").await,
            ["m-new"]
        );
        assert_eq!(
            ids(&db, "SELECT message_id AS id FROM outbox").await,
            ["o-dead-old", "o-delivered-new", "o-pending"]
        );
        // A replay within the window still answers with the first response; the expired
        // key is a new request now.
        assert_eq!(replayed(&db, "r-new").await, Some(body(42)));
        assert_eq!(replayed(&db, "r-old").await, None);
    }

    #[tokio::test]
    async fn a_backlog_goes_in_bounded_batches() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let clock = ManualClock::new(test_start());
        let backlog = usize::try_from(BATCH).expect("batch") * 2 + 5;
        let mut tx = db.begin_write().await.expect("begin");
        for i in 0..backlog {
            sqlx::query("INSERT INTO inbox (message_id, source, received_at) VALUES ($1, 'x', $2)")
                .bind(format!("m-{i}"))
                .bind(to_unix_micros(clock.now()))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
        clock.advance(DAY * 31);

        let worker = RetentionSweeper::new(db.clone(), Retention::default());
        let mut passes = Vec::new();
        loop {
            let done = worker.run_once(clock.now()).await.expect("sweep");
            passes.push(done);
            if done == 0 {
                break;
            }
            assert!(passes.len() < 10, "the backlog never drained: {passes:?}");
        }
        assert_eq!(passes, [1000, 1000, 5, 0]);
    }

    #[tokio::test]
    async fn the_retention_is_configurable() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let clock = ManualClock::new(test_start());
        remember(&db, "r-1", clock.now()).await;
        clock.advance(DAY * 3);
        let worker = RetentionSweeper::new(
            db.clone(),
            Retention {
                days: 2,
                outbox_days: 1,
            },
        );
        assert_eq!(run_to_idle(&worker, &clock).await, 1);
        assert_eq!(replayed(&db, "r-1").await, None);
    }
}
