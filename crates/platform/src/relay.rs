//! The outbox relay: delivers each service's outbox rows over gRPC to the service they are
//! for, at least once, with exponential backoff; receivers deduplicate by message id.
//!
//! Delivery is generic: a row holds the receiving RPC's name and its encoded request, so the
//! relay posts the bytes to `/<package.Service>/<Rpc>` with a pass-through codec and needs no
//! code per message kind. Rows are claimed with a short lease (an UPDATE that moves
//! `next_attempt_at` forward), so two replicas of a service do not deliver the same row at
//! the same time and no transaction is held open across a network call.
//!
//! Relay scheduling uses wall-clock time, not the business clock: a retry after an outage
//! is transport timing, and must not wait for a test clock to move.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::auth::TokenIssuer;
use crate::db::{Database, column};
use crate::error::ApiError;

/// How long a claimed row is reserved for the relay that claimed it.
const LEASE: Duration = Duration::from_secs(30);
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Rows claimed per pass.
const BATCH: i64 = 64;
/// How often an idle relay looks for new rows (a commit also wakes it through the signal).
const POLL: Duration = Duration::from_millis(250);

/// Where the other services of the suite can be reached, filled in once they are bound.
#[derive(Debug, Default)]
pub struct Peers {
    uris: Mutex<HashMap<String, String>>,
}

impl Peers {
    /// Records that `service` (`disputes`, `labels`, `refunds`) listens at `uri`.
    pub fn set(&self, service: &str, uri: String) {
        if let Ok(mut uris) = self.uris.lock() {
            uris.insert(service.to_string(), uri);
        }
    }

    pub fn get(&self, service: &str) -> Option<String> {
        self.uris.lock().ok()?.get(service).cloned()
    }
}

/// The fully qualified gRPC service of a destination name.
fn grpc_service(destination: &str) -> Option<&'static str> {
    use returns_proto::service_names::{DISPUTES, LABELS, REFUNDS};
    match destination {
        "disputes" => Some(DISPUTES),
        "labels" => Some(LABELS),
        "refunds" => Some(REFUNDS),
        _ => None,
    }
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    pub delivered: usize,
    /// Delivery failed for a reason a retry can cure (receiver down, overloaded...).
    pub retrying: usize,
    /// The receiver refused the message for good; the row is closed with the reason.
    pub rejected: usize,
}

/// Delivers one service's outbox.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Database,
    source: &'static str,
    peers: Arc<Peers>,
    issuer: TokenIssuer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    owner: Arc<OnceLock<String>>,
}

fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF
        .saturating_mul(2_u32.saturating_pow(exponent))
        .min(MAX_BACKOFF)
}

/// Codes that mean "try again later"; every other error is the receiver's final answer.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            | Code::Unauthenticated
    )
}

impl Relay {
    pub fn new(db: Database, source: &'static str, peers: Arc<Peers>, issuer: TokenIssuer) -> Self {
        Relay {
            db,
            source,
            peers,
            issuer,
            channels: Arc::default(),
            owner: Arc::default(),
        }
    }

    fn channel(&self, destination: &str) -> Option<Channel> {
        let uri = self.peers.get(destination)?;
        let mut channels = self.channels.lock().ok()?;
        if let Some(channel) = channels.get(&uri) {
            return Some(channel.clone());
        }
        let channel = Endpoint::from_shared(uri.clone())
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(uri, channel.clone());
        Some(channel)
    }

    /// Delivers every row due at `now_micros` (wall clock); tests pass a later instant to
    /// skip backoff deterministically.
    pub async fn deliver_due(&self, now_micros: i64) -> Result<RelayPass, ApiError> {
        let owner = self
            .owner
            .get_or_init(|| uuid::Uuid::now_v7().to_string())
            .clone();
        let rows = {
            let mut tx = self.db.begin_write().await?;
            let rows = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1, last_error = $2 \
                 WHERE delivered_at IS NULL AND next_attempt_at <= $3 AND message_id IN ( \
                     SELECT message_id FROM outbox \
                     WHERE delivered_at IS NULL AND next_attempt_at <= $3 \
                     ORDER BY created_at, message_id LIMIT $4) \
                 RETURNING message_id, destination, kind, payload, traceparent, attempts",
            )
            .bind(now_micros.saturating_add(i64::try_from(LEASE.as_micros()).unwrap_or(0)))
            .bind(format!("claimed by relay {owner}"))
            .bind(now_micros)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        };
        let mut pass = RelayPass::default();
        for row in rows {
            let message_id: String = column(&row, "message_id")?;
            let destination: String = column(&row, "destination")?;
            let kind: String = column(&row, "kind")?;
            let payload: Vec<u8> = column(&row, "payload")?;
            let traceparent: Option<String> = column(&row, "traceparent")?;
            let attempts: i64 = column(&row, "attempts")?;
            let result = self
                .send(&destination, &kind, payload, traceparent.as_deref())
                .await;
            let finished_at = wall_micros();
            match result {
                Ok(()) => {
                    pass.delivered += 1;
                    sqlx::query(
                        "UPDATE outbox SET delivered_at = $1, attempts = $2, last_error = NULL \
                         WHERE message_id = $3",
                    )
                    .bind(finished_at)
                    .bind(attempts + 1)
                    .bind(&message_id)
                    .execute(self.db.pool())
                    .await?;
                }
                Err(status) if is_transient(status.code()) => {
                    pass.retrying += 1;
                    let delay = backoff(attempts);
                    tracing::warn!(
                        %message_id, %destination, %kind, attempts = attempts + 1,
                        retry_in_ms = delay.as_millis() as u64, error = %status.message(),
                        "outbox delivery failed; will retry"
                    );
                    sqlx::query(
                        "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 \
                         WHERE message_id = $4",
                    )
                    .bind(attempts + 1)
                    .bind(finished_at.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(0)))
                    .bind(format!("{:?}: {}", status.code(), status.message()))
                    .bind(&message_id)
                    .execute(self.db.pool())
                    .await?;
                }
                Err(status) => {
                    pass.rejected += 1;
                    tracing::error!(
                        %message_id, %destination, %kind, code = ?status.code(),
                        error = %status.message(), "outbox message rejected by its receiver"
                    );
                    sqlx::query(
                        "UPDATE outbox SET delivered_at = $1, attempts = $2, last_error = $3 \
                         WHERE message_id = $4",
                    )
                    .bind(finished_at)
                    .bind(attempts + 1)
                    .bind(format!(
                        "rejected {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                    .bind(&message_id)
                    .execute(self.db.pool())
                    .await?;
                }
            }
        }
        Ok(pass)
    }

    async fn send(
        &self,
        destination: &str,
        kind: &str,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<(), Status> {
        let service = grpc_service(destination).ok_or_else(|| {
            Status::invalid_argument(format!("unknown outbox destination {destination:?}"))
        })?;
        let channel = self.channel(destination).ok_or_else(|| {
            Status::unavailable(format!("{destination} has no known address yet"))
        })?;
        let path = http::uri::PathAndQuery::from_str(&format!("/{service}/{kind}"))
            .map_err(|error| Status::invalid_argument(format!("bad RPC name {kind:?}: {error}")))?;
        let token = self
            .issuer
            .issue(
                &format!("{}-relay", self.source),
                returns_domain::dispute::Role::Platform,
                None,
                Duration::from_secs(300),
            )
            .map_err(|error| Status::internal(error.to_string()))?;
        let mut request = tonic::Request::new(payload);
        let metadata = request.metadata_mut();
        metadata.insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not valid metadata"))?,
        );
        if let Some(traceparent) = traceparent.and_then(|t| t.parse().ok()) {
            metadata.insert("traceparent", traceparent);
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(format!("{destination} unreachable: {error}")))?;
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    }

    /// Delivers every undelivered row now, ignoring backoff (tests, and operators after an
    /// outage is fixed).
    pub async fn deliver_all_now(&self) -> Result<RelayPass, ApiError> {
        self.deliver_due(i64::MAX / 2).await
    }
}

/// How often an idle relay looks for rows a commit did not announce.
pub const RELAY_POLL: Duration = POLL;

#[tonic::async_trait]
impl crate::worker::Worker for Relay {
    fn name(&self) -> &'static str {
        "outbox-relay"
    }

    /// Delivery timing is wall-clock (see the module docs), so `now` is not used.
    async fn run_once(&self, _now: returns_domain::time::Timestamp) -> Result<usize, ApiError> {
        let pass = self.deliver_due(wall_micros()).await?;
        Ok(pass.delivered + pass.rejected)
    }
}

/// Passes already-encoded protobuf bytes through unchanged, both ways.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Migrations;
    use crate::testing::{TestDatabase, TestServer, test_context};
    use crate::{RoleTable, ServiceSpec};
    use returns_domain::dispute::Role;
    use returns_domain::ids::MessageId;
    use returns_proto::refunds::v1::refund_service_server::{RefundService, RefundServiceServer};
    use returns_proto::refunds::v1::{CreateRefundRequest, CreateRefundResponse};
    use returns_proto::service_names::REFUNDS;

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    /// One call that reached the stand-in.
    #[derive(Clone)]
    struct Delivery {
        request: CreateRefundRequest,
        traceparent: Option<String>,
        caller: String,
    }

    /// A refunds stand-in that records what reaches it and answers with a set status.
    #[derive(Clone, Default)]
    struct RecordingRefunds {
        received: Arc<Mutex<Vec<Delivery>>>,
        refuse_with: Option<Code>,
    }

    #[tonic::async_trait]
    impl RefundService for RecordingRefunds {
        async fn create_refund(
            &self,
            request: tonic::Request<CreateRefundRequest>,
        ) -> Result<tonic::Response<CreateRefundResponse>, Status> {
            let caller = crate::Caller::of(&request).map_err(Status::from)?;
            let traceparent = request
                .metadata()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.received.lock().expect("not poisoned").push(Delivery {
                request: request.into_inner(),
                traceparent,
                caller: caller.id,
            });
            match self.refuse_with {
                Some(code) => Err(Status::new(code, "refused by the test")),
                None => Ok(tonic::Response::new(CreateRefundResponse::default())),
            }
        }
    }

    fn spec(receiver: RecordingRefunds) -> ServiceSpec {
        ServiceSpec {
            name: "refunds",
            grpc_name: REFUNDS,
            routes: tonic::service::Routes::new(RefundServiceServer::new(receiver)),
            roles: RoleTable::new().allow(REFUNDS, "CreateRefund", &[Role::Platform]),
        }
    }

    async fn outbox_with_one_refund_request() -> (Database, TestDatabase, String) {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let id = MessageId::new();
        let request = CreateRefundRequest {
            request_id: id.to_string(),
            message_id: id.to_string(),
            order_id: "o-1".into(),
            ..Default::default()
        };
        let mut tx = db.begin_write().await.expect("begin");
        crate::outbox::enqueue(
            &mut tx,
            &id,
            &crate::outbox::OutboxMessage::new("refunds", "CreateRefund", &request),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            crate::testing::test_start(),
        )
        .await
        .expect("enqueue");
        tx.commit().await.expect("commit");
        (db, target, id.to_string())
    }

    async fn delivered_at(db: &Database, id: &str) -> Option<i64> {
        let row = sqlx::query("SELECT delivered_at FROM outbox WHERE message_id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .expect("row");
        column(&row, "delivered_at").expect("column")
    }

    #[tokio::test]
    async fn a_receiver_that_is_down_only_delays_delivery_and_nothing_is_sent_twice() {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        let context = test_context();
        let relay = Relay::new(
            db.clone(),
            "disputes",
            context.peers.clone(),
            context.issuer.clone(),
        );

        // No address known yet: the receiver is as good as down.
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(
            pass,
            RelayPass {
                delivered: 0,
                retrying: 1,
                rejected: 0
            }
        );
        assert_eq!(delivered_at(&db, &id).await, None);

        let receiver = RecordingRefunds::default();
        let server = TestServer::start(spec(receiver.clone()), &context).await;
        context
            .peers
            .set("refunds", format!("http://{}", server.addr));
        // Backing off: nothing is due right now...
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(pass, RelayPass::default());
        // ...but it is once the backoff has passed.
        let later = wall_micros() + 60_000_000;
        let pass = relay.deliver_due(later).await.expect("pass");
        assert_eq!(pass.delivered, 1);
        assert!(delivered_at(&db, &id).await.is_some());
        let pass = relay.deliver_due(later + 600_000_000).await.expect("pass");
        assert_eq!(
            pass,
            RelayPass::default(),
            "a delivered row is never sent again"
        );

        let received = receiver.received.lock().expect("not poisoned").clone();
        assert_eq!(received.len(), 1);
        let Delivery {
            request,
            traceparent,
            caller,
        } = &received[0];
        assert_eq!(request.message_id, id);
        assert_eq!(request.order_id, "o-1");
        assert_eq!(
            traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "the delivery carries the trace context of the transaction that wrote it"
        );
        assert_eq!(caller, "disputes-relay");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_final_refusal_closes_the_row_with_the_reason() {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        let context = test_context();
        let receiver = RecordingRefunds {
            refuse_with: Some(Code::FailedPrecondition),
            ..Default::default()
        };
        let server = TestServer::start(spec(receiver.clone()), &context).await;
        context
            .peers
            .set("refunds", format!("http://{}", server.addr));
        let relay = Relay::new(
            db.clone(),
            "disputes",
            context.peers.clone(),
            context.issuer.clone(),
        );
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(pass.rejected, 1);
        assert!(delivered_at(&db, &id).await.is_some());
        let row = sqlx::query("SELECT last_error FROM outbox WHERE message_id = $1")
            .bind(&id)
            .fetch_one(db.pool())
            .await
            .expect("row");
        let reason: Option<String> = column(&row, "last_error").expect("column");
        assert!(reason.is_some_and(|r| r.contains("refused by the test")));
        server.stop().await;
    }

    #[test]
    fn backoff_doubles_from_half_a_second_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn only_transport_and_overload_failures_are_retried() {
        assert!(is_transient(Code::Unavailable));
        assert!(is_transient(Code::ResourceExhausted));
        assert!(!is_transient(Code::FailedPrecondition));
        assert!(!is_transient(Code::InvalidArgument));
    }
}
