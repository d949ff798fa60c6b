//! Where the test services are (`scripts/services`: PostgreSQL, Mosquitto, S3, the hosted
//! broker), a check that they are up, and random names and free ports.

use std::net::TcpListener;

use rand::Rng;
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

/// A port that was free a moment ago, for a server a test starts. Picked below the kernel's
/// ephemeral range (32768–60999 by default), not by binding port 0: a port from that range can
/// be taken by any outgoing connection of the tests running beside this one before the server
/// binds it (Mosquitto then fails to open its listener).
///
/// Under nextest each running test has a global slot (`NEXTEST_TEST_GLOBAL_SLOT`) that no test
/// running at the same time shares, and each slot picks from its own 300 ports: a port a test
/// keeps free on purpose (a server it stopped, a "closed" port) is not handed to a neighbour.
/// The same port is never handed out twice in one process. Outside nextest (plain `cargo
/// test`) every test draws from the whole of 20000..32000.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range = match std::env::var("NEXTEST_TEST_GLOBAL_SLOT")
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(slot) => {
            // 40 slots of 300 ports fill 20000..32000, below the ephemeral range.
            assert!(
                slot < 40,
                "free_port has ranges for 40 test threads, not slot {slot}"
            );
            let lo = 20_000 + slot * 300;
            lo..lo + 300
        }
        None => 20_000..32_000,
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(range.clone());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {range:?} after 1000 tries")
}
