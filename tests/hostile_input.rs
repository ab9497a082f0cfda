//! Hostile input at the edge, over gRPC against the three services: each case a request that
//! used to be accepted (and fail later, for ever, or panic) and is now refused at once with
//! INVALID_ARGUMENT naming the field in `google.rpc.BadRequest`, leaving nothing written.
//! On SQLite, and on PostgreSQL when CI sets RETURNS_TEST_POSTGRES_URL.

mod support;

use std::time::Duration;

use chrono::Utc;
use prost_types::Timestamp;
use returns_domain::dispute::Role;
use returns_proto::common::v1::{Address, BuyerTier, Money, PaymentMethod};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{ListDisputesRequest, RecordOrderRequest};
use returns_proto::labels::v1::return_label_service_client::ReturnLabelServiceClient;
use returns_proto::labels::v1::{CreateReturnLabelRequest, ReturnMethod};
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_proto::refunds::v1::{
    CreateRefundRequest, Deduction, DeductionKind, RecordCaptureRequest,
};
use support::RunningSuite;
use tonic::Code;
use tonic_types::StatusExt;

fn call<T>(suite: &RunningSuite, role: Role, sub: &str, message: T) -> tonic::Request<T> {
    let token = suite
        .context
        .issuer
        .issue(sub, role, None, Duration::from_secs(600))
        .expect("token");
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

/// The fields an INVALID_ARGUMENT names.
fn refused_fields<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Vec<String> {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn usd(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        minor_units,
    })
}

fn capture(order_id: &str, amount: Option<Money>) -> RecordCaptureRequest {
    RecordCaptureRequest {
        request_id: format!("capture-{order_id}"),
        order_id: order_id.into(),
        buyer_id: "b-1".into(),
        amount,
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        ..Default::default()
    }
}

fn order(order_id: &str, shipped_seconds: i64) -> RecordOrderRequest {
    let now = Utc::now().timestamp();
    RecordOrderRequest {
        request_id: format!("order-{order_id}-{shipped_seconds}"),
        order_id: order_id.into(),
        buyer_id: "b-1".into(),
        seller_id: "s-1".into(),
        total: usd(2_000),
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        carrier: "DHL".into(),
        placed_at: Some(Timestamp {
            seconds: now - 10 * 86_400,
            nanos: 0,
        }),
        shipped_at: Some(Timestamp {
            seconds: shipped_seconds,
            nanos: 0,
        }),
        destination_country: "GB".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn nul_bytes_in_ids_filters_and_notes_are_refused_naming_the_field() {
    let suite = RunningSuite::start().await;
    let mut disputes = DisputeServiceClient::new(support::channel(suite.addresses.disputes).await);
    let mut refunds = RefundServiceClient::new(support::channel(suite.addresses.refunds).await);
    let listed = disputes
        .list_disputes(call(
            &suite,
            Role::Platform,
            "ops",
            ListDisputesRequest {
                buyer_id: "b-\0".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(refused_fields(listed), ["buyer_id"]);
    let created = refunds
        .create_refund(call(
            &suite,
            Role::Platform,
            "ops",
            CreateRefundRequest {
                request_id: "r-1".into(),
                message_id: "m-1".into(),
                order_id: "o-1".into(),
                amount: usd(100),
                note: "refund\0".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(refused_fields(created), ["note"]);
    let mut nul_order = capture("o-1", usd(10));
    nul_order.order_id = "o-\0".into();
    let captured = refunds
        .record_capture(call(&suite, Role::Platform, "ops", nul_order))
        .await;
    assert_eq!(refused_fields(captured), ["order_id"]);
}

#[tokio::test]
async fn a_ship_date_in_year_10000_is_refused_and_the_order_stays_usable() {
    let suite = RunningSuite::start().await;
    let mut disputes = DisputeServiceClient::new(support::channel(suite.addresses.disputes).await);
    let far = disputes
        .record_order(call(
            &suite,
            Role::Platform,
            "orders",
            order("o-far", 253_402_300_800),
        ))
        .await;
    assert_eq!(refused_fields(far), ["shipped_at.seconds"]);
    let recorded = disputes
        .record_order(call(
            &suite,
            Role::Platform,
            "orders",
            order("o-far", Utc::now().timestamp() - 5 * 86_400),
        ))
        .await;
    assert!(recorded.is_ok(), "{recorded:?}");
}

#[tokio::test]
async fn huge_lists_and_megabyte_strings_are_refused() {
    let suite = RunningSuite::start().await;
    let mut labels = ReturnLabelServiceClient::new(support::channel(suite.addresses.labels).await);
    let mut refunds = RefundServiceClient::new(support::channel(suite.addresses.refunds).await);
    let label = labels
        .create_return_label(call(
            &suite,
            Role::Buyer,
            "b-1",
            CreateReturnLabelRequest {
                request_id: "label-1".into(),
                order_id: "o-1".into(),
                dispute_id: "d-1".into(),
                method: ReturnMethod::DropOff as i32,
                provider_code: "ROYAL_MAIL".into(),
                sender: Some(Address {
                    name: "Buyer".into(),
                    line1: "x".repeat(3 * 1024 * 1024),
                    city: "London".into(),
                    postal_code: "N1 9GU".into(),
                    country_code: "GB".into(),
                    ..Default::default()
                }),
            },
        ))
        .await;
    assert_eq!(refused_fields(label), ["sender.line1"]);
    let deduction = Deduction {
        kind: DeductionKind::ReturnPostage as i32,
        amount: usd(1),
        note: String::new(),
    };
    let created = refunds
        .create_refund(call(
            &suite,
            Role::Platform,
            "ops",
            CreateRefundRequest {
                request_id: "r-1".into(),
                order_id: "o-1".into(),
                amount: usd(100),
                deductions: vec![deduction; 10_000],
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(refused_fields(created), ["deductions"]);
}

#[tokio::test]
async fn amounts_near_i64_max_and_made_up_currencies_are_refused_and_nothing_is_recorded() {
    let suite = RunningSuite::start().await;
    let mut refunds = RefundServiceClient::new(support::channel(suite.addresses.refunds).await);
    let huge = refunds
        .record_capture(call(
            &suite,
            Role::Platform,
            "ops",
            capture("o-max", usd(i64::MAX)),
        ))
        .await;
    assert_eq!(refused_fields(huge), ["amount.minor_units"]);
    let made_up = refunds
        .record_capture(call(
            &suite,
            Role::Platform,
            "ops",
            capture(
                "o-zzz",
                Some(Money {
                    currency_code: "ZZZ".into(),
                    minor_units: 100,
                }),
            ),
        ))
        .await;
    assert_eq!(refused_fields(made_up), ["amount.currency_code"]);
    // A real currency the deployment has no exchange rate for is refused at the door too,
    // rather than failing the buyer's refund later.
    let unpriced = refunds
        .record_capture(call(
            &suite,
            Role::Platform,
            "ops",
            capture(
                "o-brl",
                Some(Money {
                    currency_code: "BRL".into(),
                    minor_units: 100,
                }),
            ),
        ))
        .await;
    assert_eq!(refused_fields(unpriced), ["amount.currency_code"]);
    let mut disputes = DisputeServiceClient::new(support::channel(suite.addresses.disputes).await);
    let mut brl_order = order("o-brl", Utc::now().timestamp() - 5 * 86_400);
    brl_order.total = Some(Money {
        currency_code: "BRL".into(),
        minor_units: 10_000,
    });
    let recorded = disputes
        .record_order(call(&suite, Role::Platform, "orders", brl_order))
        .await;
    assert_eq!(refused_fields(recorded), ["total.currency_code"]);
    // Nothing was recorded: the real capture of each order is accepted afterwards.
    for order_id in ["o-max", "o-zzz"] {
        let mut real = capture(order_id, usd(2_000));
        real.request_id = format!("real-{order_id}");
        let recorded = refunds
            .record_capture(call(&suite, Role::Platform, "ops", real))
            .await;
        assert!(recorded.is_ok(), "{recorded:?}");
    }
}

#[tokio::test]
async fn bytes_that_are_not_the_request_message_get_invalid_argument_not_internal() {
    let suite = RunningSuite::start().await;
    let channel = support::channel(suite.addresses.refunds).await;
    let token = suite
        .context
        .issuer
        .issue("ops", Role::Platform, None, Duration::from_secs(600))
        .expect("token");
    for garbage in [
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x0a, 0x80],
        vec![0x12],
    ] {
        let status = support::raw::unary(
            &channel,
            "/returns.refunds.v1.RefundService/RecordCapture",
            &token,
            garbage,
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}
