//! A real source against the real broker: when it loses its connection, the ack epoch moves at
//! once, not at the next CONNACK, so an ack tried in between is refused; and a leaked ack makes
//! it reconnect so that the broker redelivers the packet.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetflow_actors::config::MqttConfig;
use fleetflow_actors::link::ack;
use fleetflow_actors::router::RawPublish;
use fleetflow_actors::source::{self, SourceHandle};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use tokio::sync::mpsc;

fn broker() -> (String, u16) {
    let url = std::env::var("FLEETFLOW_TEST_MQTT_URL")
        .unwrap_or_else(|_| "mqtt://127.0.0.1:11883".into());
    source::parse_url(&url).expect("FLEETFLOW_TEST_MQTT_URL")
}

fn config(client_id: &str, prefix: &str) -> MqttConfig {
    let (host, port) = broker();
    MqttConfig {
        url: format!("mqtt://{host}:{port}"),
        client_id: client_id.into(),
        topic_prefix: prefix.into(),
        // A long first backoff: the window between the lost connection and the next CONNACK.
        reconnect_min_ms: 1500,
        reconnect_max_ms: 1500,
        ..MqttConfig::default()
    }
}

/// A plain client that publishes (QoS 1) and drives its own event loop.
fn client(id: &str) -> AsyncClient {
    let (host, port) = broker();
    let (c, mut el) = AsyncClient::new(MqttOptions::new(id, host, port), 64);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    c
}

async fn next(rx: &mut mpsc::Receiver<RawPublish>) -> RawPublish {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("the source is running")
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn started(cfg: &MqttConfig) -> (SourceHandle, mpsc::Receiver<RawPublish>) {
    let (tx, rx) = mpsc::channel(1024);
    let h = source::spawn(cfg, tx).expect("source starts");
    let c = h.connected.clone();
    wait_for("connected", || c.load(Ordering::Acquire)).await;
    // The subscription is queued right after the CONNACK; give it a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (h, rx)
}

#[tokio::test]
async fn the_epoch_moves_when_the_connection_is_lost_not_at_the_next_connack() {
    let tag = rand::random::<u32>();
    let (prefix, id) = (format!("ackepoch{tag}"), format!("ff-epoch-{tag}"));
    let cfg = config(&id, &prefix);
    let (h, mut rx) = started(&cfg).await;
    let publisher = client(&format!("pub-{tag}"));
    publisher
        .publish(
            format!("{prefix}/dev1/status"),
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let msg = next(&mut rx).await;
    // Replies go out on a connection of their own: acks never queue behind QoS 1 publishes.
    assert!(!msg.reply_route.link.same_connection(&h.link));
    assert!(msg.reply_route.link.same_connection(&h.publish_link));
    let token = msg.ack.expect("QoS 1 carries a token");
    assert!(
        token.link().same_connection(&h.link),
        "acks on the subscribing connection"
    );
    assert_eq!(
        token.epoch(),
        h.link.epoch(),
        "positive control: a live token"
    );

    // Another client with the same id takes the session over: the broker drops the source.
    let _intruder = client(&id);
    let c = h.connected.clone();
    wait_for("the source saw the connection go", || {
        !c.load(Ordering::Acquire)
    })
    .await;
    // Still inside the reconnect backoff: no CONNACK yet, and the old epoch is already dead.
    assert_ne!(
        token.epoch(),
        h.link.epoch(),
        "an ack queued now would reach the next session"
    );
    let unacked = h.link.unacked();
    ack(Some(token));
    assert_eq!(h.link.unacked(), unacked, "the stale ack was not queued");
    h.task.abort();
}

#[tokio::test]
async fn leaked_acks_make_the_source_reconnect_and_the_broker_redelivers() {
    let tag = rand::random::<u32>();
    let (prefix, id) = (format!("leak{tag}"), format!("ff-leak-{tag}"));
    let cfg = MqttConfig {
        leak_max_count: 1,
        reconnect_min_ms: 100,
        // The check runs between events; pings every second give it a turn.
        keep_alive_secs: 1,
        ..config(&id, &prefix)
    };
    let (h, mut rx) = started(&cfg).await;
    let publisher = client(&format!("pub-{tag}"));
    let topic = format!("{prefix}/dev1/status");
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, "{\"n\":1}")
        .await
        .unwrap();
    let first = next(&mut rx).await;
    let epoch = first.ack.as_ref().unwrap().epoch();
    drop(first); // its token leaks: nobody will acknowledge it
                 // The broker redelivers it on the resumed session, under a new epoch.
    let again = next(&mut rx).await;
    assert_eq!(&again.payload[..], b"{\"n\":1}");
    let token = again.ack.expect("QoS 1");
    assert!(token.epoch() > epoch, "redelivered on a new connection");
    ack(Some(token));
    assert_eq!(h.link.unacked(), 0);
    assert_eq!(h.link.leaks().0, 0);
    // Positive control: nothing else arrives (the redelivered copy was acked).
    assert!(tokio::time::timeout(Duration::from_millis(700), rx.recv())
        .await
        .is_err());
    h.task.abort();
}
