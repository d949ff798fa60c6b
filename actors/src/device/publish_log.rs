//! The message log's rows (`device_publish_log`, `[publish_log]`): what a device published and
//! what the engine sent it, as the old worker's troubleshooting guide reads them. Pure: the
//! device actor hands the rows to the Postgres sink, which writes them in batches.
//!
//! - JSON payloads are kept as received, without a copy (`LogPayload::Json` shares the MQTT
//!   buffer) when they are small enough and `jsonb` accepts them.
//! - Image chunks are sampled (1 in `chunk_sample_every`, by index, so chunk 0 is always there)
//!   and logged without their data: a GXP chunk keeps `image_name` and `chunk_id` and gets
//!   `payload_length`; a v1 binary chunk is `{capture_id, index, payload_length}`.
//! - Readings are sampled by `seq` (`readings_sample_every`, default every one).
//! - Anything else too large or not JSON is a summary: `payload_length` and the identifying
//!   fields it has (`type`, `image_name`, `capture_id`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::PublishLogConfig;
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::rows::{Direction, LogPayload, PublishLogRow};
use fleetflow_protocol::topic::TopicKind;

/// The fields a summary keeps, when present.
const IDENTIFYING: [&str; 5] = ["type", "image_name", "image_id", "capture_id", "chunk_id"];

/// What the sampler needs of a `/data` payload, read without building a tree (and, for an
/// unescaped `type`, without allocating).
#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(default)]
    chunk_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// The row for a message a device published, or `None` when the log is off or the sampler
/// leaves it out.
pub fn inbound(
    cfg: &PublishLogConfig,
    device: &DeviceId,
    topic: &Bytes,
    kind: &TopicKind,
    payload: &Bytes,
    at: DateTime<Utc>,
) -> Option<PublishLogRow> {
    inbound_decoded(cfg, device, topic, kind, payload, at, None)
}

/// [`inbound`] for a message the state machine has already decoded: `reading_seq` is the `seq`
/// of the reading it stored, so the sampler need not parse the payload again.
pub fn inbound_decoded(
    cfg: &PublishLogConfig,
    device: &DeviceId,
    topic: &Bytes,
    kind: &TopicKind,
    payload: &Bytes,
    at: DateTime<Utc>,
    reading_seq: Option<i64>,
) -> Option<PublishLogRow> {
    if !cfg.enabled {
        return None;
    }
    let logged = match kind {
        TopicKind::Chunk { capture_id, index } => {
            if !sampled(*index as u64, cfg.chunk_sample_every) {
                return None;
            }
            LogPayload::Summary(
                json!({"capture_id": capture_id, "index": index, "payload_length": payload.len()}),
            )
        }
        TopicKind::Data => match reading_seq {
            Some(seq) if !sampled(seq as u64, cfg.readings_sample_every) => return None,
            // Decoded as a reading: valid JSON.
            Some(_) => as_logged(cfg, payload, true),
            None => data_payload(cfg, payload)?,
        },
        _ => as_logged(cfg, payload, false),
    };
    Some(row(device, topic.clone(), Direction::In, logged, at))
}

/// The row for a message the engine sent a device (ACK, NACK, command).
pub fn outbound(
    cfg: &PublishLogConfig,
    device: &DeviceId,
    topic: &str,
    payload: &Bytes,
    at: DateTime<Utc>,
) -> Option<PublishLogRow> {
    cfg.enabled.then(|| {
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        row(
            device,
            topic,
            Direction::Out,
            as_logged(cfg, payload, false),
            at,
        )
    })
}

fn row(
    device: &DeviceId,
    topic: Bytes,
    direction: Direction,
    payload: LogPayload,
    at: DateTime<Utc>,
) -> PublishLogRow {
    PublishLogRow {
        device_id: device.clone(),
        topic,
        direction,
        payload,
        at,
    }
}

/// Whether item `n` of a 1-in-`every` sample is logged (0 or 1: every one).
fn sampled(n: u64, every: u32) -> bool {
    every <= 1 || n.is_multiple_of(u64::from(every))
}

/// A `/data` payload: a GXP chunk (sampled, without its data), a reading (sampled by `seq`), or
/// anything else as received.
fn data_payload(cfg: &PublishLogConfig, payload: &Bytes) -> Option<LogPayload> {
    let Ok(keys) = serde_json::from_slice::<Keys>(payload) else {
        return Some(as_logged(cfg, payload, false));
    };
    if let Some(chunk) = keys.chunk_id {
        if !sampled(chunk, cfg.chunk_sample_every) {
            return None;
        }
        return Some(LogPayload::Summary(summary(payload, true)));
    }
    if keys.kind.as_deref() == Some("reading") {
        if let Some(seq) = keys.seq {
            if !sampled(seq, cfg.readings_sample_every) {
                return None;
            }
        }
    }
    // Parsed above: valid JSON.
    Some(as_logged(cfg, payload, true))
}

/// The payload as received when it is small JSON that `jsonb` takes, else its summary.
/// `parsed`: already known to be valid JSON.
fn as_logged(cfg: &PublishLogConfig, payload: &Bytes, parsed: bool) -> LogPayload {
    let storable = payload.len() <= cfg.max_payload_bytes
        && std::str::from_utf8(payload).is_ok()
        && jsonb_takes(payload)
        && (parsed || serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok());
    if storable {
        LogPayload::Json(payload.clone())
    } else {
        LogPayload::Summary(summary(payload, false))
    }
}

/// `payload_length` and the identifying fields of a JSON object (for a chunk: all of its
/// fields but the data).
fn summary(payload: &[u8], chunk: bool) -> Value {
    let mut out = Map::new();
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) {
        for (k, v) in fields {
            let keep = if chunk {
                k != "payload"
            } else {
                IDENTIFYING.contains(&k.as_str())
            };
            if keep && !matches!(&v, Value::String(s) if s.contains('\0')) {
                out.insert(k, v);
            }
        }
    } else {
        out.insert("json".into(), Value::Bool(false));
    }
    out.insert("payload_length".into(), json!(payload.len()));
    Value::Object(out)
}

/// Whether PostgreSQL's `jsonb` takes valid JSON text: it refuses `\u0000`, surrogate escapes
/// that do not pair up, and numbers beyond `numeric`'s range, any of which would fail the whole
/// batch of log rows. Conservative: every surrogate escape, and every exponent of five digits or
/// more (even inside a string), makes a summary instead.
fn jsonb_takes(payload: &[u8]) -> bool {
    let mut i = 0;
    while i < payload.len() {
        match payload[i] {
            b'\\' if payload.get(i + 1) == Some(&b'u') => {
                let hex = payload.get(i + 2..i + 6).unwrap_or(&[]);
                if hex == b"0000"
                    || matches!(hex.first(), Some(b'd' | b'D'))
                        && matches!(hex.get(1), Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
                {
                    return false;
                }
                i += 2;
            }
            b'\\' => i += 2,
            b'e' | b'E' => {
                let digits = payload[i + 1..]
                    .iter()
                    .skip_while(|b| matches!(b, b'+' | b'-'))
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits >= 5 {
                    return false;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DeviceId {
        DeviceId::parse("AABBCCDDEEFF").unwrap()
    }

    fn cfg() -> PublishLogConfig {
        PublishLogConfig {
            chunk_sample_every: 10,
            readings_sample_every: 2,
            ..PublishLogConfig::default()
        }
    }

    fn log(kind: TopicKind, payload: &'static [u8]) -> Option<PublishLogRow> {
        let p = Bytes::from_static(payload);
        let topic = Bytes::from_static(b"P/AABBCCDDEEFF/data");
        inbound(&cfg(), &id(), &topic, &kind, &p, Utc::now())
    }

    #[test]
    fn a_gxp_chunk_is_logged_one_in_n_without_its_data_keeping_image_name() {
        let chunk =
            br#"{"image_name":"a.jpg","chunk_id":20,"payload":"AAAA","max_chunk_size":1024}"#;
        let row = log(TopicKind::Data, chunk).unwrap();
        assert_eq!(row.direction, Direction::In);
        let LogPayload::Summary(v) = row.payload else {
            panic!("a chunk is summarised")
        };
        assert_eq!(v["image_name"], "a.jpg");
        assert_eq!(v["chunk_id"], 20);
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_length"], chunk.len());
        assert!(log(
            TopicKind::Data,
            br#"{"image_name":"a.jpg","chunk_id":21,"payload":"AA"}"#
        )
        .is_none());
    }

    #[test]
    fn a_binary_chunk_is_its_capture_index_and_length() {
        let kind = TopicKind::Chunk {
            capture_id: "c1".into(),
            index: 0,
        };
        let row = log(kind, b"\xff\xd8\x00\x01").unwrap();
        assert_eq!(
            row.payload,
            LogPayload::Summary(json!({"capture_id": "c1", "index": 0, "payload_length": 4}))
        );
        let skipped = TopicKind::Chunk {
            capture_id: "c1".into(),
            index: 3,
        };
        assert!(log(skipped, b"\x00").is_none());
    }

    #[test]
    fn json_is_kept_as_received_and_readings_are_sampled_by_seq() {
        let meta = br#"{"image_name":"a.jpg","total_chunk_count":3}"#;
        let row = log(TopicKind::Data, meta).unwrap();
        assert_eq!(row.payload, LogPayload::Json(Bytes::from_static(meta)));
        assert!(log(TopicKind::Data, br#"{"type":"reading","seq":4}"#).is_some());
        assert!(log(TopicKind::Data, br#"{"type":"reading","seq":5}"#).is_none());
    }

    #[test]
    fn a_decoded_readings_seq_samples_as_parsing_it_would() {
        let t = Bytes::from_static(b"p/d1/data");
        for seq in 0..8i64 {
            let p = Bytes::from(format!(r#"{{"type":"reading","seq":{seq}}}"#));
            let parsed = inbound(&cfg(), &id(), &t, &TopicKind::Data, &p, Utc::now());
            let hinted = inbound_decoded(
                &cfg(),
                &id(),
                &t,
                &TopicKind::Data,
                &p,
                Utc::now(),
                Some(seq),
            );
            assert_eq!(parsed.is_some(), hinted.is_some(), "seq {seq}");
            if let Some(row) = hinted {
                assert_eq!(row.payload, LogPayload::Json(p));
            }
        }
        // The hint decides, not the payload: seq 1 is left out (every 2nd), hint 2 is kept.
        let p = Bytes::from_static(br#"{"type":"reading","seq":1}"#);
        assert!(inbound(&cfg(), &id(), &t, &TopicKind::Data, &p, Utc::now()).is_none());
        assert!(
            inbound_decoded(&cfg(), &id(), &t, &TopicKind::Data, &p, Utc::now(), Some(2)).is_some()
        );
    }

    #[test]
    fn bad_json_nul_escapes_and_large_payloads_become_summaries() {
        for p in [
            &b"{not json"[..],
            br#"{"type":"x","s":"a\u0000b"}"#,
            br#"{"type":"x","s":"\ud800"}"#,
            br#"{"type":"x","s":"\uD83D\uDE00"}"#,
            br#"{"type":"x","n":1e200000}"#,
        ] {
            let row = inbound(
                &cfg(),
                &id(),
                &Bytes::from_static(b"t"),
                &TopicKind::Status,
                &Bytes::copy_from_slice(p),
                Utc::now(),
            )
            .unwrap();
            assert!(matches!(row.payload, LogPayload::Summary(_)), "{p:?}");
        }
        let small = PublishLogConfig {
            max_payload_bytes: 8,
            ..cfg()
        };
        let p = Bytes::from_static(br#"{"type":"capture_meta","capture_id":"c9","w":1}"#);
        let row = outbound(&small, &id(), "t/ack", &p, Utc::now()).unwrap();
        assert_eq!(row.direction, Direction::Out);
        assert_eq!(
            row.payload,
            LogPayload::Summary(
                json!({"type": "capture_meta", "capture_id": "c9", "payload_length": p.len()})
            )
        );
    }

    #[test]
    fn ordinary_json_is_taken_as_it_is() {
        for ok in [
            r#"{"type":"reading","seq":1,"t":2.5e3,"s":"caf\u00e9 \\ud800"}"#,
            r#"{"n":-1E-12,"name":"élan"}"#,
        ] {
            assert!(jsonb_takes(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn nothing_is_logged_when_the_log_is_off() {
        let off = PublishLogConfig {
            enabled: false,
            ..cfg()
        };
        let p = Bytes::from_static(b"{}");
        let t = Bytes::from_static(b"t");
        assert!(inbound(&off, &id(), &t, &TopicKind::Status, &p, Utc::now()).is_none());
        assert!(outbound(&off, &id(), "t", &p, Utc::now()).is_none());
        assert!(outbound(&cfg(), &id(), "t", &p, Utc::now()).is_some());
    }
}
