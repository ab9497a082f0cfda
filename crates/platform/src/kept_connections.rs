//! Pooled connections kept between statements, so that a statement that completed does not
//! pay for sqlx's check of every connection it takes back.
//!
//! sqlx's pool tests every connection returned to it with a ping before it is idle again
//! (`return_to_pool` in sqlx-core 0.8: a Sync and its ReadyForQuery on PostgreSQL, a hop to
//! the connection's thread on SQLite), because a connection whose caller stopped in the middle
//! of an exchange may hold half a reply. That is a round trip after every statement made
//! through the pool: on PostgreSQL it wakes the backend and then one of our workers once more
//! for each read, and the combined writes' one runner could not start its next statement
//! until the ping of its last had come back. A connection whose statement ran to its end
//! (an answer or an error from the database) is in a known state and needs no such check, so
//! it is kept here and handed out again as is; one whose caller stopped waiting is dropped,
//! and sqlx's own return settles it.
//!
//! Kept connections stay checked out of the pool, where a caller waiting for one would not
//! see them come free: so the connections in use through here, kept or taken from the pool,
//! are at most `capacity` at once, and callers beyond that wait their turn here, first come
//! first served (a first version let them wait in the pool instead, and while the ones taking
//! kept connections went straight on, those starved: CreateRefund at C = 32 had a p99 of
//! 108.9 ms against 22.8 ms). The rest of the pool stays for the code that uses it directly.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections of one pool kept between statements, the most recently used first.
pub(crate) struct KeptConnections {
    pool: AnyPool,
    idle: Mutex<Vec<Idle>>,
    capacity: usize,
    /// One per connection in use through here; waited for in turn, as long as the pool's
    /// own acquire timeout at most.
    turns: Arc<Semaphore>,
    /// A connection kept longer than this is pinged before it is handed out again, as the
    /// pool's own `before_acquire` does (a network or a proxy may have dropped it).
    ping_when_idle_for: Duration,
}

impl std::fmt::Debug for KeptConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptConnections")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

struct Idle {
    connection: PoolConnection<Any>,
    since: Instant,
}

impl KeptConnections {
    pub(crate) fn new(pool: AnyPool, capacity: usize, ping_when_idle_for: Duration) -> Self {
        KeptConnections {
            pool,
            idle: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            turns: Arc::new(Semaphore::new(capacity)),
            ping_when_idle_for,
        }
    }

    /// A connection, once it is this caller's turn: a kept one when there is one (pinged
    /// first if it sat idle a while), else one from the pool. Waiting longer than the pool's
    /// acquire timeout is `PoolTimedOut`, as the pool's own wait would be.
    pub(crate) async fn take(self: &Arc<Self>) -> Result<KeptConnection, sqlx::Error> {
        let turn = tokio::time::timeout(
            self.pool.options().get_acquire_timeout(),
            Arc::clone(&self.turns).acquire_owned(),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
        .map_err(|_| sqlx::Error::PoolClosed)?;
        while let Some(idle) = self.pop() {
            let mut connection = idle.connection;
            if idle.since.elapsed() < self.ping_when_idle_for || connection.ping().await.is_ok() {
                return Ok(self.hand_out(connection, turn));
            }
            // Dead: dropping it gives it back to the pool, which closes it.
        }
        let connection = self.pool.acquire().await?;
        Ok(self.hand_out(connection, turn))
    }

    fn hand_out(
        self: &Arc<Self>,
        connection: PoolConnection<Any>,
        turn: OwnedSemaphorePermit,
    ) -> KeptConnection {
        KeptConnection {
            connection,
            home: Arc::clone(self),
            turn,
        }
    }

    /// Refuses every later `take` (`PoolClosed`) and gives the kept connections back to the
    /// pool, so that closing the pool, which waits for its connections, can finish.
    pub(crate) fn close(&self) {
        // Under the lock `keep` checks `turns` under, so none is kept after this.
        let idle = self.idle.lock();
        self.turns.close();
        if let Ok(mut idle) = idle {
            idle.clear();
        }
    }

    fn pop(&self) -> Option<Idle> {
        self.idle.lock().ok()?.pop()
    }

    /// Keeps `connection` unless it is inside a transaction (then the pool takes it back and
    /// closes it) or these were closed. There is always room: no more than `capacity` are in
    /// use or kept.
    fn keep(&self, connection: PoolConnection<Any>) {
        if connection.is_in_transaction() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if !self.turns.is_closed() && idle.len() < self.capacity {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// How many connections are kept, idle, now.
    pub(crate) fn kept(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

/// A connection out of [`KeptConnections`]: `&mut *connection` is an executor. Call
/// [`KeptConnection::keep`] (or [`KeptConnection::keep_if_completed`]) when its statements
/// ran to their end; dropped without that (its caller stopped waiting, or its connection
/// failed) it goes back to sqlx's pool, which checks it.
pub(crate) struct KeptConnection {
    connection: PoolConnection<Any>,
    home: Arc<KeptConnections>,
    /// This caller's turn, released once the connection is kept or (fields drop in order)
    /// given back, so the next caller in line finds it.
    turn: OwnedSemaphorePermit,
}

impl KeptConnection {
    /// Its statements ran to their end (answered, or refused by the database): keep it.
    pub(crate) fn keep(self) {
        let KeptConnection {
            connection,
            home,
            turn,
        } = self;
        home.keep(connection);
        drop(turn);
    }

    /// Keeps it if `result` ended the exchange: an answer, or an error the database sent. Any
    /// other error (the connection failed, a decoding error mid-reply) leaves it to the pool.
    pub(crate) fn keep_if_completed<T>(self, result: &Result<T, sqlx::Error>) {
        if matches!(
            result,
            Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
        ) {
            self.keep();
        }
    }
}

impl Deref for KeptConnection {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.connection
    }
}

impl DerefMut for KeptConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.connection
    }
}

#[cfg(test)]
mod tests {
    use sqlx::TransactionManager;

    use super::*;
    use crate::testing::TestDatabase;

    /// A pool of its own over a fresh database (SQLite's URL creates the file).
    async fn pool_of(connections: u32) -> (TestDatabase, AnyPool) {
        let target = TestDatabase::create().await;
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(connections)
            .connect(&target.url)
            .await
            .expect("pool");
        (target, pool)
    }

    #[tokio::test]
    async fn a_connection_whose_statement_completed_is_kept_and_handed_out_again() {
        let (_target, pool) = pool_of(2).await;
        let kept = Arc::new(KeptConnections::new(
            pool.clone(),
            1,
            Duration::from_secs(60),
        ));
        let mut first = kept.take().await.expect("take");
        let answer: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT 1").fetch_one(&mut *first).await;
        first.keep_if_completed(&answer);
        assert_eq!(kept.kept(), 1, "kept after its statement completed");
        // Still checked out of the pool while kept: one of two is in use.
        assert_eq!(
            pool.size() - u32::try_from(pool.num_idle()).expect("few"),
            1
        );
        let second = kept.take().await.expect("take");
        assert_eq!(kept.kept(), 0, "the kept one was handed out again");
        drop(second);
    }

    #[tokio::test]
    async fn an_error_from_the_database_keeps_the_connection_and_a_dropped_one_goes_back_to_the_pool()
     {
        let (_target, pool) = pool_of(2).await;
        let kept = Arc::new(KeptConnections::new(
            pool.clone(),
            2,
            Duration::from_secs(60),
        ));
        let mut failing = kept.take().await.expect("take");
        let refused: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT no_such_column FROM no_such_table")
                .fetch_one(&mut *failing)
                .await;
        assert!(matches!(refused, Err(sqlx::Error::Database(_))));
        failing.keep_if_completed(&refused);
        assert_eq!(
            kept.kept(),
            1,
            "a database error leaves the exchange complete"
        );
        // The kept connection still answers.
        let mut again = kept.take().await.expect("take");
        let answer: i64 = sqlx::query_scalar("SELECT 2")
            .fetch_one(&mut *again)
            .await
            .expect("the kept connection answers");
        assert_eq!(answer, 2);
        // Dropped without `keep` (its caller stopped waiting): back to the pool, not kept.
        drop(again);
        assert_eq!(kept.kept(), 0);
    }

    #[tokio::test]
    async fn a_caller_beyond_the_capacity_waits_its_turn_and_gets_the_kept_connection() {
        let (_target, pool) = pool_of(3).await;
        let kept = Arc::new(KeptConnections::new(
            pool.clone(),
            1,
            Duration::from_secs(60),
        ));
        let first = kept.take().await.expect("take");
        let mut second = Box::pin(kept.take());
        assert!(
            futures::poll!(&mut second).is_pending(),
            "one in use already: the second waits its turn, not in the pool"
        );
        first.keep();
        let second = second.await.expect("its turn came");
        assert_eq!(kept.kept(), 0, "the second has the kept one");
        assert_eq!(pool.size(), 1, "one connection served both");
        drop(second);
    }

    #[tokio::test]
    async fn a_connection_inside_a_transaction_is_not_kept() {
        let (_target, pool) = pool_of(2).await;
        let kept = Arc::new(KeptConnections::new(
            pool.clone(),
            1,
            Duration::from_secs(60),
        ));
        let mut open = kept.take().await.expect("take");
        <Any as sqlx::Database>::TransactionManager::begin(&mut *open, None)
            .await
            .expect("begin");
        assert!(open.is_in_transaction());
        open.keep();
        assert_eq!(
            kept.kept(),
            0,
            "a connection inside a transaction is not kept"
        );
    }

    /// On PostgreSQL the kept connection's backend is terminated while it is kept: without the
    /// ping it would be handed out dead and the next statement would fail. (SQLite's file
    /// connections cannot be cut from outside; there the test shows a live one passes.)
    #[tokio::test]
    async fn a_connection_kept_a_while_is_pinged_and_replaced_when_it_died() {
        let (target, pool) = pool_of(2).await;
        // Anything kept is "idle a while" at once.
        let kept = Arc::new(KeptConnections::new(pool.clone(), 1, Duration::ZERO));
        let mut first = kept.take().await.expect("take");
        let backend: Result<i64, sqlx::Error> = if target.is_postgres() {
            sqlx::query_scalar("SELECT CAST(pg_backend_pid() AS BIGINT)")
                .fetch_one(&mut *first)
                .await
        } else {
            Ok(0)
        };
        let backend = backend.expect("backend pid");
        first.keep();
        assert_eq!(kept.kept(), 1);
        if target.is_postgres() {
            let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(i32::try_from(backend).expect("a pid"))
                .fetch_one(&pool)
                .await
                .expect("terminate");
            assert!(terminated);
        }
        let mut again = kept.take().await.expect("a connection that answers");
        let answer: i64 = sqlx::query_scalar("SELECT 3")
            .fetch_one(&mut *again)
            .await
            .expect("the connection handed out answers");
        assert_eq!(answer, 3);
    }
}
