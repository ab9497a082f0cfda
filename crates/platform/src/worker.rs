//! Durable background work (deadlines, settlement, outbox delivery) as one shape: a
//! [`Worker`] does everything due at an instant and says how much it did.
//!
//! Production runs each worker in [`run_forever`], woken by commits, by the test clock
//! moving, or by a poll interval. Tests and the demo call [`Worker::run_once`] (through
//! `Suite::settle`) until nothing is left to do, so they never sleep waiting for a loop.

use std::sync::Arc;
use std::time::Duration;

use returns_domain::time::{Clock, Timestamp};
use tokio::sync::{Notify, watch};

use crate::error::ApiError;

/// Background work that is due at some instant and durable in the database.
#[tonic::async_trait]
pub trait Worker: Send + Sync + 'static {
    /// For logs.
    fn name(&self) -> &'static str;

    /// Does the work due at `now`; returns how many items it completed (0 = idle).
    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError>;
}

/// What wakes a worker loop before its poll interval.
#[derive(Debug, Clone)]
pub struct Wake {
    pub commits: Arc<Notify>,
    pub clock_moved: Option<watch::Receiver<Timestamp>>,
}

/// Runs `worker` until the task is aborted.
pub async fn run_forever(
    worker: Arc<dyn Worker>,
    clock: Arc<dyn Clock>,
    mut wake: Wake,
    poll: Duration,
) {
    loop {
        match worker.run_once(clock.now()).await {
            // More may be waiting behind a full batch: go again at once.
            Ok(done) if done > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::error!(worker = worker.name(), %error, "background pass failed"),
        }
        let clock_moved = async {
            match wake.clock_moved.as_mut() {
                Some(receiver) => {
                    if receiver.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wake.commits.notified() => {}
            () = clock_moved => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// A worker whose passes never overlap: the background loop and a test's or the demo's
/// `Suite::settle` take turns. Without this, a settle round could find nothing to do only
/// because the loop had just claimed the work, and return before that work was committed.
pub struct Exclusive {
    inner: Arc<dyn Worker>,
    turn: tokio::sync::Mutex<()>,
}

impl Exclusive {
    pub fn new(inner: Arc<dyn Worker>) -> Self {
        Exclusive {
            inner,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for any pass in progress to finish and holds off new ones while the guard lives
    /// (for work done on the worker's data outside `run_once`, such as forced deliveries).
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

#[tonic::async_trait]
impl Worker for Exclusive {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        let _turn = self.turn.lock().await;
        self.inner.run_once(now).await
    }
}
