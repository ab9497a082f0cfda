//! The seven stories of what a user of the suite experiences, played over gRPC against a
//! running suite on the test clock. `returns demo` prints them as a timeline; the end-to-end
//! tests play the same code and assert on what each story returns, so the demo can never
//! drift from what is tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use returns_domain::dispute::Role;
use returns_platform::TokenIssuer;
use returns_proto::common::v1::{
    Address, BuyerTier, DisputeReason, EvidenceKind, Money, PaymentMethod,
};
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use returns_proto::disputes::v1::{
    AcceptOfferRequest, AddEvidenceRequest, CancelOrderRequest, Dispute, DisputeKind, DisputeState,
    EscalateDisputeRequest, GetDisputeRequest, MakeOfferRequest, NewEvidence, OpenDisputeRequest,
    RecommendRulingRequest, RecordOrderRequest, RejectOfferRequest, RequestedResolution,
    ResolutionType, RuleOnDisputeRequest, RulingOutcome, RulingRecommendation,
};
use returns_proto::labels::v1::return_label_service_client::ReturnLabelServiceClient;
use returns_proto::labels::v1::{
    CreateReturnLabelRequest, GetReturnLabelRequest, InspectionResult, RecordInspectionRequest,
    ReportTrackingEventRequest, ReturnLabel, ReturnMethod, SchedulePickupRequest,
    TrackingEventType,
};
use returns_proto::operations::v1::outbox_service_client::OutboxServiceClient;
use returns_proto::operations::v1::{
    ListOutboxMessagesRequest, OutboxMessage, RetryOutboxMessageRequest,
};
use returns_proto::refunds::v1::refund_service_client::RefundServiceClient;
use returns_proto::refunds::v1::{
    ListRefundsRequest, RecordCaptureRequest, RecordChargebackRequest, Refund, RefundStatus,
};
use returns_proto::testing::v1::test_clock_service_client::TestClockServiceClient;
use returns_proto::testing::v1::{AdvanceClockRequest, AdvanceClockResponse, NowRequest};
use tonic::transport::Channel;

use crate::SuiteAddresses;

/// Anything that can go wrong while playing a story.
pub type StoryError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, StoryError>;

const DAY: i64 = 86_400;

/// Where the story lines go: printed for the demo, kept for tests.
#[derive(Debug, Default)]
pub struct Timeline {
    pub lines: Vec<String>,
    pub print: bool,
}

/// The clients, tokens and clock a story plays with.
pub struct Stage {
    disputes: DisputeServiceClient<Channel>,
    labels: ReturnLabelServiceClient<Channel>,
    refunds: RefundServiceClient<Channel>,
    clock: TestClockServiceClient<Channel>,
    /// Each service's outbox (disputes, labels, refunds), as an operator sees it.
    outboxes: Vec<(&'static str, OutboxServiceClient<Channel>)>,
    issuer: TokenIssuer,
    /// Sent with every call, so a whole story can be one trace (the tracing test sets it).
    traceparent: Option<String>,
    /// When set, request times (ship dates, scans) are computed from this instant rather
    /// than the suite's clock, so a request replayed after a crash carries the same body.
    pinned_now: Option<DateTime<Utc>>,
    pub timeline: Timeline,
}

/// What a story ends with, for the tests to check.
#[derive(Debug, Clone)]
pub struct StoryOutcome {
    pub dispute: Dispute,
    /// Every refund of the story's order, oldest first.
    pub refunds: Vec<Refund>,
    pub label: Option<ReturnLabel>,
    pub recommendation: Option<RulingRecommendation>,
    /// Clock time when the money left (the last refund's release), for timing checks.
    pub released_before_delivery: Option<bool>,
}

fn money(currency: &str, minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_string(),
        minor_units,
    })
}

fn show_money(money: &Option<Money>) -> String {
    match money {
        Some(m) => {
            let exponent = returns_domain::money::CurrencyCode::parse(&m.currency_code)
                .map(|c| c.minor_exponent())
                .unwrap_or(2);
            if exponent == 0 {
                format!("{} {}", m.currency_code, m.minor_units)
            } else {
                let unit = 10_i64.pow(exponent);
                format!(
                    "{} {}.{:0width$}",
                    m.currency_code,
                    m.minor_units / unit,
                    (m.minor_units % unit).abs(),
                    width = exponent as usize
                )
            }
        }
        None => "-".to_string(),
    }
}

fn show_time(at: &Option<Timestamp>) -> String {
    at.as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%a %Y-%m-%d").to_string())
        .unwrap_or_else(|| "-".to_string())
}

fn ts(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn state_name(dispute: &Dispute) -> String {
    DisputeState::try_from(dispute.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("DISPUTE_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| dispute.state.to_string())
}

fn refund_status(refund: &Refund) -> String {
    RefundStatus::try_from(refund.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("REFUND_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| refund.status.to_string())
}

fn address(name: &str, line1: &str, city: &str, postal_code: &str, country: &str) -> Address {
    Address {
        name: name.to_string(),
        line1: line1.to_string(),
        city: city.to_string(),
        postal_code: postal_code.to_string(),
        country_code: country.to_string(),
        ..Default::default()
    }
}

fn evidence(kind: EvidenceKind, file_name: &str) -> NewEvidence {
    let content_type = if kind == EvidenceKind::Video {
        "video/mp4"
    } else {
        "image/jpeg"
    };
    NewEvidence {
        kind: kind as i32,
        content_type: content_type.to_string(),
        size_bytes: 182_044,
        sha256: format!("{:064x}", file_name.len() * 7919),
        uri: format!("file:///evidence/{file_name}"),
        file_name: file_name.to_string(),
    }
}

/// The facts of an order a story records with the platform.
struct OrderFacts<'a> {
    order_id: &'a str,
    buyer_id: &'a str,
    seller_id: &'a str,
    total: Option<Money>,
    method: PaymentMethod,
    tier: BuyerTier,
    carrier: &'a str,
    shipped_days_ago: i64,
    delivered_days_ago: Option<i64>,
    country: &'a str,
    free_return: bool,
}

impl Stage {
    /// Connects to a running suite (listeners are bound, so this does not wait on ports).
    pub async fn connect(addresses: SuiteAddresses, issuer: TokenIssuer) -> Result<Stage> {
        let channel = |addr: std::net::SocketAddr| async move {
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .map_err(StoryError::from)
        };
        Ok(Stage {
            disputes: DisputeServiceClient::new(channel(addresses.disputes).await?),
            labels: ReturnLabelServiceClient::new(channel(addresses.labels).await?),
            refunds: RefundServiceClient::new(channel(addresses.refunds).await?),
            clock: TestClockServiceClient::new(channel(addresses.disputes).await?),
            outboxes: vec![
                (
                    "disputes",
                    OutboxServiceClient::new(channel(addresses.disputes).await?),
                ),
                (
                    "labels",
                    OutboxServiceClient::new(channel(addresses.labels).await?),
                ),
                (
                    "refunds",
                    OutboxServiceClient::new(channel(addresses.refunds).await?),
                ),
            ],
            issuer,
            traceparent: None,
            pinned_now: None,
            timeline: Timeline::default(),
        })
    }

    /// Sends `traceparent` with every call from now on.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Stage {
        self.traceparent = traceparent;
        self
    }

    fn call<T>(&self, role: Role, sub: &str, message: T) -> Result<tonic::Request<T>> {
        self.call_as(role, sub, None, message)
    }

    fn call_as<T>(
        &self,
        role: Role,
        sub: &str,
        carrier: Option<&str>,
        message: T,
    ) -> Result<tonic::Request<T>> {
        let token = self
            .issuer
            .issue(sub, role, carrier, Duration::from_secs(3600))?;
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        if let Some(traceparent) = &self.traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse()?);
        }
        Ok(request)
    }

    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if self.timeline.print {
            println!("{line}");
        }
        self.timeline.lines.push(line);
    }

    /// Computes request times from `at` from now on (see [`Stage::whole_return`]).
    pub fn pin_request_times(&mut self, at: DateTime<Utc>) {
        self.pinned_now = Some(at);
    }

    async fn now(&mut self) -> Result<DateTime<Utc>> {
        if let Some(pinned) = self.pinned_now {
            return Ok(pinned);
        }
        let request = self.call(Role::Platform, "demo", NowRequest {})?;
        let now = self.clock.now(request).await?.into_inner().now;
        now.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
            .ok_or_else(|| "the test clock gave no time".into())
    }

    /// Moves the shared clock forward with one `AdvanceClock`, which returns once every
    /// deadline, delivery and settlement step due on the way has run at its own time.
    async fn advance(&mut self, seconds: i64, why: &str) -> Result<()> {
        let now = self.advance_clock(seconds).await?.now;
        self.say(format!(
            "  ... {why}: the clock moves {} to {}",
            describe_span(seconds),
            show_time(&now)
        ));
        Ok(())
    }

    async fn advance_clock(&mut self, seconds: i64) -> Result<AdvanceClockResponse> {
        let request = self.call(Role::Platform, "demo", AdvanceClockRequest { seconds })?;
        Ok(self.clock.advance_clock(request).await?.into_inner())
    }

    /// Waits until outbox deliveries, deadlines and settlement due now have all run: an
    /// `AdvanceClock` of zero seconds, the way any client of the test clock waits.
    pub async fn wait_until_quiet(&mut self) -> Result<()> {
        self.advance_clock(0).await.map(|_| ())
    }

    async fn record_order(&mut self, facts: OrderFacts<'_>) -> Result<()> {
        let now = self.now().await?;
        let shipped = now - chrono::Duration::days(facts.shipped_days_ago);
        let request = RecordOrderRequest {
            request_id: format!("order-{}", facts.order_id),
            order_id: facts.order_id.to_string(),
            buyer_id: facts.buyer_id.to_string(),
            seller_id: facts.seller_id.to_string(),
            total: facts.total.clone(),
            payment_method: facts.method as i32,
            buyer_tier: facts.tier as i32,
            carrier: facts.carrier.to_string(),
            placed_at: ts(shipped - chrono::Duration::days(2)),
            shipped_at: ts(shipped),
            promised_ship_by: None,
            delivered_at: facts
                .delivered_days_ago
                .map(|days| now - chrono::Duration::days(days))
                .and_then(ts),
            destination_country: facts.country.to_string(),
            free_return: facts.free_return,
        };
        let call = self.call(Role::Platform, "orders-service", request)?;
        self.disputes.record_order(call).await?;
        let capture = RecordCaptureRequest {
            request_id: format!("capture-{}", facts.order_id),
            order_id: facts.order_id.to_string(),
            buyer_id: facts.buyer_id.to_string(),
            amount: facts.total.clone(),
            payment_method: facts.method as i32,
            buyer_tier: facts.tier as i32,
            ..Default::default()
        };
        let call = self.call(Role::Platform, "payments-service", capture)?;
        self.refunds.record_capture(call).await?;
        self.say(format!(
            "  order {} by {}: {} paid by {}, shipped with {} to {}{}",
            facts.order_id,
            facts.buyer_id,
            show_money(&facts.total),
            facts
                .method
                .as_str_name()
                .trim_start_matches("PAYMENT_METHOD_"),
            facts.carrier,
            facts.country,
            if facts.free_return {
                " (free-return listing)"
            } else {
                ""
            }
        ));
        Ok(())
    }

    /// The buyer opens a dispute asking for a full refund (every story's opening request).
    async fn open_dispute(
        &mut self,
        order_id: &str,
        buyer_id: &str,
        kind: DisputeKind,
        reason: DisputeReason,
        evidence: Vec<NewEvidence>,
    ) -> Result<Dispute> {
        let request = OpenDisputeRequest {
            request_id: format!("open-{order_id}"),
            order_id: order_id.to_string(),
            kind: kind as i32,
            reason: reason as i32,
            requested_resolution: Some(RequestedResolution {
                // A full refund names no amount: it is what was paid.
                r#type: ResolutionType::FullRefund as i32,
                amount: None,
            }),
            description: format!(
                "{} - see the attached evidence",
                reason
                    .as_str_name()
                    .trim_start_matches("DISPUTE_REASON_")
                    .to_lowercase()
            ),
            evidence,
        };
        let call = self.call(Role::Buyer, buyer_id, request)?;
        let dispute = self
            .disputes
            .open_dispute(call)
            .await?
            .into_inner()
            .dispute
            .ok_or("OpenDispute returned no dispute")?;
        self.say(format!(
            "  {buyer_id} opens a {} dispute ({}): state {}, seller must answer by {}",
            kind.as_str_name().trim_start_matches("DISPUTE_KIND_"),
            reason.as_str_name().trim_start_matches("DISPUTE_REASON_"),
            state_name(&dispute),
            show_time(&dispute.respond_by)
        ));
        Ok(dispute)
    }

    async fn dispute(&mut self, dispute_id: &str) -> Result<Dispute> {
        let call = self.call(
            Role::Platform,
            "demo",
            GetDisputeRequest {
                dispute_id: dispute_id.to_string(),
            },
        )?;
        self.disputes
            .get_dispute(call)
            .await?
            .into_inner()
            .dispute
            .ok_or_else(|| "GetDispute returned no dispute".into())
    }

    async fn refunds_of(&mut self, order_id: &str) -> Result<Vec<Refund>> {
        let call = self.call(
            Role::Platform,
            "demo",
            ListRefundsRequest {
                order_id: order_id.to_string(),
                page_size: 50,
                ..Default::default()
            },
        )?;
        let mut refunds = self.refunds.list_refunds(call).await?.into_inner().refunds;
        // Ties on the (test) clock are broken by the id: v7 ids follow creation order.
        refunds.sort_by_key(|r| {
            (
                r.created_at.as_ref().map(|t| (t.seconds, t.nanos)),
                r.refund_id.clone(),
            )
        });
        Ok(refunds)
    }

    fn describe_refunds(&mut self, refunds: &[Refund]) {
        if refunds.is_empty() {
            self.say("  refunds: none");
        }
        for refund in refunds {
            let line = format!(
                "  refund {}: {} (net {}) {}{}, expected {} .. {}",
                // The tail: v7 ids made close together share their leading (time) digits.
                &refund.refund_id[refund.refund_id.len().saturating_sub(8)..],
                show_money(&refund.amount),
                show_money(&refund.net_amount),
                refund_status(refund),
                if refund.fast_refund {
                    ", fast refund"
                } else {
                    ""
                },
                show_time(&refund.expected_earliest),
                show_time(&refund.expected_latest),
            );
            self.say(line);
        }
    }

    fn describe_dispute(&mut self, dispute: &Dispute) {
        let outcome = dispute
            .outcome
            .as_ref()
            .map(|o| {
                format!(
                    ", outcome {} {}{}",
                    RulingOutcome::try_from(o.r#type)
                        .map(|t| t.as_str_name().trim_start_matches("RULING_OUTCOME_"))
                        .unwrap_or("?"),
                    show_money(&o.amount),
                    if o.return_required {
                        ", return required"
                    } else {
                        ""
                    }
                )
            })
            .unwrap_or_default();
        let line = format!(
            "  dispute {}: {}{}{}",
            dispute.order_id,
            state_name(dispute),
            outcome,
            if dispute.respond_by.is_some() {
                format!(", next deadline {}", show_time(&dispute.respond_by))
            } else {
                String::new()
            }
        );
        self.say(line);
    }

    async fn outcome(
        &mut self,
        dispute_id: &str,
        label: Option<ReturnLabel>,
        recommendation: Option<RulingRecommendation>,
        released_before_delivery: Option<bool>,
    ) -> Result<StoryOutcome> {
        let dispute = self.dispute(dispute_id).await?;
        let refunds = self.refunds_of(&dispute.order_id.clone()).await?;
        self.describe_dispute(&dispute);
        self.describe_refunds(&refunds);
        Ok(StoryOutcome {
            dispute,
            refunds,
            label,
            recommendation,
            released_before_delivery,
        })
    }

    async fn accept(
        &mut self,
        role: Role,
        who: &str,
        dispute: &Dispute,
        offer_id: &str,
    ) -> Result<Dispute> {
        let call = self.call(
            role,
            who,
            AcceptOfferRequest {
                request_id: format!("accept-{offer_id}"),
                dispute_id: dispute.dispute_id.clone(),
                offer_id: offer_id.to_string(),
            },
        )?;
        let dispute = self
            .disputes
            .accept_offer(call)
            .await?
            .into_inner()
            .dispute
            .ok_or("AcceptOffer returned no dispute")?;
        self.say(format!(
            "  {who} accepts offer: state {}",
            state_name(&dispute)
        ));
        Ok(dispute)
    }

    /// The seller accepts the buyer's opening request (offer one).
    async fn accept_opening_request(
        &mut self,
        seller_id: &str,
        dispute: &Dispute,
    ) -> Result<Dispute> {
        let offer = opening_offer_id(dispute)?;
        self.accept(Role::Seller, seller_id, dispute, &offer).await
    }

    async fn create_label(
        &mut self,
        dispute: &Dispute,
        method: ReturnMethod,
        provider: &str,
        sender: Address,
    ) -> Result<ReturnLabel> {
        let call = self.call(
            Role::Buyer,
            &dispute.buyer_id,
            CreateReturnLabelRequest {
                request_id: format!("label-{}", dispute.order_id),
                order_id: dispute.order_id.clone(),
                dispute_id: dispute.dispute_id.clone(),
                method: method as i32,
                provider_code: provider.to_string(),
                sender: Some(sender),
            },
        )?;
        let label = self
            .labels
            .create_return_label(call)
            .await?
            .into_inner()
            .label
            .ok_or("CreateReturnLabel returned no label")?;
        self.say(format!(
            "  {} gets a {} label: {} {}, postage {} paid by {}{}, ship by {}",
            dispute.buyer_id,
            method.as_str_name().trim_start_matches("RETURN_METHOD_"),
            label.provider_code,
            label.tracking_number,
            show_money(&label.postage),
            returns_proto::common::v1::PostagePayer::try_from(label.paid_by)
                .map(|p| p.as_str_name().trim_start_matches("POSTAGE_PAYER_"))
                .unwrap_or("?"),
            if label.free_return {
                " (free return)"
            } else {
                ""
            },
            show_time(&label.ship_by),
        ));
        self.wait_until_quiet().await?;
        Ok(label)
    }

    async fn scan(
        &mut self,
        label: &ReturnLabel,
        event: TrackingEventType,
        n: u32,
    ) -> Result<ReturnLabel> {
        let now = self.now().await?;
        let call = self.call_as(
            Role::Carrier,
            &format!("{}-integration", label.provider_code.to_lowercase()),
            Some(&label.provider_code),
            ReportTrackingEventRequest {
                carrier_event_id: format!("{}-{n}", label.tracking_number),
                tracking_number: label.tracking_number.clone(),
                r#type: event as i32,
                occurred_at: ts(now),
                location: "depot".to_string(),
                details: String::new(),
            },
        )?;
        let label = self
            .labels
            .report_tracking_event(call)
            .await?
            .into_inner()
            .label
            .ok_or("ReportTrackingEvent returned no label")?;
        self.say(format!(
            "  {} scans {}: {}",
            label.provider_code,
            label.tracking_number,
            event
                .as_str_name()
                .trim_start_matches("TRACKING_EVENT_TYPE_")
        ));
        self.wait_until_quiet().await?;
        Ok(label)
    }

    async fn inspect(
        &mut self,
        label: &ReturnLabel,
        result: InspectionResult,
    ) -> Result<ReturnLabel> {
        let call = self.call(
            Role::Seller,
            &label.seller_id,
            RecordInspectionRequest {
                request_id: format!("inspect-{}", label.label_id),
                label_id: label.label_id.clone(),
                result: result as i32,
                notes: "item checked on arrival".to_string(),
                evidence_uris: Vec::new(),
            },
        )?;
        let label = self
            .labels
            .record_inspection(call)
            .await?
            .into_inner()
            .label
            .ok_or("RecordInspection returned no label")?;
        self.say(format!(
            "  {} inspects the return: {}",
            label.seller_id,
            result
                .as_str_name()
                .trim_start_matches("INSPECTION_RESULT_")
        ));
        self.wait_until_quiet().await?;
        Ok(label)
    }

    async fn label(&mut self, label_id: &str) -> Result<ReturnLabel> {
        let call = self.call(
            Role::Platform,
            "demo",
            GetReturnLabelRequest {
                label_id: label_id.to_string(),
            },
        )?;
        self.labels
            .get_return_label(call)
            .await?
            .into_inner()
            .label
            .ok_or_else(|| "GetReturnLabel returned no label".into())
    }

    /// Story 1: the package never arrives (China Post); the seller stays silent for 15 days;
    /// the buyer's request is granted by itself and a wallet refund lands within 3 business days.
    pub async fn package_never_arrives(&mut self) -> Result<StoryOutcome> {
        self.say("Story 1: the package never arrives (China Post, wallet)");
        self.record_order(OrderFacts {
            order_id: "o-1001",
            buyer_id: "b-ana",
            seller_id: "s-lanterns",
            total: money("USD", 2490),
            method: PaymentMethod::Wallet,
            tier: BuyerTier::Standard,
            carrier: "CHINA_POST",
            shipped_days_ago: 20,
            delivered_days_ago: None,
            country: "US",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-1001",
                "b-ana",
                DisputeKind::RefundOnly,
                DisputeReason::NotReceived,
                vec![evidence(
                    EvidenceKind::TrackingScreenshot,
                    "tracking-stuck.png",
                )],
            )
            .await?;
        self.wait_until_quiet().await?;
        self.advance(15 * DAY + 3600, "the seller stays silent")
            .await?;
        self.advance(5 * DAY, "the wallet provider settles").await?;
        self.outcome(&dispute.dispute_id, None, None, None).await
    }

    /// Story 2: a damaged item; the seller counter-offers 40 percent; the buyer accepts; a
    /// partial card refund on the 5-15 business day timeline.
    pub async fn damaged_item_partial_refund(&mut self) -> Result<StoryOutcome> {
        self.say("Story 2: damaged item, 40 percent counter-offer accepted (card)");
        self.record_order(OrderFacts {
            order_id: "o-2002",
            buyer_id: "b-ben",
            seller_id: "s-ceramics",
            total: money("USD", 6000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "DHL",
            shipped_days_ago: 10,
            delivered_days_ago: Some(3),
            country: "GB",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-2002",
                "b-ben",
                DisputeKind::RefundOnly,
                DisputeReason::Damaged,
                vec![evidence(EvidenceKind::Photo, "cracked-bowl.jpg")],
            )
            .await?;
        let call = self.call(
            Role::Seller,
            "s-ceramics",
            MakeOfferRequest {
                request_id: "counter-o-2002".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                r#type: ResolutionType::PartialRefund as i32,
                amount: money("USD", 2400),
                note: "40 percent back, keep the bowl".to_string(),
            },
        )?;
        let offer = self
            .disputes
            .make_offer(call)
            .await?
            .into_inner()
            .offer
            .ok_or("MakeOffer returned no offer")?;
        self.say("  s-ceramics counter-offers a partial refund of USD 24.00");
        self.accept(Role::Buyer, "b-ben", &dispute, &offer.offer_id)
            .await?;
        self.wait_until_quiet().await?;
        let outcome = self.outcome(&dispute.dispute_id, None, None, None).await?;
        self.advance(21 * DAY, "the card network settles").await?;
        let settled = self.refunds_of("o-2002").await?;
        self.describe_refunds(&settled);
        Ok(StoryOutcome {
            refunds: settled,
            ..outcome
        })
    }

    /// Story 3: a contested USD 80 order: rejected with evidence, escalated, a ruling that
    /// requires a return; a prepaid Royal Mail drop-off; scans; inspection; refund released.
    pub async fn contested_order_return_required(&mut self) -> Result<StoryOutcome> {
        self.say("Story 3: contested USD 80 order, return required (Royal Mail, United Kingdom)");
        self.record_order(OrderFacts {
            order_id: "o-3003",
            buyer_id: "b-cara",
            seller_id: "s-jackets",
            total: money("USD", 8000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "UPS",
            shipped_days_ago: 12,
            delivered_days_ago: Some(4),
            country: "GB",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-3003",
                "b-cara",
                DisputeKind::ReturnAndRefund,
                DisputeReason::NotAsDescribed,
                vec![evidence(EvidenceKind::Photo, "wrong-colour.jpg")],
            )
            .await?;
        let call = self.call(
            Role::Seller,
            "s-jackets",
            AddEvidenceRequest {
                request_id: "seller-evidence-o-3003".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                evidence: Some(evidence(EvidenceKind::Photo, "listing-photo.jpg")),
            },
        )?;
        let seller_evidence = self
            .disputes
            .add_evidence(call)
            .await?
            .into_inner()
            .evidence
            .ok_or("AddEvidence returned no evidence")?;
        let first_offer = opening_offer_id(&dispute)?;
        let call = self.call(
            Role::Seller,
            "s-jackets",
            RejectOfferRequest {
                request_id: "reject-o-3003".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                offer_id: first_offer,
                reason: "the jacket matches the listing photos".to_string(),
                evidence_ids: vec![seller_evidence.evidence_id],
            },
        )?;
        self.disputes.reject_offer(call).await?;
        self.say("  s-jackets rejects the request, with the listing photo as evidence");
        let call = self.call(
            Role::Buyer,
            "b-cara",
            EscalateDisputeRequest {
                request_id: "escalate-o-3003".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                reason: "the colour is clearly different".to_string(),
            },
        )?;
        let escalated = self
            .disputes
            .escalate_dispute(call)
            .await?
            .into_inner()
            .dispute
            .ok_or("EscalateDispute returned no dispute")?;
        self.say(format!(
            "  b-cara escalates: state {}, ruling due by {}",
            state_name(&escalated),
            show_time(&escalated.respond_by)
        ));
        let call = self.call(
            Role::Arbiter,
            "arb-dana",
            RecommendRulingRequest {
                dispute_id: dispute.dispute_id.clone(),
            },
        )?;
        let recommendation = self
            .disputes
            .recommend_ruling(call)
            .await?
            .into_inner()
            .recommendation
            .ok_or("RecommendRuling returned nothing")?;
        self.say(format!(
            "  recommendation: {}{} because {}",
            RulingOutcome::try_from(recommendation.outcome)
                .map(|o| o.as_str_name().trim_start_matches("RULING_OUTCOME_"))
                .unwrap_or("?"),
            if recommendation.return_required {
                ", return required"
            } else {
                ""
            },
            recommendation.reasons.join("; ")
        ));
        let call = self.call(
            Role::Arbiter,
            "arb-dana",
            RuleOnDisputeRequest {
                request_id: "rule-o-3003".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                outcome: RulingOutcome::RefundFull as i32,
                amount: None,
                return_required: true,
                rationale: "contested with evidence above USD 50: return before refund".to_string(),
                postage_payer: None,
            },
        )?;
        let ruled = self
            .disputes
            .rule_on_dispute(call)
            .await?
            .into_inner()
            .dispute
            .ok_or("RuleOnDispute returned no dispute")?;
        self.say(format!("  arb-dana rules: state {}", state_name(&ruled)));
        self.wait_until_quiet().await?;
        let label = self
            .create_label(
                &ruled,
                ReturnMethod::DropOff,
                "ROYAL_MAIL",
                address("Cara Buyer", "12 Mill Lane", "Leeds", "LS1 4AP", "GB"),
            )
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 1).await?;
        let held = self.refunds_of("o-3003").await?;
        self.describe_refunds(&held);
        self.advance(2 * DAY, "the parcel travels").await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 2).await?;
        let label = self.inspect(&label, InspectionResult::Accepted).await?;
        let label = self.label(&label.label_id).await?;
        self.advance(21 * DAY, "the card network settles").await?;
        self.outcome(&dispute.dispute_id, Some(label), Some(recommendation), None)
            .await
    }

    /// Story 4: changed mind on a free-return listing in Japan, but it is the buyer's fourth
    /// return this month: a buyer-paid Sagawa pickup, the postage deducted from the refund.
    pub async fn fourth_return_this_month_is_buyer_paid(&mut self) -> Result<StoryOutcome> {
        self.say(
            "Story 4: changed mind in Japan, the buyer's 4th return this month (Sagawa pickup)",
        );
        let sender = address("Kenji Buyer", "2-1 Chiyoda", "Tokyo", "100-0001", "JP");
        for n in 1..=3 {
            let order_id = format!("o-40{n}0");
            self.record_order(OrderFacts {
                order_id: &order_id,
                buyer_id: "b-kenji",
                seller_id: "s-tees",
                total: money("JPY", 3000),
                method: PaymentMethod::Card,
                tier: BuyerTier::Standard,
                carrier: "EMS",
                shipped_days_ago: 8,
                delivered_days_ago: Some(2),
                country: "JP",
                free_return: true,
            })
            .await?;
            let dispute = self
                .open_dispute(
                    &order_id,
                    "b-kenji",
                    DisputeKind::ReturnAndRefund,
                    DisputeReason::ChangedMind,
                    Vec::new(),
                )
                .await?;
            self.wait_until_quiet().await?;
            let dispute = self.dispute(&dispute.dispute_id).await?;
            self.create_label(&dispute, ReturnMethod::Pickup, "SAGAWA", sender.clone())
                .await?;
        }
        self.record_order(OrderFacts {
            order_id: "o-4004",
            buyer_id: "b-kenji",
            seller_id: "s-tees",
            total: money("JPY", 8000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "EMS",
            shipped_days_ago: 8,
            delivered_days_ago: Some(3),
            country: "JP",
            free_return: true,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-4004",
                "b-kenji",
                DisputeKind::ReturnAndRefund,
                DisputeReason::ChangedMind,
                Vec::new(),
            )
            .await?;
        // Past the quota the return is a paid one: it needs the seller's acceptance.
        if dispute.state == DisputeState::AwaitingReturn as i32 {
            return Err("a fourth return this month was authorised as a free return".into());
        }
        let dispute = self.accept_opening_request("s-tees", &dispute).await?;
        self.wait_until_quiet().await?;
        let label = self
            .create_label(&dispute, ReturnMethod::Pickup, "SAGAWA", sender)
            .await?;
        let now = self.now().await?;
        let call = self.call(
            Role::Buyer,
            "b-kenji",
            SchedulePickupRequest {
                request_id: "pickup-o-4004".to_string(),
                label_id: label.label_id.clone(),
                window_start: ts(now + chrono::Duration::hours(24)),
                window_end: ts(now + chrono::Duration::hours(27)),
                address: label.sender.clone(),
                instructions: "ring twice".to_string(),
            },
        )?;
        self.labels.schedule_pickup(call).await?;
        self.say("  b-kenji books a Sagawa pickup for tomorrow morning");
        self.advance(DAY, "pickup day").await?;
        let label = self
            .scan(&label, TrackingEventType::PickupConfirmed, 1)
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 2).await?;
        self.advance(DAY, "the parcel travels").await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 3).await?;
        let label = self.inspect(&label, InspectionResult::Accepted).await?;
        self.advance(21 * DAY, "the card network settles").await?;
        self.outcome(&dispute.dispute_id, Some(label), None, None)
            .await
    }

    /// Story 5: a Platinum buyer returns a USD 20 item through an InPost locker in Poland;
    /// the refund is released at the acceptance scan, before delivery (fast refund).
    pub async fn platinum_fast_refund_at_acceptance(&mut self) -> Result<StoryOutcome> {
        self.say("Story 5: Platinum buyer, USD 20 item, InPost locker in Poland (fast refund)");
        self.record_order(OrderFacts {
            order_id: "o-5005",
            buyer_id: "b-ewa",
            seller_id: "s-gadgets",
            total: money("USD", 2000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Platinum,
            carrier: "DHL",
            shipped_days_ago: 9,
            delivered_days_ago: Some(4),
            country: "PL",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-5005",
                "b-ewa",
                DisputeKind::ReturnAndRefund,
                DisputeReason::QualityProblem,
                vec![evidence(EvidenceKind::Video, "flickering-screen.mp4")],
            )
            .await?;
        let accepted = self.accept_opening_request("s-gadgets", &dispute).await?;
        self.wait_until_quiet().await?;
        let label = self
            .create_label(
                &accepted,
                ReturnMethod::DropOff,
                "INPOST",
                address("Ewa Buyer", "ul. Prosta 5", "Warszawa", "00-850", "PL"),
            )
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 1).await?;
        let at_acceptance = self.refunds_of("o-5005").await?;
        self.describe_refunds(&at_acceptance);
        let released_before_delivery = at_acceptance.iter().any(|r| {
            r.fast_refund
                && r.status != RefundStatus::OnHold as i32
                && r.status != RefundStatus::Cancelled as i32
        });
        self.advance(2 * DAY, "the parcel travels").await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 2).await?;
        let label = self.inspect(&label, InspectionResult::Accepted).await?;
        self.advance(21 * DAY, "the card network settles").await?;
        self.outcome(
            &dispute.dispute_id,
            Some(label),
            None,
            Some(released_before_delivery),
        )
        .await
    }

    /// Story 6: a card chargeback arrives while the refund waits for the return: the buyer is
    /// paid once, by the chargeback.
    pub async fn chargeback_while_refund_on_hold(&mut self) -> Result<StoryOutcome> {
        self.say("Story 6: a chargeback arrives while the refund is on hold");
        self.record_order(OrderFacts {
            order_id: "o-6006",
            buyer_id: "b-finn",
            seller_id: "s-shoes",
            total: money("USD", 4500),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "FEDEX",
            shipped_days_ago: 11,
            delivered_days_ago: Some(5),
            country: "US",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-6006",
                "b-finn",
                DisputeKind::ReturnAndRefund,
                DisputeReason::WrongItem,
                vec![evidence(EvidenceKind::Photo, "two-left-shoes.jpg")],
            )
            .await?;
        let accepted = self.accept_opening_request("s-shoes", &dispute).await?;
        self.wait_until_quiet().await?;
        let held = self.refunds_of("o-6006").await?;
        self.describe_refunds(&held);
        let opened_at = ts(self.now().await?);
        let call = self.call(
            Role::Platform,
            "payments-service",
            RecordChargebackRequest {
                request_id: "chargeback-o-6006".to_string(),
                order_id: "o-6006".to_string(),
                amount: money("USD", 4500),
                network_reference: "CB-2026-000417".to_string(),
                reason: "merchandise not as described".to_string(),
                opened_at,
            },
        )?;
        self.refunds.record_chargeback(call).await?;
        self.say("  the card network reports a USD 45.00 chargeback on o-6006");
        let label = self
            .create_label(
                &accepted,
                ReturnMethod::DropOff,
                "USPS",
                address("Finn Buyer", "400 Pine St", "Seattle", "98101", "US"),
            )
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 1).await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 2).await?;
        let label = self.inspect(&label, InspectionResult::Accepted).await?;
        self.advance(21 * DAY, "the card network settles").await?;
        self.outcome(&dispute.dispute_id, Some(label), None, None)
            .await
    }

    /// Story 7: the refunds service is unreachable while disputes resolve; when it is back,
    /// every refund appears exactly once. `outage` makes refunds unreachable (or reachable
    /// again) for the other services.
    pub async fn refunds_down_while_disputes_resolve(
        &mut self,
        outage: &dyn Fn(bool),
    ) -> Result<Vec<StoryOutcome>> {
        self.say("Story 7: the refunds service is down while three disputes resolve");
        let mut disputes = Vec::new();
        for (n, buyer) in ["b-gus", "b-hana", "b-ivo"].into_iter().enumerate() {
            let order_id = format!("o-700{n}");
            self.record_order(OrderFacts {
                order_id: &order_id,
                buyer_id: buyer,
                seller_id: "s-books",
                total: money("EUR", 1500 + 100 * i64::try_from(n).unwrap_or(0)),
                method: PaymentMethod::Wallet,
                tier: BuyerTier::Standard,
                carrier: "TNT",
                shipped_days_ago: 10,
                delivered_days_ago: Some(2),
                country: "FR",
                free_return: false,
            })
            .await?;
            disputes.push(
                self.open_dispute(
                    &order_id,
                    buyer,
                    DisputeKind::RefundOnly,
                    DisputeReason::MissingParts,
                    vec![evidence(EvidenceKind::Photo, "missing-pages.jpg")],
                )
                .await?,
            );
        }
        outage(true);
        self.say("  !! refunds becomes unreachable");
        for dispute in &disputes {
            self.accept_opening_request("s-books", dispute).await?;
        }
        self.wait_until_quiet().await?;
        let mut waiting = 0;
        for dispute in &disputes {
            waiting += self.refunds_of(&dispute.order_id).await?.len();
        }
        self.say(format!(
            "  while refunds is down, refunds recorded for the three orders: {waiting}"
        ));
        outage(false);
        let retried = self.retry_waiting_deliveries().await?;
        self.say(format!(
            "  !! refunds is back; an operator retries the {retried} deliveries waiting out their backoff"
        ));
        self.wait_until_quiet().await?;
        self.advance(5 * DAY, "the wallet provider settles").await?;
        let mut outcomes = Vec::new();
        for dispute in &disputes {
            outcomes.push(self.outcome(&dispute.dispute_id, None, None, None).await?);
        }
        if waiting != 0 {
            return Err(format!("{waiting} refunds appeared while refunds was down").into());
        }
        Ok(outcomes)
    }
}

impl Stage {
    /// What an operator does once an outage is over: lists the disputes outbox's waiting
    /// messages and retries each now, rather than waiting out its backoff.
    async fn retry_waiting_deliveries(&mut self) -> Result<usize> {
        let waiting = self.undelivered("disputes").await?;
        for message in &waiting {
            let request = self.call(
                Role::Platform,
                "operator",
                RetryOutboxMessageRequest {
                    message_id: message.message_id.clone(),
                },
            )?;
            self.outbox("disputes")?
                .retry_outbox_message(request)
                .await?;
        }
        Ok(waiting.len())
    }

    fn outbox(&mut self, service: &str) -> Result<&mut OutboxServiceClient<Channel>> {
        self.outboxes
            .iter_mut()
            .find(|(name, _)| *name == service)
            .map(|(_, client)| client)
            .ok_or_else(|| format!("no outbox client for {service}").into())
    }

    /// The first page (500) of `service`'s undelivered outbox messages, pending and dead.
    pub async fn undelivered(&mut self, service: &str) -> Result<Vec<OutboxMessage>> {
        let request = self.call(
            Role::Platform,
            "operator",
            ListOutboxMessagesRequest {
                dead_only: false,
                page_size: 500,
                page_token: String::new(),
            },
        )?;
        Ok(self
            .outbox(service)?
            .list_outbox_messages(request)
            .await?
            .into_inner()
            .messages)
    }

    /// Every undelivered message of the three outboxes, as `service: kind state error` lines;
    /// empty when nothing is lost, stuck or dead.
    pub async fn outbox_backlog(&mut self) -> Result<Vec<String>> {
        let mut backlog = Vec::new();
        for service in ["disputes", "labels", "refunds"] {
            for message in self.undelivered(service).await? {
                backlog.push(format!(
                    "{service}: {}.{} state {} after {} attempts: {}",
                    message.destination,
                    message.kind,
                    message.state,
                    message.attempts,
                    message.last_error
                ));
            }
        }
        Ok(backlog)
    }

    /// One whole return with ids derived from `n`: an order paid by card in Poland, a
    /// quality dispute the seller accepts, an InPost drop-off label, the acceptance and
    /// delivery scans, a passed inspection. Every step carries a fixed idempotency key, so a
    /// client may replay the whole function after a failure (a crash of the suite) and each
    /// step happens once. Returns the order id; its refund is the order's total.
    pub async fn whole_return(&mut self, n: usize) -> Result<String> {
        let order_id = format!("o-ret-{n}");
        let buyer_id = format!("b-ret-{n}");
        self.record_order(OrderFacts {
            order_id: &order_id,
            buyer_id: &buyer_id,
            seller_id: "s-returns",
            total: money("USD", whole_return_total(n)),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "DHL",
            shipped_days_ago: 9,
            delivered_days_ago: Some(4),
            country: "PL",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                &order_id,
                &buyer_id,
                DisputeKind::ReturnAndRefund,
                DisputeReason::QualityProblem,
                vec![evidence(EvidenceKind::Photo, "scratched.jpg")],
            )
            .await?;
        let accepted = self.accept_opening_request("s-returns", &dispute).await?;
        self.wait_until_quiet().await?;
        let label = self
            .create_label(
                &accepted,
                ReturnMethod::DropOff,
                "INPOST",
                address("Ret Buyer", "ul. Prosta 5", "Warszawa", "00-850", "PL"),
            )
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 1).await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 2).await?;
        self.inspect(&label, InspectionResult::Accepted).await?;
        Ok(order_id)
    }

    /// The suite's clock, as `Now` reads it.
    pub async fn suite_now(&mut self) -> Result<DateTime<Utc>> {
        let pinned = self.pinned_now.take();
        let now = self.now().await;
        self.pinned_now = pinned;
        now
    }

    /// Moves the clock and waits for quiescence; the response says what ran.
    pub async fn advance_and_settle(&mut self, seconds: i64) -> Result<AdvanceClockResponse> {
        self.advance_clock(seconds).await
    }

    /// Every refund of `order_id`, oldest first.
    pub async fn refunds_of_order(&mut self, order_id: &str) -> Result<Vec<Refund>> {
        self.refunds_of(order_id).await
    }
}

/// The order total of [`Stage::whole_return`] number `n`, in US cents.
pub fn whole_return_total(n: usize) -> i64 {
    2000 + i64::try_from(n % 1000).unwrap_or(0)
}

/// The id of the buyer's opening request, which is offer one of every dispute.
fn opening_offer_id(dispute: &Dispute) -> Result<String> {
    dispute
        .offers
        .first()
        .map(|o| o.offer_id.clone())
        .ok_or_else(|| "the buyer's request is offer one".into())
}

fn describe_span(seconds: i64) -> String {
    let (days, hours) = (seconds / DAY, (seconds % DAY) / 3600);
    match (days, hours) {
        (1, 0) => "1 day".to_string(),
        (d, 0) => format!("{d} days"),
        (0, h) => format!("{h} hours"),
        (d, h) => format!("{d} days {h} hours"),
    }
}

/// Flows beyond the seven stories that the end-to-end tests also walk: the paths where
/// money must not move, or must move again.
impl Stage {
    /// An order cancelled before shipment becomes a full refund on the cancellation
    /// timeline (3-20 business days).
    pub async fn order_cancelled_before_shipping(&mut self) -> Result<Vec<Refund>> {
        self.say("Flow: an order cancelled before it ships");
        let now = self.now().await?;
        let order = RecordOrderRequest {
            request_id: "order-o-8001".to_string(),
            order_id: "o-8001".to_string(),
            buyer_id: "b-jo".to_string(),
            seller_id: "s-lamps".to_string(),
            total: money("USD", 3900),
            payment_method: PaymentMethod::Card as i32,
            buyer_tier: BuyerTier::Standard as i32,
            carrier: "DHL".to_string(),
            placed_at: ts(now - chrono::Duration::days(2)),
            destination_country: "US".to_string(),
            ..Default::default()
        };
        let call = self.call(Role::Platform, "orders-service", order)?;
        self.disputes.record_order(call).await?;
        let capture = RecordCaptureRequest {
            request_id: "capture-o-8001".to_string(),
            order_id: "o-8001".to_string(),
            buyer_id: "b-jo".to_string(),
            amount: money("USD", 3900),
            payment_method: PaymentMethod::Card as i32,
            buyer_tier: BuyerTier::Standard as i32,
            ..Default::default()
        };
        let call = self.call(Role::Platform, "payments-service", capture)?;
        self.refunds.record_capture(call).await?;
        let call = self.call(
            Role::Buyer,
            "b-jo",
            CancelOrderRequest {
                request_id: "cancel-o-8001".to_string(),
                order_id: "o-8001".to_string(),
                reason: "ordered the wrong size".to_string(),
            },
        )?;
        self.disputes.cancel_order(call).await?;
        self.say("  b-jo cancels o-8001 before it ships");
        self.wait_until_quiet().await?;
        let refunds = self.refunds_of("o-8001").await?;
        self.describe_refunds(&refunds);
        self.advance(30 * DAY, "the card network settles").await?;
        let refunds = self.refunds_of("o-8001").await?;
        self.describe_refunds(&refunds);
        Ok(refunds)
    }

    /// A return the buyer never ships: the dispute closes for the seller when the ship-by
    /// deadline passes, and the refund held for the return is cancelled.
    pub async fn return_not_shipped_in_time(&mut self) -> Result<StoryOutcome> {
        self.say("Flow: the buyer never ships the return");
        self.record_order(OrderFacts {
            order_id: "o-8002",
            buyer_id: "b-kai",
            seller_id: "s-vases",
            total: money("USD", 3000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "DHL",
            shipped_days_ago: 9,
            delivered_days_ago: Some(3),
            country: "CA",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-8002",
                "b-kai",
                DisputeKind::ReturnAndRefund,
                DisputeReason::Damaged,
                vec![evidence(EvidenceKind::Photo, "chipped-vase.jpg")],
            )
            .await?;
        self.accept_opening_request("s-vases", &dispute).await?;
        self.wait_until_quiet().await?;
        self.advance(8 * DAY, "the ship-by date passes").await?;
        self.outcome(&dispute.dispute_id, None, None, None).await
    }

    /// A return that fails inspection goes back to review; the held refund is cancelled and
    /// the arbiter's new ruling pays the buyer once.
    pub async fn failed_inspection_goes_back_to_review(&mut self) -> Result<StoryOutcome> {
        self.say("Flow: the returned parcel is empty; back to review");
        self.record_order(OrderFacts {
            order_id: "o-8003",
            buyer_id: "b-lea",
            seller_id: "s-watches",
            total: money("USD", 7000),
            method: PaymentMethod::Card,
            tier: BuyerTier::Standard,
            carrier: "UPS",
            shipped_days_ago: 10,
            delivered_days_ago: Some(4),
            country: "US",
            free_return: false,
        })
        .await?;
        let dispute = self
            .open_dispute(
                "o-8003",
                "b-lea",
                DisputeKind::ReturnAndRefund,
                DisputeReason::NotAsDescribed,
                vec![evidence(EvidenceKind::Photo, "scratched-face.jpg")],
            )
            .await?;
        let accepted = self.accept_opening_request("s-watches", &dispute).await?;
        self.wait_until_quiet().await?;
        let label = self
            .create_label(
                &accepted,
                ReturnMethod::DropOff,
                "USPS",
                address("Lea Buyer", "9 Elm St", "Boston", "02108", "US"),
            )
            .await?;
        let label = self.scan(&label, TrackingEventType::Accepted, 1).await?;
        let label = self.scan(&label, TrackingEventType::Delivered, 2).await?;
        let label = self.inspect(&label, InspectionResult::WrongOrEmpty).await?;
        let in_review = self.dispute(&dispute.dispute_id).await?;
        self.describe_dispute(&in_review);
        if in_review.state != DisputeState::Escalated as i32 {
            return Err(
                format!("expected review after a failed inspection, got {in_review:?}").into(),
            );
        }
        let call = self.call(
            Role::Arbiter,
            "arb-dana",
            RuleOnDisputeRequest {
                request_id: "rule-o-8003".to_string(),
                dispute_id: dispute.dispute_id.clone(),
                outcome: RulingOutcome::RefundFull as i32,
                amount: None,
                return_required: false,
                rationale: "carrier confirms the parcel was resealed in transit".to_string(),
                postage_payer: None,
            },
        )?;
        self.disputes.rule_on_dispute(call).await?;
        self.say("  arb-dana rules a full refund without a return");
        self.wait_until_quiet().await?;
        self.advance(21 * DAY, "the card network settles").await?;
        self.outcome(&dispute.dispute_id, Some(label), None, None)
            .await
    }
}
