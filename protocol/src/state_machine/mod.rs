//! The device state machine (§2–§5) as pure logic: it takes one inbound message or timer tick and
//! emits [`Effect`]s (rows, publishes, store requests, broker acks). The actor in `actor.rs`
//! carries the effects out, so this file is tested without any I/O. Captures in both device
//! formats share the assembly, timers, budget and validation here; what is particular to the
//! GXP firmware (metadata merging, device-reported errors, the wake handshake, its answer
//! shapes) is in `gxp_flow`.

mod gxp_flow;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Instant;

use crate::assembler::{Assembly, ChunkOutcome, Layout};
use crate::budget::GlobalBudget;
use crate::config::AssemblyConfig;
use crate::errors::{excerpt, Admit, ErrorCode, ErrorRateLimiter, ErrorRecord};
use crate::gxp::{GxpSettings, NackTopic, PartialLayout};
use crate::ids::DeviceId;
pub use crate::message::WireFormat;
use crate::message::{self, CaptureMeta, Chunk, DecodeLimits, DeviceMsg};
use crate::metric_names as m;
use crate::nack;
use crate::rows::{CaptureRow, CommandResultRow, IngestStatus, ReadingRow, Row, StatusRow};
use crate::schedule::ScheduleBook;
use crate::topic::TopicKind;

/// Largest early chunk (before its metadata) that is buffered: the protocol's largest chunk.
const MAX_EARLY_CHUNK_BYTES: usize = crate::gxp::MAX_GXP_CHUNK_BYTES as usize;

/// Stands for the inbound message's broker acknowledgement, which the runtime holds: the state
/// machine only says when it may be sent (after a row commits, or at once).
/// Not `Clone`: exactly one row or one `Effect::Ack` can carry it.
#[derive(Debug, PartialEq, Eq)]
pub struct MessageAck;

/// What the actor must do after the state machine ran.
#[derive(Debug)]
pub enum Effect {
    /// Write a row; ack `ack` to the broker after it commits.
    Row(Row, Option<MessageAck>),
    /// Acknowledge to the broker now (the message needs no further durability).
    Ack(MessageAck),
    /// Publish on the device's ack topic.
    Publish {
        /// JSON payload.
        payload: Bytes,
        /// `ack` or `nack`, for the metric.
        kind: &'static str,
    },
    /// Publish on the device's command topic (the wake handshake, GXP commands).
    Command {
        /// JSON payload.
        payload: Bytes,
        /// `command` or `nack`, for the metric.
        kind: &'static str,
    },
    /// Write an image to object storage, then its captures row, then report back.
    Store(StoreRequest),
}

/// A complete image to store.
#[derive(Debug, Clone)]
pub struct StoreRequest {
    /// The format the capture came in (object key and row).
    pub format: WireFormat,
    /// GXP metadata kept as it came (location, image_id, …), for `captures.meta`.
    pub meta: Option<serde_json::Value>,
    /// The device.
    pub device_id: DeviceId,
    /// The device's capture id.
    pub capture_id: String,
    /// Dates the object key.
    pub captured_at: DateTime<Utc>,
    /// The image.
    pub image: Bytes,
    /// Sizes.
    pub layout: Layout,
    /// Announced checksum.
    pub sha256: Option<String>,
    /// NACK rounds used.
    pub nack_rounds: u32,
    /// When the last chunk arrived, for the end-to-end latency metric.
    pub completed_at: Instant,
}

impl StoreRequest {
    /// `captures/{device_id}/{YYYY}/{MM}/{DD}/{capture_id}.jpg` (§4.4); for GXP captures the
    /// image name, which already ends in `.jpg`.
    pub fn object_key(&self) -> String {
        let ext = match self.format {
            WireFormat::V1 => ".jpg",
            WireFormat::Gxp => "",
        };
        format!(
            "captures/{}/{}/{}{ext}",
            self.device_id,
            self.captured_at.format("%Y/%m/%d"),
            self.capture_id
        )
    }

    /// The captures row for an outcome.
    pub fn row(&self, status: IngestStatus, stored_at: Option<DateTime<Utc>>) -> CaptureRow {
        CaptureRow {
            device_id: self.device_id.clone(),
            capture_id: self.capture_id.clone(),
            captured_at: self.captured_at,
            image_bytes: i64::from(self.layout.image_bytes),
            total_chunks: self.layout.total_chunks as i32,
            chunk_size: self.layout.chunk_size as i32,
            sha256: self.sha256.clone(),
            status,
            storage_path: (status == IngestStatus::Stored).then(|| self.object_key()),
            nack_rounds: self.nack_rounds as i32,
            stored_at,
            format: self.format,
            meta: self.meta.clone(),
        }
    }
}

/// The message being handled, for error details.
struct MsgCtx<'a> {
    kind: &'a TopicKind,
    payload: &'a Bytes,
    now: Instant,
    wall: DateTime<Utc>,
}

/// How a store request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Object written and row committed.
    Stored {
        /// Commit time.
        stored_at: DateTime<Utc>,
    },
    /// Failed; the failed row was written when it could be.
    Failed {
        /// Why.
        reason: String,
        /// 2204 (upload failed after retries), 2205 (the captures row could not be
        /// written) or 2200 (finalising failed: a sink was unavailable).
        code: ErrorCode,
    },
}

#[derive(Debug)]
enum Phase {
    Assembling(Assembly),
    Storing,
}

#[derive(Debug)]
struct Capture {
    format: WireFormat,
    /// GXP: the merged metadata and whether its sensor row was written.
    gxp: Option<Box<gxp_flow::GxpState>>,
    layout: Layout,
    captured_at: DateTime<Utc>,
    sha256: Option<String>,
    phase: Phase,
    last_activity: Instant,
    nack_rounds: u32,
    held: usize,
}

#[derive(Debug)]
struct Early {
    chunks: Vec<(u32, Bytes)>,
    bytes: usize,
    first_at: Instant,
    format: WireFormat,
    /// GXP: sizes the chunks carried.
    layout: PartialLayout,
}

#[derive(Debug, Clone)]
struct Recent {
    capture_id: String,
    image_bytes: u32,
    stored_at: DateTime<Utc>,
    format: WireFormat,
    /// When `ACK_OK` was last sent, so that the GXP metadata re-send quirk (30-50 copies) gets
    /// one answer per [`REANSWER_AFTER`], not one per copy.
    answered_at: Instant,
}

/// Least time between two `ACK_OK`s for a stored GXP capture's re-sent metadata.
const REANSWER_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// One device's state: in-flight assemblies, early chunks, recently stored captures.
#[derive(Debug)]
pub struct DeviceCore {
    id: DeviceId,
    cfg: Arc<AssemblyConfig>,
    budget: Arc<GlobalBudget>,
    captures: HashMap<String, Capture>,
    early: HashMap<String, Early>,
    /// GXP metadata whose sizes are not all known yet (copies with nulls); bounded by
    /// `max_captures_in_flight` with `captures`.
    gxp_pending: HashMap<String, gxp_flow::GxpState>,
    recent: VecDeque<Recent>,
    /// GXP captures the device reported failed (1000 + e), so re-sent copies are not recounted.
    failed_recent: VecDeque<String>,
    held: usize,
    errors: ErrorRateLimiter<ErrorCode>,
    last_touch: Option<Instant>,
    /// The format of this device's latest capture or wake hello.
    format: Option<WireFormat>,
    /// The GXP profile's settings of the product this device's messages come from.
    gxp: Arc<GxpSettings>,
    /// Schedules and next wakes.
    book: Arc<ScheduleBook>,
}

/// How often readings refresh `devices.last_seen_at` (status messages always do).
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for DeviceCore {
    fn drop(&mut self) {
        // A stopped or crashed actor gives its bytes back; the device resends through NACKs.
        self.budget.release(self.held);
    }
}

impl DeviceCore {
    /// Fresh state for a device (also after a restart).
    pub fn new(
        id: DeviceId,
        cfg: Arc<AssemblyConfig>,
        budget: Arc<GlobalBudget>,
        book: Arc<ScheduleBook>,
    ) -> Self {
        let per_minute = cfg.error_rows_per_minute;
        Self {
            id,
            cfg,
            budget,
            captures: HashMap::new(),
            early: HashMap::new(),
            gxp_pending: HashMap::new(),
            recent: VecDeque::new(),
            failed_recent: VecDeque::new(),
            held: 0,
            errors: ErrorRateLimiter::new(per_minute),
            last_touch: None,
            format: None,
            gxp: Arc::new(GxpSettings::default()),
            book,
        }
    }

    /// Uses the GXP settings of the product the device's messages come from.
    pub fn set_gxp_settings(&mut self, settings: Arc<GxpSettings>) {
        self.gxp = settings;
    }

    /// The format of the device's latest capture or wake hello, if any.
    pub fn format(&self) -> Option<WireFormat> {
        self.format
    }

    /// The device.
    pub fn id(&self) -> &DeviceId {
        &self.id
    }

    /// Captures in flight (assembling or storing).
    pub fn in_flight(&self) -> usize {
        self.captures.len()
    }

    /// Bytes held by this device.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Whether nothing is in flight, so the actor may be passivated.
    pub fn is_idle(&self) -> bool {
        self.captures.is_empty() && self.early.is_empty() && self.gxp_pending.is_empty()
    }

    /// Handles one inbound message.
    pub fn handle(
        &mut self,
        kind: &TopicKind,
        payload: &Bytes,
        ack: Option<MessageAck>,
        now: Instant,
        wall: DateTime<Utc>,
        out: &mut Vec<Effect>,
    ) {
        let cx = MsgCtx {
            kind,
            payload,
            now,
            wall,
        };
        let cx = &cx;
        let limits = DecodeLimits {
            max_image_bytes: self.cfg.max_image_bytes,
            gas_unit: self.gxp.gas_unit,
        };
        let msg = match message::decode(kind, payload, limits) {
            Ok(msg) => msg,
            Err(e) => {
                self.error(e.code, e.message, e.capture_id.as_deref(), cx, out);
                if let Some(a) = ack {
                    out.push(Effect::Ack(a));
                }
                return;
            }
        };
        match msg {
            DeviceMsg::Status(s) => {
                let row = self.on_status(s, wall, out);
                out.push(Effect::Row(row, ack));
            }
            DeviceMsg::Reading(r) => {
                let row = self.reading_row(r, now, wall);
                out.push(Effect::Row(row, ack));
            }
            DeviceMsg::CmdResult(c) => {
                metrics::counter!(m::MESSAGES_TOTAL, "kind" => "cmd_result").increment(1);
                let row = CommandResultRow {
                    device_id: self.id.clone(),
                    result: json!({"ok": c.ok, "detail": c.detail}),
                    command_id: c.command_id,
                    ok: c.ok,
                    completed_at: wall,
                };
                out.push(Effect::Row(Row::CommandResult(row), ack));
            }
            capture => {
                // Capture messages need no durability of their own: the device keeps the image
                // until ACK_OK, and NACKs resynchronise whatever a crash loses. (A device-reported
                // error is the exception: its row carries the ack.)
                self.on_capture_msg(capture, ack, cx, out);
            }
        }
    }

    /// A status heartbeat: its row, and the wake handshake's answer for `"Alive"`.
    fn on_status(&mut self, s: message::Status, wall: DateTime<Utc>, out: &mut Vec<Effect>) -> Row {
        metrics::counter!(m::MESSAGES_TOTAL, "kind" => "status").increment(1);
        if s.is_wake() {
            self.on_wake(wall, out);
        }
        Row::Status(StatusRow {
            device_id: self.id.clone(),
            wire_format: s.is_wake().then_some(WireFormat::Gxp.as_str()),
            status: s.status,
            pending_count: s.pending_count,
            battery_v: s.battery_v,
            rssi: s.rssi,
            uptime_s: s.uptime_s,
            fw: s.fw,
            extra: s.extra,
            created_at: s.ts.unwrap_or(wall),
        })
    }

    /// A reading's row; it refreshes `devices.last_seen_at` at most every [`TOUCH_EVERY`].
    fn reading_row(&mut self, r: message::Reading, now: Instant, wall: DateTime<Utc>) -> Row {
        metrics::counter!(m::MESSAGES_TOTAL, "kind" => "reading").increment(1);
        let touch_device = self
            .last_touch
            .is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY);
        if touch_device {
            self.last_touch = Some(now);
        }
        Row::Reading(ReadingRow {
            touch_device,
            device_id: self.id.clone(),
            seq: Some(r.seq as i64),
            capture_id: None,
            values: r.values,
            extra: r.extra,
            measured_at: r.ts.unwrap_or(wall),
        })
    }

    /// Capture metadata and chunks, in either format.
    fn on_capture_msg(
        &mut self,
        msg: DeviceMsg,
        ack: Option<MessageAck>,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let mut ack = ack;
        if !matches!(msg, DeviceMsg::GxpMeta(_)) {
            if let Some(a) = ack.take() {
                out.push(Effect::Ack(a));
            }
        }
        let kind = match &msg {
            DeviceMsg::CaptureMeta(_) | DeviceMsg::GxpMeta(_) => "capture_meta",
            _ => "chunk",
        };
        metrics::counter!(m::MESSAGES_TOTAL, "kind" => kind).increment(1);
        match msg {
            DeviceMsg::CaptureMeta(meta) => {
                self.format = Some(WireFormat::V1);
                self.on_meta(meta, cx, out);
            }
            DeviceMsg::Chunk(chunk) => {
                self.format = Some(WireFormat::V1);
                self.on_chunk(chunk, WireFormat::V1, cx, out);
            }
            DeviceMsg::GxpMeta(meta) => {
                self.format = Some(WireFormat::Gxp);
                self.on_gxp_meta(meta, ack, cx, out);
            }
            DeviceMsg::GxpChunk(chunk) => {
                self.format = Some(WireFormat::Gxp);
                self.on_gxp_chunk(chunk, cx, out);
            }
            DeviceMsg::Status(_) | DeviceMsg::Reading(_) | DeviceMsg::CmdResult(_) => {}
        }
    }

    fn on_meta(&mut self, meta: CaptureMeta, cx: &MsgCtx<'_>, out: &mut Vec<Effect>) {
        let (now, wall) = (cx.now, cx.wall);
        let layout = Layout {
            image_bytes: meta.image_bytes as u32,
            chunk_size: meta.chunk_size,
            total_chunks: meta.total_chunks,
        };
        if self.answer_if_stored(&meta.capture_id, cx, out) {
            return;
        }
        if let Some(c) = self.captures.get(&meta.capture_id) {
            if c.layout == layout || matches!(c.phase, Phase::Storing) {
                // A retransmission: ignored, the assembly keeps its chunks. It does not count as
                // activity: a device that resends metadata while waiting must still get the
                // missing-chunks NACK when the inactivity timeout passes.
                return;
            }
            // Different sizes: restart the assembly.
            let old = self
                .captures
                .remove(&meta.capture_id)
                .map(|c| c.held)
                .unwrap_or(0);
            self.release(old);
        }
        let Some(need) = self.reserve(&meta.capture_id, layout, cx, out) else {
            return;
        };
        let captured_at = meta.captured_at.unwrap_or(wall);
        if let Some(sensors) = meta.sensors {
            let row = ReadingRow {
                device_id: self.id.clone(),
                seq: None,
                capture_id: Some(meta.capture_id.clone()),
                values: sensors,
                extra: Default::default(),
                measured_at: captured_at,
                touch_device: false,
            };
            out.push(Effect::Row(Row::Reading(row), None));
        }
        let capture = Capture {
            format: WireFormat::V1,
            gxp: None,
            layout,
            captured_at,
            sha256: meta.sha256.map(|s| s.to_ascii_lowercase()),
            phase: Phase::Assembling(Assembly::new(layout)),
            last_activity: now,
            nack_rounds: 0,
            held: need,
        };
        self.captures.insert(meta.capture_id.clone(), capture);
        self.apply_early(&meta.capture_id, WireFormat::V1, cx, out);
    }

    /// Answers metadata for a capture already stored with `ACK_OK` again (§4.1), in the
    /// capture's format. Returns whether it was one.
    fn answer_if_stored(
        &mut self,
        capture_id: &str,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) -> bool {
        let wall = cx.wall;
        let Some(r) = self.recent.iter_mut().find(|r| r.capture_id == capture_id) else {
            return false;
        };
        if r.format == WireFormat::Gxp && cx.now.duration_since(r.answered_at) < REANSWER_AFTER {
            return true;
        }
        r.answered_at = cx.now;
        let r = r.clone();
        let payload = match r.format {
            WireFormat::V1 => nack::ack_ok(&r.capture_id, r.image_bytes, r.stored_at),
            WireFormat::Gxp => self.gxp_ack_ok(&r.capture_id, wall, out),
        };
        out.push(Effect::Publish {
            payload,
            kind: "ack",
        });
        true
    }

    /// Reserves the bytes of a new assembly within the capture count and both byte budgets,
    /// or records 2209 and returns `None`.
    fn reserve(
        &mut self,
        capture_id: &str,
        layout: Layout,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) -> Option<usize> {
        if self.captures.len() >= self.cfg.max_captures_in_flight {
            let msg = format!(
                "{} captures already in flight (max {})",
                self.captures.len(),
                self.cfg.max_captures_in_flight
            );
            self.error(ErrorCode::OverBudget, msg, Some(capture_id), cx, out);
            return None;
        }
        let need = layout.image_bytes as usize + (layout.total_chunks as usize).div_ceil(64) * 8;
        if self.held + need > self.cfg.device_budget_bytes || !self.budget.try_reserve(need) {
            let msg = format!(
                "capture of {} bytes exceeds the byte budget",
                layout.image_bytes
            );
            self.error(ErrorCode::OverBudget, msg, Some(capture_id), cx, out);
            return None;
        }
        self.held += need;
        metrics::counter!(m::ASSEMBLIES_STARTED_TOTAL).increment(1);
        Some(need)
    }

    /// Feeds the chunks that arrived before the capture's metadata into its new assembly.
    fn apply_early(
        &mut self,
        capture_id: &str,
        format: WireFormat,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(early) = self.early.remove(capture_id) {
            self.release(early.bytes);
            for (index, data) in early.chunks {
                let chunk = Chunk {
                    capture_id: capture_id.to_owned(),
                    index,
                    data,
                };
                self.on_chunk(chunk, format, cx, out);
            }
        }
    }

    fn on_chunk(
        &mut self,
        chunk: Chunk,
        format: WireFormat,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let Some(c) = self.captures.get_mut(&chunk.capture_id) else {
            if self.recent.iter().any(|r| r.capture_id == chunk.capture_id) {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
                return;
            }
            self.buffer_early(chunk, format, PartialLayout::default(), cx, out);
            return;
        };
        c.last_activity = now;
        let Phase::Assembling(asm) = &mut c.phase else {
            metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
            return;
        };
        let outcome = asm.add(chunk.index, &chunk.data);
        let problem = match outcome {
            ChunkOutcome::Accepted => {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "accepted").increment(1);
                None
            }
            ChunkOutcome::Duplicate => {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
                None
            }
            ChunkOutcome::Complete => {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "accepted").increment(1);
                self.complete(&chunk.capture_id, now, out);
                None
            }
            ChunkOutcome::OutOfRange => Some(format!(
                "chunk index {} is out of range 0..{}",
                chunk.index,
                asm.layout().total_chunks
            )),
            ChunkOutcome::WrongLength { expected, got } => Some(format!(
                "chunk {} is {got} bytes, expected {expected}",
                chunk.index
            )),
            ChunkOutcome::Conflict => Some(format!(
                "duplicate chunk {} with different bytes; the first copy is kept",
                chunk.index
            )),
        };
        if let Some(msg) = problem {
            metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "rejected").increment(1);
            self.error(ErrorCode::BadChunk, msg, Some(&chunk.capture_id), cx, out);
        }
    }

    fn buffer_early(
        &mut self,
        chunk: Chunk,
        format: WireFormat,
        layout: PartialLayout,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let n = chunk.data.len();
        let fits = n <= MAX_EARLY_CHUNK_BYTES
            && (self.early.contains_key(&chunk.capture_id)
                || self.early.len() + self.captures.len() < self.cfg.max_captures_in_flight)
            && self.held + n <= self.cfg.device_budget_bytes
            && self.budget.try_reserve(n);
        if !fits {
            let id = chunk.capture_id.clone();
            let msg = format!(
                "chunk {} for unknown capture {id} and no room to buffer it",
                chunk.index
            );
            self.error(ErrorCode::UnknownCapture, msg, Some(&id), cx, out);
            if format == WireFormat::V1 {
                out.push(Effect::Publish {
                    payload: nack::need_metadata(&id),
                    kind: "nack",
                });
                metrics::counter!(m::NACKS_TOTAL, "reason" => "need_metadata").increment(1);
            }
            return;
        }
        metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "buffered").increment(1);
        self.held += n;
        let e = self.early.entry(chunk.capture_id).or_insert_with(|| Early {
            chunks: Vec::new(),
            bytes: 0,
            first_at: now,
            format,
            layout: PartialLayout::default(),
        });
        e.layout.merge(&layout);
        e.bytes += n;
        e.chunks.push((chunk.index, chunk.data));
    }

    fn complete(&mut self, capture_id: &str, now: Instant, out: &mut Vec<Effect>) {
        let Some(c) = self.captures.get_mut(capture_id) else {
            return;
        };
        if c.gxp.as_ref().is_some_and(|g| !g.meta_seen) {
            // A GXP image whose chunks all came before its metadata waits for it (capture time,
            // sensors), until the inactivity timeout (see `nack_idle_captures`).
            return;
        }
        let Phase::Assembling(asm) = &mut c.phase else {
            return;
        };
        if let Some(expected) = &c.sha256 {
            if !asm.verify_sha256(expected) {
                let total = c.layout.total_chunks;
                asm.reset();
                c.nack_rounds += 1;
                let rec = self.record(
                    ErrorCode::ChecksumMismatch,
                    "sha256 of the assembled image does not match".into(),
                    json!({"capture_id": capture_id}),
                    now,
                );
                if let Some(r) = rec {
                    out.push(Effect::Row(Row::Error(r), None));
                }
                out.push(Effect::Publish {
                    payload: nack::checksum(capture_id, total),
                    kind: "nack",
                });
                metrics::counter!(m::NACKS_TOTAL, "reason" => "checksum").increment(1);
                return;
            }
        }
        if let Some((code, message, details)) = invalid_image(asm, c.layout) {
            metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "invalid").increment(1);
            self.fail_capture(capture_id, code, message, details, now, out);
            return;
        }
        let Phase::Assembling(asm) = std::mem::replace(&mut c.phase, Phase::Storing) else {
            return;
        };
        out.push(Effect::Store(StoreRequest {
            format: c.format,
            meta: c.gxp.as_ref().and_then(|g| g.meta_json()),
            device_id: self.id.clone(),
            capture_id: capture_id.to_owned(),
            captured_at: c.captured_at,
            image: asm.into_image(),
            layout: c.layout,
            sha256: c.sha256.clone(),
            nack_rounds: c.nack_rounds,
            completed_at: now,
        }));
    }

    /// Ends a capture as `failed`: frees its bytes, records the error and writes the row.
    fn fail_capture(
        &mut self,
        capture_id: &str,
        code: ErrorCode,
        message: String,
        details: serde_json::Value,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(c) = self.captures.remove(capture_id) else {
            return;
        };
        self.release(c.held);
        let mut details = details;
        if let Some(o) = details.as_object_mut() {
            o.entry("capture_id").or_insert_with(|| json!(capture_id));
        }
        if let Some(r) = self.record(code, message, details, now) {
            out.push(Effect::Row(Row::Error(r), None));
        }
        out.push(Effect::Row(
            Row::Capture(CaptureRow {
                device_id: self.id.clone(),
                capture_id: capture_id.to_owned(),
                captured_at: c.captured_at,
                image_bytes: i64::from(c.layout.image_bytes),
                total_chunks: c.layout.total_chunks as i32,
                chunk_size: c.layout.chunk_size as i32,
                sha256: c.sha256,
                status: IngestStatus::Failed,
                storage_path: None,
                nack_rounds: c.nack_rounds as i32,
                stored_at: None,
                format: c.format,
                meta: c.gxp.as_ref().and_then(|g| g.meta_json()),
            }),
            None,
        ));
    }

    /// Reports the end of a store request.
    pub fn on_stored(
        &mut self,
        capture_id: &str,
        outcome: StoreOutcome,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(c) = self.captures.remove(capture_id) else {
            return;
        };
        self.release(c.held);
        match outcome {
            StoreOutcome::Stored { stored_at } => {
                metrics::counter!(m::CAPTURES_STORED_TOTAL).increment(1);
                let payload = match c.format {
                    WireFormat::V1 => nack::ack_ok(capture_id, c.layout.image_bytes, stored_at),
                    WireFormat::Gxp => self.gxp_ack_ok(capture_id, Utc::now(), out),
                };
                out.push(Effect::Publish {
                    payload,
                    kind: "ack",
                });
                if self.recent.len() >= self.cfg.recent_captures.max(1) {
                    self.recent.pop_front();
                }
                self.recent.push_back(Recent {
                    capture_id: capture_id.to_owned(),
                    image_bytes: c.layout.image_bytes,
                    stored_at,
                    format: c.format,
                    answered_at: now,
                });
            }
            StoreOutcome::Failed { reason, code } => {
                metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "storage").increment(1);
                let what = match code {
                    ErrorCode::CaptureRowFailed => "the captures row could not be written",
                    ErrorCode::FinaliseFailed => "finalising the capture failed",
                    _ => "storage upload failed after retries",
                };
                if let Some(r) = self.record(
                    code,
                    format!("{what}: {reason}"),
                    json!({"capture_id": capture_id}),
                    now,
                ) {
                    out.push(Effect::Row(Row::Error(r), None));
                }
                // The GXP firmware has no storage NACK: it keeps the image pending and offers
                // it again at its next wake.
                if c.format == WireFormat::V1 {
                    out.push(Effect::Publish {
                        payload: nack::storage(capture_id),
                        kind: "nack",
                    });
                    metrics::counter!(m::NACKS_TOTAL, "reason" => "storage").increment(1);
                }
            }
        }
    }

    /// Runs the inactivity timeouts. Returns the next instant at which a tick is needed.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) -> Option<Instant> {
        let (failed, waited) = self.nack_idle_captures(now, out);
        for id in waited {
            self.complete(&id, now, out);
        }
        for id in failed {
            metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "timeout").increment(1);
            let Some(c) = self.captures.get(&id) else {
                continue;
            };
            let (rounds, format) = (c.nack_rounds, c.format);
            let missing = match &c.phase {
                Phase::Assembling(a) => a.layout().total_chunks - a.received_count(),
                Phase::Storing => 0,
            };
            if format == WireFormat::Gxp && self.gxp.resend_whole_image_after_retries {
                let cmd = crate::gxp::GxpCommand::SendImage(id.clone());
                out.push(Effect::Command {
                    payload: cmd.payload(self.id.as_str()),
                    kind: "command",
                });
            }
            let message = format!(
                "assembly timed out after {rounds} NACK rounds with {missing} chunks missing"
            );
            let details = json!({"capture_id": id, "missing_chunks": missing});
            self.fail_capture(&id, ErrorCode::AssemblyTimeout, message, details, now, out);
        }
        self.expire_early(now, out);
        self.errors.prune(now);
        self.next_deadline()
    }

    /// Sends a missing-chunks NACK, in each capture's format, for every capture idle past the
    /// timeout; returns those whose rounds are used up, and the complete GXP images that
    /// waited for their metadata long enough (stored without it).
    fn nack_idle_captures(
        &mut self,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> (Vec<String>, Vec<String>) {
        let timeout = self.cfg.timeout();
        let max_rounds = self.cfg.max_nack_rounds;
        let (mut failed, mut waited) = (Vec::new(), Vec::new());
        for (id, c) in self.captures.iter_mut() {
            let Phase::Assembling(asm) = &c.phase else {
                continue;
            };
            if now.duration_since(c.last_activity) < timeout {
                continue;
            }
            if asm.is_complete() {
                if let Some(g) = c.gxp.as_mut() {
                    g.meta_seen = true;
                }
                waited.push(id.clone());
                continue;
            }
            if c.nack_rounds >= max_rounds {
                failed.push(id.clone());
                continue;
            }
            c.nack_rounds += 1;
            c.last_activity = now;
            let ranges = asm.missing_ranges();
            let effect = match c.format {
                WireFormat::V1 => Effect::Publish {
                    payload: nack::missing(id, &ranges, c.nack_rounds),
                    kind: "nack",
                },
                WireFormat::Gxp => {
                    let g = &self.gxp;
                    let payload = crate::gxp::nack(self.id.as_str(), id, &ranges, g.nack_max_bytes);
                    match g.nack_topic {
                        NackTopic::Ack => Effect::Publish {
                            payload,
                            kind: "nack",
                        },
                        NackTopic::Cmd => Effect::Command {
                            payload,
                            kind: "nack",
                        },
                    }
                }
            };
            out.push(effect);
            metrics::counter!(m::NACKS_TOTAL, "reason" => "missing_chunks").increment(1);
        }
        (failed, waited)
    }

    /// Drops chunks whose metadata never came (2208), asking v1 devices for the metadata.
    fn expire_early(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let timeout = self.cfg.timeout();
        let stale: Vec<String> = self
            .early
            .iter()
            .filter(|(_, e)| now.duration_since(e.first_at) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for id in stale {
            let Some(e) = self.early.remove(&id) else {
                continue;
            };
            self.release(e.bytes);
            self.gxp_pending.remove(&id);
            if let Some(r) = self.record(
                ErrorCode::UnknownCapture,
                format!(
                    "{} chunks for capture {id} arrived without metadata",
                    e.chunks.len()
                ),
                json!({"capture_id": id}),
                now,
            ) {
                out.push(Effect::Row(Row::Error(r), None));
            }
            match e.format {
                WireFormat::V1 => out.push(Effect::Publish {
                    payload: nack::need_metadata(&id),
                    kind: "nack",
                }),
                // The firmware has no "need metadata" NACK; its send_image command makes it send
                // the stored image again, metadata first (after a crash lost the assembly).
                WireFormat::Gxp => out.push(Effect::Command {
                    payload: crate::gxp::GxpCommand::SendImage(id.clone())
                        .payload(self.id.as_str()),
                    kind: "nack",
                }),
            }
            metrics::counter!(m::NACKS_TOTAL, "reason" => "need_metadata").increment(1);
        }
        // GXP metadata that never got its sizes, with no chunk waiting either.
        let early = &self.early;
        self.gxp_pending
            .retain(|id, p| early.contains_key(id) || now.duration_since(p.since) < timeout);
    }

    /// The earliest instant a tick has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.cfg.timeout();
        let a = self
            .captures
            .values()
            .filter(|c| matches!(c.phase, Phase::Assembling(_)))
            .map(|c| c.last_activity + timeout);
        let e = self.early.values().map(|e| e.first_at + timeout);
        let p = self.gxp_pending.values().map(|p| p.since + timeout);
        a.chain(e).chain(p).min()
    }

    fn release(&mut self, n: usize) {
        self.held -= n.min(self.held);
        self.budget.release(n);
    }

    fn error(
        &mut self,
        code: ErrorCode,
        message: String,
        capture_id: Option<&str>,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let details = json!({
            "topic_kind": cx.kind.label(),
            "capture_id": capture_id,
            "payload_excerpt": excerpt(cx.payload),
            "payload_bytes": cx.payload.len(),
        });
        tracing::debug!(device = %self.id, code = code.code(), %message, "device error");
        if let Some(r) = self.record(code, message, details, cx.now) {
            out.push(Effect::Row(Row::Error(r), None));
        }
    }

    /// Counts an error and returns its row unless rate-limited.
    fn record(
        &mut self,
        code: ErrorCode,
        message: String,
        mut details: serde_json::Value,
        now: Instant,
    ) -> Option<ErrorRecord> {
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.label()).increment(1);
        match self.errors.admit(code, now) {
            Admit::Write { suppressed } => {
                if suppressed > 0 {
                    details["suppressed_before"] = json!(suppressed);
                }
                Some(ErrorRecord {
                    device_id: self.id.to_string(),
                    code,
                    message,
                    details,
                    occurred_at: Utc::now(),
                })
            }
            Admit::Suppress => {
                metrics::counter!(m::ERROR_ROWS_SUPPRESSED_TOTAL, "code" => code.label())
                    .increment(1);
                None
            }
        }
    }
}

/// Validation before storing, in either format: the declared size (2202), then the JPEG
/// markers `FF D8` … `FF D9` (2203).
fn invalid_image(asm: &Assembly, layout: Layout) -> Option<(ErrorCode, String, serde_json::Value)> {
    let actual = asm.assembled_len();
    let declared = layout.image_bytes as usize;
    if actual != declared {
        return Some((
            ErrorCode::SizeMismatch,
            format!("size mismatch: declared {declared}, actual {actual}"),
            json!({"declared": declared, "actual": actual}),
        ));
    }
    if !asm.is_jpeg() {
        return Some((
            ErrorCode::NotJpeg,
            "invalid JPEG: missing SOI (FF D8) or EOI (FF D9) marker".into(),
            json!({}),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_clock::{advance, now};

    fn core() -> DeviceCore {
        let cfg = AssemblyConfig {
            assembly_timeout_ms: 1000,
            max_nack_rounds: 2,
            ..AssemblyConfig::default()
        };
        DeviceCore::new(
            DeviceId::parse("AABBCCDDEEFF").unwrap(),
            Arc::new(cfg),
            Arc::new(GlobalBudget::new(1 << 30)),
            Arc::new(ScheduleBook::new()),
        )
    }

    fn gxp_meta(name: &str, size: usize, chunk: usize, total: usize) -> Bytes {
        Bytes::from(format!(
            r#"{{"device_id":"AABBCCDDEEFF","capture_timeStamp":"2025-10-04T18:30:00Z","image_name":"{name}","image_size":{size},"max_chunks_size":{chunk},"total_chunk_count":{total},"location":"lab","error":0,"temperature":22.5,"humidity":50.0,"pressure":1013.25,"gas_resistance":54321.0}}"#
        ))
    }

    fn gxp_chunk(name: &str, i: usize, data: &[u8]) -> Bytes {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        Bytes::from(format!(
            r#"{{"device_id":"AABBCCDDEEFF","image_name":"{name}","chunk_id":{i},"max_chunk_size":2,"payload":"{b64}"}}"#
        ))
    }

    fn send(c: &mut DeviceCore, kind: &TopicKind, p: Bytes, out: &mut Vec<Effect>) {
        c.handle(kind, &p, None, now(), Utc::now(), out);
    }

    fn rows(out: &[Effect]) -> Vec<&Row> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Row(r, _) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gxp_capture_is_nacked_with_a_plain_index_list_only_after_the_timeout() {
        let mut c = core();
        let mut out = Vec::new();
        let img: Vec<u8> = [0xFF, 0xD8]
            .into_iter()
            .chain(0..16)
            .chain([0xFF, 0xD9])
            .collect();
        send(
            &mut c,
            &TopicKind::Data,
            gxp_meta("i.jpg", 20, 2, 10),
            &mut out,
        );
        for i in (0..10).filter(|i| *i != 3 && *i != 9) {
            send(
                &mut c,
                &TopicKind::Data,
                gxp_chunk("i.jpg", i, &img[i * 2..i * 2 + 2]),
                &mut out,
            );
        }
        assert!(
            publishes(&out).is_empty(),
            "no NACK right after the metadata"
        );
        let snapshot = rows(&out).into_iter().find_map(|r| match r {
            Row::Reading(r) => Some(r.clone()),
            _ => None,
        });
        let snapshot = snapshot.expect("the sensor snapshot");
        assert_eq!(snapshot.capture_id.as_deref(), Some("i.jpg"));
        assert_eq!(snapshot.values.gas_kohm, Some(54.321));
        out.clear();
        advance(std::time::Duration::from_millis(1000));
        c.tick(now(), &mut out);
        assert_eq!(
            publishes(&out),
            vec![
                serde_json::json!({"device_id":"AABBCCDDEEFF","image_name":"i.jpg","missing_chunks":[3,9]})
            ]
        );
        out.clear();
        send(
            &mut c,
            &TopicKind::Data,
            gxp_chunk("i.jpg", 3, &img[6..8]),
            &mut out,
        );
        send(
            &mut c,
            &TopicKind::Data,
            gxp_chunk("i.jpg", 9, &img[18..20]),
            &mut out,
        );
        let store = out.iter().find_map(|e| match e {
            Effect::Store(r) => Some(r.clone()),
            _ => None,
        });
        let store = store.expect("stored once complete");
        assert_eq!(&store.image[..], &img[..]);
        assert_eq!(store.object_key(), "captures/AABBCCDDEEFF/2025/10/04/i.jpg");
        out.clear();
        c.on_stored(
            "i.jpg",
            StoreOutcome::Stored {
                stored_at: Utc::now(),
            },
            now(),
            &mut out,
        );
        let ack = &publishes(&out)[0];
        assert_eq!(ack["image_name"], "i.jpg");
        assert!(ack["ACK_OK"]["next_wake_time"]
            .as_str()
            .unwrap()
            .ends_with('M'));
    }

    #[test]
    fn gxp_size_mismatch_and_bad_jpeg_fail_the_capture_without_ack() {
        for (name, bytes, declared, code) in [
            (
                "size.jpg",
                vec![0xFF, 0xD8, 0xAA, 0xBB, 0xFF, 0xD9],
                100,
                ErrorCode::SizeMismatch,
            ),
            (
                "soi.jpg",
                vec![0xAA, 0xBB, 0xCC, 0xDD, 0xFF, 0xD9],
                6,
                ErrorCode::NotJpeg,
            ),
        ] {
            let mut c = core();
            let mut out = Vec::new();
            send(
                &mut c,
                &TopicKind::Data,
                gxp_meta(name, declared, 2, 3),
                &mut out,
            );
            for i in 0..3 {
                send(
                    &mut c,
                    &TopicKind::Data,
                    gxp_chunk(name, i, &bytes[i * 2..i * 2 + 2]),
                    &mut out,
                );
            }
            assert!(!out.iter().any(|e| matches!(e, Effect::Store(_))), "{name}");
            assert!(publishes(&out).is_empty(), "{name}: no ACK_OK");
            let rs = rows(&out);
            assert!(
                rs.iter()
                    .any(|r| matches!(r, Row::Error(e) if e.code == code)),
                "{name}"
            );
            assert!(rs
                .iter()
                .any(|r| matches!(r, Row::Capture(c) if c.status == IngestStatus::Failed)));
            assert!(c.is_idle() && c.held_bytes() == 0);
        }
    }

    #[test]
    fn a_device_reported_error_is_1000_plus_e_and_fails_the_capture_at_once() {
        let mut c = core();
        let mut out = Vec::new();
        let meta = br#"{"device_id":"ERROR105","image_name":"unknown_error.jpg","image_size":0,"max_chunks_size":1024,"total_chunk_count":0,"error":99}"#;
        send(&mut c, &TopicKind::Data, Bytes::from_static(meta), &mut out);
        let rs = rows(&out);
        let err = rs.iter().find_map(|r| match r {
            Row::Error(e) => Some(e.clone()),
            _ => None,
        });
        let err = err.expect("an error row");
        assert_eq!(err.code.code(), 1099);
        assert!(err.message.contains("unknown"), "{}", err.message);
        assert!(rs.iter().any(|r| matches!(r, Row::Capture(c) if c.status == IngestStatus::Failed && c.capture_id == "unknown_error.jpg")));
        assert!(c.is_idle());
    }

    #[test]
    fn alive_gets_capture_image_then_next_wake_from_memory() {
        let mut c = core();
        let mut out = Vec::new();
        let alive =
            Bytes::from_static(br#"{"device_id":"AABBCCDDEEFF","status":"Alive","pendingImg":1}"#);
        send(&mut c, &TopicKind::Status, alive.clone(), &mut out);
        let cmd = |out: &[Effect]| -> Vec<serde_json::Value> {
            out.iter()
                .filter_map(|e| match e {
                    Effect::Command { payload, .. } => serde_json::from_slice(payload).ok(),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            cmd(&out),
            vec![serde_json::json!({"device_id":"AABBCCDDEEFF","capture_image":true})]
        );
        assert!(
            rows(&out).iter().any(|r| matches!(r, Row::Wake(_))),
            "next wake recorded"
        );
        assert!(rows(&out).iter().any(
            |r| matches!(r, Row::Status(s) if s.status == "Alive" && s.pending_count == Some(1))
        ));
        out.clear();
        send(&mut c, &TopicKind::Status, alive, &mut out);
        let second = cmd(&out);
        assert_eq!(second.len(), 1);
        assert!(
            second[0]["next_wake"].as_str().unwrap().ends_with('Z'),
            "{second:?}"
        );
        assert_eq!(c.format(), Some(WireFormat::Gxp));
    }

    #[test]
    fn a_gxp_image_whose_chunks_all_came_first_waits_for_its_metadata_or_the_timeout() {
        let img = [0xFF, 0xD8, 0xFF, 0xD9];
        let sized = |i: usize| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&img[i * 2..i * 2 + 2]);
            Bytes::from(format!(
                r#"{{"image_name":"w.jpg","chunk_id":{i},"max_chunk_size":2,"image_size":4,"total_chunks_count":2,"payload":"{b64}"}}"#
            ))
        };
        let stores = |out: &[Effect]| out.iter().filter(|e| matches!(e, Effect::Store(_))).count();
        // With metadata: stored when it comes, dated by it.
        let mut c = core();
        let mut out = Vec::new();
        send(&mut c, &TopicKind::Data, sized(1), &mut out);
        send(&mut c, &TopicKind::Data, sized(0), &mut out);
        assert_eq!(stores(&out), 0, "waits for the metadata");
        send(
            &mut c,
            &TopicKind::Data,
            gxp_meta("w.jpg", 4, 2, 2),
            &mut out,
        );
        let store = out.iter().find_map(|e| match e {
            Effect::Store(r) => Some(r.clone()),
            _ => None,
        });
        assert_eq!(
            store.unwrap().captured_at.to_rfc3339(),
            "2025-10-04T18:30:00+00:00"
        );
        // Without: stored at the timeout, with no NACK for a complete image.
        let mut c = core();
        let mut out = Vec::new();
        send(&mut c, &TopicKind::Data, sized(0), &mut out);
        send(&mut c, &TopicKind::Data, sized(1), &mut out);
        advance(std::time::Duration::from_millis(1000));
        c.tick(now(), &mut out);
        assert_eq!(stores(&out), 1);
        assert!(publishes(&out).is_empty());
    }

    #[test]
    fn gxp_chunks_whose_metadata_never_comes_ask_the_device_to_send_the_image_again() {
        let mut c = core();
        let mut out = Vec::new();
        // After a crash: chunks of an image whose metadata the engine never saw.
        send(
            &mut c,
            &TopicKind::Data,
            gxp_chunk("lost.jpg", 3, &[1, 2]),
            &mut out,
        );
        advance(std::time::Duration::from_millis(1000));
        out.clear();
        c.tick(now(), &mut out);
        let cmds: Vec<serde_json::Value> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Command { payload, .. } => serde_json::from_slice(payload).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(
            cmds,
            vec![serde_json::json!({"device_id":"AABBCCDDEEFF","send_image":"lost.jpg"})]
        );
        assert!(rows(&out)
            .iter()
            .any(|r| matches!(r, Row::Error(e) if e.code == ErrorCode::UnknownCapture)));
        assert!(c.is_idle());
    }

    #[test]
    fn gxp_metadata_resent_with_nulls_and_chunks_before_it_still_assemble() {
        let mut c = core();
        let mut out = Vec::new();
        let img = [0xFF, 0xD8, 0xFF, 0xD9];
        // The first chunk before any metadata, carrying the sizes.
        let early = Bytes::from_static(
            br#"{"image_name":"q.jpg","chunk_id":1,"max_chunk_size":2,"image_size":4,"total_chunks_count":2,"payload":"/9k="}"#,
        );
        send(&mut c, &TopicKind::Data, early, &mut out);
        send(
            &mut c,
            &TopicKind::Data,
            gxp_meta("q.jpg", 4, 2, 2),
            &mut out,
        );
        let nulls = br#"{"image_name":"q.jpg","image_size":null,"max_chunks_size":null,"total_chunk_count":null,"capture_timeStamp":null,"temperature":null}"#;
        send(
            &mut c,
            &TopicKind::Data,
            Bytes::from_static(nulls),
            &mut out,
        );
        send(
            &mut c,
            &TopicKind::Data,
            gxp_chunk("q.jpg", 0, &img[..2]),
            &mut out,
        );
        let store = out.iter().find_map(|e| match e {
            Effect::Store(r) => Some(r.clone()),
            _ => None,
        });
        let store = store.expect("assembled");
        assert_eq!(&store.image[..], &img[..]);
        assert_eq!(store.layout.image_bytes, 4);
        assert_eq!(store.captured_at.to_rfc3339(), "2025-10-04T18:30:00+00:00");
    }

    fn meta(id: &str, bytes: usize) -> Bytes {
        let total = bytes.div_ceil(1024);
        Bytes::from(format!(
            r#"{{"type":"capture_meta","capture_id":"{id}","captured_at":"2026-10-04T12:00:00Z","image_bytes":{bytes},"total_chunks":{total},"chunk_size":1024}}"#
        ))
    }

    fn publishes(out: &[Effect]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Publish { payload, .. } => serde_json::from_slice(payload).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_incomplete_capture_is_nacked_each_round_then_fails_and_frees_its_bytes() {
        let mut c = core();
        let mut out = Vec::new();
        let wall = Utc::now();
        c.handle(
            &TopicKind::Data,
            &meta("img_1", 3000),
            None,
            now(),
            wall,
            &mut out,
        );
        let chunk = TopicKind::Chunk {
            capture_id: "img_1".into(),
            index: 0,
        };
        c.handle(
            &chunk,
            &Bytes::from(vec![1u8; 1024]),
            None,
            now(),
            wall,
            &mut out,
        );
        assert!(c.held_bytes() >= 3000);
        out.clear();
        for round in 1..=2 {
            advance(std::time::Duration::from_millis(1000));
            c.tick(now(), &mut out);
            let p = publishes(&out);
            assert_eq!(p.last().unwrap()["round"], round);
            assert_eq!(p.last().unwrap()["missing"], serde_json::json!([[1, 2]]));
        }
        out.clear();
        advance(std::time::Duration::from_millis(1000));
        assert_eq!(c.tick(now(), &mut out), None, "nothing left to time");
        let failed = out.iter().any(|e| matches!(e, Effect::Row(Row::Capture(r), _) if r.status == IngestStatus::Failed && r.nack_rounds == 2));
        let timeout_error = out.iter().any(
            |e| matches!(e, Effect::Row(Row::Error(r), _) if r.code == ErrorCode::AssemblyTimeout),
        );
        assert!(failed && timeout_error);
        assert_eq!(c.held_bytes(), 0);
        assert!(c.is_idle());
    }

    #[test]
    fn metadata_resent_while_waiting_does_not_postpone_the_missing_chunks_nack() {
        let mut c = core();
        let mut out = Vec::new();
        let wall = Utc::now();
        c.handle(
            &TopicKind::Data,
            &meta("img_3", 3000),
            None,
            now(),
            wall,
            &mut out,
        );
        for _ in 0..3 {
            advance(std::time::Duration::from_millis(400));
            c.handle(
                &TopicKind::Data,
                &meta("img_3", 3000),
                None,
                now(),
                wall,
                &mut out,
            );
        }
        out.clear();
        c.tick(now(), &mut out);
        let p = publishes(&out);
        assert_eq!(
            p.len(),
            1,
            "the NACK is due 1 s after the metadata, resends notwithstanding"
        );
        assert_eq!(p[0]["missing"], serde_json::json!([[0, 2]]));
    }

    #[test]
    fn early_chunks_are_applied_when_their_metadata_arrives_and_the_image_is_stored() {
        let mut c = core();
        let mut out = Vec::new();
        let wall = Utc::now();
        let mut img: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        img[..2].copy_from_slice(&[0xFF, 0xD8]);
        img[1498..].copy_from_slice(&[0xFF, 0xD9]);
        let k1 = TopicKind::Chunk {
            capture_id: "img_2".into(),
            index: 1,
        };
        c.handle(
            &k1,
            &Bytes::copy_from_slice(&img[1024..]),
            None,
            now(),
            wall,
            &mut out,
        );
        assert!(!c.is_idle(), "buffered");
        c.handle(
            &TopicKind::Data,
            &meta("img_2", 1500),
            None,
            now(),
            wall,
            &mut out,
        );
        let k0 = TopicKind::Chunk {
            capture_id: "img_2".into(),
            index: 0,
        };
        c.handle(
            &k0,
            &Bytes::copy_from_slice(&img[..1024]),
            None,
            now(),
            wall,
            &mut out,
        );
        let store = out.iter().find_map(|e| match e {
            Effect::Store(r) => Some(r.clone()),
            _ => None,
        });
        let store = store.expect("a store request");
        assert_eq!(&store.image[..], &img[..]);
        assert_eq!(
            store.object_key(),
            "captures/AABBCCDDEEFF/2026/10/04/img_2.jpg"
        );
        out.clear();
        c.on_stored(
            "img_2",
            StoreOutcome::Stored { stored_at: wall },
            now(),
            &mut out,
        );
        assert_eq!(publishes(&out)[0]["type"], "ACK_OK");
        assert_eq!(c.held_bytes(), 0);
        // Metadata for a stored capture is answered at once with ACK_OK.
        out.clear();
        c.handle(
            &TopicKind::Data,
            &meta("img_2", 1500),
            None,
            now(),
            wall,
            &mut out,
        );
        assert_eq!(publishes(&out)[0]["type"], "ACK_OK");
        assert!(c.is_idle());
    }
}
