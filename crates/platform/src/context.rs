//! What every service of one suite process shares: the clock, the token keys, the policy.
//!
//! The launcher builds one `SuiteContext` and hands it to all three services, which is how
//! they share a single test clock; a separate service binary builds its own.

use std::sync::Arc;

use returns_domain::policy::Policy;
use returns_domain::time::{Clock, ManualClock, SystemClock};

use crate::auth::{TokenIssuer, TokenVerifier};
use crate::config::{Config, Secret};
use crate::test_clock::SharedTestClock;

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
        Ok(SuiteContext {
            clock,
            test_clock,
            verifier: TokenVerifier::new(&secret),
            issuer: TokenIssuer::new(&secret),
            policy: Arc::new(policy),
            secret,
        })
    }

    /// A context on a manual clock starting at `start`, for tests.
    pub fn for_tests(
        secret: Secret,
        policy: Policy,
        start: returns_domain::time::Timestamp,
    ) -> SuiteContext {
        let manual = ManualClock::new(start);
        SuiteContext {
            clock: Arc::new(manual.clone()),
            test_clock: Some(SharedTestClock::new(manual)),
            verifier: TokenVerifier::new(&secret),
            issuer: TokenIssuer::new(&secret),
            policy: Arc::new(policy),
            secret,
        }
    }
}
