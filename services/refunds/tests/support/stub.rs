//! A stub of a Stripe-shaped payment API (hyper on port 0) for the HTTP provider adapter
//! and the crash test: one refund per idempotency key, answers recorded for comparison.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the stub payment API has seen and done.
#[derive(Debug, Default)]
pub struct StubState {
    /// Idempotency key -> (refund id, amount).
    pub refunds: HashMap<String, (String, i64)>,
    /// Refund ids whose money has arrived.
    pub settled: Vec<String>,
    pub posts: usize,
    /// Answer the next POSTs with 503.
    pub fail_next: usize,
    pub missing_key_or_auth: usize,
    /// The `refund_id` of each body -> the idempotency keys it was paid under (a refund paid
    /// under two keys would be a duplicate payment the key cannot catch).
    pub keys_by_refund: HashMap<String, Vec<String>>,
    /// Fires after every new refund the stub pays (the crash test kills right then).
    pub paid: Arc<tokio::sync::Notify>,
    /// Hold the answer to the next new payment until `release_reply` is notified: the payer
    /// cannot record the payment before then (the crash test kills it meanwhile).
    pub hold_reply_after_pay: bool,
    pub release_reply: Arc<tokio::sync::Notify>,
}

pub type Shared = Arc<Mutex<StubState>>;

async fn handle(
    state: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorised = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v == "Bearer sk_test_stub");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (answer, hold) = answer(&state, &method, &path, key, authorised, &body);
    if let Some(release) = hold {
        release.notified().await;
    }
    answer
}

/// A reply of the stub, and the release to wait for before sending it, if it is held.
type Answer = (
    Result<Response<Full<Bytes>>, Infallible>,
    Option<Arc<tokio::sync::Notify>>,
);

/// The stub's answer to a request, and whether to hold it until a release.
fn answer(
    state: &Shared,
    method: &hyper::Method,
    path: &str,
    key: Option<String>,
    authorised: bool,
    body: &Bytes,
) -> Answer {
    let mut state = state.lock().expect("stub state");
    let reply = |code: StatusCode, json: String| {
        Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .expect("a response"))
    };
    if !authorised {
        state.missing_key_or_auth += 1;
        return (
            reply(StatusCode::UNAUTHORIZED, r#"{"error":"no key"}"#.into()),
            None,
        );
    }
    if *method == hyper::Method::POST && path == "/v1/refunds" {
        state.posts += 1;
        let Some(key) = key else {
            state.missing_key_or_auth += 1;
            return (
                reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"Idempotency-Key required"}"#.into(),
                ),
                None,
            );
        };
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"try later"}"#.into(),
                ),
                None,
            );
        }
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let amount = parsed["amount"].as_i64().unwrap_or(0);
        if amount <= 0 {
            return (
                reply(StatusCode::BAD_REQUEST, r#"{"error":"amount"}"#.into()),
                None,
            );
        }
        let count = state.refunds.len();
        let fresh = !state.refunds.contains_key(&key);
        let (id, _) = state
            .refunds
            .entry(key.clone())
            .or_insert_with(|| (format!("re_{count}"), amount))
            .clone();
        let mut hold = None;
        if fresh {
            let refund_id = parsed["refund_id"].as_str().unwrap_or_default().to_string();
            state.keys_by_refund.entry(refund_id).or_default().push(key);
            state.paid.notify_one();
            if std::mem::take(&mut state.hold_reply_after_pay) {
                hold = Some(state.release_reply.clone());
            }
        }
        return (
            reply(
                StatusCode::OK,
                format!(r#"{{"id":"{id}","status":"pending"}}"#),
            ),
            hold,
        );
    }
    if *method == hyper::Method::GET
        && let Some(id) = path.strip_prefix("/v1/refunds/")
    {
        if !state.refunds.values().any(|(known, _)| known == id) {
            return (
                reply(
                    StatusCode::NOT_FOUND,
                    r#"{"error":"no such refund"}"#.into(),
                ),
                None,
            );
        }
        let status = if state.settled.iter().any(|s| s == id) {
            "succeeded"
        } else {
            "pending"
        };
        return (
            reply(
                StatusCode::OK,
                format!(r#"{{"id":"{id}","status":"{status}"}}"#),
            ),
            None,
        );
    }
    (reply(StatusCode::NOT_FOUND, "{}".into()), None)
}

/// Serves the stub on an ephemeral port; returns its base URL.
pub async fn stub(state: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| handle(state.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}
