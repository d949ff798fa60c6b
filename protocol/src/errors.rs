//! Protocol error codes (§7), the `device_errors` record, and the per-device, per-code rate
//! limiter that keeps a broken device from flooding the table.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Instant;

/// `device_errors.error_code` values (§7): one table for both device formats, with the original
/// GXP worker's codes keeping their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1000 + e: the device reported capture error `e` in its metadata (GXP firmware).
    DeviceReported(u16),
    /// 2100: metadata could not be processed.
    MetadataFailed,
    /// 2101: malformed JSON.
    Malformed,
    /// 2102: a chunk without payload.
    NoPayload,
    /// 2103: a chunk payload that does not decode (base64).
    BadBase64,
    /// 2104: invalid device id in the topic.
    InvalidDeviceId,
    /// 2105: unknown message type, or a field missing or out of range.
    BadField,
    /// 2200: finalising the capture failed.
    FinaliseFailed,
    /// 2201: assembly timeout after the NACK rounds.
    AssemblyTimeout,
    /// 2202: the declared image size differs from the assembled size.
    SizeMismatch,
    /// 2203: not a JPEG (no `FF D8` at the start or no `FF D9` at the end).
    NotJpeg,
    /// 2204: storage upload failed after retries.
    StorageFailed,
    /// 2205: the capture row could not be written.
    CaptureRowFailed,
    /// 2206: checksum mismatch.
    ChecksumMismatch,
    /// 2207: bad chunk (index, length, conflicting duplicate).
    BadChunk,
    /// 2208: chunk for an unknown capture, with no metadata.
    UnknownCapture,
    /// 2209: too many captures in flight, or the byte budget is exceeded.
    OverBudget,
    /// 2301: device quarantined by its supervisor.
    Quarantined,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        match self {
            Self::DeviceReported(e) => 1000 + i32::from(e),
            Self::MetadataFailed => 2100,
            Self::Malformed => 2101,
            Self::NoPayload => 2102,
            Self::BadBase64 => 2103,
            Self::InvalidDeviceId => 2104,
            Self::BadField => 2105,
            Self::FinaliseFailed => 2200,
            Self::AssemblyTimeout => 2201,
            Self::SizeMismatch => 2202,
            Self::NotJpeg => 2203,
            Self::StorageFailed => 2204,
            Self::CaptureRowFailed => 2205,
            Self::ChecksumMismatch => 2206,
            Self::BadChunk => 2207,
            Self::UnknownCapture => 2208,
            Self::OverBudget => 2209,
            Self::Quarantined => 2301,
        }
    }

    /// A label for metrics, from a fixed set: device-reported errors 1 to 4 keep their code,
    /// any other device-reported error is `1000`.
    pub fn label(self) -> &'static str {
        match self {
            Self::DeviceReported(1) => "1001",
            Self::DeviceReported(2) => "1002",
            Self::DeviceReported(3) => "1003",
            Self::DeviceReported(4) => "1004",
            Self::DeviceReported(_) => "1000",
            Self::MetadataFailed => "2100",
            Self::Malformed => "2101",
            Self::NoPayload => "2102",
            Self::BadBase64 => "2103",
            Self::InvalidDeviceId => "2104",
            Self::BadField => "2105",
            Self::FinaliseFailed => "2200",
            Self::AssemblyTimeout => "2201",
            Self::SizeMismatch => "2202",
            Self::NotJpeg => "2203",
            Self::StorageFailed => "2204",
            Self::CaptureRowFailed => "2205",
            Self::ChecksumMismatch => "2206",
            Self::BadChunk => "2207",
            Self::UnknownCapture => "2208",
            Self::OverBudget => "2209",
            Self::Quarantined => "2301",
        }
    }

    /// What a device-reported capture error means (GXP firmware: 1 camera init, 2 capture,
    /// 3 sensor read, 4 memory).
    pub fn device_error_cause(e: u16) -> String {
        match e {
            1 => "camera initialisation failed".into(),
            2 => "image capture failed".into(),
            3 => "sensor read failed".into(),
            4 => "memory allocation failed".into(),
            other => format!("unknown device error (code {other})"),
        }
    }
}

/// Device id recorded for messages whose topic had no valid id (§1).
pub const INVALID_DEVICE: &str = "INVALID";

/// Most bytes of a payload copied into an error's details.
pub const PAYLOAD_EXCERPT_BYTES: usize = 256;

/// One `device_errors` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRecord {
    /// The device, or `INVALID`.
    pub device_id: String,
    /// §7 code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Topic, capture id, payload excerpt, suppressed count.
    pub details: Value,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// A bounded excerpt of a payload for error details: text when the payload is printable UTF-8,
/// otherwise `hex:` and the first bytes in hex (JSONB cannot hold NUL characters).
pub fn excerpt(payload: &[u8]) -> String {
    let end = payload.len().min(PAYLOAD_EXCERPT_BYTES);
    let mut cut = &payload[..end];
    // Do not split a UTF-8 sequence at the cut.
    while let Err(e) = std::str::from_utf8(cut) {
        if e.error_len().is_some() {
            break;
        }
        cut = &cut[..e.valid_up_to()];
    }
    match std::str::from_utf8(cut) {
        Ok(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            s.to_string()
        }
        _ => format!("hex:{}", hex::encode(&payload[..payload.len().min(64)])),
    }
}

/// Allows at most `per_minute` records per key per rolling minute and counts the rest.
#[derive(Debug)]
pub struct ErrorRateLimiter<K> {
    per_minute: u32,
    windows: HashMap<K, Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    allowed: u32,
    suppressed: u64,
}

/// What the limiter decided for one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the row; `suppressed` rows were dropped for this key since the last one written.
    Write {
        /// Count of errors suppressed before this one.
        suppressed: u64,
    },
    /// Count it, write nothing.
    Suppress,
}

impl<K: std::hash::Hash + Eq + Clone> ErrorRateLimiter<K> {
    /// A limiter with the given per-minute allowance per key.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: HashMap::new(),
        }
    }

    /// Decides whether an error for `key` at `now` is written.
    pub fn admit(&mut self, key: K, now: Instant) -> Admit {
        let w = self.windows.entry(key).or_insert(Window {
            started: now,
            allowed: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= Duration::from_secs(60) {
            w.started = now;
            w.allowed = 0;
        }
        if w.allowed < self.per_minute {
            w.allowed += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            Admit::Write { suppressed }
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }

    /// Forgets windows older than a minute, keeping memory bounded.
    pub fn prune(&mut self, now: Instant) {
        self.windows.retain(|_, w| {
            now.duration_since(w.started) < Duration::from_secs(60) || w.suppressed > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_clock::{advance, now};

    #[test]
    fn codes_follow_the_shared_table() {
        assert_eq!(ErrorCode::Malformed.code(), 2101);
        assert_eq!(ErrorCode::InvalidDeviceId.code(), 2104);
        assert_eq!(ErrorCode::BadField.code(), 2105);
        assert_eq!(ErrorCode::SizeMismatch.code(), 2202);
        assert_eq!(ErrorCode::NotJpeg.code(), 2203);
        assert_eq!(ErrorCode::BadChunk.code(), 2207);
        assert_eq!(ErrorCode::UnknownCapture.code(), 2208);
        assert_eq!(ErrorCode::OverBudget.code(), 2209);
        assert_eq!(ErrorCode::DeviceReported(99).code(), 1099);
        assert_eq!(ErrorCode::DeviceReported(99).label(), "1000");
        assert_eq!(ErrorCode::DeviceReported(3).label(), "1003");
        assert!(ErrorCode::device_error_cause(1).contains("camera"));
        assert!(ErrorCode::device_error_cause(99).contains("unknown"));
    }

    #[test]
    fn excerpts_are_bounded_and_binary_payloads_become_hex() {
        assert_eq!(excerpt(b"{bad json"), "{bad json");
        assert_eq!(excerpt(&[0u8, 1, 2]), "hex:000102");
        assert_eq!(excerpt(&vec![b'a'; 1000]).len(), PAYLOAD_EXCERPT_BYTES);
        let e = excerpt("é".repeat(200).as_bytes());
        assert!(e.len() <= PAYLOAD_EXCERPT_BYTES && !e.starts_with("hex:"));
    }

    #[test]
    fn error_rows_are_limited_per_key_per_minute_and_suppressed_ones_are_counted() {
        let mut l = ErrorRateLimiter::new(10);
        let t0 = now();
        for _ in 0..10 {
            assert!(matches!(
                l.admit(ErrorCode::Malformed, t0),
                Admit::Write { .. }
            ));
        }
        assert_eq!(l.admit(ErrorCode::Malformed, t0), Admit::Suppress);
        assert_eq!(l.admit(ErrorCode::Malformed, t0), Admit::Suppress);
        // Another code has its own allowance.
        assert!(matches!(
            l.admit(ErrorCode::BadChunk, t0),
            Admit::Write { .. }
        ));
        advance(Duration::from_secs(61));
        assert_eq!(
            l.admit(ErrorCode::Malformed, now()),
            Admit::Write { suppressed: 2 }
        );
    }
}
