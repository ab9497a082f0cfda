//! The edge every request crosses before a handler sees it: one validation layer for all
//! three services, driven by the contracts' descriptors and one table of bounds, and the
//! last defence that turns a handler panic into INTERNAL.
//!
//! Every unary request is decoded against its method's input type (undecodable bytes are
//! INVALID_ARGUMENT, not INTERNAL) and walked field by field:
//! - strings: at most [`TEXT_RULES`]' length for the field (default [`DEFAULT_TEXT`]), no
//!   control characters (newline and tab only in free-text fields);
//! - repeated fields: at most [`LIST_RULES`]' count (default [`DEFAULT_LIST`]);
//! - enums: a value the contract defines;
//! - `returns.common.v1.Money`: an active ISO 4217 currency and |minor units| <= [`MAX_MINOR_UNITS`];
//! - `google.protobuf.Timestamp`: from 2000-01-01 to before 2100-01-01, nanos below 10^9.
//!
//! A violation is INVALID_ARGUMENT with `google.rpc.BadRequest` naming each field by its
//! path (`deductions[2].amount.currency_code`). The same [`validate_payload`] checks each
//! outbox message before it is written, so a receiver never fails on what its sender could
//! have checked. `docs/limits.md` lists every bound.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::FutureExt;
use http_body_util::BodyExt;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tokio::sync::{Notify, Semaphore};
use tonic::Status;
use tonic_types::StatusExt;

use crate::error::{ApiError, FieldViolation};

/// Characters a string field may hold unless [`TEXT_RULES`] says otherwise.
pub const DEFAULT_TEXT: usize = 200;
/// Elements a repeated field may hold unless [`LIST_RULES`] says otherwise.
pub const DEFAULT_LIST: usize = 100;
/// The largest amount in minor units (10 billion units of a two-decimal currency): sums of
/// many such amounts stay far inside `i64`.
pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000;
/// Timestamps accepted: 2000-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z.
pub const EARLIEST_SECONDS: i64 = 946_684_800;
pub const LATEST_SECONDS: i64 = 4_102_444_800;
/// The largest request body buffered for validation (tonic's own decode limit).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How long a string field may be and whether it is free text (newlines and tabs allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    pub max_chars: usize,
    pub multiline: bool,
}

const fn line(max_chars: usize) -> TextRule {
    TextRule {
        max_chars,
        multiline: false,
    }
}

const fn text(max_chars: usize) -> TextRule {
    TextRule {
        max_chars,
        multiline: true,
    }
}

/// String bounds by field name (in any message), or `Message.field` for one message. Ids
/// (`*_id`) default to [`ID`].
pub const TEXT_RULES: &[(&str, TextRule)] = &[
    ("description", text(4_000)),
    ("notes", text(2_000)),
    ("note", text(1_000)),
    ("details", text(1_000)),
    ("message", text(2_000)),
    ("instructions", text(1_000)),
    ("VoidLabelRequest.reason", text(1_000)),
    ("DiscardOutboxMessageRequest.reason", text(500)),
    ("CancelOrderRequest.reason", text(1_000)),
    ("uri", line(2_048)),
    ("evidence_uris", line(2_048)),
    ("page_token", line(512)),
    ("sha256", line(64)),
    ("currency_code", line(3)),
    ("country_code", line(2)),
    ("destination_country", line(2)),
    ("tracking_number", line(64)),
    ("traceparent", line(128)),
];

/// The bound of an id field: printable, at most this many characters.
pub const ID: TextRule = line(128);

/// Element counts by repeated field name (in any message).
pub const LIST_RULES: &[(&str, usize)] =
    &[("evidence", 20), ("evidence_uris", 20), ("deductions", 10)];

/// Active ISO 4217 currency codes (funds and precious metals excluded).
pub use returns_domain::money::ISO_4217;

fn text_rule(message: &MessageDescriptor, field: &str) -> TextRule {
    let qualified = format!("{}.{field}", message.name());
    TEXT_RULES
        .iter()
        .find(|(name, _)| *name == qualified)
        .or_else(|| TEXT_RULES.iter().find(|(name, _)| *name == field))
        .map(|(_, rule)| *rule)
        .unwrap_or(if field.ends_with("_id") || field == "id" {
            ID
        } else {
            line(DEFAULT_TEXT)
        })
}

fn list_rule(field: &str) -> usize {
    LIST_RULES
        .iter()
        .find(|(name, _)| *name == field)
        .map_or(DEFAULT_LIST, |(_, max)| *max)
}

/// The suite's contracts, decoded once.
fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(returns_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The input type of the unary method at `path` (`/pkg.Service/Method`); `None` for paths
/// outside the contracts (health, reflection) and for client-streaming methods, which their
/// handlers check message by message.
fn input_of(path: &str) -> Option<MessageDescriptor> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let method = pool()?
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)?;
    (!method.is_client_streaming()).then(|| method.input())
}

/// Checks `payload` as the request of `/service/method`: what the edge does to a request,
/// for an outbox message about to be written.
pub fn validate_payload(service: &str, method: &str, payload: &[u8]) -> Result<(), ApiError> {
    match input_of(&format!("/{service}/{method}")) {
        Some(input) => check(&input, payload),
        None => Err(ApiError::invalid(
            "method",
            format!("{service}/{method} is not a unary method of the contracts"),
        )),
    }
}

/// Decodes `payload` as `input` and walks it.
fn check(input: &MessageDescriptor, payload: &[u8]) -> Result<(), ApiError> {
    let message = DynamicMessage::decode(input.clone(), payload).map_err(|error| {
        ApiError::invalid(
            "request",
            format!("is not a valid {} message: {error}", input.name()),
        )
    })?;
    let mut violations = Vec::new();
    walk(&message, "", &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn violation(out: &mut Vec<FieldViolation>, field: String, reason: impl Into<String>) {
    // One bad field in a list of thousands is enough to say; keep the response small.
    if out.len() < 20 {
        out.push(FieldViolation {
            field,
            reason: reason.into(),
        });
    }
}

fn walk(message: &DynamicMessage, prefix: &str, out: &mut Vec<FieldViolation>) {
    let descriptor = message.descriptor();
    match descriptor.full_name() {
        "returns.common.v1.Money" => check_money(message, prefix, out),
        "google.protobuf.Timestamp" => check_timestamp(message, prefix, out),
        _ => {}
    }
    for (field, value) in message.fields() {
        let path = join(prefix, field.name());
        match value {
            Value::List(items) => {
                let max = list_rule(field.name());
                if items.len() > max {
                    violation(
                        out,
                        path.clone(),
                        format!("at most {max} items, got {}", items.len()),
                    );
                }
                for (index, item) in items.iter().enumerate().take(max) {
                    check_value(&descriptor, &field, item, &format!("{path}[{index}]"), out);
                }
            }
            Value::Map(entries) => {
                if entries.len() > DEFAULT_LIST {
                    violation(out, path, format!("at most {DEFAULT_LIST} entries"));
                }
            }
            value => check_value(&descriptor, &field, value, &path, out),
        }
    }
}

fn check_value(
    message: &MessageDescriptor,
    field: &prost_reflect::FieldDescriptor,
    value: &Value,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    match (value, field.kind()) {
        (Value::String(text), _) => check_text(text, text_rule(message, field.name()), path, out),
        (Value::EnumNumber(number), Kind::Enum(kind)) if kind.get_value(*number).is_none() => {
            violation(
                out,
                path.to_string(),
                format!("{number} is not a {} value", kind.name()),
            );
        }
        (Value::Bytes(bytes), _) if bytes.len() > MAX_BODY => {
            violation(out, path.to_string(), "is too large");
        }
        (Value::Message(inner), _) => walk(inner, path, out),
        _ => {}
    }
}

fn check_text(text: &str, rule: TextRule, path: &str, out: &mut Vec<FieldViolation>) {
    let chars = text.chars().count();
    if chars > rule.max_chars {
        violation(
            out,
            path.to_string(),
            format!("at most {} characters, got {chars}", rule.max_chars),
        );
    }
    let allowed = |c: char| rule.multiline && (c == '\n' || c == '\t' || c == '\r');
    if let Some(bad) = text.chars().find(|c| c.is_control() && !allowed(*c)) {
        violation(
            out,
            path.to_string(),
            format!(
                "must not contain control characters (found U+{:04X})",
                u32::from(bad)
            ),
        );
    }
}

fn check_money(message: &DynamicMessage, prefix: &str, out: &mut Vec<FieldViolation>) {
    let currency = message
        .get_field_by_name("currency_code")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if ISO_4217.binary_search(&currency.as_str()).is_err() {
        violation(
            out,
            join(prefix, "currency_code"),
            format!(
                "{:?} is not an active ISO 4217 currency code",
                currency.chars().take(8).collect::<String>()
            ),
        );
    }
    let minor = message
        .get_field_by_name("minor_units")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    if minor.unsigned_abs() > MAX_MINOR_UNITS.unsigned_abs() {
        violation(
            out,
            join(prefix, "minor_units"),
            format!("must be between -{MAX_MINOR_UNITS} and {MAX_MINOR_UNITS}"),
        );
    }
}

fn check_timestamp(message: &DynamicMessage, prefix: &str, out: &mut Vec<FieldViolation>) {
    let seconds = message
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = message
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    if !(EARLIEST_SECONDS..LATEST_SECONDS).contains(&seconds) {
        violation(
            out,
            join(prefix, "seconds"),
            "must be from 2000-01-01T00:00:00Z to before 2100-01-01T00:00:00Z",
        );
    }
    if !(0..1_000_000_000).contains(&nanos) {
        violation(out, join(prefix, "nanos"), "must be from 0 to 999999999");
    }
}

/// The tower layer that sheds load beyond a bound, validates every unary request and
/// catches handler panics.
#[derive(Debug, Clone, Default)]
pub struct EdgeLayer {
    /// Notified after any INTERNAL answer, so health re-checks the database at once.
    on_internal: Option<Arc<Notify>>,
    /// Requests in flight at once; `None` is unbounded.
    admission: Option<Admission>,
}

/// The in-flight budgets of one service: callers share one; deliveries from the other
/// services' outbox relays have their own, so clients cannot starve work that is already
/// committed elsewhere (a refund or a return authorisation waiting in an outbox is the
/// platform's own backlog; shedding it behind client traffic only delays money and returns).
#[derive(Debug, Clone)]
struct Admission {
    callers: Arc<Semaphore>,
    deliveries: Arc<Semaphore>,
    /// The size of each budget.
    limit: usize,
}

/// Whether a request is an outbox delivery (see [`crate::relay::is_relay`]).
fn is_delivery<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<crate::auth::Caller>()
        .is_some_and(crate::relay::is_relay)
}

impl EdgeLayer {
    pub fn new(on_internal: Option<Arc<Notify>>) -> Self {
        EdgeLayer {
            on_internal,
            admission: None,
        }
    }

    /// At most `max_in_flight` requests are served at once; beyond that a request is
    /// answered RESOURCE_EXHAUSTED at once, with a `RetryInfo` hint, instead of queueing
    /// until every caller times out. Health and reflection are never shed: an overloaded
    /// service must still say it is alive.
    /// Outbox deliveries from the other services get a budget of the same size of their own.
    pub fn with_admission_limit(mut self, max_in_flight: usize) -> Self {
        let limit = max_in_flight.max(1);
        self.admission = Some(Admission {
            callers: Arc::new(Semaphore::new(limit)),
            deliveries: Arc::new(Semaphore::new(limit)),
            limit,
        });
        self
    }
}

/// What a shed caller is told to wait before retrying, about a second (jittered so refused
/// callers do not come back together). Long enough that the refused callers' retries cost
/// the server little next to what it is serving: with 50 ms, ten times the callers the limit
/// admits spent the two cores on refusals and the admitted calls' p99 grew threefold (see
/// docs/performance.md); short next to a person's patience and the relay's own backoff.
fn shed_retry() -> std::time::Duration {
    std::time::Duration::from_millis(rand::random_range(800..=1200))
}

/// Paths that are never shed.
fn exempt_from_shedding(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            on_internal: self.on_internal.clone(),
            admission: self.admission.clone(),
        }
    }
}

/// The service [`EdgeLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    on_internal: Option<Arc<Notify>>,
    admission: Option<Admission>,
}

/// Whether `response` is a gRPC INTERNAL (errors travel in trailers-only responses).
fn is_internal(response: &http::Response<Body>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13")
}

type Body = tonic::body::Body;

/// A gRPC error as a whole HTTP response (gRPC errors travel in trailers-only responses).
fn refuse(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// The message of a single-frame, uncompressed gRPC body; `None` for anything else
/// (compressed or multi-frame bodies go to the handler, which tonic checks itself).
fn single_frame(mut body: Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let length = usize::try_from(body.get_u32()).ok()?;
    (body.len() == length).then_some(body)
}

impl<S> tower::Service<http::Request<Body>> for EdgeService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone serves this call; the instance polled ready stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_string();
        // Whether another call of the same budget was being served when this one was
        // admitted (see `answered`).
        let mut others_in_flight = false;
        let permit = match &self.admission {
            Some(admission) if !exempt_from_shedding(&path) => {
                let budget = if is_delivery(&request) {
                    &admission.deliveries
                } else {
                    &admission.callers
                };
                match budget.clone().try_acquire_owned() {
                    Ok(permit) => {
                        others_in_flight = budget.available_permits() + 1 < admission.limit;
                        Some(permit)
                    }
                    Err(_) => {
                        let status = Status::with_error_details(
                            tonic::Code::ResourceExhausted,
                            "the service is at its limit of requests in flight; retry shortly",
                            tonic_types::ErrorDetails::with_retry_info(Some(shed_retry())),
                        );
                        return Box::pin(futures::future::ready(Ok(refuse(status))));
                    }
                }
            }
            _ => None,
        };
        let input = input_of(&path);
        let on_internal = self.on_internal.clone();
        let answered = async move {
            if others_in_flight {
                // A call admitted while others are served waits one turn of the runtime
                // before it is served itself. A handler that never waits (a SQLite point read
                // on this thread) would otherwise run to its answer in the poll that admitted
                // it: at most one call a core would ever be in flight, and the backlog would
                // queue unseen among the connections instead of meeting the limit (measured:
                // ten times the callers, no refusal, p99 nine to eleven times as high;
                // docs/performance.md).
                // After the turn, the calls that arrived together hold their permits
                // together and the ones beyond the limit are refused. A call that finds the
                // service idle goes straight on: nothing is queued behind it to count.
                tokio::task::yield_now().await;
            }
            let request = match input {
                None => request,
                Some(input) => {
                    let (parts, body) = request.into_parts();
                    let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(_) => {
                            return Ok(refuse(
                                ApiError::invalid("request", "body unreadable or over 4 MiB")
                                    .into(),
                            ));
                        }
                    };
                    if let Some(message) = single_frame(bytes.clone())
                        && let Err(error) = check(&input, &message)
                    {
                        return Ok(refuse(error.into()));
                    }
                    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)))
                }
            };
            match std::panic::AssertUnwindSafe(inner.call(request))
                .catch_unwind()
                .await
            {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(%path, panic = %what, "handler panicked; answered INTERNAL");
                    Ok(refuse(Status::internal(
                        "internal error; the server log has the cause",
                    )))
                }
            }
        };
        Box::pin(async move {
            let response = answered.await;
            drop(permit);
            if let (Ok(response), Some(notify)) = (&response, &on_internal)
                && is_internal(response)
            {
                notify.notify_one();
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use returns_proto::common::v1::Money;
    use returns_proto::refunds::v1::{CreateRefundRequest, Deduction};
    use returns_proto::service_names::REFUNDS;

    fn refund() -> CreateRefundRequest {
        CreateRefundRequest {
            request_id: "r-1".into(),
            order_id: "o-1".into(),
            amount: Some(Money {
                currency_code: "USD".into(),
                minor_units: 1_500,
            }),
            note: "first line\nsecond line".into(),
            ..Default::default()
        }
    }

    fn fields(request: &CreateRefundRequest) -> Vec<String> {
        match validate_payload(REFUNDS, "CreateRefund", &request.encode_to_vec()) {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_request_passes() {
        assert_eq!(fields(&refund()), Vec::<String>::new());
    }

    #[test]
    fn control_characters_and_overlong_text_are_refused_by_field() {
        let mut request = refund();
        request.order_id = "o-\0".into();
        assert_eq!(fields(&request), ["order_id"]);
        let mut request = refund();
        request.note = "x".repeat(1_001);
        assert_eq!(fields(&request), ["note"]);
        let mut request = refund();
        request.request_id = "r\n1".into();
        assert_eq!(
            fields(&request),
            ["request_id"],
            "newlines only in free text"
        );
    }

    #[test]
    fn money_needs_a_real_currency_and_a_bounded_amount() {
        let mut request = refund();
        request.amount = Some(Money {
            currency_code: "ZZZ".into(),
            minor_units: i64::MAX,
        });
        assert_eq!(
            fields(&request),
            ["amount.currency_code", "amount.minor_units"]
        );
    }

    #[test]
    fn lists_are_bounded_and_their_items_checked_with_their_index() {
        let mut request = refund();
        request.deductions = vec![
            Deduction {
                kind: 1,
                amount: Some(Money {
                    currency_code: "usd".into(),
                    minor_units: 10,
                }),
                note: String::new(),
            };
            2
        ];
        assert_eq!(
            fields(&request),
            [
                "deductions[0].amount.currency_code",
                "deductions[1].amount.currency_code"
            ]
        );
        request.deductions = vec![Deduction::default(); 11];
        assert_eq!(fields(&request), ["deductions"]);
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut request = refund();
        request.reason = 999;
        assert_eq!(fields(&request), ["reason"]);
    }

    #[test]
    fn timestamps_outside_2000_to_2100_are_refused() {
        use returns_proto::disputes::v1::RecordOrderRequest;
        let request = RecordOrderRequest {
            shipped_at: Some(prost_types::Timestamp {
                seconds: 253_402_300_800, // year 10000
                nanos: 0,
            }),
            delivered_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: -1,
            }),
            ..Default::default()
        };
        let error = validate_payload(
            returns_proto::service_names::DISPUTES,
            "RecordOrder",
            &request.encode_to_vec(),
        )
        .expect_err("refused");
        let ApiError::InvalidArgument(violations) = error else {
            panic!("not INVALID_ARGUMENT");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["shipped_at.seconds", "delivered_at.nanos"]);
    }

    #[test]
    fn bytes_that_are_not_the_message_are_invalid_argument() {
        let error = validate_payload(REFUNDS, "CreateRefund", &[0xff, 0xff, 0xff, 0x0f])
            .expect_err("refused");
        assert!(matches!(error, ApiError::InvalidArgument(_)), "{error:?}");
    }

    #[test]
    fn the_currency_list_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn single_frames_are_unwrapped_and_anything_else_is_left_to_tonic() {
        let framed = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(single_frame(framed), Some(Bytes::from_static(&[8, 1])));
        assert_eq!(single_frame(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
        assert_eq!(single_frame(Bytes::from_static(&[0, 0, 0, 0, 9, 1])), None);
    }

    #[tokio::test]
    async fn a_handler_panic_becomes_internal_and_the_next_call_is_served() {
        use tower::{Layer, Service, ServiceExt};
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let handler = tower::service_fn(move |_request: http::Request<Body>| {
            let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    panic!("a bug in a handler");
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut service = EdgeLayer::default().layer(handler);
        let request = || {
            http::Request::builder()
                .uri("/grpc.health.v1.Health/Check")
                .body(Body::empty())
                .expect("request")
        };
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request())
            .await
            .expect("answered");
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            !status.message().contains("a bug"),
            "the cause stays in the log"
        );
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request())
            .await
            .expect("answered");
        assert!(Status::from_header_map(response.headers()).is_none());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_call_admitted_beside_another_waits_a_turn_so_the_calls_behind_it_count_it() {
        use tower::{Layer, Service};
        // A handler that never waits, as a SQLite point read on the calling thread.
        let handler = tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut service = EdgeLayer::default().with_admission_limit(2).layer(handler);
        let call = || {
            http::Request::builder()
                .uri("/returns.testing.v1.TestClockService/Now")
                .body(Body::empty())
                .expect("request")
        };
        // Admitted while the service is idle: answered in its first poll.
        let alone = service.call(call());
        let alone = futures::poll!(alone);
        assert!(
            alone.is_ready(),
            "a call on an idle service goes straight on"
        );
        // Two calls arrive together: the second, admitted beside the first, does not answer
        // in its first poll, so it still holds its place when a third arrives.
        let first = service.call(call());
        let second = service.call(call());
        tokio::pin!(second);
        assert!(
            futures::poll!(&mut second).is_pending(),
            "admitted beside another: a turn"
        );
        let third = service.call(call()).await.expect("answered");
        let refused = Status::from_header_map(third.headers()).expect("refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        for answered in [first.await, second.await] {
            let response = answered.expect("answered");
            assert!(Status::from_header_map(response.headers()).is_none());
        }
        // Both answered, the budget is whole again.
        let after = service.call(call()).await.expect("answered");
        assert!(Status::from_header_map(after.headers()).is_none());
    }

    #[tokio::test]
    async fn beyond_the_limit_requests_are_shed_at_once_but_health_never_is() {
        use tonic_types::StatusExt;
        use tower::{Layer, Service, ServiceExt};
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let handler = tower::service_fn(move |request: http::Request<Body>| {
            let released = released.clone();
            async move {
                // The first business call holds its slot until the test lets it go (the
                // lock is let go at once, so later calls get through to the handler).
                if request.uri().path().starts_with("/returns.") {
                    let wait = released.lock().await.take();
                    if let Some(wait) = wait {
                        let _ = wait.await;
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut service = EdgeLayer::default().with_admission_limit(1).layer(handler);
        let call = |path: &str| {
            http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request")
        };
        let busy = "/returns.testing.v1.TestClockService/Now";
        let first = service.ready().await.expect("ready").call(call(busy));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;
        // The slot is taken: the next call is refused at once, with a retry hint.
        let mut shed = None;
        for _ in 0..100 {
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(call(busy))
                .await
                .expect("answered");
            if let Some(status) = Status::from_header_map(response.headers()) {
                shed = Some(status);
                break;
            }
            tokio::task::yield_now().await;
        }
        let shed = shed.expect("a call beyond the limit is shed");
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        let hint = shed
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("a RetryInfo hint");
        assert!(
            (std::time::Duration::from_millis(800)..=std::time::Duration::from_millis(1200))
                .contains(&hint),
            "about a second, jittered: {hint:?}"
        );
        let health = service
            .ready()
            .await
            .expect("ready")
            .call(call("/grpc.health.v1.Health/Check"))
            .await
            .expect("answered");
        assert!(
            Status::from_header_map(health.headers()).is_none(),
            "health is never shed"
        );
        // An outbox delivery from another service's relay has its own budget: the callers'
        // full budget does not refuse it.
        let mut delivery = call(busy);
        delivery.extensions_mut().insert(crate::auth::Caller {
            id: crate::relay::relay_subject("labels"),
            role: returns_domain::dispute::Role::Platform,
            carrier: None,
        });
        let delivered = service
            .ready()
            .await
            .expect("ready")
            .call(delivery)
            .await
            .expect("answered");
        assert!(
            Status::from_header_map(delivered.headers()).is_none(),
            "a relay delivery is not shed behind the callers"
        );
        release.send(()).expect("release the first call");
        first.await.expect("joined").expect("served");
        let after = service
            .ready()
            .await
            .expect("ready")
            .call(call(busy))
            .await
            .expect("answered");
        assert!(
            Status::from_header_map(after.headers()).is_none(),
            "the slot is free again"
        );
    }
}
