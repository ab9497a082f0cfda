//! Payment-provider adapters: the `PaymentProvider` trait the settlement worker talks to,
//! and the deterministic `sandbox` adapter used by tests and the default deployment.
//!
//! The contract that makes exactly-once payment possible: a submission carries an
//! idempotency key derived from the refund id, and the provider performs at most one refund
//! per key, answering a repeat with the first result. A worker that crashed after the call
//! (or lost its lease) can therefore submit again safely.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use returns_domain::calendar::BusinessCalendar;
use returns_domain::dispute::PaymentMethod;
use returns_domain::money::Money;
use returns_domain::policy::Policy;
use returns_domain::time::{Clock, Timestamp};

/// One refund as sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// The same for every submission of one refund.
    pub idempotency_key: String,
    pub refund_id: String,
    pub amount: Money,
    pub method: PaymentMethod,
}

/// Where a submitted refund stands at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    /// Accepted, money on its way.
    Processing,
    /// Paid to the buyer.
    Succeeded,
    /// Refused after acceptance (e.g. the card was closed).
    Failed(String),
}

/// Why a provider call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (timeouts, 5xx, rate limits).
    #[error("transient provider failure: {0}")]
    Transient(String),
    /// The provider refused the refund for good; retrying cannot help.
    #[error("provider rejected the refund: {0}")]
    Rejected(String),
}

/// A payment provider the settlement worker submits refunds to.
#[tonic::async_trait]
pub trait PaymentProvider: Send + Sync + fmt::Debug + 'static {
    /// Submits a refund; returns the provider's reference. The same idempotency key must
    /// give the same reference and no second payment.
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError>;

    /// Where the refund with `reference` stands.
    async fn status(&self, reference: &str) -> Result<ProviderStatus, ProviderError>;
}

/// Knobs of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Real time each call takes (zero in tests).
    pub latency: Duration,
    /// Percentage (0-100) of submissions that fail transiently, chosen deterministically
    /// from the idempotency key and the call number, so a run can be replayed exactly.
    pub failure_percent: u8,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            latency: Duration::ZERO,
            failure_percent: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct SandboxRefund {
    reference: String,
    amount: Money,
    settles_at: Timestamp,
}

#[derive(Debug, Default)]
struct SandboxState {
    by_key: HashMap<String, SandboxRefund>,
    by_reference: HashMap<String, String>,
    /// Submissions received per key (including repeats and injected failures).
    calls: HashMap<String, u64>,
}

/// A deterministic in-memory provider: one payment per idempotency key, settled once the
/// payment method's earliest business-day delay has passed on the suite clock.
#[derive(Debug, Clone)]
pub struct Sandbox {
    clock: Arc<dyn Clock>,
    policy: Arc<Policy>,
    calendar: BusinessCalendar,
    config: SandboxConfig,
    state: Arc<Mutex<SandboxState>>,
}

/// What the sandbox has paid: one entry per idempotency key, for tests comparing the
/// provider's effects with the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEffect {
    pub idempotency_key: String,
    pub reference: String,
    pub amount: Money,
}

impl Sandbox {
    pub fn new(
        clock: Arc<dyn Clock>,
        policy: Arc<Policy>,
        calendar: BusinessCalendar,
        config: SandboxConfig,
    ) -> Self {
        Sandbox {
            clock,
            policy,
            calendar,
            config,
            state: Arc::default(),
        }
    }

    /// Every payment made, one per key (a repeat of a key never adds one).
    pub fn effects(&self) -> Vec<SandboxEffect> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut effects: Vec<_> = state
            .by_key
            .iter()
            .map(|(key, refund)| SandboxEffect {
                idempotency_key: key.clone(),
                reference: refund.reference.clone(),
                amount: refund.amount,
            })
            .collect();
        effects.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        effects
    }

    /// How many submissions arrived for each key.
    pub fn submit_calls(&self) -> HashMap<String, u64> {
        self.state
            .lock()
            .map(|state| state.calls.clone())
            .unwrap_or_default()
    }

    fn fails(&self, key: &str, call: u64) -> bool {
        if self.config.failure_percent == 0 {
            return false;
        }
        // FNV-1a over the key and the call number: stable across runs and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes().chain(call.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash % 100 < u64::from(self.config.failure_percent)
    }

    async fn pause(&self) {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
    }
}

/// The settlement instant a sandbox reference carries (`sbx_<refund id>.<unix seconds>`).
fn settles_at_of(reference: &str) -> Option<Timestamp> {
    let (_, seconds) = reference.strip_prefix("sbx_")?.rsplit_once('.')?;
    chrono::DateTime::from_timestamp(seconds.parse().ok()?, 0)
}

fn poisoned() -> ProviderError {
    ProviderError::Transient("sandbox state unavailable".to_string())
}

#[tonic::async_trait]
impl PaymentProvider for Sandbox {
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError> {
        self.pause().await;
        let now = self.clock.now();
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        let call = {
            let calls = state
                .calls
                .entry(request.idempotency_key.clone())
                .or_insert(0);
            *calls += 1;
            *calls
        };
        if let Some(existing) = state.by_key.get(&request.idempotency_key) {
            if existing.amount != request.amount {
                return Err(ProviderError::Rejected(format!(
                    "idempotency key {} was used for {} before, not {}",
                    request.idempotency_key, existing.amount, request.amount
                )));
            }
            return Ok(existing.reference.clone());
        }
        if self.fails(&request.idempotency_key, call) {
            return Err(ProviderError::Transient(
                "sandbox: simulated outage".to_string(),
            ));
        }
        let delay = self.policy.refund_timeline(request.method).earliest;
        let settles_at = self.calendar.add_business_days_at(now, delay);
        let refund = SandboxRefund {
            // The reference carries the settlement instant, so a status check still gets an
            // answer after the suite restarted and this in-memory state is gone, as a real
            // provider's would.
            reference: format!("sbx_{}.{}", request.refund_id, settles_at.timestamp()),
            amount: request.amount,
            settles_at,
        };
        let reference = refund.reference.clone();
        state
            .by_reference
            .insert(reference.clone(), request.idempotency_key.clone());
        state.by_key.insert(request.idempotency_key.clone(), refund);
        Ok(reference)
    }

    async fn status(&self, reference: &str) -> Result<ProviderStatus, ProviderError> {
        self.pause().await;
        let now = self.clock.now();
        let state = self.state.lock().map_err(|_| poisoned())?;
        let settles_at = state
            .by_reference
            .get(reference)
            .and_then(|key| state.by_key.get(key))
            .map(|refund| refund.settles_at)
            .or_else(|| settles_at_of(reference))
            .ok_or_else(|| ProviderError::Rejected(format!("unknown reference {reference}")))?;
        Ok(if now >= settles_at {
            ProviderStatus::Succeeded
        } else {
            ProviderStatus::Processing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_domain::money::CurrencyCode;
    use returns_domain::time::ManualClock;

    fn sandbox(clock: &ManualClock, failure_percent: u8) -> Sandbox {
        Sandbox::new(
            Arc::new(clock.clone()),
            Arc::new(Policy::classic()),
            BusinessCalendar::weekends_only(),
            SandboxConfig {
                latency: Duration::ZERO,
                failure_percent,
            },
        )
    }

    fn request(key: &str) -> SubmitRequest {
        SubmitRequest {
            idempotency_key: key.to_string(),
            refund_id: key.to_string(),
            amount: Money::new(CurrencyCode::USD, 1234),
            method: PaymentMethod::Wallet,
        }
    }

    #[tokio::test]
    async fn a_repeated_key_pays_once_and_settles_after_the_method_delay() {
        // Monday 2026-03-02 09:00: a wallet refund settles one business day later.
        let clock = ManualClock::new(returns_platform::testing::test_start());
        let provider = sandbox(&clock, 0);
        let first = provider.submit(&request("k1")).await.expect("submit");
        let again = provider.submit(&request("k1")).await.expect("repeat");
        assert_eq!(first, again);
        assert_eq!(provider.effects().len(), 1);
        assert_eq!(provider.submit_calls().get("k1"), Some(&2));
        assert_eq!(
            provider.status(&first).await,
            Ok(ProviderStatus::Processing)
        );
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(provider.status(&first).await, Ok(ProviderStatus::Succeeded));
    }

    #[tokio::test]
    async fn injected_failures_are_deterministic_and_never_pay() {
        let clock = ManualClock::new(returns_platform::testing::test_start());
        let a = sandbox(&clock, 50);
        let b = sandbox(&clock, 50);
        let mut outcomes_a = Vec::new();
        let mut outcomes_b = Vec::new();
        for n in 0..40 {
            let key = format!("key-{n}");
            outcomes_a.push(a.submit(&request(&key)).await.is_ok());
            outcomes_b.push(b.submit(&request(&key)).await.is_ok());
        }
        assert_eq!(outcomes_a, outcomes_b);
        let paid = outcomes_a.iter().filter(|ok| **ok).count();
        assert!(paid > 0 && paid < 40, "about half fail: {paid} paid");
        assert_eq!(a.effects().len(), paid);
    }

    #[tokio::test]
    async fn a_restarted_sandbox_still_answers_for_references_it_gave_before() {
        let clock = ManualClock::new(
            chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 3, 2, 9, 0, 0)
                .single()
                .expect("time"),
        );
        let before = sandbox(&clock, 0);
        let reference = before.submit(&request("k-restart")).await.expect("submit");
        let after = sandbox(&clock, 0);
        assert_eq!(
            after.status(&reference).await,
            Ok(ProviderStatus::Processing)
        );
        clock.advance(Duration::from_secs(30 * 86_400));
        assert_eq!(
            after.status(&reference).await,
            Ok(ProviderStatus::Succeeded)
        );
        assert!(matches!(
            after.status("sbx_forged").await,
            Err(ProviderError::Rejected(_))
        ));
    }
}
