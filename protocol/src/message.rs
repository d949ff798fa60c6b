//! The wire protocol's payloads (§2–§6) as typed messages, and the pure decoder from bytes to
//! [`DeviceMsg`]. A `/data` payload is told apart per message: with `chunk_id` it is a GXP chunk,
//! with `type` fleetflow's own protocol, with `image_name` or `image_id` GXP metadata
//! ([`crate::gxp`]). Nothing here does I/O; the device actor calls [`decode`] on its own thread.

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::errors::ErrorCode;
use crate::gxp::{self, GasUnit, GxpChunk, GxpMeta};
use crate::ids::is_valid_capture_id;
use crate::payload::json_error;
pub use crate::payload::{DecodeError, Measurements};
use crate::topic::TopicKind;

/// Largest JSON payload other than a JSON chunk (§1).
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Largest JSON chunk payload (§1).
pub const MAX_JSON_CHUNK_BYTES: usize = 64 * 1024;
/// Smallest and largest chunk size a capture may announce (§4.1).
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 256..=16384;

/// The wire format a device spoke: fleetflow's protocol or the GXP firmware's. Each capture is
/// answered in the format it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// `PROTOCOL.md`.
    V1,
    /// `GXP-FIRMWARE.md`.
    Gxp,
}

impl WireFormat {
    /// `v1` or `gxp`, as stored in `devices.wire_format` and `captures.wire_format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::Gxp => "gxp",
        }
    }
}

/// A decoded device message.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMsg {
    /// §2
    Status(Status),
    /// §3
    Reading(Reading),
    /// §4.1
    CaptureMeta(CaptureMeta),
    /// §4.2 and §4.3, both forms.
    Chunk(Chunk),
    /// §6
    CmdResult(CmdResult),
    /// GXP firmware metadata (`GXP-FIRMWARE.md`).
    GxpMeta(GxpMeta),
    /// GXP firmware base64 chunk.
    GxpChunk(GxpChunk),
}

/// Longest status text kept.
pub const MAX_STATUS_CHARS: usize = 64;

fn unknown_status() -> String {
    "unknown".into()
}

/// §2 status heartbeat.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    /// The state as sent: `online`, `sleeping`, … for fleetflow's protocol, free text such as
    /// `Alive` for the GXP firmware (`unknown` when missing, as the original worker did).
    #[serde(default = "unknown_status")]
    pub status: String,
    /// Battery voltage.
    #[serde(default)]
    pub battery_v: Option<f64>,
    /// Wi-Fi signal, dBm.
    #[serde(default)]
    pub rssi: Option<i32>,
    /// Seconds since boot.
    #[serde(default)]
    pub uptime_s: Option<i64>,
    /// Captures waiting on the device (`pendingImg` on the GXP firmware).
    #[serde(default, alias = "pendingImg")]
    pub pending_count: Option<i32>,
    /// Firmware version.
    #[serde(default)]
    pub fw: Option<String>,
    /// Device time; receive time when missing.
    #[serde(default, deserialize_with = "de_opt_ts")]
    pub ts: Option<DateTime<Utc>>,
    /// Unknown fields, stored in `extra`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Status {
    /// Whether this is the GXP wake-up hello (`Alive`, compared case-insensitively), which the
    /// engine must answer on `/cmd`.
    pub fn is_wake(&self) -> bool {
        self.status.eq_ignore_ascii_case("alive")
    }
}

/// §3 sensor reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Per-device counter; `(device_id, seq)` is the identity. Limited to i64 for storage.
    pub seq: u64,
    /// Measurement time; receive time when missing.
    pub ts: Option<DateTime<Utc>>,
    /// The measurements.
    pub values: Measurements,
    /// Unknown fields (`type` removed), stored in `extra`.
    pub extra: Map<String, Value>,
}

// Hand-written rather than `#[serde(flatten)]`: flatten buffers every field into an
// intermediate tree first, which doubled the decode cost of the most frequent message.
impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Reading;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a reading object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Reading, A::Error> {
                use serde::de::Error;
                let mut seq = None;
                let mut ts = None;
                let mut values = Measurements::default();
                let mut extra = Map::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "seq" => seq = Some(map.next_value::<u64>()?),
                        "ts" => ts = map.next_value::<TsField>()?.0,
                        "temperature_c" => values.temperature_c = map.next_value()?,
                        "humidity_pct" => values.humidity_pct = map.next_value()?,
                        "pressure_hpa" => values.pressure_hpa = map.next_value()?,
                        "gas_kohm" => values.gas_kohm = map.next_value()?,
                        "type" => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        other => {
                            let v: Value = map.next_value()?;
                            extra.insert(other.to_owned(), v);
                        }
                    }
                }
                let seq = seq.ok_or_else(|| A::Error::missing_field("seq"))?;
                Ok(Reading {
                    seq,
                    ts,
                    values,
                    extra,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// How fleetflow's firmware and the simulator begin a reading: `type` first, unspaced.
const READING_PREFIX: &[u8] = br#"{"type":"reading","#;

/// A payload that begins with [`READING_PREFIX`], decoded as a reading in one pass instead of
/// a format probe and then the reading (the most frequent message). `None` when it also names
/// a GXP chunk (`chunk_id`, which the probe puts first) or is not a valid reading: the general
/// path then decides, with its own errors.
fn reading_in_one_pass(payload: &[u8]) -> Option<Result<DeviceMsg, DecodeError>> {
    let r: Reading = serde_json::from_slice(payload).ok()?;
    if r.extra.get("chunk_id").is_some_and(|v| !v.is_null()) {
        return None;
    }
    Some(checked_reading(r))
}

/// A decoded reading's range checks.
fn checked_reading(mut r: Reading) -> Result<DeviceMsg, DecodeError> {
    r.extra.remove("type");
    if r.seq > i64::MAX as u64 {
        return Err(DecodeError::field("seq is over 2^63-1"));
    }
    check_measurements(&r.values)?;
    Ok(DeviceMsg::Reading(r))
}

/// A timestamp field (RFC 3339 or epoch milliseconds) deserialised on its own.
struct TsField(Option<DateTime<Utc>>);

impl<'de> Deserialize<'de> for TsField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_opt_ts(d).map(TsField)
    }
}

/// §4.1 capture announcement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CaptureMeta {
    /// `[A-Za-z0-9._-]{1,64}`
    pub capture_id: String,
    /// Capture time; receive time when missing. Dates the object key.
    #[serde(default, deserialize_with = "de_opt_ts")]
    pub captured_at: Option<DateTime<Utc>>,
    /// Image size.
    pub image_bytes: u64,
    /// `ceil(image_bytes / chunk_size)`.
    pub total_chunks: u32,
    /// 256..=16384, default 1024.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Optional lowercase or uppercase hex SHA-256 of the image.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Optional sensor snapshot, stored as a reading linked to the capture.
    #[serde(default)]
    pub sensors: Option<Measurements>,
}

fn default_chunk_size() -> u32 {
    1024
}

/// §4.2/§4.3 one chunk of a capture.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The capture.
    pub capture_id: String,
    /// 0-based index.
    pub index: u32,
    /// The chunk bytes (for binary chunks, a slice of the MQTT payload: no copy).
    pub data: Bytes,
}

/// §6 command result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CmdResult {
    /// The command answered.
    pub command_id: String,
    /// Success.
    pub ok: bool,
    /// Free text.
    #[serde(default)]
    pub detail: Option<String>,
}

/// Limits and settings applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest image a capture may announce.
    pub max_image_bytes: u64,
    /// The unit of GXP metadata's `gas_resistance` (a per-product setting).
    pub gas_unit: GasUnit,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_image_bytes: 4 * 1024 * 1024,
            gas_unit: GasUnit::Auto,
        }
    }
}

/// The fields that tell the formats apart. `null` counts as absent.
#[derive(Deserialize)]
struct FormatProbe<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    chunk_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    image_name: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    image_id: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct JsonChunk<'a> {
    capture_id: std::borrow::Cow<'a, str>,
    index: u32,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

/// Decodes one payload, given the kind its topic announced.
pub fn decode(
    kind: &TopicKind,
    payload: &Bytes,
    limits: DecodeLimits,
) -> Result<DeviceMsg, DecodeError> {
    match kind {
        TopicKind::Chunk { capture_id, index } => Ok(DeviceMsg::Chunk(Chunk {
            capture_id: capture_id.clone(),
            index: *index,
            data: payload.clone(),
        })),
        TopicKind::Status => {
            check_len(payload, MAX_JSON_BYTES)?;
            let mut s: Status = match serde_json::from_slice(payload) {
                Ok(s) => s,
                // A mistyped optional field must not cost a device its wake answer: the
                // fields that fit are taken, the others kept in `extra`.
                Err(e) => lenient_status(payload).ok_or_else(|| json_error(e))?,
            };
            if s.status.chars().count() > MAX_STATUS_CHARS {
                return Err(DecodeError::field(format!(
                    "status is longer than {MAX_STATUS_CHARS} characters"
                )));
            }
            s.extra.remove("device_id");
            Ok(DeviceMsg::Status(s))
        }
        TopicKind::CmdResult => {
            check_len(payload, MAX_JSON_BYTES)?;
            let r: CmdResult = serde_json::from_slice(payload).map_err(json_error)?;
            Ok(DeviceMsg::CmdResult(r))
        }
        TopicKind::Data => decode_data(payload, limits),
    }
}

/// A status read field by field: `status` must be a string (or absent: `unknown`), the other
/// known fields are taken when their type fits (numbers given as strings too) and kept in
/// `extra` as sent otherwise. `None` when the payload is not a JSON object.
fn lenient_status(payload: &[u8]) -> Option<Status> {
    let Value::Object(mut o) = serde_json::from_slice(payload).ok()? else {
        return None;
    };
    let status = match o.remove("status") {
        None => unknown_status(),
        Some(Value::String(t)) => t,
        Some(_) => return None,
    };
    let num = |v: &Value| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok());
    let mut take = |keys: &[&str]| -> Option<f64> {
        let key = keys.iter().find(|k| o.get(**k).and_then(num).is_some())?;
        o.remove(*key).as_ref().and_then(num)
    };
    let battery_v = take(&["battery_v"]);
    let rssi = take(&["rssi"]).map(|r| r.round() as i32);
    let uptime_s = take(&["uptime_s"]).map(|u| u as i64);
    let pending_count = take(&["pendingImg", "pending_count"]).map(|p| p as i32);
    let fw = match o.remove("fw") {
        Some(Value::String(f)) => Some(f),
        Some(other) => {
            o.insert("fw".into(), other);
            None
        }
        None => None,
    };
    let ts = o
        .get("ts")
        .and_then(|v| de_opt_ts(v.clone()).ok().flatten());
    if ts.is_some() {
        o.remove("ts");
    }
    Some(Status {
        status,
        battery_v,
        rssi,
        uptime_s,
        pending_count,
        fw,
        ts,
        extra: o,
    })
}

fn check_len(payload: &[u8], max: usize) -> Result<(), DecodeError> {
    if payload.len() > max {
        return Err(DecodeError::field(format!(
            "payload is {} bytes, over the {max}-byte limit",
            payload.len()
        )));
    }
    Ok(())
}

fn decode_data(payload: &Bytes, limits: DecodeLimits) -> Result<DeviceMsg, DecodeError> {
    check_len(payload, MAX_JSON_CHUNK_BYTES)?;
    if payload.starts_with(READING_PREFIX) && payload.len() <= MAX_JSON_BYTES {
        if let Some(r) = reading_in_one_pass(payload) {
            return r;
        }
    }
    let probe: FormatProbe<'_> = serde_json::from_slice(payload).map_err(json_error)?;
    if probe.chunk_id.is_some() {
        return gxp::decode_chunk(payload).map(DeviceMsg::GxpChunk);
    }
    let Some(kind) = probe.kind else {
        check_len(payload, MAX_JSON_BYTES)?;
        if probe.image_name.is_some() || probe.image_id.is_some() {
            return gxp::decode_meta(payload, limits.gas_unit).map(DeviceMsg::GxpMeta);
        }
        return Err(DecodeError::field(
            "neither \"type\" (fleetflow protocol) nor \"chunk_id\"/\"image_name\" (GXP firmware)",
        ));
    };
    if kind != "chunk" {
        check_len(payload, MAX_JSON_BYTES)?;
    }
    match kind.as_ref() {
        "reading" => {
            let r: Reading = serde_json::from_slice(payload).map_err(json_error)?;
            checked_reading(r)
        }
        "capture_meta" => {
            let m: CaptureMeta = serde_json::from_slice(payload).map_err(json_error)?;
            validate_meta(&m, limits).map_err(|e| e.with_capture(&m.capture_id))?;
            Ok(DeviceMsg::CaptureMeta(m))
        }
        "chunk" => {
            let c: JsonChunk<'_> = serde_json::from_slice(payload).map_err(json_error)?;
            if !is_valid_capture_id(&c.capture_id) {
                return Err(DecodeError::field("invalid capture_id"));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(c.data.as_bytes())
                .map_err(|e| DecodeError {
                    code: ErrorCode::BadBase64,
                    message: format!("invalid base64 in data: {e}"),
                    capture_id: Some(c.capture_id.to_string()),
                })?;
            Ok(DeviceMsg::Chunk(Chunk {
                capture_id: c.capture_id.into_owned(),
                index: c.index,
                data: Bytes::from(data),
            }))
        }
        other => Err(DecodeError::field(format!(
            "unknown message type {:?}",
            truncate(other, 32)
        ))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_measurements(m: &Measurements) -> Result<(), DecodeError> {
    for (name, v) in [
        ("temperature_c", m.temperature_c),
        ("humidity_pct", m.humidity_pct),
        ("pressure_hpa", m.pressure_hpa),
        ("gas_kohm", m.gas_kohm),
    ] {
        if let Some(v) = v {
            if !v.is_finite() {
                return Err(DecodeError::field(format!("{name} is not a finite number")));
            }
        }
    }
    Ok(())
}

fn validate_meta(m: &CaptureMeta, limits: DecodeLimits) -> Result<(), DecodeError> {
    if !is_valid_capture_id(&m.capture_id) {
        return Err(DecodeError::field("invalid capture_id"));
    }
    if m.image_bytes == 0 || m.image_bytes > limits.max_image_bytes {
        return Err(DecodeError::field(format!(
            "image_bytes {} is outside 1..={}",
            m.image_bytes, limits.max_image_bytes
        )));
    }
    if !CHUNK_SIZE_RANGE.contains(&m.chunk_size) {
        return Err(DecodeError::field(format!(
            "chunk_size {} is outside 256..=16384",
            m.chunk_size
        )));
    }
    let expected = m.image_bytes.div_ceil(u64::from(m.chunk_size));
    if u64::from(m.total_chunks) != expected {
        return Err(DecodeError::field(format!(
            "total_chunks {} does not equal ceil(image_bytes / chunk_size) = {expected}",
            m.total_chunks
        )));
    }
    if let Some(h) = &m.sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DecodeError::field("sha256 is not 64 hex digits"));
        }
    }
    if let Some(s) = &m.sensors {
        check_measurements(s)?;
    }
    Ok(())
}

/// Accepts an RFC 3339 string or an integer of epoch milliseconds.
fn de_opt_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    use serde::de::Error;
    let v: Option<Value> = Option::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| D::Error::custom(format!("invalid RFC 3339 timestamp: {e}"))),
        Some(Value::Number(n)) => {
            let ms = n
                .as_i64()
                .ok_or_else(|| D::Error::custom("timestamp is not an integer of milliseconds"))?;
            Utc.timestamp_millis_opt(ms)
                .single()
                .map(Some)
                .ok_or_else(|| D::Error::custom("timestamp out of range"))
        }
        Some(_) => Err(D::Error::custom("timestamp must be a string or an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Result<DeviceMsg, DecodeError> {
        decode(
            &TopicKind::Data,
            &Bytes::copy_from_slice(json.as_bytes()),
            DecodeLimits::default(),
        )
    }

    #[test]
    fn the_one_pass_reading_path_decodes_as_the_general_path_does() {
        let one_pass = r#"{"type":"reading","seq":7,"temperature_c":21.5,"x":[1]}"#;
        let general = r#"{ "type": "reading", "seq": 7, "temperature_c": 21.5, "x": [1] }"#;
        assert!(one_pass.as_bytes().starts_with(READING_PREFIX));
        assert!(
            reading_in_one_pass(one_pass.as_bytes()).is_some(),
            "the one-pass path takes it"
        );
        assert!(!general.as_bytes().starts_with(READING_PREFIX));
        assert_eq!(data(one_pass).unwrap(), data(general).unwrap());
        // Errors come from the general path, with its messages.
        for bad in [
            r#"{"type":"reading","seq":-1}"#,
            r#"{"type":"reading","seq":9223372036854775808}"#,
            r#"{"type":"reading","temperature_c":1}"#,
            r#"{"type":"reading","seq":1,"temperature_c":"hot"}"#,
        ] {
            let spaced = bad.replacen(r#""type":"reading","#, r#""type": "reading", "#, 1);
            assert_eq!(
                data(bad).unwrap_err().code,
                data(&spaced).unwrap_err().code,
                "{bad}"
            );
        }
        // A reading that also names a GXP chunk is decided by the format probe, as before.
        let both = r#"{"type":"reading","seq":1,"chunk_id":3}"#;
        assert!(data(both).is_err());
    }

    #[test]
    fn readings_decode_with_unknown_fields_kept_in_extra() {
        let m = data(r#"{"type":"reading","seq":1841,"ts":"2026-10-04T12:00:00Z","temperature_c":21.5,"co2":400}"#).unwrap();
        let DeviceMsg::Reading(r) = m else {
            panic!("not a reading")
        };
        assert_eq!(r.seq, 1841);
        assert_eq!(r.values.temperature_c, Some(21.5));
        assert_eq!(r.values.humidity_pct, None);
        assert_eq!(r.extra.get("co2"), Some(&Value::from(400)));
        assert!(!r.extra.contains_key("type"));
        assert_eq!(r.ts.unwrap().to_rfc3339(), "2026-10-04T12:00:00+00:00");
    }

    #[test]
    fn epoch_millisecond_timestamps_are_accepted() {
        let DeviceMsg::Reading(r) =
            data(r#"{"type":"reading","seq":1,"ts":1759579200000}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.ts.unwrap().timestamp(), 1_759_579_200);
    }

    #[test]
    fn malformed_json_is_2101_and_unknown_types_are_2105() {
        assert_eq!(data("{not json").unwrap_err().code, ErrorCode::Malformed);
        assert_eq!(
            data(r#"{"type":"bogus"}"#).unwrap_err().code,
            ErrorCode::BadField
        );
        assert_eq!(data(r#"{"seq":1}"#).unwrap_err().code, ErrorCode::BadField);
        assert_eq!(data("[1,2]").unwrap_err().code, ErrorCode::BadField);
    }

    #[test]
    fn each_data_message_is_told_apart_by_its_fields() {
        let chunk = data(r#"{"device_id":"X","image_name":"a.jpg","chunk_id":0,"payload":"/9g="}"#);
        assert!(matches!(chunk, Ok(DeviceMsg::GxpChunk(_))));
        let meta = data(r#"{"device_id":"X","image_name":"a.jpg","image_size":4}"#);
        assert!(matches!(meta, Ok(DeviceMsg::GxpMeta(_))));
        let meta_by_id = data(r#"{"image_id":5,"chunk_id":null}"#);
        assert!(matches!(meta_by_id, Ok(DeviceMsg::GxpMeta(m)) if m.image_name == "image_5.jpg"));
        let v1 = data(r#"{"type":"reading","seq":1}"#);
        assert!(matches!(v1, Ok(DeviceMsg::Reading(_))));
    }

    #[test]
    fn missing_or_out_of_range_fields_are_2105() {
        assert_eq!(
            data(r#"{"type":"reading"}"#).unwrap_err().code,
            ErrorCode::BadField
        );
        assert_eq!(
            data(r#"{"type":"reading","seq":-1}"#).unwrap_err().code,
            ErrorCode::BadField
        );
        assert_eq!(
            data(r#"{"type":"reading","seq":1,"temperature_c":"hot"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadField
        );
        let meta = r#"{"type":"capture_meta","capture_id":"img_1","image_bytes":51234,"total_chunks":50,"chunk_size":1024}"#;
        let e = data(meta).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadField);
        assert_eq!(e.capture_id.as_deref(), Some("img_1"));
        let big = r#"{"type":"capture_meta","capture_id":"img_1","image_bytes":99999999,"total_chunks":97657,"chunk_size":1024}"#;
        assert_eq!(data(big).unwrap_err().code, ErrorCode::BadField);
    }

    #[test]
    fn capture_meta_checks_the_chunk_arithmetic() {
        let m = data(r#"{"type":"capture_meta","capture_id":"img_000183","captured_at":"2026-10-04T12:00:00Z","image_bytes":51234,"total_chunks":51,"chunk_size":1024,"sensors":{"temperature_c":21.5}}"#).unwrap();
        let DeviceMsg::CaptureMeta(m) = m else {
            panic!()
        };
        assert_eq!(m.total_chunks, 51);
        assert_eq!(m.sensors.unwrap().temperature_c, Some(21.5));
    }

    #[test]
    fn json_chunks_are_base64_decoded_and_bad_base64_is_2103_for_both_formats() {
        let DeviceMsg::Chunk(c) =
            data(r#"{"type":"chunk","capture_id":"img_1","index":3,"data":"AAEC"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((c.index, &c.data[..]), (3, &[0u8, 1, 2][..]));
        let e = data(r#"{"type":"chunk","capture_id":"img_1","index":3,"data":"!!"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadBase64);
        let e = data(r#"{"image_name":"i.jpg","chunk_id":3,"payload":"!!"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadBase64);
    }

    #[test]
    fn oversized_payloads_are_refused_before_parsing() {
        let pad = "x".repeat(17 * 1024);
        let e = data(&format!(r#"{{"type":"reading","seq":1,"pad":"{pad}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadField);
        let status = Bytes::from(format!(r#"{{"status":"online","pad":"{pad}"}}"#));
        assert!(decode(&TopicKind::Status, &status, DecodeLimits::default()).is_err());
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"type":"reading","seq":1,"x":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(data(&deep).is_err());
    }

    proptest::proptest! {
        /// Hostile input never panics: arbitrary bytes, and JSON-looking mutations of valid
        /// messages, always decode to a message or a 2101/2102/2103/2105 error.
        #[test]
        fn the_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let b = Bytes::from(bytes);
            for kind in [TopicKind::Status, TopicKind::Data, TopicKind::CmdResult] {
                if let Err(e) = decode(&kind, &b, DecodeLimits::default()) {
                    proptest::prop_assert!(matches!(e.code, ErrorCode::Malformed | ErrorCode::BadField | ErrorCode::NoPayload | ErrorCode::BadBase64));
                }
            }
        }

        #[test]
        fn the_decoder_never_panics_on_mutated_valid_messages(
            which in 0usize..6,
            cut in 0usize..300,
            flip in 0usize..300,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let samples = [
                r#"{"type":"reading","seq":1841,"ts":"2026-10-04T12:00:00Z","temperature_c":21.5}"#,
                r#"{"type":"capture_meta","capture_id":"img_000183","image_bytes":51234,"total_chunks":51,"chunk_size":1024}"#,
                r#"{"type":"chunk","capture_id":"img_000183","index":0,"data":"AAECAwQ="}"#,
                r#"{"status":"online","battery_v":3.92,"rssi":-61}"#,
                r#"{"device_id":"AABBCCDDEEFF","image_name":"i.jpg","chunk_id":0,"max_chunk_size":2,"payload":"/9g="}"#,
                r#"{"device_id":"AABBCCDDEEFF","capture_timeStamp":"2025-10-04T18:30:00Z","image_name":"i.jpg","image_size":4,"max_chunks_size":2,"total_chunk_count":2,"error":0,"sensor_data":{"temperature":1.5}}"#,
            ];
            let mut v = samples[which].as_bytes().to_vec();
            if !v.is_empty() {
                let i = flip % v.len();
                v[i] = byte;
                v.truncate(cut.max(1));
            }
            let b = Bytes::from(v);
            let _ = decode(&TopicKind::Data, &b, DecodeLimits::default());
            let _ = decode(&TopicKind::Status, &b, DecodeLimits::default());
        }
    }

    #[test]
    fn status_text_is_kept_as_sent_and_alive_is_the_wake_hello() {
        let ok =
            Bytes::from_static(br#"{"status":"online","battery_v":3.92,"rssi":-61,"fw":"1.4.2"}"#);
        let DeviceMsg::Status(s) =
            decode(&TopicKind::Status, &ok, DecodeLimits::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.status, "online");
        assert!(!s.is_wake());
        let gxp = Bytes::from_static(
            br#"{"device_id":"AABBCCDDEEFF","status":"Alive","pendingImg":3,"pending_list":["a.jpg"]}"#,
        );
        let DeviceMsg::Status(s) =
            decode(&TopicKind::Status, &gxp, DecodeLimits::default()).unwrap()
        else {
            panic!()
        };
        assert!(s.is_wake());
        assert_eq!(s.pending_count, Some(3));
        assert!(s.extra.contains_key("pending_list"));
        let sloppy = Bytes::from_static(
            br#"{"device_id":"X","status":"Alive","pendingImg":"3","pending_count":2,"rssi":-61.6,"ts":"yesterday"}"#,
        );
        let DeviceMsg::Status(s) =
            decode(&TopicKind::Status, &sloppy, DecodeLimits::default()).unwrap()
        else {
            panic!()
        };
        assert!(
            s.is_wake(),
            "a mistyped field does not cost the wake answer"
        );
        assert_eq!((s.pending_count, s.rssi), (Some(3), Some(-62)));
        assert_eq!(s.extra.get("pending_count"), Some(&Value::from(2)));
        assert_eq!(s.extra.get("ts"), Some(&Value::from("yesterday")));
        let bad = Bytes::from(format!(r#"{{"status":"{}"}}"#, "x".repeat(65)));
        assert_eq!(
            decode(&TopicKind::Status, &bad, DecodeLimits::default())
                .unwrap_err()
                .code,
            ErrorCode::BadField
        );
    }
}
