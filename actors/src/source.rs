//! The MQTT source: one rumqttc v5 event loop, polled by a task that only decodes the packet
//! kind and forwards PUBLISHes to the router's bounded queue. It never waits on I/O other than
//! the broker: acks and publishes from the rest of the engine go out through the same loop.
//! It reconnects with exponential backoff and resubscribes on every CONNACK.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, watch};

use crate::config::MqttConfig;
use crate::link::{MqttLink, ReplyRoute};
use crate::metrics as m;
use crate::router::RawPublish;
use crate::transport;
use fleetflow_protocol::topic::TopicParser;

/// At most this many QoS 1 messages can be unacknowledged on one connection: packet ids are
/// 16-bit and unique while in flight. Queues sized above it never fill with QoS 1 traffic.
pub const MAX_INFLIGHT_PACKET_IDS: usize = 65_535;

/// The rumqttc request channel: every possible ack plus room for publishes to devices.
pub const REQUEST_CHANNEL_CAPACITY: usize = MAX_INFLIGHT_PACKET_IDS + 8192;

/// The source → router queue: QoS 1 forwarding never waits, so the poll loop keeps draining
/// acks even when the rest of the pipeline is slow (the broker then holds what is unacked).
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
    /// Acks and publishes.
    pub link: MqttLink,
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

/// Builds the client options from config.
pub fn options(cfg: &MqttConfig) -> Result<MqttOptions, SourceError> {
    let url = transport::parse_url(&cfg.url).map_err(transport::TransportError::from)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), url.dial_address(), url.port);
    if url.scheme != transport::Scheme::Mqtt {
        let ca = match (&cfg.ca_pem, &cfg.ca_file) {
            (Some(pem), _) => Some(pem.as_bytes().to_vec()),
            (None, Some(f)) => Some(transport::read_ca_file(f)?),
            _ => None,
        };
        o.set_transport(transport::transport(&url, ca.as_deref(), cfg.verify_cert)?);
    }
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)));
    o.set_clean_start(cfg.clean_start);
    o.set_manual_acks(true);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(cfg.session_expiry_secs);
    props.receive_maximum = Some(cfg.receive_maximum.max(1));
    props.max_packet_size = Some(cfg.max_packet_bytes);
    o.set_connect_properties(props);
    // Room for an ack for every packet id that can be in flight (65,535), whatever the broker
    // does with the receive maximum, plus ACK/NACK publishes: queuing an ack never fails.
    o.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    let password = match (&cfg.password, &cfg.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| SourceError::PasswordFile(f.clone(), e))?
                .trim_end()
                .to_string(),
        ),
        _ => None,
    };
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), password.unwrap_or_default());
    }
    Ok(o)
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
    spawn_with_filters("admin", cfg, Vec::new(), Vec::new(), out)
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
    let opts = options(cfg)?;
    let sub_qos = qos(cfg.qos)?;
    let cap = opts.request_channel_capacity();
    let (client, eventloop) = AsyncClient::new(opts, cap);
    let link = MqttLink::new(client.clone(), sub_qos);
    let connected = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (broker_info_tx, broker_info) = watch::channel(None);
    let (control, control_rx) = watch::channel(SourceControl::Run);
    let parser = TopicParser::new(cfg.topic_prefix.clone());
    let (filters_tx, filters_rx) = watch::channel(filters.clone());
    let reply_route = std::sync::Arc::new(ReplyRoute {
        source_name: std::sync::Arc::from(name),
        link: link.clone(),
        topics: parser,
        gxp: std::sync::Arc::new(cfg.gxp.clone()),
    });
    let lp = SourceLoop {
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
    };
    let task = tokio::spawn(lp.run());
    Ok(SourceHandle {
        link,
        connected,
        received,
        broker_info,
        control,
        filters: filters_tx,
        task,
    })
}

/// The task that polls one source's event loop and forwards its PUBLISHes.
struct SourceLoop {
    client: AsyncClient,
    eventloop: EventLoop,
    link: MqttLink,
    reply_route: std::sync::Arc<ReplyRoute>,
    connected: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    broker_info: watch::Sender<Option<serde_json::Value>>,
    control: watch::Receiver<SourceControl>,
    out: mpsc::Sender<RawPublish>,
    topics: Vec<String>,
    forget: Vec<String>,
    filters: watch::Receiver<Vec<String>>,
    qos: QoS,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl SourceLoop {
    /// Moves the live connection to `wanted`: subscribes what is new, unsubscribes what went.
    /// While disconnected only the list changes; the next CONNACK subscribes it all.
    fn resubscribe(&mut self, wanted: Vec<String>) {
        if self.connected.load(Ordering::Acquire) {
            let added: Vec<_> = wanted
                .iter()
                .filter(|f| !self.topics.contains(f))
                .map(|t| rumqttc::v5::mqttbytes::v5::Filter::new(t.clone(), self.qos))
                .collect();
            if !added.is_empty() {
                if let Err(e) = self.client.try_subscribe_many(added) {
                    tracing::error!(error = %e, "could not queue subscriptions");
                }
            }
            for gone in self.topics.iter().filter(|f| !wanted.contains(f)) {
                if let Err(e) = self.client.try_unsubscribe(gone.clone()) {
                    tracing::error!(error = %e, filter = %gone, "could not queue an unsubscribe");
                }
            }
        } else {
            // The broker may resume a session holding these: unsubscribe them on reconnect.
            for gone in self.topics.iter().filter(|f| !wanted.contains(f)) {
                if !self.forget.contains(gone) {
                    self.forget.push(gone.clone());
                }
            }
        }
        tracing::info!(filters = ?wanted, "MQTT subscriptions changed");
        self.topics = wanted;
    }

    /// Polls the connection until told to stop: forwards PUBLISHes, (re)subscribes on each
    /// CONNACK, follows filter changes, and backs off after a lost connection; then says goodbye.
    async fn run(mut self) {
        let mut backoff = self.backoff_min;
        let bytes_counter = metrics::counter!(m::MQTT_BYTES_TOTAL);
        let mut max_unacked = 0i64;
        loop {
            let state = *self.control.borrow();
            if state == SourceControl::Stop {
                break;
            }
            let ev = tokio::select! {
                ev = self.eventloop.poll() => ev,
                changed = self.control.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                Ok(()) = self.filters.changed() => {
                    let wanted = self.filters.borrow_and_update().clone();
                    self.resubscribe(wanted);
                    continue;
                }
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if state != SourceControl::Run {
                        continue;
                    }
                    bytes_counter.increment(p.payload.len() as u64);
                    if self.forward(p, &mut max_unacked).await.is_break() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = self.backoff_min;
                    self.on_connected(&ack);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => log_refused_subscriptions(&ack),
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    tracing::warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                }
                Ok(_) => {}
                Err(e) => {
                    self.on_connection_error(&e, backoff).await;
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
        self.say_goodbye().await;
    }

    /// Counts a PUBLISH, gives it an ack token (QoS 1) and hands it to the router. A full
    /// queue drops a QoS 0 message and waits for room for a QoS 1 one. Breaks when the router
    /// is gone.
    async fn forward(
        &mut self,
        p: rumqttc::v5::mqttbytes::v5::Publish,
        max_unacked: &mut i64,
    ) -> ControlFlow<()> {
        self.received.fetch_add(1, Ordering::Relaxed);
        let ack = (p.qos != QoS::AtMostOnce).then(|| {
            let n = self.link.received();
            if n > *max_unacked {
                *max_unacked = n;
                tracing::debug!(unacked = n, "new high of unacknowledged QoS 1 messages");
            }
            self.link.token(p.pkid)
        });
        let msg = RawPublish {
            topic: p.topic,
            payload: p.payload,
            ack,
            reply_route: self.reply_route.clone(),
        };
        match self.out.try_send(msg) {
            Ok(()) => ControlFlow::Continue(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if msg.ack.is_none() {
                    metrics::counter!(m::MQTT_DROPPED_TOTAL).increment(1);
                    ControlFlow::Continue(())
                } else if self.out.send(msg).await.is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ControlFlow::Break(()),
        }
    }

    /// A CONNACK: records the broker's answer, starts a new ack epoch, drops filters a resumed
    /// session still holds but nobody wants, and subscribes the wanted ones.
    fn on_connected(&mut self, ack: &rumqttc::v5::mqttbytes::v5::ConnAck) {
        let _ = self.broker_info.send(Some(connack_info(ack)));
        let epoch = self.link.next_epoch();
        self.connected.store(true, Ordering::Release);
        // One series per source, labelled with its name: a product id, `default` (the [mqtt]
        // file source) or `admin` (the command publisher). The publisher is labelled too: while
        // it is down, commands to devices with no live actor cannot go out.
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(1.0);
        tracing::info!(
            epoch,
            session_present = ack.session_present,
            "MQTT connected"
        );
        if ack.session_present {
            self.unsubscribe_forgotten();
        }
        if self.topics.is_empty() {
            return;
        }
        let filters = self
            .topics
            .iter()
            .map(|t| rumqttc::v5::mqttbytes::v5::Filter::new(t.clone(), self.qos));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "could not queue subscriptions");
        }
    }

    /// Unsubscribes the filters dropped while disconnected that a resumed session still holds.
    fn unsubscribe_forgotten(&mut self) {
        for old in std::mem::take(&mut self.forget) {
            if !self.topics.contains(&old) {
                tracing::info!(filter = %old, "unsubscribing a filter left in the resumed session");
                if let Err(e) = self.client.try_unsubscribe(old) {
                    tracing::error!(error = %e, "could not queue an unsubscribe");
                }
            }
        }
    }

    /// A failed connect or a lost connection: marks it down, counts the reconnect and waits
    /// `backoff` (or until the control changes).
    async fn on_connection_error(&mut self, e: &rumqttc::v5::ConnectionError, backoff: Duration) {
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "MQTT connection lost");
        } else {
            tracing::debug!(error = %e, "MQTT connect failed");
        }
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(0.0);
        metrics::counter!(m::MQTT_RECONNECTS_TOTAL).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = self.control.changed() => {}
        }
    }

    /// Gives queued acks a moment (up to 2 s) to reach the broker, then disconnects.
    async fn say_goodbye(&mut self) {
        let _ = self.client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => {
                    break
                }
                Ok(Ok(_)) => {}
            }
        }
        self.connected.store(false, Ordering::Release);
        // Stopped (for good, or before a restart under the same name): 0. The metrics crate
        // cannot remove one series, so a removed or disabled source keeps reporting 0 until the
        // engine restarts (docs/metrics.md, FleetflowSourceDisconnected).
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(0.0);
        tracing::info!("MQTT source stopped");
    }
}

/// Logs the subscriptions a SUBACK refused (usually the broker's ACLs).
fn log_refused_subscriptions(ack: &rumqttc::v5::mqttbytes::v5::SubAck) {
    let refused = ack
        .return_codes
        .iter()
        .filter(|c| {
            !matches!(
                c,
                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
            )
        })
        .count();
    if refused > 0 {
        tracing::error!(refused, codes = ?ack.return_codes, "the broker refused subscriptions (check its ACLs for this user)");
    }
}

/// The CONNACK as JSON for `mqtt_connection_status.broker_info`.
fn connack_info(ack: &rumqttc::v5::mqttbytes::v5::ConnAck) -> serde_json::Value {
    let mut v = serde_json::json!({"session_present": ack.session_present, "protocol": "MQTT 5"});
    if let Some(p) = &ack.properties {
        v["receive_maximum"] = serde_json::json!(p.receive_max);
        v["maximum_qos"] = serde_json::json!(p.max_qos);
        v["retain_available"] = serde_json::json!(p.retain_available.map(|r| r == 1));
        v["maximum_packet_size"] = serde_json::json!(p.max_packet_size);
        v["topic_alias_maximum"] = serde_json::json!(p.topic_alias_max);
        v["server_keep_alive"] = serde_json::json!(p.server_keep_alive);
        v["session_expiry_interval"] = serde_json::json!(p.session_expiry_interval);
        v["assigned_client_identifier"] = serde_json::json!(p.assigned_client_identifier);
        v["wildcard_subscription_available"] =
            serde_json::json!(p.wildcard_subscription_available.map(|r| r == 1));
        v["shared_subscription_available"] =
            serde_json::json!(p.shared_subscription_available.map(|r| r == 1));
        v["server_reference"] = serde_json::json!(p.server_reference);
    }
    v
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
