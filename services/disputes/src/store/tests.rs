//! Store tests on the backend the environment selects (SQLite, or PostgreSQL with
//! `RETURNS_TEST_POSTGRES_URL`): documents written before schema versions existed still read
//! as the same values, an unknown future version is refused, and the list queries filter and
//! page by keyset across pages.

use std::borrow::Cow;

use chrono::Duration;
use returns_domain::carrier::ShippingCarrier;
use returns_domain::dispute::{
    BuyerTier, DisputeKind, DisputeReason, PaymentMethod, PostagePayer, ResolutionType, Role,
    RulingOutcome,
};
use returns_domain::ids::{DisputeId, EvidenceId, OfferId, OrderId, PartyId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::negotiation::{
    self as n, Awaiting, DisputeState, EventType, EvidenceKind, OfferStatus, OutcomeSource,
};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::ApiError;
use returns_platform::db::{Database, PLATFORM_MIGRATIONS};
use returns_platform::paging::PageRequest;
use returns_platform::testing::TestDatabase;
use sqlx::migrate::Migrator;

use super::*;

/// Documents exactly as the service wrote them before they carried a schema version
/// (captured from that build), with the version column it kept for the dispute.
const DISPUTE_V1: &str = include_str!("fixtures/dispute_v1.json");
const DISPUTE_V1_VERSION: i64 = 5;
const ORDER_FACTS_V1: &str = include_str!("fixtures/order_facts_v1.json");
const ORDER_CLOCK_V1: &str = include_str!("fixtures/order_clock_v1.json");
const DISPUTE_EVENTS_V1: &str = include_str!("fixtures/dispute_events_v1.jsonl");

/// The last migration of the schema before documents were versioned.
const LAST_UNVERSIONED_MIGRATION: i64 = 12;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a fixture instant")
}

fn usd(minor_units: i64) -> Money {
    Money::new(CurrencyCode::parse("USD").expect("USD"), minor_units)
}

fn actor(id: &str, role: Role) -> n::Actor {
    n::Actor::new(id, role)
}

fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("a fixture id")
}

/// The dispute `DISPUTE_V1` holds, field by field.
fn expected_dispute() -> n::Dispute {
    let opened = at("2026-03-02T09:00:00Z");
    let accepted_offer: OfferId = id("01a23641-74ab-714d-9844-f8e7d66ab557");
    n::Dispute {
        id: id("01a23641-74a6-749b-aee7-c9db84635356"),
        order_id: id("o-1"),
        buyer_id: id("b-1"),
        seller_id: id("s-1"),
        kind: DisputeKind::RefundOnly,
        reason: DisputeReason::Damaged,
        description: "not what I paid for".into(),
        requested: n::Resolution {
            kind: ResolutionType::FullRefund,
            amount: None,
        },
        state: DisputeState::AwaitingReturn,
        awaiting: Awaiting::Buyer,
        respond_by: Some(at("2026-03-09T09:00:00Z")),
        offers: vec![
            n::Offer {
                id: id("01a23641-74a6-749b-aee7-c9dc9a0e5627"),
                number: 1,
                made_by: actor("b-1", Role::Buyer),
                resolution: n::Resolution {
                    kind: ResolutionType::FullRefund,
                    amount: None,
                },
                note: "not what I paid for".into(),
                status: OfferStatus::Superseded,
                created_at: opened,
                answered_at: Some(opened),
                rejection_reason: String::new(),
            },
            n::Offer {
                id: accepted_offer,
                number: 2,
                made_by: actor("s-1", Role::Seller),
                resolution: n::Resolution {
                    kind: ResolutionType::ReturnAndRefund,
                    amount: None,
                },
                note: "send it back please".into(),
                status: OfferStatus::Accepted,
                created_at: opened,
                answered_at: Some(opened),
                rejection_reason: String::new(),
            },
        ],
        evidence: vec![n::Evidence {
            id: id::<EvidenceId>("01a23641-74a6-749b-aee7-c9dd7b8faaa8"),
            kind: EvidenceKind::Photo,
            content_type: "image/jpeg".into(),
            size_bytes: 2048,
            sha256: "ab".repeat(32),
            uri: "https://evidence.example/1.jpg".into(),
            file_name: "1.jpg".into(),
            uploaded_by: actor("b-1", Role::Buyer),
            uploaded_at: opened,
        }],
        message_count: 1,
        outcome: Some(n::Outcome {
            ruling: RulingOutcome::RefundFull,
            amount: Some(usd(8000)),
            return_required: true,
            rationale: "offer 2 accepted by the buyer".into(),
            decided_by: actor("b-1", Role::Buyer),
            decided_at: opened,
            postage_payer: Some(PostagePayer::Seller),
            source: OutcomeSource::OfferAccepted,
            accepted_offer: Some(accepted_offer),
        }),
        order_total: usd(8000),
        created_at: opened,
        updated_at: opened,
        escalated_at: None,
        closed_at: None,
        return_label_id: Some("label-1".into()),
        return_shipped: false,
        return_delivered: false,
        return_postage: None,
        protection_time_left: Duration::days(13),
        reopened: false,
        seller_contested: true,
        free_return: false,
        refund_requested: usd(8000),
        version: DISPUTE_V1_VERSION,
    }
}

fn expected_order_facts() -> n::OrderFacts {
    n::OrderFacts {
        order_id: id::<OrderId>("o-1"),
        buyer_id: id::<PartyId>("b-1"),
        seller_id: id::<PartyId>("s-1"),
        total: usd(8000),
        payment_method: PaymentMethod::Card,
        buyer_tier: BuyerTier::Standard,
        carrier: ShippingCarrier::Dhl,
        placed_at: at("2026-02-18T09:00:00Z"),
        shipped_at: Some(at("2026-02-20T09:00:00Z")),
        promised_ship_by: None,
        delivered_at: Some(at("2026-02-25T09:00:00Z")),
        destination_country: "GB".into(),
        free_return: false,
        cancelled_at: None,
    }
}

/// The subset of `migrations` up to and including `last`.
fn migrations_until(migrations: &'static Migrator, last: i64) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            migrations
                .migrations
                .iter()
                .filter(|m| m.version <= last)
                .cloned()
                .collect(),
        ),
        ignore_missing: true,
        locking: migrations.locking,
        no_tx: migrations.no_tx,
    }
}

/// A database as the service left it before documents were versioned: its schema up to
/// migration 0012 and the version-1 fixtures written with that build's column lists.
async fn database_written_before_versions(target: &TestDatabase) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&target.url).await.expect("connect");
    let (platform, service) = if target.is_postgres() {
        (PLATFORM_MIGRATIONS.postgres, crate::MIGRATIONS.postgres)
    } else {
        (PLATFORM_MIGRATIONS.sqlite, crate::MIGRATIONS.sqlite)
    };
    for set in [platform, service] {
        migrations_until(set, LAST_UNVERSIONED_MIGRATION)
            .run(&pool)
            .await
            .expect("the unversioned schema");
    }
    let dispute = expected_dispute();
    let opened = to_unix_micros(dispute.created_at);
    sqlx::query(
        "INSERT INTO orders (order_id, buyer_id, seller_id, facts, clock, created_at, updated_at) \
         VALUES ('o-1', 'b-1', 's-1', $1, $2, $3, $3)",
    )
    .bind(ORDER_FACTS_V1)
    .bind(ORDER_CLOCK_V1)
    .bind(opened)
    .execute(&pool)
    .await
    .expect("order");
    sqlx::query(
        "INSERT INTO disputes (dispute_id, order_id, buyer_id, seller_id, state, \
         free_return_month, data, version, created_at, updated_at) \
         VALUES ($1, 'o-1', 'b-1', 's-1', 'AWAITING_RETURN', NULL, $2, $3, $4, $4)",
    )
    .bind(dispute.id.to_string())
    .bind(DISPUTE_V1)
    .bind(DISPUTE_V1_VERSION)
    .bind(opened)
    .execute(&pool)
    .await
    .expect("dispute");
    for (index, data) in DISPUTE_EVENTS_V1.lines().enumerate() {
        let event: serde_json::Value = serde_json::from_str(data).expect("fixture event");
        let sequence = i64::try_from(index).expect("small") + 1;
        sqlx::query(
            "INSERT INTO dispute_events (event_id, dispute_id, sequence, event_type, actor_id, \
             actor_role, occurred_at, from_state, to_state, data) \
             VALUES ($1, $2, $3, $4, 'b-1', 'buyer', $5, NULL, 'OPEN', $6)",
        )
        .bind(event["id"].as_str().expect("event id"))
        .bind(dispute.id.to_string())
        .bind(sequence)
        .bind(event["kind"].as_str().expect("event kind"))
        .bind(opened)
        .bind(data)
        .execute(&pool)
        .await
        .expect("event");
    }
    pool.close().await;
}

#[tokio::test]
async fn documents_written_before_schema_versions_read_as_the_same_values() {
    let target = TestDatabase::create().await;
    database_written_before_versions(&target).await;
    // Opening migrates the rest of the way, as a deployment of this build does.
    let db = Database::open(&target.url, crate::MIGRATIONS)
        .await
        .expect("open and migrate");
    let expected = expected_dispute();
    let dispute = load_dispute(&db, &expected.id)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(dispute, expected);
    // This build writes version 1 exactly as the old one did: nothing to rewrite.
    let fixture: serde_json::Value = serde_json::from_str(DISPUTE_V1).expect("fixture");
    assert_eq!(serde_json::to_value(&dispute).expect("json"), fixture);

    let mut conn = db.pool().acquire().await.expect("connection");
    let order = load_order(&mut conn, &db, "o-1", false)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(order.facts, expected_order_facts());
    assert_eq!(
        order.clock,
        n::ProtectionClock {
            paused_time_left: Some(Duration::days(13)),
            resumed_closes_at: None,
            withdrawals: 0,
        }
    );

    let page = PageRequest::parse(0, "", &[]).expect("page");
    let history = list_events(&db, &expected.id, &page)
        .await
        .expect("history");
    let kinds: Vec<_> = history.iter().map(|s| (s.sequence, s.event.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, EventType::Opened),
            (2, EventType::EvidenceAdded),
            (3, EventType::MessageSent),
        ]
    );
    for (stored, line) in history.iter().zip(DISPUTE_EVENTS_V1.lines()) {
        let fixture: serde_json::Value = serde_json::from_str(line).expect("fixture");
        assert_eq!(serde_json::to_value(&stored.event).expect("json"), fixture);
    }
}

#[tokio::test]
async fn a_document_of_an_unknown_future_version_is_refused_not_misread() {
    let target = TestDatabase::create().await;
    database_written_before_versions(&target).await;
    let db = Database::open(&target.url, crate::MIGRATIONS)
        .await
        .expect("open and migrate");
    let id = expected_dispute().id;
    let future = document::DISPUTE.current + 1;
    sqlx::query("UPDATE disputes SET schema_version = $1 WHERE dispute_id = $2")
        .bind(future)
        .bind(id.to_string())
        .execute(db.pool())
        .await
        .expect("a newer build's row");
    let error = load_dispute(&db, &id).await.expect_err("refused");
    let ApiError::Internal(cause) = &error else {
        panic!("expected an internal error, got {error:?}");
    };
    let message = cause.to_string();
    assert!(
        message.contains(&format!(
            "dispute {id} is stored with schema version {future}"
        )),
        "{message}"
    );
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::Internal);
}

/// Stores a copy of the fixture dispute as `id` on its own order, at `created_at`.
async fn store_dispute(
    db: &Database,
    buyer: &str,
    seller: &str,
    state: DisputeState,
    created_at: Timestamp,
) -> n::Dispute {
    let mut dispute = expected_dispute();
    dispute.id = DisputeId::new();
    dispute.order_id = id(&format!("o-{}", dispute.id));
    dispute.buyer_id = id(buyer);
    dispute.seller_id = id(seller);
    dispute.state = state;
    dispute.created_at = created_at;
    let mut facts = expected_order_facts();
    facts.order_id = dispute.order_id.clone();
    facts.buyer_id = dispute.buyer_id.clone();
    facts.seller_id = dispute.seller_id.clone();
    let mut tx = db.begin_write().await.expect("begin");
    upsert_order(
        &mut tx,
        &OrderRecord {
            facts: facts.clone(),
            clock: n::ProtectionClock::default(),
            created_at,
            updated_at: created_at,
        },
    )
    .await
    .expect("order");
    let mut writes = returns_platform::write_batch::WriteBatch::new();
    write_opening(&mut writes, &dispute, &[], &facts, created_at).expect("writes");
    writes.execute(&mut tx).await.expect("dispute");
    tx.commit().await.expect("commit");
    dispute
}

/// Every dispute `filter` lists, walked in pages of `size` with the tokens.
async fn walk(db: &Database, filter: &ListFilter<'_>, size: i32) -> Vec<DisputeId> {
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = PageRequest::parse(size, &token, &filter.token_binding()).expect("page");
        let mut rows = list_disputes(db, filter, &page).await.expect("list");
        token = page.finish(&mut rows, list_cursor);
        seen.extend(rows.into_iter().map(|d| d.id));
        if token.is_empty() {
            return seen;
        }
    }
}

#[tokio::test]
async fn lists_filter_and_page_newest_first_across_pages() {
    let target = TestDatabase::create().await;
    let db = Database::open(&target.url, crate::MIGRATIONS)
        .await
        .expect("open");
    let start = at("2026-03-02T09:00:00Z");
    let mut stored = Vec::new();
    for (i, (buyer, seller, state)) in [
        ("b-1", "s-1", DisputeState::Open),
        ("b-1", "s-2", DisputeState::Resolved),
        ("b-2", "s-1", DisputeState::Open),
        ("b-1", "s-1", DisputeState::Cancelled),
        ("b-1", "s-1", DisputeState::Open),
        ("b-2", "s-2", DisputeState::Open),
        ("b-1", "s-2", DisputeState::Open),
    ]
    .into_iter()
    .enumerate()
    {
        // Pairs share an instant, so the id breaks ties inside one created_at.
        let created_at = start + Duration::seconds(i64::try_from(i / 2).expect("small"));
        stored.push(store_dispute(&db, buyer, seller, state, created_at).await);
    }
    let newest_first = |keep: &dyn Fn(&n::Dispute) -> bool| {
        let mut expected: Vec<&n::Dispute> = stored.iter().filter(|d| keep(d)).collect();
        expected.sort_by_key(|d| (to_unix_micros(d.created_at), d.id.to_string()));
        expected.reverse();
        expected.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };

    let all = ListFilter::default();
    assert_eq!(walk(&db, &all, 2).await, newest_first(&|_| true));
    assert_eq!(walk(&db, &all, 200).await, newest_first(&|_| true));
    let buyer = ListFilter {
        buyer_id: Some("b-1"),
        ..Default::default()
    };
    assert_eq!(
        walk(&db, &buyer, 2).await,
        newest_first(&|d| d.buyer_id.as_str() == "b-1")
    );
    let seller_open = ListFilter {
        seller_id: Some("s-1"),
        state: Some(DisputeState::Open),
        ..Default::default()
    };
    assert_eq!(
        walk(&db, &seller_open, 1).await,
        newest_first(&|d| d.seller_id.as_str() == "s-1" && d.state == DisputeState::Open)
    );
    let order_id = stored[3].order_id.to_string();
    let order = ListFilter {
        order_id: Some(&order_id),
        ..Default::default()
    };
    assert_eq!(walk(&db, &order, 2).await, [stored[3].id]);
    let nobody = ListFilter {
        buyer_id: Some("b-9"),
        ..Default::default()
    };
    assert!(walk(&db, &nobody, 2).await.is_empty());
    // A token only continues the list it came from.
    let page = PageRequest::parse(1, "", &buyer.token_binding()).expect("page");
    let mut rows = list_disputes(&db, &buyer, &page).await.expect("list");
    let token = page.finish(&mut rows, list_cursor);
    assert!(PageRequest::parse(1, &token, &all.token_binding()).is_err());
}

#[tokio::test]
async fn a_history_pages_in_sequence_order_across_pages() {
    let target = TestDatabase::create().await;
    database_written_before_versions(&target).await;
    let db = Database::open(&target.url, crate::MIGRATIONS)
        .await
        .expect("open");
    let id = expected_dispute().id;
    let mut sequences = Vec::new();
    let mut token = String::new();
    loop {
        let page = PageRequest::parse(2, &token, &[&id.to_string()]).expect("page");
        let mut rows = list_events(&db, &id, &page).await.expect("history");
        token = page.finish(&mut rows, event_cursor);
        sequences.push(rows.iter().map(|s| s.sequence).collect::<Vec<_>>());
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(sequences, [vec![1, 2], vec![3]]);
    let other = DisputeId::new();
    let page = PageRequest::parse(2, "", &[&other.to_string()]).expect("page");
    assert!(
        list_events(&db, &other, &page)
            .await
            .expect("empty")
            .is_empty()
    );
}
