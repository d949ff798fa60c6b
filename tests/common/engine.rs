//! The engine under test: `TestEnv` writes a config for one test (its own database, topic
//! prefix and object directory), runs the real `fleetflow` binary, restarts or kills it, and
//! reads its metrics and log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;

use super::db::{connect, create_database, drop_database};
use super::device::TestDevice;
use super::services::{free_port, random_hex, Services};

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
    /// The topic prefix (default: a random one per engine).
    pub prefix: Option<String>,
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
            prefix: None,
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
    /// The database was created for this engine (not passed in), so it goes with it.
    owns_db: bool,
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
        let prefix = opts
            .prefix
            .clone()
            .unwrap_or_else(|| format!("t{}", random_hex(10)));

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
            owns_db: opts.pg_url.is_none(),
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

    /// Sends `sig` (`-STOP`, `-CONT`, ...) to the running engine.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        assert_ne!(pid, 0, "no engine is running to send {sig} to");
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid}: {st}");
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

    /// A series' value, `None` when it is not exported.
    pub async fn exported(&self, series: &str) -> Option<f64> {
        exported_value(&self.metrics().await, series)
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

    /// Runs a `fleetflow` subcommand on this engine's config file (with `env` set) and answers
    /// its standard output; panics with its standard error when it fails.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetflow"))
            .args(["--config", self.config_path.to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("FLEETFLOW_POSTGRES__URL")
            .env_remove("FLEETFLOW_MQTT__URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fleetflow {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        if self.owns_db {
            drop_database(&self.services.pg_url, &self.db_url);
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    exported_value(text, series).unwrap_or(0.0)
}

/// The default source's unacknowledged QoS 1 messages.
pub const UNACKED: &str = "fleetflow_mqtt_unacked{source=\"default\"}";

/// A series' value, `None` when it is not exported at all (so that a check for 0 cannot pass on
/// a series that was renamed or relabelled).
pub fn exported_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
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
