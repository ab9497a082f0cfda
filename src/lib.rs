//! The suite as a library: start disputes, labels and refunds together on one shared
//! context (one clock, one token secret), as `cargo run --release` and the end-to-end tests do.

pub mod stories;

use std::future::Future;
use std::net::SocketAddr;

use std::sync::Arc;

use returns_domain::time::Clock;
use returns_platform::config::Config;
use returns_platform::relay::Relay;
use returns_platform::worker::{Exclusive, Worker};
use returns_platform::{Application, SuiteContext};

/// Why the suite could not start: which service, and why.
#[derive(Debug, thiserror::Error)]
#[error("{service} failed to start: {source}")]
pub struct SuiteStartError {
    pub service: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SuiteStartError {
    fn of(service: &'static str) -> impl FnOnce(returns_platform::server::StartError) -> Self {
        move |source| SuiteStartError {
            service,
            source: Box::new(source),
        }
    }
}

/// The three services, bound and ready to serve.
pub struct Suite {
    pub disputes: Application,
    pub labels: Application,
    pub refunds: Application,
}

/// Where each service of a running suite listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteAddresses {
    pub disputes: SocketAddr,
    pub labels: SocketAddr,
    pub refunds: SocketAddr,
}

impl Suite {
    /// Opens the three databases (migrating them) and binds the three listeners.
    pub async fn start(config: &Config, context: &SuiteContext) -> Result<Suite, SuiteStartError> {
        let disputes = returns_disputes::start_from_config(config, context)
            .await
            .map_err(SuiteStartError::of("disputes"))?;
        let labels = returns_labels::start_from_config(config, context)
            .await
            .map_err(SuiteStartError::of("labels"))?;
        let refunds = returns_refunds::start_from_config(config, context)
            .await
            .map_err(SuiteStartError::of("refunds"))?;
        // The bound addresses win over configured ones (port 0 in tests).
        for (name, app) in [
            ("disputes", &disputes),
            ("labels", &labels),
            ("refunds", &refunds),
        ] {
            context
                .peers
                .set(name, format!("http://{}", app.local_addr()));
        }
        Ok(Suite {
            disputes,
            labels,
            refunds,
        })
    }

    /// A handle that drives every background worker of the suite until nothing is due:
    /// how tests and the demo wait for deadlines, deliveries and settlement without sleeping.
    pub fn settler(&self, context: &SuiteContext) -> Settler {
        let apps = [&self.disputes, &self.labels, &self.refunds];
        Settler {
            workers: apps.iter().flat_map(|app| app.workers()).collect(),
            relays: apps.iter().filter_map(|app| app.relay()).collect(),
            clock: context.clock.clone(),
        }
    }

    pub fn addresses(&self) -> SuiteAddresses {
        SuiteAddresses {
            disputes: self.disputes.local_addr(),
            labels: self.labels.local_addr(),
            refunds: self.refunds.local_addr(),
        }
    }

    /// Serves all three until `shutdown` resolves (or one of them fails, which stops all).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        let servers = futures::future::try_join3(
            self.disputes.run_until_stopped(wait(stop_rx.clone())),
            self.labels.run_until_stopped(wait(stop_rx.clone())),
            self.refunds.run_until_stopped(wait(stop_rx)),
        );
        tokio::pin!(servers);
        tokio::select! {
            result = &mut servers => result.map(|_| ()),
            () = shutdown => {
                stop_tx.send_replace(true);
                servers.await.map(|_| ())
            }
        }
    }
}

/// Drives the suite's background work to quiescence (see [`Suite::settler`]).
#[derive(Clone)]
pub struct Settler {
    workers: Vec<Arc<Exclusive>>,
    relays: Vec<(Relay, Arc<Exclusive>)>,
    clock: Arc<dyn Clock>,
}

/// Background work that never ran out of things to do.
#[derive(Debug, thiserror::Error)]
#[error("background work did not settle after {rounds} rounds")]
pub struct NotSettled {
    pub rounds: usize,
}

impl Settler {
    /// Runs every worker at the current clock until a whole round does nothing. Outbox rows
    /// waiting out a retry backoff are delivered at once (`force_deliveries`), as an
    /// operator would after fixing an outage.
    pub async fn settle(
        &self,
        force_deliveries: bool,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        const MAX_ROUNDS: usize = 200;
        for _ in 0..MAX_ROUNDS {
            let mut done = 0;
            if force_deliveries {
                for (relay, turn) in &self.relays {
                    let _turn = turn.hold().await;
                    let pass = relay.deliver_all_now().await?;
                    done += pass.delivered + pass.rejected;
                }
            }
            for worker in &self.workers {
                done += worker.run_once(self.clock.now()).await?;
            }
            if done == 0 {
                return Ok(());
            }
        }
        Err(Box::new(NotSettled { rounds: MAX_ROUNDS }))
    }
}
