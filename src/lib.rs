//! The suite as a library: start disputes, labels and refunds together on one shared
//! context (one clock, one token secret), as `cargo run --release` and the end-to-end tests do.

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod operator;
pub mod stories;

use std::future::Future;
use std::net::SocketAddr;

use returns_platform::config::Config;
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
        // Peers are reached at their bound addresses (port 0 in tests), unless the
        // configuration names a URL for them (a proxy, a load balancer, another host).
        for (name, app, section) in [
            ("disputes", &disputes, &config.disputes),
            ("labels", &labels, &config.labels),
            ("refunds", &refunds, &config.refunds),
        ] {
            if section.url.is_none() {
                context
                    .peers
                    .set(name, format!("http://{}", app.local_addr()));
            }
        }
        Ok(Suite {
            disputes,
            labels,
            refunds,
        })
    }

    /// Where each service serves its `/metrics` (one admin port per service, as when the
    /// services run apart), for those that have one.
    pub fn metrics_addresses(&self) -> [(&'static str, Option<SocketAddr>); 3] {
        [
            ("disputes", self.disputes.metrics_addr()),
            ("labels", self.labels.metrics_addr()),
            ("refunds", self.refunds.metrics_addr()),
        ]
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
