//! Micro-benchmarks of the hot path: payload decoding, chunk assembly (with allocations per
//! chunk counted by a global counting allocator), and NACK encoding. Run with `cargo bench`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fleetflow_protocol::assembler::{Assembly, Layout};
use fleetflow_protocol::message::{decode, DecodeLimits};
use fleetflow_protocol::topic::{TopicKind, TopicParser};
use fleetflow_sim::image::jpeg_like;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn layout() -> Layout {
    Layout {
        image_bytes: 51_234,
        chunk_size: 1024,
        total_chunks: 51,
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let reading = Bytes::from_static(br#"{"type":"reading","seq":1841,"ts":"2026-10-04T12:00:00Z","temperature_c":21.5,"humidity_pct":40.2,"pressure_hpa":1012.3,"gas_kohm":12.1}"#);
    g.throughput(Throughput::Elements(1));
    g.bench_function("reading", |b| {
        b.iter(|| decode(&TopicKind::Data, &reading, DecodeLimits::default()).unwrap())
    });
    let kind = TopicKind::Chunk {
        capture_id: "img_000183".into(),
        index: 7,
    };
    let chunk = Bytes::from(vec![7u8; 1024]);
    g.bench_function("binary_chunk", |b| {
        b.iter(|| decode(&kind, &chunk, DecodeLimits::default()).unwrap())
    });
    let parser = TopicParser::new("ESP32CAM");
    g.bench_function("topic", |b| {
        b.iter(|| {
            parser
                .parse(b"ESP32CAM/AABBCCDDEEFF/chunk/img_000183/17")
                .unwrap()
        })
    });
    g.finish();
}

fn bench_assemble(c: &mut Criterion) {
    let image = jpeg_like(51_234, 1);
    let chunks: Vec<Bytes> = (0..51)
        .map(|i| fleetflow_sim::image::chunk(&image, 1024, i))
        .collect();
    let mut g = c.benchmark_group("assemble");
    g.throughput(Throughput::Bytes(image.len() as u64));
    g.bench_function("51_chunks", |b| {
        b.iter_batched(
            || Assembly::new(layout()),
            |mut a| {
                for (i, ch) in chunks.iter().enumerate() {
                    a.add(i as u32, ch);
                }
                a.into_image()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Allocations per chunk on the assembly path: decode (binary) + add, whole capture.
    let kind = |i: u32| TopicKind::Chunk {
        capture_id: "img_000183".into(),
        index: i,
    };
    let kinds: Vec<TopicKind> = (0..51).map(kind).collect();
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut a = Assembly::new(layout());
    for (i, ch) in chunks.iter().enumerate() {
        let msg = decode(&kinds[i], ch, DecodeLimits::default()).unwrap();
        if let fleetflow_protocol::message::DeviceMsg::Chunk(c) = msg {
            a.add(c.index, &c.data);
        }
    }
    let image_out = a.into_image();
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(image_out.len(), 51_234);
    println!(
        "allocations per chunk on the assembly path: {:.2} ({allocs} for 51 chunks, including the one image buffer)",
        allocs as f64 / 51.0
    );
}

fn bench_batch_encoder(c: &mut Criterion) {
    use bytes::BytesMut;
    use fleetflow_actors::sinks::pg_write::ReadingColumns;
    use fleetflow_actors::sinks::rows::{PendingRow, ReadingRow, Row};
    use fleetflow_protocol::ids::DeviceId;
    use fleetflow_protocol::message::Measurements;
    use tokio_postgres::types::Type;

    let devices: Vec<DeviceId> = (0..200)
        .map(|i| DeviceId::parse(&format!("{:012X}", i)).unwrap())
        .collect();
    let batch: Vec<PendingRow> = (0..2000)
        .map(|i| {
            PendingRow::new(
                Row::Reading(ReadingRow {
                    device_id: devices[i % 200].clone(),
                    seq: Some(i as i64),
                    capture_id: None,
                    values: Measurements {
                        temperature_c: Some(21.5),
                        humidity_pct: Some(40.2),
                        pressure_hpa: Some(1012.3),
                        gas_kohm: None,
                    },
                    extra: Default::default(),
                    measured_at: chrono::Utc::now(),
                    touch_device: i < 200,
                }),
                None,
            )
        })
        .collect();
    let types = [
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::TEXT_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::JSONB_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
    ];
    let mut g = c.benchmark_group("batch_encoder");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("readings_2000_rows_unnest_params", |b| {
        let mut buf = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            let cols = ReadingColumns::build(&batch);
            buf.clear();
            for (p, t) in cols.params().iter().zip(types.iter()) {
                p.to_sql_checked(t, &mut buf).unwrap();
            }
            (cols.device_count(), buf.len())
        })
    });
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    use std::hash::BuildHasher;
    let parser = TopicParser::new("ESP32CAM");
    let topics: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("ESP32CAM/{:012X}/data", i).into_bytes())
        .collect();
    let hasher = std::collections::hash_map::RandomState::new();
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(topics.len() as u64));
    // The router's per-message work: parse the topic, pick the device's arbiter (of 8).
    g.bench_function("parse_and_place_1000_topics", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for t in &topics {
                let p = parser.parse(t).unwrap();
                acc += hasher.hash_one(&p.device_id) % 8;
            }
            acc
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_assemble,
    bench_batch_encoder,
    bench_route
);
criterion_main!(benches);
