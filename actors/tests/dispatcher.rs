//! The subscription dispatcher between a source and the router: a message matching several
//! subscriptions runs every action, and its broker ack goes out once, after the last of them
//! (the `device_profile` share is held by the test, standing in for the device actor).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use fleetflow_actors::config::SinksConfig;
use fleetflow_actors::link::{self, MqttLink, ReplyRoute};
use fleetflow_actors::router::RawPublish;
use fleetflow_actors::sinks::pg::PgSink;
use fleetflow_actors::subscriptions::dispatch::spawn;
use fleetflow_actors::subscriptions::{StatsRegistry, SubscriptionRow, SubscriptionSet};
use fleetflow_protocol::topic::TopicParser;
use rumqttc::v5::Request;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use common::{acked, count, published};

struct Harness {
    input: mpsc::Sender<RawPublish>,
    routed: mpsc::Receiver<RawPublish>,
    route: Arc<ReplyRoute>,
    link: MqttLink,
    requests: flume::Receiver<Request>,
    db: tokio_postgres::Client,
    _db_guard: common::TestDb,
}

impl Harness {
    async fn start(subs: &[(i64, &str, Value)]) -> Self {
        let db_guard = common::migrated_database().await;
        let url = db_guard.url.clone();
        let db = common::connect(&url).await;
        let sinks = SinksConfig {
            max_batch_age_ms: 5,
            ..Default::default()
        };
        let pg = PgSink::new(common::pool(&url), sinks).start();
        let rows: Vec<SubscriptionRow> = subs
            .iter()
            .map(|(id, topic, actions)| SubscriptionRow {
                id: *id,
                name: format!("sub{id}"),
                topic: topic.to_string(),
                enabled: true,
                actions: actions.clone(),
            })
            .collect();
        let set = SubscriptionSet::compile(
            "acme",
            &rows,
            &StatsRegistry::default(),
            &reqwest::Client::new(),
        );
        let (_set_tx, set_rx) = watch::channel(Arc::new(set));
        let (router_tx, routed) = mpsc::channel(64);
        let (input, _task) = spawn(set_rx, router_tx, pg);
        let (link, requests) = common::recording_link();
        let route = Arc::new(ReplyRoute {
            source_name: Arc::from("acme"),
            link: link.clone(),
            topics: TopicParser::new("acme"),
            gxp: Arc::new(Default::default()),
            company_id: None,
        });
        Self {
            input,
            routed,
            route,
            link,
            requests,
            db,
            _db_guard: db_guard,
        }
    }

    async fn publish(&self, topic: &str, payload: &'static str, pkid: u16) {
        self.link.received();
        self.input
            .send(RawPublish {
                topic: Bytes::from(topic.to_string()),
                payload: Bytes::from_static(payload.as_bytes()),
                ack: Some(self.link.token(pkid)),
                reply_route: self.route.clone(),
                charge: None,
                received: std::time::Instant::now(),
            })
            .await
            .unwrap();
    }

    async fn next_routed(&mut self) -> RawPublish {
        tokio::time::timeout(Duration::from_secs(10), self.routed.recv())
            .await
            .expect("nothing reached the router within 10 s")
            .expect("the dispatcher stopped")
    }

    async fn telemetry_rows(&self, device: &str) -> i64 {
        count(
            &self.db,
            &format!("SELECT count(*) FROM telemetry WHERE device_id = '{device}'"),
        )
        .await
    }

    /// The broker acks queued from now until there are `n` of them (or 10 s passed).
    async fn acks_eventually(&self, n: usize) -> Vec<u16> {
        let mut got = Vec::new();
        for _ in 0..500 {
            got.extend(acked(&self.requests));
            if got.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    }

    /// Waits until `device` has `n` telemetry rows.
    async fn wait_telemetry(&self, device: &str, n: i64) {
        for _ in 0..200 {
            if self.telemetry_rows(device).await == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{device}: {} telemetry rows, expected {n}",
            self.telemetry_rows(device).await
        );
    }
}

#[actix::test]
async fn a_message_matching_two_subscriptions_runs_both_and_is_acked_once_after_both() {
    let mut h = Harness::start(&[
        (
            1,
            "acme/+/status",
            json!([{"type": "store_json", "table": "telemetry"}]),
        ),
        (
            2,
            "acme/#",
            json!([
                {"type": "device_profile"},
                {"type": "republish", "topic": "mirror/{device_id}", "qos": 1}
            ]),
        ),
    ])
    .await;
    h.publish("acme/cam-000001/status", r#"{"status":"online"}"#, 77)
        .await;
    // device_profile: the device actor gets the message with a share of its ack.
    let routed = h.next_routed().await;
    assert_eq!(&routed.topic[..], b"acme/cam-000001/status");
    assert!(
        routed.ack.is_some(),
        "the forwarded message carries no ack share"
    );
    // store_json: a telemetry row.
    h.wait_telemetry("cam-000001", 1).await;
    // republish: queued on the connection, and the only publish.
    let publishes = published(&h.requests);
    assert_eq!(publishes.len(), 1, "{publishes:?}");
    assert_eq!(publishes[0].0, "mirror/cam-000001");
    assert_eq!(&publishes[0].1[..], br#"{"status":"online"}"#);
    // Two of three actions done (the row committed, the republish queued): no ack yet.
    assert_eq!(acked(&h.requests), Vec::<u16>::new());
    link::ack(routed.ack);
    // The telemetry row's share goes with its commit, which may trail the row's visibility.
    assert_eq!(h.acks_eventually(1).await, vec![77]);
    // Nothing ran twice.
    assert!(h.routed.try_recv().is_err());
    assert_eq!(acked(&h.requests), Vec::<u16>::new());
    assert_eq!(h.telemetry_rows("cam-000001").await, 1);
}

#[actix::test]
async fn two_device_profile_subscriptions_forward_a_message_once_and_ack_it_once() {
    let mut h = Harness::start(&[
        (1, "acme/+/status", json!([{"type": "device_profile"}])),
        (2, "acme/#", json!([{"type": "device_profile"}])),
    ])
    .await;
    h.publish("acme/cam-000002/status", r#"{"status":"online"}"#, 5)
        .await;
    h.publish("acme/cam-000003/status", r#"{"status":"online"}"#, 6)
        .await;
    let first = h.next_routed().await;
    let second = h.next_routed().await;
    // The second message reaching the router shows the first was not forwarded twice.
    assert_eq!(&first.topic[..], b"acme/cam-000002/status");
    assert_eq!(&second.topic[..], b"acme/cam-000003/status");
    assert_eq!(acked(&h.requests), Vec::<u16>::new());
    link::ack(second.ack);
    assert_eq!(acked(&h.requests), vec![6]);
    link::ack(first.ack);
    assert_eq!(acked(&h.requests), vec![5]);
}

#[actix::test]
async fn a_message_matching_no_subscription_is_acked_and_goes_no_further() {
    let mut h = Harness::start(&[(1, "acme/+/status", json!([{"type": "device_profile"}]))]).await;
    h.publish("acme/cam-000004/telemetry", r#"{"t":1}"#, 9)
        .await;
    // Positive control, sent after it: a matching message reaches the router.
    h.publish("acme/cam-000004/status", r#"{"status":"online"}"#, 10)
        .await;
    let routed = h.next_routed().await;
    assert_eq!(&routed.topic[..], b"acme/cam-000004/status");
    assert!(
        h.routed.try_recv().is_err(),
        "the unmatched message was routed"
    );
    assert_eq!(acked(&h.requests), vec![9]);
    link::ack(routed.ack);
    assert_eq!(acked(&h.requests), vec![10]);
}

#[actix::test]
async fn the_engines_own_ack_topic_is_not_a_device_message() {
    let mut h = Harness::start(&[(1, "acme/#", json!([{"type": "device_profile"}]))]).await;
    h.publish("acme/cam-000005/ack", r#"{"ok":true}"#, 3).await;
    h.publish("acme/cam-000005/status", r#"{"status":"online"}"#, 4)
        .await;
    let routed = h.next_routed().await;
    assert_eq!(&routed.topic[..], b"acme/cam-000005/status");
    assert!(
        h.routed.try_recv().is_err(),
        "the engine's own ACK was routed"
    );
    assert_eq!(acked(&h.requests), vec![3]);
}
