//! The deployment files against what the suite reads, per service: compose (with the
//! image's `ENV`) and the Kubernetes manifests each give every service its listen address,
//! its database, the token secret and every peer's URL (without which its outbox would post
//! to its own loopback and nothing would be delivered); they name no variable that service
//! does not read (a typo would silently leave a default in place) and none that belongs to
//! another service (a container holding another service's database URL holds its
//! credentials); the two deployments set the same variables; peer URLs name the port the
//! peer listens on; and every secret a manifest references exists in the production overlay.
//! The files are parsed as YAML (compose's anchors and `<<` merge keys resolved), so a
//! variable mentioned in a comment does not count as set.

use std::collections::{BTreeMap, BTreeSet};

use returns_platform::config::ENVIRONMENT;

const SERVICES: [&str; 3] = ["disputes", "labels", "refunds"];

fn upper(service: &str) -> String {
    service.to_ascii_uppercase()
}

/// Each service's environment (variable -> value), by service.
type Environments = BTreeMap<String, BTreeMap<String, String>>;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn text(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(text) => text.clone(),
        serde_yaml::Value::Number(number) => number.to_string(),
        serde_yaml::Value::Bool(flag) => flag.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// What a service must be given in a deployment.
fn required(service: &str) -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = [
        "RETURNS_AUTH_SECRET".to_string(),
        format!("RETURNS_{}_ADDR", upper(service)),
        format!("RETURNS_{}_DATABASE_URL", upper(service)),
    ]
    .into();
    vars.extend(
        SERVICES
            .iter()
            .map(|peer| format!("RETURNS_{}_URL", upper(peer))),
    );
    vars
}

/// Another service's listener and database: never in this service's container.
fn foreign(service: &str) -> BTreeSet<String> {
    SERVICES
        .iter()
        .filter(|other| **other != service)
        .flat_map(|other| {
            [
                format!("RETURNS_{}_ADDR", upper(other)),
                format!("RETURNS_{}_DATABASE_URL", upper(other)),
            ]
        })
        .collect()
}

/// What `service` reads: the suite's configuration (`config::ENVIRONMENT`) and the
/// `"RETURNS_..."` names its own code reads (refunds' settlement and provider settings).
fn read_by(service: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ENVIRONMENT
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let mut folders = vec![std::path::PathBuf::from(format!(
        "{}/services/{service}/src",
        env!("CARGO_MANIFEST_DIR")
    ))];
    let mut files = Vec::new();
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{dir:?}: {error}")) {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let source = std::fs::read_to_string(&file).expect("source");
        for (at, _) in source.match_indices("\"RETURNS_") {
            let rest = &source[at + 1..];
            if let Some(end) = rest.find('"') {
                let name = &rest[..end];
                if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

/// Compose's environment of each service (merge keys resolved) on top of the image's `ENV`.
fn compose_environments() -> Environments {
    let image: BTreeMap<String, String> = read("deploy/Dockerfile")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/compose.yaml")).expect("compose.yaml parses");
    compose.apply_merge().expect("merge keys resolve");
    SERVICES
        .iter()
        .map(|service| {
            let mut environment = image.clone();
            let set = compose["services"][service]["environment"]
                .as_mapping()
                .unwrap_or_else(|| panic!("compose.yaml: {service} has an environment mapping"));
            for (key, value) in set {
                environment.insert(text(key), text(value));
            }
            (service.to_string(), environment)
        })
        .collect()
}

/// One Kubernetes container's settings: plain values, and secret references as
/// `secret:<name>/<key>`.
fn kubernetes_environments() -> Environments {
    SERVICES
        .iter()
        .map(|service| {
            let path = format!("deploy/k8s/base/{service}.yaml");
            let deployment = manifests(&path)
                .into_iter()
                .find(|doc| doc["kind"] == "Deployment")
                .unwrap_or_else(|| panic!("{path} has a Deployment"));
            let containers = deployment["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{path}: containers"));
            assert_eq!(containers.len(), 1, "{path}: one container");
            let mut environment = BTreeMap::new();
            for variable in containers[0]["env"].as_sequence().expect("env") {
                let value = match variable.get("value") {
                    Some(value) => text(value),
                    None => {
                        let secret = &variable["valueFrom"]["secretKeyRef"];
                        format!("secret:{}/{}", text(&secret["name"]), text(&secret["key"]))
                    }
                };
                environment.insert(text(&variable["name"]), value);
            }
            (service.to_string(), environment)
        })
        .collect()
}

fn manifests(path: &str) -> Vec<serde_yaml::Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("{path}: {error}"))
        })
        .collect()
}

fn deployments() -> [(&'static str, Environments); 2] {
    [
        (
            "compose.yaml (with the image's ENV)",
            compose_environments(),
        ),
        ("deploy/k8s/base", kubernetes_environments()),
    ]
}

#[test]
fn each_deployment_gives_each_service_what_it_reads() {
    for (deployment, environments) in deployments() {
        for service in SERVICES {
            let set: BTreeSet<&String> = environments[service].keys().collect();
            for variable in required(service) {
                assert!(
                    set.contains(&variable),
                    "{deployment}: {service} is not given {variable}"
                );
            }
        }
    }
}

#[test]
fn each_deployment_sets_only_what_its_service_reads_and_nothing_of_another_service() {
    for (deployment, environments) in deployments() {
        for service in SERVICES {
            let known = read_by(service);
            let foreign = foreign(service);
            for variable in environments[service].keys() {
                assert!(
                    known.contains(variable),
                    "{deployment}: {service} is given {variable}, which it does not read \
                     (config::ENVIRONMENT or services/{service}/src)"
                );
                assert!(
                    !foreign.contains(variable),
                    "{deployment}: {service} is given another service's {variable}"
                );
                assert_ne!(
                    variable, "RETURNS_TEST_CLOCK",
                    "{deployment}: a deployment never runs on the test clock"
                );
            }
        }
    }
}

#[test]
fn compose_and_kubernetes_set_the_same_variables_for_each_service() {
    let compose = compose_environments();
    let kubernetes = kubernetes_environments();
    for service in SERVICES {
        let compose: BTreeSet<&String> = compose[service].keys().collect();
        let kubernetes: BTreeSet<&String> = kubernetes[service].keys().collect();
        assert_eq!(
            compose, kubernetes,
            "{service}: compose.yaml (with the image's ENV) and deploy/k8s/base differ"
        );
    }
}

/// The port of `host:port` or `scheme://host:port/...`.
fn port_of(address: &str) -> u16 {
    let authority = address.split("://").last().unwrap_or(address);
    let authority = authority.split('/').next().unwrap_or(authority);
    authority
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} names no port"))
}

#[test]
fn peer_urls_name_the_host_and_port_each_peer_is_reached_at() {
    // Compose: the peer's service name and the port it listens on.
    let compose = compose_environments();
    for service in SERVICES {
        for peer in SERVICES {
            let url = &compose[service][&format!("RETURNS_{}_URL", upper(peer))];
            let listen = &compose[peer][&format!("RETURNS_{}_ADDR", upper(peer))];
            assert_eq!(
                url,
                &format!("http://{peer}:{}", port_of(listen)),
                "compose.yaml: {service} reaches {peer} where {peer} listens"
            );
        }
    }
    // Kubernetes: the peer's Service, on the port that Service exposes, which leads to the
    // container port the peer listens on.
    let kubernetes = kubernetes_environments();
    for peer in SERVICES {
        let path = format!("deploy/k8s/base/{peer}.yaml");
        let docs = manifests(&path);
        let service = docs
            .iter()
            .find(|doc| doc["kind"] == "Service")
            .unwrap_or_else(|| panic!("{path} has a Service"));
        let name = text(&service["metadata"]["name"]);
        let port = &service["spec"]["ports"][0];
        let listen = &kubernetes[peer][&format!("RETURNS_{}_ADDR", upper(peer))];
        let deployment = docs
            .iter()
            .find(|doc| doc["kind"] == "Deployment")
            .expect("a Deployment");
        let container_port = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0];
        assert_eq!(
            text(&container_port["containerPort"]),
            port_of(listen).to_string(),
            "{path}: the container port is the listen port"
        );
        assert_eq!(
            text(&port["targetPort"]),
            text(&container_port["name"]),
            "{path}: the Service leads to the container port"
        );
        for service in SERVICES {
            let url = &kubernetes[service][&format!("RETURNS_{}_URL", upper(peer))];
            assert_eq!(
                url,
                &format!("http://{name}:{}", text(&port["port"])),
                "deploy/k8s/base: {service} reaches {peer} through its Service"
            );
        }
    }
}

#[test]
fn every_secret_a_manifest_references_is_in_the_production_overlay() {
    let overlay = manifests("deploy/k8s/overlays/production/secret.yaml");
    let secret = overlay
        .iter()
        .find(|doc| doc["kind"] == "Secret")
        .expect("the overlay has a Secret");
    let secret_name = text(&secret["metadata"]["name"]);
    let keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .expect("stringData")
        .keys()
        .map(text)
        .collect();
    for (service, environment) in kubernetes_environments() {
        for (variable, value) in environment {
            if let Some(reference) = value.strip_prefix("secret:") {
                let (name, key) = reference.split_once('/').expect("name/key");
                assert_eq!(
                    name, secret_name,
                    "{service}: {variable} names secret {name}"
                );
                assert!(
                    keys.contains(key),
                    "{service}: {variable} needs key {key} in {secret_name}"
                );
            }
        }
    }
    // The overlay deploys the base, which deploys the three services.
    let base = manifests("deploy/k8s/base/kustomization.yaml");
    let resources: BTreeSet<String> = base[0]["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(text)
        .collect();
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| format!("{s}.yaml")).collect();
    assert_eq!(resources, expected);
    let production = manifests("deploy/k8s/overlays/production/kustomization.yaml");
    let resources: Vec<String> = production[0]["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(text)
        .collect();
    for resource in ["namespace.yaml", "secret.yaml", "../../base"] {
        assert!(resources.iter().any(|r| r == resource), "{resource}");
    }
}
