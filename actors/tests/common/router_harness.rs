//! A router with its real dependencies (device actors on arbiters, a Postgres sink on a fresh
//! database, an object sink over an in-memory store) fed through a recording MQTT link: what the
//! router tests drive.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use fleetflow_actors::config::{AssemblyConfig, DevicesConfig, ObjectsConfig, SinksConfig};
use fleetflow_actors::device::{DeviceDeps, DeviceSnapshot};
use fleetflow_actors::link::{MqttLink, ReplyRoute};
use fleetflow_actors::router::{DeviceRouter, QueryDevice, RawPublish};
use fleetflow_actors::sinks::objects::ObjectSink;
use fleetflow_actors::sinks::pg::PgSink;
use fleetflow_protocol::budget::GlobalBudget;
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::schedule::ScheduleBook;
use fleetflow_protocol::topic::TopicParser;
use rumqttc::v5::Request;

use super::acked;

pub const PREFIX: &str = "ESP32CAM";

pub struct Engine {
    pub router: Addr<DeviceRouter>,
    route: Arc<ReplyRoute>,
    link: MqttLink,
    pub requests: flume::Receiver<Request>,
    next_pkid: u16,
    _arbiters: Vec<Arbiter>,
    _db_guard: super::TestDb,
}

impl Engine {
    pub async fn start(arbiters: usize) -> Self {
        let db_guard = super::migrated_database().await;
        let url = db_guard.url.clone();
        let sinks = SinksConfig {
            max_batch_age_ms: 5,
            ..Default::default()
        };
        let pg = PgSink::new(super::pool(&url), sinks).start();
        let store = Arc::new(object_store::memory::InMemory::new());
        let objects = ObjectSink::new(store, pg.clone(), ObjectsConfig::default()).start();
        let threads: Vec<Arbiter> = (0..arbiters).map(|_| Arbiter::new()).collect();
        let handles = Arc::new(threads.iter().map(|a| a.handle()).collect::<Vec<_>>());
        let devices = DevicesConfig {
            restart_backoff_min_ms: 1,
            restart_backoff_max_ms: 1,
            // Fleet-scale tests (idle_memory.rs) hold up to a million live actors.
            max_actors: 2_000_000,
            ..Default::default()
        };
        let router = DeviceRouter::create(move |ctx| {
            let mut r = DeviceRouter::new(handles);
            r.set_deps(DeviceDeps {
                assembly: Arc::new(AssemblyConfig::default()),
                devices: Arc::new(devices),
                budget: Arc::new(GlobalBudget::new(64 << 20)),
                pg,
                objects,
                router: ctx.address().recipient(),
                book: Arc::new(ScheduleBook::new()),
                publish_log: Arc::new(Default::default()),
            });
            r
        });
        let (link, requests) = super::recording_link();
        let route = Arc::new(ReplyRoute {
            source_name: Arc::from("default"),
            link: link.clone(),
            topics: TopicParser::new(PREFIX),
            gxp: Arc::new(Default::default()),
            company_id: None,
        });
        Self {
            router,
            route,
            link,
            requests,
            next_pkid: 1,
            _arbiters: threads,
            _db_guard: db_guard,
        }
    }

    /// Publishes `payload` on the device's `suffix` topic at QoS 1; returns its packet id.
    pub async fn publish(
        &mut self,
        device: &DeviceId,
        suffix: &str,
        payload: &'static [u8],
    ) -> u16 {
        let pkid = self.next_pkid;
        // Packet ids wrap as on a real connection (0 is not one).
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.link.received();
        self.router
            .send(RawPublish {
                topic: Bytes::from(format!("{PREFIX}/{device}/{suffix}")),
                payload: Bytes::from_static(payload),
                ack: Some(self.link.token(pkid)),
                reply_route: self.route.clone(),
                charge: None,
                received: std::time::Instant::now(),
            })
            .await
            .unwrap();
        pkid
    }

    /// Waits until the broker acks of `pkids` all went out.
    pub async fn wait_acked(&self, pkids: impl IntoIterator<Item = u16>) {
        let mut want: BTreeSet<u16> = pkids.into_iter().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !want.is_empty() {
            for p in acked(&self.requests) {
                want.remove(&p);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "packets {want:?} never acked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn snapshot(&self, device: &DeviceId) -> Option<DeviceSnapshot> {
        self.router.send(QueryDevice(device.clone())).await.unwrap()
    }
}
