//! The foundation's promises, checked against the real suite over gRPC: health, reflection,
//! authentication, role checks, the shared test clock and graceful shutdown.

mod support;

use returns_domain::dispute::Role;
use returns_platform::testing::{authorized, token};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{ListDisputesRequest, RuleOnDisputeRequest};
use returns_proto::refunds::v1::GetSettlementReportRequest;
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_proto::service_names;
use returns_proto::testing::v1::test_clock_service_client::TestClockServiceClient;
use returns_proto::testing::v1::{AdvanceClockRequest, NowRequest};
use support::{RunningSuite, channel};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn listed_services(addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("not an error");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn every_service_reports_serving_and_lists_itself_through_reflection() {
    let suite = RunningSuite::start().await;
    for (addr, name) in [
        (suite.addresses.disputes, service_names::DISPUTES),
        (suite.addresses.labels, service_names::LABELS),
        (suite.addresses.refunds, service_names::REFUNDS),
    ] {
        let mut health = HealthClient::new(channel(addr).await);
        let status = health
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await
            .expect("health answers without a token")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{name} at {addr}");

        let services = listed_services(addr).await;
        assert!(services.contains(&name.to_string()), "{name}: {services:?}");
        for other in [
            service_names::DISPUTES,
            service_names::LABELS,
            service_names::REFUNDS,
        ] {
            if other != name {
                assert!(
                    !services.contains(&other.to_string()),
                    "{name} lists {other}"
                );
            }
        }
    }
    suite.stop().await.expect("graceful shutdown");
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let suite = RunningSuite::start().await;
    let mut disputes = DisputeServiceClient::new(channel(suite.addresses.disputes).await);
    let missing = disputes
        .list_disputes(ListDisputesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let garbage = disputes
        .list_disputes(authorized(ListDisputesRequest::default(), "not-a-token"))
        .await
        .expect_err("bad token");
    assert_eq!(garbage.code(), Code::Unauthenticated, "{garbage:?}");
}

#[tokio::test]
async fn a_buyer_token_on_an_arbiter_only_rpc_is_permission_denied() {
    let suite = RunningSuite::start().await;
    let mut disputes = DisputeServiceClient::new(channel(suite.addresses.disputes).await);
    let denied = disputes
        .rule_on_dispute(authorized(
            RuleOnDisputeRequest::default(),
            &token(Role::Buyer, "b-1"),
        ))
        .await
        .expect_err("buyers do not rule");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("arbiter"), "{}", denied.message());

    // The arbiter gets past the auth layer (whatever the handler then says).
    let arbiter = disputes
        .rule_on_dispute(authorized(
            RuleOnDisputeRequest::default(),
            &token(Role::Arbiter, "arb-1"),
        ))
        .await;
    if let Err(status) = arbiter {
        assert!(
            !matches!(
                status.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
            "{status:?}"
        );
    }

    let mut refunds = RefundServiceClient::new(channel(suite.addresses.refunds).await);
    let seller = refunds
        .get_settlement_report(authorized(
            GetSettlementReportRequest::default(),
            &token(Role::Seller, "s-1"),
        ))
        .await
        .expect_err("sellers do not read settlement reports");
    assert_eq!(seller.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_test_clock_is_one_clock_shared_by_all_three_services() {
    let suite = RunningSuite::start().await;
    let auth = token(Role::Platform, "tester");
    let mut on_disputes = TestClockServiceClient::new(channel(suite.addresses.disputes).await);
    let mut on_refunds = TestClockServiceClient::new(channel(suite.addresses.refunds).await);
    let before = on_refunds
        .now(authorized(NowRequest {}, &auth))
        .await
        .expect("now")
        .into_inner()
        .now
        .expect("a time");
    let advanced = on_disputes
        .advance_clock(authorized(
            AdvanceClockRequest {
                seconds: 15 * 86_400,
            },
            &auth,
        ))
        .await
        .expect("advance")
        .into_inner()
        .now
        .expect("a time");
    assert_eq!(advanced.seconds - before.seconds, 15 * 86_400);
    let seen_by_refunds = on_refunds
        .now(authorized(NowRequest {}, &auth))
        .await
        .expect("now")
        .into_inner()
        .now
        .expect("a time");
    assert_eq!(seen_by_refunds, advanced);

    let backwards = on_disputes
        .advance_clock(authorized(AdvanceClockRequest { seconds: -1 }, &auth))
        .await
        .expect_err("the clock never goes back");
    assert_eq!(backwards.code(), Code::InvalidArgument);
    let unauthenticated = on_disputes
        .now(NowRequest {})
        .await
        .expect_err("the test clock needs a token too");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}
