//! A payment-provider adapter for a Stripe-shaped HTTP refunds API.
//!
//! - `POST {base}/v1/refunds` with an `Idempotency-Key` header and a JSON body
//!   `{"amount": 1234, "currency": "USD", "method": "CARD", "refund_id": "..."}` answers
//!   `{"id": "...", "status": "pending" | "succeeded" | "failed", "failure_reason": "..."}`;
//!   a repeat of the key answers the first refund again (the provider's idempotency).
//! - `GET {base}/v1/refunds/{id}` answers the same object.
//!
//! Status mapping: 2xx is an answer; 408, 409 (a request with that key still in flight),
//! 429 and 5xx are transient, like connection errors and timeouts; other 4xx are rejections.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::provider::{PaymentProvider, ProviderError, ProviderStatus, SubmitRequest};

/// Where and how to reach the provider.
#[derive(Clone)]
pub struct HttpProviderConfig {
    /// E.g. `http://127.0.0.1:8080` (no trailing slash needed).
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when set; never printed.
    pub api_key: Option<String>,
    /// Per-request deadline; a timeout is transient (the key makes the retry safe).
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The adapter.
#[derive(Debug, Clone)]
pub struct HttpProvider {
    config: HttpProviderConfig,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug, Serialize)]
struct CreateRefundBody<'a> {
    amount: i64,
    currency: &'a str,
    method: &'a str,
    refund_id: &'a str,
}

#[derive(Debug, Deserialize)]
struct RefundObject {
    id: String,
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
}

impl HttpProvider {
    pub fn new(config: HttpProviderConfig) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        HttpProvider { config, client }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<RefundObject, ProviderError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header(header::ACCEPT, "application/json");
        if let Some(key) = idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(api_key) = &self.config.api_key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {api_key}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ProviderError::Rejected(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ProviderError::Transient(format!("connection failed: {e}")))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ProviderError::Transient(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, ProviderError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| {
                ProviderError::Transient(format!("no answer within {:?}", self.config.timeout))
            })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::Transient(format!("unreadable answer ({status}): {e}"))
            });
        }
        let text = String::from_utf8_lossy(&bytes)
            .chars()
            .take(300)
            .collect::<String>();
        if is_transient(status) {
            Err(ProviderError::Transient(format!("{status}: {text}")))
        } else {
            Err(ProviderError::Rejected(format!("{status}: {text}")))
        }
    }
}

fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        )
}

fn to_status(object: &RefundObject) -> ProviderStatus {
    match object.status.as_str() {
        "succeeded" => ProviderStatus::Succeeded,
        "failed" | "canceled" | "cancelled" => ProviderStatus::Failed(
            object
                .failure_reason
                .clone()
                .unwrap_or_else(|| format!("provider status {}", object.status)),
        ),
        _ => ProviderStatus::Processing,
    }
}

#[tonic::async_trait]
impl PaymentProvider for HttpProvider {
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError> {
        let body = serde_json::to_vec(&CreateRefundBody {
            amount: request.amount.minor_units,
            currency: request.amount.currency.as_str(),
            method: request.method.code(),
            refund_id: &request.refund_id,
        })
        .map_err(|e| ProviderError::Rejected(format!("cannot encode the refund: {e}")))?;
        let object = self
            .call(
                Method::POST,
                "/v1/refunds",
                Some(&request.idempotency_key),
                Some(body),
            )
            .await?;
        if let ProviderStatus::Failed(reason) = to_status(&object) {
            return Err(ProviderError::Rejected(reason));
        }
        Ok(object.id)
    }

    async fn status(&self, reference: &str) -> Result<ProviderStatus, ProviderError> {
        if reference.is_empty()
            || !reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ProviderError::Rejected(format!(
                "unusable provider reference {reference:?}"
            )));
        }
        let object = self
            .call(Method::GET, &format!("/v1/refunds/{reference}"), None, None)
            .await?;
        Ok(to_status(&object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(status: &str, reason: Option<&str>) -> RefundObject {
        RefundObject {
            id: "re_1".into(),
            status: status.into(),
            failure_reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn provider_statuses_map_to_processing_succeeded_or_failed_with_the_reason() {
        assert_eq!(
            to_status(&object("pending", None)),
            ProviderStatus::Processing
        );
        assert_eq!(
            to_status(&object("requires_action", None)),
            ProviderStatus::Processing
        );
        assert_eq!(
            to_status(&object("succeeded", None)),
            ProviderStatus::Succeeded
        );
        assert_eq!(
            to_status(&object("failed", Some("card closed"))),
            ProviderStatus::Failed("card closed".into())
        );
        assert_eq!(
            to_status(&object("canceled", None)),
            ProviderStatus::Failed("provider status canceled".into())
        );
    }

    #[test]
    fn only_timeouts_conflicts_rate_limits_and_server_errors_are_retried() {
        for code in [408, 409, 429, 500, 502, 503] {
            assert!(
                is_transient(StatusCode::from_u16(code).expect("code")),
                "{code}"
            );
        }
        for code in [400, 401, 402, 403, 404, 422] {
            assert!(
                !is_transient(StatusCode::from_u16(code).expect("code")),
                "{code}"
            );
        }
    }

    #[test]
    fn the_api_key_never_prints() {
        let config = HttpProviderConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_key: Some("sk_live_secret".into()),
            timeout: Duration::from_secs(1),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk_live_secret"));
        assert!(printed.contains("[redacted]"));
    }
}
