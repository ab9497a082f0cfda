//! Return labels over gRPC on SQLite (default) or PostgreSQL (`RETURNS_TEST_POSTGRES_URL`):
//! the country directory, authorisation, label issue and the free-return quota, voiding.

mod support;

use returns_domain::returns::S10;
use returns_platform::testing::authorized;
use returns_proto::common::v1 as common;
use returns_proto::labels::v1 as pb;
use support::*;
use tonic::Code;

#[tokio::test]
async fn every_country_in_the_directory_issues_a_label_through_its_partner() {
    let h = harness().await;
    let directory = returns_labels::directory::Directory::shipped().expect("valid");
    let mut seen = 0;
    for country in directory.countries() {
        let order = format!("o-{}", country.code);
        h.authorise(&Auth {
            free_return: false,
            reason: common::DisputeReason::Damaged,
            ..Auth::new(&order, &country.code)
        })
        .await;
        let options = h
            .client
            .clone()
            .list_return_options(authorized(
                pb::ListReturnOptionsRequest {
                    order_id: order.clone(),
                    country_code: String::new(),
                },
                &buyer("b-1"),
            ))
            .await
            .expect("options")
            .into_inner();
        assert_eq!(options.country_code, country.code);
        assert!(options.return_authorised);
        let partners = directory.in_country(&country.code).count();
        assert_eq!(
            options.drop_off_partners.len() + options.pickup_couriers.len(),
            partners
        );
        let method = if options.pickup_couriers.is_empty() {
            pb::ReturnMethod::DropOff
        } else {
            pb::ReturnMethod::Pickup
        };
        // The other method is refused with a message naming what the country offers.
        let other = if method == pb::ReturnMethod::Pickup {
            pb::ReturnMethod::DropOff
        } else {
            pb::ReturnMethod::Pickup
        };
        let refused = h
            .create(&order, "b-1", &country.code, other)
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            returns_platform::testing::has_reason(&refused, "RETURN_METHOD_UNAVAILABLE"),
            "{}",
            refused.message()
        );

        let label = h
            .create(&order, "b-1", &country.code, method)
            .await
            .expect("label");
        let carrier = directory
            .carrier(&label.provider_code)
            .expect("a directory carrier");
        assert_eq!(carrier.country, country.code);
        if carrier.is_postal() {
            let s10 =
                S10::parse(&label.tracking_number).expect("postal partners issue S10 numbers");
            assert_eq!(s10.country(), country.code);
        } else {
            assert!(S10::parse(&label.tracking_number).is_err());
        }
        // A damaged item: the seller pays, prepaid, in the item's currency.
        assert_eq!(label.paid_by, i32::from(common::PostagePayer::Seller));
        assert_eq!(
            label.postage.as_ref().map(|m| m.currency_code.as_str()),
            Some("USD")
        );
        assert!(label.postage.as_ref().is_some_and(|m| m.minor_units > 0));
        assert!(label.qr_payload.contains(&label.tracking_number));
        assert_eq!(label.status, i32::from(pb::LabelStatus::Created));
        seen += 1;
    }
    assert_eq!(seen, 15);
}

#[tokio::test]
async fn the_carrier_list_pages_through_every_partner() {
    let h = harness().await;
    let mut codes = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .clone()
            .list_carriers(authorized(
                pb::ListCarriersRequest {
                    country_code: String::new(),
                    service_type: pb::ServiceType::Unspecified.into(),
                    page_size: 4,
                    page_token: token.clone(),
                },
                &carrier("ROYAL_MAIL"),
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(page.carriers.len() <= 4);
        codes.extend(page.carriers.into_iter().map(|c| c.code));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(codes.len(), 15);
    let pickup = h
        .client
        .clone()
        .list_carriers(authorized(
            pb::ListCarriersRequest {
                country_code: "CZ".into(),
                service_type: pb::ServiceType::Pickup.into(),
                page_size: 0,
                page_token: String::new(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(pickup.carriers.len(), 1);
    assert_eq!(pickup.carriers[0].phone, "225 331 500");
    assert_eq!(pickup.carriers[0].country_name, "Czech Republic");
    assert_eq!(
        pickup.carriers[0].return_postage,
        Some(common::Money {
            currency_code: "CZK".into(),
            minor_units: 15_000
        })
    );
}

#[tokio::test]
async fn a_country_without_a_partner_is_refused_not_given_an_empty_label() {
    let h = harness().await;
    h.authorise(&Auth::new("o-de", "DE")).await;
    let refused = h
        .create("o-de", "b-1", "DE", pb::ReturnMethod::DropOff)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("no drop-off partner or pickup courier in country DE"),
        "{}",
        refused.message()
    );
    let options = h
        .client
        .clone()
        .list_return_options(authorized(
            pb::ListReturnOptionsRequest {
                order_id: "o-de".into(),
                country_code: String::new(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect_err("refused");
    assert_eq!(options.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_order_without_authorisation_gets_no_label_and_one_label_per_order_holds() {
    let h = harness().await;
    let refused = h
        .create("o-none", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &refused,
        "RETURN_NOT_AUTHORISED"
    ));

    h.authorise(&Auth::new("o-1", "GB")).await;
    // Another buyer cannot use the authorisation.
    let stranger = h
        .create("o-1", "b-2", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect_err("refused");
    assert_eq!(stranger.code(), Code::FailedPrecondition);

    let request = pb::CreateReturnLabelRequest {
        request_id: "r-1".into(),
        order_id: "o-1".into(),
        dispute_id: String::new(),
        method: pb::ReturnMethod::DropOff.into(),
        provider_code: "ROYAL_MAIL".into(),
        sender: Some(address("Buyer", "GB")),
    };
    let first = h
        .client
        .clone()
        .create_return_label(authorized(request.clone(), &buyer("b-1")))
        .await
        .expect("label")
        .into_inner();
    let replay = h
        .client
        .clone()
        .create_return_label(authorized(request.clone(), &buyer("b-1")))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(first, replay);
    let changed = h
        .client
        .clone()
        .create_return_label(authorized(
            pb::CreateReturnLabelRequest {
                method: pb::ReturnMethod::Pickup.into(),
                ..request
            },
            &buyer("b-1"),
        ))
        .await
        .expect_err("another body");
    assert_eq!(changed.code(), Code::AlreadyExists);
    let second = h
        .create("o-1", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect_err("one per order");
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &second,
        "ONE_LABEL_PER_ORDER"
    ));

    let label = first.label.expect("label");
    assert!(label.free_return);
    assert_eq!(label.paid_by, i32::from(common::PostagePayer::Platform));
    assert_eq!(
        h.return_events().await.len(),
        1,
        "LABEL_CREATED once, not on the replay"
    );

    // Parties see it; others are told it does not exist.
    for (token, visible) in [
        (buyer("b-1"), true),
        (seller("s-1"), true),
        (carrier("ROYAL_MAIL"), true),
        (platform(), true),
        (buyer("b-2"), false),
        (seller("s-2"), false),
        (carrier("USPS"), false),
    ] {
        let got = h
            .client
            .clone()
            .get_return_label(authorized(
                pb::GetReturnLabelRequest {
                    label_id: label.label_id.clone(),
                },
                &token,
            ))
            .await;
        assert_eq!(got.is_ok(), visible);
        let listed = h
            .client
            .clone()
            .list_return_labels(authorized(pb::ListReturnLabelsRequest::default(), &token))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.labels.len(), usize::from(visible));
    }
}

#[tokio::test]
async fn return_options_explain_free_return_eligibility_and_postage() {
    let h = harness().await;
    let options = |order: &str| {
        let mut client = h.client.clone();
        let order = order.to_owned();
        async move {
            client
                .list_return_options(authorized(
                    pb::ListReturnOptionsRequest {
                        order_id: order,
                        country_code: String::new(),
                    },
                    &buyer("b-1"),
                ))
                .await
                .expect("options")
                .into_inner()
        }
    };
    h.authorise(&Auth::new("o-free", "US")).await;
    let free = options("o-free").await;
    assert_eq!(
        free.free_return_eligibility,
        i32::from(pb::FreeReturnEligibility::Eligible)
    );
    assert_eq!(free.free_returns_left_this_month, 3);
    assert_eq!(free.paid_by, i32::from(common::PostagePayer::Platform));
    assert_eq!(
        free.postage,
        Some(common::Money {
            currency_code: "USD".into(),
            minor_units: 800
        })
    );
    assert_eq!(free.drop_off_partners.len(), 1);
    assert_eq!(free.drop_off_partners[0].code, "USPS");

    h.authorise(&Auth {
        delivered_days_ago: 16,
        ..Auth::new("o-late", "US")
    })
    .await;
    let late = options("o-late").await;
    assert_eq!(
        late.free_return_eligibility,
        i32::from(pb::FreeReturnEligibility::WindowClosed)
    );
    assert!(
        late.free_return_reason.contains("15 days"),
        "{}",
        late.free_return_reason
    );
    assert_eq!(
        late.paid_by,
        i32::from(common::PostagePayer::Buyer),
        "a changed mind pays postage"
    );

    h.authorise(&Auth {
        item_value: common::Money {
            currency_code: "USD".into(),
            minor_units: 700,
        },
        ..Auth::new("o-cheap", "US")
    })
    .await;
    let cheap = options("o-cheap").await;
    assert_eq!(
        cheap.free_return_eligibility,
        i32::from(pb::FreeReturnEligibility::ItemValueBelowPostage)
    );

    h.authorise(&Auth {
        free_return: false,
        ..Auth::new("o-plain", "US")
    })
    .await;
    let plain = options("o-plain").await;
    assert_eq!(
        plain.free_return_eligibility,
        i32::from(pb::FreeReturnEligibility::NotAFreeReturnListing)
    );

    // The buyer's label for a changed-mind return outside the free rules is charged to them,
    // and disputes hears the postage to deduct.
    let label = h
        .create("o-late", "b-1", "US", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    assert!(!label.free_return);
    assert_eq!(label.paid_by, i32::from(common::PostagePayer::Buyer));
    let events = h.return_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].postage, label.postage);
    assert_eq!(events[0].paid_by, i32::from(common::PostagePayer::Buyer));
    let after = options("o-late").await;
    assert_eq!(
        after.free_return_eligibility,
        i32::from(pb::FreeReturnEligibility::OrderAlreadyReturned)
    );

    // Without an authorisation: the directory and the buyer's quota, no label promise.
    let unknown = h
        .client
        .clone()
        .list_return_options(authorized(
            pb::ListReturnOptionsRequest {
                order_id: "o-unknown".into(),
                country_code: "JP".into(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect("options")
        .into_inner();
    assert!(!unknown.return_authorised);
    assert_eq!(unknown.pickup_couriers.len(), 1);
    assert_eq!(unknown.free_returns_left_this_month, 3);
}

#[tokio::test]
async fn ten_concurrent_requests_for_the_last_free_return_give_exactly_one_free_label() {
    let h = harness().await;
    // Two free returns already used this month.
    for order in ["o-a", "o-b"] {
        h.authorise(&Auth::new(order, "GB")).await;
        assert!(
            h.create(order, "b-1", "GB", pb::ReturnMethod::DropOff)
                .await
                .expect("label")
                .free_return
        );
    }
    let orders: Vec<String> = (0..10).map(|i| format!("o-race-{i}")).collect();
    for order in &orders {
        h.authorise(&Auth::new(order, "GB")).await;
    }
    let results = futures::future::join_all(
        orders
            .iter()
            .map(|order| h.create(order, "b-1", "GB", pb::ReturnMethod::DropOff)),
    )
    .await;
    let labels: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every order gets a label"))
        .collect();
    assert_eq!(labels.iter().filter(|l| l.free_return).count(), 1);
    assert_eq!(labels.iter().filter(|l| !l.free_return).count(), 9);
    let mut tracking: Vec<_> = labels.iter().map(|l| l.tracking_number.clone()).collect();
    tracking.sort();
    tracking.dedup();
    assert_eq!(tracking.len(), 10, "tracking numbers are unique");
}

#[tokio::test]
async fn ten_concurrent_requests_for_the_fourth_return_give_one_paid_label() {
    let h = harness().await;
    for order in ["o-1", "o-2", "o-3"] {
        h.authorise(&Auth::new(order, "FR")).await;
        assert!(
            h.create(order, "b-1", "FR", pb::ReturnMethod::DropOff)
                .await
                .expect("label")
                .free_return
        );
    }
    h.authorise(&Auth::new("o-4", "FR")).await;
    let results = futures::future::join_all(
        (0..10).map(|_| h.create("o-4", "b-1", "FR", pb::ReturnMethod::DropOff)),
    )
    .await;
    let issued: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(issued.len(), 1, "one label per order");
    assert!(!issued[0].free_return, "never a fourth free return");
    assert_eq!(issued[0].paid_by, i32::from(common::PostagePayer::Buyer));
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            returns_platform::testing::has_reason(refused, "ONE_LABEL_PER_ORDER"),
            "{}",
            refused.message()
        );
    }
}

#[tokio::test]
async fn voiding_an_unused_label_gives_the_free_return_back() {
    let h = harness().await;
    for order in ["o-1", "o-2", "o-3"] {
        h.authorise(&Auth::new(order, "IT")).await;
    }
    let l1 = h
        .create("o-1", "b-1", "IT", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    h.create("o-2", "b-1", "IT", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    let l3 = h
        .create("o-3", "b-1", "IT", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    assert!(l3.free_return);

    let void = |label_id: &str, who: String, request_id: &str| {
        let mut client = h.client.clone();
        let request = pb::VoidLabelRequest {
            request_id: request_id.into(),
            label_id: label_id.into(),
            reason: "changed carrier".into(),
        };
        async move { client.void_label(authorized(request, &who)).await }
    };
    let stranger = void(&l1.label_id, buyer("b-2"), "v-0")
        .await
        .expect_err("not theirs");
    assert_eq!(stranger.code(), Code::NotFound);
    let voided = void(&l1.label_id, buyer("b-1"), "v-1")
        .await
        .expect("voided")
        .into_inner();
    assert_eq!(
        voided.label.as_ref().map(|l| l.status),
        Some(i32::from(pb::LabelStatus::Voided))
    );
    let again = void(&l1.label_id, buyer("b-1"), "v-1")
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(voided, again);

    // The free return came back, and the order may get a new label.
    h.authorise(&Auth::new("o-4", "IT")).await;
    assert!(
        h.create("o-4", "b-1", "IT", pb::ReturnMethod::DropOff)
            .await
            .expect("label")
            .free_return
    );
    let relabel = h
        .create("o-1", "b-1", "IT", pb::ReturnMethod::DropOff)
        .await
        .expect("new label");
    assert!(!relabel.free_return, "the quota is used again by o-4");
    let kinds: Vec<_> = h.return_events().await.iter().map(|e| e.r#type).collect();
    assert!(kinds.contains(&i32::from(
        returns_proto::disputes::v1::ReturnEventType::LabelVoided
    )));

    // A label the carrier accepted cannot be voided.
    h.scan(
        "POSTE_ITALIANE",
        "e-1",
        &l3.tracking_number,
        pb::TrackingEventType::Accepted,
        1,
    )
    .await
    .expect("scan");
    let used = void(&l3.label_id, platform(), "v-3")
        .await
        .expect_err("used");
    assert_eq!(used.code(), Code::FailedPrecondition);
    assert!(used.message().contains("IN_TRANSIT"), "{}", used.message());
}

#[tokio::test]
async fn a_redelivered_authorisation_is_applied_once() {
    let h = harness().await;
    let request = pb::AuthoriseReturnRequest {
        message_id: "m-1".into(),
        order_id: "o-1".into(),
        dispute_id: "d-1".into(),
        buyer_id: "b-1".into(),
        seller_id: "s-1".into(),
        destination_country: "GB".into(),
        item_value: Some(common::Money {
            currency_code: "GBP".into(),
            minor_units: 2_500,
        }),
        delivered_at: None,
        free_return: false,
        postage_payer: common::PostagePayer::Seller.into(),
        ship_by: None,
        reason: common::DisputeReason::WrongItem.into(),
        return_to: None,
    };
    let first = h
        .client
        .clone()
        .authorise_return(authorized(request.clone(), &platform()))
        .await
        .expect("first")
        .into_inner();
    let again = h
        .client
        .clone()
        .authorise_return(authorized(
            pb::AuthoriseReturnRequest {
                buyer_id: "someone-else".into(),
                ..request.clone()
            },
            &platform(),
        ))
        .await
        .expect("redelivery")
        .into_inner();
    assert_eq!(first, again, "a redelivery changes nothing");
    let buyer_call = h
        .client
        .clone()
        .authorise_return(authorized(request.clone(), &buyer("b-1")))
        .await
        .expect_err("platform only");
    assert_eq!(buyer_call.code(), Code::PermissionDenied);
    let invalid = h
        .client
        .clone()
        .authorise_return(authorized(
            pb::AuthoriseReturnRequest {
                reason: common::DisputeReason::Unspecified.into(),
                message_id: "m-2".into(),
                ..request
            },
            &platform(),
        ))
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("reason"));
}

#[tokio::test]
async fn a_label_past_the_ship_by_deadline_is_refused() {
    let h = harness().await;
    h.authorise(&Auth::new("o-1", "CA")).await;
    // classic policy: 7 days from authorisation to ship.
    h.advance_days(8);
    let refused = h
        .create("o-1", "b-1", "CA", pb::ReturnMethod::DropOff)
        .await
        .expect_err("too late");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&refused, "SHIP_BY_PASSED"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn the_free_return_quota_starts_again_in_a_new_calendar_month() {
    let h = harness().await;
    for order in ["o-1", "o-2", "o-3", "o-4"] {
        h.authorise(&Auth::new(order, "AU")).await;
    }
    for order in ["o-1", "o-2", "o-3"] {
        assert!(
            h.create(order, "b-1", "AU", pb::ReturnMethod::DropOff)
                .await
                .expect("label")
                .free_return
        );
    }
    // Another buyer's quota is their own.
    h.authorise(&Auth {
        buyer_id: "b-2".into(),
        ..Auth::new("o-other", "AU")
    })
    .await;
    assert!(
        h.create("o-other", "b-2", "AU", pb::ReturnMethod::DropOff)
            .await
            .expect("label")
            .free_return
    );
    // 2026-03-02 + 30 days is 2026-04-01: a new month.
    h.advance_days(30);
    h.authorise(&Auth::new("o-5", "AU")).await;
    let april = h
        .create("o-5", "b-1", "AU", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    assert!(april.free_return);
    assert_eq!(april.paid_by, i32::from(common::PostagePayer::Platform));
}

#[tokio::test]
async fn labels_list_newest_first_in_pages_with_filters() {
    let h = harness().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let order = format!("o-{i}");
        h.authorise(&Auth {
            free_return: false,
            ..Auth::new(&order, if i % 2 == 0 { "GB" } else { "FR" })
        })
        .await;
        let country = if i % 2 == 0 { "GB" } else { "FR" };
        created.push(
            h.create(&order, "b-1", country, pb::ReturnMethod::DropOff)
                .await
                .expect("label")
                .label_id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .clone()
            .list_return_labels(authorized(
                pb::ListReturnLabelsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &platform(),
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(page.labels.len() <= 2);
        seen.extend(page.labels.into_iter().map(|l| l.label_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    let royal_mail = h
        .client
        .clone()
        .list_return_labels(authorized(
            pb::ListReturnLabelsRequest {
                provider_code: "ROYAL_MAIL".into(),
                status: pb::LabelStatus::Created.into(),
                ..Default::default()
            },
            &seller("s-1"),
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(royal_mail.labels.len(), 3);
    let bad_token = h
        .client
        .clone()
        .list_return_labels(authorized(
            pb::ListReturnLabelsRequest {
                page_token: "nonsense".into(),
                ..Default::default()
            },
            &platform(),
        ))
        .await
        .expect_err("bad token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}

/// An authorisation whose postage the buyer pays: changed mind on a listing without free
/// returns, item priced in USD, returned from Great Britain (postage GBP 3.95).
fn buyer_paid(order: &str) -> Auth {
    Auth {
        free_return: false,
        ..Auth::new(order, "GB")
    }
}

fn create_request(request_id: &str, order: &str) -> pb::CreateReturnLabelRequest {
    pb::CreateReturnLabelRequest {
        request_id: request_id.into(),
        order_id: order.into(),
        dispute_id: String::new(),
        method: pb::ReturnMethod::DropOff.into(),
        provider_code: String::new(),
        sender: Some(address("Buyer", "GB")),
    }
}

#[tokio::test]
async fn a_buyer_paid_label_tells_refunds_once_which_postage_to_deduct() {
    use returns_proto::refunds::v1::{DeductionKind, ReturnProgress};
    let h = harness().await;
    h.authorise(&buyer_paid("o-1")).await;
    let create = || {
        let mut client = h.client.clone();
        async move {
            client
                .create_return_label(authorized(create_request("r-1", "o-1"), &buyer("b-1")))
                .await
                .expect("label")
                .into_inner()
                .label
                .expect("label")
        }
    };
    let label = create().await;
    assert_eq!(label.paid_by, i32::from(common::PostagePayer::Buyer));
    let replayed = create().await;
    assert_eq!(replayed, label, "the replay answers with the first label");

    let progress = h.progress().await;
    assert_eq!(progress.len(), 1, "the replay writes no second message");
    let message = &progress[0];
    assert_eq!(message.progress, i32::from(ReturnProgress::LabelCreated));
    assert_eq!(message.order_id, "o-1");
    assert_eq!(message.dispute_id, "d-o-1");
    assert_eq!(message.return_label_id, label.label_id);
    assert_eq!(message.message_id, message.request_id);
    assert_eq!(
        message.occurred_at,
        Some(returns_proto::convert::timestamp_to_proto(h.now()))
    );
    assert_eq!(message.deductions.len(), 1);
    let deduction = &message.deductions[0];
    assert_eq!(deduction.kind, i32::from(DeductionKind::ReturnPostage));
    // GBP 3.95 at 1.27 USD/GBP is USD 5.0165, rounded up to the cent: in the item's currency.
    let expected = common::Money {
        currency_code: "USD".into(),
        minor_units: 502,
    };
    assert_eq!(deduction.amount.as_ref(), Some(&expected));
    assert_eq!(label.postage.as_ref(), Some(&expected));
    assert_eq!(deduction.note, "buyer-paid return postage (ROYAL_MAIL)");
}

#[tokio::test]
async fn seller_and_platform_paid_labels_send_refunds_no_deduction() {
    let h = harness().await;
    h.authorise(&Auth {
        reason: common::DisputeReason::NotAsDescribed,
        ..buyer_paid("o-seller")
    })
    .await;
    let seller_paid = h
        .create("o-seller", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    assert_eq!(seller_paid.paid_by, i32::from(common::PostagePayer::Seller));
    h.authorise(&Auth::new("o-free", "GB")).await;
    let free = h
        .create("o-free", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect("label");
    assert_eq!(free.paid_by, i32::from(common::PostagePayer::Platform));
    assert!(h.progress().await.is_empty());
    assert_eq!(
        h.return_events().await.len(),
        2,
        "disputes still hears both"
    );
}

#[tokio::test]
async fn a_buyer_paid_label_whose_postage_cannot_be_priced_in_the_item_currency_is_refused() {
    let h = harness().await;
    // SEK has no rate in the FX table, so GBP postage cannot be deducted from a SEK refund.
    h.authorise(&Auth {
        item_value: common::Money {
            currency_code: "SEK".into(),
            minor_units: 50_000,
        },
        ..buyer_paid("o-1")
    })
    .await;
    let refused = h
        .create("o-1", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        returns_platform::testing::has_reason(&refused, "BUYER_POSTAGE_CURRENCY"),
        "{}",
        refused.message()
    );
    assert!(h.progress().await.is_empty());
    assert!(h.return_events().await.is_empty());
}
