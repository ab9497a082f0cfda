//! `returns.testing.v1.TestClockService`: moves the suite's manual clock from outside, the
//! way payment platforms offer test clocks, so 15-day windows can be tested in seconds.
//!
//! Only mounted when `RETURNS_TEST_CLOCK=1`; the launcher shares one clock between all
//! three services so their deadlines stay consistent with each other.
//!
//! Like a payment platform's test clock, `AdvanceClock` returns only when everything due by
//! the new time has run: it walks the clock forward through each instant a registered worker
//! has work due (deadlines, refund releases and status checks), running every worker of the
//! process to quiescence at each stop: deadlines fire, outbox rows are delivered over gRPC by
//! the real relay and applied by their receivers, refunds are submitted and checked. It
//! drives the same workers production runs, through the same code paths; only the clock
//! is manual. In a deployment of separate processes each process drives its own workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use returns_domain::time::{Clock, ManualClock, Timestamp};
use returns_proto::testing::v1::test_clock_service_server::{
    TestClockService, TestClockServiceServer,
};
use returns_proto::testing::v1::{
    AdvanceClockRequest, AdvanceClockResponse, NowRequest, NowResponse, WorkerRun,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::worker::{Worker, WorkerRegistry};

/// The longest single jump, so a typo cannot move the clock centuries ahead.
const MAX_ADVANCE_SECONDS: i64 = 400 * 24 * 3600;

/// The manual clock plus a signal that fires whenever it moves, so deadline workers
/// re-check at once instead of on their next poll.
#[derive(Debug, Clone)]
pub struct SharedTestClock {
    clock: ManualClock,
    moved: Arc<watch::Sender<Timestamp>>,
    /// The background workers of every service on this clock, which `AdvanceClock` drives.
    workers: WorkerRegistry,
}

impl SharedTestClock {
    pub fn new(clock: ManualClock) -> Self {
        let (moved, _) = watch::channel(clock.now());
        SharedTestClock {
            clock,
            moved: Arc::new(moved),
            workers: WorkerRegistry::default(),
        }
    }

    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Where services on this clock register their workers.
    pub fn workers(&self) -> &WorkerRegistry {
        &self.workers
    }

    /// Moves the clock forward and wakes everyone watching it.
    pub fn advance(&self, by: std::time::Duration) -> Timestamp {
        let now = self.clock.advance(by);
        self.moved.send_replace(now);
        now
    }

    /// Moves the clock forward to `to` (never back) and wakes everyone watching it.
    pub fn move_to(&self, to: Timestamp) -> Timestamp {
        let now = self.clock.now();
        if to > now {
            self.clock.set(to);
        }
        let now = self.clock.now();
        self.moved.send_replace(now);
        now
    }

    /// A receiver that changes every time the clock moves.
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.moved.subscribe()
    }
}

/// How long quiescence waits for a retry that is about to come due (a delivery backing
/// off for half a second after a busy receiver); longer backoffs are reported, not waited.
const SHORT_RETRY: Duration = Duration::from_secs(1);
/// The most real time one call spends waiting for short retries.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// Rounds without quiescence before giving up (a worker that never runs out of work).
const MAX_ROUNDS: usize = 1_000;
/// Stops on the way to the target (each a due instant); beyond this the clock jumps.
const MAX_STOPS: i64 = 5_000;

/// What driving the workers to quiescence did.
#[derive(Debug, Default)]
pub struct Quiescence {
    /// Items done per (service, worker).
    pub work: BTreeMap<(&'static str, &'static str), i64>,
    pub stops: i64,
    /// Workers with items still backing off (wall-clock retries not yet due).
    pub backing_off: i64,
}

/// Runs every registered worker at the clock's current instant, round after round, until a
/// whole round does nothing and no retry is about to come due.
async fn quiesce(
    workers: &WorkerRegistry,
    clock: &ManualClock,
    report: &mut Quiescence,
) -> Result<(), ApiError> {
    let mut waited = Duration::ZERO;
    for _ in 0..MAX_ROUNDS {
        let mut done = 0;
        for (service, worker) in workers.all() {
            match worker.run_once(clock.now()).await {
                Ok(items) => done += items,
                Err(error) => {
                    tracing::warn!(service, worker = worker.name(), %error, "worker pass failed");
                }
            }
        }
        if done > 0 {
            continue;
        }
        let mut soonest: Option<Duration> = None;
        report.backing_off = 0;
        for (_, worker) in workers.all() {
            if let Ok(Some(retry)) = worker.next_retry().await {
                report.backing_off += 1;
                soonest = Some(soonest.map_or(retry, |s| s.min(retry)));
            }
        }
        match soonest {
            Some(retry) if retry <= SHORT_RETRY && waited + retry <= MAX_RETRY_WAIT => {
                // Real time must pass for a backoff; the test clock cannot hurry it.
                let pause = retry.max(Duration::from_millis(5));
                tokio::time::sleep(pause).await;
                waited += pause;
            }
            _ => return Ok(()),
        }
    }
    Err(ApiError::Aborted(format!(
        "background work did not settle after {MAX_ROUNDS} rounds"
    )))
}

/// The earliest business instant after `now` at which some worker has work.
async fn next_stop(workers: &WorkerRegistry, now: Timestamp) -> Option<Timestamp> {
    let mut next: Option<Timestamp> = None;
    for (_, worker) in workers.all() {
        if let Ok(Some(due)) = worker.next_due().await
            && due > now
        {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
    }
    next
}

/// Moves `clock` to `target`, stopping at every instant some worker has work due on the way
/// and running everything to quiescence there, so each deadline and each payment step
/// happens at its own time, as it would have with real time passing.
pub async fn advance_to_quiescence(
    clock: &SharedTestClock,
    workers: &WorkerRegistry,
    target: Timestamp,
) -> Result<Quiescence, ApiError> {
    let mut report = Quiescence::default();
    // Background loops wake when the clock moves and may do the work before a quiescence
    // round gets its turn: the report counts what every loop completed meanwhile.
    let before: Vec<u64> = workers.all().iter().map(|(_, w)| w.completed()).collect();
    loop {
        quiesce(workers, &clock.clock, &mut report).await?;
        let now = clock.clock.now();
        if now >= target {
            for ((service, worker), started) in workers.all().iter().zip(before) {
                let items = worker.completed().saturating_sub(started);
                if items > 0 {
                    *report.work.entry((service, worker.name())).or_default() +=
                        i64::try_from(items).unwrap_or(i64::MAX);
                }
            }
            return Ok(report);
        }
        let stop = match next_stop(workers, now).await {
            Some(due) if due < target && report.stops < MAX_STOPS => {
                report.stops += 1;
                due
            }
            _ => target,
        };
        clock.move_to(stop);
    }
}

/// The gRPC face of a [`SharedTestClock`].
#[derive(Debug, Clone)]
pub struct TestClockGrpc {
    clock: SharedTestClock,
    workers: WorkerRegistry,
    /// One advance at a time: two interleaved walks would move the clock back and forth.
    advancing: Arc<tokio::sync::Mutex<()>>,
}

impl TestClockGrpc {
    pub fn server(clock: SharedTestClock) -> TestClockServiceServer<TestClockGrpc> {
        TestClockServiceServer::new(TestClockGrpc {
            workers: clock.workers.clone(),
            clock,
            advancing: Arc::default(),
        })
    }
}

#[tonic::async_trait]
impl TestClockService for TestClockGrpc {
    async fn advance_clock(
        &self,
        request: Request<AdvanceClockRequest>,
    ) -> Result<Response<AdvanceClockResponse>, Status> {
        let seconds = request.into_inner().seconds;
        if !(0..=MAX_ADVANCE_SECONDS).contains(&seconds) {
            return Err(ApiError::invalid(
                "seconds",
                format!("must be between 0 and {MAX_ADVANCE_SECONDS} (the clock never goes back)"),
            )
            .into());
        }
        let _advancing = self.advancing.lock().await;
        let target = self
            .clock
            .clock
            .now()
            .checked_add_signed(chrono::Duration::seconds(seconds))
            .ok_or_else(|| ApiError::invalid("seconds", "moves the clock past its range"))?;
        let report = advance_to_quiescence(&self.clock, &self.workers, target).await?;
        Ok(Response::new(AdvanceClockResponse {
            now: Some(returns_proto::convert::timestamp_to_proto(
                self.clock.clock.now(),
            )),
            work: report
                .work
                .into_iter()
                .map(|((service, worker), items)| WorkerRun {
                    service: service.to_string(),
                    worker: worker.to_string(),
                    items,
                })
                .collect(),
            stops: report.stops,
            backing_off: report.backing_off,
        }))
    }

    async fn now(&self, _request: Request<NowRequest>) -> Result<Response<NowResponse>, Status> {
        Ok(Response::new(NowResponse {
            now: Some(returns_proto::convert::timestamp_to_proto(
                self.clock.clock.now(),
            )),
        }))
    }
}
