//! Test harness: a disputes server over a fresh database (SQLite, or PostgreSQL when
//! RETURNS_TEST_POSTGRES_URL is set), tokens for each actor, and helpers to build orders and
//! open disputes through the real gRPC client.
#![allow(dead_code)]

use std::time::Duration;

use prost::Message;
use returns_domain::dispute::Role;
use returns_domain::time::Timestamp;
use returns_platform::db::column;
use returns_platform::testing::{TestDatabase, TestServer, authorized, test_context, token};
use returns_platform::{Database, SuiteContext};
use returns_proto::common::v1 as common;
use returns_proto::convert::timestamp_to_proto;
use returns_proto::disputes::v1 as pb;
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use tonic::transport::Channel;

/// The upload size limit of test servers.
pub const EVIDENCE_LIMIT: i64 = 64 * 1024;

pub const DAY: Duration = Duration::from_secs(24 * 3600);

pub struct Harness {
    pub ctx: SuiteContext,
    pub db: Database,
    pub target: TestDatabase,
    /// Where uploads go; a small limit so size refusals are cheap to test.
    pub evidence: returns_disputes::evidence::EvidenceStore,
    _evidence_dir: tempfile::TempDir,
    pub server: Option<TestServer>,
    pub client: DisputeServiceClient<Channel>,
}

impl Harness {
    pub async fn start() -> Harness {
        let ctx = test_context();
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, returns_disputes::MIGRATIONS)
            .await
            .expect("open the database");
        let evidence_dir = tempfile::tempdir().expect("evidence folder");
        let evidence = returns_disputes::evidence::EvidenceStore::local(evidence_dir.path())
            .with_max_bytes(EVIDENCE_LIMIT);
        let spec = returns_disputes::spec_with_evidence(&ctx, db.clone(), evidence.clone());
        let server = TestServer::start(spec, &ctx).await;
        let client = DisputeServiceClient::new(server.channel().await);
        Harness {
            ctx,
            db,
            target,
            evidence,
            _evidence_dir: evidence_dir,
            server: Some(server),
            client,
        }
    }

    /// Stops the server and closes the database, then opens both again on the same data:
    /// what a process restart does.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.db.close().await;
        self.db = Database::open(&self.target.url, returns_disputes::MIGRATIONS)
            .await
            .expect("reopen the database");
        let spec =
            returns_disputes::spec_with_evidence(&self.ctx, self.db.clone(), self.evidence.clone());
        let server = TestServer::start(spec, &self.ctx).await;
        self.client = DisputeServiceClient::new(server.channel().await);
        self.server = Some(server);
    }

    pub fn now(&self) -> Timestamp {
        self.ctx.clock.now()
    }

    pub fn advance(&self, by: Duration) -> Timestamp {
        self.ctx
            .test_clock
            .as_ref()
            .expect("tests run on the manual clock")
            .advance(by)
    }

    /// Applies every due deadline now (what the background worker also does).
    pub async fn process_deadlines(&self) -> usize {
        returns_disputes::process_due_deadlines(&self.db, &self.ctx, self.now())
            .await
            .expect("process deadlines")
    }

    pub async fn record_order(&mut self, order: pb::RecordOrderRequest) -> pb::Order {
        self.client
            .record_order(authorized(order, &platform()))
            .await
            .expect("record order")
            .into_inner()
            .order
            .expect("order")
    }

    pub async fn open(&mut self, request: pb::OpenDisputeRequest) -> pb::Dispute {
        self.client
            .open_dispute(authorized(request, &buyer()))
            .await
            .expect("open dispute")
            .into_inner()
            .dispute
            .expect("dispute")
    }

    pub async fn get(
        &mut self,
        dispute_id: &str,
        as_token: &str,
    ) -> Result<pb::Dispute, tonic::Status> {
        self.client
            .get_dispute(authorized(
                pb::GetDisputeRequest {
                    dispute_id: dispute_id.to_owned(),
                },
                as_token,
            ))
            .await
            .map(|r| r.into_inner().dispute.expect("dispute"))
    }

    pub async fn events(&mut self, dispute_id: &str) -> Vec<pb::DisputeEvent> {
        self.client
            .list_dispute_events(authorized(
                pb::ListDisputeEventsRequest {
                    dispute_id: dispute_id.to_owned(),
                    page_size: 200,
                    page_token: String::new(),
                },
                &arbiter(),
            ))
            .await
            .expect("events")
            .into_inner()
            .events
    }

    /// Every outbox row as (destination, kind, payload).
    pub async fn outbox(&self) -> Vec<(String, String, Vec<u8>)> {
        sqlx::query("SELECT destination, kind, payload FROM outbox ORDER BY created_at, message_id")
            .fetch_all(self.db.pool())
            .await
            .expect("read outbox")
            .iter()
            .map(|row| {
                (
                    column::<String>(row, "destination").expect("destination"),
                    column::<String>(row, "kind").expect("kind"),
                    column::<Vec<u8>>(row, "payload").expect("payload"),
                )
            })
            .collect()
    }

    pub async fn refund_requests(&self) -> Vec<returns_proto::refunds::v1::CreateRefundRequest> {
        self.outbox()
            .await
            .into_iter()
            .filter(|(_, kind, _)| kind == "CreateRefund")
            .map(|(_, _, payload)| {
                returns_proto::refunds::v1::CreateRefundRequest::decode(payload.as_slice())
                    .expect("decode CreateRefund")
            })
            .collect()
    }

    /// Every `RecordReturnProgress` sent, as (destination, outbox message id, request).
    pub async fn return_progress(
        &self,
    ) -> Vec<(
        String,
        String,
        returns_proto::refunds::v1::RecordReturnProgressRequest,
    )> {
        sqlx::query(
            "SELECT message_id, destination, payload FROM outbox \
             WHERE kind = 'RecordReturnProgress' ORDER BY created_at, message_id",
        )
        .fetch_all(self.db.pool())
        .await
        .expect("read outbox")
        .iter()
        .map(|row| {
            let payload = column::<Vec<u8>>(row, "payload").expect("payload");
            (
                column::<String>(row, "destination").expect("destination"),
                column::<String>(row, "message_id").expect("message_id"),
                returns_proto::refunds::v1::RecordReturnProgressRequest::decode(payload.as_slice())
                    .expect("decode RecordReturnProgress"),
            )
        })
        .collect()
    }

    pub async fn return_authorisations(
        &self,
    ) -> Vec<returns_proto::labels::v1::AuthoriseReturnRequest> {
        self.outbox()
            .await
            .into_iter()
            .filter(|(_, kind, _)| kind == "AuthoriseReturn")
            .map(|(_, _, payload)| {
                returns_proto::labels::v1::AuthoriseReturnRequest::decode(payload.as_slice())
                    .expect("decode AuthoriseReturn")
            })
            .collect()
    }
}

pub fn buyer() -> String {
    token(Role::Buyer, "b-1")
}
pub fn seller() -> String {
    token(Role::Seller, "s-1")
}
pub fn other_buyer() -> String {
    token(Role::Buyer, "b-2")
}
pub fn other_seller() -> String {
    token(Role::Seller, "s-2")
}
pub fn arbiter() -> String {
    token(Role::Arbiter, "a-1")
}
pub fn platform() -> String {
    token(Role::Platform, "orders-service")
}

pub fn usd(minor: i64) -> common::Money {
    common::Money {
        currency_code: "USD".into(),
        minor_units: minor,
    }
}

pub fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A USD 80 DHL order of b-1 from s-1, shipped ten days before `now` and delivered five.
pub fn order(order_id: &str, now: Timestamp) -> pb::RecordOrderRequest {
    pb::RecordOrderRequest {
        request_id: rid(),
        order_id: order_id.into(),
        buyer_id: "b-1".into(),
        seller_id: "s-1".into(),
        total: Some(usd(8000)),
        payment_method: common::PaymentMethod::Card as i32,
        buyer_tier: common::BuyerTier::Standard as i32,
        carrier: "DHL".into(),
        placed_at: Some(timestamp_to_proto(now - chrono::Duration::days(12))),
        shipped_at: Some(timestamp_to_proto(now - chrono::Duration::days(10))),
        promised_ship_by: None,
        delivered_at: Some(timestamp_to_proto(now - chrono::Duration::days(5))),
        destination_country: "GB".into(),
        free_return: false,
    }
}

pub fn evidence(kind: common::EvidenceKind) -> pb::NewEvidence {
    pb::NewEvidence {
        kind: kind as i32,
        content_type: "image/jpeg".into(),
        size_bytes: 2048,
        sha256: "ab".repeat(32),
        uri: "https://evidence.example/1.jpg".into(),
        file_name: "1.jpg".into(),
    }
}

pub fn open_request(
    order_id: &str,
    reason: common::DisputeReason,
    evidence_kinds: &[common::EvidenceKind],
) -> pb::OpenDisputeRequest {
    pb::OpenDisputeRequest {
        request_id: rid(),
        order_id: order_id.into(),
        kind: pb::DisputeKind::RefundOnly as i32,
        reason: reason as i32,
        requested_resolution: Some(pb::RequestedResolution {
            r#type: pb::ResolutionType::FullRefund as i32,
            amount: None,
        }),
        description: "not what I paid for".into(),
        evidence: evidence_kinds.iter().map(|k| evidence(*k)).collect(),
    }
}

pub fn state(d: &pb::Dispute) -> pb::DisputeState {
    pb::DisputeState::try_from(d.state).expect("known state")
}
