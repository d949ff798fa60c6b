//! A simulated device speaking fleetflow's own protocol (`PROTOCOL.md`): status heartbeats,
//! readings, captures in binary or JSON chunks, and the answers to its ACK/NACKs.

use base64::Engine as _;
use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;

use super::{image, ChunkForm, DeviceKind};
use crate::device::{period, plan_chunks, Capture, Ctx, Device, Step};

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

/// An ACK_OK or NACK on the device's `/ack`.
pub(super) fn on_answer(cx: &mut Ctx<'_>, d: &mut Device, payload: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<AckMsg>(payload) else {
        return;
    };
    match msg.kind.as_str() {
        "ACK_OK" => match d.inflight.remove(&msg.capture_id) {
            Some(c) if !c.silent => {
                cx.report.v1.acks += 1;
                cx.live.acked();
                cx.report.v1.record_latency(&c);
            }
            Some(_) => cx.report.v1.acks += 1,
            None => cx.report.v1.duplicate_acks += 1,
        },
        "NACK" => on_nack(cx, d, msg),
        _ => {}
    }
}

fn on_nack(cx: &mut Ctx<'_>, d: &mut Device, msg: AckMsg) {
    cx.report.v1.nacks += 1;
    cx.live.nacked();
    let Some(c) = d.inflight.get_mut(&msg.capture_id) else {
        return;
    };
    if c.silent {
        return;
    }
    c.last_heard = Instant::now();
    let since = cx.out.queued;
    let data_topic = format!("{}/{}/data", cx.cfg.prefix, d.id);
    let ranges: Vec<[u32; 2]> = match msg.reason.as_deref() {
        Some("need_metadata") => {
            cx.out
                .publish(data_topic, c.meta.clone(), None, &mut cx.report.v1);
            cx.report.v1.resends += 1;
            return;
        }
        Some("storage") => {
            let total = image::total_chunks(cx.image.len(), cx.cfg.chunk_size) as u32;
            cx.out
                .publish(data_topic, c.meta.clone(), None, &mut cx.report.v1);
            vec![[0, total - 1]]
        }
        _ => msg.missing,
    };
    for [s, e] in ranges {
        for i in s..=e {
            send_chunk(cx, &d.id, &msg.capture_id, i as usize);
            cx.report.v1.resends += 1;
        }
    }
    cx.out.mark_last(since, &d.id, &msg.capture_id);
    c.requeued(Instant::now());
}

/// Sends chunk `i` in the configured form.
fn send_chunk(cx: &mut Ctx<'_>, device: &str, capture_id: &str, i: usize) {
    let cfg = cx.cfg;
    let data = image::chunk(&cx.image, cfg.chunk_size, i);
    let binary = match cfg.chunk_form {
        ChunkForm::Binary => true,
        ChunkForm::Json => false,
        ChunkForm::Mixed => i.is_multiple_of(2),
    };
    let (topic, payload) = if binary {
        (
            format!("{}/{device}/chunk/{capture_id}/{i}", cfg.prefix),
            data,
        )
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let json =
            format!(r#"{{"type":"chunk","capture_id":"{capture_id}","index":{i},"data":"{b64}"}}"#);
        (format!("{}/{device}/data", cfg.prefix), Bytes::from(json))
    };
    cx.out.publish(topic, payload, None, &mut cx.report.v1);
    cx.report.v1.chunks_sent += 1;
}

/// `Rate` mode: whatever is due now.
pub(super) fn generate(cx: &mut Ctx<'_>, di: usize, d: &mut Device, now: Instant) {
    let cfg = cx.cfg;
    if cfg.status_per_sec > 0.0 && now >= d.next_status {
        d.next_status = now + period(cfg.status_per_sec);
        send_status(cx, d);
    }
    let reading_cap_hit = cfg.readings_per_device > 0 && d.seq >= cfg.readings_per_device;
    if cfg.readings_per_sec > 0.0 && now >= d.next_reading && !reading_cap_hit {
        d.next_reading += period(cfg.readings_per_sec);
        if d.next_reading < now {
            d.next_reading = now + period(cfg.readings_per_sec);
        }
        send_reading(cx, di, d);
    }
    if d.captures_sent < cfg.captures_per_device && now >= d.next_capture {
        d.next_capture += cx.capture_every;
        send_capture(cx, d);
    }
}

/// `Max` mode: a reading when one is owed, a capture when the window has room.
pub(super) fn step_max(
    cx: &mut Ctx<'_>,
    di: usize,
    d: &mut Device,
    in_time: bool,
    window_open: bool,
) -> Step {
    let cfg = cx.cfg;
    let mut step = Step {
        did: false,
        took_slot: false,
    };
    let wants_reading = if cfg.readings_per_device > 0 {
        d.seq < cfg.readings_per_device
    } else {
        in_time && cfg.readings_per_sec > 0.0
    };
    if wants_reading {
        send_reading(cx, di, d);
        step.did = true;
    }
    if d.captures_sent < cfg.captures_per_device && d.inflight.is_empty() && window_open {
        send_capture(cx, d);
        step.did = true;
        step.took_slot = true;
    }
    step
}

fn send_status(cx: &mut Ctx<'_>, d: &Device) {
    let payload = format!(
        r#"{{"status":"online","battery_v":{:.2},"rssi":{},"uptime_s":{},"pending_count":{},"fw":"1.4.2"}}"#,
        3.6 + cx.rng.random_range(0.0..0.6),
        -40 - cx.rng.random_range(0..50),
        cx.report.v1.messages,
        d.inflight.len()
    );
    let topic = format!("{}/{}/status", cx.cfg.prefix, d.id);
    cx.out
        .publish(topic, Bytes::from(payload), None, &mut cx.report.v1);
}

fn send_reading(cx: &mut Ctx<'_>, di: usize, d: &mut Device) {
    d.seq += 1;
    let r = &mut cx.rng;
    let payload = format!(
        r#"{{"type":"reading","seq":{},"temperature_c":{:.2},"humidity_pct":{:.1},"pressure_hpa":{:.1},"gas_kohm":{:.1}}}"#,
        d.seq,
        20.0 + r.random_range(0.0..5.0),
        40.0 + r.random_range(0.0..10.0),
        1010.0 + r.random_range(0.0..5.0),
        10.0 + r.random_range(0.0..5.0)
    );
    cx.report.readings_sent += 1;
    let topic = format!("{}/{}/data", cx.cfg.prefix, d.id);
    cx.out.publish(
        topic,
        Bytes::from(payload),
        Some((di, d.seq)),
        &mut cx.report.v1,
    );
}

fn send_capture(cx: &mut Ctx<'_>, d: &mut Device) {
    let cfg = cx.cfg;
    let since = cx.out.queued;
    d.captures_sent += 1;
    let capture_id = format!("img_{:06}", d.captures_sent);
    let total = image::total_chunks(cx.image.len(), cfg.chunk_size);
    let sha_field = if cfg.with_sha256 {
        format!(r#","sha256":"{}""#, cx.sha)
    } else {
        String::new()
    };
    let meta = Bytes::from(format!(
        r#"{{"type":"capture_meta","capture_id":"{capture_id}","captured_at":"{}","image_bytes":{},"total_chunks":{total},"chunk_size":{}{sha_field},"sensors":{{"temperature_c":21.5}}}}"#,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        cx.image.len(),
        cfg.chunk_size
    ));
    let topic = format!("{}/{}/data", cfg.prefix, d.id);
    cx.out.publish(topic, meta.clone(), None, &mut cx.report.v1);
    cx.report.v1.captures_started += 1;
    let plan = plan_chunks(cx, total, DeviceKind::V1);
    for (i, dup) in plan.order {
        send_chunk(cx, &d.id, &capture_id, i);
        if dup {
            send_chunk(cx, &d.id, &capture_id, i);
        }
    }
    cx.out.mark_last(since, &d.id, &capture_id);
    let now = Instant::now();
    d.inflight.insert(
        capture_id,
        Capture {
            meta,
            last_chunk_at: now,
            queued_at: now,
            last_heard: now,
            silent: plan.silent,
        },
    );
}
