//! "Not yet is not never": a relayed refund request that overtakes its order's capture is
//! kept and created when the capture arrives, under the rules of that moment, whichever
//! message comes first, without ever refunding more than was captured.

mod support;

use std::sync::Arc;

use returns_platform::db::column;
use returns_platform::testing::authorized;
use returns_proto::common::v1 as common;
use returns_proto::refunds::v1 as pb;
use support::{Harness, platform, request_id, status, usd};
use tonic::Code;

/// A CreateRefund as the outbox relay sends it: the message id doubles as the request id.
fn relayed(order_id: &str, minor: i64, release: pb::ReleaseCondition) -> pb::CreateRefundRequest {
    let message_id = uuid::Uuid::now_v7().to_string();
    let mut request = Harness::refund_request(order_id, usd(minor), release);
    request.request_id = message_id.clone();
    request.message_id = message_id;
    request
}

/// Sends `request` as the Platform role; the refund, if one exists already.
async fn deliver(
    client: &mut pb::refund_service_client::RefundServiceClient<tonic::transport::Channel>,
    request: pb::CreateRefundRequest,
) -> Result<Option<pb::Refund>, tonic::Status> {
    client
        .create_refund(authorized(request, &platform()))
        .await
        .map(|response| response.into_inner().refund)
}

fn capture_request(order_id: &str, minor: i64) -> pb::RecordCaptureRequest {
    pb::RecordCaptureRequest {
        request_id: request_id(),
        order_id: order_id.to_string(),
        buyer_id: "b-1".to_string(),
        amount: Some(usd(minor)),
        payment_method: common::PaymentMethod::Card as i32,
        buyer_tier: common::BuyerTier::Standard as i32,
        captured_at: None,
        payment_reference: format!("ch_{order_id}"),
    }
}

async fn list(h: &mut Harness, order_id: &str) -> Vec<pb::Refund> {
    h.client
        .list_refunds(authorized(
            pb::ListRefundsRequest {
                order_id: order_id.to_string(),
                page_size: 200,
                ..Default::default()
            },
            &platform(),
        ))
        .await
        .expect("list")
        .into_inner()
        .refunds
}

/// (message id, outcome, refund id) of every kept request of `order_id`; outcome is empty
/// while unresolved.
async fn kept(h: &Harness, order_id: &str) -> Vec<(String, String, String)> {
    let rows = sqlx::query(
        "SELECT message_id, COALESCE(outcome, '') AS outcome, COALESCE(refund_id, '') AS refund \
         FROM refunds_awaiting_capture WHERE order_id = $1 ORDER BY received_at, message_id",
    )
    .bind(order_id)
    .fetch_all(h.db.pool())
    .await
    .expect("kept requests");
    rows.iter()
        .map(|row| {
            (
                column(row, "message_id").expect("message_id"),
                column(row, "outcome").expect("outcome"),
                column(row, "refund").expect("refund"),
            )
        })
        .collect()
}

fn gross(refund: &pb::Refund) -> i64 {
    refund.amount.as_ref().expect("amount").minor_units
}

#[tokio::test]
async fn a_refund_requested_before_its_capture_is_created_when_the_capture_arrives() {
    let mut h = Harness::start().await;
    let immediate = relayed("o-late", 3_000, pb::ReleaseCondition::Immediate);
    let mut delivered = relayed("o-late", 2_000, pb::ReleaseCondition::OnReturnDelivered);
    delivered.return_label_id = "l-1".into();
    let mut waiting = relayed("o-late", 1_000, pb::ReleaseCondition::OnReturnDelivered);
    waiting.return_label_id = "l-2".into();
    for request in [immediate.clone(), delivered.clone(), waiting.clone()] {
        let answer = deliver(&mut h.client, request)
            .await
            .expect("kept, not refused");
        assert_eq!(answer, None, "no refund exists before the capture");
    }
    // Return progress may also come before the capture: label l-1 is already delivered.
    h.progress("o-late", "l-1", pb::ReturnProgress::Delivered)
        .await;
    assert!(list(&mut h, "o-late").await.is_empty());

    let capture = h
        .client
        .record_capture(authorized(capture_request("o-late", 10_000), &platform()))
        .await
        .expect("capture")
        .into_inner()
        .capture
        .expect("a capture");
    assert_eq!(capture.refunded, Some(usd(6_000)));
    assert_eq!(capture.refundable, Some(usd(4_000)));

    let refunds = list(&mut h, "o-late").await;
    assert_eq!(refunds.len(), 3);
    let by_amount = |minor: i64| {
        refunds
            .iter()
            .find(|r| gross(r) == minor)
            .unwrap_or_else(|| panic!("a refund of {minor}"))
    };
    // Each released per its own gate, as a CreateRefund at capture time would be.
    assert_eq!(status(by_amount(3_000)), pb::RefundStatus::Pending);
    assert_eq!(status(by_amount(2_000)), pb::RefundStatus::Pending);
    assert_eq!(status(by_amount(1_000)), pb::RefundStatus::OnHold);
    assert!(refunds.iter().all(|r| r.buyer_id == "b-1"));
    let outcomes = kept(&h, "o-late").await;
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|(_, outcome, refund)| outcome == "created" && !refund.is_empty())
    );

    // The released ones go to the provider like any other.
    assert_eq!(h.settle().await.submitted, 2);
}

#[tokio::test]
async fn a_relayed_request_after_the_capture_creates_the_refund_at_once() {
    let mut h = Harness::start().await;
    h.card_order("o-1", "b-1", 10_000).await;
    let refund = deliver(
        &mut h.client,
        relayed("o-1", 3_000, pb::ReleaseCondition::Immediate),
    )
    .await
    .expect("created")
    .expect("a refund, the capture being there");
    assert_eq!(status(&refund), pb::RefundStatus::Pending);
    assert_eq!(gross(&refund), 3_000);
    assert_eq!(list(&mut h, "o-1").await.len(), 1);
    assert!(kept(&h, "o-1").await.is_empty());
}

#[tokio::test]
async fn a_direct_request_without_a_capture_is_still_refused_and_not_kept() {
    let mut h = Harness::start().await;
    let error = h
        .create(Harness::refund_request(
            "o-none",
            usd(100),
            pb::ReleaseCondition::Immediate,
        ))
        .await
        .expect_err("no capture");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &error,
        "CAPTURE_REQUIRED"
    ));
    assert!(kept(&h, "o-none").await.is_empty());
}

#[tokio::test]
async fn a_redelivered_kept_message_still_makes_exactly_one_refund() {
    let mut h = Harness::start().await;
    let request = relayed("o-r", 4_000, pb::ReleaseCondition::Immediate);
    assert_eq!(
        deliver(&mut h.client, request.clone()).await.expect("kept"),
        None
    );
    // The same message again, under its own request id (a replay) and under a new one (a
    // redelivery after the relay lost the answer): OK, and still kept once.
    assert_eq!(
        deliver(&mut h.client, request.clone())
            .await
            .expect("replayed"),
        None
    );
    let mut again = request.clone();
    again.request_id = request_id();
    assert_eq!(
        deliver(&mut h.client, again).await.expect("redelivered"),
        None
    );
    assert_eq!(kept(&h, "o-r").await.len(), 1);

    h.client
        .record_capture(authorized(capture_request("o-r", 10_000), &platform()))
        .await
        .expect("capture");
    let refunds = list(&mut h, "o-r").await;
    assert_eq!(refunds.len(), 1);

    // After the capture a redelivery answers with the refund the kept message became.
    let mut late = request.clone();
    late.request_id = request_id();
    let answered = deliver(&mut h.client, late)
        .await
        .expect("redelivered after the capture")
        .expect("the refund");
    assert_eq!(answered.refund_id, refunds[0].refund_id);
    assert_eq!(list(&mut h, "o-r").await.len(), 1);
    assert_eq!(gross(&refunds[0]), 4_000);
}

#[tokio::test]
async fn a_kept_request_that_no_longer_fits_is_resolved_as_over_refund() {
    let mut h = Harness::start().await;
    let first = relayed("o-o", 6_000, pb::ReleaseCondition::Immediate);
    deliver(&mut h.client, first.clone()).await.expect("kept");
    // A second later, so "oldest first" is unambiguous.
    h.context
        .test_clock
        .as_ref()
        .expect("manual clock")
        .advance(std::time::Duration::from_secs(1));
    let second = relayed("o-o", 6_000, pb::ReleaseCondition::Immediate);
    deliver(&mut h.client, second.clone()).await.expect("kept");

    // The capture is recorded although the second request cannot be honoured.
    let capture = h
        .client
        .record_capture(authorized(capture_request("o-o", 10_000), &platform()))
        .await
        .expect("the capture never fails because of a kept request")
        .into_inner()
        .capture
        .expect("a capture");
    assert_eq!(capture.refundable, Some(usd(4_000)));
    let refunds = list(&mut h, "o-o").await;
    assert_eq!(refunds.len(), 1);
    let outcomes = kept(&h, "o-o").await;
    assert_eq!(
        outcomes,
        vec![
            (
                first.message_id.clone(),
                "created".to_string(),
                refunds[0].refund_id.clone()
            ),
            (
                second.message_id.clone(),
                "over_refund".to_string(),
                String::new()
            ),
        ]
    );
    // Its redelivery is acknowledged (the relay must stop), with no refund.
    let mut again = second.clone();
    again.request_id = request_id();
    assert_eq!(
        deliver(&mut h.client, again).await.expect("acknowledged"),
        None
    );
    assert_eq!(list(&mut h, "o-o").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relayed_requests_racing_the_capture_never_refund_more_than_was_captured() {
    const MESSAGES: usize = 20;
    const CAPTURED: i64 = 10_000;
    // Each asks for 30% of the capture: three fit, the other seventeen must not.
    const EACH: i64 = 3_000;
    let mut h = Harness::start().await;
    for round in 0..3 {
        let order = format!("o-race-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(MESSAGES + 1));
        let mut tasks = Vec::new();
        for n in 0..=MESSAGES {
            let mut client = h.client.clone();
            let start = start.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                if n == MESSAGES / 2 {
                    // The capture, in the middle of the requests.
                    client
                        .record_capture(authorized(capture_request(&order, CAPTURED), &platform()))
                        .await
                        .map(|_| None)
                } else {
                    deliver(
                        &mut client,
                        relayed(&order, EACH, pb::ReleaseCondition::Immediate),
                    )
                    .await
                }
            }));
        }
        let mut refused = 0;
        for task in tasks {
            match task.await.expect("join") {
                Ok(_) => {}
                Err(error) => {
                    // Only a request that came after the capture and did not fit is refused.
                    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
                    assert!(
                        returns_platform::testing::has_reason(&error, "OVER_REFUND"),
                        "{error:?}"
                    );
                    refused += 1;
                }
            }
        }
        let refunds = list(&mut h, &order).await;
        let counted: i64 = refunds
            .iter()
            .filter(|r| {
                !matches!(
                    status(r),
                    pb::RefundStatus::Failed | pb::RefundStatus::Cancelled
                )
            })
            .map(gross)
            .sum();
        assert!(
            counted <= CAPTURED,
            "{order}: refunded {counted} of {CAPTURED}"
        );
        // No kept request was orphaned: every one was resolved by the capture.
        let outcomes = kept(&h, &order).await;
        assert!(
            outcomes.iter().all(|(_, outcome, _)| !outcome.is_empty()),
            "{order}: a kept request was left behind: {outcomes:?}"
        );
        let turned_down = outcomes
            .iter()
            .filter(|(_, outcome, _)| outcome == "over_refund")
            .count();
        // Every message is accounted for: a refund, or turned down at capture or at once.
        assert_eq!(refunds.len(), 3, "{order}: as many refunds as fit");
        assert_eq!(refunds.len() + turned_down + refused, MESSAGES, "{order}");
    }
}
