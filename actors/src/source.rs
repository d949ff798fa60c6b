//! The MQTT source: one rumqttc event loop, MQTT 5 or 3.1.1 (`protocol_version`), polled by a
//! task that only decodes the packet kind and forwards PUBLISHes to the router's bounded queue.
//! It never waits on I/O other than the broker: acks and publishes from the rest of the engine
//! go out through the same loop. It reconnects with exponential backoff and resubscribes on
//! every CONNACK.
//!
//! The protocol version is picked at the edge, with one path behind it:
//! - `options`: the client options of either version, and [`connect`], which picks the client.
//! - `events`: [`EventLoop`], either version's event loop yielding the same [`SourceEvent`]s.
//! - `run`: the task (one path for both versions): forwarding, (re)subscribing, backoff.

mod events;
mod options;
mod run;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

pub use events::{EventLoop, PollError, SourceEvent};
pub use options::{connect, options, options_v311};

use crate::config::MqttConfig;
use crate::link::{MqttLink, ReplyRoute};
use crate::router::RawPublish;
use crate::transport;
use fleetflow_protocol::topic::TopicParser;

/// QoS 1 messages one connection can have unacknowledged when the broker keeps packet ids
/// unique while in flight, as MQTT requires. Mosquitto 2.0 reuses them past this with a large
/// backlog; then the request queue can fill, and acks are held (`link.rs`).
pub const MAX_INFLIGHT_PACKET_IDS: usize = 65_535;

/// The rumqttc request channel: every possible ack plus room for publishes to devices.
pub const REQUEST_CHANNEL_CAPACITY: usize = MAX_INFLIGHT_PACKET_IDS + 8192;

/// The source → router queue, sized so that it rarely makes the poll loop wait (the loop's own
/// bound, `mqtt.max_in_flight`, pauses reading first).
pub const ROUTER_QUEUE_CAPACITY: usize = MAX_INFLIGHT_PACKET_IDS + 1024;

/// Commands for the source loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceControl {
    /// Forward messages.
    Run,
    /// Keep the connection (so acks still go out) but stop forwarding; what arrives is left
    /// unacknowledged for the broker to redeliver.
    Drain,
    /// Disconnect and end.
    Stop,
}

/// Invalid source settings.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The broker URL is not `mqtt://host[:port]`.
    #[error("mqtt.url {0:?} must look like mqtt://host:port")]
    BadUrl(String),
    /// QoS other than 0 or 1.
    #[error("mqtt.qos must be 0 or 1, got {0}")]
    BadQos(u8),
    /// Password file unreadable.
    #[error("mqtt.password_file {0}: {1}")]
    PasswordFile(String, std::io::Error),
    /// The URL or TLS settings of a TLS or websocket transport.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

/// A running source.
pub struct SourceHandle {
    /// The subscribing connection: acks (and publishes, for a publish-only source).
    pub link: MqttLink,
    /// Where the source's publishes go (ACK/NACK, commands, republish actions, the publish
    /// API): a connection of their own for a subscribing source, so that acks never wait
    /// behind outgoing QoS 1 publishes in the subscribing connection's request queue.
    pub publish_link: MqttLink,
    /// That publishing connection, stopped with the source.
    pub publisher: Option<Box<SourceHandle>>,
    /// True while connected.
    pub connected: Arc<AtomicBool>,
    /// PUBLISH packets received since the source started.
    pub received: Arc<AtomicU64>,
    /// What the broker said in its latest CONNACK (session, limits, features), as JSON.
    pub broker_info: watch::Receiver<Option<serde_json::Value>>,
    /// Control channel.
    pub control: watch::Sender<SourceControl>,
    /// The topic filters to hold: a change subscribes the new ones and unsubscribes the removed
    /// ones on the live connection, without reconnecting.
    pub filters: watch::Sender<Vec<String>>,
    /// The poll task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Parses a plain-TCP `mqtt://host:port` (or `tcp://`) URL into host and port.
pub fn parse_url(url: &str) -> Result<(String, u16), SourceError> {
    match transport::parse_url(url) {
        Ok(u) if u.scheme == transport::Scheme::Mqtt => Ok((u.host, u.port)),
        _ => Err(SourceError::BadUrl(url.into())),
    }
}

fn qos(q: u8) -> Result<QoS, SourceError> {
    match q {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        other => Err(SourceError::BadQos(other)),
    }
}

/// Starts the source with the camera profile's subscriptions under its prefix; PUBLISHes go to
/// `out`, which should hold more than the receive maximum.
pub fn spawn(cfg: &MqttConfig, out: mpsc::Sender<RawPublish>) -> Result<SourceHandle, SourceError> {
    let topics = TopicParser::new(cfg.topic_prefix.clone())
        .subscriptions()
        .to_vec();
    spawn_with_filters("default", cfg, topics, Vec::new(), out)
}

/// Starts a connection that only publishes (commands from the admin API): it subscribes to
/// nothing.
pub fn spawn_publisher(cfg: &MqttConfig) -> Result<SourceHandle, SourceError> {
    let (out, _) = mpsc::channel(1);
    spawn_connection("admin", cfg, (Vec::new(), Vec::new()), out, false)
}

/// The publishing connection of source `name`: `<client_id>-out`, a clean session, no
/// subscriptions.
fn spawn_out_connection(name: &str, cfg: &MqttConfig) -> Result<SourceHandle, SourceError> {
    let out_cfg = MqttConfig {
        client_id: format!("{}-out", cfg.client_id),
        clean_start: true,
        session_expiry_secs: 0,
        ..cfg.clone()
    };
    let (none, _) = mpsc::channel(1);
    spawn_connection(
        &format!("{name}-out"),
        &out_cfg,
        (Vec::new(), Vec::new()),
        none,
        false,
    )
}

/// Starts the source holding the given topic filters (which may be `$share/<group>/...`).
/// `forget` lists filters an earlier connection with the same client id may have left in a
/// persistent session: when the broker resumes that session, they are unsubscribed (unless
/// still wanted), so that no message arrives twice through an old overlapping filter.
pub fn spawn_with_filters(
    name: &str,
    cfg: &MqttConfig,
    filters: Vec<String>,
    forget: Vec<String>,
    out: mpsc::Sender<RawPublish>,
) -> Result<SourceHandle, SourceError> {
    spawn_connection(name, cfg, (filters, forget), out, true)
}

/// One connection's loop; with `with_publisher` (every source, whatever filters it holds now:
/// they may change in place) its publishes go through a second connection (`<client_id>-out`,
/// clean session): rumqttc stops taking requests while its outgoing QoS 1 window is full, and
/// an ack queued behind a publish would wait for the broker's answer to it.
fn spawn_connection(
    name: &str,
    cfg: &MqttConfig,
    (filters, forget): (Vec<String>, Vec<String>),
    out: mpsc::Sender<RawPublish>,
    with_publisher: bool,
) -> Result<SourceHandle, SourceError> {
    let sub_qos = qos(cfg.qos)?;
    let publisher = if with_publisher {
        Some(Box::new(spawn_out_connection(name, cfg)?))
    } else {
        None
    };
    let (client, eventloop) = connect(cfg, REQUEST_CHANNEL_CAPACITY)?;
    let link = MqttLink::with_order(client.clone(), sub_qos, cfg.ordered_acks).for_source(name);
    let publish_link = publisher
        .as_ref()
        .map_or_else(|| link.clone(), |p| p.link.clone());
    let connected = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (broker_info_tx, broker_info) = watch::channel(None);
    let (control, control_rx) = watch::channel(SourceControl::Run);
    let parser = TopicParser::new(cfg.topic_prefix.clone());
    let (filters_tx, filters_rx) = watch::channel(filters.clone());
    let reply_route = std::sync::Arc::new(ReplyRoute {
        source_name: std::sync::Arc::from(name),
        link: publish_link.clone(),
        topics: parser,
        gxp: std::sync::Arc::new(cfg.gxp.clone()),
        company_id: cfg.company_id,
    });
    let lp = run::SourceLoop {
        client,
        eventloop,
        link: link.clone(),
        reply_route,
        connected: connected.clone(),
        received: received.clone(),
        broker_info: broker_info_tx,
        control: control_rx,
        out,
        topics: filters,
        forget,
        filters: filters_rx,
        qos: sub_qos,
        backoff_min: Duration::from_millis(cfg.reconnect_min_ms),
        backoff_max: Duration::from_millis(cfg.reconnect_max_ms),
        leak_max_count: cfg.leak_max_count.max(1),
        leak_max_age: Duration::from_millis(cfg.leak_max_age_ms),
        full_queue_wait: Duration::from_secs(cfg.keep_alive_secs.max(2)) / 2,
        max_in_flight: i64::from(cfg.max_in_flight),
        pause_free_until: tokio::time::Instant::now(),
        budget: crate::queue_budget::QueueBudget::new(cfg.max_queued_bytes),
    };
    let task = tokio::spawn(lp.run());
    Ok(SourceHandle {
        link,
        publish_link,
        publisher,
        connected,
        received,
        broker_info,
        control,
        filters: filters_tx,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_parsed_with_a_default_port() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:11883").unwrap(),
            ("127.0.0.1".into(), 11883)
        );
        assert_eq!(parse_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://:1").is_err());
    }
}
