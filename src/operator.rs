//! `returns outbox ...`: the operator's command line over each service's
//! `returns.operations.v1.OutboxService`, signed with the suite's secret as the platform role.
//!
//! It talks to the running services over gRPC (the same RPCs any operator tool would use),
//! at the addresses the configuration gives (`RETURNS_<SERVICE>_URL`, else `_ADDR`).

use std::time::Duration;

use returns_domain::dispute::Role;
use returns_platform::TokenIssuer;
use returns_platform::config::{Config, Secret};
use returns_proto::operations::v1::outbox_service_client::OutboxServiceClient;
use returns_proto::operations::v1::{
    DiscardOutboxMessageRequest, ListOutboxMessagesRequest, OutboxMessage, OutboxMessageState,
    RetryOutboxMessageRequest,
};
use tonic::Code;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The services whose outboxes the command looks at: one when named, else all three.
fn services(config: &Config, only: Option<&str>) -> Result<Vec<(&'static str, String)>, Error> {
    let all = [
        ("disputes", config.disputes.peer_url()),
        ("labels", config.labels.peer_url()),
        ("refunds", config.refunds.peer_url()),
    ];
    match only {
        None => Ok(all.into_iter().collect()),
        Some(name) => all
            .into_iter()
            .find(|(service, _)| *service == name)
            .map(|found| vec![found])
            .ok_or_else(|| {
                format!("unknown service {name:?}: use disputes, labels or refunds").into()
            }),
    }
}

/// A platform token for every call, and connections to the services.
struct Operator {
    token: String,
}

impl Operator {
    fn new(secret: &Secret) -> Result<Operator, Error> {
        let token = TokenIssuer::new(secret).issue(
            "operator-cli",
            Role::Platform,
            None,
            Duration::from_secs(300),
        )?;
        Ok(Operator { token })
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(request)
    }

    async fn client(url: &str) -> Result<OutboxServiceClient<Channel>, Error> {
        let channel = Channel::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|error| format!("cannot reach {url}: {error}"))?;
        Ok(OutboxServiceClient::new(channel))
    }
}

fn state_name(message: &OutboxMessage) -> &'static str {
    match OutboxMessageState::try_from(message.state) {
        Ok(OutboxMessageState::Pending) => "PENDING",
        Ok(OutboxMessageState::Dead) => "DEAD",
        Ok(OutboxMessageState::Delivered) => "DELIVERED",
        Ok(OutboxMessageState::Discarded) => "DISCARDED",
        _ => "?",
    }
}

fn show(service: &str, message: &OutboxMessage) -> String {
    format!(
        "{service:<9} {id}  {state:<9} {destination}.{kind}  attempts={attempts}  {error}",
        id = message.message_id,
        state = state_name(message),
        destination = message.destination,
        kind = message.kind,
        attempts = message.attempts,
        error = message.last_error,
    )
}

/// `returns outbox list [--dead] [--service NAME]`: one line per undelivered message, then
/// a summary line per service.
pub async fn list(
    config: &Config,
    secret: &Secret,
    dead_only: bool,
    only: Option<&str>,
) -> Result<(), Error> {
    let operator = Operator::new(secret)?;
    for (service, url) in services(config, only)? {
        let mut client = Operator::client(&url).await?;
        let mut page_token = String::new();
        loop {
            let page = client
                .list_outbox_messages(operator.request(ListOutboxMessagesRequest {
                    dead_only,
                    page_size: 500,
                    page_token: page_token.clone(),
                })?)
                .await?
                .into_inner();
            for message in &page.messages {
                println!("{}", show(service, message));
            }
            if page.next_page_token.is_empty() {
                println!(
                    "{service}: {} dead, {} pending, oldest pending {} s old",
                    page.dead_count, page.pending_count, page.oldest_pending_age_seconds
                );
                break;
            }
            page_token = page.next_page_token;
        }
    }
    Ok(())
}

/// Runs `call` against each service's outbox until one knows the message.
async fn on_the_owner<F, Fut>(
    config: &Config,
    only: Option<&str>,
    message_id: &str,
    mut call: F,
) -> Result<(), Error>
where
    F: FnMut(&'static str, OutboxServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<OutboxMessage, tonic::Status>>,
{
    for (service, url) in services(config, only)? {
        let client = Operator::client(&url).await?;
        match call(service, client).await {
            Ok(message) => {
                println!("{}", show(service, &message));
                return Ok(());
            }
            Err(status) if status.code() == Code::NotFound => continue,
            Err(status) => return Err(format!("{service}: {}", status.message()).into()),
        }
    }
    Err(format!("no outbox holds message {message_id}").into())
}

/// `returns outbox retry ID [--service NAME]`.
pub async fn retry(
    config: &Config,
    secret: &Secret,
    message_id: &str,
    only: Option<&str>,
) -> Result<(), Error> {
    let operator = Operator::new(secret)?;
    on_the_owner(config, only, message_id, |_, mut client| {
        let request = operator.request(RetryOutboxMessageRequest {
            message_id: message_id.to_string(),
        });
        async move {
            let request = request.map_err(|error| tonic::Status::internal(error.to_string()))?;
            let response = client.retry_outbox_message(request).await?.into_inner();
            response
                .message
                .ok_or_else(|| tonic::Status::internal("the service returned no message"))
        }
    })
    .await
}

/// `returns outbox discard ID --reason TEXT [--service NAME]`.
pub async fn discard(
    config: &Config,
    secret: &Secret,
    message_id: &str,
    reason: &str,
    only: Option<&str>,
) -> Result<(), Error> {
    let operator = Operator::new(secret)?;
    on_the_owner(config, only, message_id, |_, mut client| {
        let request = operator.request(DiscardOutboxMessageRequest {
            message_id: message_id.to_string(),
            reason: reason.to_string(),
        });
        async move {
            let request = request.map_err(|error| tonic::Status::internal(error.to_string()))?;
            let response = client.discard_outbox_message(request).await?.into_inner();
            response
                .message
                .ok_or_else(|| tonic::Status::internal("the service returned no message"))
        }
    })
    .await
}
