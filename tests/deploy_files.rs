//! The deployment files give each service what it reads: its listen address, its database,
//! the token secret and every peer's URL (without which its outbox would post to its own
//! loopback and nothing would be delivered), and they name no variable the suite does not
//! know (a typo would silently leave a default in place).

use std::collections::BTreeSet;

use returns_platform::config::ENVIRONMENT;

const SERVICES: [&str; 3] = ["DISPUTES", "LABELS", "REFUNDS"];

/// Every `RETURNS_*` name in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = text[at..].find("RETURNS_") {
        let start = at + offset;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_uppercase() || bytes[end] == b'_') {
            end += 1;
        }
        found.insert(text[start..end].trim_end_matches('_').to_string());
        at = end;
    }
    found
}

/// What one service needs set in a deployment.
fn required(service: &str) -> Vec<String> {
    let mut vars = vec![
        "RETURNS_AUTH_SECRET".to_string(),
        format!("RETURNS_{service}_ADDR"),
        format!("RETURNS_{service}_DATABASE_URL"),
    ];
    vars.extend(SERVICES.iter().map(|peer| format!("RETURNS_{peer}_URL")));
    vars
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[test]
fn each_kubernetes_manifest_sets_what_its_service_reads() {
    for service in SERVICES {
        let path = format!("deploy/k8s/base/{}.yaml", service.to_lowercase());
        let set = variables(&read(&path));
        for variable in required(service) {
            assert!(set.contains(&variable), "{path} does not set {variable}");
        }
    }
}

#[test]
fn the_compose_file_sets_what_each_service_reads() {
    let compose = read("deploy/compose.yaml");
    let set = variables(&compose);
    for service in SERVICES {
        for variable in required(service) {
            assert!(
                set.contains(&variable),
                "compose.yaml does not set {variable}"
            );
        }
    }
}

#[test]
fn deployment_files_name_only_variables_the_suite_reads() {
    let known: BTreeSet<&str> = ENVIRONMENT.iter().map(|(name, _)| *name).collect();
    for path in [
        "deploy/compose.yaml",
        "deploy/k8s/base/disputes.yaml",
        "deploy/k8s/base/labels.yaml",
        "deploy/k8s/base/refunds.yaml",
    ] {
        for variable in variables(&read(path)) {
            assert!(
                known.contains(variable.as_str()),
                "{path} sets {variable}, which the suite does not read (config::ENVIRONMENT)"
            );
        }
    }
}
