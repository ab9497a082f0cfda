//! The metrics an operator watches, seen the way Prometheus sees them: the `returns` binary
//! started with an admin port per service, story 1 played over gRPC, and each service's
//! `/metrics` scraped over HTTP before and after, on SQLite or PostgreSQL.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use returns::stories::Stage;
use returns_platform::metrics::parse_samples;
use returns_proto::disputes::v1::DisputeState;
use support::process::{SuiteProcess, SuiteStorage, issuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICES: [&str; 3] = ["disputes", "labels", "refunds"];

/// One scrape: every sample as `(name, labels, value)`.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// The sum of the samples named `name` whose labels include every pair of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(sample, labels, _)| {
                sample == name
                    && with
                        .iter()
                        .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    fn has(&self, name: &str, with: &[(&str, &str)]) -> bool {
        self.0.iter().any(|(sample, labels, _)| {
            sample == name
                && with
                    .iter()
                    .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
        })
    }
}

/// `GET /metrics` over a plain HTTP/1.1 connection, as a scraper sends it.
async fn scrape(admin: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("the admin port accepts");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: returns\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape(parse_samples(body))
}

/// The admin address the launcher printed on each service's line.
fn admin_addresses(banner: &[String]) -> BTreeMap<&'static str, SocketAddr> {
    let mut found = BTreeMap::new();
    for line in banner {
        for service in SERVICES {
            if line.trim().starts_with(service)
                && let Some(url) = line.split("metrics http://").nth(1)
                && let Some(addr) = url.strip_suffix("/metrics")
            {
                found.insert(service, addr.parse().expect("a socket address"));
            }
        }
    }
    found
}

const OPEN_DISPUTE: [(&str, &str); 3] = [
    ("rpc_service", "returns.disputes.v1.DisputeService"),
    ("rpc_method", "OpenDispute"),
    ("rpc_system", "grpc"),
];

#[tokio::test]
async fn a_story_moves_the_metrics_an_operator_watches() {
    let storage = SuiteStorage::create().await;
    let extra: Vec<(&str, String)> = vec![
        ("RETURNS_DISPUTES_METRICS_ADDR", "127.0.0.1:0".into()),
        ("RETURNS_LABELS_METRICS_ADDR", "127.0.0.1:0".into()),
        ("RETURNS_REFUNDS_METRICS_ADDR", "127.0.0.1:0".into()),
    ];
    let suite = SuiteProcess::start(&storage, &extra)
        .await
        .expect("the suite starts");
    let admin = admin_addresses(&suite.banner);
    assert_eq!(
        admin.len(),
        3,
        "one admin port per service: {:?}",
        suite.banner
    );

    let before = scrape(admin["disputes"]).await;
    let mut stage = Stage::connect(suite.addresses, issuer())
        .await
        .expect("connect");
    let outcome = stage.package_never_arrives().await.expect("story 1 plays");
    let [disputes, labels, refunds] = [
        scrape(admin["disputes"]).await,
        scrape(admin["labels"]).await,
        scrape(admin["refunds"]).await,
    ];

    // Each port is one service's resource.
    for (service, scrape) in [
        ("disputes", &disputes),
        ("labels", &labels),
        ("refunds", &refunds),
    ] {
        let name = format!("returns-{service}");
        assert!(
            scrape.has("target_info", &[("service_name", name.as_str())]),
            "{service}'s target_info names it"
        );
        // The pool is open and reported.
        assert!(
            scrape.sum(
                "db_client_connection_count",
                &[("db_client_connection_pool_name", service)]
            ) >= 1.0,
            "{service} reports its pool"
        );
        assert!(
            scrape.sum("db_client_connection_max", &[]) >= 1.0,
            "{service} reports its pool's bound"
        );
    }

    // rpc.server.duration: exactly the one OpenDispute the story made, answered OK, and
    // only on the service that served it.
    let open_ok: Vec<(&str, &str)> = OPEN_DISPUTE
        .iter()
        .copied()
        .chain([("rpc_grpc_status_code", "0")])
        .collect();
    let count = "rpc_server_duration_milliseconds_count";
    assert_eq!(
        disputes.sum(count, &open_ok) - before.sum(count, &open_ok),
        1.0,
        "one OpenDispute call"
    );
    assert_eq!(
        disputes.sum(
            "rpc_server_duration_milliseconds_bucket",
            &[open_ok.as_slice(), &[("le", "+Inf")]].concat()
        ),
        disputes.sum(count, &open_ok),
        "the +Inf bucket holds every call"
    );
    assert!(!labels.has(count, &OPEN_DISPUTE));
    assert!(!refunds.has(count, &OPEN_DISPUTE));
    // The relay's calls are served, and measured, by their receivers.
    assert!(
        refunds.sum(
            count,
            &[
                ("rpc_service", "returns.refunds.v1.RefundService"),
                ("rpc_method", "CreateRefund"),
                ("rpc_grpc_status_code", "0"),
            ]
        ) >= 1.0,
        "the relayed CreateRefund is measured by refunds"
    );

    // The outbox delivered the refund request and has nothing left.
    assert!(
        disputes.sum(
            "returns_outbox_deliveries_total",
            &[("destination", "refunds"), ("outcome", "delivered")]
        ) >= 1.0,
        "disputes delivered to refunds"
    );
    for (service, scrape) in [
        ("disputes", &disputes),
        ("labels", &labels),
        ("refunds", &refunds),
    ] {
        assert_eq!(scrape.sum("returns_outbox_pending", &[]), 0.0, "{service}");
        assert_eq!(scrape.sum("returns_outbox_dead", &[]), 0.0, "{service}");
        assert_eq!(
            scrape.sum("returns_outbox_oldest_pending_age_seconds", &[]),
            0.0,
            "{service}"
        );
    }
    assert!(disputes.has("returns_outbox_pending", &[("destination", "refunds")]));

    // SQLite's one writer: every write of the story went through it, and held it for some
    // time; PostgreSQL has no such writer and reports none.
    let sqlite = !storage.databases[0].is_postgres();
    let writes = "returns_db_writer_transactions_total";
    if sqlite {
        let pool = [("db_client_connection_pool_name", "disputes")];
        assert!(
            disputes.sum(writes, &pool) > before.sum(writes, &pool),
            "the story's writes went through the writer"
        );
        assert!(
            disputes.sum("returns_db_writer_batches_total", &pool) >= 1.0
                && disputes.sum("returns_db_writer_busy_seconds_total", &pool)
                    > before.sum("returns_db_writer_busy_seconds_total", &pool),
            "the writer's COMMITs and busy time"
        );
        assert!(disputes.has("returns_db_writer_wait_seconds_total", &pool));
    } else {
        assert!(!disputes.has(writes, &[]));
    }
    // PostgreSQL's combined writes: the story's OpenDispute ran through them (alone or
    // shared); SQLite has none and reports none.
    let combined = "returns_db_combined_statements_total";
    if sqlite {
        assert!(!disputes.has(combined, &[]));
    } else {
        let pool = [("db_client_connection_pool_name", "disputes")];
        assert!(
            disputes.sum(combined, &pool) > before.sum(combined, &pool),
            "the story's opening ran as a combined write"
        );
        assert!(disputes.has("returns_db_combined_fallbacks_total", &pool));
    }

    // Disputes by state, and no deadline left behind by the worker.
    assert_eq!(outcome.dispute.state, DisputeState::Resolved as i32);
    assert_eq!(
        disputes.sum("returns_dispute_count", &[("state", "RESOLVED")]),
        1.0
    );
    assert_eq!(disputes.sum("returns_dispute_count", &[]), 1.0);
    assert!(disputes.has("returns_dispute_count", &[("state", "OPEN")]));
    assert_eq!(disputes.sum("returns_deadline_due", &[]), 0.0);
    assert_eq!(disputes.sum("returns_deadline_overdue", &[]), 0.0);
    assert!(disputes.has("returns_deadline_due", &[("kind", "SELLER_RESPONSE")]));

    // The refund, counted under its status, and how it was settled.
    assert_eq!(outcome.refunds.len(), 1);
    assert_eq!(
        refunds.sum("returns_refund_count", &[("status", "SUCCEEDED")]),
        1.0
    );
    assert_eq!(refunds.sum("returns_refund_count", &[]), 1.0);
    assert_eq!(
        refunds.sum(
            "returns_refund_provider_calls_total",
            &[("kind", "submit"), ("outcome", "submitted")]
        ),
        1.0
    );
    assert_eq!(
        refunds.sum(
            "returns_refund_provider_calls_total",
            &[("kind", "status"), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        refunds.sum(
            "returns_refund_settlement_duration_seconds_count",
            &[("outcome", "succeeded"), ("payment_method", "WALLET")]
        ),
        1.0
    );
    // A wallet refund settles within 3 business days of its release (business clock).
    let settled_in = refunds.sum("returns_refund_settlement_duration_seconds_sum", &[]);
    assert!(
        settled_in > 0.0 && settled_in <= 5.0 * 86_400.0,
        "{settled_in}"
    );

    suite.kill().await;
}

#[tokio::test]
async fn the_admin_port_answers_only_metrics_and_is_off_unless_configured() {
    let storage = SuiteStorage::create().await;
    let suite = SuiteProcess::start(
        &storage,
        &[("RETURNS_LABELS_METRICS_ADDR", "127.0.0.1:0".to_string())],
    )
    .await
    .expect("the suite starts");
    let admin = admin_addresses(&suite.banner);
    assert_eq!(
        admin.keys().copied().collect::<Vec<_>>(),
        vec!["labels"],
        "only the service given an address serves metrics"
    );
    let mut stream = tokio::net::TcpStream::connect(admin["labels"])
        .await
        .expect("the admin port accepts");
    stream
        .write_all(b"GET /other HTTP/1.1\r\nHost: returns\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    suite.kill().await;
}
