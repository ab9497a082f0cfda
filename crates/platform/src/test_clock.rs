//! `returns.testing.v1.TestClockService`: moves the suite's manual clock from outside, the
//! way payment platforms offer test clocks, so 15-day windows can be tested in seconds.
//!
//! Only mounted when `RETURNS_TEST_CLOCK=1`; the launcher shares one clock between all
//! three services so their deadlines stay consistent with each other.

use std::sync::Arc;

use returns_domain::time::{Clock, ManualClock, Timestamp};
use returns_proto::testing::v1::test_clock_service_server::{
    TestClockService, TestClockServiceServer,
};
use returns_proto::testing::v1::{
    AdvanceClockRequest, AdvanceClockResponse, NowRequest, NowResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::error::ApiError;

/// The longest single jump, so a typo cannot move the clock centuries ahead.
const MAX_ADVANCE_SECONDS: i64 = 400 * 24 * 3600;

/// The manual clock plus a signal that fires whenever it moves, so deadline workers
/// re-check at once instead of on their next poll.
#[derive(Debug, Clone)]
pub struct SharedTestClock {
    clock: ManualClock,
    moved: Arc<watch::Sender<Timestamp>>,
}

impl SharedTestClock {
    pub fn new(clock: ManualClock) -> Self {
        let (moved, _) = watch::channel(clock.now());
        SharedTestClock {
            clock,
            moved: Arc::new(moved),
        }
    }

    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Moves the clock forward and wakes everyone watching it.
    pub fn advance(&self, by: std::time::Duration) -> Timestamp {
        let now = self.clock.advance(by);
        self.moved.send_replace(now);
        now
    }

    /// A receiver that changes every time the clock moves.
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.moved.subscribe()
    }
}

/// The gRPC face of a [`SharedTestClock`].
#[derive(Debug, Clone)]
pub struct TestClockGrpc {
    clock: SharedTestClock,
}

impl TestClockGrpc {
    pub fn server(clock: SharedTestClock) -> TestClockServiceServer<TestClockGrpc> {
        TestClockServiceServer::new(TestClockGrpc { clock })
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
        let seconds = u64::try_from(seconds).map_err(ApiError::internal)?;
        let now = self.clock.advance(std::time::Duration::from_secs(seconds));
        Ok(Response::new(AdvanceClockResponse {
            now: Some(returns_proto::convert::timestamp_to_proto(now)),
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
