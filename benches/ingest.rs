//! Micro-benchmarks of the hot path: payload decoding, chunk assembly (with allocations per
//! chunk counted by a global counting allocator), and NACK encoding. Run with `cargo bench`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fleetflow::sim::image::jpeg_like;
use fleetflow_actors::assembler::{Assembly, Layout};
use fleetflow_actors::protocol::{decode, DecodeLimits};
use fleetflow_actors::topic::{TopicKind, TopicParser};

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
        .map(|i| fleetflow::sim::image::chunk(&image, 1024, i))
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
        if let fleetflow_actors::protocol::DeviceMsg::Chunk(c) = msg {
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

criterion_group!(benches, bench_decode, bench_assemble);
criterion_main!(benches);
