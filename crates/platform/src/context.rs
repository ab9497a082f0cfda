//! What every service of one suite process shares: the clock, the token keys, the policy.
//!
//! The launcher builds one `SuiteContext` and hands it to all three services, which is how
//! they share a single test clock; a separate service binary builds its own.

use std::sync::Arc;

use returns_domain::policy::Policy;
use returns_domain::time::{Clock, ManualClock, SystemClock};

use crate::auth::{TokenIssuer, TokenVerifier};
use crate::config::{Config, Secret};
use crate::relay::Peers;
use crate::test_clock::SharedTestClock;
use crate::worker::WorkerRegistry;

/// Shared, cheaply cloneable services-wide state.
#[derive(Debug, Clone)]
pub struct SuiteContext {
    pub clock: Arc<dyn Clock>,
    /// Set in test-clock mode: the same clock as `clock`, movable over gRPC.
    pub test_clock: Option<SharedTestClock>,
    pub verifier: TokenVerifier,
    pub issuer: TokenIssuer,
    pub policy: Arc<Policy>,
    pub secret: Secret,
    /// Where the other services listen, for the outbox relay.
    pub peers: Arc<Peers>,
    /// Failed attempts after which an outbox message is dead.
    pub outbox_max_attempts: u32,
    /// Requests each service serves at once before shedding; `None`, the default of its
    /// database ([`crate::config::default_max_in_flight`]).
    pub max_in_flight: Option<usize>,
    /// How long idempotency keys, inbox rows and delivered outbox rows are kept.
    pub retention: crate::retention::Retention,
    /// Every background worker this process runs, for the test clock to drive.
    pub workers: WorkerRegistry,
}

impl SuiteContext {
    /// Builds the context of a validated `config`, with the auth secret already decided.
    pub fn new(
        config: &Config,
        secret: Secret,
    ) -> Result<SuiteContext, returns_domain::policy::PolicyError> {
        let policy = Policy::named(&config.policy)?;
        let (clock, test_clock): (Arc<dyn Clock>, _) = if config.test_clock {
            let manual = ManualClock::new(SystemClock.now());
            let shared = SharedTestClock::new(manual.clone());
            (Arc::new(manual), Some(shared))
        } else {
            (Arc::new(SystemClock), None)
        };
        let workers = test_clock
            .as_ref()
            .map(|clock: &SharedTestClock| clock.workers().clone())
            .unwrap_or_default();
        let peers = Peers::default();
        peers.set("disputes", config.disputes.peer_url());
        peers.set("labels", config.labels.peer_url());
        peers.set("refunds", config.refunds.peer_url());
        Ok(SuiteContext {
            clock,
            test_clock,
            verifier: TokenVerifier::new(&secret),
            issuer: TokenIssuer::new(&secret),
            policy: Arc::new(policy),
            secret,
            peers: Arc::new(peers),
            outbox_max_attempts: config.outbox_max_attempts,
            max_in_flight: config.max_in_flight,
            retention: crate::retention::Retention {
                days: config.retention_days,
                outbox_days: config.outbox_retention_days,
            },
            workers,
        })
    }

    /// A context on a manual clock starting at `start`, for tests.
    pub fn for_tests(
        secret: Secret,
        policy: Policy,
        start: returns_domain::time::Timestamp,
    ) -> SuiteContext {
        let manual = ManualClock::new(start);
        let test_clock = SharedTestClock::new(manual.clone());
        SuiteContext {
            clock: Arc::new(manual),
            workers: test_clock.workers().clone(),
            test_clock: Some(test_clock),
            verifier: TokenVerifier::new(&secret),
            issuer: TokenIssuer::new(&secret),
            policy: Arc::new(policy),
            secret,
            peers: Arc::default(),
            outbox_max_attempts: crate::relay::DEFAULT_MAX_ATTEMPTS,
            max_in_flight: None,
            retention: crate::retention::Retention::default(),
        }
    }
}
