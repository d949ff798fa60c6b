//! The device state machine (§2–§5) as pure logic: it takes one inbound message or timer tick and
//! emits [`Effect`]s (rows, publishes, store requests, broker acks). The runtime's device actor
//! carries the effects out, so this module is tested without any I/O.
//!
//! - this file: the effects, [`DeviceCore`] and its dispatch of each message, status and readings,
//!   and the rate-limited error rows;
//! - `capture`: captures in both formats (assembly, early chunks, validation, the store outcome);
//! - `timers`: inactivity NACK rounds and expiry;
//! - `gxp_flow`: what is particular to the GXP firmware (metadata merging, device-reported errors,
//!   the wake handshake, its answer shapes);
//! - `tests`: behaviour in both formats under a fake clock.

mod capture;
mod gxp_flow;
#[cfg(test)]
mod tests;
mod timers;

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
                crate::hot_counter!(m::MESSAGES_TOTAL, "kind" => "cmd_result").increment(1);
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
        crate::hot_counter!(m::MESSAGES_TOTAL, "kind" => "status").increment(1);
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
        crate::hot_counter!(m::MESSAGES_TOTAL, "kind" => "reading").increment(1);
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
