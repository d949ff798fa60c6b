//! One simulator connection: drives its share of the devices (v1 and GXP), matches PUBACKs to
//! readings, hands the engine's answers to the device they address, and decides when the run is
//! over.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::device::{period, Ctx, Device, Out, Sent, Wake};
use super::gxp;
use super::progress::Live;
use super::report::ConnReport;
use super::{device_id, image, v1, DeviceKind, Mode, SimConfig};

/// Where the connection is: subscribed yet, and when the drain must end.
struct Phase {
    subscribed: bool,
    end: Instant,
    drain_deadline: Option<Instant>,
    rr: usize,
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
    let now = Instant::now();
    let capture_every = match (cfg.mode, cfg.captures_per_device) {
        (_, 0) | (Mode::Max, _) => Duration::MAX,
        (Mode::Rate, n) => cfg.duration.div_f64(f64::from(n)),
    };
    let gxp_sleep = cfg.gxp.sleep.unwrap_or(match cfg.mode {
        Mode::Max => Duration::ZERO,
        Mode::Rate if capture_every == Duration::MAX => cfg.duration,
        Mode::Rate => capture_every,
    });
    let image = image::jpeg(cfg.image_bytes, cfg.seed + conn as u64);
    let mut cx = Ctx {
        cfg: &cfg,
        sha: hex::encode(Sha256::digest(&image)),
        image,
        out: Out {
            client: &client,
            order: VecDeque::new(),
            by_pkid: HashMap::new(),
            unacked: 0,
            queued: 0,
            live: live.clone(),
        },
        rng: rand::rngs::StdRng::seed_from_u64(cfg.seed ^ ((conn as u64) << 32)),
        report: ConnReport::default(),
        live,
        capture_every,
        gxp_sleep,
    };
    let mut devices = make_devices(&mut cx, &ids, now);
    let index: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let mut phase = Phase {
        subscribed: false,
        end: now + cfg.duration,
        drain_deadline: None,
        rr: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            ev = eventloop.poll() => {
                on_event(ev, conn, &mut devices, &index, &mut cx, &mut phase).await?;
            }
            _ = tick.tick() => {
                if phase.subscribed && on_tick(&mut devices, &mut cx, &mut phase) {
                    break;
                }
            }
        }
    }
    disconnect(&client, &mut eventloop).await;
    let mut report = cx.report;
    report.device_ids = devices.iter().map(|d| d.id.clone()).collect();
    Ok(report)
}

fn make_devices(cx: &mut Ctx<'_>, ids: &[usize], now: Instant) -> Vec<Device> {
    let cfg = cx.cfg;
    let mut devices = Vec::with_capacity(ids.len());
    for &n in ids {
        let kind = cfg.firmware.of(n);
        let mut spread = |every: Duration| {
            if every == Duration::MAX {
                far(now)
            } else {
                now + every.mul_f64(cx.rng.random_range(0.0..1.0))
            }
        };
        let next_reading = spread(period(cfg.readings_per_sec));
        let next_capture = if cfg.mode == Mode::Max {
            now
        } else {
            spread(cx.capture_every)
        };
        let (next_reading, next_status) = match kind {
            DeviceKind::V1 => (next_reading, now),
            // The GXP firmware sends no readings and no heartbeats: only Alive on waking.
            DeviceKind::Gxp => (far(now), far(now)),
        };
        cx.side(kind).devices += 1;
        devices.push(Device {
            id: device_id(cfg.id_base, n),
            kind,
            seq: 0,
            next_reading,
            next_status,
            next_capture,
            captures_sent: 0,
            inflight: HashMap::new(),
            wake: Wake::Asleep {
                until: next_capture,
            },
        });
    }
    devices
}

async fn on_event(
    ev: Result<Event, ConnectionError>,
    conn: usize,
    devices: &mut [Device],
    index: &HashMap<String, usize>,
    cx: &mut Ctx<'_>,
    phase: &mut Phase,
) -> Result<(), rumqttc::v5::ClientError> {
    match ev {
        Ok(Event::Incoming(Packet::ConnAck(_))) if !phase.subscribed => {
            subscribe(cx.out.client, &cx.cfg.prefix, devices).await?;
            phase.subscribed = true;
        }
        Ok(Event::Incoming(Packet::SubAck(_))) => cx.report.suback += 1,
        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => match cx.out.order.pop_front() {
            Some(Sent::Reading(di, seq)) => {
                cx.out.by_pkid.insert(pkid, (di, seq));
            }
            Some(Sent::LastOf { device, capture }) => {
                let c = index
                    .get(&device)
                    .and_then(|&di| devices[di].inflight.get_mut(&capture));
                if let Some(c) = c {
                    c.last_chunk_at = Instant::now();
                }
            }
            _ => {}
        },
        Ok(Event::Incoming(Packet::PubAck(a))) => {
            cx.out.unacked = cx.out.unacked.saturating_sub(1);
            if let Some((di, seq)) = cx.out.by_pkid.remove(&a.pkid) {
                cx.report.readings_acked += 1;
                cx.report.acked_readings.push((devices[di].id.clone(), seq));
                cx.live.reading_acked();
            }
        }
        Ok(Event::Incoming(Packet::Publish(p))) => {
            let mut parts = p.topic.rsplit(|b| *b == b'/');
            let (Some(leaf), Some(dev)) = (parts.next(), parts.next()) else {
                return Ok(());
            };
            let Some(&di) = std::str::from_utf8(dev).ok().and_then(|s| index.get(s)) else {
                return Ok(());
            };
            let d = &mut devices[di];
            match d.kind {
                DeviceKind::V1 if leaf == b"ack" => v1::on_answer(cx, d, &p.payload),
                DeviceKind::V1 => {}
                DeviceKind::Gxp => gxp::on_answer(cx, d, &p.payload),
            }
        }
        Ok(_) => {}
        Err(e) => {
            cx.report.connection_errors += 1;
            let lost = cx.out.forget_queued();
            tracing::warn!(error = %e, conn, lost, "simulator connection error");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Every device hears its `/ack`; GXP devices also their `/cmd`.
async fn subscribe(
    client: &AsyncClient,
    prefix: &str,
    devices: &[Device],
) -> Result<(), rumqttc::v5::ClientError> {
    let filters: Vec<Filter> = devices
        .iter()
        .flat_map(|d| {
            let cmd = (d.kind == DeviceKind::Gxp).then(|| format!("{prefix}/{}/cmd", d.id));
            std::iter::once(format!("{prefix}/{}/ack", d.id)).chain(cmd)
        })
        .map(|t| Filter::new(t, QoS::AtLeastOnce))
        .collect();
    for chunk in filters.chunks(500) {
        client.subscribe_many(chunk.to_vec()).await?;
    }
    Ok(())
}

/// One 5 ms step: device timers, new traffic, and the end-of-run check. True when done.
fn on_tick(devices: &mut [Device], cx: &mut Ctx<'_>, phase: &mut Phase) -> bool {
    let now = Instant::now();
    let cfg = cx.cfg;
    retry_timers(devices, cx, now);
    let in_time = now < phase.end;
    for d in devices.iter_mut().filter(|d| d.kind == DeviceKind::Gxp) {
        gxp::timers(cx, d, now, in_time && cfg.mode == Mode::Rate);
    }
    let work_left = devices.iter().any(|d| owed(cfg, d));
    if cfg.mode == Mode::Rate && (in_time || work_left) {
        for (di, d) in devices.iter_mut().enumerate() {
            if !in_time {
                d.next_status = far(now);
                if cfg.readings_per_device == 0 {
                    d.next_reading = d.next_status;
                }
            }
            match d.kind {
                DeviceKind::V1 => v1::generate(cx, di, d, now),
                DeviceKind::Gxp => gxp::generate(cx, d, now),
            }
        }
        return false;
    }
    if cfg.mode == Mode::Max && (in_time || (work_left && now < phase.end + cfg.drain)) {
        generate_max(cx, devices, &mut phase.rr, in_time, now);
        return false;
    }
    let outstanding: usize = devices
        .iter()
        .map(|d| d.live_captures() + usize::from(matches!(d.wake, Wake::Waiting { .. })))
        .sum();
    let deadline = *phase.drain_deadline.get_or_insert(now + cfg.drain);
    if (outstanding == 0 && !cx.out.puback_pending()) || now >= deadline {
        finish(devices, cx);
        return true;
    }
    false
}

/// Whether a device still owes traffic the run must wait for.
fn owed(cfg: &SimConfig, d: &Device) -> bool {
    let captures = d.captures_sent < cfg.captures_per_device;
    match d.kind {
        DeviceKind::V1 => {
            captures || (cfg.readings_per_device > 0 && d.seq < cfg.readings_per_device)
        }
        // With the handshake, the engine decides when a GXP device captures.
        DeviceKind::Gxp => captures && !cfg.gxp.handshake,
    }
}

/// A device that heard nothing about a capture for `retry_after` resends its metadata.
fn retry_timers(devices: &mut [Device], cx: &mut Ctx<'_>, now: Instant) {
    let prefix = &cx.cfg.prefix;
    for d in devices.iter_mut() {
        let side = match d.kind {
            DeviceKind::V1 => &mut cx.report.v1,
            DeviceKind::Gxp => &mut cx.report.gxp,
        };
        for c in d.inflight.values_mut().filter(|c| !c.silent) {
            if now.duration_since(c.last_heard) >= cx.cfg.retry_after {
                c.last_heard = now;
                side.retries += 1;
                let topic = format!("{prefix}/{}/data", d.id);
                cx.out.publish(topic, c.meta.clone(), None, side);
            }
        }
    }
}

/// `Max` mode: fill the windows, round-robin over devices.
fn generate_max(
    cx: &mut Ctx<'_>,
    devices: &mut [Device],
    rr: &mut usize,
    in_time: bool,
    now: Instant,
) {
    let cfg = cx.cfg;
    let n = devices.len();
    let mut busy: usize = devices.iter().map(Device::window_slots).sum();
    let mut idle_rounds = 0;
    while cx.out.unacked < cfg.window && idle_rounds < n {
        let di = *rr % n;
        *rr += 1;
        let d = &mut devices[di];
        let window_open = busy < cfg.capture_window;
        let step = match d.kind {
            DeviceKind::V1 => v1::step_max(cx, di, d, in_time, window_open),
            DeviceKind::Gxp => gxp::step_max(cx, d, in_time, window_open, now),
        };
        busy += usize::from(step.took_slot);
        idle_rounds = if step.did { 0 } else { idle_rounds + 1 };
    }
}

/// Counts what never finished.
fn finish(devices: &[Device], cx: &mut Ctx<'_>) {
    for d in devices {
        let waiting = matches!(d.wake, Wake::Waiting { .. });
        let side = cx.side(d.kind);
        side.unacked_captures += d.live_captures() as u64;
        side.silent_captures += (d.inflight.len() - d.live_captures()) as u64;
        if waiting {
            cx.report.handshake.unanswered += 1;
        }
    }
}

async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            eventloop.poll().await,
            Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
        ) {}
    })
    .await;
}
