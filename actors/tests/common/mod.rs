//! What the actors' integration tests share: a fresh migrated database, a pool on it, and an MQTT
//! link whose broker acks the test can read.
#![allow(dead_code)]

pub mod alloc_count;
pub mod router_harness;

use std::path::Path;
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use fleetflow_actors::link::MqttLink;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Request};
use tokio_postgres::NoTls;

/// The server's admin database URL (`FLEETFLOW_TEST_PG_URL`, as `scripts/services env` sets it).
pub fn admin_url() -> String {
    std::env::var("FLEETFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://fleetflow:fleetflow@127.0.0.1:55432/fleetflow".into())
}

/// A connected client (its connection runs on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e} (start the services: scripts/services up)"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// A database of one test, dropped (with its connections) when the test ends, pass or fail.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // A runtime of its own: this may run inside the test's runtime, which cannot block.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (c, conn) = tokio_postgres::connect(&admin, NoTls).await?;
                tokio::spawn(conn);
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Creates a fresh database and applies the repository's migrations in order.
pub async fn migrated_database() -> TestDb {
    let admin = admin_url();
    let name = format!("ff_actors_{:016x}", rand::random::<u64>());
    connect(&admin)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!(
        "{}/{name}",
        &admin[..admin.rfind('/').expect("a database in the URL")]
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let v = name.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((v, p))
        })
        .collect();
    files.sort();
    let c = connect(&url).await;
    for (_, f) in files {
        let sql = std::fs::read_to_string(&f).unwrap();
        c.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    TestDb { url, name }
}

/// A small pool on `url`.
pub fn pool(url: &str) -> Pool {
    let pg = tokio_postgres::Config::from_str(url).unwrap();
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap()
}

/// A link whose client queues its requests on a channel the test reads.
pub fn recording_link() -> (MqttLink, flume::Receiver<Request>) {
    let (tx, rx) = flume::bounded(1024);
    let link = MqttLink::new(AsyncClient::from_senders(tx), QoS::AtLeastOnce);
    link.next_epoch();
    (link, rx)
}

/// The packet ids of the broker acks queued since the last call.
pub fn acked(rx: &flume::Receiver<Request>) -> Vec<u16> {
    rx.try_iter()
        .filter_map(|r| match r {
            Request::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .collect()
}

/// The topics of the publishes queued since the last call, with their payloads.
pub fn published(rx: &flume::Receiver<Request>) -> Vec<(String, bytes::Bytes)> {
    rx.try_iter()
        .filter_map(|r| match r {
            Request::Publish(p) => {
                Some((String::from_utf8_lossy(&p.topic).into_owned(), p.payload))
            }
            _ => None,
        })
        .collect()
}

/// One count.
pub async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}
