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

use std::sync::Arc;
use std::time::Duration;

use returns_domain::refund::{RefundAction, RefundStatus, retry_backoff, transition};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::retry_conflicts;
use returns_platform::{ApiError, Database, SuiteContext};
use tokio::sync::watch;

use crate::provider::{PaymentProvider, ProviderError, ProviderStatus, SubmitRequest};
use crate::store::{self, RefundRow};

/// Tuning of the worker; defaults in code.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// This worker's name, written into leases and attempts.
    pub worker_id: String,
    /// How long a claim keeps other workers away (clock time).
    pub lease: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Submission attempts before a refund is marked FAILED.
    pub max_attempts: u32,
    /// How often a submitted refund's status is asked again while the provider processes it.
    pub status_poll: Duration,
    /// Refunds claimed per pass.
    pub batch: i64,
    /// Real-time poll interval of the background loop (it also wakes when the test clock moves).
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
            worker_id: format!("worker-{}", uuid::Uuid::new_v4().simple()),
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
    passes: Arc<watch::Sender<u64>>,
}

impl Settlement {
    pub fn new(db: Database, provider: Arc<dyn PaymentProvider>, config: SettlementConfig) -> Self {
        Settlement {
            db,
            provider,
            config,
            passes: Arc::new(watch::channel(0).0),
        }
    }

    /// Changes after every pass of the background loop, so tests can wait for one.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// Claims the refunds due at `now`, talks to the provider for each and writes the
    /// outcomes. Deterministic for a given `now` and provider; tests call it directly.
    pub async fn process_due(&self, now: Timestamp) -> Result<PassSummary, ApiError> {
        let claimed = retry_conflicts(|| self.claim(now)).await?;
        let mut summary = PassSummary {
            claimed: claimed.len(),
            ..PassSummary::default()
        };
        for refund in claimed {
            let outcome = if refund.provider_reference.is_empty() {
                self.submit(refund, now).await
            } else {
                self.check(refund, now).await
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

    /// Leases due refunds to this worker and moves released ones to SUBMITTED.
    async fn claim(&self, now: Timestamp) -> Result<Vec<RefundRow>, ApiError> {
        let now_us = to_unix_micros(now);
        let lease_until = to_unix_micros(later(now, self.config.lease));
        let mut tx = self.db.begin_write().await?;
        let ids = sqlx::query(&format!(
            "SELECT refund_id FROM refunds \
             WHERE status IN ('PENDING', 'SUBMITTED') AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) \
             ORDER BY next_attempt_at, refund_id LIMIT $2{}",
            self.db.for_update_skip_locked()
        ))
        .bind(now_us)
        .bind(self.config.batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for row in &ids {
            let id: String = returns_platform::db::column(row, "refund_id")?;
            let Some(mut refund) = store::lock_refund(&self.db, &mut tx, &id).await? else {
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
            store::save_refund(&mut tx, &mut refund).await?;
            store::append_ledger(&mut tx, Some(before), &refund, now).await?;
            claimed.push(refund);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn submit(&self, refund: RefundRow, now: Timestamp) -> Result<Outcome, ApiError> {
        let request = SubmitRequest {
            idempotency_key: refund.idempotency_key(),
            refund_id: refund.refund_id.clone(),
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
            let (outcome, reference, error) = match &result {
                Ok(reference) => {
                    current.provider_reference = reference.clone();
                    current.failure_reason.clear();
                    // Ask for the outcome once the money can have arrived.
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
                    current.failure_reason = message.clone();
                    let attempt = u32::try_from(current.attempts).unwrap_or(u32::MAX);
                    let delay = retry_backoff(attempt, config.backoff_base, config.backoff_cap);
                    current.next_attempt_at = Some(to_unix_micros(later(now, delay)));
                    ("retrying", String::new(), message.clone())
                }
                Err(error) => {
                    current.failure_reason = error.to_string();
                    current.status = transition(current.status, RefundAction::Fail)?;
                    current.next_attempt_at = None;
                    ("failed", String::new(), error.to_string())
                }
            };
            store::save_refund(&mut tx, &mut current).await?;
            store::append_ledger(&mut tx, Some(before), &current, now).await?;
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
            tx.commit().await?;
            Ok(match outcome {
                "submitted" => Outcome::Submitted,
                "retrying" => Outcome::Retrying,
                _ => Outcome::Failed,
            })
        })
        .await
    }

    async fn check(&self, refund: RefundRow, now: Timestamp) -> Result<Outcome, ApiError> {
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
                    current.next_attempt_at = Some(to_unix_micros(later(now, config.status_poll)));
                    (Outcome::Processing, String::new())
                }
                Err(ProviderError::Transient(message)) => {
                    current.next_attempt_at = Some(to_unix_micros(later(now, config.backoff_base)));
                    (Outcome::Processing, message.clone())
                }
            };
            store::save_refund(&mut tx, &mut current).await?;
            store::append_ledger(&mut tx, Some(before), &current, now).await?;
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
            tx.commit().await?;
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

    /// Runs passes until `stop` fires: after every poll interval and whenever the test
    /// clock moves, at the context clock's "now".
    pub async fn run(self, context: SuiteContext, mut stop: watch::Receiver<()>) {
        let mut clock_moves = context.test_clock.as_ref().map(|c| c.subscribe());
        let mut count = 0_u64;
        loop {
            match self.process_due(context.clock.now()).await {
                Ok(summary) if summary.claimed > 0 => {
                    tracing::debug!(?summary, "settlement pass");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "settlement pass failed"),
            }
            count += 1;
            self.passes.send_replace(count);
            let moved = async {
                match clock_moves.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                _ = moved => {}
                _ = tokio::time::sleep(self.config.loop_interval) => {}
            }
        }
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
    let at = to_unix_micros(now);
    sqlx::query(
        "INSERT INTO refund_attempts (attempt_id, refund_id, kind, worker, idempotency_key, \
         started_at, finished_at, outcome, provider_reference, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&refund.refund_id)
    .bind(kind)
    .bind(worker)
    .bind(refund.idempotency_key())
    .bind(at)
    .bind(at)
    .bind(outcome)
    .bind(reference)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `now + duration`, saturating instead of panicking on absurd configuration.
fn later(now: Timestamp, duration: Duration) -> Timestamp {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[tonic::async_trait]
impl returns_platform::worker::Worker for Settlement {
    fn name(&self) -> &'static str {
        "refund-settlement"
    }

    /// Counts refunds whose state moved; status checks that find a refund still pending
    /// at the provider do not count, so a settle loop ends while money is in flight.
    async fn run_once(&self, now: Timestamp) -> Result<usize, ApiError> {
        let summary = self.process_due(now).await?;
        Ok(summary.submitted + summary.succeeded + summary.failed)
    }
}
