//! The disk fills under the disputes database, then space is freed: while writes fail the
//! service reports NOT_SERVING, and once space is back writes succeed again without a
//! restart (a connection left inside a failed transaction is discarded, never reused) and
//! health says SERVING.
//!
//! It needs a small filesystem, so it mounts a 4 MiB tmpfs (root and CAP_SYS_ADMIN, as CI
//! has); where mounting is not allowed it says so and passes, unless
//! `RETURNS_REQUIRE_MOUNT=1` makes that a failure. SQLite only: it is the file under the
//! service that fills (PostgreSQL's own disk is the database server's business).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use returns_domain::dispute::Role;
use returns_proto::common::v1::{BuyerTier, Money, PaymentMethod};
use returns_proto::disputes::v1::RecordOrderRequest;
use returns_proto::disputes::v1::dispute_service_client::DisputeServiceClient;
use support::process::{SuiteProcess, SuiteStorage, issuer};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0_u8; 16 * 1024];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_data())
        .is_ok()
    {}
}

fn order(n: usize) -> tonic::Request<RecordOrderRequest> {
    let now = chrono::Utc::now().timestamp();
    let ts = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let token = issuer()
        .issue("orders", Role::Platform, None, Duration::from_secs(600))
        .expect("token");
    let mut request = tonic::Request::new(RecordOrderRequest {
        request_id: format!("order-{n}"),
        order_id: format!("o-{n}"),
        buyer_id: format!("b-{n}"),
        seller_id: "s-1".into(),
        total: Some(Money {
            currency_code: "USD".into(),
            minor_units: 2_000,
        }),
        payment_method: PaymentMethod::Card as i32,
        buyer_tier: BuyerTier::Standard as i32,
        carrier: "DHL".into(),
        placed_at: ts(now - 12 * 86_400),
        shipped_at: ts(now - 10 * 86_400),
        destination_country: "GB".into(),
        // Some bulk, so the database file has to grow.
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

/// Waits (bounded) for the health stream of `service` to report `wanted`.
async fn health_becomes(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    wanted: ServingStatus,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let update = stream
                .message()
                .await
                .expect("the health stream")
                .expect("an update");
            if update.status == wanted as i32 {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health never became {wanted:?}"));
}

#[tokio::test]
async fn writes_recover_without_a_restart_once_a_full_disk_has_space_again() {
    let Some(disk) = SmallDisk::mount() else {
        assert!(
            std::env::var("RETURNS_REQUIRE_MOUNT").is_err(),
            "RETURNS_REQUIRE_MOUNT is set but a tmpfs cannot be mounted here"
        );
        eprintln!("cannot mount a tmpfs here (needs root); the disk-full test does not run");
        return;
    };
    let storage = SuiteStorage::create().await;
    let url = format!("sqlite://{}/disputes.db?mode=rwc", disk.path.display());
    let suite = SuiteProcess::start(&storage, &[("RETURNS_DISPUTES_DATABASE_URL", url)])
        .await
        .expect("start");
    let channel = support::channel(suite.addresses.disputes).await;
    let mut disputes = DisputeServiceClient::new(channel.clone());
    disputes
        .record_order(order(0))
        .await
        .expect("a write with room");
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: returns_proto::service_names::DISPUTES.into(),
        })
        .await
        .expect("watch health")
        .into_inner();
    health_becomes(&mut health, ServingStatus::Serving).await;

    let filler = disk.path.join("filler");
    fill(&filler);
    let mut failed = 0;
    for n in 1..=400 {
        if disputes.record_order(order(n)).await.is_err() {
            failed += 1;
            if failed >= 3 {
                break;
            }
        }
    }
    assert!(failed >= 3, "writes kept succeeding on a full disk");
    health_becomes(&mut health, ServingStatus::NotServing).await;

    std::fs::remove_file(&filler).expect("free the space");
    for n in 1_000..1_020 {
        disputes
            .record_order(order(n))
            .await
            .expect("writes succeed again without a restart");
    }
    health_becomes(&mut health, ServingStatus::Serving).await;
    suite.kill().await;
}
