//! A simulated device running the GXP firmware (`../shared/GXP-FIRMWARE.md`). It wakes with
//! `{"device_id", "status": "Alive", "pendingImg"}` on `/status` and waits for the engine's
//! answer on `/cmd`: `capture_image` makes it send a capture (flat metadata, then base64 JSON
//! chunks, both on `/data`), `next_wake` sends it back to sleep. A "sleep" in the simulator is a
//! short configurable wait. It answers `missing_chunks` NACKs (on `/ack` or `/cmd`) by re-sending
//! exactly those chunks, `send_image` / `send_all_pending` by re-sending whole images, and counts
//! `ACK_OK` with its latency. It sends no readings: its sensors come with each capture.
//!
//! - `wire`: the payloads and the parsing of the engine's answers (pure).

pub mod wire;

use rand::Rng;
use tokio::time::Instant;

use super::{image, DeviceKind};
use crate::device::{plan_chunks, Capture, Ctx, Device, Step, Wake};
use wire::Inbound;

/// Wakes due devices (when `may_wake`), gives up on unanswered Alives, and puts a device whose
/// capture is done back to sleep.
pub(super) fn timers(cx: &mut Ctx<'_>, d: &mut Device, now: Instant, may_wake: bool) {
    let cfg = cx.cfg;
    let g = &cfg.gxp;
    match d.wake {
        Wake::Asleep { until }
            if may_wake
                && g.handshake
                && now >= until
                && d.captures_sent < cfg.captures_per_device =>
        {
            wake(cx, d, now);
        }
        Wake::Waiting { since } if now.duration_since(since) >= g.answer_timeout => {
            cx.report.handshake.unanswered += 1;
            d.wake = Wake::Asleep {
                until: now + cx.gxp_sleep,
            };
        }
        Wake::Capturing if d.live_captures() == 0 => {
            d.wake = Wake::Asleep {
                until: now + cx.gxp_sleep,
            };
        }
        _ => {}
    }
}

/// `Rate` mode without the handshake: captures on the simulator's own schedule.
pub(super) fn generate(cx: &mut Ctx<'_>, d: &mut Device, now: Instant) {
    let cfg = cx.cfg;
    if !cfg.gxp.handshake && d.captures_sent < cfg.captures_per_device && now >= d.next_capture {
        d.next_capture += cx.capture_every;
        send_capture(cx, d);
    }
}

/// `Max` mode: a capture back to back (no handshake) or a wake, when the window has room.
pub(super) fn step_max(
    cx: &mut Ctx<'_>,
    d: &mut Device,
    in_time: bool,
    window_open: bool,
    now: Instant,
) -> Step {
    let cfg = cx.cfg;
    let has_budget = d.captures_sent < cfg.captures_per_device;
    let go = if cfg.gxp.handshake {
        let due = matches!(d.wake, Wake::Asleep { until } if now >= until);
        in_time && due && has_budget && window_open
    } else {
        has_budget && d.inflight.is_empty() && window_open
    };
    if go && cfg.gxp.handshake {
        wake(cx, d, now);
    } else if go {
        send_capture(cx, d);
    }
    Step {
        did: go,
        took_slot: go,
    }
}

fn wake(cx: &mut Ctx<'_>, d: &mut Device, now: Instant) {
    let topic = format!("{}/{}/status", cx.cfg.prefix, d.id);
    let payload = wire::alive(&d.id, d.live_captures());
    cx.out.publish(topic, payload, None, &mut cx.report.gxp);
    cx.report.handshake.alive_sent += 1;
    d.wake = Wake::Waiting { since: now };
}

/// A message from the engine on the device's `/ack` or `/cmd`.
pub(super) fn on_answer(cx: &mut Ctx<'_>, d: &mut Device, payload: &[u8]) {
    let Some(msg) = wire::parse(payload) else {
        return;
    };
    let now = Instant::now();
    match msg {
        Inbound::AckOk { image_name } => on_ack_ok(cx, d, &image_name),
        Inbound::Nack {
            image_name,
            missing,
        } => on_nack(cx, d, &image_name, &missing),
        Inbound::CaptureImage | Inbound::NextWake(_) => {
            let Wake::Waiting { since } = d.wake else {
                cx.report.handshake.unexpected_commands += 1;
                return;
            };
            let w = &mut cx.report.handshake;
            w.answer_ms
                .push(now.duration_since(since).as_secs_f64() * 1000.0);
            if msg == Inbound::CaptureImage {
                w.answered_capture += 1;
                send_capture(cx, d);
                d.wake = Wake::Capturing;
            } else {
                w.answered_next_wake += 1;
                d.wake = Wake::Asleep {
                    until: now + cx.gxp_sleep,
                };
            }
        }
        Inbound::SendImage(name) => {
            if d.inflight.get(&name).is_some_and(|c| !c.silent) {
                cx.report.handshake.resend_commands += 1;
                resend_image(cx, d, &name);
            } else {
                cx.report.handshake.unexpected_commands += 1;
            }
        }
        Inbound::SendAllPending => {
            cx.report.handshake.resend_commands += 1;
            let names: Vec<String> = d
                .inflight
                .iter()
                .filter(|(_, c)| !c.silent)
                .map(|(n, _)| n.clone())
                .collect();
            for n in names {
                resend_image(cx, d, &n);
            }
        }
    }
}

fn on_ack_ok(cx: &mut Ctx<'_>, d: &mut Device, image_name: &str) {
    match d.inflight.remove(image_name) {
        Some(c) if !c.silent => {
            cx.report.gxp.acks += 1;
            cx.live.acked();
            cx.report.gxp.record_latency(&c);
        }
        Some(_) => cx.report.gxp.acks += 1,
        None => cx.report.gxp.duplicate_acks += 1,
    }
}

fn on_nack(cx: &mut Ctx<'_>, d: &mut Device, image_name: &str, missing: &[u32]) {
    cx.report.gxp.nacks += 1;
    cx.live.nacked();
    let total = image::total_chunks(cx.image.len(), cx.cfg.chunk_size);
    let Some(c) = d.inflight.get_mut(image_name) else {
        return;
    };
    if c.silent {
        return;
    }
    let now = Instant::now();
    c.last_heard = now;
    let since = cx.out.queued;
    for &i in missing.iter().filter(|&&i| (i as usize) < total) {
        send_chunk(cx, &d.id, image_name, i as usize);
        cx.report.gxp.resends += 1;
    }
    cx.out.mark_last(since, &d.id, image_name);
    c.requeued(Instant::now());
}

/// `send_image`: the metadata and every chunk again.
fn resend_image(cx: &mut Ctx<'_>, d: &mut Device, name: &str) {
    let total = image::total_chunks(cx.image.len(), cx.cfg.chunk_size);
    let Some(c) = d.inflight.get_mut(name) else {
        return;
    };
    let since = cx.out.queued;
    let topic = format!("{}/{}/data", cx.cfg.prefix, d.id);
    cx.out
        .publish(topic, c.meta.clone(), None, &mut cx.report.gxp);
    for i in 0..total {
        send_chunk(cx, &d.id, name, i);
    }
    cx.report.gxp.resends += 1 + total as u64;
    cx.out.mark_last(since, &d.id, name);
    c.last_heard = Instant::now();
    c.requeued(c.last_heard);
}

fn send_chunk(cx: &mut Ctx<'_>, device: &str, image_name: &str, i: usize) {
    let size = cx.cfg.chunk_size;
    let payload = wire::chunk(
        device,
        image_name,
        i,
        size,
        &image::chunk(&cx.image, size, i),
    );
    let topic = format!("{}/{device}/data", cx.cfg.prefix);
    cx.out.publish(topic, payload, None, &mut cx.report.gxp);
    cx.report.gxp.chunks_sent += 1;
}

fn send_capture(cx: &mut Ctx<'_>, d: &mut Device) {
    let cfg = cx.cfg;
    let since = cx.out.queued;
    d.captures_sent += 1;
    let name = wire::image_name(d.captures_sent);
    let total = image::total_chunks(cx.image.len(), cfg.chunk_size);
    let r = &mut cx.rng;
    let sensors = wire::Sensors {
        temperature: (2000.0 + r.random_range(0.0..500.0_f64)).round() / 100.0,
        humidity: (400.0 + r.random_range(0.0..100.0_f64)).round() / 10.0,
        pressure: (101_000.0 + r.random_range(0.0..500.0_f64)).round() / 100.0,
        gas_resistance_ohm: (1_000_000.0 + r.random_range(0.0..500_000.0_f64)).round() / 100.0,
    };
    let captured_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let meta = wire::metadata(&wire::Meta {
        device_id: &d.id,
        image_name: &name,
        captured_at: &captured_at,
        image_size: cx.image.len(),
        chunk_size: cfg.chunk_size,
        location: &cfg.gxp.location,
        sensors,
    });
    let topic = format!("{}/{}/data", cfg.prefix, d.id);
    cx.out
        .publish(topic.clone(), meta.clone(), None, &mut cx.report.gxp);
    cx.report.gxp.captures_started += 1;
    let plan = plan_chunks(cx, total, DeviceKind::Gxp);
    let copies = wire::resend_positions(cfg.gxp.meta_resends, plan.order.len());
    let mut k = 0;
    for (pos, &(i, dup)) in plan.order.iter().enumerate() {
        send_chunk(cx, &d.id, &name, i);
        if dup {
            send_chunk(cx, &d.id, &name, i);
        }
        while copies.get(k) == Some(&pos) {
            send_meta_copy(cx, &topic, &meta, &d.id, &name, k);
            k += 1;
        }
    }
    for k in k..copies.len() {
        send_meta_copy(cx, &topic, &meta, &d.id, &name, k);
    }
    cx.out.mark_last(since, &d.id, &name);
    let now = Instant::now();
    d.inflight.insert(
        name,
        Capture {
            meta,
            last_chunk_at: now,
            queued_at: now,
            last_heard: now,
            silent: plan.silent,
        },
    );
}

/// Re-send quirk: copy `k` (0-based) of the metadata; every second copy has null fields.
fn send_meta_copy(
    cx: &mut Ctx<'_>,
    topic: &str,
    meta: &bytes::Bytes,
    device: &str,
    name: &str,
    k: usize,
) {
    let null = k % 2 == 1;
    let payload = if null {
        wire::metadata_nulls(device, name)
    } else {
        meta.clone()
    };
    cx.out
        .publish(topic.to_owned(), payload, None, &mut cx.report.gxp);
    cx.report.gxp.metadata_copies += 1;
    cx.report.gxp.null_copies += u64::from(null);
}
