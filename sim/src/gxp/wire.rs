//! The GXP firmware's payloads as the simulator sends them, and the engine's answers as a GXP
//! device reads them (`../shared/GXP-FIRMWARE.md`). Pure functions: no I/O, no clock.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

/// The sensor snapshot a GXP device sends with each capture's metadata (the flat, older form:
/// gas resistance in ohms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sensors {
    /// °C.
    pub temperature: f64,
    /// %RH.
    pub humidity: f64,
    /// hPa.
    pub pressure: f64,
    /// Ω (the engine stores kΩ).
    pub gas_resistance_ohm: f64,
}

/// What a capture's metadata declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta<'a> {
    /// The device's id, as in the topic.
    pub device_id: &'a str,
    /// The capture's identity, e.g. `image_000123.jpg`.
    pub image_name: &'a str,
    /// `capture_timeStamp`, ISO 8601 UTC.
    pub captured_at: &'a str,
    /// Image length in bytes.
    pub image_size: usize,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// Where the device is installed.
    pub location: &'a str,
    /// The sensor snapshot.
    pub sensors: Sensors,
}

/// The name of a device's `n`th capture: `image_000123.jpg`.
pub fn image_name(n: u32) -> String {
    format!("image_{n:06}.jpg")
}

/// The wake-up hello on `/status`.
pub fn alive(device_id: &str, pending: usize) -> Bytes {
    json_bytes(&json!({"device_id": device_id, "status": "Alive", "pendingImg": pending}))
}

/// A capture's metadata on `/data` (flat fields, `error: 0`).
pub fn metadata(m: &Meta<'_>) -> Bytes {
    json_bytes(&json!({
        "device_id": m.device_id,
        "capture_timeStamp": m.captured_at,
        "image_name": m.image_name,
        "image_size": m.image_size,
        "max_chunks_size": m.chunk_size,
        "total_chunk_count": m.image_size.div_ceil(m.chunk_size),
        "location": m.location,
        "error": 0,
        "temperature": m.sensors.temperature,
        "humidity": m.sensors.humidity,
        "pressure": m.sensors.pressure,
        "gas_resistance": m.sensors.gas_resistance_ohm,
    }))
}

/// One of the quirky metadata re-sends: the same image, every other field null. The engine must
/// keep what the full copy gave.
pub fn metadata_nulls(device_id: &str, image_name: &str) -> Bytes {
    json_bytes(&json!({
        "device_id": device_id,
        "capture_timeStamp": null,
        "image_name": image_name,
        "image_size": null,
        "max_chunks_size": null,
        "total_chunk_count": null,
        "location": null,
        "error": 0,
        "temperature": null,
        "humidity": null,
        "pressure": null,
        "gas_resistance": null,
    }))
}

/// One base64 JSON chunk on `/data`. Built by hand: this is the hot path of the capture bench.
pub fn chunk(
    device_id: &str,
    image_name: &str,
    index: usize,
    chunk_size: usize,
    data: &[u8],
) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    Bytes::from(format!(
        r#"{{"device_id":"{device_id}","image_name":"{image_name}","chunk_id":{index},"max_chunk_size":{chunk_size},"payload":"{b64}"}}"#
    ))
}

/// Where the metadata re-sends go among a capture's `total` chunks: copy `k` (1-based) is sent
/// after the chunk at this position in the send order, spread evenly and, from two chunks up,
/// all before the last chunk (so that they reach a capture still assembling).
pub fn resend_positions(copies: u32, total: usize) -> Vec<usize> {
    (1..=copies as usize)
        .map(|k| (k * total / (copies as usize + 1)).min(total.saturating_sub(2)))
        .collect()
}

/// A message from the engine to a GXP device, on `/ack` or `/cmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `{"image_name", "ACK_OK": {...}}` or `"ACK_OK": true`: the image is stored.
    AckOk {
        /// The acknowledged image.
        image_name: String,
    },
    /// `{"image_name", "missing_chunks": [..]}`: re-send exactly these chunks.
    Nack {
        /// The image.
        image_name: String,
        /// 0-based chunk ids.
        missing: Vec<u32>,
    },
    /// `{"capture_image": true}`: take a picture now.
    CaptureImage,
    /// `{"next_wake": "..."}`: sleep until then.
    NextWake(String),
    /// `{"send_image": name}`: send one stored image again.
    SendImage(String),
    /// `{"send_all_pending": true}`: send every image not yet acknowledged.
    SendAllPending,
}

/// Reads an answer; `None` for anything a GXP device would not act on.
pub fn parse(payload: &[u8]) -> Option<Inbound> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let o = v.as_object()?;
    let name = || {
        o.get("image_name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if o.get("ACK_OK")
        .is_some_and(|a| a.is_object() || a == &Value::Bool(true))
    {
        return Some(Inbound::AckOk {
            image_name: name()?,
        });
    }
    if let Some(list) = o.get("missing_chunks").and_then(Value::as_array) {
        let missing = list
            .iter()
            .filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect();
        return Some(Inbound::Nack {
            image_name: name()?,
            missing,
        });
    }
    if o.get("capture_image") == Some(&Value::Bool(true)) {
        return Some(Inbound::CaptureImage);
    }
    if let Some(t) = o.get("next_wake").and_then(Value::as_str) {
        return Some(Inbound::NextWake(t.to_owned()));
    }
    if let Some(n) = o.get("send_image").and_then(Value::as_str) {
        return Some(Inbound::SendImage(n.to_owned()));
    }
    if o.get("send_all_pending") == Some(&Value::Bool(true)) {
        return Some(Inbound::SendAllPending);
    }
    None
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta<'static> {
        Meta {
            device_id: "AABBCCDDEEFF",
            image_name: "image_000007.jpg",
            captured_at: "2025-10-04T18:30:00Z",
            image_size: 51_234,
            chunk_size: 1024,
            location: "sim_lab",
            sensors: Sensors {
                temperature: 23.5,
                humidity: 45.2,
                pressure: 1013.25,
                gas_resistance_ohm: 12_345.67,
            },
        }
    }

    #[test]
    fn image_names_are_zero_padded_jpg_names() {
        assert_eq!(image_name(123), "image_000123.jpg");
        assert_eq!(image_name(1), "image_000001.jpg");
    }

    #[test]
    fn alive_is_the_firmware_hello() {
        let v: Value = serde_json::from_slice(&alive("AABBCCDDEEFF", 3)).unwrap();
        assert_eq!(
            v,
            json!({"device_id": "AABBCCDDEEFF", "status": "Alive", "pendingImg": 3})
        );
    }

    #[test]
    fn metadata_has_the_flat_fields_with_no_chunk_id_and_gas_in_ohms() {
        let v: Value = serde_json::from_slice(&metadata(&meta())).unwrap();
        assert_eq!(v["image_name"], "image_000007.jpg");
        assert_eq!(v["capture_timeStamp"], "2025-10-04T18:30:00Z");
        assert_eq!(v["image_size"], 51_234);
        assert_eq!(v["max_chunks_size"], 1024);
        assert_eq!(v["total_chunk_count"], 51);
        assert_eq!(v["error"], 0);
        assert_eq!(v["gas_resistance"], 12_345.67);
        assert_eq!(v["location"], "sim_lab");
        assert!(v.get("chunk_id").is_none() && v.get("type").is_none());
    }

    #[test]
    fn null_copies_keep_only_the_identity() {
        let v: Value =
            serde_json::from_slice(&metadata_nulls("AABBCCDDEEFF", "image_000007.jpg")).unwrap();
        assert_eq!(v["image_name"], "image_000007.jpg");
        assert_eq!(v["device_id"], "AABBCCDDEEFF");
        for k in [
            "image_size",
            "total_chunk_count",
            "temperature",
            "gas_resistance",
            "capture_timeStamp",
        ] {
            assert!(v[k].is_null(), "{k}");
        }
    }

    #[test]
    fn chunks_carry_base64_of_exactly_their_bytes() {
        let data = [0xFFu8, 0xD8, 0x00, 0x7F, 0xFE];
        let v: Value =
            serde_json::from_slice(&chunk("AABBCCDDEEFF", "image_000007.jpg", 4, 1024, &data))
                .unwrap();
        assert_eq!(v["chunk_id"], 4);
        assert_eq!(v["max_chunk_size"], 1024);
        assert_eq!(v["image_name"], "image_000007.jpg");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn metadata_resends_are_spread_and_all_precede_the_last_chunk() {
        assert_eq!(resend_positions(3, 50), vec![12, 25, 37]);
        assert_eq!(resend_positions(0, 50), Vec::<usize>::new());
        assert_eq!(resend_positions(5, 2), vec![0; 5]);
        assert_eq!(resend_positions(2, 1), vec![0, 0]);
    }

    #[test]
    fn both_ack_ok_forms_are_acks() {
        let a = br#"{"device_id":"AABBCCDDEEFF","image_name":"image_000007.jpg","ACK_OK":{"next_wake_time":"5:30PM"}}"#;
        let b = br#"{"image_name":"image_000007.jpg","ACK_OK":true}"#;
        for p in [&a[..], &b[..]] {
            assert_eq!(
                parse(p),
                Some(Inbound::AckOk {
                    image_name: "image_000007.jpg".into()
                })
            );
        }
    }

    #[test]
    fn a_nack_lists_plain_chunk_ids() {
        let p = br#"{"device_id":"AABBCCDDEEFF","image_name":"image_000007.jpg","missing_chunks":[3,9,50]}"#;
        assert_eq!(
            parse(p),
            Some(Inbound::Nack {
                image_name: "image_000007.jpg".into(),
                missing: vec![3, 9, 50]
            })
        );
        let none = br#"{"image_name":"image_000007.jpg","missing_chunks":[]}"#;
        assert_eq!(
            parse(none),
            Some(Inbound::Nack {
                image_name: "image_000007.jpg".into(),
                missing: vec![]
            })
        );
    }

    #[test]
    fn commands_are_read_by_their_key() {
        assert_eq!(
            parse(br#"{"device_id":"X","capture_image":true}"#),
            Some(Inbound::CaptureImage)
        );
        assert_eq!(
            parse(br#"{"device_id":"X","next_wake":"2025-10-07T16:48:00Z"}"#),
            Some(Inbound::NextWake("2025-10-07T16:48:00Z".into()))
        );
        assert_eq!(
            parse(br#"{"device_id":"X","send_image":"image_000001.jpg"}"#),
            Some(Inbound::SendImage("image_000001.jpg".into()))
        );
        assert_eq!(
            parse(br#"{"device_id":"X","send_all_pending":true}"#),
            Some(Inbound::SendAllPending)
        );
    }

    #[test]
    fn what_a_device_would_not_act_on_is_ignored() {
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"device_id":"X","capture_image":false}"#), None);
        assert_eq!(
            parse(br#"{"ACK_OK":{}}"#),
            None,
            "an ACK_OK without image_name"
        );
        assert_eq!(
            parse(br#"{"type":"ACK_OK","capture_id":"img_000001"}"#),
            None
        );
        assert_eq!(parse(b"[1,2]"), None);
    }
}
