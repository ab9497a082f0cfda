//! Every RPC of `DisputeService` over gRPC: order facts, cancellation, opening rules and their
//! refusals, negotiation, messages and evidence, rulings and recommendations, listing and
//! history, authorisation between parties, and idempotency.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1::{DisputeReason, EvidenceKind};
use returns_proto::convert::timestamp_to_proto;
use returns_proto::disputes::v1 as pb;
use support::*;
use tonic::Code;
use tonic_types::StatusExt;

fn field_of(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

async fn open_err(h: &mut Harness, request: pb::OpenDisputeRequest, token: &str) -> tonic::Status {
    h.client
        .open_dispute(authorized(request, token))
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn record_order_upserts_facts_and_reports_the_protection_window() {
    let mut h = Harness::start().await;
    let now = h.now();
    let first = h.record_order(order("o-1", now)).await;
    let shipped = now - chrono::Duration::days(10);
    assert_eq!(
        first.dispute_window_opens_at,
        Some(timestamp_to_proto(shipped + chrono::Duration::days(6)))
    );
    assert_eq!(
        first.dispute_window_closes_at,
        Some(timestamp_to_proto(shipped + chrono::Duration::days(23)))
    );
    // Upsert: a postal carrier moves the deadline to 39 days.
    let mut postal = order("o-1", now);
    postal.carrier = "CHINA_POST".into();
    let second = h.record_order(postal).await;
    assert_eq!(
        second.dispute_window_closes_at,
        Some(timestamp_to_proto(shipped + chrono::Duration::days(39)))
    );
    assert_eq!(second.created_at, first.created_at);

    let mut bad = order("o-2", now);
    bad.carrier = "PIGEON".into();
    let status = h
        .client
        .record_order(authorized(bad, &platform()))
        .await
        .expect_err("refused");
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "carrier")
    );
    let status = h
        .client
        .record_order(authorized(order("o-3", now), &buyer()))
        .await
        .expect_err("buyers do not record orders");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn cancel_order_before_shipment_within_seven_days_requests_a_full_refund() {
    let mut h = Harness::start().await;
    let now = h.now();
    let mut unshipped = order("o-1", now);
    unshipped.placed_at = Some(timestamp_to_proto(now - chrono::Duration::days(2)));
    unshipped.shipped_at = None;
    unshipped.delivered_at = None;
    h.record_order(unshipped.clone()).await;
    let cancel = |order_id: &str| pb::CancelOrderRequest {
        request_id: rid(),
        order_id: order_id.into(),
        reason: "changed my mind".into(),
    };
    let status = h
        .client
        .cancel_order(authorized(cancel("o-1"), &other_buyer()))
        .await
        .expect_err("not theirs");
    assert_eq!(status.code(), Code::NotFound);
    let cancelled = h
        .client
        .cancel_order(authorized(cancel("o-1"), &buyer()))
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("order");
    assert!(cancelled.cancelled_at.is_some());
    let refunds = h.refund_requests().await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, Some(usd(8000)));
    assert_eq!(
        refunds[0].reason,
        returns_proto::refunds::v1::RefundReason::OrderCancelled as i32
    );

    // Shipped orders and orders past the window cannot be cancelled.
    h.record_order(order("o-2", now)).await;
    let status = h
        .client
        .cancel_order(authorized(cancel("o-2"), &platform()))
        .await
        .expect_err("shipped");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &status,
        "ORDER_ALREADY_SHIPPED"
    ));
    let mut late = unshipped;
    late.order_id = "o-3".into();
    late.request_id = rid();
    late.placed_at = Some(timestamp_to_proto(now - chrono::Duration::days(8)));
    h.record_order(late).await;
    let status = h
        .client
        .cancel_order(authorized(cancel("o-3"), &buyer()))
        .await
        .expect_err("late");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&status, "CANCELLATION_WINDOW_CLOSED"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn opening_is_refused_with_the_rule_and_the_dates() {
    let mut h = Harness::start().await;
    let now = h.now();
    // Too early: shipped two days ago, opens in four.
    let mut early = order("early", now);
    early.shipped_at = Some(timestamp_to_proto(now - chrono::Duration::days(2)));
    h.record_order(early).await;
    let status = open_err(
        &mut h,
        open_request("early", DisputeReason::Damaged, &[EvidenceKind::Photo]),
        &buyer(),
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&status, "PROTECTION_WINDOW_NOT_OPEN"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("2026-03-06T09:00:00Z"),
        "{}",
        status.message()
    );
    // Too late: shipped 30 days ago by DHL (23 days).
    let mut late = order("late", now);
    late.shipped_at = Some(timestamp_to_proto(now - chrono::Duration::days(30)));
    h.record_order(late).await;
    let status = open_err(
        &mut h,
        open_request("late", DisputeReason::Damaged, &[EvidenceKind::Photo]),
        &buyer(),
    )
    .await;
    assert!(
        returns_platform::testing::has_reason(&status, "PROTECTION_WINDOW_CLOSED"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("2026-02-23T09:00:00Z"),
        "{}",
        status.message()
    );
    // Not the buyer's order.
    h.record_order(order("o-1", now)).await;
    let status = open_err(
        &mut h,
        open_request("o-1", DisputeReason::Damaged, &[EvidenceKind::Photo]),
        &other_buyer(),
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &status,
        "NOT_THE_BUYERS_ORDER"
    ));
    // Missing evidence for a quality reason.
    let status = open_err(
        &mut h,
        open_request(
            "o-1",
            DisputeReason::Damaged,
            &[EvidenceKind::TrackingScreenshot],
        ),
        &buyer(),
    )
    .await;
    assert!(
        returns_platform::testing::has_reason(&status, "EVIDENCE_REQUIRED"),
        "{}",
        status.message()
    );
    // A partial amount above what was paid.
    let mut too_much = open_request("o-1", DisputeReason::Damaged, &[EvidenceKind::Photo]);
    too_much.requested_resolution = Some(pb::RequestedResolution {
        r#type: pb::ResolutionType::PartialRefund as i32,
        amount: Some(usd(9000)),
    });
    let status = open_err(&mut h, too_much, &buyer()).await;
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "requested_resolution.amount")
    );
    // A missing description and an unset reason.
    let mut silent = open_request("o-1", DisputeReason::Damaged, &[EvidenceKind::Photo]);
    silent.description = " ".into();
    let status = open_err(&mut h, silent, &buyer()).await;
    assert_eq!(field_of(&status), "description");
    let mut unset = open_request("o-1", DisputeReason::Damaged, &[EvidenceKind::Photo]);
    unset.reason = 0;
    assert_eq!(field_of(&open_err(&mut h, unset, &buyer()).await), "reason");
    // One active dispute per order.
    h.open(open_request(
        "o-1",
        DisputeReason::Damaged,
        &[EvidenceKind::Photo],
    ))
    .await;
    let status = open_err(
        &mut h,
        open_request("o-1", DisputeReason::WrongItem, &[EvidenceKind::Photo]),
        &buyer(),
    )
    .await;
    assert!(
        returns_platform::testing::has_reason(&status, "ONE_ACTIVE_DISPUTE_PER_ORDER"),
        "{}",
        status.message()
    );
    // An unknown order.
    let status = open_err(
        &mut h,
        open_request("nope", DisputeReason::Damaged, &[EvidenceKind::Photo]),
        &buyer(),
    )
    .await;
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn the_same_request_id_replays_and_another_body_is_refused() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let request = open_request("o-1", DisputeReason::Damaged, &[EvidenceKind::Photo]);
    let first = h.open(request.clone()).await;
    let again = h.open(request.clone()).await;
    assert_eq!(again.dispute_id, first.dispute_id);
    let mut changed = request;
    changed.description = "something else".into();
    let status = open_err(&mut h, changed, &buyer()).await;
    assert_eq!(status.code(), Code::AlreadyExists);
    let listed = h
        .client
        .list_disputes(authorized(pb::ListDisputesRequest::default(), &arbiter()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.disputes.len(), 1, "nothing changed twice");

    // A replayed offer does not add a second offer.
    let offer = pb::MakeOfferRequest {
        request_id: rid(),
        dispute_id: first.dispute_id.clone(),
        r#type: pb::ResolutionType::Replacement as i32,
        amount: None,
        note: String::new(),
    };
    for _ in 0..2 {
        h.client
            .make_offer(authorized(offer.clone(), &seller()))
            .await
            .expect("offer");
    }
    let d = h.get(&first.dispute_id, &seller()).await.expect("get");
    assert_eq!(d.offers.len(), 2);
}

#[tokio::test]
async fn parties_never_see_or_touch_another_partys_dispute() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let d = h
        .open(open_request(
            "o-1",
            DisputeReason::Damaged,
            &[EvidenceKind::Photo],
        ))
        .await;
    for token in [other_buyer(), other_seller()] {
        let status = h.get(&d.dispute_id, &token).await.expect_err("hidden");
        assert_eq!(status.code(), Code::NotFound);
        let status = h
            .client
            .send_message(authorized(
                pb::SendMessageRequest {
                    request_id: rid(),
                    dispute_id: d.dispute_id.clone(),
                    body: "hello".into(),
                    evidence_ids: vec![],
                },
                &token,
            ))
            .await
            .expect_err("hidden");
        assert_eq!(status.code(), Code::NotFound);
        let listed = h
            .client
            .list_disputes(authorized(
                pb::ListDisputesRequest {
                    buyer_id: "b-1".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(listed.disputes.is_empty());
    }
    // Role table: a seller cannot escalate, a buyer cannot rule.
    let status = h
        .client
        .escalate_dispute(authorized(
            pb::EscalateDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: String::new(),
            },
            &seller(),
        ))
        .await
        .expect_err("seller");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(h.get(&d.dispute_id, &seller()).await.is_ok());
    assert!(h.get(&d.dispute_id, &arbiter()).await.is_ok());
}

#[tokio::test]
async fn negotiation_messages_and_evidence_are_kept_in_the_history() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let d = h
        .open(open_request(
            "o-1",
            DisputeReason::Damaged,
            &[EvidenceKind::Photo],
        ))
        .await;
    let added = h
        .client
        .add_evidence(authorized(
            pb::AddEvidenceRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                evidence: Some(evidence(EvidenceKind::Photo)),
            },
            &seller(),
        ))
        .await
        .expect("evidence")
        .into_inner();
    let evidence_id = added.evidence.expect("evidence").evidence_id;
    let message = h
        .client
        .send_message(authorized(
            pb::SendMessageRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                body: "see the photo of the packing".into(),
                evidence_ids: vec![evidence_id],
            },
            &seller(),
        ))
        .await
        .expect("message")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.author.expect("author").id, "s-1");
    // Rejecting needs a reason; the seller rejects with one.
    let reject = |reason: &str| pb::RejectOfferRequest {
        request_id: rid(),
        dispute_id: d.dispute_id.clone(),
        offer_id: d.offers[0].offer_id.clone(),
        reason: reason.into(),
        evidence_ids: vec![],
    };
    let status = h
        .client
        .reject_offer(authorized(reject(""), &seller()))
        .await
        .expect_err("no reason");
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "reason")
    );
    // The buyer cannot answer their own request.
    let status = h
        .client
        .accept_offer(authorized(
            pb::AcceptOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                offer_id: d.offers[0].offer_id.clone(),
            },
            &buyer(),
        ))
        .await
        .expect_err("own offer");
    assert!(returns_platform::testing::has_reason(&status, "OWN_OFFER"));
    let rejected = h
        .client
        .reject_offer(authorized(reject("packed intact"), &seller()))
        .await
        .expect("reject")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(state(&rejected), pb::DisputeState::Negotiating);
    assert_eq!(rejected.awaiting, pb::Awaiting::Buyer as i32);
    assert_eq!(rejected.message_count, 1);
    assert_eq!(rejected.offers[0].rejection_reason, "packed intact");

    // USD 80 order, contested with evidence: the guidelines ask for a return first.
    let recommendation = h
        .client
        .recommend_ruling(authorized(
            pb::RecommendRulingRequest {
                dispute_id: d.dispute_id.clone(),
            },
            &arbiter(),
        ))
        .await
        .expect("recommend")
        .into_inner()
        .recommendation
        .expect("recommendation");
    assert!(recommendation.return_required);
    assert_eq!(
        recommendation.reasons.len(),
        2,
        "{:?}",
        recommendation.reasons
    );

    let kinds: Vec<_> = h
        .events(&d.dispute_id)
        .await
        .iter()
        .map(|e| e.r#type)
        .collect();
    assert_eq!(
        kinds,
        [
            pb::DisputeEventType::Opened as i32,
            pb::DisputeEventType::EvidenceAdded as i32,
            pb::DisputeEventType::EvidenceAdded as i32,
            pb::DisputeEventType::MessageSent as i32,
            pb::DisputeEventType::OfferRejected as i32,
        ]
    );
}

#[tokio::test]
async fn rulings_need_a_rationale_and_only_escalated_disputes_take_one() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let d = h
        .open(open_request(
            "o-1",
            DisputeReason::WrongItem,
            &[EvidenceKind::Photo],
        ))
        .await;
    let rule = |rationale: &str| pb::RuleOnDisputeRequest {
        request_id: rid(),
        dispute_id: d.dispute_id.clone(),
        outcome: pb::RulingOutcome::SellerFavor as i32,
        amount: None,
        return_required: false,
        rationale: rationale.into(),
        postage_payer: None,
    };
    let status = h
        .client
        .rule_on_dispute(authorized(rule("not yet"), &arbiter()))
        .await
        .expect_err("not escalated");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("OPEN") && status.message().contains("ESCALATED"),
        "{}",
        status.message()
    );
    let status = h
        .client
        .escalate_dispute(authorized(
            pb::EscalateDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: String::new(),
            },
            &buyer(),
        ))
        .await
        .expect_err("the seller has not answered");
    assert!(
        status.message().contains("NEGOTIATING"),
        "{}",
        status.message()
    );
    // The seller counters, the buyer escalates, the arbiter rules for the seller.
    h.client
        .make_offer(authorized(
            pb::MakeOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                r#type: pb::ResolutionType::Replacement as i32,
                amount: None,
                note: String::new(),
            },
            &seller(),
        ))
        .await
        .expect("counter");
    h.client
        .escalate_dispute(authorized(
            pb::EscalateDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: "I want my money".into(),
            },
            &buyer(),
        ))
        .await
        .expect("escalate");
    let status = h
        .client
        .rule_on_dispute(authorized(rule(""), &arbiter()))
        .await
        .expect_err("no rationale");
    assert_eq!(field_of(&status), "rationale");
    let ruled = h
        .client
        .rule_on_dispute(authorized(rule("photos show the listed item"), &arbiter()))
        .await
        .expect("rule")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(state(&ruled), pb::DisputeState::Resolved);
    assert!(
        h.refund_requests().await.is_empty(),
        "no refund for the seller"
    );
    // Withdrawing a resolved dispute is refused naming the state.
    let status = h
        .client
        .cancel_dispute(authorized(
            pb::CancelDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: String::new(),
            },
            &buyer(),
        ))
        .await
        .expect_err("resolved");
    assert!(
        status.message().contains("RESOLVED"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_free_return_within_its_window_is_authorised_at_once() {
    let mut h = Harness::start().await;
    let now = h.now();
    let mut free = order("o-1", now);
    free.free_return = true;
    h.record_order(free).await;
    let mut request = open_request("o-1", DisputeReason::ChangedMind, &[]);
    request.kind = pb::DisputeKind::ReturnAndRefund as i32;
    let d = h.open(request).await;
    assert_eq!(state(&d), pb::DisputeState::AwaitingReturn);
    assert_eq!(
        d.outcome.expect("outcome").source,
        pb::OutcomeSource::FreeReturn as i32
    );
    let authorisations = h.return_authorisations().await;
    assert_eq!(authorisations.len(), 1);
    assert!(authorisations[0].free_return);
    assert_eq!(authorisations[0].buyer_id, "b-1");
    assert_eq!(authorisations[0].destination_country, "GB");
}

#[tokio::test]
async fn disputes_list_by_party_and_state_in_pages() {
    let mut h = Harness::start().await;
    let now = h.now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let order_id = format!("o-{i}");
        h.record_order(order(&order_id, now)).await;
        ids.push(
            h.open(open_request(
                &order_id,
                DisputeReason::Damaged,
                &[EvidenceKind::Photo],
            ))
            .await
            .dispute_id,
        );
    }
    let list = |token: String, page_token: String| {
        authorized(
            pb::ListDisputesRequest {
                page_size: 2,
                page_token,
                state: pb::DisputeState::Open as i32,
                ..Default::default()
            },
            &token,
        )
    };
    let first = h
        .client
        .list_disputes(list(seller(), String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.disputes.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = h
        .client
        .list_disputes(list(seller(), first.next_page_token.clone()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(second.disputes.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut seen: Vec<_> = first
        .disputes
        .iter()
        .chain(&second.disputes)
        .map(|d| d.dispute_id.clone())
        .collect();
    seen.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let resolved = h
        .client
        .list_disputes(authorized(
            pb::ListDisputesRequest {
                state: pb::DisputeState::Resolved as i32,
                ..Default::default()
            },
            &arbiter(),
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(resolved.disputes.is_empty());
}

#[tokio::test]
async fn list_paging_follows_the_platform_policy() {
    let mut h = Harness::start().await;
    let now = h.now();
    for i in 0..2 {
        let order_id = format!("o-{i}");
        h.record_order(order(&order_id, now)).await;
        h.open(open_request(
            &order_id,
            DisputeReason::Damaged,
            &[EvidenceKind::Photo],
        ))
        .await;
    }
    let list = |page_size: i32, page_token: String, buyer_id: &str| {
        authorized(
            pb::ListDisputesRequest {
                page_size,
                page_token,
                buyer_id: buyer_id.into(),
                ..Default::default()
            },
            &arbiter(),
        )
    };
    // A negative size is refused (0 is the default page, a huge one is served the maximum).
    let status = h
        .client
        .list_disputes(list(-1, String::new(), "b-1"))
        .await
        .expect_err("negative page size");
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "page_size")
    );
    let everything = h
        .client
        .list_disputes(list(10_000, String::new(), "b-1"))
        .await
        .expect("clamped")
        .into_inner();
    assert_eq!(everything.disputes.len(), 2);
    assert!(everything.next_page_token.is_empty());
    // A token continues only the list it came from: other filters refuse it.
    let first = h
        .client
        .list_disputes(list(1, String::new(), "b-1"))
        .await
        .expect("first page")
        .into_inner();
    let status = h
        .client
        .list_disputes(list(1, first.next_page_token.clone(), "b-2"))
        .await
        .expect_err("token of another list");
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "page_token")
    );
    let d = &everything.disputes[0];
    let status = h
        .client
        .list_dispute_events(authorized(
            pb::ListDisputeEventsRequest {
                dispute_id: d.dispute_id.clone(),
                page_size: 1,
                page_token: first.next_page_token,
            },
            &arbiter(),
        ))
        .await
        .expect_err("a list token is no history token");
    assert_eq!(
        (status.code(), field_of(&status).as_str()),
        (Code::InvalidArgument, "page_token")
    );
}

#[tokio::test]
async fn the_seller_accepting_the_opening_request_resolves_with_it() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let d = h
        .open(open_request(
            "o-1",
            DisputeReason::WrongItem,
            &[EvidenceKind::Photo],
        ))
        .await;
    let resolved = h
        .client
        .accept_offer(authorized(
            pb::AcceptOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                offer_id: d.offers[0].offer_id.clone(),
            },
            &seller(),
        ))
        .await
        .expect("accept")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(state(&resolved), pb::DisputeState::Resolved);
    assert_eq!(resolved.awaiting, pb::Awaiting::None as i32);
    assert_eq!(resolved.respond_by, None);
    let outcome = resolved.outcome.expect("outcome");
    assert_eq!(outcome.r#type, pb::RulingOutcome::RefundFull as i32);
    assert_eq!(outcome.accepted_offer_id, d.offers[0].offer_id);
    let refunds = h.refund_requests().await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, Some(usd(8000)));
    // A resolved order takes no second dispute.
    let status = open_err(
        &mut h,
        open_request("o-1", DisputeReason::WrongItem, &[EvidenceKind::Photo]),
        &buyer(),
    )
    .await;
    assert!(
        returns_platform::testing::has_reason(&status, "ORDER_ALREADY_RESOLVED"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_withdrawal_from_review_is_recorded_and_the_history_pages_in_order() {
    let mut h = Harness::start().await;
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    let d = h
        .open(open_request(
            "o-1",
            DisputeReason::Damaged,
            &[EvidenceKind::Photo],
        ))
        .await;
    h.client
        .reject_offer(authorized(
            pb::RejectOfferRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                offer_id: d.offers[0].offer_id.clone(),
                reason: "no".into(),
                evidence_ids: vec![],
            },
            &seller(),
        ))
        .await
        .expect("reject");
    h.client
        .escalate_dispute(authorized(
            pb::EscalateDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: String::new(),
            },
            &buyer(),
        ))
        .await
        .expect("escalate");
    let cancelled = h
        .client
        .cancel_dispute(authorized(
            pb::CancelDisputeRequest {
                request_id: rid(),
                dispute_id: d.dispute_id.clone(),
                reason: "the seller refunded me directly".into(),
            },
            &buyer(),
        ))
        .await
        .expect("withdraw")
        .into_inner()
        .dispute
        .expect("dispute");
    assert_eq!(state(&cancelled), pb::DisputeState::Cancelled);
    assert!(cancelled.closed_at.is_some());
    assert_eq!(cancelled.offers[0].status, pb::OfferStatus::Rejected as i32);

    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = h
            .client
            .list_dispute_events(authorized(
                pb::ListDisputeEventsRequest {
                    dispute_id: d.dispute_id.clone(),
                    page_size: 2,
                    page_token: token.clone(),
                },
                &buyer(),
            ))
            .await
            .expect("events")
            .into_inner();
        pages.push(page.events.iter().map(|e| e.r#type).collect::<Vec<_>>());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    use pb::DisputeEventType as T;
    assert_eq!(
        pages,
        [
            vec![T::Opened as i32, T::EvidenceAdded as i32],
            vec![T::OfferRejected as i32, T::Escalated as i32],
            vec![T::Cancelled as i32],
        ]
    );
    let status = h
        .client
        .list_dispute_events(authorized(
            pb::ListDisputeEventsRequest {
                dispute_id: d.dispute_id.clone(),
                page_size: 2,
                page_token: String::new(),
            },
            &other_buyer(),
        ))
        .await
        .expect_err("hidden");
    assert_eq!(status.code(), Code::NotFound);
}
