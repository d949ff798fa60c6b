//! The GXP firmware's wire format (`GXP-FIRMWARE.md`), served beside fleetflow's own protocol on
//! the same topics: decoding its metadata and base64 chunks (every field variant seen in the
//! field), merging metadata re-sent with null fields, and building the answers it expects
//! (`ACK_OK`, the missing-chunks NACK, and its `/cmd` commands). Pure: no I/O.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::errors::ErrorCode;
use crate::ids::is_valid_capture_id;
use crate::payload::{DecodeError, Measurements};

/// Largest chunk size a GXP capture may announce (a JSON chunk is at most 64 KiB).
pub const MAX_GXP_CHUNK_BYTES: u32 = 48 * 1024;

/// The unit of `gas_resistance` in GXP metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GasUnit {
    /// Follows the form: the flat (older) form sends ohms, the nested `sensor_data` form kΩ.
    #[default]
    Auto,
    /// Always ohms (divided by 1000 for storage).
    Ohm,
    /// Always kΩ.
    Kohm,
}

/// Where the missing-chunks NACK goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NackTopic {
    /// `{prefix}/{id}/ack`, as the original worker did.
    #[default]
    Ack,
    /// `{prefix}/{id}/cmd`, as the later firmware generation expects.
    Cmd,
}

/// How `next_wake` is written in a `/cmd` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeFormat {
    /// ISO 8601 UTC (`2025-10-07T16:48:00Z`), as the original worker did.
    #[default]
    Iso,
    /// Device-local `H:MMAM/PM` (`5:30PM`), as the later generation expects.
    Local,
}

/// The per-product settings of the GXP profile: each difference between firmware generations,
/// with the original worker's behaviour as the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GxpSettings {
    /// Where missing-chunks NACKs go.
    pub nack_topic: NackTopic,
    /// How `next_wake` commands write the time.
    pub next_wake_format: WakeFormat,
    /// The unit of `gas_resistance`.
    pub gas_unit: GasUnit,
    /// After the last NACK round, ask for the whole image again with `{"send_image": name}`
    /// instead of failing silently (later generation).
    pub resend_whole_image_after_retries: bool,
    /// Largest NACK payload in bytes: the device's MQTT buffer (PubSubClient is often set to a
    /// few KB); longer missing lists are cut and a later round asks for the rest.
    pub nack_max_bytes: usize,
}

impl Default for GxpSettings {
    fn default() -> Self {
        Self {
            nack_topic: NackTopic::Ack,
            next_wake_format: WakeFormat::Iso,
            gas_unit: GasUnit::Auto,
            resend_whole_image_after_retries: false,
            nack_max_bytes: 4096,
        }
    }
}

/// Sizes a GXP message gave, each possibly missing (metadata copies may carry nulls, and chunks
/// that arrive first may carry some of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialLayout {
    /// `image_size`.
    pub image_bytes: Option<u64>,
    /// `max_chunks_size` / `max_chunk_size`.
    pub chunk_size: Option<u32>,
    /// `total_chunk_count` / `total_chunks_count`.
    pub total_chunks: Option<u32>,
}

impl PartialLayout {
    /// Fills what is still missing from `other`; never erases a value already given.
    pub fn merge(&mut self, other: &PartialLayout) {
        self.image_bytes = self.image_bytes.or(other.image_bytes);
        self.chunk_size = self.chunk_size.or(other.chunk_size);
        self.total_chunks = self.total_chunks.or(other.total_chunks);
        if self.chunk_size.is_none() && self.total_chunks == Some(1) {
            // One chunk: it is the whole image.
            self.chunk_size = self.image_bytes.and_then(|b| u32::try_from(b).ok());
        }
    }

    /// `(image_bytes, chunk_size, total_chunks)` once all three are known.
    pub fn complete(&self) -> Option<(u64, u32, u32)> {
        Some((self.image_bytes?, self.chunk_size?, self.total_chunks?))
    }
}

/// GXP capture metadata (a `/data` message without `chunk_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct GxpMeta {
    /// `image_name`, or `image_{image_id}.jpg`: the capture's identity.
    pub image_name: String,
    /// Numeric `image_id` (firmware v3.5.0), kept.
    pub image_id: Option<i64>,
    /// `capture_timeStamp`, `capture_timestamp` or `timestamp`.
    pub captured_at: Option<DateTime<Utc>>,
    /// Sizes, each possibly missing.
    pub layout: PartialLayout,
    /// Non-zero: the device failed to capture and no chunks follow.
    pub error: Option<i64>,
    /// Sensor snapshot, gas in kΩ.
    pub sensors: Measurements,
    /// Fields kept as they came (location and anything unknown), for `captures.meta`.
    pub extra: Map<String, Value>,
}

impl GxpMeta {
    /// Fills what this copy lacks from a later copy; never erases.
    pub fn merge(&mut self, later: GxpMeta) {
        self.image_id = self.image_id.or(later.image_id);
        self.captured_at = self.captured_at.or(later.captured_at);
        self.layout.merge(&later.layout);
        let (s, l) = (&mut self.sensors, later.sensors);
        s.temperature_c = s.temperature_c.or(l.temperature_c);
        s.humidity_pct = s.humidity_pct.or(l.humidity_pct);
        s.pressure_hpa = s.pressure_hpa.or(l.pressure_hpa);
        s.gas_kohm = s.gas_kohm.or(l.gas_kohm);
        for (k, v) in later.extra {
            if !v.is_null() {
                self.extra.entry(k).or_insert(v);
            }
        }
    }

    /// Whether any sensor value is present.
    pub fn has_sensors(&self) -> bool {
        let s = &self.sensors;
        s.temperature_c.is_some()
            || s.humidity_pct.is_some()
            || s.pressure_hpa.is_some()
            || s.gas_kohm.is_some()
    }
}

/// One GXP chunk (a `/data` message with `chunk_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct GxpChunk {
    /// The capture.
    pub image_name: String,
    /// 0-based index.
    pub index: u32,
    /// The decoded bytes.
    pub data: Bytes,
    /// Sizes the chunk carried (a chunk may arrive before its metadata).
    pub layout: PartialLayout,
}

#[derive(Deserialize)]
struct ChunkWire<'a> {
    #[serde(borrow, default)]
    image_name: Option<Cow<'a, str>>,
    #[serde(default)]
    image_id: Option<i64>,
    #[serde(default)]
    chunk_id: Option<i64>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
    #[serde(default)]
    max_chunk_size: Option<u32>,
    #[serde(default)]
    max_chunks_size: Option<u32>,
    #[serde(default)]
    image_size: Option<u64>,
    #[serde(default)]
    total_chunks_count: Option<u32>,
    #[serde(default)]
    total_chunk_count: Option<u32>,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> DecodeError {
    DecodeError {
        code,
        message: message.into(),
        capture_id: None,
    }
}

/// The capture identity: `image_name`, or `image_{image_id}.jpg`.
fn image_name(name: Option<&str>, id: Option<i64>) -> Result<String, DecodeError> {
    let name = match (name, id) {
        (Some(n), _) => n.to_owned(),
        (None, Some(id)) => format!("image_{id}.jpg"),
        (None, None) => return Err(bad(ErrorCode::BadField, "missing \"image_name\"")),
    };
    // The name becomes the last level of an object key: no separators, no dot segments.
    if !is_valid_capture_id(&name) || name.starts_with('.') {
        return Err(bad(
            ErrorCode::BadField,
            "image_name must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    Ok(name)
}

/// Decodes a GXP chunk: 2102 without payload, 2103 for bad base64, 2105 for bad fields.
pub fn decode_chunk(payload: &[u8]) -> Result<GxpChunk, DecodeError> {
    let w: ChunkWire<'_> = serde_json::from_slice(payload).map_err(crate::payload::json_error)?;
    let name = image_name(w.image_name.as_deref(), w.image_id)?;
    let index = w
        .chunk_id
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| bad(ErrorCode::BadField, "chunk_id must be an integer >= 0"))?;
    let with = |e: DecodeError| DecodeError {
        capture_id: Some(name.clone()),
        ..e
    };
    let b64 = w
        .payload
        .filter(|p| !p.is_empty())
        .ok_or_else(|| with(bad(ErrorCode::NoPayload, "chunk without payload")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| with(bad(ErrorCode::BadBase64, format!("invalid base64: {e}"))))?;
    Ok(GxpChunk {
        index,
        data: Bytes::from(data),
        layout: PartialLayout {
            image_bytes: w.image_size,
            chunk_size: w.max_chunk_size.or(w.max_chunks_size),
            total_chunks: w.total_chunks_count.or(w.total_chunk_count),
        },
        image_name: name,
    })
}

/// Fields of the metadata that map to columns; everything else is kept in `extra`.
const KNOWN_META: &[&str] = &[
    "device_id",
    "image_name",
    "image_id",
    "capture_timeStamp",
    "capture_timestamp",
    "timestamp",
    "image_size",
    "max_chunks_size",
    "max_chunk_size",
    "total_chunk_count",
    "total_chunks_count",
    "error",
    "temperature",
    "humidity",
    "pressure",
    "gas_resistance",
    "sensor_data",
];

/// Decodes GXP metadata. Metadata is one message per capture (or a few re-sent copies), so it
/// is read through a `Value`, which makes every field variant easy to accept.
pub fn decode_meta(payload: &[u8], gas: GasUnit) -> Result<GxpMeta, DecodeError> {
    let v: Value = serde_json::from_slice(payload).map_err(crate::payload::json_error)?;
    let Value::Object(mut o) = v else {
        return Err(bad(ErrorCode::BadField, "metadata is not a JSON object"));
    };
    let image_id = o.get("image_id").and_then(Value::as_i64);
    let name = image_name(o.get("image_name").and_then(Value::as_str), image_id)?;
    let with = |e: DecodeError| DecodeError {
        capture_id: Some(name.clone()),
        ..e
    };
    let first = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).filter(|v| !v.is_null()));
    let captured_at =
        first(&["capture_timeStamp", "capture_timestamp", "timestamp"]).and_then(parse_time);
    let layout = PartialLayout {
        image_bytes: first(&["image_size"])
            .map(as_count)
            .transpose()
            .map_err(with)?,
        chunk_size: first(&["max_chunks_size", "max_chunk_size"])
            .map(as_count)
            .transpose()
            .map_err(with)?
            .map(|c| c as u32),
        total_chunks: first(&["total_chunk_count", "total_chunks_count"])
            .map(as_count)
            .transpose()
            .map_err(with)?
            .map(|c| c as u32),
    };
    let error = first(&["error"]).and_then(Value::as_i64);
    let nested = o.get("sensor_data").and_then(Value::as_object);
    let sensors = sensors(nested.unwrap_or(&o), nested.is_some(), gas);
    o.retain(|k, v| !KNOWN_META.contains(&k.as_str()) && !v.is_null());
    Ok(GxpMeta {
        image_name: name,
        image_id,
        captured_at,
        layout,
        error,
        sensors,
        extra: o,
    })
}

fn as_count(v: &Value) -> Result<u64, DecodeError> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 4e9)
                .map(|f| f as u64)
        })
        .filter(|n| *n <= u64::from(u32::MAX))
        .ok_or_else(|| bad(ErrorCode::BadField, format!("{v} is not a size")))
}

fn sensors(o: &Map<String, Value>, nested: bool, gas: GasUnit) -> Measurements {
    let num = |k: &str| o.get(k).and_then(Value::as_f64).filter(|f| f.is_finite());
    let ohms = match gas {
        GasUnit::Auto => !nested,
        GasUnit::Ohm => true,
        GasUnit::Kohm => false,
    };
    Measurements {
        temperature_c: num("temperature"),
        humidity_pct: num("humidity"),
        pressure_hpa: num("pressure"),
        gas_kohm: num("gas_resistance").map(|g| if ohms { g / 1000.0 } else { g }),
    }
}

/// RFC 3339, a naive ISO date-time taken as UTC, or epoch milliseconds; anything else is
/// ignored (the receive time is used).
fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            }),
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => None,
    }
}

#[derive(Serialize)]
struct AckOk<'a> {
    device_id: &'a str,
    image_name: &'a str,
    #[serde(rename = "ACK_OK")]
    ack_ok: AckBody<'a>,
}

#[derive(Serialize)]
struct AckBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    next_wake_time: Option<&'a str>,
}

/// `{"device_id","image_name","ACK_OK":{"next_wake_time":"5:30PM"}}`
pub fn ack_ok(device_id: &str, image_name: &str, next_wake_time: Option<&str>) -> Bytes {
    let a = AckOk {
        device_id,
        image_name,
        ack_ok: AckBody { next_wake_time },
    };
    Bytes::from(serde_json::to_vec(&a).expect("serialising an ACK cannot fail"))
}

#[derive(Serialize)]
struct Nack<'a> {
    device_id: &'a str,
    image_name: &'a str,
    missing_chunks: &'a [u32],
}

/// `{"device_id","image_name","missing_chunks":[3,9]}`: a plain list of 0-based indexes, cut to
/// stay under `max_bytes` (a later round asks for the rest).
pub fn nack(device_id: &str, image_name: &str, ranges: &[[u32; 2]], max_bytes: usize) -> Bytes {
    // Each index costs at most 11 bytes ("4294967295,"); the fixed part is small.
    let fixed = 64 + device_id.len() + image_name.len();
    let room = max_bytes.saturating_sub(fixed) / 11;
    let take = room.max(1);
    let missing: Vec<u32> = ranges
        .iter()
        .flat_map(|[a, b]| *a..=*b)
        .take(take)
        .collect();
    let n = Nack {
        device_id,
        image_name,
        missing_chunks: &missing,
    };
    Bytes::from(serde_json::to_vec(&n).expect("serialising a NACK cannot fail"))
}

/// A `/cmd` command in the firmware's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GxpCommand {
    /// `{"device_id", "capture_image": true}`
    CaptureImage,
    /// `{"device_id", "next_wake": "..."}`: the text is already formatted.
    NextWake(String),
    /// `{"device_id", "send_image": name}`
    SendImage(String),
    /// `{"device_id", "send_all_pending": true}`
    SendAllPending,
}

impl GxpCommand {
    /// The payload for `device_id`.
    pub fn payload(&self, device_id: &str) -> Bytes {
        let mut o = Map::new();
        o.insert("device_id".into(), Value::from(device_id));
        match self {
            Self::CaptureImage => o.insert("capture_image".into(), Value::Bool(true)),
            Self::NextWake(t) => o.insert("next_wake".into(), Value::from(t.as_str())),
            Self::SendImage(n) => o.insert("send_image".into(), Value::from(n.as_str())),
            Self::SendAllPending => o.insert("send_all_pending".into(), Value::Bool(true)),
        };
        Bytes::from(Value::Object(o).to_string())
    }

    /// A command from the commands API or a `device_commands` row (`name`, `args`): the old
    /// worker's `image_name` and `wake_time` arguments. `None` when the name is not one of the
    /// firmware's commands or an argument is missing.
    pub fn from_name(name: &str, args: &Value) -> Option<Self> {
        let arg = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        match name {
            "capture_image" => Some(Self::CaptureImage),
            "send_all_pending" => Some(Self::SendAllPending),
            "send_image" => arg("image_name").map(Self::SendImage),
            "next_wake" => arg("wake_time").map(Self::NextWake),
            _ => None,
        }
    }
}

/// `2025-10-07T16:48:00Z`
pub fn iso_utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_test_metadata_decodes_with_gas_in_kohm() {
        let m = decode_meta(
            br#"{"device_id": "AABBCCDDEEFF", "capture_timeStamp": "2025-10-04T18:30:00Z", "image_name": "test_image_001.jpg", "image_size": 4, "max_chunks_size": 2, "total_chunk_count": 2, "location": "test_lab", "error": 0, "temperature": 22.5, "humidity": 50.0, "pressure": 1013.25, "gas_resistance": 54321.0}"#,
            GasUnit::Auto,
        )
        .unwrap();
        assert_eq!(m.image_name, "test_image_001.jpg");
        assert_eq!(m.layout.complete(), Some((4, 2, 2)));
        assert_eq!(m.sensors.temperature_c, Some(22.5));
        assert_eq!(m.sensors.gas_kohm, Some(54.321));
        assert_eq!(m.error, Some(0));
        assert_eq!(m.extra.get("location"), Some(&Value::from("test_lab")));
        assert_eq!(
            m.captured_at.unwrap().to_rfc3339(),
            "2025-10-04T18:30:00+00:00"
        );
    }

    #[test]
    fn field_variants_and_nested_sensors_are_accepted() {
        let m = decode_meta(
            br#"{"image_id": 77, "timestamp": 1759579200000, "image_size": 3000, "max_chunk_size": 1024, "total_chunks_count": 3, "sensor_data": {"temperature": 21.0, "gas_resistance": 11.487}}"#,
            GasUnit::Auto,
        )
        .unwrap();
        assert_eq!(m.image_name, "image_77.jpg");
        assert_eq!(m.image_id, Some(77));
        assert_eq!(m.layout.complete(), Some((3000, 1024, 3)));
        assert_eq!(m.sensors.gas_kohm, Some(11.487));
        assert_eq!(m.captured_at.unwrap().timestamp(), 1_759_579_200);
        let forced = decode_meta(
            br#"{"image_name":"a.jpg","sensor_data":{"gas_resistance":11487}}"#,
            GasUnit::Ohm,
        )
        .unwrap();
        assert_eq!(forced.sensors.gas_kohm, Some(11.487));
    }

    #[test]
    fn a_resent_copy_with_nulls_never_erases_an_earlier_copy() {
        let full = decode_meta(
            br#"{"image_name":"i.jpg","image_size":10,"max_chunks_size":4,"total_chunk_count":3,"temperature":20.5,"location":"x"}"#,
            GasUnit::Auto,
        )
        .unwrap();
        let nulls = decode_meta(
            br#"{"image_name":"i.jpg","image_size":null,"max_chunks_size":null,"total_chunk_count":null,"temperature":null,"location":null,"humidity":40}"#,
            GasUnit::Auto,
        )
        .unwrap();
        let mut m = full.clone();
        m.merge(nulls);
        assert_eq!(m.layout.complete(), Some((10, 4, 3)));
        assert_eq!(m.sensors.temperature_c, Some(20.5));
        assert_eq!(m.sensors.humidity_pct, Some(40.0));
        assert_eq!(m.extra.get("location"), Some(&Value::from("x")));
    }

    #[test]
    fn chunks_decode_and_their_errors_use_the_worker_codes() {
        let c = decode_chunk(br#"{"device_id": "X", "image_name": "t.jpg", "chunk_id": 1, "max_chunk_size": 2, "payload": "/9k="}"#).unwrap();
        assert_eq!((c.index, &c.data[..]), (1, &[0xFF, 0xD9][..]));
        assert_eq!(c.layout.chunk_size, Some(2));
        let no_payload = decode_chunk(br#"{"image_name":"t.jpg","chunk_id":1}"#).unwrap_err();
        assert_eq!(no_payload.code, ErrorCode::NoPayload);
        assert_eq!(no_payload.capture_id.as_deref(), Some("t.jpg"));
        let b64 = decode_chunk(br#"{"image_name":"t.jpg","chunk_id":1,"payload":"!!"}"#);
        assert_eq!(b64.unwrap_err().code, ErrorCode::BadBase64);
        let neg = decode_chunk(br#"{"image_name":"t.jpg","chunk_id":-1,"payload":"AA=="}"#);
        assert_eq!(neg.unwrap_err().code, ErrorCode::BadField);
        let path = decode_chunk(br#"{"image_name":"../x","chunk_id":0,"payload":"AA=="}"#);
        assert_eq!(path.unwrap_err().code, ErrorCode::BadField);
        let dots = decode_chunk(br#"{"image_name":"..","chunk_id":0,"payload":"AA=="}"#);
        assert_eq!(dots.unwrap_err().code, ErrorCode::BadField);
    }

    #[test]
    fn answers_have_the_firmware_shapes() {
        let a: Value = serde_json::from_slice(&ack_ok("D1", "i.jpg", Some("5:30PM"))).unwrap();
        assert_eq!(
            a,
            serde_json::json!({"device_id":"D1","image_name":"i.jpg","ACK_OK":{"next_wake_time":"5:30PM"}})
        );
        let n: Value =
            serde_json::from_slice(&nack("D1", "i.jpg", &[[3, 3], [9, 9]], 4096)).unwrap();
        assert_eq!(
            n,
            serde_json::json!({"device_id":"D1","image_name":"i.jpg","missing_chunks":[3,9]})
        );
        let long = nack("D1", "i.jpg", &[[0, 5000]], 1024);
        assert!(long.len() < 1024, "{}", long.len());
        let c: Value = serde_json::from_slice(&GxpCommand::CaptureImage.payload("D1")).unwrap();
        assert_eq!(
            c,
            serde_json::json!({"device_id":"D1","capture_image":true})
        );
        let s = GxpCommand::from_name("send_image", &serde_json::json!({"image_name":"i.jpg"}));
        assert_eq!(s, Some(GxpCommand::SendImage("i.jpg".into())));
        assert_eq!(
            GxpCommand::from_name("send_image", &serde_json::json!({})),
            None
        );
    }
}
