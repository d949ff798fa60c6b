//! A publisher that behaves like the devices in the field: a persistent MQTT session
//! (`clean_start = false`, a session expiry) and QoS 1 readings that it keeps until the broker
//! acknowledges them. rumqttc re-sends what was in flight when a resumed session comes back;
//! when the broker lost the session, what it had not acknowledged is published again. It
//! records which readings the broker acknowledged: those are the ones that must be stored.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// What a run did.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// (device, seq) of every reading the broker acknowledged.
    pub acked: Vec<(String, u64)>,
    /// Readings published again because the broker came back without the session.
    pub republished: u64,
    /// Connections lost during the run.
    pub reconnects: u64,
}

/// `devices` devices send `per_device` readings each (seq 1..), `per_sec` a second in all, at
/// most `window` unacknowledged at a time, through a persistent session to `port`; returns
/// once every reading was acknowledged or `deadline` passed.
pub async fn publish_readings(
    port: u16,
    prefix: &str,
    devices: &[String],
    per_device: u64,
    (per_sec, window): (u64, usize),
    deadline: Duration,
) -> PublishReport {
    let mut o = MqttOptions::new(
        format!("persistent-pub-{}", super::random_hex(6)),
        "127.0.0.1",
        port,
    );
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(Some(1 << 20));
    let (client, mut el) = AsyncClient::new(o, 1 << 16);
    let mut todo: VecDeque<(String, u64)> = (1..=per_device)
        .flat_map(|s| devices.iter().map(move |d| (d.clone(), s)))
        .collect();
    // Published, not yet seen going out; sent and not yet acknowledged.
    let mut queued: VecDeque<(String, u64)> = VecDeque::new();
    let mut inflight: HashMap<u16, (String, u64)> = HashMap::new();
    let mut report = PublishReport::default();
    let mut connected_once = false;
    // New readings go out only while connected: rumqttc drops what was queued when the broker
    // lost the session, and this run's packet-id mapping must not count those.
    let mut connected = false;
    let start = tokio::time::Instant::now();
    let end = start + deadline;
    let mut sent = 0u64;
    let total = devices.len() as u64 * per_device;
    while (report.acked.len() as u64) < total && tokio::time::Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as u64;
        while connected && queued.len() + inflight.len() < window && sent < due {
            let Some((d, s)) = todo.pop_front() else {
                break;
            };
            sent += 1;
            let payload = format!(r#"{{"type":"reading","seq":{s},"t":21.5}}"#);
            client
                .publish(
                    format!("{prefix}/{d}/data"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
            queued.push_back((d, s));
        }
        let ev = tokio::time::timeout(Duration::from_millis(5), el.poll()).await;
        match ev {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) => {
                if connected_once && !c.session_present {
                    // The broker lost the session: rumqttc dropped what it held. Publish again.
                    report.republished += (inflight.len() + queued.len()) as u64;
                    todo.extend(inflight.drain().map(|(_, r)| r));
                    todo.extend(queued.drain(..));
                }
                connected_once = true;
                connected = true;
            }
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid)))) => {
                // A re-sent packet keeps its id; a new one takes the next reading queued.
                if let std::collections::hash_map::Entry::Vacant(slot) = inflight.entry(pkid) {
                    if let Some(r) = queued.pop_front() {
                        slot.insert(r);
                    }
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(r) = inflight.remove(&a.pkid) {
                    report.acked.push(r);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                connected = false;
                report.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = client.disconnect().await;
    report
}
