//! Deadlines that fire by themselves: due rows of the `deadlines` table are applied as domain
//! transitions (seller silent -> the buyer's request is granted; return not shipped -> closed
//! for the seller, and refunds told NOT_SHIPPED so it cancels the refund held for the
//! inspection), each in its own transaction with its history and outbox messages.
//!
//! `process_due_deadlines` is deterministic and what tests call; [`DeadlineWorker`] runs it in
//! the background (registered with the server, so `Suite::settle` drives it too) whenever the
//! test clock moves or a commit lands, and every few seconds otherwise. The rows live in the
//! database, so a restart loses none: the next pass picks them up.
//!
//! Any number of replicas run this worker on one database without a leader or a lease: a
//! deadline fires inside the transaction that locks its dispute (`FOR UPDATE`, as every RPC
//! does) and flips `fired` only if it is still 0, so of two replicas racing for it the second
//! finds it fired and changes nothing. Nothing crosses the network inside the pass (the
//! messages it causes go through the outbox), so there is no lease to take over at start.

use std::sync::Arc;
use std::time::Duration;

use returns_domain::negotiation::{self as n, DeadlineKind};
use returns_domain::time::Timestamp;
use returns_platform::db::retry_conflicts;
use returns_platform::worker::{Wake, Worker, run_forever};
use returns_platform::write_batch::WriteBatch;
use returns_platform::{ApiError, Database, SuiteContext};

use crate::store;

/// How often the worker looks for due deadlines when no clock movement wakes it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// At most this many deadlines per pass; the next pass continues.
const BATCH: i64 = 200;

/// Applies every deadline due at `now`; returns how many changed a dispute.
pub async fn process_due_deadlines(
    db: &Database,
    context: &SuiteContext,
    now: Timestamp,
) -> Result<usize, ApiError> {
    let mut applied = 0;
    loop {
        let due = store::due_deadlines(db, now, BATCH).await?;
        let batch_len = due.len();
        for deadline in due {
            if fire(db, context, &deadline, now).await? {
                applied += 1;
            }
        }
        if batch_len < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            return Ok(applied);
        }
    }
}

/// Fires one deadline; false when another worker got there first or it no longer applies.
async fn fire(
    db: &Database,
    context: &SuiteContext,
    deadline: &store::DueDeadline,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let (changed, wrote_outbox) = retry_conflicts(|| async {
        let mut tx = db.begin_write().await?;
        // Lock the dispute before the deadline row: the same order as every RPC, so the two
        // never deadlock.
        let Some((dispute, order)) =
            store::load_dispute_with_order(&mut tx, db, &deadline.dispute_id).await?
        else {
            tx.commit().await?;
            return Ok((false, false));
        };
        if !store::claim_deadline(&mut tx, deadline).await? {
            // Claimed by another pass, perhaps in this same SQLite batch and not durable yet:
            // committing (nothing) waits for that batch, so "nothing to do" is answered only
            // once the firing it saw is durable.
            tx.commit().await?;
            return Ok((false, false));
        }
        let command = match deadline.kind {
            DeadlineKind::SellerResponse => n::Command::SellerResponseExpired,
            DeadlineKind::ReturnShipBy => n::Command::ReturnShipByExpired,
        };
        match n::apply(&dispute, command, now, &context.policy) {
            Ok((next, events)) => {
                let mut writes = WriteBatch::new();
                let wrote = store::write_transition(
                    &mut writes,
                    dispute.version,
                    &next,
                    &events,
                    &order.facts,
                    now,
                )?;
                writes.execute(&mut tx).await?;
                tx.commit().await?;
                tracing::info!(dispute_id = %dispute.id, kind = %deadline.kind, "deadline fired");
                Ok((true, wrote))
            }
            Err(error) => {
                // The dispute moved on (the deadline row is stale): keep it fired, change nothing.
                tracing::debug!(dispute_id = %dispute.id, %error, "stale deadline skipped");
                tx.commit().await?;
                Ok((false, false))
            }
        }
    })
    .await?;
    if wrote_outbox {
        db.work_committed();
    }
    Ok(changed)
}

/// The deadline pass as a platform [`Worker`], so the suite's settler can drive it too.
#[derive(Debug, Clone)]
pub struct DeadlineWorker {
    db: Database,
    context: SuiteContext,
}

impl DeadlineWorker {
    pub fn new(db: Database, context: SuiteContext) -> Self {
        DeadlineWorker { db, context }
    }
}

#[tonic::async_trait]
impl Worker for DeadlineWorker {
    fn name(&self) -> &'static str {
        "disputes-deadlines"
    }

    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        process_due_deadlines(&self.db, &self.context, now).await
    }
}

/// Aborts the worker when the last handle of the service that started it is dropped.
#[derive(Debug)]
pub struct WorkerGuard(tokio::task::JoinHandle<()>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the deadline loop on the current runtime (none outside one): woken when the test
/// clock moves or a commit lands, and every [`POLL_INTERVAL`] otherwise.
pub fn spawn_worker(db: Database, context: SuiteContext) -> Option<Arc<WorkerGuard>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let wake = Wake {
        commits: Some(db.work_signal().subscribe()),
        clock_moved: context.test_clock.as_ref().map(|clock| clock.subscribe()),
    };
    let clock = context.clock.clone();
    let worker: Arc<dyn Worker> = Arc::new(DeadlineWorker::new(db, context));
    let task = handle.spawn(run_forever(worker, clock, wake, POLL_INTERVAL));
    Some(Arc::new(WorkerGuard(task)))
}
