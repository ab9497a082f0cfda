//! Starts the whole suite on ephemeral ports and throwaway databases for end-to-end tests,
//! and hands out connected clients and tokens.

#![allow(dead_code)]

pub mod process;
pub mod raw;

use std::net::SocketAddr;

use chrono::{TimeZone, Utc};
use returns::{Suite, SuiteAddresses};
use returns_domain::policy::Policy;
use returns_platform::SuiteContext;
use returns_platform::config::Config;
use returns_platform::testing::{TestDatabase, test_secret};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A suite serving in the background; dropping it without `stop` aborts the servers.
pub struct RunningSuite {
    pub addresses: SuiteAddresses,
    pub context: SuiteContext,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    _databases: Vec<TestDatabase>,
}

impl RunningSuite {
    /// Starts disputes, labels and refunds with the test clock at 2026-03-02 09:00 UTC.
    pub async fn start() -> RunningSuite {
        let databases = vec![
            TestDatabase::create().await,
            TestDatabase::create().await,
            TestDatabase::create().await,
        ];
        let mut config = Config {
            test_clock: true,
            ..Config::default()
        };
        for (section, db) in [
            &mut config.disputes,
            &mut config.labels,
            &mut config.refunds,
        ]
        .into_iter()
        .zip(&databases)
        {
            section.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            section.database_url = Some(db.url.clone());
        }
        let start = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("a valid start time");
        let context = SuiteContext::for_tests(test_secret(), Policy::classic(), start);
        let suite = Suite::start(&config, &context).await.expect("suite starts");
        let addresses = suite.addresses();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(suite.run_until_stopped(async {
            let _ = stopped.await;
        }));
        RunningSuite {
            addresses,
            context,
            stop: Some(stop),
            task: Some(task),
            _databases: databases,
        }
    }

    /// Asks the servers to shut down gracefully and waits until they have.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task did not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for RunningSuite {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A channel to `addr`; the listener is already bound, so no waiting is needed.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to a bound listener")
}
