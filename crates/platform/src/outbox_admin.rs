//! `returns.operations.v1.OutboxService`: the operator's handle on a service's outbox (list
//! pending and dead messages, retry, discard), served on every service's port for the
//! platform role; and the periodic log line that tells operators dead letters exist.

use std::time::Duration;

use returns_proto::operations::v1 as pb;
use returns_proto::operations::v1::outbox_service_server::{OutboxService, OutboxServiceServer};
use tonic::{Request, Response, Status};

use crate::Database;
use crate::error::ApiError;
use crate::outbox::{self, MessageState, OutboxEntry, wall_micros};

/// Messages per page unless the caller asks for fewer or more.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;
/// The longest discard reason kept.
const MAX_REASON: usize = 500;

/// The outbox service of one service's database.
#[derive(Debug, Clone)]
pub struct OutboxAdmin {
    /// Its signal wakes the relay after a retry, so the message goes at once.
    db: Database,
}

impl OutboxAdmin {
    pub fn server(db: Database) -> OutboxServiceServer<OutboxAdmin> {
        OutboxServiceServer::new(OutboxAdmin { db })
    }
}

fn timestamp(micros: i64) -> Option<prost_types::Timestamp> {
    returns_domain::time::from_unix_micros(micros).map(returns_proto::convert::timestamp_to_proto)
}

fn to_proto(entry: OutboxEntry) -> pb::OutboxMessage {
    let state = match entry.state {
        MessageState::Pending => pb::OutboxMessageState::Pending,
        MessageState::Dead => pb::OutboxMessageState::Dead,
        MessageState::Delivered => pb::OutboxMessageState::Delivered,
        MessageState::Discarded => pb::OutboxMessageState::Discarded,
    };
    pb::OutboxMessage {
        message_id: entry.message_id,
        destination: entry.destination,
        kind: entry.kind,
        state: state as i32,
        attempts: entry.attempts,
        last_error: entry.last_error.unwrap_or_default(),
        created_at: timestamp(entry.created_at),
        next_attempt_at: (entry.state == MessageState::Pending)
            .then(|| timestamp(entry.next_attempt_at))
            .flatten(),
        dead_at: entry.dead_at.and_then(timestamp),
        discard_reason: entry.discard_reason.unwrap_or_default(),
    }
}

/// A page token is the position of the last message returned: `created_at:message_id`.
fn parse_page_token(token: &str) -> Result<Option<(i64, String)>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::invalid("page_token", "is not a token this service returned");
    let (created, id) = token.split_once(':').ok_or_else(invalid)?;
    let created = created.parse::<i64>().map_err(|_| invalid())?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some((created, id.to_string())))
}

fn message_id(value: &str) -> Result<&str, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid("message_id", "is required"));
    }
    if value.len() > 64 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "message_id",
            "must be at most 64 printable ASCII characters",
        ));
    }
    Ok(value)
}

#[tonic::async_trait]
impl OutboxService for OutboxAdmin {
    async fn list_outbox_messages(
        &self,
        request: Request<pb::ListOutboxMessagesRequest>,
    ) -> Result<Response<pb::ListOutboxMessagesResponse>, Status> {
        let request = request.into_inner();
        let size = match i64::from(request.page_size) {
            0 => DEFAULT_PAGE,
            size if (1..=MAX_PAGE).contains(&size) => size,
            _ => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("must be between 0 (default {DEFAULT_PAGE}) and {MAX_PAGE}"),
                )
                .into());
            }
        };
        let after = parse_page_token(&request.page_token)?;
        let mut entries =
            outbox::list_undelivered(&self.db, request.dead_only, after, size + 1).await?;
        let next_page_token = if entries.len() > usize::try_from(size).unwrap_or(usize::MAX) {
            entries.truncate(usize::try_from(size).unwrap_or(usize::MAX));
            entries
                .last()
                .map(|last| format!("{}:{}", last.created_at, last.message_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let health = outbox::health(&self.db).await?;
        Ok(Response::new(pb::ListOutboxMessagesResponse {
            messages: entries.into_iter().map(to_proto).collect(),
            next_page_token,
            dead_count: health.dead,
            pending_count: health.pending,
            oldest_pending_age_seconds: health.oldest_pending_age_seconds(wall_micros()),
        }))
    }

    async fn retry_outbox_message(
        &self,
        request: Request<pb::RetryOutboxMessageRequest>,
    ) -> Result<Response<pb::RetryOutboxMessageResponse>, Status> {
        let request = request.into_inner();
        let entry = outbox::retry(&self.db, message_id(&request.message_id)?).await?;
        self.db.work_committed();
        Ok(Response::new(pb::RetryOutboxMessageResponse {
            message: Some(to_proto(entry)),
        }))
    }

    async fn discard_outbox_message(
        &self,
        request: Request<pb::DiscardOutboxMessageRequest>,
    ) -> Result<Response<pb::DiscardOutboxMessageResponse>, Status> {
        let request = request.into_inner();
        let id = message_id(&request.message_id)?;
        let reason = request.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON {
            return Err(ApiError::invalid(
                "reason",
                format!("is required, at most {MAX_REASON} characters"),
            )
            .into());
        }
        if reason.chars().any(char::is_control) {
            return Err(ApiError::invalid("reason", "must not contain control characters").into());
        }
        let entry = outbox::discard(&self.db, id, reason).await?;
        Ok(Response::new(pb::DiscardOutboxMessageResponse {
            message: Some(to_proto(entry)),
        }))
    }
}

/// How often the outbox's state is logged while the service runs.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Logs the outbox's dead letters and oldest undelivered message at start and every
/// `every`: a warning while dead letters exist, an info line otherwise when work is waiting.
pub async fn report_forever(service: &'static str, db: Database, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match outbox::health(&db).await {
            Ok(health) => {
                let oldest_age_seconds = health.oldest_pending_age_seconds(wall_micros());
                if health.dead > 0 {
                    tracing::warn!(
                        service,
                        dead = health.dead,
                        pending = health.pending,
                        oldest_age_seconds,
                        "outbox has dead letters: `returns outbox list --dead` shows them"
                    );
                } else if health.pending > 0 {
                    tracing::info!(
                        service,
                        pending = health.pending,
                        oldest_age_seconds,
                        "outbox messages waiting for delivery"
                    );
                }
            }
            Err(error) => tracing::warn!(service, %error, "cannot read the outbox's state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(
            parse_page_token("1700000000000000:0190-abc").expect("valid"),
            Some((1_700_000_000_000_000, "0190-abc".to_string()))
        );
        assert_eq!(parse_page_token("").expect("empty"), None);
        for bad in ["nocolon", "x:abc", "12:", "12:a b"] {
            assert!(parse_page_token(bad).is_err(), "{bad:?} accepted");
        }
    }
}
