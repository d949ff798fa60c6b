//! Structure of `docker-compose.yml` (no Docker engine runs here): every service the issue names
//! is there, host ports are unique, every bind-mounted file exists in the repository, named
//! volumes are declared, and `depends_on` names real services.

use std::collections::HashSet;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_compose_file_has_every_service_with_consistent_ports_volumes_and_dependencies() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let services = doc["services"].as_hash().expect("services");
    let names: HashSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    for required in [
        "postgres",
        "mosquitto",
        "minio",
        "prometheus",
        "grafana",
        "fleetflow",
    ] {
        assert!(names.contains(required), "service {required} is missing");
    }
    let declared: HashSet<String> = doc["volumes"]
        .as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut host_ports = HashSet::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert!(
            svc["image"].as_str().is_some() || !svc["build"].is_badvalue(),
            "{name} has neither image nor build"
        );
        for p in strs(&svc["ports"]) {
            let host = p.split(':').next().unwrap().to_string();
            assert!(host.parse::<u16>().is_ok(), "{name}: bad port mapping {p}");
            assert!(
                host_ports.insert(host.clone()),
                "{name}: host port {host} is used twice"
            );
        }
        for v in strs(&svc["volumes"]) {
            let src = v.split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(
                    root().join(src).exists(),
                    "{name}: mounted {src} does not exist in the repository"
                );
            } else {
                assert!(
                    declared.contains(src),
                    "{name}: named volume {src} is not declared"
                );
            }
        }
        for d in strs(&svc["depends_on"]) {
            assert!(names.contains(&d), "{name} depends on unknown service {d}");
        }
    }
    assert!(
        root().join("Dockerfile").exists(),
        "fleetflow is built from the Dockerfile"
    );
    // The engine is scraped by Prometheus at the port it listens on.
    let prom = std::fs::read_to_string(root().join("dashboards/prometheus.yml")).unwrap();
    assert!(prom.contains("fleetflow:9464"));
    let env = &services[&Yaml::String("fleetflow".into())]["environment"];
    assert_eq!(env["FLEETFLOW_HTTP__BIND"].as_str(), Some("0.0.0.0:9464"));
}
