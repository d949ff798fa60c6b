//! The GXP firmware's steps of the device state machine: metadata copies merged without ever
//! erasing what an earlier copy gave, captures started once their sizes are known (from
//! metadata or from chunks that came first), device-reported errors (1000 + e), the wake
//! handshake answered from the in-memory schedule book, and `ACK_OK` with the next wake time.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Instant;

use super::{Capture, DeviceCore, Effect, MessageAck, MsgCtx, Phase, WireFormat};
use crate::assembler::{Assembly, Layout};
use crate::errors::ErrorCode;
use crate::gxp::{self, GxpChunk, GxpCommand, GxpMeta, PartialLayout, WakeFormat};
use crate::message::Chunk;
use crate::metric_names as m;
use crate::rows::{CaptureRow, IngestStatus, ReadingRow, Row, WakeRow};
use crate::schedule::{answer_wake, WakeAnswer};

/// A GXP capture's merged metadata.
#[derive(Debug)]
pub(super) struct GxpState {
    /// Every copy merged, first non-null value wins.
    pub(super) meta: GxpMeta,
    /// The sensor snapshot row was written.
    sensors_written: bool,
    /// When the first copy came (pending metadata expires after the assembly timeout).
    pub(super) since: Instant,
    /// A metadata message came (not only chunks carrying sizes): a complete image waits for
    /// it, up to the assembly timeout, so that it is stored with its capture time and sensors.
    pub(super) meta_seen: bool,
}

impl GxpState {
    fn new(meta: GxpMeta, now: Instant) -> Self {
        Self {
            meta,
            sensors_written: false,
            since: now,
            meta_seen: true,
        }
    }

    /// What `captures.meta` keeps: location, `image_id` and unknown fields.
    pub(super) fn meta_json(&self) -> Option<Value> {
        let mut o = self.meta.extra.clone();
        if let Some(id) = self.meta.image_id {
            o.insert("image_id".into(), json!(id));
        }
        (!o.is_empty()).then_some(Value::Object(o))
    }
}

impl DeviceCore {
    /// GXP metadata: a device error, a stored capture's copy, a copy for a capture in flight
    /// (merged), or a new capture.
    pub(super) fn on_gxp_meta(
        &mut self,
        meta: GxpMeta,
        ack: Option<MessageAck>,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(e) = meta.error.filter(|e| *e != 0) {
            // The device sends nothing more for this capture: the message is acknowledged only
            // once its failed row is committed.
            self.device_reported(meta, e, ack, cx, out);
            return;
        }
        if let Some(a) = ack {
            out.push(Effect::Ack(a));
        }
        if self.answer_if_stored(&meta.image_name, cx, out) {
            return;
        }
        let name = meta.image_name.clone();
        if let Some(c) = self.captures.get_mut(&name) {
            // A re-sent copy: merged, never erasing; not activity (the NACK timer runs on).
            let complete = match &c.phase {
                Phase::Assembling(a) => Some(a.is_complete()),
                Phase::Storing => None,
            };
            let Some(g) = c.gxp.as_mut() else { return };
            if complete.is_some() && g.meta.captured_at.is_none() {
                if let Some(t) = meta.captured_at {
                    c.captured_at = t;
                }
            }
            g.meta.merge(meta);
            let waited = !std::mem::replace(&mut g.meta_seen, true);
            let row = sensor_row(&self.id, g, c.captured_at);
            out.extend(row);
            if waited && complete == Some(true) {
                // Every chunk came first; the image waited for this metadata.
                self.complete(&name, cx.now, out);
            }
            return;
        }
        let mut state = match self.gxp_pending.remove(&name) {
            Some(mut p) => {
                p.meta.merge(meta);
                p
            }
            None => GxpState::new(meta, cx.now),
        };
        let at = state.meta.captured_at.unwrap_or(cx.wall);
        out.extend(sensor_row(&self.id, &mut state, at));
        self.try_start(state, cx, out);
    }

    /// A GXP chunk: into its assembly, or buffered until the capture's sizes are known.
    pub(super) fn on_gxp_chunk(&mut self, chunk: GxpChunk, cx: &MsgCtx<'_>, out: &mut Vec<Effect>) {
        let name = chunk.image_name;
        let plain = Chunk {
            capture_id: name.clone(),
            index: chunk.index,
            data: chunk.data,
        };
        if self.captures.contains_key(&name) || self.recent.iter().any(|r| r.capture_id == name) {
            self.on_chunk(plain, WireFormat::Gxp, cx, out);
            return;
        }
        self.buffer_early(plain, WireFormat::Gxp, chunk.layout, cx, out);
        let state = match self.gxp_pending.remove(&name) {
            Some(p) => p,
            None => {
                let sized = self.early.get(&name).and_then(|e| e.layout.complete());
                if sized.is_none() {
                    return;
                }
                GxpState {
                    meta_seen: false,
                    ..GxpState::new(bare_meta(name), cx.now)
                }
            }
        };
        self.try_start(state, cx, out);
    }

    /// Starts the assembly once the sizes are known (metadata and early chunks together), or
    /// keeps the metadata pending.
    fn try_start(&mut self, state: GxpState, cx: &MsgCtx<'_>, out: &mut Vec<Effect>) {
        let name = state.meta.image_name.clone();
        let Some(layout) = self.known_layout(&name, &state.meta.layout) else {
            if self.gxp_pending.len() + self.captures.len() >= 2 * self.cfg.max_captures_in_flight {
                let msg = format!("too many GXP captures waiting for their sizes ({name})");
                self.error(ErrorCode::OverBudget, msg, Some(&name), cx, out);
                return;
            }
            self.gxp_pending.insert(name, state);
            return;
        };
        if let Err(e) = check_layout(layout, self.cfg.max_image_bytes) {
            // The worker's "metadata could not be processed".
            self.error(
                ErrorCode::MetadataFailed,
                e.to_string(),
                Some(&name),
                cx,
                out,
            );
            if let Some(e) = self.early.remove(&name) {
                self.release(e.bytes);
            }
            return;
        }
        let Some(held) = self.reserve(&name, layout, cx, out) else {
            return;
        };
        let capture = Capture {
            format: WireFormat::Gxp,
            layout,
            captured_at: state.meta.captured_at.unwrap_or(cx.wall),
            gxp: Some(Box::new(state)),
            sha256: None,
            phase: Phase::Assembling(Assembly::new_lenient(layout)),
            last_activity: cx.now,
            nack_rounds: 0,
            held,
        };
        self.captures.insert(name.clone(), capture);
        self.apply_early(&name, WireFormat::Gxp, cx, out);
    }

    /// The sizes from the metadata and the chunks that came first; the chunk size, when no
    /// message gave it, from a chunk that is not the last.
    fn known_layout(&self, name: &str, meta: &PartialLayout) -> Option<Layout> {
        let mut l = *meta;
        if let Some(e) = self.early.get(name) {
            l.merge(&e.layout);
            if l.chunk_size.is_none() {
                let total = l.total_chunks?;
                l.chunk_size = e
                    .chunks
                    .iter()
                    .find(|(i, _)| *i < total.saturating_sub(1))
                    .map(|(_, d)| d.len() as u32);
            }
        }
        let (image_bytes, chunk_size, total_chunks) = l.complete()?;
        Some(Layout {
            image_bytes: u32::try_from(image_bytes).unwrap_or(u32::MAX),
            chunk_size,
            total_chunks,
        })
    }

    /// Metadata with `error` e ≠ 0: the device failed to capture. A 1000 + e row naming the
    /// cause, the capture `failed` at once, and no assembly.
    fn device_reported(
        &mut self,
        meta: GxpMeta,
        e: i64,
        ack: Option<MessageAck>,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let name = meta.image_name.clone();
        if self.failed_recent.contains(&name) {
            // A re-sent copy of metadata already recorded as failed: acknowledged, not re-counted.
            if let Some(a) = ack {
                out.push(Effect::Ack(a));
            }
            return;
        }
        if self.failed_recent.len() >= self.cfg.recent_captures.max(1) {
            self.failed_recent.pop_front();
        }
        self.failed_recent.push_back(name.clone());
        let code = u16::try_from(e).ok().filter(|e| *e < 1000).unwrap_or(999);
        let cause = ErrorCode::device_error_cause(code);
        metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "device_error").increment(1);
        if let Some(c) = self.captures.remove(&name) {
            self.release(c.held);
        }
        if let Some(early) = self.early.remove(&name) {
            self.release(early.bytes);
        }
        self.gxp_pending.remove(&name);
        let details = json!({"capture_id": name, "esp32_error_code": e});
        let message = format!("device reported capture error {e}: {cause}");
        if let Some(r) = self.record(ErrorCode::DeviceReported(code), message, details, cx.now) {
            out.push(Effect::Row(Row::Error(r), None));
        }
        let l = meta.layout;
        let state = GxpState::new(meta, cx.now);
        let mut stored_meta = state.meta_json().unwrap_or_else(|| json!({}));
        stored_meta["error"] = json!(e);
        out.push(Effect::Row(
            Row::Capture(CaptureRow {
                device_id: self.id.clone(),
                capture_id: name,
                captured_at: state.meta.captured_at.unwrap_or(cx.wall),
                image_bytes: l.image_bytes.map_or(0, |b| b as i64),
                total_chunks: l.total_chunks.map_or(0, |t| t as i32),
                chunk_size: l.chunk_size.map_or(0, |c| c as i32),
                sha256: None,
                status: IngestStatus::Failed,
                storage_path: None,
                nack_rounds: 0,
                stored_at: None,
                format: WireFormat::Gxp,
                meta: Some(stored_meta),
            }),
            ack,
        ));
    }

    /// The wake handshake: `"Alive"` is answered on `/cmd` with `capture_image` when the
    /// device is due or was never scheduled, else with `next_wake`. From memory, no database
    /// round trip; the next wake is recorded in the book and written through the sink.
    pub(super) fn on_wake(&mut self, wall: DateTime<Utc>, out: &mut Vec<Effect>) {
        self.format = Some(WireFormat::Gxp);
        let (schedule, next) = self.book.get(&self.id);
        let cmd = match answer_wake(&schedule, next, wall) {
            WakeAnswer::Capture { next } => {
                metrics::counter!(m::WAKE_ANSWERS_TOTAL, "answer" => "capture_image").increment(1);
                self.record_next_wake(next, out);
                GxpCommand::CaptureImage
            }
            WakeAnswer::Sleep { until } => {
                metrics::counter!(m::WAKE_ANSWERS_TOTAL, "answer" => "next_wake").increment(1);
                GxpCommand::NextWake(match self.gxp.next_wake_format {
                    WakeFormat::Iso => gxp::iso_utc(until),
                    WakeFormat::Local => schedule.local_clock(until),
                })
            }
        };
        out.push(Effect::Command {
            payload: cmd.payload(self.id.as_str()),
            kind: "command",
        });
    }

    /// `ACK_OK` in the firmware's shape, with the next wake in the device's time zone (set
    /// from its schedule now when none is recorded or it has passed).
    pub(super) fn gxp_ack_ok(
        &mut self,
        image_name: &str,
        wall: DateTime<Utc>,
        out: &mut Vec<Effect>,
    ) -> bytes::Bytes {
        let (schedule, next) = self.book.get(&self.id);
        let next = match next {
            Some(t) if t > wall => t,
            _ => {
                let t = schedule.next_after(wall);
                self.record_next_wake(t, out);
                t
            }
        };
        gxp::ack_ok(
            self.id.as_str(),
            image_name,
            Some(&schedule.local_clock(next)),
        )
    }

    fn record_next_wake(&mut self, at: DateTime<Utc>, out: &mut Vec<Effect>) {
        self.book.set_next_wake(&self.id, at);
        out.push(Effect::Row(
            Row::Wake(WakeRow {
                device_id: self.id.clone(),
                next_wake_at: at,
            }),
            None,
        ));
    }
}

/// Metadata that names a capture and nothing else (its chunks came first with its sizes).
fn bare_meta(image_name: String) -> GxpMeta {
    GxpMeta {
        image_name,
        image_id: None,
        captured_at: None,
        layout: PartialLayout::default(),
        error: None,
        sensors: Default::default(),
        extra: Default::default(),
    }
}

/// The capture's sensor snapshot, once per capture (idempotent on `(device_id, capture_id)`).
fn sensor_row(
    id: &crate::ids::DeviceId,
    g: &mut GxpState,
    measured_at: DateTime<Utc>,
) -> Option<Effect> {
    if g.sensors_written || !g.meta.has_sensors() {
        return None;
    }
    g.sensors_written = true;
    Some(Effect::Row(
        Row::Reading(ReadingRow {
            device_id: id.clone(),
            seq: None,
            capture_id: Some(g.meta.image_name.clone()),
            values: g.meta.sensors.clone(),
            extra: Default::default(),
            measured_at,
            touch_device: false,
        }),
        None,
    ))
}

/// Why a GXP capture's announced sizes are unusable (error 2100).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum LayoutError {
    /// `image_size` is 0 or over the limit.
    #[error("image_size {size} is outside 1..={max}")]
    ImageSize { size: u32, max: u64 },
    /// The chunk size is 0 or over the JSON chunk limit.
    #[error("chunk size {0} is outside 1..={max}", max = gxp::MAX_GXP_CHUNK_BYTES)]
    ChunkSize(u32),
    /// More chunks than the image limit allows.
    #[error("total_chunk_count {total} of {chunk} bytes is outside the image limit")]
    ChunkCount { total: u32, chunk: u32 },
}

/// Sizes a GXP capture may announce: the image within the limit, chunks of 1 byte to the
/// JSON chunk limit, and no more chunks than the limit allows.
fn check_layout(l: Layout, max_image_bytes: u64) -> Result<(), LayoutError> {
    if l.image_bytes == 0 || u64::from(l.image_bytes) > max_image_bytes {
        return Err(LayoutError::ImageSize {
            size: l.image_bytes,
            max: max_image_bytes,
        });
    }
    if l.chunk_size == 0 || l.chunk_size > gxp::MAX_GXP_CHUNK_BYTES {
        return Err(LayoutError::ChunkSize(l.chunk_size));
    }
    let before_last = u64::from(l.total_chunks.max(1) - 1) * u64::from(l.chunk_size);
    if l.total_chunks == 0 || before_last >= max_image_bytes {
        return Err(LayoutError::ChunkCount {
            total: l.total_chunks,
            chunk: l.chunk_size,
        });
    }
    Ok(())
}
