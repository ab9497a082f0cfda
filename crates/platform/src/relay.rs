//! The outbox relay: delivers each service's outbox rows over gRPC to the service they are
//! for, at least once, with exponential backoff; receivers deduplicate by message id.
//!
//! Delivery is generic: a row holds the receiving RPC's name and its encoded request, so the
//! relay posts the bytes to `/<package.Service>/<Rpc>` with a pass-through codec and needs no
//! code per message kind. Rows are claimed with a short lease (an UPDATE that moves
//! `next_attempt_at` forward and names the claiming instance in `lease_owner`), so two
//! replicas of a service do not deliver the same row at the same time and no transaction is
//! held open across a network call. A starting process takes over only the leases of its
//! own previous incarnation ([`Relay::take_over_leases`]); a live replica's lease is never
//! cut short.
//!
//! What a refusal means is typed, never read from message text ([`classify`]): a status with
//! `google.rpc.RetryInfo`, or a transport/overload/internal code, is "not yet" and retried
//! with backoff; any other code is the receiver's final answer. A final answer, or failing
//! `max_attempts` times, makes the row DEAD (see [`crate::outbox`]) for an operator.
//!
//! Relay scheduling uses wall-clock time, not the business clock: a retry after an outage
//! is transport timing, and must not wait for a test clock to move.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::auth::TokenIssuer;
use crate::db::{Database, column};
use crate::error::ApiError;
use crate::outbox::wall_micros;

/// How long a claimed row is reserved for the relay that claimed it: longer than one
/// delivery can take (2 s to connect, 10 s for the call). Also how long the rows a crashed
/// replica had claimed wait before another replica sends them.
pub const LEASE: Duration = Duration::from_secs(15);
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Rows claimed per pass.
const BATCH: i64 = 64;
/// How often an idle relay looks for rows no commit announced (a safety net: commits and
/// retries coming due wake it directly).
const POLL: Duration = Duration::from_secs(1);
/// Failed attempts before a message is dead, unless configured: with the backoff above,
/// about an hour and a half of a receiver failing.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;

/// This process's name in leases: the same for every incarnation of one replica, so a
/// restarted replica recognises (and takes over at once) the leases its crashed predecessor
/// held, and different for each replica, so it never takes a live one's.
///
/// The host name is exactly that in the deployments: a container keeps its host name across
/// restarts (compose, Kubernetes pods) and replicas each have their own. `HOSTNAME` first,
/// as the container runtime sets it; then the kernel's host name; a random id when neither
/// can be read (that process's leases then simply run out after a crash).
pub fn instance_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("instance-{}", uuid::Uuid::new_v4().simple()))
    })
    .clone()
}

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

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    pub delivered: usize,
    /// Delivery failed for a reason a retry can cure (receiver down, overloaded...).
    pub retrying: usize,
    /// Refused for good, or out of attempts: the row is DEAD, kept for an operator.
    pub dead: usize,
}

/// What the relay does after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, no sooner than the receiver's hint (if it gave one).
    RetryLater(Option<Duration>),
    /// The receiver's final answer: the message is dead.
    Final,
}

/// Reads a receiver's failure: `RetryInfo` means "not yet" whatever the code; otherwise
/// transport, overload and internal failures are worth retrying and every other code is a
/// final refusal.
pub fn classify(status: &Status) -> Verdict {
    if let Some(retry) = status.get_details_retry_info() {
        return Verdict::RetryLater(retry.retry_delay);
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::Unauthenticated => Verdict::RetryLater(None),
        _ => Verdict::Final,
    }
}

/// The failure as kept on the row: code, `ErrorInfo.reason` when given, message.
fn describe_failure(status: &Status) -> String {
    match status.get_details_error_info() {
        Some(info) => format!("{:?} {}: {}", status.code(), info.reason, status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Delivers one service's outbox.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Database,
    source: &'static str,
    peers: Arc<Peers>,
    issuer: TokenIssuer,
    max_attempts: u32,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Written into the leases this relay takes ([`instance_id`]).
    owner: String,
    /// `returns.outbox.deliveries` by destination and outcome, when metrics are on.
    deliveries: Option<opentelemetry::metrics::Counter<u64>>,
}

fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF
        .saturating_mul(2_u32.saturating_pow(exponent))
        .min(MAX_BACKOFF)
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Relay {
    pub fn new(
        db: Database,
        source: &'static str,
        peers: Arc<Peers>,
        issuer: TokenIssuer,
        max_attempts: u32,
    ) -> Self {
        Relay {
            db,
            source,
            peers,
            issuer,
            max_attempts: max_attempts.max(1),
            channels: Arc::default(),
            owner: instance_id(),
            deliveries: None,
        }
    }

    /// Counts every delivery attempt's outcome (`delivered`, `retrying`, `dead`) on `counter`.
    pub fn counting_deliveries(mut self, counter: opentelemetry::metrics::Counter<u64>) -> Self {
        self.deliveries = Some(counter);
        self
    }

    fn count(&self, destination: &str, outcome: &'static str) {
        if let Some(counter) = &self.deliveries {
            counter.add(
                1,
                &[
                    opentelemetry::KeyValue::new("destination", destination.to_string()),
                    opentelemetry::KeyValue::new("outcome", outcome),
                ],
            );
        }
    }

    /// [`Relay::new`] under an explicit lease owner, for tests that play two replicas (or a
    /// restart) in one process.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    fn channel(&self, destination: &str) -> Option<Channel> {
        let uri = self.peers.get(destination)?;
        let mut channels = self.channels.lock().ok()?;
        if let Some(channel) = channels.get(&uri) {
            return Some(channel.clone());
        }
        let channel = Endpoint::from_shared(uri.clone())
            .ok()?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(uri, channel.clone());
        Some(channel)
    }

    /// Delivers every row due at `now_micros` (wall clock); tests pass a later instant to
    /// skip backoff deterministically.
    pub async fn deliver_due(&self, now_micros: i64) -> Result<RelayPass, ApiError> {
        let owner = &self.owner;
        // Most passes find nothing (a poll, or a wake whose rows an earlier pass took): a
        // read on the pool says so without the claim's write, which on SQLite would take a
        // turn on the writer, behind the requests, for nothing.
        if !self.any_due(now_micros).await? {
            return Ok(RelayPass::default());
        }
        let rows = {
            let mut tx = self.db.begin_write().await?;
            let rows = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1, lease_owner = $4 \
                 WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $2 \
                 AND message_id IN ( \
                     SELECT message_id FROM outbox \
                     WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $2 \
                     ORDER BY next_attempt_at, message_id LIMIT $3) \
                 RETURNING message_id, destination, kind, payload, traceparent, attempts",
            )
            .bind(now_micros.saturating_add(micros(LEASE)))
            .bind(now_micros)
            .bind(BATCH)
            .bind(owner)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        };
        let mut pass = RelayPass::default();
        let mut delivered = Vec::new();
        let sent = self.send_claimed(rows, &mut pass, &mut delivered).await;
        // Recorded even when a later row's bookkeeping failed: these were delivered.
        self.mark_delivered(&delivered).await?;
        sent?;
        Ok(pass)
    }

    /// Whether any row is due at `now_micros` (the `outbox_due` index answers it).
    async fn any_due(&self, now_micros: i64) -> Result<bool, ApiError> {
        let due = sqlx::query(
            "SELECT 1 AS due FROM outbox \
             WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $1 LIMIT 1",
        )
        .bind(now_micros)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(due.is_some())
    }

    /// Records the rows of one pass that their receivers accepted: one write for the pass, not
    /// one per row. A crash before it only means those rows go again when their lease runs
    /// out, and receivers deduplicate by message id.
    async fn mark_delivered(&self, message_ids: &[String]) -> Result<(), ApiError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let placeholders = (0..message_ids.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE outbox SET delivered_at = $1, attempts = attempts + 1, last_error = NULL, \
             lease_owner = NULL WHERE message_id IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql).bind(wall_micros());
        for message_id in message_ids {
            query = query.bind(message_id);
        }
        self.db.execute_write(query).await?;
        Ok(())
    }

    /// Sends each claimed row in order; the accepted ones are added to `delivered` (recorded
    /// by the caller), refusals are recorded here, row by row.
    async fn send_claimed(
        &self,
        rows: Vec<sqlx::any::AnyRow>,
        pass: &mut RelayPass,
        delivered: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        let owner = &self.owner;
        for row in rows {
            let message_id: String = column(&row, "message_id")?;
            let destination: String = column(&row, "destination")?;
            let kind: String = column(&row, "kind")?;
            let payload: Vec<u8> = column(&row, "payload")?;
            let traceparent: Option<String> = column(&row, "traceparent")?;
            let attempts = column::<i64>(&row, "attempts")?.saturating_add(1);
            tracing::debug!(%owner, %message_id, "delivering");
            let result = self
                .send(&destination, &kind, payload, traceparent.as_deref())
                .await;
            let finished_at = wall_micros();
            let failure = match result {
                Ok(()) => {
                    pass.delivered += 1;
                    delivered.push(message_id);
                    self.count(&destination, "delivered");
                    continue;
                }
                Err(status) => status,
            };
            let error = describe_failure(&failure);
            let verdict = classify(&failure);
            match verdict {
                Verdict::RetryLater(hint) if attempts < i64::from(self.max_attempts) => {
                    pass.retrying += 1;
                    let delay = backoff(attempts - 1).max(hint.unwrap_or_default());
                    tracing::warn!(
                        %message_id, %destination, %kind, attempts,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %error, "outbox delivery failed; will retry"
                    );
                    self.db.execute_write(sqlx::query(
                        "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, \
                         lease_owner = NULL WHERE message_id = $4",
                    )
                    .bind(attempts)
                    .bind(finished_at.saturating_add(micros(delay)))
                    .bind(&error)
                    .bind(&message_id))
                    .await?;
                    self.count(&destination, "retrying");
                }
                _ => {
                    pass.dead += 1;
                    let why = if verdict == Verdict::Final {
                        "refused for good by its receiver"
                    } else {
                        "out of delivery attempts"
                    };
                    tracing::error!(
                        %message_id, %destination, %kind, attempts, %error,
                        "outbox message is dead ({why}); an operator can retry or discard it"
                    );
                    self.db
                        .execute_write(
                            sqlx::query(
                                "UPDATE outbox SET dead_at = $1, attempts = $2, last_error = $3, \
                         lease_owner = NULL WHERE message_id = $4",
                            )
                            .bind(finished_at)
                            .bind(attempts)
                            .bind(&error)
                            .bind(&message_id),
                        )
                        .await?;
                    self.count(&destination, "dead");
                }
            }
        }
        Ok(())
    }

    /// What a starting process does: makes due now the rows its own previous incarnation
    /// had leased (it crashed mid-delivery: nobody is sending them) and every row waiting
    /// out a backoff (nobody is sending those either), so they go at once rather than when
    /// the lease or the backoff runs out. Rows leased by another instance are left alone:
    /// that replica may be delivering them right now, and if it crashed its lease runs out
    /// within [`LEASE`] and any replica takes them then.
    pub async fn take_over_leases(&self) -> Result<u64, ApiError> {
        let now = wall_micros();
        let taken = self
            .db
            .execute_write(
                sqlx::query(
                    "UPDATE outbox SET next_attempt_at = $1, lease_owner = NULL \
             WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at > $1 \
             AND (lease_owner IS NULL OR lease_owner = $2)",
                )
                .bind(now)
                .bind(&self.owner),
            )
            .await?;
        if taken > 0 {
            tracing::info!(
                source = self.source,
                owner = %self.owner,
                rows = taken,
                "outbox rows due again at start"
            );
        }
        Ok(taken)
    }

    /// Wall time until the earliest pending row waiting out a backoff comes due.
    async fn until_next_attempt(&self) -> Result<Option<Duration>, ApiError> {
        let now = wall_micros();
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS next FROM outbox \
             WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        let next: Option<i64> = column(&row, "next")?;
        Ok(next.map(|next| {
            Duration::from_micros(u64::try_from(next.saturating_sub(now)).unwrap_or(0))
        }))
    }

    async fn send(
        &self,
        destination: &str,
        kind: &str,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<(), Status> {
        let service = crate::outbox::grpc_service(destination).ok_or_else(|| {
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
                &relay_subject(self.source),
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
        Ok(pass.delivered + pass.dead)
    }

    async fn next_retry(&self) -> Result<Option<Duration>, ApiError> {
        self.until_next_attempt().await
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

/// The token subject a service's relay delivers under (with the platform role).
pub fn relay_subject(source: &str) -> String {
    format!("{source}-relay")
}

/// Whether `caller` is another service's relay delivering an outbox message (admission gives
/// deliveries a budget of their own).
pub fn is_relay(caller: &crate::auth::Caller) -> bool {
    caller.role == returns_domain::dispute::Role::Platform && caller.id.ends_with("-relay")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDatabase, TestServer, test_context};
    use crate::{RoleTable, ServiceSpec};
    use returns_domain::dispute::Role;
    use returns_domain::ids::MessageId;
    use returns_proto::refunds::v1::refund_service_server::{RefundService, RefundServiceServer};
    use returns_proto::refunds::v1::{CreateRefundRequest, CreateRefundResponse};
    use returns_proto::service_names::REFUNDS;

    use crate::test_probe::MIGRATIONS;

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
        /// When set, each call waits for a permit before answering: a delivery held in
        /// flight while the test looks at what other relays do meanwhile.
        gate: Option<Arc<tokio::sync::Semaphore>>,
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
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            match self.refuse_with {
                Some(code) => Err(Status::new(code, "refused by the test")),
                None => Ok(tonic::Response::new(CreateRefundResponse::default())),
            }
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
        ) -> Result<tonic::Response<returns_proto::refunds::v1::GetRefundResponse>, tonic::Status>
        {
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
        ) -> Result<
            tonic::Response<returns_proto::refunds::v1::RecordChargebackResponse>,
            tonic::Status,
        > {
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

    fn spec(receiver: RecordingRefunds) -> ServiceSpec {
        ServiceSpec {
            name: "refunds",
            grpc_name: REFUNDS,
            routes: tonic::service::Routes::new(RefundServiceServer::new(receiver)),
            roles: RoleTable::new().allow(REFUNDS, "CreateRefund", &[Role::Platform]),
        }
    }

    /// The disputes service's relay over `db`, with the test context's peers and issuer.
    fn disputes_relay(db: &Database, context: &crate::SuiteContext) -> Relay {
        Relay::new(
            db.clone(),
            "disputes",
            context.peers.clone(),
            context.issuer.clone(),
            DEFAULT_MAX_ATTEMPTS,
        )
    }

    /// Starts `receiver` as the refunds service the context's peers name.
    async fn serve_refunds(
        context: &crate::SuiteContext,
        receiver: &RecordingRefunds,
    ) -> TestServer {
        let server = TestServer::start(spec(receiver.clone()), context).await;
        context
            .peers
            .set("refunds", format!("http://{}", server.addr));
        server
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
        let mut batch = crate::write_batch::WriteBatch::new();
        crate::outbox::enqueue(
            &mut batch,
            &id,
            &crate::outbox::OutboxMessage::new(
                returns_proto::rpcs::refunds::CREATE_REFUND,
                &request,
            ),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        )
        .expect("enqueue");
        batch.execute(&mut tx).await.expect("write");
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
        let relay = disputes_relay(&db, &context);

        // No address known yet: the receiver is as good as down.
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(
            pass,
            RelayPass {
                delivered: 0,
                retrying: 1,
                dead: 0
            }
        );
        assert_eq!(delivered_at(&db, &id).await, None);

        let receiver = RecordingRefunds::default();
        let server = serve_refunds(&context, &receiver).await;
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
    async fn a_pass_records_its_deliveries_in_one_write_and_an_idle_pass_writes_nothing() {
        let (db, _target, first) = outbox_with_one_refund_request().await;
        let mut ids = vec![first];
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = crate::write_batch::WriteBatch::new();
        for _ in 0..2 {
            let id = MessageId::new();
            let request = CreateRefundRequest {
                request_id: id.to_string(),
                message_id: id.to_string(),
                order_id: "o-2".into(),
                ..Default::default()
            };
            let message = crate::outbox::OutboxMessage::new(
                returns_proto::rpcs::refunds::CREATE_REFUND,
                &request,
            );
            crate::outbox::enqueue(&mut batch, &id, &message, None).expect("enqueue");
            ids.push(id.to_string());
        }
        batch.execute(&mut tx).await.expect("write");
        tx.commit().await.expect("commit");

        let context = test_context();
        let receiver = RecordingRefunds::default();
        let server = serve_refunds(&context, &receiver).await;
        let relay = disputes_relay(&db, &context);
        // SQLite counts its write transactions; PostgreSQL's are not counted here, and there
        // the assertions on the rows stand alone.
        let writes = || db.group_commit_stats().map(|stats| stats.transactions);
        let before = writes();
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(pass.delivered, 3);
        if let (Some(before), Some(after)) = (before, writes()) {
            assert_eq!(
                after - before,
                2,
                "one write claims the rows, one records them"
            );
        }
        for id in &ids {
            let entry = state_of(&db, id).await;
            assert_eq!(entry.state, crate::outbox::MessageState::Delivered, "{id}");
            assert_eq!(entry.attempts, 1, "{id}");
        }
        assert_eq!(receiver.received.lock().expect("not poisoned").len(), 3);

        let before = writes();
        let pass = relay.deliver_due(wall_micros()).await.expect("idle pass");
        assert_eq!(pass, RelayPass::default());
        assert_eq!(writes(), before, "a pass with nothing due takes no write");
        server.stop().await;
    }

    async fn state_of(db: &Database, id: &str) -> crate::outbox::OutboxEntry {
        crate::outbox::get(db, id)
            .await
            .expect("read")
            .expect("the row exists")
    }

    #[tokio::test]
    async fn a_final_refusal_makes_the_message_dead_with_the_reason_never_delivered() {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        let context = test_context();
        let receiver = RecordingRefunds {
            refuse_with: Some(Code::FailedPrecondition),
            ..Default::default()
        };
        let server = serve_refunds(&context, &receiver).await;
        let relay = disputes_relay(&db, &context);
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(pass.dead, 1);
        assert_eq!(delivered_at(&db, &id).await, None, "never marked delivered");
        let entry = state_of(&db, &id).await;
        assert_eq!(entry.state, crate::outbox::MessageState::Dead);
        assert_eq!(entry.attempts, 1);
        assert!(
            entry
                .last_error
                .is_some_and(|r| r.contains("refused by the test")),
            "the last error is kept"
        );
        // A dead message is not retried by the relay, however late it runs.
        let pass = relay
            .deliver_due(wall_micros() + 86_400_000_000)
            .await
            .expect("pass");
        assert_eq!(pass, RelayPass::default());
        server.stop().await;
    }

    #[tokio::test]
    async fn a_receiver_failing_n_times_makes_the_message_dead_and_an_operator_retry_delivers_it_once()
     {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        let context = test_context();
        let failing = RecordingRefunds {
            refuse_with: Some(Code::Internal),
            ..Default::default()
        };
        let server = serve_refunds(&context, &failing).await;
        let relay = Relay::new(
            db.clone(),
            "disputes",
            context.peers.clone(),
            context.issuer.clone(),
            3,
        );
        let mut at = wall_micros();
        for attempt in 1..=3 {
            let pass = relay.deliver_due(at).await.expect("pass");
            let entry = state_of(&db, &id).await;
            assert_eq!(entry.attempts, attempt);
            if attempt < 3 {
                assert_eq!(pass.retrying, 1, "attempt {attempt} is retried");
                assert_eq!(entry.state, crate::outbox::MessageState::Pending);
            } else {
                assert_eq!(pass.dead, 1, "the third failure is the last");
                assert_eq!(entry.state, crate::outbox::MessageState::Dead);
            }
            at += 3_600_000_000;
        }
        assert_eq!(failing.received.lock().expect("not poisoned").len(), 3);
        server.stop().await;

        // The cause is fixed (a receiver that accepts), the operator retries: delivered once.
        let fixed = RecordingRefunds::default();
        let server = TestServer::start(spec(fixed.clone()), &context).await;
        context
            .peers
            .set("refunds", format!("http://{}", server.addr));
        let retried = crate::outbox::retry(&db, &id).await.expect("retry");
        assert_eq!(retried.state, crate::outbox::MessageState::Pending);
        assert_eq!(retried.attempts, 0);
        let pass = relay.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(pass.delivered, 1);
        let pass = relay
            .deliver_due(wall_micros() + 86_400_000_000)
            .await
            .expect("pass");
        assert_eq!(pass, RelayPass::default());
        assert_eq!(fixed.received.lock().expect("not poisoned").len(), 1);
        assert_eq!(
            state_of(&db, &id).await.state,
            crate::outbox::MessageState::Delivered
        );
        // Delivered messages can be neither retried nor discarded.
        assert!(crate::outbox::retry(&db, &id).await.is_err());
        assert!(crate::outbox::discard(&db, &id, "no").await.is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn a_dead_message_can_be_discarded_with_a_reason_and_is_then_closed() {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        assert!(
            crate::outbox::discard(&db, &id, "not dead yet")
                .await
                .is_err(),
            "only dead messages are discarded"
        );
        sqlx::query("UPDATE outbox SET dead_at = 1 WHERE message_id = $1")
            .bind(&id)
            .execute(db.pool())
            .await
            .expect("kill");
        let health = crate::outbox::health(&db).await.expect("health");
        assert_eq!((health.dead, health.pending), (1, 0));
        let discarded = crate::outbox::discard(&db, &id, "order cancelled by hand")
            .await
            .expect("discard");
        assert_eq!(discarded.state, crate::outbox::MessageState::Discarded);
        assert_eq!(
            discarded.discard_reason.as_deref(),
            Some("order cancelled by hand")
        );
        let health = crate::outbox::health(&db).await.expect("health");
        assert_eq!((health.dead, health.pending), (0, 0));
        assert!(crate::outbox::retry(&db, &id).await.is_err());
    }

    #[tokio::test]
    async fn a_starting_replica_takes_over_only_its_own_previous_leases_never_a_live_one() {
        let (db, _target, id) = outbox_with_one_refund_request().await;
        let context = test_context();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let receiver = RecordingRefunds {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let server = serve_refunds(&context, &receiver).await;
        let relay = |owner: &str| disputes_relay(&db, &context).with_owner(owner);

        // Replica a claims the row and is held mid-delivery by the receiver.
        let replica_a = relay("replica-a");
        let in_flight = tokio::spawn(async move { replica_a.deliver_due(wall_micros()).await });
        for _ in 0..500 {
            if !receiver.received.lock().expect("not poisoned").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(receiver.received.lock().expect("not poisoned").len(), 1);

        // Replica b starts meanwhile: a's live lease is not its to take, so it sends nothing.
        let replica_b = relay("replica-b");
        assert_eq!(replica_b.take_over_leases().await.expect("take over"), 0);
        let pass = replica_b.deliver_due(wall_micros()).await.expect("pass");
        assert_eq!(
            pass,
            RelayPass::default(),
            "a live lease is never cut short"
        );

        gate.add_permits(1);
        let pass = in_flight.await.expect("no panic").expect("pass");
        assert_eq!(pass.delivered, 1);
        assert_eq!(receiver.received.lock().expect("not poisoned").len(), 1);
        assert!(delivered_at(&db, &id).await.is_some());

        // A row leased by an instance that then crashed: its next incarnation (same owner)
        // takes it over at once; another replica waits for the lease to run out.
        let (db, _target, id) = outbox_with_one_refund_request().await;
        sqlx::query("UPDATE outbox SET next_attempt_at = $1, lease_owner = 'replica-a' WHERE message_id = $2")
            .bind(wall_micros() + micros(LEASE))
            .bind(&id)
            .execute(db.pool())
            .await
            .expect("lease");
        let relay = |owner: &str| disputes_relay(&db, &context).with_owner(owner);
        assert_eq!(relay("replica-b").take_over_leases().await.expect("b"), 0);
        let pass = relay("replica-b")
            .deliver_due(wall_micros())
            .await
            .expect("pass");
        assert_eq!(pass, RelayPass::default());
        assert_eq!(relay("replica-a").take_over_leases().await.expect("a"), 1);
        gate.add_permits(1);
        let pass = relay("replica-b")
            .deliver_due(wall_micros())
            .await
            .expect("pass");
        assert_eq!(
            pass.delivered, 1,
            "due again once its owner's restart gave it up"
        );
        assert!(delivered_at(&db, &id).await.is_some());
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
    fn retry_info_means_not_yet_and_other_refusals_are_final() {
        use tonic_types::ErrorDetails;
        assert_eq!(
            classify(&Status::unavailable("down")),
            Verdict::RetryLater(None)
        );
        assert_eq!(
            classify(&Status::internal("boom")),
            Verdict::RetryLater(None)
        );
        assert_eq!(classify(&Status::failed_precondition("no")), Verdict::Final);
        assert_eq!(classify(&Status::invalid_argument("bad")), Verdict::Final);
        let hinted = Status::with_error_details(
            Code::FailedPrecondition,
            "not yet",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(7))),
        );
        assert_eq!(
            classify(&hinted),
            Verdict::RetryLater(Some(Duration::from_secs(7)))
        );
        let status: Status = ApiError::precondition("capture_required", "none").into();
        assert_eq!(classify(&status), Verdict::Final);
        assert!(describe_failure(&status).contains("CAPTURE_REQUIRED"));
    }
}
