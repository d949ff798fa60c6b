//! What an idle device actor costs: the heap bytes that stay allocated per device once its
//! first message (a status) is stored and acknowledged, counted by the test binary's allocator
//! (`common::alloc_count`). Everything the device brings in is counted: its actor and mailbox,
//! its timer, the router's entry and owner binding. Issue 15's target is 2 KiB or less.
//!
//! The count is the whole process's: it holds because nextest runs each test in a process of its
//! own (`scripts/test`); under `cargo test`, other tests' threads would move it.
//!
//! CI counts 20,000 devices; `FLEETFLOW_IDLE_MEMORY_DEVICES=1000000` measures a million (a few
//! minutes, about 2 GB).

use crate::common;

use std::time::Duration;

use fleetflow_actors::router::QueryDevices;
use fleetflow_protocol::ids::DeviceId;

use common::alloc_count::live_bytes;
use common::router_harness::Engine;

/// Sends one status for each of `ids`, draining the broker acks as it goes.
async fn one_status_each(e: &mut Engine, ids: &[DeviceId]) {
    for chunk in ids.chunks(500) {
        let mut pkids = Vec::with_capacity(chunk.len());
        for d in chunk {
            pkids.push(
                e.publish(d, "status", br#"{"status":"online","battery_v":3.9}"#)
                    .await,
            );
        }
        e.wait_acked(pkids).await;
    }
}

fn ids(from: usize, n: usize) -> Vec<DeviceId> {
    (from..from + n)
        .map(|i| DeviceId::parse(&format!("AABBCC{i:06X}")).unwrap())
        .collect()
}

#[actix::test]
async fn an_idle_device_actor_holds_at_most_2_kib() {
    let mut e = Engine::start(2).await;
    // Warm-up: first-use allocations (the sink's batches, the pool, thread-locals) are not the
    // devices'.
    one_status_each(&mut e, &ids(0, 2_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = live_bytes();

    let n: usize = std::env::var("FLEETFLOW_IDLE_MEMORY_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20_000);
    let fleet = ids(10_000, n);
    one_status_each(&mut e, &fleet).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_device = (live_bytes() - before) as f64 / n as f64;

    // The positive control: every one of them has a live actor (nothing was passivated away).
    let probe: Vec<DeviceId> = fleet.iter().step_by(97).cloned().collect();
    let live = e.router.send(QueryDevices(probe.clone())).await.unwrap();
    assert_eq!(live.len(), probe.len(), "every device keeps a live actor");
    eprintln!("an idle device actor holds {per_device:.0} bytes ({n} devices)");
    assert!(
        per_device <= 2048.0,
        "an idle device actor holds {per_device:.0} bytes, over 2 KiB"
    );
}
