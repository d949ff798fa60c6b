//! `fleetflow-sim`: plays a fleet of camera/sensor devices against a broker and prints a JSON
//! report. `--firmware gxp|v1|mixed` chooses fleetflow's protocol, the GXP firmware in the
//! field, or half each.

use std::time::Duration;

use clap::Parser;
use fleetflow_sim::{self as sim, ChunkForm, Firmware, GxpConfig, Mode, SimConfig};

#[derive(Parser)]
#[command(
    name = "fleetflow-sim",
    about = "Simulates a fleet of camera and sensor devices"
)]
struct Args {
    /// Broker URL.
    #[arg(
        long,
        default_value = "mqtt://127.0.0.1:11883",
        env = "FLEETFLOW_MQTT__URL"
    )]
    url: String,
    /// Topic prefix.
    #[arg(long, default_value = "ESP32CAM")]
    prefix: String,
    /// Devices.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// MQTT connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,
    /// Readings per device per second.
    #[arg(long, default_value_t = 1.0)]
    readings_per_sec: f64,
    /// Exact readings per device (0: as many as the rate and duration give).
    #[arg(long, default_value_t = 0)]
    readings_per_device: u64,
    /// Status heartbeats per device per second.
    #[arg(long, default_value_t = 0.1)]
    status_per_sec: f64,
    /// Captures per device over the run.
    #[arg(long, default_value_t = 5)]
    captures: u32,
    /// Image size in bytes.
    #[arg(long, default_value_t = 51_200)]
    image_bytes: usize,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 1024)]
    chunk_size: usize,
    /// Chunk form.
    #[arg(long, value_enum, default_value_t = ChunkForm::Binary)]
    chunk_form: ChunkForm,
    /// Probability of dropping a chunk's first send.
    #[arg(long, default_value_t = 0.0)]
    loss_rate: f64,
    /// Seconds to wait for outstanding ACKs at the end.
    #[arg(long, default_value_t = 60.0)]
    drain_s: f64,
    /// First device number (ids are 12 hex digits).
    #[arg(long, default_value_t = 0xA0_0000_0000)]
    id_base: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds without news of a capture before a device resends its metadata.
    #[arg(long, default_value_t = 10.0)]
    retry_s: f64,
    /// Pacing: `rate` (per-device rates) or `max` (as fast as acknowledged).
    #[arg(long, value_enum, default_value_t = Mode::Rate)]
    mode: Mode,
    /// `max` mode: unacknowledged publishes per connection.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// `max` mode: captures in flight per connection.
    #[arg(long, default_value_t = 16)]
    capture_window: usize,
    /// Shuffle each capture's chunk order.
    #[arg(long)]
    reorder: bool,
    /// Probability of sending a chunk twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Probability that a device goes silent mid-capture.
    #[arg(long, default_value_t = 0.0)]
    silent_rate: f64,
    /// Firmware: `v1` (fleetflow's protocol), `gxp` (the GXP firmware) or `mixed` (even device
    /// numbers GXP, odd ones v1).
    #[arg(long, value_enum, default_value_t = Firmware::V1)]
    firmware: Firmware,
    /// GXP: wake with Alive and capture only when the engine answers `capture_image` (`false`:
    /// capture on the simulator's schedule, or back to back in `max` mode).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    gxp_handshake: bool,
    /// GXP: extra copies of each capture's metadata sent among its chunks (the firmware's
    /// re-send quirk), every second one with null fields.
    #[arg(long, default_value_t = 0)]
    gxp_meta_resends: u32,
    /// GXP: seconds a device sleeps after `next_wake` or a finished capture (default: the
    /// duration over the captures per device in `rate` mode, 0 in `max` mode).
    #[arg(long)]
    gxp_sleep_s: Option<f64>,
    /// GXP: seconds to wait for the answer to an Alive before counting it unanswered.
    #[arg(long, default_value_t = 5.0)]
    gxp_answer_timeout_s: f64,
    /// Write the report here as well as to stdout.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let (host, port) = sim::url::parse_mqtt_url(&a.url)?;
    let cfg = SimConfig {
        host,
        port,
        prefix: a.prefix,
        devices: a.devices,
        connections: a.connections,
        id_base: a.id_base,
        duration: Duration::from_secs_f64(a.duration_s),
        readings_per_sec: a.readings_per_sec,
        readings_per_device: a.readings_per_device,
        status_per_sec: a.status_per_sec,
        captures_per_device: a.captures,
        image_bytes: a.image_bytes,
        chunk_size: a.chunk_size,
        chunk_form: a.chunk_form,
        loss_rate: a.loss_rate,
        drain: Duration::from_secs_f64(a.drain_s),
        with_sha256: true,
        seed: a.seed,
        retry_after: Duration::from_secs_f64(a.retry_s),
        mode: a.mode,
        window: a.window,
        capture_window: a.capture_window,
        reorder: a.reorder,
        duplicate_rate: a.duplicate_rate,
        silent_rate: a.silent_rate,
        progress: true,
        firmware: a.firmware,
        gxp: GxpConfig {
            handshake: a.gxp_handshake,
            meta_resends: a.gxp_meta_resends,
            sleep: a.gxp_sleep_s.map(Duration::from_secs_f64),
            answer_timeout: Duration::from_secs_f64(a.gxp_answer_timeout_s),
            ..GxpConfig::default()
        },
    };
    let report = sim::run(cfg).await?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = a.report {
        std::fs::write(p, &text)?;
    }
    println!("{text}");
    Ok(())
}
