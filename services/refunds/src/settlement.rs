//! The settlement engine: a worker that takes released refunds to the payment provider,
//! retries with capped exponential backoff, records every attempt and settles the outcome.
//!
//! Exactly-once rests on three things:
//! - claiming: a worker claims due refunds in a short transaction (`FOR UPDATE SKIP LOCKED`
//!   on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) by writing a lease (`claimed_by`,
//!   `lease_until`); another worker skips leased rows, so two workers never submit the same
//!   refund at the same time;
//! - no transaction is held across the provider call; the result is written afterwards only
//!   if the lease is still ours (version check);
//! - the provider idempotency key is derived from the refund id, so a resubmission after a
//!   crash (lease expired, outcome unknown) cannot pay twice.
//!
//! Refunds move PENDING -> SUBMITTED at the claim, before the provider sees them: from then
//! on a cancellation is refused, because the provider may already have paid.
//!
//! Two clocks, one per purpose. The business clock (`now`, the suite's clock, a manual one
//! in tests) decides when money work is due: `next_attempt_at` is a released refund's release
//! time, then its `expected_earliest` (when the money can have arrived), then `status_poll`
//! later while the provider is still processing. The wall clock decides retries and leases:
//! `retry_after` after a transient provider failure and `lease_until` are system time, so an
//! outage or a crashed worker's claim is not "over" because a test clock jumped days ahead,
//! and a provider keeps its real breathing space.

use std::sync::Arc;
use std::time::Duration;

use returns_domain::refund::{RefundAction, RefundStatus, retry_backoff, transition};
use returns_domain::time::{Clock, SystemClock, Timestamp, from_unix_micros, to_unix_micros};
use returns_platform::db::retry_conflicts;
use returns_platform::worker::{Wake, Worker, run_forever};
use returns_platform::{ApiError, Database, SuiteContext};

use crate::provider::{PaymentProvider, ProviderError, ProviderStatus, SubmitRequest};
use crate::store::{self, RefundRow};

/// Tuning of the worker; defaults in code.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// This worker's name, written into leases and attempts; by default the instance id
    /// (the host name, stable across restarts of one replica and distinct between
    /// replicas), so a restarted replica takes over exactly its own leases.
    pub worker_id: String,
    /// How long a claim keeps other workers away (wall time).
    pub lease: Duration,
    /// First retry delay after a transient failure (wall time); doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Submission attempts before a refund is marked FAILED.
    pub max_attempts: u32,
    /// How often a submitted refund's status is asked again while the provider processes it
    /// (business time: money moves on the business clock).
    pub status_poll: Duration,
    /// Refunds claimed per pass.
    pub batch: i64,
    /// Real-time poll interval of the background loop, a safety net: it also wakes on
    /// commits that create work, when the test clock moves and when a backoff ends.
    pub loop_interval: Duration,
}

impl SettlementConfig {
    pub fn named(worker_id: impl Into<String>) -> Self {
        SettlementConfig {
            worker_id: worker_id.into(),
            ..SettlementConfig::default()
        }
    }
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            worker_id: returns_platform::relay::instance_id(),
            lease: Duration::from_secs(120),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(3600),
            max_attempts: 8,
            status_poll: Duration::from_secs(3600),
            batch: 32,
            loop_interval: Duration::from_secs(1),
        }
    }
}

/// What one pass did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassSummary {
    pub claimed: usize,
    pub submitted: usize,
    pub retrying: usize,
    pub succeeded: usize,
    pub failed: usize,
}

/// One settlement worker over a database and a provider.
#[derive(Debug, Clone)]
pub struct Settlement {
    db: Database,
    provider: Arc<dyn PaymentProvider>,
    config: SettlementConfig,
    /// The business clock, for [`Worker::next_due`] (passes get `now` from their caller).
    clock: Arc<dyn Clock>,
    /// Provider calls and settlement latency, when the service records metrics.
    metrics: Option<crate::metrics::SettlementMetrics>,
}

/// The wall clock in unix microseconds.
pub fn wall_now_micros() -> i64 {
    to_unix_micros(SystemClock.now())
}

impl Settlement {
    /// The refunds database the worker settles from (its commits wake the worker).
    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn new(
        db: Database,
        provider: Arc<dyn PaymentProvider>,
        config: SettlementConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Settlement {
            db,
            provider,
            config,
            clock,
            metrics: None,
        }
    }

    /// Records provider calls and settlement latency on `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::SettlementMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Claims the refunds due at business instant `now`, talks to the provider for each and
    /// writes the outcomes; retries and leases are measured against the system clock.
    pub async fn process_due(&self, now: Timestamp) -> Result<PassSummary, ApiError> {
        self.process_due_at(now, wall_now_micros()).await
    }

    /// [`Settlement::process_due`] at an explicit wall-clock instant (unix microseconds), so
    /// tests can step past a backoff without sleeping. Deterministic for given instants and
    /// provider.
    pub async fn process_due_at(
        &self,
        now: Timestamp,
        wall_us: i64,
    ) -> Result<PassSummary, ApiError> {
        let claimed = retry_conflicts(|| self.claim(now, wall_us)).await?;
        let mut summary = PassSummary {
            claimed: claimed.len(),
            ..PassSummary::default()
        };
        for refund in claimed {
            let outcome = if refund.provider_reference.is_empty() {
                self.submit(refund, now, wall_us).await
            } else {
                self.check(refund, now, wall_us).await
            };
            match outcome {
                Ok(Outcome::Submitted) => summary.submitted += 1,
                Ok(Outcome::Retrying) => summary.retrying += 1,
                Ok(Outcome::Succeeded) => summary.succeeded += 1,
                Ok(Outcome::Failed) => summary.failed += 1,
                Ok(Outcome::Processing | Outcome::LostLease) => {}
                Err(error) => {
                    // The lease runs out and the refund is picked up again; the idempotency
                    // key makes the repeat harmless.
                    tracing::warn!(error = %error, "settlement step failed; will retry after the lease");
                }
            }
        }
        Ok(summary)
    }

    /// What a starting process does: releases the leases its own previous incarnation held
    /// (same worker id: it crashed, nobody is working on those refunds), so they are taken
    /// up at once rather than when the lease runs out. Leases of other workers are left
    /// alone: that replica may be talking to the provider right now, and if it crashed its
    /// lease runs out after [`SettlementConfig::lease`] and any worker claims the refund.
    pub async fn take_over_leases(&self) -> Result<u64, ApiError> {
        let taken = store::settlement::release_own_leases(&self.db, &self.config.worker_id).await?;
        if taken > 0 {
            tracing::info!(
                refunds = taken,
                worker = %self.config.worker_id,
                "settlement leases of this worker's previous run released"
            );
        }
        Ok(taken)
    }

    /// Leases due refunds to this worker and moves released ones to SUBMITTED. Due: the
    /// business clock reached `next_attempt_at`, no backoff is running on the wall clock,
    /// and nobody holds a lease that is still valid by the wall clock.
    async fn claim(&self, now: Timestamp, wall_us: i64) -> Result<Vec<RefundRow>, ApiError> {
        let now_us = to_unix_micros(now);
        if !store::settlement::any_due(&self.db, now_us, wall_us).await? {
            return Ok(Vec::new());
        }
        let lease_until = wall_us.saturating_add(micros(self.config.lease));
        let mut tx = self.db.begin_write().await?;
        let ids = store::settlement::due_refund_ids(
            &self.db,
            &mut tx,
            now_us,
            wall_us,
            self.config.batch,
        )
        .await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(mut refund) = store::lock_refund(&self.db, &mut tx, id).await? else {
                continue;
            };
            let before = (refund.status, refund.net);
            let Ok(status) = transition(refund.status, RefundAction::Submit) else {
                continue;
            };
            refund.status = status;
            refund.claimed_by = Some(self.config.worker_id.clone());
            refund.lease_until = Some(lease_until);
            refund.updated_at = now_us;
            store::save_refund(tx.writes(), &mut refund)?;
            store::append_ledger(tx.writes(), Some(before), &refund, now);
            claimed.push(refund);
        }
        tx.take_writes().execute(&mut tx).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// The earliest business instant after `now` at which a refund becomes due.
    pub async fn next_due_after(&self, now: Timestamp) -> Result<Option<Timestamp>, ApiError> {
        let due = store::settlement::next_due_after(&self.db, to_unix_micros(now)).await?;
        Ok(due.and_then(from_unix_micros))
    }

    /// How long from wall instant `wall_us` until the first refund that is due by business
    /// time `now` but backing off may be retried.
    pub async fn next_retry_at(
        &self,
        now: Timestamp,
        wall_us: i64,
    ) -> Result<Option<Duration>, ApiError> {
        let retry =
            store::settlement::next_retry_after(&self.db, to_unix_micros(now), wall_us).await?;
        Ok(retry.map(|at| {
            Duration::from_micros(u64::try_from(at.saturating_sub(wall_us)).unwrap_or(0))
        }))
    }

    async fn submit(
        &self,
        refund: RefundRow,
        now: Timestamp,
        wall_us: i64,
    ) -> Result<Outcome, ApiError> {
        let request = SubmitRequest {
            idempotency_key: refund.idempotency_key(),
            refund_id: refund.refund_id.to_string(),
            amount: refund.net,
            method: refund.method,
        };
        let result = self.provider.submit(&request).await;
        let config = &self.config;
        retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            let Some(mut current) = self.still_ours(&mut tx, &refund).await? else {
                return Ok(Outcome::LostLease);
            };
            let before = (current.status, current.net);
            current.attempts += 1;
            current.updated_at = to_unix_micros(now);
            current.claimed_by = None;
            current.lease_until = None;
            current.retry_after = None;
            let (outcome, reference, error) = match &result {
                Ok(reference) => {
                    current.provider_reference = reference.clone();
                    current.failure_reason.clear();
                    // Ask for the outcome once the money can have arrived (business time);
                    // at once when that moment has already passed.
                    let check_at = current
                        .expected_earliest
                        .unwrap_or(current.updated_at)
                        .max(current.updated_at);
                    current.next_attempt_at = Some(check_at);
                    ("submitted", reference.clone(), String::new())
                }
                Err(ProviderError::Transient(message))
                    if current.attempts < i64::from(config.max_attempts) =>
                {
                    // Still due by the business clock; the provider gets its breathing space
                    // in wall time.
                    current.failure_reason = message.clone();
                    let attempt = u32::try_from(current.attempts).unwrap_or(u32::MAX);
                    let delay = retry_backoff(attempt, config.backoff_base, config.backoff_cap);
                    current.retry_after = Some(wall_us.saturating_add(micros(delay)));
                    ("retrying", String::new(), message.clone())
                }
                Err(error) => {
                    current.failure_reason = error.to_string();
                    current.status = transition(current.status, RefundAction::Fail)?;
                    current.next_attempt_at = None;
                    ("failed", String::new(), error.to_string())
                }
            };
            store::save_refund(tx.writes(), &mut current)?;
            store::append_ledger(tx.writes(), Some(before), &current, now);
            record_attempt(
                &mut tx,
                &current,
                "submit",
                &config.worker_id,
                now,
                outcome,
                &reference,
                &error,
            )
            .await?;
            tx.take_writes().execute(&mut tx).await?;
            tx.commit().await?;
            if let Some(metrics) = &self.metrics {
                metrics.attempt("submit", outcome, &current, to_unix_micros(now));
            }
            Ok(match outcome {
                "submitted" => Outcome::Submitted,
                "retrying" => Outcome::Retrying,
                _ => Outcome::Failed,
            })
        })
        .await
    }

    async fn check(
        &self,
        refund: RefundRow,
        now: Timestamp,
        wall_us: i64,
    ) -> Result<Outcome, ApiError> {
        let result = self.provider.status(&refund.provider_reference).await;
        let config = &self.config;
        retry_conflicts(|| async {
            let mut tx = self.db.begin_write().await?;
            let Some(mut current) = self.still_ours(&mut tx, &refund).await? else {
                return Ok(Outcome::LostLease);
            };
            let before = (current.status, current.net);
            let now_us = to_unix_micros(now);
            current.updated_at = now_us;
            current.claimed_by = None;
            current.lease_until = None;
            current.retry_after = None;
            let (outcome, error) = match &result {
                Ok(ProviderStatus::Succeeded) => {
                    current.status = transition(current.status, RefundAction::Succeed)?;
                    current.succeeded_at = Some(now_us);
                    current.next_attempt_at = None;
                    (Outcome::Succeeded, String::new())
                }
                Ok(ProviderStatus::Failed(reason)) | Err(ProviderError::Rejected(reason)) => {
                    current.status = transition(current.status, RefundAction::Fail)?;
                    current.failure_reason = reason.clone();
                    current.next_attempt_at = None;
                    (Outcome::Failed, reason.clone())
                }
                Ok(ProviderStatus::Processing) => {
                    // Money still on its way: ask again later in business time.
                    current.next_attempt_at = Some(to_unix_micros(later(now, config.status_poll)));
                    (Outcome::Processing, String::new())
                }
                Err(ProviderError::Transient(message)) => {
                    // The check stays due; only the provider's outage is waited out (wall).
                    current.retry_after = Some(wall_us.saturating_add(micros(config.backoff_base)));
                    (Outcome::Processing, message.clone())
                }
            };
            store::save_refund(tx.writes(), &mut current)?;
            store::append_ledger(tx.writes(), Some(before), &current, now);
            let label = match outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Failed => "failed",
                _ => "processing",
            };
            record_attempt(
                &mut tx,
                &current,
                "status",
                &config.worker_id,
                now,
                label,
                &current.provider_reference,
                &error,
            )
            .await?;
            tx.take_writes().execute(&mut tx).await?;
            tx.commit().await?;
            if let Some(metrics) = &self.metrics {
                metrics.attempt("status", label, &current, now_us);
            }
            Ok(outcome)
        })
        .await
    }

    /// The refund, locked, if this worker's lease on it still stands.
    async fn still_ours(
        &self,
        tx: &mut returns_platform::db::Tx,
        claimed: &RefundRow,
    ) -> Result<Option<RefundRow>, ApiError> {
        let current = store::lock_refund(&self.db, tx, &claimed.refund_id).await?;
        Ok(current.filter(|current| {
            current.version == claimed.version
                && current.claimed_by.as_deref() == Some(self.config.worker_id.as_str())
                && current.status == RefundStatus::Submitted
        }))
    }
}

enum Outcome {
    Submitted,
    Retrying,
    Processing,
    Succeeded,
    Failed,
    LostLease,
}

#[allow(clippy::too_many_arguments)]
async fn record_attempt(
    tx: &mut returns_platform::db::Tx,
    refund: &RefundRow,
    kind: &str,
    worker: &str,
    now: Timestamp,
    outcome: &str,
    reference: &str,
    error: &str,
) -> Result<(), ApiError> {
    store::settlement::insert_attempt(
        tx,
        store::settlement::Attempt {
            refund_id: &refund.refund_id,
            kind,
            worker,
            idempotency_key: &refund.idempotency_key(),
            at_micros: to_unix_micros(now),
            outcome,
            provider_reference: reference,
            error,
        },
    )
    .await
}

/// A duration in microseconds, saturating on absurd configuration.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// `now + duration`, saturating instead of panicking on absurd configuration.
fn later(now: Timestamp, duration: Duration) -> Timestamp {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[tonic::async_trait]
impl Worker for Settlement {
    fn name(&self) -> &'static str {
        "refund-settlement"
    }

    /// Counts submissions and status checks that moved a refund (succeeded, failed); a
    /// check that finds the money still on its way, or a retry scheduled, does not count,
    /// so a loop driven to quiescence ends while money is in flight.
    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        let summary = self.process_due(now).await?;
        if summary.claimed > 0 {
            tracing::debug!(?summary, "settlement pass");
        }
        Ok(summary.submitted + summary.succeeded + summary.failed)
    }

    /// The next release, expected arrival or status poll after the business clock's now.
    async fn next_due(&self) -> Result<Option<Timestamp>, ApiError> {
        self.next_due_after(self.clock.now()).await
    }

    /// Wall time until a refund that is due but backing off may be retried.
    async fn next_retry(&self) -> Result<Option<Duration>, ApiError> {
        self.next_retry_at(self.clock.now(), wall_now_micros())
            .await
    }
}

/// Stops a background settlement loop when dropped (with the last clone of the service
/// that started it).
#[derive(Debug)]
pub struct LoopGuard(tokio::task::JoinHandle<()>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `worker` in the platform's one loop shape ([`run_forever`]) on the current runtime
/// (none outside one): woken by commits that create work, by the test clock moving and when
/// a backoff ends, with `loop_interval` as the safety-net poll.
pub fn spawn_loop(worker: Settlement, context: &SuiteContext) -> Option<LoopGuard> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let wake = Wake {
        commits: Some(worker.db.work_signal().subscribe()),
        clock_moved: context.test_clock.as_ref().map(|clock| clock.subscribe()),
    };
    let poll = worker.config.loop_interval;
    let task = runtime.spawn(run_forever(
        Arc::new(worker),
        context.clock.clone(),
        wake,
        poll,
    ));
    Some(LoopGuard(task))
}
