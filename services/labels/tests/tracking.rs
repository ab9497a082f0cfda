//! Carrier scans, seller inspection, drop-off locations and pickups over gRPC, on SQLite
//! (default) or PostgreSQL (`RETURNS_TEST_POSTGRES_URL`).

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1 as common;
use returns_proto::disputes::v1::ReturnEventType;
use returns_proto::labels::v1 as pb;
use returns_proto::refunds::v1::ReturnProgress;
use support::*;
use tonic::Code;

async fn gb_label(h: &Harness, order: &str) -> pb::ReturnLabel {
    h.authorise(&Auth {
        reason: common::DisputeReason::NotAsDescribed,
        free_return: false,
        ..Auth::new(order, "GB")
    })
    .await;
    h.create(order, "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect("label")
}

#[tokio::test]
async fn scans_are_idempotent_by_carrier_event_id_and_write_outbox_messages_once() {
    let h = harness().await;
    let label = gb_label(&h, "o-1").await;
    let accepted = h
        .scan(
            "ROYAL_MAIL",
            "rm-1",
            &label.tracking_number,
            pb::TrackingEventType::Accepted,
            2,
        )
        .await
        .expect("accepted");
    assert_eq!(
        accepted.label.as_ref().map(|l| l.status),
        Some(i32::from(pb::LabelStatus::InTransit))
    );
    let again = h
        .scan(
            "ROYAL_MAIL",
            "rm-1",
            &label.tracking_number,
            pb::TrackingEventType::Accepted,
            2,
        )
        .await
        .expect("repeat acknowledged");
    assert_eq!(again.event, accepted.event);
    let conflicting = h
        .scan(
            "ROYAL_MAIL",
            "rm-1",
            &label.tracking_number,
            pb::TrackingEventType::Delivered,
            2,
        )
        .await
        .expect_err("same id, another scan");
    assert_eq!(conflicting.code(), Code::AlreadyExists);

    let progress = h.progress().await;
    assert_eq!(progress.len(), 1);
    assert_eq!(
        progress[0].progress,
        i32::from(ReturnProgress::AcceptedByCarrier)
    );
    assert_eq!(progress[0].return_label_id, label.label_id);
    assert_eq!(progress[0].message_id, progress[0].request_id);
    let events = h.return_events().await;
    let kinds: Vec<_> = events.iter().map(|e| e.r#type).collect();
    assert_eq!(
        kinds,
        [
            i32::from(ReturnEventType::LabelCreated),
            i32::from(ReturnEventType::AcceptedByCarrier)
        ]
    );
    let label = again.label.expect("label");
    assert_eq!(label.tracking_events.len(), 1);
    assert!(label.accepted_at.is_some());
}

#[tokio::test]
async fn a_late_in_transit_scan_after_delivery_does_not_move_the_label_back() {
    let h = harness().await;
    let label = gb_label(&h, "o-1").await;
    let t = &label.tracking_number;
    // Delivered arrives first: acceptance and delivery are both announced.
    let delivered = h
        .scan("ROYAL_MAIL", "e-3", t, pb::TrackingEventType::Delivered, 30)
        .await
        .expect("scan");
    assert_eq!(
        delivered.label.as_ref().map(|l| l.status),
        Some(i32::from(pb::LabelStatus::Delivered))
    );
    let late = h
        .scan("ROYAL_MAIL", "e-2", t, pb::TrackingEventType::InTransit, 10)
        .await
        .expect("late scan");
    let accepted = h
        .scan("ROYAL_MAIL", "e-1", t, pb::TrackingEventType::Accepted, 2)
        .await
        .expect("late scan");
    let final_label = accepted.label.expect("label");
    assert_eq!(
        late.label.map(|l| l.status),
        Some(i32::from(pb::LabelStatus::Delivered))
    );
    assert_eq!(final_label.status, i32::from(pb::LabelStatus::Delivered));
    assert_eq!(final_label.tracking_events.len(), 3);
    // Events are listed in carrier time order whatever the arrival order.
    let ids: Vec<_> = final_label
        .tracking_events
        .iter()
        .map(|e| e.carrier_event_id.as_str())
        .collect();
    assert_eq!(ids, ["e-1", "e-2", "e-3"]);
    assert_eq!(
        final_label.accepted_at,
        Some(returns_proto::convert::timestamp_to_proto(
            returns_platform::testing::test_start() + chrono::Duration::hours(2)
        )),
        "the late ACCEPTED scan moves the acceptance time earlier"
    );
    let progress: Vec<_> = h.progress().await.iter().map(|p| p.progress).collect();
    assert_eq!(
        progress,
        [
            i32::from(ReturnProgress::AcceptedByCarrier),
            i32::from(ReturnProgress::Delivered)
        ]
    );
}

#[tokio::test]
async fn a_carrier_reaches_only_its_own_labels() {
    let h = harness().await;
    let label = gb_label(&h, "o-1").await;
    let foreign = h
        .scan(
            "USPS",
            "u-1",
            &label.tracking_number,
            pb::TrackingEventType::Accepted,
            1,
        )
        .await
        .expect_err("another carrier's label");
    assert_eq!(foreign.code(), Code::NotFound);
    let listed = h
        .client
        .clone()
        .list_return_labels(authorized(
            pb::ListReturnLabelsRequest {
                provider_code: "ROYAL_MAIL".into(),
                ..Default::default()
            },
            &carrier("USPS"),
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.labels.is_empty(),
        "a carrier filter cannot widen its scope"
    );
    let buyer_scan = h
        .client
        .clone()
        .report_tracking_event(authorized(
            pb::ReportTrackingEventRequest {
                carrier_event_id: "x".into(),
                tracking_number: label.tracking_number.clone(),
                r#type: pb::TrackingEventType::Delivered.into(),
                occurred_at: None,
                location: String::new(),
                details: String::new(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect_err("buyers do not scan");
    assert_eq!(buyer_scan.code(), Code::PermissionDenied);
    assert!(h.progress().await.is_empty());
}

#[tokio::test]
async fn the_seller_inspects_a_delivered_return_and_both_services_hear_the_result() {
    let h = harness().await;
    let passed = gb_label(&h, "o-1").await;
    let failed = gb_label(&h, "o-2").await;
    let inspect =
        |label_id: String, who: String, result: pb::InspectionResult, request_id: &str| {
            let mut client = h.client.clone();
            let request = pb::RecordInspectionRequest {
                request_id: request_id.into(),
                label_id,
                result: result.into(),
                notes: "checked on arrival".into(),
                evidence_uris: vec!["https://example.test/photo.jpg".into()],
            };
            async move { client.record_inspection(authorized(request, &who)).await }
        };
    let early = inspect(
        passed.label_id.clone(),
        seller("s-1"),
        pb::InspectionResult::Accepted,
        "i-0",
    )
    .await
    .expect_err("not delivered yet");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert!(early.message().contains("CREATED"));

    for label in [&passed, &failed] {
        h.scan(
            "ROYAL_MAIL",
            &format!("d-{}", label.label_id),
            &label.tracking_number,
            pb::TrackingEventType::Delivered,
            5,
        )
        .await
        .expect("delivered");
    }
    let stranger = inspect(
        passed.label_id.clone(),
        seller("s-2"),
        pb::InspectionResult::Accepted,
        "i-1",
    )
    .await
    .expect_err("not the seller");
    assert_eq!(stranger.code(), Code::NotFound);
    let ok = inspect(
        passed.label_id.clone(),
        seller("s-1"),
        pb::InspectionResult::DamagedAsClaimed,
        "i-2",
    )
    .await
    .expect("inspected")
    .into_inner()
    .label
    .expect("label");
    assert_eq!(ok.status, i32::from(pb::LabelStatus::Inspected));
    assert_eq!(
        ok.inspection.as_ref().map(|i| i.result),
        Some(i32::from(pb::InspectionResult::DamagedAsClaimed))
    );
    let replayed = inspect(
        passed.label_id.clone(),
        seller("s-1"),
        pb::InspectionResult::DamagedAsClaimed,
        "i-2",
    )
    .await
    .expect("replayed")
    .into_inner()
    .label
    .expect("label");
    assert_eq!(replayed, ok);
    let twice = inspect(
        passed.label_id.clone(),
        seller("s-1"),
        pb::InspectionResult::Accepted,
        "i-3",
    )
    .await
    .expect_err("once");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    inspect(
        failed.label_id.clone(),
        seller("s-1"),
        pb::InspectionResult::WrongOrEmpty,
        "i-4",
    )
    .await
    .expect("inspected");

    let progress = h.progress().await;
    let for_label = |id: &str| -> Vec<i32> {
        progress
            .iter()
            .filter(|p| p.return_label_id == id)
            .map(|p| p.progress)
            .collect()
    };
    assert_eq!(
        for_label(&passed.label_id),
        [
            i32::from(ReturnProgress::AcceptedByCarrier),
            i32::from(ReturnProgress::Delivered),
            i32::from(ReturnProgress::InspectionPassed)
        ]
    );
    assert_eq!(
        for_label(&failed.label_id).last(),
        Some(&i32::from(ReturnProgress::InspectionFailed))
    );
    let events = h.return_events().await;
    assert!(events.iter().any(|e| e.r#type
        == i32::from(ReturnEventType::InspectionDamagedAsClaimed)
        && e.notes == "checked on arrival"));
    assert!(
        events
            .iter()
            .any(|e| e.r#type == i32::from(ReturnEventType::InspectionWrongOrEmpty))
    );
}

fn location(id: &str, lat: f64, lon: f64, postal: &str) -> pb::DropOffLocation {
    let mut addr = address(id, "GB");
    addr.postal_code = postal.into();
    pb::DropOffLocation {
        location_id: id.into(),
        provider_code: String::new(),
        country_code: "GB".into(),
        name: format!("Post Office {id}"),
        kind: pb::LocationKind::PostOffice.into(),
        address: Some(addr),
        latitude: lat,
        longitude: lon,
        opening_hours: "Mo-Fr 09:00-17:30".into(),
        distance_meters: None,
        active: true,
        updated_at: None,
    }
}

#[tokio::test]
async fn carriers_publish_their_own_locations_and_buyers_find_the_nearest() {
    let h = harness().await;
    let upsert =
        |provider: &str, who: &str, request_id: &str, locations: Vec<pb::DropOffLocation>| {
            let mut client = h.client.clone();
            let request = pb::UpsertDropOffLocationsRequest {
                request_id: request_id.into(),
                provider_code: provider.into(),
                locations,
            };
            let token = carrier(who);
            async move {
                client
                    .upsert_drop_off_locations(authorized(request, &token))
                    .await
            }
        };
    let first = upsert(
        "ROYAL_MAIL",
        "ROYAL_MAIL",
        "u-1",
        vec![
            location("edinburgh", 55.9533, -3.1883, "EH1 1AA"),
            location("london", 51.5074, -0.1278, "SW1A 1AA"),
            location("manchester", 53.4808, -2.2426, "M1 1AA"),
        ],
    )
    .await
    .expect("published")
    .into_inner();
    assert_eq!((first.inserted_count, first.updated_count), (3, 0));
    let second = upsert(
        "ROYAL_MAIL",
        "ROYAL_MAIL",
        "u-2",
        vec![pb::DropOffLocation {
            active: false,
            ..location("manchester", 53.4808, -2.2426, "M1 1AA")
        }],
    )
    .await
    .expect("updated")
    .into_inner();
    assert_eq!((second.inserted_count, second.updated_count), (0, 1));
    let replayed = upsert(
        "ROYAL_MAIL",
        "ROYAL_MAIL",
        "u-2",
        vec![pb::DropOffLocation {
            active: false,
            ..location("manchester", 53.4808, -2.2426, "M1 1AA")
        }],
    )
    .await
    .expect("replayed")
    .into_inner();
    assert_eq!(
        replayed, second,
        "the same request_id and body replays the first answer"
    );
    let foreign = upsert(
        "ROYAL_MAIL",
        "USPS",
        "u-3",
        vec![location("x", 51.0, 0.0, "X")],
    )
    .await
    .expect_err("not its own");
    assert_eq!(foreign.code(), Code::PermissionDenied);
    let wrong_country = upsert(
        "ROYAL_MAIL",
        "ROYAL_MAIL",
        "u-4",
        vec![pb::DropOffLocation {
            country_code: "FR".into(),
            ..location("paris", 48.85, 2.35, "75001")
        }],
    )
    .await
    .expect_err("outside its country");
    assert_eq!(wrong_country.code(), Code::InvalidArgument);

    let list = |request: pb::ListDropOffLocationsRequest| {
        let mut client = h.client.clone();
        async move {
            client
                .list_drop_off_locations(authorized(request, &buyer("b-1")))
                .await
                .map(|r| r.into_inner())
        }
    };
    // From Birmingham: Manchester is hidden (inactive), so London then Edinburgh.
    let near = list(pb::ListDropOffLocationsRequest {
        country_code: "GB".into(),
        latitude: Some(52.4862),
        longitude: Some(-1.8904),
        page_size: 1,
        ..Default::default()
    })
    .await
    .expect("list");
    assert_eq!(near.locations.len(), 1);
    assert_eq!(near.locations[0].location_id, "london");
    let london_km = near.locations[0].distance_meters.expect("distance") / 1000;
    assert!((155..=165).contains(&london_km), "{london_km} km");
    let rest = list(pb::ListDropOffLocationsRequest {
        country_code: "GB".into(),
        latitude: Some(52.4862),
        longitude: Some(-1.8904),
        page_size: 1,
        page_token: near.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .expect("list");
    assert_eq!(rest.locations[0].location_id, "edinburgh");
    assert!(rest.next_page_token.is_empty());
    let by_postcode = list(pb::ListDropOffLocationsRequest {
        country_code: "GB".into(),
        postal_code: "sw1a 1aa".into(),
        ..Default::default()
    })
    .await
    .expect("list");
    assert_eq!(by_postcode.locations.len(), 1);
    assert_eq!(by_postcode.locations[0].location_id, "london");
    assert!(by_postcode.locations[0].distance_meters.is_none());
    let nowhere = list(pb::ListDropOffLocationsRequest {
        country_code: "DE".into(),
        ..Default::default()
    })
    .await
    .expect_err("no partner");
    assert_eq!(nowhere.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_pickup_is_booked_confirmed_by_the_courier_and_collected() {
    let h = harness().await;
    h.authorise(&Auth::new("o-jp", "JP")).await;
    let label = h
        .create("o-jp", "b-1", "JP", pb::ReturnMethod::Pickup)
        .await
        .expect("label");
    assert_eq!(label.provider_code, "SAGAWA");
    let start = h.now() + chrono::Duration::hours(24);
    let schedule = |request_id: &str, hours: i64| {
        let mut client = h.client.clone();
        let request = pb::SchedulePickupRequest {
            request_id: request_id.into(),
            label_id: label.label_id.clone(),
            window_start: Some(returns_proto::convert::timestamp_to_proto(start)),
            window_end: Some(returns_proto::convert::timestamp_to_proto(
                start + chrono::Duration::hours(hours),
            )),
            address: None,
            instructions: "ring twice".into(),
        };
        async move {
            client
                .schedule_pickup(authorized(request, &buyer("b-1")))
                .await
        }
    };
    let too_long = schedule("p-0", 30).await.expect_err("window too long");
    assert_eq!(too_long.code(), Code::InvalidArgument);
    let booked = schedule("p-1", 4).await.expect("booked").into_inner();
    let pickup = booked.pickup.expect("pickup");
    assert_eq!(pickup.status, i32::from(pb::PickupStatus::Scheduled));
    assert_eq!(
        pickup.address.as_ref().map(|a| a.country_code.as_str()),
        Some("JP")
    );
    assert_eq!(
        booked.label.map(|l| l.status),
        Some(i32::from(pb::LabelStatus::PickupScheduled))
    );
    let replayed = schedule("p-1", 4).await.expect("replayed").into_inner();
    assert_eq!(
        replayed.pickup.map(|p| p.pickup_id),
        Some(pickup.pickup_id.clone())
    );
    let double = schedule("p-2", 4).await.expect_err("already booked");
    assert_eq!(double.code(), Code::FailedPrecondition);

    // Cancel and book again, then the courier confirms and collects.
    let cancelled = h
        .client
        .clone()
        .cancel_pickup(authorized(
            pb::CancelPickupRequest {
                request_id: "c-1".into(),
                pickup_id: pickup.pickup_id.clone(),
                reason: "not home".into(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(
        cancelled.pickup.map(|p| p.status),
        Some(i32::from(pb::PickupStatus::Cancelled))
    );
    assert_eq!(
        cancelled.label.map(|l| l.status),
        Some(i32::from(pb::LabelStatus::Created))
    );
    schedule("p-3", 4).await.expect("booked again");
    let confirmed = h
        .scan(
            "SAGAWA",
            "sg-1",
            &label.tracking_number,
            pb::TrackingEventType::PickupConfirmed,
            1,
        )
        .await
        .expect("confirmed");
    let current = confirmed.label.and_then(|l| l.pickup).expect("pickup");
    assert_eq!(current.status, i32::from(pb::PickupStatus::Confirmed));
    assert_eq!(current.confirmation_reference, "sg-1");
    let collected = h
        .scan(
            "SAGAWA",
            "sg-2",
            &label.tracking_number,
            pb::TrackingEventType::Accepted,
            26,
        )
        .await
        .expect("collected")
        .label
        .expect("label");
    assert_eq!(
        collected.pickup.map(|p| p.status),
        Some(i32::from(pb::PickupStatus::Collected))
    );
    assert_eq!(collected.status, i32::from(pb::LabelStatus::InTransit));

    // A drop-off label cannot book a pickup.
    let gb = {
        h.authorise(&Auth::new("o-gb", "GB")).await;
        h.create("o-gb", "b-1", "GB", pb::ReturnMethod::DropOff)
            .await
            .expect("label")
    };
    let refused = h
        .client
        .clone()
        .schedule_pickup(authorized(
            pb::SchedulePickupRequest {
                request_id: "p-9".into(),
                label_id: gb.label_id,
                window_start: Some(returns_proto::convert::timestamp_to_proto(start)),
                window_end: Some(returns_proto::convert::timestamp_to_proto(
                    start + chrono::Duration::hours(2),
                )),
                address: None,
                instructions: String::new(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect_err("drop-off label");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(returns_platform::testing::has_reason(
        &refused,
        "PICKUP_COUNTRIES_ONLY"
    ));
}

#[tokio::test]
async fn the_same_scan_delivered_concurrently_is_applied_once() {
    let h = harness().await;
    let label = gb_label(&h, "o-1").await;
    let results = futures::future::join_all((0..8).map(|_| {
        h.scan(
            "ROYAL_MAIL",
            "rm-dup",
            &label.tracking_number,
            pb::TrackingEventType::Delivered,
            3,
        )
    }))
    .await;
    for result in &results {
        let response = result.as_ref().expect("every copy is acknowledged");
        assert_eq!(
            response.label.as_ref().map(|l| l.status),
            Some(i32::from(pb::LabelStatus::Delivered))
        );
    }
    let progress: Vec<_> = h.progress().await.iter().map(|p| p.progress).collect();
    assert_eq!(
        progress,
        [
            i32::from(ReturnProgress::AcceptedByCarrier),
            i32::from(ReturnProgress::Delivered)
        ]
    );
    let fetched = h
        .client
        .clone()
        .get_return_label(authorized(
            pb::GetReturnLabelRequest {
                label_id: label.label_id.clone(),
            },
            &platform(),
        ))
        .await
        .expect("get")
        .into_inner()
        .label
        .expect("label");
    assert_eq!(fetched.tracking_events.len(), 1);
}

#[tokio::test]
async fn refunds_hears_passed_for_accepted_or_damaged_as_claimed_and_failed_otherwise() {
    let h = harness().await;
    let cases = [
        (
            pb::InspectionResult::Accepted,
            ReturnProgress::InspectionPassed,
        ),
        (
            pb::InspectionResult::DamagedAsClaimed,
            ReturnProgress::InspectionPassed,
        ),
        (
            pb::InspectionResult::DamagedInTransit,
            ReturnProgress::InspectionFailed,
        ),
        (
            pb::InspectionResult::WrongOrEmpty,
            ReturnProgress::InspectionFailed,
        ),
    ];
    for (index, (result, expected)) in cases.into_iter().enumerate() {
        let label = gb_label(&h, &format!("o-{index}")).await;
        h.scan(
            "ROYAL_MAIL",
            &format!("d-{index}"),
            &label.tracking_number,
            pb::TrackingEventType::Delivered,
            5,
        )
        .await
        .expect("delivered");
        h.client
            .clone()
            .record_inspection(authorized(
                pb::RecordInspectionRequest {
                    request_id: format!("i-{index}"),
                    label_id: label.label_id.clone(),
                    result: result.into(),
                    notes: String::new(),
                    evidence_uris: Vec::new(),
                },
                &seller("s-1"),
            ))
            .await
            .expect("inspected");
        let last = h
            .progress()
            .await
            .into_iter()
            .rfind(|p| p.return_label_id == label.label_id)
            .map(|p| p.progress);
        assert_eq!(last, Some(i32::from(expected)), "{result:?}");
    }
}
