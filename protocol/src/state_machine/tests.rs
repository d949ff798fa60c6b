//! The state machine's behaviour in both formats, with a fake clock.
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
    assert!(rows(&out)
        .iter()
        .any(|r| matches!(r, Row::Status(s) if s.status == "Alive" && s.pending_count == Some(1))));
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
