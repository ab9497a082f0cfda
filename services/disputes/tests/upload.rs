//! UploadEvidence: a client stream of metadata then chunks, stored by the suite with the
//! SHA-256 and size it computed; content type and size are refused before anything is kept.

mod support;

use returns_platform::testing::authorized;
use returns_proto::common::v1::{DisputeReason, EvidenceKind};
use returns_proto::disputes::v1 as pb;
use sha2::Digest;
use support::*;
use tonic::Code;

fn metadata(dispute_id: &str, request_id: &str, content_type: &str) -> pb::UploadEvidenceRequest {
    pb::UploadEvidenceRequest {
        payload: Some(pb::upload_evidence_request::Payload::Metadata(
            pb::UploadEvidenceMetadata {
                request_id: request_id.into(),
                dispute_id: dispute_id.into(),
                kind: EvidenceKind::Photo as i32,
                content_type: content_type.into(),
                file_name: "box.png".into(),
            },
        )),
    }
}

fn chunk(bytes: &[u8]) -> pb::UploadEvidenceRequest {
    pb::UploadEvidenceRequest {
        payload: Some(pb::upload_evidence_request::Payload::Chunk(bytes.to_vec())),
    }
}

async fn upload(
    h: &mut Harness,
    messages: Vec<pb::UploadEvidenceRequest>,
    token: &str,
) -> Result<pb::UploadEvidenceResponse, tonic::Status> {
    h.client
        .upload_evidence(authorized(tokio_stream::iter(messages), token))
        .await
        .map(|r| r.into_inner())
}

async fn dispute(h: &mut Harness) -> pb::Dispute {
    let now = h.now();
    h.record_order(order("o-1", now)).await;
    h.open(open_request(
        "o-1",
        DisputeReason::Damaged,
        &[EvidenceKind::Photo],
    ))
    .await
}

#[tokio::test]
async fn an_upload_in_chunks_is_stored_with_the_hash_and_size_the_server_computed() {
    let mut h = Harness::start().await;
    let d = dispute(&mut h).await;
    let file: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let request_id = rid();
    let messages = || {
        let mut m = vec![metadata(&d.dispute_id, &request_id, "image/png")];
        m.extend(file.chunks(4096).map(chunk));
        m
    };
    let response = upload(&mut h, messages(), &seller()).await.expect("upload");
    let stored = response.evidence.expect("evidence");
    assert_eq!(stored.sha256, hex::encode(sha2::Sha256::digest(&file)));
    assert_eq!(stored.size_bytes, 10_000);
    assert_eq!(stored.uploaded_by.expect("uploader").id, "s-1");
    assert_eq!(h.evidence.get(&stored.uri).await.expect("read back"), file);
    assert_eq!(response.dispute.expect("dispute").evidence.len(), 2);
    // A retried upload with the same request id answers the first result.
    let again = upload(&mut h, messages(), &seller()).await.expect("replay");
    assert_eq!(
        again.evidence.expect("evidence").evidence_id,
        stored.evidence_id
    );
    let d = h.get(&d.dispute_id, &buyer()).await.expect("get");
    assert_eq!(d.evidence.len(), 2);
}

#[tokio::test]
async fn uploads_outside_the_allow_list_or_above_the_limit_are_refused() {
    let mut h = Harness::start().await;
    let d = dispute(&mut h).await;
    let status = upload(
        &mut h,
        vec![
            metadata(&d.dispute_id, &rid(), "application/x-msdownload"),
            chunk(b"MZ"),
        ],
        &buyer(),
    )
    .await
    .expect_err("content type");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("metadata.content_type"),
        "{}",
        status.message()
    );

    let too_big = vec![0u8; usize::try_from(EVIDENCE_LIMIT).expect("small") + 1];
    let mut messages = vec![metadata(&d.dispute_id, &rid(), "image/jpeg")];
    messages.extend(too_big.chunks(8192).map(chunk));
    let status = upload(&mut h, messages, &buyer()).await.expect_err("size");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("larger than"),
        "{}",
        status.message()
    );

    let status = upload(&mut h, vec![chunk(b"no metadata")], &buyer())
        .await
        .expect_err("metadata first");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = upload(
        &mut h,
        vec![metadata(&d.dispute_id, &rid(), "image/jpeg"), chunk(b"x")],
        &other_seller(),
    )
    .await
    .expect_err("not a party");
    assert_eq!(status.code(), Code::NotFound);
    let d = h.get(&d.dispute_id, &buyer()).await.expect("get");
    assert_eq!(d.evidence.len(), 1, "nothing was attached");
}

#[tokio::test]
async fn a_configured_object_store_receives_the_uploads() {
    let mut h = Harness::start().await;
    let d = dispute(&mut h).await;
    // Swap the harness's local folder for a store named by URL, as RETURNS_EVIDENCE_URL does.
    let store = returns_disputes::evidence::EvidenceStore::from_url("memory:///evidence/prod")
        .expect("a memory store");
    let spec = returns_disputes::spec_with_evidence(&h.ctx, h.db.clone(), store.clone());
    let server = returns_platform::testing::TestServer::start(spec, &h.ctx).await;
    let mut client = pb::dispute_service_client::DisputeServiceClient::new(server.channel().await);
    let file = b"\x89PNG photo of the dent".to_vec();
    let messages = vec![metadata(&d.dispute_id, &rid(), "image/png"), chunk(&file)];
    let stored = client
        .upload_evidence(authorized(tokio_stream::iter(messages), &seller()))
        .await
        .expect("upload")
        .into_inner()
        .evidence
        .expect("evidence");
    assert_eq!(store.get(&stored.uri).await.expect("in the store"), file);
    assert!(
        h.evidence.get(&stored.uri).await.is_err(),
        "not in the default folder"
    );
    server.stop().await;
}

#[test]
fn evidence_urls_are_checked_at_start() {
    use returns_disputes::evidence::EvidenceStore;
    assert!(EvidenceStore::from_url("s3://returns-evidence/disputes").is_ok());
    let dir = tempfile::tempdir().expect("dir");
    let file_url = format!("file://{}", dir.path().display());
    assert!(EvidenceStore::from_url(&file_url).is_ok());
    let refused = EvidenceStore::from_url("ftp://files.example/evidence").expect_err("refused");
    assert!(
        refused.to_string().contains("unsupported scheme"),
        "{refused}"
    );
    assert!(EvidenceStore::from_url("not a url").is_err());
}
