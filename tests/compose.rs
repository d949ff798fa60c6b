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
    // So is every engine of the cluster profile, each its own `instance` in the Grafana panels.
    let mut cluster_engines = 0;
    for (name, svc) in services {
        let cluster = &svc["environment"]["FLEETFLOW_CLUSTER__ENABLED"];
        if cluster.as_str() == Some("true") {
            cluster_engines += 1;
            let target = format!("{}:9464", name.as_str().unwrap());
            assert!(
                prom.contains(&target),
                "Prometheus does not scrape {target}"
            );
        }
    }
    assert_eq!(cluster_engines, 2, "the cluster profile runs two engines");
    let env = &services[&Yaml::String("fleetflow".into())]["environment"];
    assert_eq!(env["FLEETFLOW_HTTP__BIND"].as_str(), Some("0.0.0.0:9464"));
}

/// The provisioned datasources, by uid: (type, url, database).
fn provisioned_datasources() -> Vec<(String, String, String, String)> {
    let dir = root().join("dashboards/provisioning/datasources");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
        for ds in doc["datasources"].as_vec().expect("datasources") {
            let s = |y: &Yaml| y.as_str().unwrap_or_default().to_string();
            out.push((
                s(&ds["uid"]),
                s(&ds["type"]),
                s(&ds["url"]),
                s(&ds["jsonData"]["database"]),
            ));
        }
    }
    out
}

#[test]
fn the_trends_dashboard_uses_the_provisioned_postgres_datasource_of_the_compose_database() {
    let sources = provisioned_datasources();
    let uids: HashSet<&str> = sources.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(uids.len(), sources.len(), "datasource uids are unique");
    let (uid, _, url, database) = sources
        .iter()
        .find(|s| s.1 == "grafana-postgresql-datasource" || s.1 == "postgres")
        .expect("a PostgreSQL datasource is provisioned");
    // It points at the compose postgres service and its database, and Grafana waits for it.
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let doc = &YamlLoader::load_from_str(&compose).unwrap()[0];
    let services = &doc["services"];
    assert_eq!(url, "postgres:5432");
    assert_eq!(
        Some(database.as_str()),
        services["postgres"]["environment"]["POSTGRES_DB"].as_str()
    );
    assert!(strs(&services["grafana"]["depends_on"]).contains(&"postgres".to_string()));

    let text =
        std::fs::read_to_string(root().join("dashboards/grafana/fleet-trends.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7, "readings, status and captures panels");
    let mut refs = vec![&dash["templating"]["list"][0]["datasource"]];
    for p in panels {
        refs.push(&p["datasource"]);
        for t in p["targets"].as_array().expect("targets") {
            refs.push(&t["datasource"]);
            let sql = t["rawSql"].as_str().expect("rawSql");
            assert!(sql.contains("$__timeFilter("), "{sql}");
        }
    }
    for r in refs {
        assert_eq!(r["uid"].as_str(), Some(uid.as_str()), "{r}");
    }
    // Every other dashboard's datasource is provisioned too.
    for entry in std::fs::read_dir(root().join("dashboards/grafana")).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().into_iter().flatten() {
            if let Some(u) = p["datasource"]["uid"].as_str() {
                assert!(
                    uids.contains(u),
                    "{}: unknown datasource {u}",
                    path.display()
                );
            }
        }
    }
    // The device variable feeds the per-device panels.
    assert_eq!(dash["templating"]["list"][0]["name"], "device_id");
    assert!(text.contains("${device_id:sqlstring}"));
}
