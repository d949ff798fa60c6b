//! The rows the device state machine produces for the Postgres sink, one type per table (§8).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::errors::ErrorRecord;
use crate::ids::DeviceId;
use crate::message::{Measurements, WireFormat};

/// One `device_status` row; it also updates the device's `devices` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    /// The device.
    pub device_id: DeviceId,
    /// §2 state.
    pub status: String,
    /// `gxp` when the message showed the device's format (the wake hello), for
    /// `devices.wire_format`.
    pub wire_format: Option<&'static str>,
    /// Captures waiting on the device.
    pub pending_count: Option<i32>,
    /// Volts.
    pub battery_v: Option<f64>,
    /// dBm.
    pub rssi: Option<i32>,
    /// Seconds.
    pub uptime_s: Option<i64>,
    /// Firmware version.
    pub fw: Option<String>,
    /// Unknown fields.
    pub extra: Map<String, Value>,
    /// Device or receive time.
    pub created_at: DateTime<Utc>,
}

/// One `sensor_readings` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    /// The device.
    pub device_id: DeviceId,
    /// `None` for the sensor snapshot of a capture.
    pub seq: Option<i64>,
    /// Set for a capture's sensor snapshot.
    pub capture_id: Option<String>,
    /// The values.
    pub values: Measurements,
    /// Unknown fields.
    pub extra: Map<String, Value>,
    /// Measurement time.
    pub measured_at: DateTime<Utc>,
    /// Also refresh `devices.last_seen_at` (set at most every few seconds per device, so that
    /// concurrent batches do not contend for the same `devices` rows).
    pub touch_device: bool,
}

/// `captures.ingest_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    /// Object written and row committed.
    Stored,
    /// Timed out or storage failed.
    Failed,
}

impl IngestStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Failed => "failed",
        }
    }
}

/// One `captures` row (insert or final update).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRow {
    /// The device.
    pub device_id: DeviceId,
    /// The device's capture id.
    pub capture_id: String,
    /// Capture time.
    pub captured_at: DateTime<Utc>,
    /// Sizes.
    pub image_bytes: i64,
    /// Sizes.
    pub total_chunks: i32,
    /// Sizes.
    pub chunk_size: i32,
    /// Announced checksum.
    pub sha256: Option<String>,
    /// Final state.
    pub status: IngestStatus,
    /// Object key when stored.
    pub storage_path: Option<String>,
    /// NACK rounds used.
    pub nack_rounds: i32,
    /// When stored.
    pub stored_at: Option<DateTime<Utc>>,
    /// The format the capture came in.
    pub format: WireFormat,
    /// GXP metadata kept as it came (location, image_id, error).
    pub meta: Option<Value>,
}

/// A device's next wake time, recorded by the wake handshake (`device_schedules`).
#[derive(Debug, Clone, PartialEq)]
pub struct WakeRow {
    /// The device.
    pub device_id: DeviceId,
    /// The next wake.
    pub next_wake_at: DateTime<Utc>,
}

/// A device's reply to a command (§6).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResultRow {
    /// The device.
    pub device_id: DeviceId,
    /// The command.
    pub command_id: String,
    /// Success.
    pub ok: bool,
    /// The whole reply.
    pub result: Value,
    /// When it arrived.
    pub completed_at: DateTime<Utc>,
}

/// One `telemetry` row, from a `store_json` subscription action.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    /// The device, from the topic.
    pub device_id: DeviceId,
    /// The source's product.
    pub product_id: std::sync::Arc<str>,
    /// The subscription that matched.
    pub subscription_id: i64,
    /// The full topic.
    pub topic: String,
    /// The payload, parsed.
    pub payload: Value,
    /// The payload's size on the wire (for the batcher's byte limit).
    pub payload_bytes: usize,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// Which way a logged message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Published by the device.
    In,
    /// Published by the engine to the device (ACK, NACK, command).
    Out,
}

impl Direction {
    /// `in` or `out`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// What is stored of a logged message's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum LogPayload {
    /// The payload itself: UTF-8 JSON that PostgreSQL's `jsonb` accepts (shared, not copied).
    Json(bytes::Bytes),
    /// A summary in its place: a chunk without its data, or a payload too large or not JSON.
    Summary(Value),
}

/// One `device_publish_log` row: a message in or out, as the message log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishLogRow {
    /// The device.
    pub device_id: DeviceId,
    /// The full topic, as received (shared, not copied).
    pub topic: bytes::Bytes,
    /// In or out.
    pub direction: Direction,
    /// The payload or its summary.
    pub payload: LogPayload,
    /// When it was received or sent.
    pub at: DateTime<Utc>,
}

/// One `dead_letters` row: a message kept as it arrived because it could not be processed now
/// (its device was quarantined or too busy, or the actor limit was reached), so that it is
/// durable before its ack and can be replayed (`fleetflow replay-dead-letters`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// The device the topic names (`INVALID` when none could be read).
    pub device_id: String,
    /// The full topic, as received (shared, not copied).
    pub topic: bytes::Bytes,
    /// The payload, as received (shared, not copied).
    pub payload: bytes::Bytes,
    /// Why: `restarting`, `quarantined`, `device_busy` or `max_device_actors` (replayable), or
    /// `rejected` (a row Postgres refused for good: its topic names the table, its payload is
    /// the row as text, kept as a record; replaying it would fail the same way).
    pub reason: &'static str,
    /// The source (product) it arrived from.
    pub source: std::sync::Arc<str>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// Any row the sink writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// `device_status` + `devices`.
    Status(StatusRow),
    /// `sensor_readings`.
    Reading(ReadingRow),
    /// `captures`.
    Capture(CaptureRow),
    /// `device_errors`.
    Error(ErrorRecord),
    /// `device_commands` update.
    CommandResult(CommandResultRow),
    /// `telemetry`.
    Telemetry(TelemetryRow),
    /// `device_schedules.next_wake_at`.
    Wake(WakeRow),
    /// `device_publish_log`.
    PublishLog(PublishLogRow),
    /// `dead_letters`.
    DeadLetter(DeadLetterRow),
}

/// The sink's tables, for batching and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `device_status`
    Status,
    /// `sensor_readings`
    Readings,
    /// `captures`
    Captures,
    /// `device_errors`
    Errors,
    /// `device_commands`
    Commands,
    /// `telemetry`
    Telemetry,
    /// `device_schedules`
    Schedules,
    /// `device_publish_log`
    PublishLog,
    /// `dead_letters`
    DeadLetters,
}

impl Table {
    /// Every table, in flush order.
    pub const ALL: [Table; 9] = [
        Table::Status,
        Table::Readings,
        Table::Captures,
        Table::Errors,
        Table::Commands,
        Table::Telemetry,
        Table::Schedules,
        Table::PublishLog,
        Table::DeadLetters,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Table::Status => "device_status",
            Table::Readings => "sensor_readings",
            Table::Captures => "captures",
            Table::Errors => "device_errors",
            Table::Commands => "device_commands",
            Table::Telemetry => "telemetry",
            Table::Schedules => "device_schedules",
            Table::PublishLog => "device_publish_log",
            Table::DeadLetters => "dead_letters",
        }
    }

    /// Index into per-table arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Row {
    /// The device the row is about.
    pub fn device_id(&self) -> &str {
        match self {
            Row::Status(r) => r.device_id.as_str(),
            Row::Reading(r) => r.device_id.as_str(),
            Row::Capture(r) => r.device_id.as_str(),
            Row::Error(r) => &r.device_id,
            Row::CommandResult(r) => r.device_id.as_str(),
            Row::Telemetry(r) => r.device_id.as_str(),
            Row::Wake(r) => r.device_id.as_str(),
            Row::PublishLog(r) => r.device_id.as_str(),
            Row::DeadLetter(r) => &r.device_id,
        }
    }

    /// The table this row goes to.
    pub fn table(&self) -> Table {
        match self {
            Row::Status(_) => Table::Status,
            Row::Reading(_) => Table::Readings,
            Row::Capture(_) => Table::Captures,
            Row::Error(_) => Table::Errors,
            Row::CommandResult(_) => Table::Commands,
            Row::Telemetry(_) => Table::Telemetry,
            Row::Wake(_) => Table::Schedules,
            Row::PublishLog(_) => Table::PublishLog,
            Row::DeadLetter(_) => Table::DeadLetters,
        }
    }

    /// A rough size, for the batcher's byte limit.
    pub fn estimated_bytes(&self) -> usize {
        let extra = |m: &Map<String, Value>| if m.is_empty() { 0 } else { 64 * m.len() };
        match self {
            Row::Status(s) => 96 + extra(&s.extra),
            Row::Reading(r) => 96 + extra(&r.extra),
            Row::Capture(_) => 256,
            Row::Error(e) => 128 + e.message.len() + 300,
            Row::CommandResult(_) => 256,
            Row::Telemetry(t) => 128 + t.topic.len() + 2 * t.payload_bytes,
            Row::Wake(_) => 64,
            Row::PublishLog(l) => {
                96 + l.topic.len()
                    + match &l.payload {
                        LogPayload::Json(b) => 2 * b.len(),
                        LogPayload::Summary(_) => 256,
                    }
            }
            Row::DeadLetter(d) => 128 + d.topic.len() + d.payload.len(),
        }
    }
}
