//! The fleet simulator: N devices following the wire protocol over a few MQTT connections.
//! Each device sends status heartbeats, readings with increasing `seq`, and captures cut into
//! chunks (JSON or binary), answers NACKs by resending exactly what was asked, and records ACKs
//! and their latency. Used by `fleetflow-sim`, `scripts/demo` and the tests.

pub mod image;
pub mod report;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use report::{ConnReport, SimReport};

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
    /// Readings per device per second (0 for none).
    pub readings_per_sec: f64,
    /// When non-zero, each device sends exactly this many readings, even past `duration`.
    pub readings_per_device: u64,
    /// Status heartbeats per device per second (0 for none).
    pub status_per_sec: f64,
    /// Captures per device over the run (spread evenly).
    pub captures_per_device: u32,
    /// Image size.
    pub image_bytes: usize,
    /// Chunk size.
    pub chunk_size: usize,
    /// Send binary chunks (true) or JSON chunks (false); `mixed` alternates.
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
        }
    }
}

/// The id of device `n`.
pub fn device_id(base: u64, n: usize) -> String {
    format!("{:012X}", base + n as u64)
}

struct Capture {
    image: Bytes,
    meta: Bytes,
    last_chunk_at: Instant,
    last_heard: Instant,
}

struct Device {
    id: String,
    seq: u64,
    next_reading: Instant,
    next_status: Instant,
    next_capture: Instant,
    captures_sent: u32,
    inflight: HashMap<String, Capture>,
}

#[derive(Deserialize)]
struct AckMsg {
    #[serde(rename = "type")]
    kind: String,
    capture_id: String,
    #[serde(default)]
    missing: Vec<[u32; 2]>,
    #[serde(default)]
    reason: Option<String>,
}

/// Runs the whole fleet and returns the merged report.
pub async fn run(cfg: SimConfig) -> Result<SimReport, rumqttc::v5::ClientError> {
    let started = std::time::Instant::now();
    let conns = cfg.connections.max(1).min(cfg.devices.max(1));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let ids: Vec<usize> = (0..cfg.devices).filter(|n| n % conns == c).collect();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(
            async move { run_connection(cfg, c, ids).await },
        ));
    }
    let mut parts = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => parts.push(r),
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::error!(error = %e, "simulator connection task failed"),
        }
    }
    Ok(SimReport::merge(&cfg, parts, started.elapsed()))
}

async fn run_connection(
    cfg: SimConfig,
    conn: usize,
    ids: Vec<usize>,
) -> Result<ConnReport, rumqttc::v5::ClientError> {
    let client_id = format!("fleetflow-sim-{}-{}-{conn}", std::process::id(), cfg.seed);
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o.set_request_channel_capacity(1 << 20);
    o.set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 1 << 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (conn as u64) << 32);
    let now = Instant::now();
    let capture_every = if cfg.captures_per_device > 0 {
        cfg.duration.div_f64(f64::from(cfg.captures_per_device))
    } else {
        Duration::MAX
    };
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|&n| {
            let spread = |every: Duration, rng: &mut rand::rngs::StdRng| {
                if every == Duration::MAX {
                    now + Duration::from_secs(86_400 * 365)
                } else {
                    now + every.mul_f64(rng.random_range(0.0..1.0))
                }
            };
            Device {
                id: device_id(cfg.id_base, n),
                seq: 0,
                next_reading: spread(period(cfg.readings_per_sec), &mut rng),
                next_status: now,
                next_capture: spread(capture_every, &mut rng),
                captures_sent: 0,
                inflight: HashMap::new(),
            }
        })
        .collect();
    let index: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let mut report = ConnReport::default();
    let image = image::jpeg_like(cfg.image_bytes, cfg.seed + conn as u64);
    let sha = hex::encode(Sha256::digest(&image));
    // Publishes in the order rumqttc sends them, to match PUBACKs to readings.
    let mut sent_order: VecDeque<Option<(usize, u64)>> = VecDeque::new();
    let mut by_pkid: HashMap<u16, (usize, u64)> = HashMap::new();
    let mut subscribed = false;
    let end = now + cfg.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if !subscribed {
                        for chunk in devices.chunks(500) {
                            let filters = chunk.iter().map(|d| Filter::new(format!("{}/{}/ack", cfg.prefix, d.id), QoS::AtLeastOnce));
                            client.subscribe_many(filters).await?;
                        }
                        subscribed = true;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => report.suback += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    if let Some(Some(r)) = sent_order.pop_front() {
                        by_pkid.insert(pkid, r);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if let Some((di, seq)) = by_pkid.remove(&a.pkid) {
                        report.readings_acked += 1;
                        report.acked_readings.push((devices[di].id.clone(), seq));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(msg) = serde_json::from_slice::<AckMsg>(&p.payload) else { continue };
                    let Some(dev_id) = p.topic.split(|b| *b == b'/').rev().nth(1) else { continue };
                    let Some(&di) = std::str::from_utf8(dev_id).ok().and_then(|s| index.get(s)) else { continue };
                    let d = &mut devices[di];
                    match (msg.kind.as_str(), msg.reason.as_deref()) {
                        ("ACK_OK", _) => {
                            if let Some(c) = d.inflight.remove(&msg.capture_id) {
                                report.acks += 1;
                                report.latencies_ms.push(c.last_chunk_at.elapsed().as_secs_f64() * 1000.0);
                            } else {
                                report.duplicate_acks += 1;
                            }
                        }
                        ("NACK", reason) => {
                            report.nacks += 1;
                            let Some(c) = d.inflight.get_mut(&msg.capture_id) else { continue };
                            c.last_heard = Instant::now();
                            let ranges: Vec<[u32; 2]> = match reason {
                                Some("need_metadata") => {
                                    publish(&client, &mut sent_order, format!("{}/{}/data", cfg.prefix, d.id), c.meta.clone(), None, &mut report);
                                    report.resends += 1;
                                    continue;
                                }
                                Some("storage") => {
                                    let total = image::total_chunks(c.image.len(), cfg.chunk_size) as u32;
                                    publish(&client, &mut sent_order, format!("{}/{}/data", cfg.prefix, d.id), c.meta.clone(), None, &mut report);
                                    vec![[0, total - 1]]
                                }
                                _ => msg.missing.clone(),
                            };
                            for [s, e] in ranges {
                                for i in s..=e {
                                    send_chunk(&client, &mut sent_order, &cfg, &d.id, &msg.capture_id, &c.image, i as usize, &mut report);
                                    report.resends += 1;
                                }
                            }
                            c.last_chunk_at = Instant::now();
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    report.connection_errors += 1;
                    tracing::warn!(error = %e, conn, "simulator connection error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if !subscribed { continue; }
                for d in devices.iter_mut() {
                    for c in d.inflight.values_mut() {
                        if now.duration_since(c.last_heard) >= cfg.retry_after {
                            c.last_heard = now;
                            report.retries += 1;
                            publish(&client, &mut sent_order, format!("{}/{}/data", cfg.prefix, d.id), c.meta.clone(), None, &mut report);
                        }
                    }
                }
                let owed = |d: &Device| {
                    d.captures_sent < cfg.captures_per_device
                        || (cfg.readings_per_device > 0 && d.seq < cfg.readings_per_device)
                };
                let work_left = devices.iter().any(owed);
                if now < end || work_left {
                    // Past the end only the promised captures and readings are still sent.
                    let only_owed = now >= end;
                    for (di, d) in devices.iter_mut().enumerate() {
                        if only_owed {
                            d.next_status = end + Duration::from_secs(86_400);
                            if cfg.readings_per_device == 0 {
                                d.next_reading = d.next_status;
                            }
                        }
                        generate(&cfg, di, d, now, capture_every, &image, &sha, &client, &mut sent_order, &mut rng, &mut report);
                    }
                } else {
                    let outstanding: usize = devices.iter().map(|d| d.inflight.len()).sum();
                    let dl = *drain_deadline.get_or_insert(now + cfg.drain);
                    let puback_pending = !by_pkid.is_empty() || sent_order.iter().any(|s| s.is_some());
                    if (outstanding == 0 && !puback_pending) || now >= dl {
                        report.unacked_captures = outstanding as u64;
                        break;
                    }
                }
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            eventloop.poll().await,
            Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
        ) {}
    })
    .await;
    report.device_ids = devices.iter().map(|d| d.id.clone()).collect();
    Ok(report)
}

fn period(per_sec: f64) -> Duration {
    if per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / per_sec)
    } else {
        Duration::MAX
    }
}

#[allow(clippy::too_many_arguments)]
fn generate(
    cfg: &SimConfig,
    di: usize,
    d: &mut Device,
    now: Instant,
    capture_every: Duration,
    image: &Bytes,
    sha: &str,
    client: &AsyncClient,
    sent: &mut VecDeque<Option<(usize, u64)>>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
    if cfg.status_per_sec > 0.0 && now >= d.next_status {
        d.next_status = now + period(cfg.status_per_sec);
        let payload = format!(
            r#"{{"status":"online","battery_v":{:.2},"rssi":{},"uptime_s":{},"pending_count":{},"fw":"1.4.2"}}"#,
            3.6 + rng.random_range(0.0..0.6),
            -40 - rng.random_range(0..50),
            report.messages,
            d.inflight.len()
        );
        publish(
            client,
            sent,
            format!("{}/{}/status", cfg.prefix, d.id),
            Bytes::from(payload),
            None,
            report,
        );
    }
    let reading_cap_hit = cfg.readings_per_device > 0 && d.seq >= cfg.readings_per_device;
    if cfg.readings_per_sec > 0.0 && now >= d.next_reading && !reading_cap_hit {
        d.next_reading += period(cfg.readings_per_sec);
        if d.next_reading < now {
            d.next_reading = now + period(cfg.readings_per_sec);
        }
        d.seq += 1;
        let payload = format!(
            r#"{{"type":"reading","seq":{},"temperature_c":{:.2},"humidity_pct":{:.1},"pressure_hpa":{:.1},"gas_kohm":{:.1}}}"#,
            d.seq,
            20.0 + rng.random_range(0.0..5.0),
            40.0 + rng.random_range(0.0..10.0),
            1010.0 + rng.random_range(0.0..5.0),
            10.0 + rng.random_range(0.0..5.0)
        );
        report.readings_sent += 1;
        publish(
            client,
            sent,
            format!("{}/{}/data", cfg.prefix, d.id),
            Bytes::from(payload),
            Some((di, d.seq)),
            report,
        );
    }
    if d.captures_sent < cfg.captures_per_device && now >= d.next_capture {
        d.next_capture += capture_every;
        d.captures_sent += 1;
        let capture_id = format!("img_{:06}", d.captures_sent);
        let total = image::total_chunks(image.len(), cfg.chunk_size);
        let sha_field = if cfg.with_sha256 {
            format!(r#","sha256":"{sha}""#)
        } else {
            String::new()
        };
        let meta = Bytes::from(format!(
            r#"{{"type":"capture_meta","capture_id":"{capture_id}","captured_at":"{}","image_bytes":{},"total_chunks":{total},"chunk_size":{}{sha_field},"sensors":{{"temperature_c":21.5}}}}"#,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            image.len(),
            cfg.chunk_size
        ));
        publish(
            client,
            sent,
            format!("{}/{}/data", cfg.prefix, d.id),
            meta.clone(),
            None,
            report,
        );
        report.captures_started += 1;
        for i in 0..total {
            if cfg.loss_rate > 0.0 && rng.random_bool(cfg.loss_rate.min(1.0)) {
                report.chunks_dropped += 1;
                continue;
            }
            send_chunk(client, sent, cfg, &d.id, &capture_id, image, i, report);
        }
        d.inflight.insert(
            capture_id,
            Capture {
                image: image.clone(),
                meta,
                last_chunk_at: Instant::now(),
                last_heard: Instant::now(),
            },
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn send_chunk(
    client: &AsyncClient,
    sent: &mut VecDeque<Option<(usize, u64)>>,
    cfg: &SimConfig,
    device: &str,
    capture_id: &str,
    image: &Bytes,
    i: usize,
    report: &mut ConnReport,
) {
    let data = image::chunk(image, cfg.chunk_size, i);
    let binary = match cfg.chunk_form {
        ChunkForm::Binary => true,
        ChunkForm::Json => false,
        ChunkForm::Mixed => i % 2 == 0,
    };
    if binary {
        publish(
            client,
            sent,
            format!("{}/{device}/chunk/{capture_id}/{i}", cfg.prefix),
            data,
            None,
            report,
        );
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let payload =
            format!(r#"{{"type":"chunk","capture_id":"{capture_id}","index":{i},"data":"{b64}"}}"#);
        publish(
            client,
            sent,
            format!("{}/{device}/data", cfg.prefix),
            Bytes::from(payload),
            None,
            report,
        );
    }
    report.chunks_sent += 1;
}

fn publish(
    client: &AsyncClient,
    sent: &mut VecDeque<Option<(usize, u64)>>,
    topic: String,
    payload: Bytes,
    reading: Option<(usize, u64)>,
    report: &mut ConnReport,
) {
    report.messages += 1;
    report.bytes += payload.len() as u64;
    match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
        Ok(()) => sent.push_back(reading),
        Err(e) => {
            report.publish_errors += 1;
            tracing::warn!(error = %e, "simulator publish not queued");
        }
    }
}
