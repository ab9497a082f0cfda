//! The country a return starts from is the order's delivery country, sent by disputes with
//! the authorisation, never one a buyer names: on SQLite (default) or PostgreSQL
//! (`RETURNS_TEST_POSTGRES_URL`).

mod support;

use returns_platform::testing::authorized;
use returns_proto::convert::timestamp_to_proto;
use returns_proto::labels::v1 as pb;
use support::*;
use tonic::Code;

fn label_request(
    order: &str,
    method: pb::ReturnMethod,
    country: &str,
) -> pb::CreateReturnLabelRequest {
    pb::CreateReturnLabelRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        order_id: order.into(),
        dispute_id: String::new(),
        method: method.into(),
        provider_code: String::new(),
        sender: Some(address("Buyer", country)),
    }
}

#[tokio::test]
async fn a_sender_address_outside_the_delivery_country_does_not_choose_the_partner() {
    let h = harness().await;
    h.authorise(&Auth::new("o-gb", "GB")).await;

    // A GB order whose buyer claims a Tokyo address: before, this booked a Sagawa pickup.
    let refused = h
        .client
        .clone()
        .create_return_label(authorized(
            label_request("o-gb", pb::ReturnMethod::Pickup, "JP"),
            &buyer("b-1"),
        ))
        .await
        .expect_err("a Japanese sender on a GB order is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("sender.country_code: must be GB, the order's delivery country, not JP"),
        "{}",
        refused.message()
    );
    // Nothing was issued or announced, and the order can still get its label.
    assert!(h.outbox().await.is_empty());
    let label = h
        .create("o-gb", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect("a GB sender gets the GB partner");
    assert_eq!(label.provider_code, "ROYAL_MAIL");
    let carrier = returns_labels::directory::Directory::shipped()
        .expect("valid")
        .carrier(&label.provider_code)
        .expect("a directory carrier")
        .country
        .clone();
    assert_eq!(carrier, "GB");
}

#[tokio::test]
async fn an_authorised_order_is_quoted_for_its_delivery_country_only() {
    let h = harness().await;
    h.authorise(&Auth::new("o-gb", "GB")).await;
    let options = |country: &str| {
        let mut client = h.client.clone();
        let request = pb::ListReturnOptionsRequest {
            order_id: "o-gb".into(),
            country_code: country.into(),
        };
        async move {
            client
                .list_return_options(authorized(request, &buyer("b-1")))
                .await
                .map(|r| r.into_inner())
        }
    };
    let refused = options("JP")
        .await
        .expect_err("another country's partners are not offered for a GB order");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("country_code: must be GB, the order's delivery country, not JP"),
        "{}",
        refused.message()
    );
    let quoted = options("GB").await.expect("the delivery country named");
    assert_eq!(quoted.country_code, "GB");
    assert!(quoted.pickup_couriers.is_empty());
    assert!(
        quoted
            .drop_off_partners
            .iter()
            .all(|c| c.country_code == "GB")
    );
    assert_eq!(options("").await.expect("default").country_code, "GB");
}

#[tokio::test]
async fn a_pickup_is_booked_only_inside_the_couriers_country() {
    let h = harness().await;
    h.authorise(&Auth::new("o-jp", "JP")).await;
    let label = h
        .create("o-jp", "b-1", "JP", pb::ReturnMethod::Pickup)
        .await
        .expect("label");
    assert_eq!(label.provider_code, "SAGAWA");
    let start = h.now() + chrono::Duration::hours(24);
    let schedule = |request_id: &str, country: &str| {
        let mut client = h.client.clone();
        let request = pb::SchedulePickupRequest {
            request_id: request_id.into(),
            label_id: label.label_id.clone(),
            window_start: Some(timestamp_to_proto(start)),
            window_end: Some(timestamp_to_proto(start + chrono::Duration::hours(4))),
            address: Some(address("Buyer", country)),
            instructions: String::new(),
        };
        async move {
            client
                .schedule_pickup(authorized(request, &buyer("b-1")))
                .await
                .map(|r| r.into_inner())
        }
    };
    let refused = schedule("p-1", "GB")
        .await
        .expect_err("Sagawa does not collect in London");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("address.country_code: must be JP, where SAGAWA collects"),
        "{}",
        refused.message()
    );
    let booked = schedule("p-2", "JP").await.expect("booked in Japan");
    assert_eq!(
        booked
            .pickup
            .and_then(|p| p.address)
            .map(|a| a.country_code),
        Some("JP".to_owned())
    );
    assert_eq!(
        booked.label.map(|l| l.status),
        Some(i32::from(pb::LabelStatus::PickupScheduled))
    );
}
