//! Shared set-up of the refunds service tests: a fresh database on the backend the
//! environment selects, the service on an ephemeral port, a platform token, and a worker
//! the tests drive with `process_due` (the background loop is off unless a test asks).

#![allow(dead_code)]

pub mod stub;

use returns_domain::calendar::BusinessCalendar;
use std::sync::Arc;
use std::time::Duration;

use returns_domain::dispute::Role;
use returns_platform::testing::{TestDatabase, TestServer, authorized, test_context, token};
use returns_platform::{Database, SuiteContext};
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_refunds::provider::{Sandbox, SandboxConfig};
use returns_refunds::settlement::{PassSummary, Settlement, SettlementConfig};
use returns_refunds::{MIGRATIONS, Options};
use tonic::transport::Channel;

pub const PLATFORM: &str = "orders-service";

pub struct Harness {
    pub context: SuiteContext,
    pub db: Database,
    pub server: TestServer,
    pub client: RefundServiceClient<Channel>,
    pub sandbox: Sandbox,
    pub options: Options,
    pub target: TestDatabase,
}

pub fn platform() -> String {
    token(Role::Platform, PLATFORM)
}

pub fn usd(minor: i64) -> common::Money {
    money("USD", minor)
}

pub fn money(code: &str, minor: i64) -> common::Money {
    common::Money {
        currency_code: code.to_string(),
        minor_units: minor,
    }
}

pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(SandboxConfig::default(), false).await
    }

    /// The service over a fresh database, its sandbox configured by `sandbox`.
    pub async fn start_with(sandbox: SandboxConfig, background: bool) -> Harness {
        Self::start_on_calendar(sandbox, background, BusinessCalendar::weekends_only()).await
    }

    /// [`Harness::start_with`] on a business calendar with holidays.
    pub async fn start_on_calendar(
        sandbox: SandboxConfig,
        background: bool,
        calendar: BusinessCalendar,
    ) -> Harness {
        Self::start_full(sandbox, background, calendar, Duration::from_millis(20)).await
    }

    /// The background loop with a poll interval of `poll` (a long one shows that something
    /// else, a commit or the clock, woke it).
    pub async fn start_polling_every(poll: Duration) -> Harness {
        Self::start_full(
            SandboxConfig::default(),
            true,
            BusinessCalendar::weekends_only(),
            poll,
        )
        .await
    }

    async fn start_full(
        sandbox: SandboxConfig,
        background: bool,
        calendar: BusinessCalendar,
        poll: Duration,
    ) -> Harness {
        let target = TestDatabase::create().await;
        let context = test_context();
        let db = Database::open(&target.url, MIGRATIONS)
            .await
            .expect("open the database");
        let (mut options, sandbox) = Options::sandbox_with_calendar(&context, sandbox, calendar);
        options.background = background;
        options.settlement = SettlementConfig {
            loop_interval: poll,
            ..SettlementConfig::named("worker-a")
        };
        let server = TestServer::start(
            returns_refunds::spec_with(&context, db.clone(), options.clone()),
            &context,
        )
        .await;
        let client = RefundServiceClient::new(server.channel().await);
        Harness {
            context,
            db,
            server,
            client,
            sandbox,
            options,
            target,
        }
    }

    pub fn worker(&self, name: &str) -> Settlement {
        let mut options = self.options.clone();
        options.settlement.worker_id = name.to_string();
        options.worker(self.db.clone())
    }

    pub async fn settle(&self) -> PassSummary {
        let now = self.context.clock.now();
        self.worker("worker-a")
            .process_due(now)
            .await
            .expect("a settlement pass")
    }

    /// A pass at the business clock's now and an explicit wall-clock instant (unix
    /// microseconds), to step past backoffs without sleeping.
    pub async fn settle_at_wall(&self, wall_us: i64) -> PassSummary {
        let now = self.context.clock.now();
        self.worker("worker-a")
            .process_due_at(now, wall_us)
            .await
            .expect("a settlement pass")
    }

    pub fn advance_days(&self, days: u64) {
        self.context
            .test_clock
            .as_ref()
            .expect("tests run on the manual clock")
            .advance(Duration::from_secs(days * 24 * 3600));
    }

    pub async fn capture(
        &mut self,
        order_id: &str,
        buyer_id: &str,
        amount: common::Money,
        method: common::PaymentMethod,
        tier: common::BuyerTier,
    ) -> pb::Capture {
        self.client
            .record_capture(authorized(
                pb::RecordCaptureRequest {
                    request_id: request_id(),
                    order_id: order_id.to_string(),
                    buyer_id: buyer_id.to_string(),
                    amount: Some(amount),
                    payment_method: method as i32,
                    buyer_tier: tier as i32,
                    captured_at: None,
                    payment_reference: format!("ch_{order_id}"),
                },
                &platform(),
            ))
            .await
            .expect("record the capture")
            .into_inner()
            .capture
            .expect("a capture")
    }

    /// A card capture of USD `minor` for a standard buyer.
    pub async fn card_order(&mut self, order_id: &str, buyer_id: &str, minor: i64) {
        self.capture(
            order_id,
            buyer_id,
            usd(minor),
            common::PaymentMethod::Card,
            common::BuyerTier::Standard,
        )
        .await;
    }

    pub fn refund_request(
        order_id: &str,
        amount: common::Money,
        release: pb::ReleaseCondition,
    ) -> pb::CreateRefundRequest {
        pb::CreateRefundRequest {
            request_id: request_id(),
            message_id: String::new(),
            order_id: order_id.to_string(),
            dispute_id: String::new(),
            amount: Some(amount),
            reason: pb::RefundReason::DisputeResolved as i32,
            release: release as i32,
            return_label_id: String::new(),
            deductions: Vec::new(),
            note: String::new(),
        }
    }

    pub async fn create(
        &mut self,
        request: pb::CreateRefundRequest,
    ) -> Result<pb::Refund, tonic::Status> {
        self.client
            .create_refund(authorized(request, &platform()))
            .await
            .map(|r| r.into_inner().refund.expect("a refund"))
    }

    pub async fn refund(
        &mut self,
        order_id: &str,
        minor: i64,
        release: pb::ReleaseCondition,
    ) -> pb::Refund {
        self.create(Self::refund_request(order_id, usd(minor), release))
            .await
            .expect("create the refund")
    }

    pub async fn get(&mut self, refund_id: &str) -> pb::Refund {
        self.client
            .get_refund(authorized(
                pb::GetRefundRequest {
                    refund_id: refund_id.to_string(),
                },
                &platform(),
            ))
            .await
            .expect("get the refund")
            .into_inner()
            .refund
            .expect("a refund")
    }

    /// A RecordReturnProgress request with a fresh request id and no message id.
    pub fn progress_request(
        order_id: &str,
        label_id: &str,
        progress: pb::ReturnProgress,
    ) -> pb::RecordReturnProgressRequest {
        pb::RecordReturnProgressRequest {
            request_id: request_id(),
            message_id: String::new(),
            order_id: order_id.to_string(),
            return_label_id: label_id.to_string(),
            dispute_id: String::new(),
            progress: progress as i32,
            occurred_at: None,
            notes: String::new(),
            deductions: Vec::new(),
        }
    }

    /// Sends a return progress report; the refunds it concerns, after the change.
    pub async fn report(
        &mut self,
        request: pb::RecordReturnProgressRequest,
    ) -> Result<Vec<pb::Refund>, tonic::Status> {
        self.client
            .record_return_progress(authorized(request, &platform()))
            .await
            .map(|r| r.into_inner().refunds)
    }

    pub async fn progress(
        &mut self,
        order_id: &str,
        label_id: &str,
        progress: pb::ReturnProgress,
    ) -> Vec<pb::Refund> {
        self.report(Self::progress_request(order_id, label_id, progress))
            .await
            .expect("record return progress")
    }
}

pub fn status(refund: &pb::Refund) -> pb::RefundStatus {
    pb::RefundStatus::try_from(refund.status).expect("a known status")
}

pub fn shared<T>(value: T) -> Arc<T> {
    Arc::new(value)
}
