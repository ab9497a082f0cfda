//! Nothing lost between services, shown against the real `returns` binary driven only over
//! gRPC (and its CLI), with the relay and workers running as in production and the test
//! clock moved by `AdvanceClock`: money is never stalled by a clock move, a refund asked for
//! before its capture is paid once the capture lands, and a poison message becomes a dead
//! letter an operator can see and retry. On SQLite, and on PostgreSQL when CI sets
//! RETURNS_TEST_POSTGRES_URL.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use returns::SuiteAddresses;
use returns_domain::calendar::BusinessCalendar;
use returns_domain::dispute::Role;
use returns_proto::common::v1::{
    Address, BuyerTier, DisputeReason, EvidenceKind, Money, PaymentMethod,
};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{
    DisputeKind, DisputeState, GetDisputeRequest, NewEvidence, OpenDisputeRequest,
    RecordOrderRequest, RequestedResolution, ResolutionType,
};
use returns_proto::labels::v1::return_label_service_client::ReturnLabelServiceClient;
use returns_proto::labels::v1::{CreateReturnLabelRequest, ReturnMethod};
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_proto::refunds::v1::refund_service_server::{RefundService, RefundServiceServer};
use returns_proto::refunds::v1::{
    CreateRefundRequest, CreateRefundResponse, ListRefundsRequest, RecordCaptureRequest, Refund,
    RefundStatus,
};
use returns_proto::testing::v1::test_clock_service_client::TestClockServiceClient;
use returns_proto::testing::v1::{AdvanceClockRequest, AdvanceClockResponse, NowRequest};
use support::process::{SuiteProcess, SuiteStorage, cli, issuer};
use tonic::transport::Channel;

const DAY: i64 = 86_400;

/// Clients of one running suite, calling with tokens signed by the test secret.
struct Client {
    disputes: DisputeServiceClient<Channel>,
    labels: ReturnLabelServiceClient<Channel>,
    refunds: RefundServiceClient<Channel>,
    clock: TestClockServiceClient<Channel>,
}

fn call<T>(role: Role, sub: &str, message: T) -> tonic::Request<T> {
    let token = issuer()
        .issue(sub, role, None, Duration::from_secs(600))
        .expect("token");
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

fn ts(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn usd(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        minor_units,
    })
}

impl Client {
    async fn connect(addresses: SuiteAddresses) -> Client {
        Client {
            disputes: DisputeServiceClient::new(support::channel(addresses.disputes).await),
            labels: ReturnLabelServiceClient::new(support::channel(addresses.labels).await),
            refunds: RefundServiceClient::new(support::channel(addresses.refunds).await),
            clock: TestClockServiceClient::new(support::channel(addresses.disputes).await),
        }
    }

    async fn now(&mut self) -> DateTime<Utc> {
        let now = self
            .clock
            .now(call(Role::Buyer, "b-any", NowRequest {}))
            .await
            .expect("Now")
            .into_inner()
            .now
            .expect("a time");
        DateTime::from_timestamp(now.seconds, 0).expect("in range")
    }

    async fn advance(&mut self, seconds: i64) -> AdvanceClockResponse {
        self.clock
            .advance_clock(call(
                Role::Platform,
                "test",
                AdvanceClockRequest { seconds },
            ))
            .await
            .expect("AdvanceClock")
            .into_inner()
    }

    /// Records an order with the platform; `delivered_days_ago: None` = never delivered.
    #[allow(clippy::too_many_arguments)]
    async fn record_order(
        &mut self,
        order_id: &str,
        buyer_id: &str,
        total: i64,
        method: PaymentMethod,
        country: &str,
        carrier: &str,
        shipped_days_ago: i64,
        delivered_days_ago: Option<i64>,
        free_return: bool,
    ) {
        let now = self.now().await;
        let shipped = now - chrono::Duration::days(shipped_days_ago);
        let request = RecordOrderRequest {
            request_id: format!("order-{order_id}"),
            order_id: order_id.into(),
            buyer_id: buyer_id.into(),
            seller_id: "s-shop".into(),
            total: usd(total),
            payment_method: method as i32,
            buyer_tier: BuyerTier::Standard as i32,
            carrier: carrier.into(),
            placed_at: ts(shipped - chrono::Duration::days(2)),
            shipped_at: ts(shipped),
            promised_ship_by: None,
            delivered_at: delivered_days_ago
                .map(|days| now - chrono::Duration::days(days))
                .and_then(ts),
            destination_country: country.into(),
            free_return,
        };
        self.disputes
            .record_order(call(Role::Platform, "orders", request))
            .await
            .expect("RecordOrder");
    }

    async fn record_capture(
        &mut self,
        order_id: &str,
        buyer_id: &str,
        total: i64,
        method: PaymentMethod,
    ) {
        let request = RecordCaptureRequest {
            request_id: format!("capture-{order_id}"),
            order_id: order_id.into(),
            buyer_id: buyer_id.into(),
            amount: usd(total),
            payment_method: method as i32,
            buyer_tier: BuyerTier::Standard as i32,
            ..Default::default()
        };
        self.refunds
            .record_capture(call(Role::Platform, "payments", request))
            .await
            .expect("RecordCapture");
    }

    async fn open_dispute(
        &mut self,
        order_id: &str,
        buyer_id: &str,
        kind: DisputeKind,
        reason: DisputeReason,
    ) -> returns_proto::disputes::v1::Dispute {
        let request = OpenDisputeRequest {
            request_id: format!("open-{order_id}"),
            order_id: order_id.into(),
            kind: kind as i32,
            reason: reason as i32,
            requested_resolution: Some(RequestedResolution {
                r#type: ResolutionType::FullRefund as i32,
                amount: None,
            }),
            description: "see the tracking page".into(),
            evidence: vec![NewEvidence {
                kind: EvidenceKind::TrackingScreenshot as i32,
                content_type: "image/png".into(),
                size_bytes: 48_213,
                sha256: format!("{:064x}", 7919),
                uri: "file:///evidence/tracking.png".into(),
                file_name: "tracking.png".into(),
            }],
        };
        self.disputes
            .open_dispute(call(Role::Buyer, buyer_id, request))
            .await
            .expect("OpenDispute")
            .into_inner()
            .dispute
            .expect("a dispute")
    }

    async fn dispute_state(&mut self, dispute_id: &str) -> i32 {
        self.disputes
            .get_dispute(call(
                Role::Platform,
                "test",
                GetDisputeRequest {
                    dispute_id: dispute_id.into(),
                },
            ))
            .await
            .expect("GetDispute")
            .into_inner()
            .dispute
            .expect("a dispute")
            .state
    }

    async fn refunds(&mut self, order_id: &str) -> Vec<Refund> {
        self.refunds
            .list_refunds(call(
                Role::Platform,
                "test",
                ListRefundsRequest {
                    order_id: order_id.into(),
                    page_size: 50,
                    ..Default::default()
                },
            ))
            .await
            .expect("ListRefunds")
            .into_inner()
            .refunds
    }

    /// A US wallet order never delivered, captured unless `capture` is false, and the
    /// buyer's not-received dispute: the seller will stay silent.
    async fn silent_seller_case(&mut self, order_id: &str, capture: bool) -> String {
        self.record_order(
            order_id,
            "b-ana",
            2490,
            PaymentMethod::Wallet,
            "US",
            "CHINA_POST",
            20,
            None,
            false,
        )
        .await;
        if capture {
            self.record_capture(order_id, "b-ana", 2490, PaymentMethod::Wallet)
                .await;
        }
        self.open_dispute(
            order_id,
            "b-ana",
            DisputeKind::RefundOnly,
            DisputeReason::NotReceived,
        )
        .await
        .dispute_id
    }
}

#[tokio::test]
async fn a_silent_seller_refund_exists_when_advance_clock_returns_and_succeeds_3_business_days_later()
 {
    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(&storage, &[]).await.expect("start");
    let mut client = Client::connect(suite.addresses).await;
    let dispute_id = client.silent_seller_case("o-silent", true).await;

    let moved = client.advance(15 * DAY + 3600).await;
    assert_eq!(
        client.dispute_state(&dispute_id).await,
        DisputeState::Resolved as i32
    );
    let refunds = client.refunds("o-silent").await;
    assert_eq!(
        refunds.len(),
        1,
        "the refund exists when AdvanceClock returns: {moved:?}"
    );
    assert_eq!(refunds[0].amount, usd(2490));
    assert!(
        moved
            .work
            .iter()
            .any(|w| w.worker == "disputes-deadlines" && w.items >= 1),
        "the response says the deadline fired: {moved:?}"
    );

    let now = client.now().await;
    let three_business_days = BusinessCalendar::weekends_only()
        .add_business_days(now.date_naive(), 3)
        .and_time(now.time())
        .and_utc();
    client
        .advance((three_business_days - now).num_seconds())
        .await;
    let refunds = client.refunds("o-silent").await;
    assert_eq!(
        refunds[0].status,
        RefundStatus::Succeeded as i32,
        "a wallet refund is paid within 3 business days: {:?}",
        refunds[0]
    );
    suite.kill().await;
}

#[tokio::test]
async fn only_the_platform_moves_the_test_clock_and_anyone_may_read_it() {
    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(&storage, &[]).await.expect("start");
    let mut client = Client::connect(suite.addresses).await;
    for role in [Role::Buyer, Role::Seller, Role::Arbiter] {
        let refused = client
            .clock
            .advance_clock(call(
                role,
                "someone",
                AdvanceClockRequest { seconds: 86_400 },
            ))
            .await
            .expect_err("only the platform moves the clock");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{role:?}");
    }
    let before = client.now().await;
    client.advance(3_600).await;
    assert_eq!((client.now().await - before).num_seconds(), 3_600);
    suite.kill().await;
}

#[tokio::test]
async fn a_return_authorised_right_after_the_clock_moved_gets_its_label_at_once() {
    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(&storage, &[]).await.expect("start");
    let mut client = Client::connect(suite.addresses).await;
    client.advance(9 * DAY).await;
    client
        .record_order(
            "o-jp",
            "b-kenji",
            3000,
            PaymentMethod::Card,
            "JP",
            "EMS",
            8,
            Some(2),
            true,
        )
        .await;
    client
        .record_capture("o-jp", "b-kenji", 3000, PaymentMethod::Card)
        .await;
    let dispute = client
        .open_dispute(
            "o-jp",
            "b-kenji",
            DisputeKind::ReturnAndRefund,
            DisputeReason::ChangedMind,
        )
        .await;
    assert_eq!(dispute.state, DisputeState::AwaitingReturn as i32);
    client.advance(0).await;
    let label = client
        .labels
        .create_return_label(call(
            Role::Buyer,
            "b-kenji",
            CreateReturnLabelRequest {
                request_id: "label-o-jp".into(),
                order_id: "o-jp".into(),
                dispute_id: dispute.dispute_id.clone(),
                method: ReturnMethod::Pickup as i32,
                provider_code: "SAGAWA".into(),
                sender: Some(Address {
                    name: "Kenji Buyer".into(),
                    line1: "2-1 Chiyoda".into(),
                    city: "Tokyo".into(),
                    postal_code: "100-0001".into(),
                    country_code: "JP".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("the authorisation arrived: the label is issued at once")
        .into_inner()
        .label
        .expect("a label");
    assert!(label.free_return);
    suite.kill().await;
}

#[tokio::test]
async fn a_dispute_resolved_before_the_capture_is_refunded_once_the_capture_arrives() {
    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(&storage, &[]).await.expect("start");
    let mut client = Client::connect(suite.addresses).await;
    let dispute_id = client.silent_seller_case("o-late", false).await;
    client.advance(15 * DAY + 3600).await;
    assert_eq!(
        client.dispute_state(&dispute_id).await,
        DisputeState::Resolved as i32
    );
    assert!(
        client.refunds("o-late").await.is_empty(),
        "no capture, no refund yet"
    );
    let (ok, dead) = cli(
        &suite.addresses,
        storage.data_dir.path(),
        &["outbox", "list", "--dead"],
    )
    .await;
    assert!(ok, "{dead}");
    assert!(
        dead.contains("disputes: 0 dead"),
        "the early refund request is kept, not a dead letter: {dead}"
    );

    client
        .record_capture("o-late", "b-ana", 2490, PaymentMethod::Wallet)
        .await;
    client.advance(0).await;
    let refunds = client.refunds("o-late").await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].amount, usd(2490));
    suite.kill().await;
}

/// A refunds stand-in between the suite's relay and the real refunds service: it answers
/// INTERNAL while `broken`, and forwards to the real service once fixed.
#[derive(Clone, Default)]
struct FlakyRefunds {
    broken: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    real: Arc<Mutex<Option<std::net::SocketAddr>>>,
}

#[tonic::async_trait]
impl RefundService for FlakyRefunds {
    async fn create_refund(
        &self,
        request: tonic::Request<CreateRefundRequest>,
    ) -> Result<tonic::Response<CreateRefundResponse>, tonic::Status> {
        if self.broken.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(tonic::Status::internal("the refunds database is on fire"));
        }
        let real = self
            .real
            .lock()
            .expect("not poisoned")
            .ok_or_else(|| tonic::Status::unavailable("no real refunds yet"))?;
        let authorization = request.metadata().get("authorization").cloned();
        let mut forward = tonic::Request::new(request.into_inner());
        if let Some(authorization) = authorization {
            forward
                .metadata_mut()
                .insert("authorization", authorization);
        }
        self.forwarded.fetch_add(1, Ordering::SeqCst);
        RefundServiceClient::new(support::channel(real).await)
            .create_refund(forward)
            .await
    }

    async fn record_capture(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::RecordCaptureRequest>,
    ) -> Result<tonic::Response<returns_proto::refunds::v1::RecordCaptureResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn get_refund(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::GetRefundRequest>,
    ) -> Result<tonic::Response<returns_proto::refunds::v1::GetRefundResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn list_refunds(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::ListRefundsRequest>,
    ) -> Result<tonic::Response<returns_proto::refunds::v1::ListRefundsResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn cancel_refund(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::CancelRefundRequest>,
    ) -> Result<tonic::Response<returns_proto::refunds::v1::CancelRefundResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn record_return_progress(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::RecordReturnProgressRequest>,
    ) -> Result<
        tonic::Response<returns_proto::refunds::v1::RecordReturnProgressResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn record_chargeback(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::RecordChargebackRequest>,
    ) -> Result<tonic::Response<returns_proto::refunds::v1::RecordChargebackResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }

    async fn get_settlement_report(
        &self,
        _request: tonic::Request<returns_proto::refunds::v1::GetSettlementReportRequest>,
    ) -> Result<
        tonic::Response<returns_proto::refunds::v1::GetSettlementReportResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("not part of this stand-in"))
    }
}

#[tokio::test]
async fn a_message_refused_n_times_is_dead_listed_by_the_cli_and_delivered_once_after_retry() {
    let flaky = FlakyRefunds::default();
    flaky.broken.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stub_addr = listener.local_addr().expect("addr");
    let stub = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RefundServiceServer::new(flaky.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(
        &storage,
        &[
            ("RETURNS_OUTBOX_MAX_ATTEMPTS", "3".to_string()),
            ("RETURNS_REFUNDS_URL", format!("http://{stub_addr}")),
        ],
    )
    .await
    .expect("start");
    *flaky.real.lock().expect("not poisoned") = Some(suite.addresses.refunds);
    let mut client = Client::connect(suite.addresses).await;
    client.silent_seller_case("o-poison", true).await;
    let moved = client.advance(15 * DAY + 3600).await;
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 3, "{moved:?}");
    assert!(client.refunds("o-poison").await.is_empty());

    let data = storage.data_dir.path();
    let (ok, listed) = cli(&suite.addresses, data, &["outbox", "list", "--dead"]).await;
    assert!(ok, "{listed}");
    let dead: Vec<&str> = listed.lines().filter(|l| l.contains(" DEAD ")).collect();
    assert_eq!(dead.len(), 1, "{listed}");
    assert!(
        dead[0].contains("refunds.CreateRefund") && dead[0].contains("attempts=3"),
        "{listed}"
    );
    assert!(
        dead[0].contains("Internal"),
        "the last error is shown: {listed}"
    );
    assert!(listed.contains("disputes: 1 dead"), "{listed}");
    let message_id = dead[0]
        .split_whitespace()
        .nth(1)
        .expect("an id")
        .to_string();

    // The cause is fixed; the operator retries; the message is delivered exactly once.
    flaky.broken.store(false, Ordering::SeqCst);
    let (ok, retried) = cli(&suite.addresses, data, &["outbox", "retry", &message_id]).await;
    assert!(ok, "{retried}");
    client.advance(0).await;
    let refunds = client.refunds("o-poison").await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(flaky.forwarded.load(Ordering::SeqCst), 1);
    let (ok, listed) = cli(&suite.addresses, data, &["outbox", "list"]).await;
    assert!(
        ok && listed.contains("disputes: 0 dead, 0 pending"),
        "{listed}"
    );
    let (ok, again) = cli(&suite.addresses, data, &["outbox", "retry", &message_id]).await;
    assert!(!ok, "a delivered message cannot be retried: {again}");
    let (ok, discard) = cli(
        &suite.addresses,
        data,
        &[
            "outbox",
            "discard",
            &message_id,
            "--reason",
            "already delivered",
        ],
    )
    .await;
    assert!(!ok, "only dead messages are discarded: {discard}");
    suite.kill().await;
    stub.abort();
}
