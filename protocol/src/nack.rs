//! ACK and NACK payloads (§5). A NACK stays under 4 KiB: long `missing` lists are cut to their
//! first ranges, and a later round asks for the rest.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// A NACK payload must be shorter than this (§5).
pub const MAX_NACK_BYTES: usize = 4096;

#[derive(Serialize)]
struct Nack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    capture_id: &'a str,
    missing: &'a [[u32; 2]],
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    round: Option<u32>,
}

fn nack(capture_id: &str, missing: &[[u32; 2]], reason: &'static str, round: Option<u32>) -> Bytes {
    let mut take = missing.len();
    loop {
        let n = Nack {
            kind: "NACK",
            capture_id,
            missing: &missing[..take],
            reason,
            round,
        };
        let v = serde_json::to_vec(&n).expect("serialising a NACK cannot fail");
        if v.len() < MAX_NACK_BYTES || take == 0 {
            return Bytes::from(v);
        }
        // Each range is at most 24 bytes; cut proportionally, then by one.
        let over = v.len() + 1 - MAX_NACK_BYTES;
        take = take.saturating_sub((over / 24).max(1));
    }
}

/// `{"type":"NACK",...,"reason":"missing_chunks","round":n}`
pub fn missing(capture_id: &str, ranges: &[[u32; 2]], round: u32) -> Bytes {
    nack(capture_id, ranges, "missing_chunks", Some(round))
}

/// `{"type":"NACK","missing":[],"reason":"need_metadata"}`
pub fn need_metadata(capture_id: &str) -> Bytes {
    nack(capture_id, &[], "need_metadata", None)
}

/// `{"type":"NACK","missing":[[0,total-1]],"reason":"checksum"}`
pub fn checksum(capture_id: &str, total_chunks: u32) -> Bytes {
    nack(
        capture_id,
        &[[0, total_chunks.saturating_sub(1)]],
        "checksum",
        None,
    )
}

/// `{"type":"NACK","missing":[],"reason":"storage"}`
pub fn storage(capture_id: &str) -> Bytes {
    nack(capture_id, &[], "storage", None)
}

#[derive(Serialize)]
struct AckOk<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    capture_id: &'a str,
    image_bytes: u32,
    stored_at: String,
}

/// `{"type":"ACK_OK","capture_id":...,"image_bytes":...,"stored_at":...}`
pub fn ack_ok(capture_id: &str, image_bytes: u32, stored_at: DateTime<Utc>) -> Bytes {
    let a = AckOk {
        kind: "ACK_OK",
        capture_id,
        image_bytes,
        stored_at: stored_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    };
    Bytes::from(serde_json::to_vec(&a).expect("serialising an ACK cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_missing_chunks_nack_matches_the_protocol_example() {
        let v: Value =
            serde_json::from_slice(&missing("img_000183", &[[3, 3], [17, 20]], 1)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"NACK","capture_id":"img_000183","missing":[[3,3],[17,20]],"reason":"missing_chunks","round":1})
        );
    }

    #[test]
    fn long_missing_lists_are_truncated_under_4_kib_keeping_the_first_ranges() {
        let ranges: Vec<[u32; 2]> = (0..2000)
            .map(|i| [i * 3 + 1_000_000, i * 3 + 1_000_001])
            .collect();
        let p = missing(&"c".repeat(64), &ranges, 2);
        assert!(p.len() < MAX_NACK_BYTES, "{}", p.len());
        let v: Value = serde_json::from_slice(&p).unwrap();
        let got = v["missing"].as_array().unwrap();
        assert!(got.len() > 100);
        assert_eq!(got[0], serde_json::json!([1_000_000, 1_000_001]));
    }

    #[test]
    fn ack_ok_carries_size_and_time() {
        let t = DateTime::parse_from_rfc3339("2026-10-04T12:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let v: Value = serde_json::from_slice(&ack_ok("img_1", 51234, t)).unwrap();
        assert_eq!(v["type"], "ACK_OK");
        assert_eq!(v["image_bytes"], 51234);
        assert_eq!(v["stored_at"], "2026-10-04T12:00:01.000Z");
    }
}
