//! `fleetflow-null-sub`: the drain-limit baseline for benchmarks. A minimal rumqttc v5 consumer
//! with the engine's session settings (persistent session, manual acks, same receive maximum)
//! that acknowledges every message at once and discards it. It exits after `--expect` messages
//! or `--idle-s` seconds without one, and prints JSON: messages, bytes, and the rate between the
//! first and the last message.

use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[derive(Parser)]
#[command(
    name = "fleetflow-null-sub",
    about = "Acks and discards: the broker's drain limit"
)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "mqtt://127.0.0.1:11883")]
    url: String,
    /// Topic prefix; subscribes to the same filters as the engine.
    #[arg(long, default_value = "ESP32CAM")]
    prefix: String,
    /// Client id.
    #[arg(long, default_value = "fleetflow-null-sub")]
    client_id: String,
    /// MQTT v5 receive maximum.
    #[arg(long, default_value_t = 8192)]
    receive_maximum: u16,
    /// Stop after this many messages (0: only on idle).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Stop after this many idle seconds once messages have arrived.
    #[arg(long, default_value_t = 5.0)]
    idle_s: f64,
    /// Give up if nothing arrives for this long at the start.
    #[arg(long, default_value_t = 120.0)]
    start_timeout_s: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (host, port) = fleetflow_sim::url::parse_mqtt_url(&a.url)?;
    let mut o = MqttOptions::new(a.client_id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(false);
    o.set_manual_acks(true);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(600);
    props.receive_maximum = Some(a.receive_maximum);
    props.max_packet_size = Some(1 << 20);
    o.set_connect_properties(props);
    // Room for an ack of every packet id: brokers may send past the receive maximum (Mosquitto
    // 2.0 does once acks flow), and `try_ack` must never find the request channel full.
    let (client, mut el) = AsyncClient::new(o, usize::from(u16::MAX) + 1024);
    let filters: Vec<Filter> = fleetflow_protocol::topic::TopicParser::new(a.prefix.clone())
        .subscriptions()
        .into_iter()
        .map(|t| Filter::new(t, QoS::AtLeastOnce))
        .collect();
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let started = Instant::now();
    loop {
        let idle = if first.is_some() {
            a.idle_s
        } else {
            a.start_timeout_s
        };
        match tokio::time::timeout(Duration::from_secs_f64(idle), el.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.subscribe_many(filters.clone()).await?
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                client.try_ack(&p)?;
                n += 1;
                bytes += p.payload.len() as u64;
                last = Instant::now();
                first.get_or_insert(last);
                if a.expect > 0 && n >= a.expect {
                    break;
                }
            }
            Ok(Ok(_)) => {
                if first.is_some() && last.elapsed() > Duration::from_secs_f64(a.idle_s) {
                    break;
                }
            }
            Ok(Err(e)) => {
                eprintln!("null subscriber: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Let the last acks out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let _ = el.poll().await;
        }
    })
    .await;
    let span = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let report = serde_json::json!({
        "messages": n,
        "bytes": bytes,
        "span_s": span,
        "messages_per_sec": if span > 0.0 { n as f64 / span } else { 0.0 },
        "mb_per_sec": if span > 0.0 { bytes as f64 / span / 1e6 } else { 0.0 },
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    println!("{report}");
    Ok(())
}
