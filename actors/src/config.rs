//! Typed configuration for each component, with documented defaults. The binary's config file
//! embeds these sections; see `fleetflow.example.toml`.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::batcher::BatchLimits;

/// `[mqtt]`: the broker connection of the MQTT source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL: `mqtt://host:port` (TCP), `mqtts://host:port` (TLS),
    /// `ws://host:port/path` or `wss://host:port/path` (websockets; path default `/mqtt`).
    /// Default `mqtt://127.0.0.1:1883`.
    #[serde(default = "default_mqtt_url")]
    pub url: String,
    /// PEM file with the CA certificate(s) that sign the broker's certificate (`mqtts`, `wss`).
    /// Default: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// CA certificate(s) as PEM text (set by the database config; `ca_file` is the file form).
    #[serde(default, skip_serializing)]
    pub ca_pem: Option<String>,
    /// Verify the broker's TLS certificate and host name. Default true. Turning it off accepts
    /// any certificate (anyone on the path can read and change the traffic) and is logged as a
    /// warning at every connection start.
    #[serde(default = "default_true")]
    pub verify_cert: bool,
    /// Client id; must be unique per engine process. Default `fleetflow`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Topic prefix (§1). Default `ESP32CAM`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// QoS of the subscriptions and of ACK/NACK publishes (0 or 1). Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Keep-alive interval in seconds. Default 30.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// MQTT protocol version spoken to the broker: `"5"` (the default) or `"3.1.1"`, for
    /// brokers that speak only 3.1.1. Manual acks and persistent sessions work on both; with
    /// 3.1.1 the v5-only settings (`session_expiry_secs`, `receive_maximum`) are not sent (the
    /// broker's own session and in-flight limits apply) and `broker_info` holds only
    /// `session_present`.
    #[serde(default)]
    pub protocol_version: MqttVersion,
    /// Start a new session on connect (3.1.1: clean session). Default false: the broker keeps
    /// the session and queues QoS 1 messages while the engine is away.
    #[serde(default)]
    pub clean_start: bool,
    /// How long the broker keeps the session after a disconnect, in seconds. Default 86400.
    /// MQTT 5 only.
    #[serde(default = "default_session_expiry_secs")]
    pub session_expiry_secs: u32,
    /// MQTT v5 receive maximum: QoS 1 messages the broker may have unacknowledged with us.
    /// Acks are held until data is durable, so on a broker that respects it this bounds the
    /// pipeline (Mosquitto 2.0 stops respecting it once acks flow: `max_in_flight` is the
    /// engine's own bound). Default 8192. MQTT 5 only (3.1.1 has no flow control: the broker's
    /// own in-flight limit applies).
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// Send PUBACKs in the order the messages arrived on the connection, as MQTT 5 §4.6
    /// (MQTT-4.6.0-2) asks: a durable message's ack waits for the messages received before it.
    /// Default true. `docs/performance.md` has its cost.
    #[serde(default = "default_true")]
    pub ordered_acks: bool,
    /// Bytes this source may have queued towards the router (payloads plus 256 bytes per
    /// message, so it bounds the count too). Past it, the source waits up to half the
    /// keep-alive for room, then leaves the message to the broker. Default 64 MiB.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// Leaked acks (QoS 1 messages dropped unacknowledged: a device refused for being full, a
    /// closed mailbox) that make the source reconnect, so that the broker redelivers them.
    /// Each holds a slot of the broker's in-flight window until then. Default 256.
    #[serde(default = "default_leak_max_count")]
    pub leak_max_count: u64,
    /// How long the oldest leaked ack may wait before the source reconnects, in milliseconds.
    /// Default 10000.
    #[serde(default = "default_leak_max_age_ms")]
    pub leak_max_age_ms: u64,
    /// QoS 1 messages received and not yet durable (nor given up on) that this source lets
    /// into the pipeline, across reconnects. At the bound it stops reading until some are
    /// durable: at most half the keep-alive per pause, and a pause that runs out is followed by
    /// as long without one, so that the connection still pings. So that a broker sending past the receive maximum (Mosquitto 2.0 does once acks
    /// flow) cannot fill the devices' mailboxes with a backlog and push healthy devices'
    /// messages into `dead_letters`. 0 turns the bound off. Default 65535 (the packet ids one
    /// connection can have in flight).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Largest packet accepted, in bytes. Default 1 MiB.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: u32,
    /// Username, if the broker needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file` or the `FLEETFLOW_MQTT__PASSWORD` variable). Never logged.
    #[serde(default, skip_serializing)]
    pub password: Option<SecretString>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// First reconnect delay, in milliseconds. Default 100.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, in milliseconds. Default 10000.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The company (tenant) whose devices this source carries: written as `company_id` on their
    /// rows, for row-level security on `app.company_id`. A product's `mqtt_configs.company_id`
    /// sets it for that product's source. Default none.
    #[serde(default)]
    pub company_id: Option<i64>,
    /// `[mqtt.gxp]`: the GXP firmware profile's settings for devices on this source (which
    /// firmware generation's answer shapes to use). A product's `mqtt_configs.gxp` overrides it.
    #[serde(default)]
    pub gxp: fleetflow_protocol::gxp::GxpSettings,
}

/// The MQTT protocol version of a connection (`mqtt.protocol_version`, and a product's
/// `mqtt_configs.protocol_version`): written `"5"` or `"3.1.1"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MqttVersion {
    /// MQTT 5 (the default).
    #[default]
    V5,
    /// MQTT 3.1.1, for brokers that speak nothing newer.
    V311,
}

impl MqttVersion {
    /// How the setting is written: `"5"` or `"3.1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MqttVersion::V5 => "5",
            MqttVersion::V311 => "3.1.1",
        }
    }

    /// Reads `"5"` or `"3.1.1"`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "5" => Some(MqttVersion::V5),
            "3.1.1" => Some(MqttVersion::V311),
            _ => None,
        }
    }
}

impl Serialize for MqttVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MqttVersion {
    /// A string, or the number 5 (an environment variable `FLEETFLOW_MQTT__PROTOCOL_VERSION=5`
    /// arrives as a number).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MqttVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""5" or "3.1.1""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttVersion, E> {
                MqttVersion::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

fn default_true() -> bool {
    true
}
fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_client_id() -> String {
    "fleetflow".into()
}
fn default_prefix() -> String {
    "ESP32CAM".into()
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_session_expiry_secs() -> u32 {
    86_400
}
fn default_receive_maximum() -> u16 {
    8192
}
fn default_max_queued_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_leak_max_count() -> u64 {
    256
}
fn default_leak_max_age_ms() -> u64 {
    10_000
}
fn default_max_in_flight() -> u32 {
    65_535
}
fn default_max_packet_bytes() -> u32 {
    1024 * 1024
}
fn default_reconnect_min_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: default_mqtt_url(),
            ca_file: None,
            ca_pem: None,
            verify_cert: true,
            client_id: default_client_id(),
            topic_prefix: default_prefix(),
            qos: default_qos(),
            keep_alive_secs: default_keep_alive_secs(),
            protocol_version: MqttVersion::V5,
            clean_start: false,
            session_expiry_secs: default_session_expiry_secs(),
            receive_maximum: default_receive_maximum(),
            ordered_acks: true,
            max_queued_bytes: default_max_queued_bytes(),
            leak_max_count: default_leak_max_count(),
            leak_max_age_ms: default_leak_max_age_ms(),
            max_in_flight: default_max_in_flight(),
            max_packet_bytes: default_max_packet_bytes(),
            username: None,
            password: None,
            password_file: None,
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            company_id: None,
            gxp: fleetflow_protocol::gxp::GxpSettings::default(),
        }
    }
}

pub use fleetflow_protocol::config::AssemblyConfig;

/// `[devices]`: the router and its device actors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Messages a device actor's mailbox holds. Past it, the router parks the device's messages
    /// (see `park_capacity`) and goes on with other devices. Default 256.
    #[serde(default = "default_mailbox_capacity")]
    pub mailbox_capacity: usize,
    /// Messages the router keeps for a device whose mailbox is full (a slow or restarting
    /// device), in arrival order, while the rest of the fleet flows. Past it, or past
    /// `park_bytes`, the device's messages go to `dead_letters` (acknowledged once durable
    /// there; `fleetflow replay-dead-letters` sends them again). Default 256.
    #[serde(default = "default_park_capacity")]
    pub park_capacity: usize,
    /// Payload bytes the router keeps parked for one device. Default 4 MiB.
    #[serde(default = "default_park_bytes")]
    pub park_bytes: usize,
    /// Live device actors at most. A message for a device with no actor while this many live
    /// goes to `dead_letters` (counted in
    /// `fleetflow_dead_lettered_messages_total{reason="max_device_actors"}`, replayable); idle
    /// actors passivate after `idle_passivate_ms` and make room. Default 100000.
    #[serde(default = "default_max_actors")]
    pub max_actors: usize,
    /// Idle time after which a device actor with nothing in flight is stopped, in ms.
    /// Default 600000 (10 min).
    #[serde(default = "default_idle_passivate_ms")]
    pub idle_passivate_ms: u64,
    /// Arbiters (threads) for device actors; 0 means one per core. Default 0.
    #[serde(default)]
    pub arbiters: usize,
    /// Restarts allowed within `restart_window_ms` before the device is quarantined. Default 5.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Window for counting restarts, in ms. Default 60000.
    #[serde(default = "default_restart_window_ms")]
    pub restart_window_ms: u64,
    /// First restart delay, in ms; doubles per restart in the window. Default 100.
    #[serde(default = "default_restart_backoff_min_ms")]
    pub restart_backoff_min_ms: u64,
    /// Longest restart delay, in ms. Default 30000.
    #[serde(default = "default_restart_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// How long a quarantine lasts, in ms. Default 600000 (10 min).
    #[serde(default = "default_quarantine_ms")]
    pub quarantine_ms: u64,
}

fn default_mailbox_capacity() -> usize {
    256
}
fn default_park_capacity() -> usize {
    256
}
fn default_park_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_actors() -> usize {
    100_000
}
fn default_idle_passivate_ms() -> u64 {
    600_000
}
fn default_max_restarts() -> u32 {
    5
}
fn default_restart_window_ms() -> u64 {
    60_000
}
fn default_restart_backoff_min_ms() -> u64 {
    100
}
fn default_restart_backoff_max_ms() -> u64 {
    30_000
}
fn default_quarantine_ms() -> u64 {
    600_000
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: default_mailbox_capacity(),
            park_capacity: default_park_capacity(),
            park_bytes: default_park_bytes(),
            max_actors: default_max_actors(),
            idle_passivate_ms: default_idle_passivate_ms(),
            arbiters: 0,
            max_restarts: default_max_restarts(),
            restart_window_ms: default_restart_window_ms(),
            restart_backoff_min_ms: default_restart_backoff_min_ms(),
            restart_backoff_max_ms: default_restart_backoff_max_ms(),
            quarantine_ms: default_quarantine_ms(),
        }
    }
}

/// `[publish_log]`: the message log, `device_publish_log` (what devices published and what the
/// engine answered), written through the Postgres sink in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishLogConfig {
    /// Write the log at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Log 1 in N image chunks (by chunk index, so chunk 0 of every image is logged), each
    /// without its data: `payload_length` instead. Default 50.
    #[serde(default = "default_chunk_sample_every")]
    pub chunk_sample_every: u32,
    /// Log 1 in N readings (by `seq`; readings without one are always logged). Status,
    /// metadata, command results and everything the engine sends are always logged. Default 100:
    /// logging every reading doubles the rows written and the engine's CPU per reading (measured
    /// in docs/performance.md); set 1 to log them all.
    #[serde(default = "default_readings_sample_every")]
    pub readings_sample_every: u32,
    /// Payloads larger than this, in bytes, are logged as a summary (`payload_length` and their
    /// identifying fields). Default 8192.
    #[serde(default = "default_log_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

fn default_readings_sample_every() -> u32 {
    100
}
fn default_chunk_sample_every() -> u32 {
    50
}
fn default_log_max_payload_bytes() -> usize {
    8192
}

impl Default for PublishLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            chunk_sample_every: default_chunk_sample_every(),
            readings_sample_every: default_readings_sample_every(),
            max_payload_bytes: default_log_max_payload_bytes(),
        }
    }
}

/// `[sinks]`: batching and retries of the Postgres sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// Rows per batch. Default 10000 (measured in `docs/performance.md`: fewer, larger commits
    /// beat more concurrent small ones on a small machine).
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// Estimated bytes per batch. Default 4 MiB.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Longest a row waits for its batch, in ms. Default 20.
    #[serde(default = "default_max_batch_age_ms")]
    pub max_batch_age_ms: u64,
    /// Longest a `captures` row waits for its batch, in ms. It is on the path to the device's
    /// ACK_OK, so it is kept short. Default 2.
    #[serde(default = "default_captures_max_age_ms")]
    pub captures_max_age_ms: u64,
    /// Batches written at once. Default 2.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Rows the sink's mailbox holds before senders wait. Default 8192.
    #[serde(default = "default_sink_mailbox_capacity")]
    pub mailbox_capacity: usize,
    /// First retry delay, in ms. Default 100.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Longest retry delay, in ms. Default 5000.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_max_batch_rows() -> usize {
    10_000
}
fn default_max_batch_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch_age_ms() -> u64 {
    20
}
fn default_captures_max_age_ms() -> u64 {
    2
}
fn default_concurrency() -> usize {
    2
}
fn default_sink_mailbox_capacity() -> usize {
    8192
}
fn default_retry_min_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    5000
}

impl Default for SinksConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: default_max_batch_rows(),
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_age_ms: default_max_batch_age_ms(),
            captures_max_age_ms: default_captures_max_age_ms(),
            concurrency: default_concurrency(),
            mailbox_capacity: default_sink_mailbox_capacity(),
            retry_min_ms: default_retry_min_ms(),
            retry_max_ms: default_retry_max_ms(),
        }
    }
}

impl SinksConfig {
    /// The batcher limits.
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_rows: self.max_batch_rows,
            max_bytes: self.max_batch_bytes,
            max_age: Duration::from_millis(self.max_batch_age_ms),
        }
    }
}

/// `[objects]`: where images go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// `file:///abs/path`, `file://relative/path`, or `s3://bucket`. Default `file://./data/objects`.
    #[serde(default = "default_objects_url")]
    pub url: String,
    /// S3 endpoint, for S3-compatible servers (MinIO, moto). Default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// S3 access key id (or `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret (or `AWS_SECRET_ACCESS_KEY`). Never logged.
    #[serde(default, skip_serializing)]
    pub secret_access_key: Option<SecretString>,
    /// Allow plain HTTP endpoints. Default false.
    #[serde(default)]
    pub allow_http: bool,
    /// For `file://` stores: fsync each object and its directory before the write counts as done
    /// (and so before its capture is acknowledged), as an S3 PUT's answer means it is stored.
    /// Default true; turning it off trades images acknowledged before a power loss for speed.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Uploads in flight at once. Default 16.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Attempts per upload before the capture fails with 2204. Default 5.
    #[serde(default = "default_upload_attempts")]
    pub upload_attempts: u32,
    /// First retry delay, in ms; doubles per attempt. Default 200.
    #[serde(default = "default_upload_backoff_ms")]
    pub upload_backoff_ms: u64,
    /// Store requests the object sink's mailbox holds. Default 256.
    #[serde(default = "default_objects_mailbox")]
    pub mailbox_capacity: usize,
    /// Where images that failed every upload attempt are kept for `fleetflow replay-dead-letters`.
    /// Default `./data/dead-letter`.
    #[serde(default = "default_dead_letter_dir")]
    pub dead_letter_dir: String,
    /// Most bytes kept in the dead-letter directory; past it, new failures are not kept (counted
    /// and logged, the device still keeps its image). Default 1 GiB.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
}

fn default_dead_letter_dir() -> String {
    "./data/dead-letter".into()
}
fn default_dead_letter_max_bytes() -> u64 {
    1024 * 1024 * 1024
}

fn default_objects_url() -> String {
    "file://./data/objects".into()
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_upload_concurrency() -> usize {
    16
}
fn default_upload_attempts() -> u32 {
    5
}
fn default_upload_backoff_ms() -> u64 {
    200
}
fn default_objects_mailbox() -> usize {
    256
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            url: default_objects_url(),
            endpoint: None,
            region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            upload_concurrency: default_upload_concurrency(),
            upload_attempts: default_upload_attempts(),
            upload_backoff_ms: default_upload_backoff_ms(),
            mailbox_capacity: default_objects_mailbox(),
            dead_letter_dir: default_dead_letter_dir(),
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
            fsync: true,
        }
    }
}

/// `[cluster]`: several engine processes share one fleet through NATS JetStream
/// (`docs/scale-out.md`). Off by default: the engine then reads `[mqtt]` alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Read the fleet from JetStream instead of the `[mqtt]` broker. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// NATS servers, comma-separated. Default `nats://127.0.0.1:4222`.
    #[serde(default = "default_nats_urls")]
    pub nats_urls: String,
    /// This instance's name among the members; unique per process. Default: host name and
    /// process id.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// The stream the partitions are read from: where NATS's MQTT listener stores QoS 1
    /// messages before it PUBACKs them. Default `$MQTT_msgs`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// The first token of the partitioned subjects, as in the server's `mappings`
    /// (`{root}.{partition}.{prefix}.{device_id}.{kind}`). Default `ff`.
    #[serde(default = "default_subject_root")]
    pub subject_root: String,
    /// Partitions of the fleet (by device id): the `partition(N, ...)` of the server's
    /// `mappings`. Default 32.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replicas of the members bucket (1 on a single NATS server, 3 on a cluster). Default 3.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// A member that has not renewed its entry for this long is gone and its partitions move,
    /// in ms. Default 6000.
    #[serde(default = "default_member_ttl_ms")]
    pub member_ttl_ms: u64,
    /// How long JetStream waits for an ack before it redelivers (to the partition's owner then),
    /// in ms. Default 10000.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Messages of one partition delivered and not yet acknowledged, at most. Default 2000.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// How long a partition's pin outlives a consumer that stopped pulling (a killed instance),
    /// in ms. Default 5000.
    #[serde(default = "default_pin_timeout_ms")]
    pub pin_timeout_ms: u64,
    /// QoS of the replies to devices (ACK/NACK, commands): 0 reaches every connected
    /// subscriber; 1 is stored for persistent-session subscribers and survives their absence,
    /// but clean-session subscribers do not get it. Default 0.
    #[serde(default)]
    pub reply_qos: u8,
    /// How long a released partition's messages in flight may take to become durable before its
    /// device actors stop, in ms; at most half of `pin_timeout_ms` (the pin must outlive the
    /// drain, or the next owner could start while this one's actors still live). Default 2000.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
}

fn default_nats_urls() -> String {
    "nats://127.0.0.1:4222".into()
}
/// The host name (with any character a member key cannot hold made `-`) and the process id.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "fleetflow".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}
fn default_stream() -> String {
    "$MQTT_msgs".into()
}
fn default_subject_root() -> String {
    "ff".into()
}
fn default_partitions() -> u32 {
    32
}
fn default_replicas() -> usize {
    3
}
fn default_member_ttl_ms() -> u64 {
    6000
}
fn default_ack_wait_ms() -> u64 {
    10_000
}
fn default_max_ack_pending() -> i64 {
    2000
}
fn default_pin_timeout_ms() -> u64 {
    5000
}
fn default_drain_ms() -> u64 {
    2000
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nats_urls: default_nats_urls(),
            instance_id: default_instance_id(),
            stream: default_stream(),
            subject_root: default_subject_root(),
            partitions: default_partitions(),
            replicas: default_replicas(),
            member_ttl_ms: default_member_ttl_ms(),
            ack_wait_ms: default_ack_wait_ms(),
            max_ack_pending: default_max_ack_pending(),
            pin_timeout_ms: default_pin_timeout_ms(),
            reply_qos: 0,
            drain_ms: default_drain_ms(),
        }
    }
}
