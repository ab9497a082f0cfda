//! Fuzzing every RPC of the three services on stable Rust: random and mutated protobuf
//! requests (valid field numbers with random values, boundary numbers, hostile strings,
//! random bytes) go through real gRPC servers with a platform token, and none may be
//! answered INTERNAL or UNKNOWN, drop the connection, or leave a service unhealthy.
//! `RETURNS_FUZZ_CASES` sets the cases per RPC (default 200); `RETURNS_FUZZ_SEED` the seed.
//! On SQLite, and on PostgreSQL when CI sets RETURNS_TEST_POSTGRES_URL.

mod support;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use returns_domain::dispute::Role;
use support::RunningSuite;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn cases_per_rpc() -> usize {
    std::env::var("RETURNS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

fn seed() -> u64 {
    std::env::var("RETURNS_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0xF022_2026)
}

/// Hostile and ordinary strings: empty, ids that may exist, control characters, very long,
/// non-ASCII, SQL and format metacharacters.
fn string(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => String::new(),
        1 => format!("o-{}", rng.random_range(0..5)),
        2 => format!("b-{}", rng.random_range(0..5)),
        3 => "nul\0inside".to_string(),
        4 => "x".repeat(rng.random_range(150..5_000)),
        5 => "Zürich ☃ 東京 \u{202e}".to_string(),
        6 => "'; DROP TABLE disputes; --".to_string(),
        7 => uuid::Uuid::now_v7().to_string(),
        8 => ["USD", "EUR", "JPY", "ZZZ", "usd", "US"][rng.random_range(0..6)].to_string(),
        9 => ["GB", "JP", "PL", "US", "XX", "gb"][rng.random_range(0..6)].to_string(),
        10 => "line\nbreak\ttab\r".to_string(),
        _ => (0..rng.random_range(1..20))
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect(),
    }
}

fn int(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => 1,
        2 => -1,
        3 => i64::MAX,
        4 => i64::MIN,
        5 => rng.random_range(-1_000_000..1_000_000),
        6 => rng.random_range(1_700_000_000..1_900_000_000),
        _ => rng.random(),
    }
}

fn value(rng: &mut StdRng, kind: &Kind, depth: u32) -> Option<Value> {
    Some(match kind {
        Kind::String => Value::String(string(rng)),
        Kind::Bytes => Value::Bytes((0..rng.random_range(0..64)).map(|_| rng.random()).collect()),
        Kind::Bool => Value::Bool(rng.random()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int(rng)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(int(rng) % i64::from(i32::MAX)).unwrap_or(0))
        }
        Kind::Uint64 | Kind::Fixed64 => Value::U64(int(rng).unsigned_abs()),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.random()),
        Kind::Double => Value::F64(rng.random()),
        Kind::Float => Value::F32(rng.random()),
        Kind::Enum(enumeration) => {
            let values: Vec<i32> = enumeration.values().map(|v| v.number()).collect();
            if rng.random_ratio(1, 8) || values.is_empty() {
                Value::EnumNumber(rng.random_range(-3..100))
            } else {
                Value::EnumNumber(values[rng.random_range(0..values.len())])
            }
        }
        Kind::Message(message) => {
            if depth > 3 {
                return None;
            }
            Value::Message(random_message(rng, message, depth + 1))
        }
    })
}

/// A message of type `descriptor` with each field set at random to a random value.
fn random_message(rng: &mut StdRng, descriptor: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        if !rng.random_ratio(2, 3) {
            continue;
        }
        let kind = field.kind();
        let value = if field.is_list() {
            let items: Vec<Value> = (0..rng.random_range(0..4))
                .filter_map(|_| value(rng, &kind, depth))
                .collect();
            Value::List(items)
        } else if field.is_map() {
            continue;
        } else {
            match value(rng, &kind, depth) {
                Some(value) => value,
                None => continue,
            }
        };
        message.set_field(&field, value);
    }
    message
}

/// A case: a random message, sometimes mutated (bytes flipped, cut short, or pure noise).
fn case(rng: &mut StdRng, input: &MessageDescriptor) -> Vec<u8> {
    let mut bytes = random_message(rng, input, 0).encode_to_vec();
    match rng.random_range(0..10) {
        0 if !bytes.is_empty() => {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= rng.random::<u8>() | 1;
        }
        1 if !bytes.is_empty() => bytes.truncate(rng.random_range(0..bytes.len())),
        2 => bytes = (0..rng.random_range(0..48)).map(|_| rng.random()).collect(),
        _ => {}
    }
    bytes
}

async fn fuzz_service(
    service_name: &str,
    pick: fn(&returns::SuiteAddresses) -> std::net::SocketAddr,
) {
    let suite = RunningSuite::start().await;
    let addr = pick(&suite.addresses);
    let pool = DescriptorPool::decode(returns_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let service = pool
        .get_service_by_name(service_name)
        .expect("the service is in the contracts");
    let token = suite
        .context
        .issuer
        .issue(
            "fuzzer",
            Role::Platform,
            None,
            std::time::Duration::from_secs(3600),
        )
        .expect("token");
    let channel = support::channel(addr).await;
    let mut rng = StdRng::seed_from_u64(seed());
    let mut findings = Vec::new();
    let mut calls = 0;
    for method in service.methods() {
        if method.is_client_streaming() || method.is_server_streaming() {
            continue;
        }
        let path = format!("/{service_name}/{}", method.name());
        for _ in 0..cases_per_rpc() {
            let bytes = case(&mut rng, &method.input());
            calls += 1;
            if let Err(status) = support::raw::unary(&channel, &path, &token, bytes.clone()).await
                && matches!(
                    status.code(),
                    Code::Internal | Code::Unknown | Code::Unavailable
                )
            {
                let shown = DynamicMessage::decode(method.input(), bytes.as_slice())
                    .map(|m| format!("{m:?}"))
                    .unwrap_or_else(|_| format!("{} undecodable bytes", bytes.len()));
                findings.push(format!(
                    "{}: {:?} {} <- {shown}",
                    method.name(),
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    let health = HealthClient::new(support::channel(addr).await)
        .check(HealthCheckRequest {
            service: service_name.to_string(),
        })
        .await
        .expect("health answers after the fuzzing")
        .into_inner()
        .status;
    assert_eq!(health, ServingStatus::Serving as i32);
    assert!(calls > 0);
    assert!(
        findings.is_empty(),
        "{} of {calls} calls answered INTERNAL/UNKNOWN:\n{}",
        findings.len(),
        findings
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn fuzzed_requests_to_every_disputes_rpc_never_get_internal_or_unknown() {
    fuzz_service(returns_proto::service_names::DISPUTES, |a| a.disputes).await;
}

#[tokio::test]
async fn fuzzed_requests_to_every_labels_rpc_never_get_internal_or_unknown() {
    fuzz_service(returns_proto::service_names::LABELS, |a| a.labels).await;
}

#[tokio::test]
async fn fuzzed_requests_to_every_refunds_rpc_never_get_internal_or_unknown() {
    fuzz_service(returns_proto::service_names::REFUNDS, |a| a.refunds).await;
}
