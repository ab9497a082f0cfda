//! The HTTP payment-provider adapter against a local stub of the payment API (hyper on
//! port 0): idempotency keys, status mapping, and a refund settled end to end through it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use returns_domain::dispute::PaymentMethod;
use returns_domain::money::{CurrencyCode, Money};
use returns_proto::refunds::v1 as pb;
use returns_refunds::http_provider::{HttpProvider, HttpProviderConfig};
use returns_refunds::provider::{PaymentProvider, ProviderError, ProviderStatus, SubmitRequest};
use support::stub::{Shared, stub};
use support::{Harness, status};

fn provider(base_url: String) -> HttpProvider {
    HttpProvider::new(HttpProviderConfig {
        base_url,
        api_key: Some("sk_test_stub".into()),
        timeout: Duration::from_secs(5),
    })
}

fn submit(key: &str, minor: i64) -> SubmitRequest {
    SubmitRequest {
        idempotency_key: key.into(),
        refund_id: key.into(),
        amount: Money::new(CurrencyCode::USD, minor),
        method: PaymentMethod::Card,
    }
}

#[tokio::test]
async fn the_same_idempotency_key_gets_the_same_provider_refund() {
    let state = Shared::default();
    let api = provider(stub(state.clone()).await);
    let first = api
        .submit(&submit("refund-1", 500))
        .await
        .expect("accepted");
    let again = api
        .submit(&submit("refund-1", 500))
        .await
        .expect("accepted");
    assert_eq!(first, again);
    let other = api
        .submit(&submit("refund-2", 500))
        .await
        .expect("accepted");
    assert_ne!(first, other);
    let state = state.lock().expect("state");
    assert_eq!((state.posts, state.refunds.len()), (3, 2));
    assert_eq!(state.missing_key_or_auth, 0);
}

#[tokio::test]
async fn server_errors_are_transient_client_errors_are_rejections_and_status_maps() {
    let state = Shared::default();
    let base = stub(state.clone()).await;
    let api = provider(base.clone());
    state.lock().expect("state").fail_next = 1;
    assert!(matches!(
        api.submit(&submit("refund-1", 500)).await,
        Err(ProviderError::Transient(_))
    ));
    assert!(matches!(
        api.submit(&submit("refund-1", 0)).await,
        Err(ProviderError::Rejected(_))
    ));
    let id = api
        .submit(&submit("refund-1", 500))
        .await
        .expect("accepted");
    assert_eq!(api.status(&id).await, Ok(ProviderStatus::Processing));
    state.lock().expect("state").settled.push(id.clone());
    assert_eq!(api.status(&id).await, Ok(ProviderStatus::Succeeded));
    assert!(matches!(
        api.status("re_unknown").await,
        Err(ProviderError::Rejected(_))
    ));

    let unauthorised = HttpProvider::new(HttpProviderConfig {
        base_url: base,
        api_key: None,
        timeout: Duration::from_secs(5),
    });
    assert!(matches!(
        unauthorised.submit(&submit("refund-9", 500)).await,
        Err(ProviderError::Rejected(_))
    ));
}

#[tokio::test]
async fn an_unreachable_provider_is_a_transient_failure() {
    // Bind then drop a listener: nothing answers on that port any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let api = provider(format!("http://{addr}"));
    assert!(matches!(
        api.submit(&submit("refund-1", 500)).await,
        Err(ProviderError::Transient(_))
    ));
}

#[tokio::test]
async fn the_service_settles_a_refund_through_the_http_provider() {
    let state = Shared::default();
    let base = stub(state.clone()).await;
    let mut h = Harness::start().await;
    h.options.provider = Arc::new(provider(base));
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = h
        .refund("o-1", 2_000, pb::ReleaseCondition::Immediate)
        .await;
    state.lock().expect("state").fail_next = 1;
    let wall = returns_refunds::settlement::wall_now_micros();
    let pass = h.settle_at_wall(wall).await;
    assert_eq!(pass.retrying, 1);
    // The retry waits out the backoff in wall time (the business clock need not move).
    let backoff = i64::try_from(h.options.settlement.backoff_base.as_micros()).expect("micros");
    let pass = h.settle_at_wall(wall + backoff).await;
    assert_eq!(pass.submitted, 1);
    let submitted = h.get(&refund.refund_id).await;
    assert_eq!(status(&submitted), pb::RefundStatus::Submitted);
    assert_eq!(submitted.attempts, 2);
    assert!(submitted.provider_reference.starts_with("re_"));
    state
        .lock()
        .expect("state")
        .settled
        .push(submitted.provider_reference.clone());
    h.advance_days(7);
    h.settle().await;
    assert_eq!(
        status(&h.get(&refund.refund_id).await),
        pb::RefundStatus::Succeeded
    );
    let state = state.lock().expect("state");
    assert_eq!(state.refunds.len(), 1);
    assert_eq!(
        state
            .refunds
            .get(&format!("refund-{}", refund.refund_id))
            .map(|r| r.1),
        Some(2_000)
    );
}
