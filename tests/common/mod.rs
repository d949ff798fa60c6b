//! Test harness: starts the real `fleetflow` binary on an ephemeral HTTP port against the local
//! PostgreSQL, Mosquitto and S3 server (see `scripts/services`), each test in its own database
//! and topic prefix, plus `TestDevice`, a raw MQTT client that speaks the wire protocol.
#![allow(dead_code)]

pub mod broker;
pub mod gxp;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

/// Where the services are; defaults match `scripts/services`.
#[derive(Clone, Debug)]
pub struct Services {
    pub pg_url: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub s3_region: String,
    /// The hosted broker (dynamic security), its admin user and the file with its password.
    pub hosted_url: String,
    pub hosted_admin_user: String,
    pub hosted_admin_password_file: String,
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

impl Services {
    pub fn from_env() -> Self {
        let mqtt = env_or("FLEETFLOW_TEST_MQTT_URL", "mqtt://127.0.0.1:11883");
        let (mqtt_host, mqtt_port) =
            fleetflow_actors::source::parse_url(&mqtt).expect("FLEETFLOW_TEST_MQTT_URL");
        Self {
            pg_url: env_or(
                "FLEETFLOW_TEST_PG_URL",
                "postgres://fleetflow:fleetflow@127.0.0.1:55432/fleetflow",
            ),
            mqtt_host,
            mqtt_port,
            s3_endpoint: env_or("FLEETFLOW_TEST_S3_ENDPOINT", "http://127.0.0.1:19000"),
            s3_bucket: env_or("FLEETFLOW_TEST_S3_BUCKET", "fleetflow"),
            s3_access_key: env_or("FLEETFLOW_TEST_S3_ACCESS_KEY", "test"),
            s3_secret_key: env_or("FLEETFLOW_TEST_S3_SECRET_KEY", "test"),
            s3_region: env_or("FLEETFLOW_TEST_S3_REGION", "us-east-1"),
            hosted_url: env_or("FLEETFLOW_TEST_HOSTED_URL", "mqtt://127.0.0.1:11884"),
            hosted_admin_user: env_or("FLEETFLOW_TEST_HOSTED_ADMIN_USER", "admin"),
            hosted_admin_password_file: env_or(
                "FLEETFLOW_TEST_HOSTED_ADMIN_PASSWORD_FILE",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/.services/hosted/admin.password"
                ),
            ),
        }
    }

    /// Fails the test with a clear message when a service is not reachable.
    pub async fn require(&self) {
        let hint = "start the services with `scripts/services up` (the test command does this)";
        if let Err(e) = tokio_postgres::connect(&self.pg_url, NoTls).await {
            panic!(
                "PostgreSQL is not reachable at {}: {e}; {hint}",
                self.pg_url
            );
        }
        if std::net::TcpStream::connect((self.mqtt_host.as_str(), self.mqtt_port)).is_err() {
            panic!(
                "Mosquitto is not reachable at {}:{}; {hint}",
                self.mqtt_host, self.mqtt_port
            );
        }
    }

    pub fn s3_reachable(&self) -> bool {
        let hostport = self
            .s3_endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        std::net::TcpStream::connect(hostport).is_ok()
    }

    /// An S3 client on the test bucket.
    pub fn s3_store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.s3_endpoint)
            .with_bucket_name(&self.s3_bucket)
            .with_access_key_id(&self.s3_access_key)
            .with_secret_access_key(&self.s3_secret_key)
            .with_region(&self.s3_region)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("S3 client")
    }
}

pub fn random_hex(n: usize) -> String {
    let mut r = rand::rng();
    (0..n)
        .map(|_| format!("{:x}", r.random_range(0..16u8)))
        .collect()
}

/// A random device id (12 uppercase hex digits).
pub fn random_device() -> String {
    random_hex(12).to_uppercase()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which object store the engine writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Local,
    S3,
}

/// Engine options for one test.
#[derive(Clone, Debug)]
pub struct Options {
    pub store: Store,
    pub assembly_timeout_ms: u64,
    pub max_nack_rounds: u32,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// Override the Postgres URL (tests with their own server).
    pub pg_url: Option<String>,
    /// Override the S3 endpoint (tests with their own server).
    pub s3_endpoint: Option<String>,
    /// Extra lines for the `[objects]` section.
    pub objects_extra: String,
    /// Environment variables for the engine process (e.g. `FLEETFLOW_SECRET_KEY`).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: Store::Local,
            assembly_timeout_ms: 30_000,
            max_nack_rounds: 3,
            extra: String::new(),
            pg_url: None,
            s3_endpoint: None,
            objects_extra: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running engine with its own database, prefix and object directory.
pub struct TestEnv {
    pub services: Services,
    pub db_url: String,
    pub prefix: String,
    pub http: String,
    pub objects_dir: PathBuf,
    pub s3_prefix_device_ids: Vec<String>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl TestEnv {
    pub async fn start(opts: Options) -> Self {
        let services = Services::from_env();
        services.require().await;
        let db_url = match &opts.pg_url {
            Some(u) => u.clone(),
            None => create_database(&services.pg_url).await,
        };
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("t{}", random_hex(10));

        let port = free_port();
        let objects_dir = dir.path().join("objects");
        let objects = match opts.store {
            Store::Local => format!("url = \"file://{}\"", objects_dir.display()),
            Store::S3 => {
                let endpoint = opts
                    .s3_endpoint
                    .clone()
                    .unwrap_or_else(|| services.s3_endpoint.clone());
                assert!(
                    opts.s3_endpoint.is_some() || services.s3_reachable(),
                    "the S3 server is not reachable at {}; start it with `scripts/services up`",
                    services.s3_endpoint
                );
                format!(
                    "url = \"s3://{}\"\nendpoint = \"{}\"\nallow_http = true\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nupload_attempts = 3\nupload_backoff_ms = 100",
                    services.s3_bucket, endpoint, services.s3_region, services.s3_access_key, services.s3_secret_key
                )
            }
        };
        let objects = format!(
            "{objects}\ndead_letter_dir = \"{}\"\n{}",
            dir.path().join("dead-letter").display(),
            opts.objects_extra
        );
        let config = format!(
            r#"[mqtt]
url = "mqtt://{}:{}"
client_id = "ff-test-{}"
topic_prefix = "{prefix}"
session_expiry_secs = 300
[postgres]
url = "{db_url}"
pool_size = 4
[objects]
{objects}
[assembly]
assembly_timeout_ms = {}
max_nack_rounds = {}
[http]
bind = "127.0.0.1:{port}"
[log]
level = "info,fleetflow_actors=debug"
{}
"#,
            services.mqtt_host,
            services.mqtt_port,
            random_hex(8),
            opts.assembly_timeout_ms,
            opts.max_nack_rounds,
            opts.extra
        );
        let config_path = dir.path().join("fleetflow.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("engine.log");
        let mut env = Self {
            services,
            db_url,
            prefix,
            http: format!("http://127.0.0.1:{port}"),
            objects_dir,
            s3_prefix_device_ids: vec![],
            config_path,
            log_path,
            dir,
            child: None,
            env: opts.env.clone(),
        };
        env.spawn_engine();
        env.wait_ready(Duration::from_secs(30)).await;
        env
    }

    /// Starts (or restarts) the engine process.
    pub fn spawn_engine(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetflow"));
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEETFLOW_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn fleetflow"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the exit took.
    pub fn terminate(&mut self, wait: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = std::time::Instant::now();
        let Some(mut c) = self.child.take() else {
            return (None, Duration::ZERO);
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        while started.elapsed() < wait {
            if let Ok(Some(st)) = c.try_wait() {
                return (Some(st), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        (None, started.elapsed())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(format!("{}/ready", self.http)).await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "engine exited with {st} before it was ready:\n{}",
                        self.log()
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("engine not ready after {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.db_url).await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line, e.g. `fleetflow_nacks_total{reason="missing_chunks"}`;
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Simulator settings aimed at this engine (broker, prefix, fresh device ids); override the
    /// workload with struct update syntax.
    pub fn sim_config(&self) -> fleetflow_sim::SimConfig {
        fleetflow_sim::SimConfig {
            host: self.services.mqtt_host.clone(),
            port: self.services.mqtt_port,
            prefix: self.prefix.clone(),
            id_base: 0xB0_0000_0000 + rand::rng().random_range(0..1_000_000u64) * 1000,
            ..fleetflow_sim::SimConfig::default()
        }
    }

    pub async fn device(&self, id: &str) -> TestDevice {
        TestDevice::connect(&self.services, &self.prefix, id).await
    }

    /// Runs `q` until it returns true or the timeout passes.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let c = self.db().await;
        c.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- engine log ----\n{}", self.log());
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// Creates a fresh database and returns its URL.
pub async fn create_database(admin_url: &str) -> String {
    let name = format!("ff_test_{}", random_hex(12));
    let c = connect(admin_url).await;
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    match admin_url.rfind('/') {
        Some(i) => format!("{}/{name}", &admin_url[..i]),
        None => panic!("bad admin url {admin_url}"),
    }
}

/// Waits until `f` returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A raw protocol client for one device: publishes what the test says and collects ACK/NACKs.
pub struct TestDevice {
    pub id: String,
    pub prefix: String,
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDevice {
    pub async fn connect(s: &Services, prefix: &str, id: &str) -> Self {
        Self::connect_as(&s.mqtt_host, s.mqtt_port, prefix, id, None).await
    }

    /// Connects to any broker, optionally with a username and password.
    pub async fn connect_as(
        host: &str,
        port: u16,
        prefix: &str,
        id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Self {
        let mut o = MqttOptions::new(format!("dev-{}", random_hex(10)), host, port);
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (tx, acks) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        // ACK/NACKs and commands (§5, §6) arrive on one channel, in order.
        client
            .subscribe_many([
                rumqttc::v5::mqttbytes::v5::Filter::new(
                    format!("{prefix}/{id}/ack"),
                    QoS::AtLeastOnce,
                ),
                rumqttc::v5::mqttbytes::v5::Filter::new(
                    format!("{prefix}/{id}/cmd"),
                    QoS::AtLeastOnce,
                ),
            ])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("SUBACK within 10 s");
        Self {
            id: id.to_string(),
            prefix: prefix.to_string(),
            client,
            acks,
            task,
        }
    }

    pub async fn publish(&self, suffix: &str, payload: impl Into<Bytes>) {
        self.publish_raw(&format!("{}/{}/{suffix}", self.prefix, self.id), payload)
            .await;
    }

    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Bytes>) {
        self.client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    pub async fn meta(&self, capture_id: &str, image: &[u8], chunk_size: usize, sha: bool) {
        let total = image.len().div_ceil(chunk_size);
        let sha = if sha {
            use sha2::Digest;
            format!(
                r#","sha256":"{}""#,
                hex::encode(sha2::Sha256::digest(image))
            )
        } else {
            String::new()
        };
        let m = format!(
            r#"{{"type":"capture_meta","capture_id":"{capture_id}","captured_at":"2026-10-04T12:00:00Z","image_bytes":{},"total_chunks":{total},"chunk_size":{chunk_size}{sha}}}"#,
            image.len()
        );
        self.publish("data", m).await;
    }

    pub async fn chunk_bin(&self, capture_id: &str, image: &[u8], chunk_size: usize, i: usize) {
        let s = i * chunk_size;
        let data = Bytes::copy_from_slice(&image[s..(s + chunk_size).min(image.len())]);
        self.publish(&format!("chunk/{capture_id}/{i}"), data).await;
    }

    pub async fn chunk_json(&self, capture_id: &str, image: &[u8], chunk_size: usize, i: usize) {
        use base64::Engine as _;
        let s = i * chunk_size;
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(&image[s..(s + chunk_size).min(image.len())]);
        self.publish(
            "data",
            format!(r#"{{"type":"chunk","capture_id":"{capture_id}","index":{i},"data":"{b64}"}}"#),
        )
        .await;
    }

    /// The next ACK/NACK, or panics after `timeout`.
    pub async fn next_ack(&mut self, timeout: Duration) -> Value {
        tokio::time::timeout(timeout, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no ACK/NACK for {} within {timeout:?}", self.id))
            .expect("ack channel open")
    }

    /// ACK/NACKs that arrive within `window`.
    pub async fn acks_within(&mut self, window: Duration) -> Vec<Value> {
        let mut out = vec![];
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(v)) = tokio::time::timeout_at(deadline, self.acks.recv()).await {
            out.push(v);
        }
        out
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private PostgreSQL cluster for tests that stop the database (so other tests are not hit).
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePg {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL binaries under /usr/lib/postgresql (scripts/services up installs them)",
            )
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = PathBuf::from(format!("/tmp/ff-pg-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let st = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "{args:?} failed");
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        run(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let pg = Self {
            dir,
            port: free_port(),
            bin,
        };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.dir.join("data");
        Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-w",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        assert!(
            self.pg_ctl(&["-l", log.to_str().unwrap(), "-o", &opts, "start"]),
            "private postgres start"
        );
    }

    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "stop"]),
            "private postgres stop"
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private moto S3 server (for tests that stop the object store).
pub struct PrivateS3 {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateS3 {
    pub fn moto_bin() -> PathBuf {
        let tools = std::env::var("FLEETFLOW_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/fleetflow-tools")
            });
        let bin = tools.join("moto-venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing; `scripts/services up` installs it",
            bin.display()
        );
        bin
    }

    pub async fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
        };
        s.start_again().await;
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts moto (empty: it keeps data in memory) and creates the bucket.
    pub async fn start_again(&mut self) {
        let child = Command::new(Self::moto_bin())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let url = format!("{}/fleetflow", self.endpoint());
        eventually(
            Duration::from_secs(30),
            "moto to create the bucket",
            || async {
                reqwest::Client::new()
                    .put(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
