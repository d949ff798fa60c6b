//! `fleetflow-sim`: the fleet simulator, N devices following the wire protocol over a few MQTT
//! connections. A device speaks fleetflow's protocol (`v1`: status heartbeats, readings with
//! increasing `seq`, captures cut into binary or JSON chunks) or plays the GXP firmware already in
//! the field (wakes with `"status": "Alive"`, captures when the engine answers `capture_image`,
//! base64 JSON chunks, sleeps on `next_wake`). Either answers NACKs by resending exactly what was
//! asked and records ACKs and their latency. Used by the `fleetflow-sim` binary, the scripts, the
//! benches and the tests; the `fleetflow-null-sub` binary (the benchmarks' drain-limit baseline)
//! lives here too.
//!
//! A layer apart: it may use `fleetflow-protocol` (topics, ids) but never the engine, neither the
//! `fleetflow` binary crate nor `fleetflow-actors`; it talks to the engine only over MQTT.
//!
//! # Layout
//! - `conn`: one MQTT connection driving its share of the devices.
//! - `v1`: a device speaking fleetflow's protocol (`../shared/PROTOCOL.md`).
//! - [`gxp`]: a device running the GXP firmware (`../shared/GXP-FIRMWARE.md`); [`gxp::wire`]
//!   holds its payloads and the parsing of the engine's answers.
//! - [`image`]: JPEG generation and chunking.
//! - [`report`]: counts and latency percentiles.
//! - [`progress`]: the live progress bar on a terminal.
//! - [`url`]: the plain-TCP broker URL the binaries take.

mod conn;
mod device;
pub mod gxp;
pub mod image;
pub mod progress;
pub mod report;
pub mod url;
mod v1;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use report::{ConnReport, SimReport};

/// How traffic is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Readings and status at the configured per-device rates, captures spread over the run.
    Rate,
    /// As fast as acknowledged: at most `window` unacknowledged publishes and
    /// `capture_window` captures in flight per connection.
    Max,
}

/// How chunks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChunkForm {
    /// Raw bytes on `.../chunk/{capture_id}/{index}`.
    Binary,
    /// Base64 in JSON on `.../data`.
    Json,
    /// Alternate per chunk.
    Mixed,
}

/// Which firmware the simulated devices run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// fleetflow's own protocol (`PROTOCOL.md`).
    V1,
    /// The GXP firmware in the field (`GXP-FIRMWARE.md`).
    Gxp,
    /// Half each: even device numbers run GXP, odd ones v1.
    Mixed,
}

/// The firmware one device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// fleetflow's protocol.
    V1,
    /// The GXP firmware.
    Gxp,
}

impl Firmware {
    /// The firmware of device number `n`.
    pub fn of(self, n: usize) -> DeviceKind {
        match self {
            Self::V1 => DeviceKind::V1,
            Self::Gxp => DeviceKind::Gxp,
            Self::Mixed if n.is_multiple_of(2) => DeviceKind::Gxp,
            Self::Mixed => DeviceKind::V1,
        }
    }
}

/// How GXP devices behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GxpConfig {
    /// Wake with `"status": "Alive"` and capture only when the engine answers `capture_image`.
    /// Off: capture on the simulator's own schedule (or back to back in `Max` mode), as a bench
    /// of the capture path needs.
    pub handshake: bool,
    /// Extra copies of each capture's metadata, sent among its chunks (the firmware quirk); every
    /// second copy has null fields.
    pub meta_resends: u32,
    /// How long a device "sleeps" after `next_wake` or a finished capture before it wakes again
    /// (the real device sleeps hours). `None`: the run's duration over its captures per device
    /// in `Rate` mode, none in `Max` mode.
    pub sleep: Option<Duration>,
    /// An Alive not answered on `/cmd` within this long is counted unanswered, and the device
    /// goes back to sleep.
    pub answer_timeout: Duration,
    /// `location` in the metadata.
    pub location: String,
}

impl Default for GxpConfig {
    fn default() -> Self {
        Self {
            handshake: true,
            meta_resends: 0,
            sleep: None,
            answer_timeout: Duration::from_secs(5),
            location: "sim_lab".into(),
        }
    }
}

/// Simulator settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix.
    pub prefix: String,
    /// Devices to simulate.
    pub devices: usize,
    /// MQTT connections to spread them over.
    pub connections: usize,
    /// First device number; ids are 12 hex digits of `id_base + n`.
    pub id_base: u64,
    /// How long to generate traffic.
    pub duration: Duration,
    /// Readings per device per second (0 for none), in `Rate` mode.
    pub readings_per_sec: f64,
    /// When non-zero, each device sends exactly this many readings, even past `duration`.
    pub readings_per_device: u64,
    /// Status heartbeats per device per second (0 for none).
    pub status_per_sec: f64,
    /// Captures per device over the run.
    pub captures_per_device: u32,
    /// Image size.
    pub image_bytes: usize,
    /// Chunk size.
    pub chunk_size: usize,
    /// Binary, JSON or mixed chunks.
    pub chunk_form: ChunkForm,
    /// Probability that a chunk's first send is skipped (the engine NACKs it).
    pub loss_rate: f64,
    /// How long to wait for outstanding ACKs after the traffic ends.
    pub drain: Duration,
    /// Include a sha256 in capture metadata.
    pub with_sha256: bool,
    /// Random seed.
    pub seed: u64,
    /// A device that heard nothing about a capture for this long resends its metadata, as
    /// firmware that keeps the image until ACK_OK does.
    pub retry_after: Duration,
    /// Pacing.
    pub mode: Mode,
    /// `Max` mode: unacknowledged publishes per connection.
    pub window: usize,
    /// `Max` mode: captures in flight per connection.
    pub capture_window: usize,
    /// Send each capture's chunks in a shuffled order.
    pub reorder: bool,
    /// Probability that a chunk is sent twice.
    pub duplicate_rate: f64,
    /// Probability that a device goes silent mid-capture (sends half the chunks, then ignores
    /// NACKs for that capture).
    pub silent_rate: f64,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Which firmware the devices run.
    pub firmware: Firmware,
    /// How GXP devices behave.
    pub gxp: GxpConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 11883,
            prefix: "ESP32CAM".into(),
            devices: 200,
            connections: 4,
            id_base: 0xA0_0000_0000,
            duration: Duration::from_secs(30),
            readings_per_sec: 1.0,
            readings_per_device: 0,
            status_per_sec: 0.1,
            captures_per_device: 5,
            image_bytes: 50 * 1024,
            chunk_size: 1024,
            chunk_form: ChunkForm::Binary,
            loss_rate: 0.0,
            drain: Duration::from_secs(60),
            with_sha256: true,
            seed: 1,
            retry_after: Duration::from_secs(10),
            mode: Mode::Rate,
            window: 1000,
            capture_window: 16,
            reorder: false,
            duplicate_rate: 0.0,
            silent_rate: 0.0,
            progress: false,
            firmware: Firmware::V1,
            gxp: GxpConfig::default(),
        }
    }
}

/// The id of device `n`.
pub fn device_id(base: u64, n: usize) -> String {
    format!("{:012X}", base + n as u64)
}

/// Runs the whole fleet and returns the merged report.
pub async fn run(cfg: SimConfig) -> Result<SimReport, rumqttc::v5::ClientError> {
    let started = std::time::Instant::now();
    let conns = cfg.connections.max(1).min(cfg.devices.max(1));
    let live = progress::Live::default();
    let bar = cfg.progress.then(|| progress::spawn(live.clone(), &cfg));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let ids: Vec<usize> = (0..cfg.devices).filter(|n| n % conns == c).collect();
        let cfg = cfg.clone();
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            conn::run_connection(cfg, c, ids, live).await
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => parts.push(r),
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::error!(error = %e, "simulator connection task failed"),
        }
    }
    if let Some(b) = bar {
        b.abort();
        progress::finish();
    }
    Ok(SimReport::merge(&cfg, parts, started.elapsed()))
}
