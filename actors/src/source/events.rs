//! The receiving half of a connection of either protocol version: [`EventLoop`] polls rumqttc's
//! v5 or 3.1.1 event loop and turns what it yields into the one [`SourceEvent`] the source's
//! task handles, so the task has one path whatever the broker speaks.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

/// What the source's task acts on, from either protocol's event loop.
#[derive(Debug)]
pub enum SourceEvent {
    /// A PUBLISH from the broker.
    Publish {
        /// Topic bytes.
        topic: Bytes,
        /// Payload bytes.
        payload: Bytes,
        /// Its QoS (a QoS 1 one is acknowledged later, through the link).
        qos: QoS,
        /// Packet id (0 for QoS 0).
        pkid: u16,
    },
    /// The broker accepted the connection.
    ConnAck {
        /// The broker resumed a session it kept for this client id.
        session_present: bool,
        /// The CONNACK as JSON for `mqtt_connection_status.broker_info`.
        info: serde_json::Value,
    },
    /// A SUBACK; `refused` counts the filters it refused.
    SubAck {
        /// Filters refused (usually the broker's ACLs).
        refused: usize,
        /// The return codes, for the log.
        codes: String,
    },
    /// The broker sent DISCONNECT (MQTT 5), with its reason for the log.
    Disconnect(String),
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else (pings, acks of our publishes, ...).
    Other,
}

/// A failed connect or a lost connection, from either client.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// From the MQTT 5 event loop.
    #[error(transparent)]
    V5(Box<rumqttc::v5::ConnectionError>),
    /// From the MQTT 3.1.1 event loop.
    #[error(transparent)]
    V311(Box<rumqttc::ConnectionError>),
}

impl PollError {
    /// When the broker refused the CONNECT: its reason as an MQTT 5 reason code and a text. A
    /// 3.1.1 return code is given as its MQTT 5 equivalent (4, bad username or password, as
    /// 134), so callers see one numbering.
    pub fn refusal(&self) -> Option<(u8, &'static str)> {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C5;
        use rumqttc::ConnectReturnCode as C4;
        match self {
            PollError::V5(e) => match e.as_ref() {
                rumqttc::v5::ConnectionError::ConnectionRefused(code) => Some(match code {
                    C5::Success => (0, "connected"),
                    C5::BadUserNamePassword => (134, "bad username or password"),
                    C5::NotAuthorized => (135, "not authorized"),
                    C5::ClientIdentifierNotValid => (133, "client identifier not valid"),
                    C5::ServerUnavailable => (136, "server unavailable"),
                    C5::ServerBusy => (137, "server busy"),
                    C5::Banned => (138, "banned"),
                    C5::BadAuthenticationMethod => (140, "bad authentication method"),
                    C5::UnsupportedProtocolVersion | C5::RefusedProtocolVersion => {
                        (132, "unsupported protocol version")
                    }
                    _ => (128, "refused by the broker"),
                }),
                _ => None,
            },
            PollError::V311(e) => match e.as_ref() {
                rumqttc::ConnectionError::ConnectionRefused(code) => Some(match code {
                    C4::Success => (0, "connected"),
                    C4::RefusedProtocolVersion => (132, "unsupported protocol version"),
                    C4::BadClientId => (133, "client identifier not valid"),
                    C4::ServiceUnavailable => (136, "server unavailable"),
                    C4::BadUserNamePassword => (134, "bad username or password"),
                    C4::NotAuthorized => (135, "not authorized"),
                }),
                _ => None,
            },
        }
    }
}

/// One connection's event loop, of either protocol version.
pub enum EventLoop {
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
}

impl EventLoop {
    /// How long a connect attempt (TCP, TLS and CONNACK) may take, in seconds (default 5).
    pub fn set_connection_timeout(&mut self, secs: u64) {
        match self {
            EventLoop::V5(el) => {
                el.options.set_connection_timeout(secs);
            }
            EventLoop::V311(el) => {
                el.network_options.set_connection_timeout(secs);
            }
        }
    }

    /// Polls the connection (connecting first when it is down) for the next event.
    /// Drops the network connection (the next poll reconnects) and every PUBACK still queued
    /// in the request channel: those belong to the connection that is going away.
    pub fn clean(&mut self) {
        match self {
            EventLoop::V5(el) => el.clean(),
            EventLoop::V311(el) => el.clean(),
        }
    }

    pub async fn poll(&mut self) -> Result<SourceEvent, PollError> {
        match self {
            EventLoop::V5(el) => match el.poll().await {
                Ok(ev) => Ok(from_v5(ev)),
                Err(e) => Err(PollError::V5(Box::new(e))),
            },
            EventLoop::V311(el) => match el.poll().await {
                Ok(ev) => Ok(from_v311(ev)),
                Err(e) => Err(PollError::V311(Box::new(e))),
            },
        }
    }
}

/// An MQTT 5 event as the source's.
fn from_v5(ev: rumqttc::v5::Event) -> SourceEvent {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::Event;
    match ev {
        Event::Incoming(Packet::Publish(p)) => SourceEvent::Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            pkid: p.pkid,
        },
        Event::Incoming(Packet::ConnAck(ack)) => SourceEvent::ConnAck {
            session_present: ack.session_present,
            info: connack_info_v5(&ack),
        },
        Event::Incoming(Packet::SubAck(ack)) => SourceEvent::SubAck {
            refused: ack
                .return_codes
                .iter()
                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                .count(),
            codes: format!("{:?}", ack.return_codes),
        },
        Event::Incoming(Packet::Disconnect(d)) => {
            SourceEvent::Disconnect(format!("{:?}", d.reason_code))
        }
        Event::Outgoing(rumqttc::Outgoing::Disconnect) => SourceEvent::DisconnectSent,
        _ => SourceEvent::Other,
    }
}

/// An MQTT 3.1.1 event as the source's.
fn from_v311(ev: rumqttc::Event) -> SourceEvent {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    match ev {
        Event::Incoming(Packet::Publish(p)) => SourceEvent::Publish {
            topic: Bytes::from(p.topic),
            payload: p.payload,
            qos: match p.qos {
                rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
                rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
                rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
            },
            pkid: p.pkid,
        },
        Event::Incoming(Packet::ConnAck(ack)) => SourceEvent::ConnAck {
            session_present: ack.session_present,
            // 3.1.1's CONNACK has no properties: no limits or features to report.
            info: serde_json::json!({
                "session_present": ack.session_present,
                "protocol": "MQTT 3.1.1",
            }),
        },
        Event::Incoming(Packet::SubAck(ack)) => SourceEvent::SubAck {
            refused: ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                .count(),
            codes: format!("{:?}", ack.return_codes),
        },
        Event::Incoming(Packet::Disconnect) => SourceEvent::Disconnect("none given".into()),
        Event::Outgoing(rumqttc::Outgoing::Disconnect) => SourceEvent::DisconnectSent,
        _ => SourceEvent::Other,
    }
}

/// The MQTT 5 CONNACK as JSON for `mqtt_connection_status.broker_info`.
fn connack_info_v5(ack: &rumqttc::v5::mqttbytes::v5::ConnAck) -> serde_json::Value {
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
    fn a_3_1_1_publish_becomes_the_same_event_as_a_v5_one() {
        let mut p = rumqttc::Publish::new("p/dev/data", rumqttc::QoS::AtLeastOnce, b"{}".to_vec());
        p.pkid = 9;
        let ev = from_v311(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)));
        match ev {
            SourceEvent::Publish {
                topic,
                payload,
                qos,
                pkid,
            } => {
                assert_eq!((&topic[..], &payload[..]), (&b"p/dev/data"[..], &b"{}"[..]));
                assert_eq!((qos, pkid), (QoS::AtLeastOnce, 9));
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn a_3_1_1_refusal_is_reported_with_its_mqtt_5_reason_code() {
        let e = PollError::V311(Box::new(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::BadUserNamePassword,
        )));
        assert_eq!(e.refusal(), Some((134, "bad username or password")));
        let e = PollError::V311(Box::new(rumqttc::ConnectionError::NetworkTimeout));
        assert_eq!(e.refusal(), None);
    }
}
