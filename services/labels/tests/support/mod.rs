//! Shared set-up for the labels integration tests: a fresh database on the backend the
//! environment selects, the service on an ephemeral port, and helpers for common requests.

#![allow(dead_code)]

use prost::Message;
use returns_domain::dispute::Role;
use returns_platform::SuiteContext;
use returns_platform::db::{Database, column};
use returns_platform::testing::{
    TestDatabase, TestServer, authorized, carrier_token, test_context, token,
};
use returns_proto::common::v1 as common;
use returns_proto::convert::timestamp_to_proto;
use returns_proto::labels::v1 as pb;
use returns_proto::labels::v1::return_label_service_client::ReturnLabelServiceClient;
use tonic::transport::Channel;

pub struct Harness {
    pub context: SuiteContext,
    pub server: TestServer,
    pub client: ReturnLabelServiceClient<Channel>,
    pub db: Database,
    _target: TestDatabase,
}

pub async fn harness() -> Harness {
    let target = TestDatabase::create().await;
    let db = Database::open(&target.url, returns_labels::MIGRATIONS)
        .await
        .expect("open the test database");
    let context = test_context();
    let server = TestServer::start(returns_labels::spec(&context, db.clone()), &context).await;
    let client = ReturnLabelServiceClient::new(server.channel().await);
    Harness {
        context,
        server,
        client,
        db,
        _target: target,
    }
}

pub fn platform() -> String {
    token(Role::Platform, "disputes-service")
}

pub fn buyer(id: &str) -> String {
    token(Role::Buyer, id)
}

pub fn seller(id: &str) -> String {
    token(Role::Seller, id)
}

pub fn carrier(code: &str) -> String {
    carrier_token(code)
}

pub fn address(name: &str, country: &str) -> common::Address {
    common::Address {
        name: name.into(),
        line1: "1 High Street".into(),
        line2: String::new(),
        city: "Town".into(),
        region: String::new(),
        postal_code: "AB1 2CD".into(),
        country_code: country.into(),
        phone: "+10000000000".into(),
    }
}

/// What an authorisation from disputes carries, with defaults tests override.
#[derive(Clone)]
pub struct Auth {
    pub order_id: String,
    pub buyer_id: String,
    pub seller_id: String,
    pub country: String,
    pub item_value: common::Money,
    pub free_return: bool,
    pub reason: common::DisputeReason,
    pub delivered_days_ago: i64,
}

impl Auth {
    pub fn new(order_id: &str, country: &str) -> Auth {
        Auth {
            order_id: order_id.into(),
            buyer_id: "b-1".into(),
            seller_id: "s-1".into(),
            country: country.into(),
            item_value: common::Money {
                currency_code: "USD".into(),
                minor_units: 5_000,
            },
            free_return: true,
            reason: common::DisputeReason::ChangedMind,
            delivered_days_ago: 3,
        }
    }
}

impl Harness {
    pub fn now(&self) -> returns_domain::time::Timestamp {
        self.context.clock.now()
    }

    pub fn advance_days(&self, days: u64) {
        self.context
            .test_clock
            .as_ref()
            .expect("test clock")
            .advance(std::time::Duration::from_secs(days * 86_400));
    }

    pub async fn authorise(&self, auth: &Auth) -> pb::ReturnAuthorisation {
        let request = pb::AuthoriseReturnRequest {
            message_id: uuid::Uuid::now_v7().to_string(),
            order_id: auth.order_id.clone(),
            dispute_id: format!("d-{}", auth.order_id),
            buyer_id: auth.buyer_id.clone(),
            seller_id: auth.seller_id.clone(),
            destination_country: auth.country.clone(),
            item_value: Some(auth.item_value.clone()),
            delivered_at: Some(timestamp_to_proto(
                self.now() - chrono::Duration::days(auth.delivered_days_ago),
            )),
            free_return: auth.free_return,
            postage_payer: common::PostagePayer::Unspecified.into(),
            ship_by: None,
            reason: auth.reason.into(),
            return_to: Some(address("Seller Ltd", "CN")),
        };
        self.client
            .clone()
            .authorise_return(authorized(request, &platform()))
            .await
            .expect("authorise")
            .into_inner()
            .authorisation
            .expect("authorisation")
    }

    pub async fn create(
        &self,
        order_id: &str,
        buyer_id: &str,
        country: &str,
        method: pb::ReturnMethod,
    ) -> Result<pb::ReturnLabel, tonic::Status> {
        let request = pb::CreateReturnLabelRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            order_id: order_id.into(),
            dispute_id: String::new(),
            method: method.into(),
            provider_code: String::new(),
            sender: Some(address("Buyer", country)),
        };
        self.client
            .clone()
            .create_return_label(authorized(request, &buyer(buyer_id)))
            .await
            .map(|r| r.into_inner().label.expect("label"))
    }

    pub async fn scan(
        &self,
        carrier_code: &str,
        event_id: &str,
        tracking: &str,
        kind: pb::TrackingEventType,
        hours_after_start: i64,
    ) -> Result<pb::ReportTrackingEventResponse, tonic::Status> {
        let request = pb::ReportTrackingEventRequest {
            carrier_event_id: event_id.into(),
            tracking_number: tracking.into(),
            r#type: kind.into(),
            occurred_at: Some(timestamp_to_proto(
                returns_platform::testing::test_start()
                    + chrono::Duration::hours(hours_after_start),
            )),
            location: "Mail Centre".into(),
            details: String::new(),
        };
        self.client
            .clone()
            .report_tracking_event(authorized(request, &carrier(carrier_code)))
            .await
            .map(|r| r.into_inner())
    }

    /// Outbox rows as (destination, kind, payload), oldest first.
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

    /// The disputes-bound return events in the outbox, decoded.
    pub async fn return_events(
        &self,
    ) -> Vec<returns_proto::disputes::v1::RecordReturnEventRequest> {
        self.outbox()
            .await
            .into_iter()
            .filter(|(d, k, _)| d == "disputes" && k == "RecordReturnEvent")
            .map(|(_, _, p)| {
                returns_proto::disputes::v1::RecordReturnEventRequest::decode(p.as_slice())
                    .expect("decode")
            })
            .collect()
    }

    /// The refunds-bound progress messages in the outbox, decoded.
    pub async fn progress(&self) -> Vec<returns_proto::refunds::v1::RecordReturnProgressRequest> {
        self.outbox()
            .await
            .into_iter()
            .filter(|(d, k, _)| d == "refunds" && k == "RecordReturnProgress")
            .map(|(_, _, p)| {
                returns_proto::refunds::v1::RecordReturnProgressRequest::decode(p.as_slice())
                    .expect("decode")
            })
            .collect()
    }
}
