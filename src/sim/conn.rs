//! One simulator connection: drives its share of the devices, matches PUBACKs to readings, and
//! answers ACK/NACKs.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::progress::Live;
use super::report::ConnReport;
use super::{device_id, image, ChunkForm, Mode, SimConfig};

struct Capture {
    meta: Bytes,
    last_chunk_at: Instant,
    last_heard: Instant,
    /// Gone silent: ignores NACKs, never completes.
    silent: bool,
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

/// Publishes and remembers which were readings, so PUBACKs can be matched to them.
struct Out<'a> {
    client: &'a AsyncClient,
    /// In rumqttc's send order: `Some(device index, seq)` for readings.
    order: VecDeque<Option<(usize, u64)>>,
    /// Publishes sent and not yet PUBACKed.
    unacked: usize,
    live: Live,
}

impl Out<'_> {
    fn publish(
        &mut self,
        topic: String,
        payload: Bytes,
        reading: Option<(usize, u64)>,
        report: &mut ConnReport,
    ) {
        report.messages += 1;
        report.bytes += payload.len() as u64;
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.order.push_back(reading);
                self.unacked += 1;
                self.live.published();
            }
            Err(e) => {
                report.publish_errors += 1;
                tracing::warn!(error = %e, "simulator publish not queued");
            }
        }
    }

    fn chunk(
        &mut self,
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
            self.publish(
                format!("{}/{device}/chunk/{capture_id}/{i}", cfg.prefix),
                data,
                None,
                report,
            );
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            let payload = format!(
                r#"{{"type":"chunk","capture_id":"{capture_id}","index":{i},"data":"{b64}"}}"#
            );
            self.publish(
                format!("{}/{device}/data", cfg.prefix),
                Bytes::from(payload),
                None,
                report,
            );
        }
        report.chunks_sent += 1;
    }
}

fn period(per_sec: f64) -> Duration {
    if per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / per_sec)
    } else {
        Duration::MAX
    }
}

fn far(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365)
}

pub(super) async fn run_connection(
    cfg: SimConfig,
    conn: usize,
    ids: Vec<usize>,
    live: Live,
) -> Result<ConnReport, rumqttc::v5::ClientError> {
    let client_id = format!("fleetflow-sim-{}-{}-{conn}", std::process::id(), cfg.seed);
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o.set_request_channel_capacity(1 << 20);
    o.set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 1 << 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ ((conn as u64) << 32));
    let now = Instant::now();
    let capture_every = match (cfg.mode, cfg.captures_per_device) {
        (_, 0) | (Mode::Max, _) => Duration::MAX,
        (Mode::Rate, n) => cfg.duration.div_f64(f64::from(n)),
    };
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|&n| {
            let mut spread = |every: Duration| {
                if every == Duration::MAX {
                    far(now)
                } else {
                    now + every.mul_f64(rng.random_range(0.0..1.0))
                }
            };
            Device {
                id: device_id(cfg.id_base, n),
                seq: 0,
                next_reading: spread(period(cfg.readings_per_sec)),
                next_status: now,
                next_capture: if cfg.mode == Mode::Max {
                    now
                } else {
                    spread(capture_every)
                },
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
    let image = image::jpeg(cfg.image_bytes, cfg.seed + conn as u64);
    let sha = hex::encode(Sha256::digest(&image));
    let mut out = Out {
        client: &client,
        order: VecDeque::new(),
        unacked: 0,
        live: live.clone(),
    };
    let mut by_pkid: HashMap<u16, (usize, u64)> = HashMap::new();
    let mut subscribed = false;
    let end = now + cfg.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut drain_deadline: Option<Instant> = None;
    let mut rr = 0usize;
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
                    if let Some(Some(r)) = out.order.pop_front() {
                        by_pkid.insert(pkid, r);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    out.unacked = out.unacked.saturating_sub(1);
                    if let Some((di, seq)) = by_pkid.remove(&a.pkid) {
                        report.readings_acked += 1;
                        report.acked_readings.push((devices[di].id.clone(), seq));
                        live.reading_acked();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(msg) = serde_json::from_slice::<AckMsg>(&p.payload) else { continue };
                    let Some(dev_id) = p.topic.split(|b| *b == b'/').rev().nth(1) else { continue };
                    let Some(&di) = std::str::from_utf8(dev_id).ok().and_then(|s| index.get(s)) else { continue };
                    on_ack(&cfg, &mut devices[di], msg, &image, &mut out, &mut report, &live);
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
                    for c in d.inflight.values_mut().filter(|c| !c.silent) {
                        if now.duration_since(c.last_heard) >= cfg.retry_after {
                            c.last_heard = now;
                            report.retries += 1;
                            out.publish(format!("{}/{}/data", cfg.prefix, d.id), c.meta.clone(), None, &mut report);
                        }
                    }
                }
                let owed = |d: &Device| {
                    d.captures_sent < cfg.captures_per_device
                        || (cfg.readings_per_device > 0 && d.seq < cfg.readings_per_device)
                };
                let work_left = devices.iter().any(owed);
                if cfg.mode == Mode::Rate && (now < end || work_left) {
                    let only_owed = now >= end;
                    for (di, d) in devices.iter_mut().enumerate() {
                        if only_owed {
                            d.next_status = far(now);
                            if cfg.readings_per_device == 0 {
                                d.next_reading = d.next_status;
                            }
                        }
                        generate(&cfg, di, d, now, capture_every, &image, &sha, &mut out, &mut rng, &mut report);
                    }
                } else if cfg.mode == Mode::Max && (now < end || (work_left && now < end + cfg.drain)) {
                    generate_max(&cfg, &mut devices, &mut rr, now < end, &image, &sha, &mut out, &mut rng, &mut report);
                } else {
                    let outstanding: usize = devices.iter().map(|d| d.inflight.values().filter(|c| !c.silent).count()).sum();
                    let dl = *drain_deadline.get_or_insert(now + cfg.drain);
                    let puback_pending = !by_pkid.is_empty() || out.order.iter().any(|s| s.is_some());
                    if (outstanding == 0 && !puback_pending) || now >= dl {
                        report.unacked_captures = outstanding as u64;
                        report.silent_captures = devices.iter().map(|d| d.inflight.values().filter(|c| c.silent).count() as u64).sum();
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

fn on_ack(
    cfg: &SimConfig,
    d: &mut Device,
    msg: AckMsg,
    image: &Bytes,
    out: &mut Out<'_>,
    report: &mut ConnReport,
    live: &Live,
) {
    match (msg.kind.as_str(), msg.reason.as_deref()) {
        ("ACK_OK", _) => match d.inflight.remove(&msg.capture_id) {
            Some(c) if !c.silent => {
                report.acks += 1;
                live.acked();
                report
                    .latencies_ms
                    .push(c.last_chunk_at.elapsed().as_secs_f64() * 1000.0);
            }
            Some(_) => report.acks += 1,
            None => report.duplicate_acks += 1,
        },
        ("NACK", reason) => {
            report.nacks += 1;
            live.nacked();
            let Some(c) = d.inflight.get_mut(&msg.capture_id) else {
                return;
            };
            if c.silent {
                return;
            }
            c.last_heard = Instant::now();
            let ranges: Vec<[u32; 2]> = match reason {
                Some("need_metadata") => {
                    out.publish(
                        format!("{}/{}/data", cfg.prefix, d.id),
                        c.meta.clone(),
                        None,
                        report,
                    );
                    report.resends += 1;
                    return;
                }
                Some("storage") => {
                    let total = image::total_chunks(image.len(), cfg.chunk_size) as u32;
                    out.publish(
                        format!("{}/{}/data", cfg.prefix, d.id),
                        c.meta.clone(),
                        None,
                        report,
                    );
                    vec![[0, total - 1]]
                }
                _ => msg.missing,
            };
            for [s, e] in ranges {
                for i in s..=e {
                    out.chunk(cfg, &d.id, &msg.capture_id, image, i as usize, report);
                    report.resends += 1;
                }
            }
            c.last_chunk_at = Instant::now();
        }
        _ => {}
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
    out: &mut Out<'_>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
    if cfg.status_per_sec > 0.0 && now >= d.next_status {
        d.next_status = now + period(cfg.status_per_sec);
        send_status(cfg, d, out, rng, report);
    }
    let reading_cap_hit = cfg.readings_per_device > 0 && d.seq >= cfg.readings_per_device;
    if cfg.readings_per_sec > 0.0 && now >= d.next_reading && !reading_cap_hit {
        d.next_reading += period(cfg.readings_per_sec);
        if d.next_reading < now {
            d.next_reading = now + period(cfg.readings_per_sec);
        }
        send_reading(cfg, di, d, out, rng, report);
    }
    if d.captures_sent < cfg.captures_per_device && now >= d.next_capture {
        d.next_capture += capture_every;
        send_capture(cfg, d, image, sha, out, rng, report);
    }
}

/// `Max` mode: fill the windows, round-robin over devices.
#[allow(clippy::too_many_arguments)]
fn generate_max(
    cfg: &SimConfig,
    devices: &mut [Device],
    rr: &mut usize,
    in_time: bool,
    image: &Bytes,
    sha: &str,
    out: &mut Out<'_>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
    let n = devices.len();
    let mut idle_rounds = 0;
    while out.unacked < cfg.window && idle_rounds < n {
        let di = *rr % n;
        *rr += 1;
        let inflight_captures: usize = devices.iter().map(|d| d.inflight.len()).sum();
        let d = &mut devices[di];
        let mut did = false;
        let wants_reading = if cfg.readings_per_device > 0 {
            d.seq < cfg.readings_per_device
        } else {
            in_time && cfg.readings_per_sec > 0.0
        };
        if wants_reading {
            send_reading(cfg, di, d, out, rng, report);
            did = true;
        }
        if d.captures_sent < cfg.captures_per_device
            && d.inflight.is_empty()
            && inflight_captures < cfg.capture_window
        {
            send_capture(cfg, d, image, sha, out, rng, report);
            did = true;
        }
        idle_rounds = if did { 0 } else { idle_rounds + 1 };
    }
}

fn send_status(
    cfg: &SimConfig,
    d: &Device,
    out: &mut Out<'_>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
    let payload = format!(
        r#"{{"status":"online","battery_v":{:.2},"rssi":{},"uptime_s":{},"pending_count":{},"fw":"1.4.2"}}"#,
        3.6 + rng.random_range(0.0..0.6),
        -40 - rng.random_range(0..50),
        report.messages,
        d.inflight.len()
    );
    out.publish(
        format!("{}/{}/status", cfg.prefix, d.id),
        Bytes::from(payload),
        None,
        report,
    );
}

fn send_reading(
    cfg: &SimConfig,
    di: usize,
    d: &mut Device,
    out: &mut Out<'_>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
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
    out.publish(
        format!("{}/{}/data", cfg.prefix, d.id),
        Bytes::from(payload),
        Some((di, d.seq)),
        report,
    );
}

fn send_capture(
    cfg: &SimConfig,
    d: &mut Device,
    image: &Bytes,
    sha: &str,
    out: &mut Out<'_>,
    rng: &mut rand::rngs::StdRng,
    report: &mut ConnReport,
) {
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
    out.publish(
        format!("{}/{}/data", cfg.prefix, d.id),
        meta.clone(),
        None,
        report,
    );
    report.captures_started += 1;
    let silent = cfg.silent_rate > 0.0 && rng.random_bool(cfg.silent_rate.min(1.0));
    let mut order: Vec<usize> = (0..total).collect();
    if cfg.reorder {
        order.shuffle(rng);
    }
    if silent {
        order.truncate(total / 2);
    }
    for i in order {
        if cfg.loss_rate > 0.0 && rng.random_bool(cfg.loss_rate.min(1.0)) {
            report.chunks_dropped += 1;
            continue;
        }
        out.chunk(cfg, &d.id, &capture_id, image, i, report);
        if cfg.duplicate_rate > 0.0 && rng.random_bool(cfg.duplicate_rate.min(1.0)) {
            out.chunk(cfg, &d.id, &capture_id, image, i, report);
            report.duplicates_sent += 1;
        }
    }
    let now = Instant::now();
    d.inflight.insert(
        capture_id,
        Capture {
            meta,
            last_chunk_at: now,
            last_heard: now,
            silent,
        },
    );
}
