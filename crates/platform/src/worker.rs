//! Durable background work (deadlines, settlement, outbox delivery) as one shape: a
//! [`Worker`] does everything due at an instant and says how much it did.
//!
//! Production runs each worker in [`run_forever`], woken by commits that create work, by the
//! test clock moving, or by a poll interval (a safety net only). The test clock's
//! `AdvanceClock` drives the same registered workers to quiescence (see
//! [`crate::test_clock`]), so tests never sleep waiting for a loop.
//!
//! Two clocks, one per purpose: `run_once` and [`Worker::next_due`] speak the business clock
//! (deadlines, payment timelines), while retries, backoff and leases are wall time
//! ([`Worker::next_retry`]): an outage does not end because a test clock moved.

use std::sync::Arc;
use std::time::Duration;

use returns_domain::time::{Clock, Timestamp};
use tokio::sync::watch;

use crate::error::ApiError;

/// Background work that is due at some instant and durable in the database.
#[tonic::async_trait]
pub trait Worker: Send + Sync + 'static {
    /// For logs and for the test clock's report.
    fn name(&self) -> &'static str;

    /// Does the work due at `now`; returns how many items it completed (0 = idle).
    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError>;

    /// The earliest business-clock instant at which work not yet due becomes due (a
    /// deadline, a refund's release or status check), so the test clock can stop there on
    /// its way forward. `None` when nothing is scheduled by the business clock.
    async fn next_due(&self) -> Result<Option<Timestamp>, ApiError> {
        Ok(None)
    }

    /// How long (wall time) until work now waiting out a retry backoff may run again.
    /// `None` when nothing is backing off.
    async fn next_retry(&self) -> Result<Option<Duration>, ApiError> {
        Ok(None)
    }

    /// Whether a commit to the worker's database may have made work for it. A worker whose
    /// work only comes with time (a sweeper of old rows) says no and runs at its poll only,
    /// instead of a pass after every commit of a busy service.
    fn wakes_on_commits(&self) -> bool {
        true
    }
}

/// Signals that work was committed (an outbox row, a refund to settle): every worker loop
/// wakes. A counter in a watch channel rather than a `Notify`, so a signal sent while a loop
/// is busy is not lost: the loop sees the counter moved and runs again at once.
#[derive(Debug, Clone)]
pub struct WorkSignal {
    sender: Arc<watch::Sender<u64>>,
}

impl Default for WorkSignal {
    fn default() -> Self {
        WorkSignal {
            sender: Arc::new(watch::channel(0).0),
        }
    }
}

impl WorkSignal {
    /// Wakes every loop subscribed to this signal.
    pub fn notify(&self) {
        self.sender
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// What wakes a worker loop before its poll interval.
#[derive(Debug, Clone)]
pub struct Wake {
    /// Commits to the worker's database; `None` for a worker that only polls.
    pub commits: Option<watch::Receiver<u64>>,
    pub clock_moved: Option<watch::Receiver<Timestamp>>,
}

/// Waits for the next change of `receiver`, or for ever once its sender is gone.
async fn changed<T>(receiver: Option<&mut watch::Receiver<T>>) {
    match receiver {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs `worker` until the task is aborted.
pub async fn run_forever(
    worker: Arc<dyn Worker>,
    clock: Arc<dyn Clock>,
    mut wake: Wake,
    poll: Duration,
) {
    loop {
        // Mark the signals seen before the pass: a commit during the pass wakes the next one.
        if let Some(commits) = wake.commits.as_mut() {
            commits.borrow_and_update();
        }
        if let Some(moved) = wake.clock_moved.as_mut() {
            moved.borrow_and_update();
        }
        match worker.run_once(clock.now()).await {
            // More may be waiting behind a full batch: go again at once.
            Ok(done) if done > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::error!(worker = worker.name(), %error, "background pass failed"),
        }
        // Wake for a retry that comes due before the poll interval.
        let retry = match worker.next_retry().await {
            Ok(Some(retry)) => retry.min(poll),
            _ => poll,
        };
        tokio::select! {
            () = changed(wake.commits.as_mut()) => {}
            () = changed(wake.clock_moved.as_mut()) => {}
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// A worker whose passes never overlap: the background loop and the test clock's
/// quiescence rounds take turns. Without this, a round could find nothing to do only
/// because the loop had just claimed the work, and report quiescence before that work was
/// committed.
pub struct Exclusive {
    inner: Arc<dyn Worker>,
    turn: tokio::sync::Mutex<()>,
    /// Items completed by every pass so far, background or test clock, for reports.
    completed: std::sync::atomic::AtomicU64,
}

impl Exclusive {
    pub fn new(inner: Arc<dyn Worker>) -> Self {
        Exclusive {
            inner,
            turn: tokio::sync::Mutex::new(()),
            completed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Items this worker has completed since it started, by whichever loop ran it.
    pub fn completed(&self) -> u64 {
        self.completed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl Worker for Exclusive {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        let _turn = self.turn.lock().await;
        let done = self.inner.run_once(now).await?;
        self.completed.fetch_add(
            u64::try_from(done).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(done)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, ApiError> {
        let _turn = self.turn.lock().await;
        self.inner.next_due().await
    }

    async fn next_retry(&self) -> Result<Option<Duration>, ApiError> {
        let _turn = self.turn.lock().await;
        self.inner.next_retry().await
    }

    fn wakes_on_commits(&self) -> bool {
        self.inner.wakes_on_commits()
    }
}

/// A registered worker with the service that runs it.
type Registered = (&'static str, Arc<Exclusive>);

/// The workers of one process, so the test clock can drive all of them (every service the
/// process runs) to quiescence.
#[derive(Clone, Default)]
pub struct WorkerRegistry {
    workers: Arc<std::sync::Mutex<Vec<Registered>>>,
}

impl std::fmt::Debug for WorkerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRegistry")
            .field("workers", &self.all().len())
            .finish()
    }
}

impl WorkerRegistry {
    /// Adds `worker`, run by `service`.
    pub fn register(&self, service: &'static str, worker: Arc<Exclusive>) {
        if let Ok(mut workers) = self.workers.lock() {
            workers.push((service, worker));
        }
    }

    /// Every registered worker with the service that runs it.
    pub fn all(&self) -> Vec<Registered> {
        self.workers
            .lock()
            .map(|workers| workers.clone())
            .unwrap_or_default()
    }

    /// Forgets the workers of a stopped service (they would only fail from now on).
    pub fn remove(&self, worker: &Arc<Exclusive>) {
        if let Ok(mut workers) = self.workers.lock() {
            workers.retain(|(_, w)| !Arc::ptr_eq(w, worker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_domain::time::ManualClock;
    use tokio::sync::mpsc;

    /// Reports the (paused, virtual) tokio instant of each of its passes.
    struct Passes {
        on_commits: bool,
        passes: mpsc::UnboundedSender<tokio::time::Instant>,
    }

    #[tonic::async_trait]
    impl Worker for Passes {
        fn name(&self) -> &'static str {
            "passes"
        }

        async fn run_once(&self, _now: Timestamp) -> Result<usize, ApiError> {
            let _ = self.passes.send(tokio::time::Instant::now());
            Ok(0)
        }

        fn wakes_on_commits(&self) -> bool {
            self.on_commits
        }
    }

    /// Starts `worker` the way the server does and returns when its first pass is done.
    async fn start(
        on_commits: bool,
        signal: &WorkSignal,
        poll: Duration,
    ) -> mpsc::UnboundedReceiver<tokio::time::Instant> {
        let (passes, mut seen) = mpsc::unbounded_channel();
        let worker: Arc<dyn Worker> = Arc::new(Passes { on_commits, passes });
        let wake = Wake {
            commits: worker.wakes_on_commits().then(|| signal.subscribe()),
            clock_moved: None,
        };
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(chrono::Utc::now()));
        tokio::spawn(run_forever(worker, clock, wake, poll));
        seen.recv().await.expect("the first pass runs at start");
        seen
    }

    // Paused time: the runtime jumps to the next timer when every task waits, so "woken at
    // once" and "woken only by the poll" differ by the poll interval, without any sleeping.
    #[tokio::test(start_paused = true)]
    async fn a_commit_wakes_the_workers_that_ask_for_it_and_not_the_pollers() {
        let poll = Duration::from_secs(3600);
        let signal = WorkSignal::default();
        let mut woken = start(true, &signal, poll).await;
        let mut poller = start(false, &signal, poll).await;
        let committed_at = tokio::time::Instant::now();
        signal.notify();
        let next = woken.recv().await.expect("a pass after the commit");
        assert!(
            next - committed_at < poll,
            "the commit woke the worker at once"
        );
        let next = poller.recv().await.expect("a pass at the poll");
        assert!(
            next - committed_at >= poll - Duration::from_secs(1),
            "the poll-only worker ran {:?} after the commit, before its poll",
            next - committed_at
        );
    }
}
