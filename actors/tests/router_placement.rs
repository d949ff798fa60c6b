//! The device router's placement, with real device actors, a real Postgres sink and an in-memory
//! object store: one actor per device, spread over the arbiters, and every later message for a
//! device reaching the actor that took its first. Which thread an actor runs on is seen through
//! the fault-injection panic (the panic hook runs on the panicking thread), and which actor took
//! a message through its restart count.
#![cfg(feature = "fault-injection")]

use crate::common;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use fleetflow_actors::device::DeviceSnapshot;
use fleetflow_actors::router::QueryDevices;
use fleetflow_actors::FAULT_PANIC_MARKER;
use fleetflow_protocol::ids::DeviceId;

use common::router_harness::Engine;

/// The names of the threads the fault-injection panics ran on, in order.
fn panic_threads() -> &'static Mutex<Vec<String>> {
    static THREADS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    THREADS.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| m.contains("fault injection"));
            if injected {
                let name = std::thread::current().name().unwrap_or("?").to_string();
                panic_threads().lock().unwrap().push(name);
            } else {
                default(info);
            }
        }));
        Mutex::new(Vec::new())
    })
}

/// Tests that read the panic threads run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What only these tests do with the harness's engine.
trait PanicOnce {
    async fn panic_once(&mut self, device: &DeviceId) -> String;
}

impl PanicOnce for Engine {
    /// Makes the device's actor panic once; returns the thread it ran on.
    async fn panic_once(&mut self, device: &DeviceId) -> String {
        let before = self.snapshot(device).await.map_or(0, |s| s.restarts);
        let n = panic_threads().lock().unwrap().len();
        let pkid = self.publish(device, "status", FAULT_PANIC_MARKER).await;
        self.wait_acked([pkid]).await;
        // The snapshot is answered after the panicking message and the restart wait.
        let after = self.snapshot(device).await.expect("a live actor");
        assert_eq!(
            after.restarts,
            before + 1,
            "{device}: one restart per panic"
        );
        let threads = panic_threads().lock().unwrap();
        assert_eq!(threads.len(), n + 1, "{device}: one injected panic");
        threads[n].clone()
    }
}

fn device(i: usize) -> DeviceId {
    DeviceId::parse(&format!(
        "place-{:06x}-{i:03}",
        rand::random::<u32>() & 0xff_ffff
    ))
    .unwrap()
}

#[actix::test]
async fn each_device_gets_one_actor_and_the_actors_are_spread_over_the_arbiters() {
    let _serial = SERIAL.lock().await;
    panic_threads();
    let mut e = Engine::start(4).await;
    let devices: Vec<DeviceId> = (0..24).map(device).collect();
    let mut pkids = Vec::new();
    for d in &devices {
        pkids.push(e.publish(d, "status", br#"{"status":"online"}"#).await);
    }
    e.wait_acked(pkids).await;
    let snaps: HashMap<String, DeviceSnapshot> =
        e.router.send(QueryDevices(devices.clone())).await.unwrap();
    assert_eq!(snaps.len(), devices.len(), "one live actor per device");
    let mut threads: HashMap<String, Vec<&DeviceId>> = HashMap::new();
    for d in &devices {
        let t = e.panic_once(d).await;
        assert!(
            t.contains("arbiter"),
            "{d}'s actor ran on {t:?}, not on an arbiter"
        );
        threads.entry(t).or_default().push(d);
    }
    let main = std::thread::current().name().unwrap_or("?").to_string();
    assert!(
        !threads.contains_key(&main),
        "an actor ran on the router's thread"
    );
    // 24 devices hashed over 4 arbiters all landing on one: odds of 4 * 4^-24.
    assert!(
        threads.len() >= 2,
        "every device actor on one arbiter: {threads:?}"
    );
    assert!(threads.len() <= 4);
    // A panic restarts that device's actor only.
    let snaps: HashMap<String, DeviceSnapshot> =
        e.router.send(QueryDevices(devices.clone())).await.unwrap();
    for d in &devices {
        assert_eq!(snaps[&d.to_string()].restarts, 1, "{d}");
    }
}

#[actix::test]
async fn a_later_message_for_a_device_reaches_the_actor_that_took_its_first() {
    let _serial = SERIAL.lock().await;
    panic_threads();
    let mut e = Engine::start(4).await;
    let d = device(0);
    let other = device(1);
    let first = e.publish(&d, "status", br#"{"status":"online"}"#).await;
    e.wait_acked([first]).await;
    let thread = e.panic_once(&d).await;
    // A message for another device does not touch this device's actor.
    let o = e.publish(&other, "status", br#"{"status":"online"}"#).await;
    e.wait_acked([o]).await;
    assert_eq!(e.snapshot(&other).await.unwrap().restarts, 0);
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(e.publish(&d, "status", br#"{"status":"sleeping"}"#).await);
    }
    e.wait_acked(later).await;
    // A fresh actor would count no restarts; the one that panicked counts one.
    let snap = e.snapshot(&d).await.unwrap();
    assert_eq!(snap.restarts, 1);
    assert_eq!(snap.state, "running");
    assert_eq!(
        e.panic_once(&d).await,
        thread,
        "the device moved to another arbiter"
    );
    assert_eq!(e.snapshot(&d).await.unwrap().restarts, 2);
}

#[actix::test]
async fn a_device_without_messages_has_no_actor() {
    let _serial = SERIAL.lock().await;
    let mut e = Engine::start(2).await;
    let seen = device(0);
    let unseen = device(1);
    let p = e.publish(&seen, "status", br#"{"status":"online"}"#).await;
    e.wait_acked([p]).await;
    // Positive control: the device that sent a message has one.
    assert!(e.snapshot(&seen).await.is_some());
    assert_eq!(e.snapshot(&unseen).await, None);
    let snaps: HashMap<String, DeviceSnapshot> = e
        .router
        .send(QueryDevices(vec![seen.clone(), unseen.clone()]))
        .await
        .unwrap();
    assert_eq!(snaps.keys().collect::<Vec<_>>(), vec![&seen.to_string()]);
}
