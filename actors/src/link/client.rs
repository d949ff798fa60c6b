//! Either MQTT client behind one type: rumqttc's v5 client or its 3.1.1 one, chosen per source
//! by `protocol_version` when the source starts. Everything that sends on a connection (acks,
//! publishes, subscription changes, the goodbye) goes through [`MqttClient`], so nothing past
//! the source's edge knows which protocol it speaks.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

/// The sending half of one connection, of either protocol version. Cloning is cheap (a channel
/// sender).
#[derive(Clone, Debug)]
pub enum MqttClient {
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// Cluster mode: acks and replies over NATS (`crate::cluster`).
    Nats(crate::cluster::NatsClient),
}

impl From<rumqttc::v5::AsyncClient> for MqttClient {
    fn from(c: rumqttc::v5::AsyncClient) -> Self {
        MqttClient::V5(c)
    }
}

impl From<rumqttc::AsyncClient> for MqttClient {
    fn from(c: rumqttc::AsyncClient) -> Self {
        MqttClient::V311(c)
    }
}

/// A request could not be queued: the connection's request channel is full or closed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// From the MQTT 5 client.
    #[error(transparent)]
    V5(Box<rumqttc::v5::ClientError>),
    /// From the MQTT 3.1.1 client.
    #[error(transparent)]
    V311(Box<rumqttc::ClientError>),
    /// Cluster mode: the NATS writer has stopped.
    #[error(transparent)]
    Nats(#[from] crate::cluster::WriterGone),
}

impl From<rumqttc::v5::ClientError> for ClientError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        ClientError::V5(Box::new(e))
    }
}

impl From<rumqttc::ClientError> for ClientError {
    fn from(e: rumqttc::ClientError) -> Self {
        ClientError::V311(Box::new(e))
    }
}

/// The engine's QoS (the v5 type) as the 3.1.1 client's.
fn v311_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

impl MqttClient {
    /// Queues the PUBACK of the QoS 1 message `pkid` (the client runs with manual acks).
    pub fn ack(&self, pkid: u16) -> Result<(), ClientError> {
        match self {
            MqttClient::V5(c) => {
                let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
                    "",
                    QoS::AtLeastOnce,
                    Bytes::new(),
                    None,
                );
                p.pkid = pkid;
                Ok(c.try_ack(&p)?)
            }
            MqttClient::V311(c) => {
                let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                Ok(c.try_ack(&p)?)
            }
            MqttClient::Nats(c) => Ok(c.ack(pkid)?),
        }
    }

    /// Queues a publish, without waiting.
    /// Cluster mode: naks the JetStream message in slot `pkid` so that it is redelivered now;
    /// false for MQTT clients (the broker redelivers after a reconnect).
    pub fn nak(&self, pkid: u16) -> bool {
        match self {
            MqttClient::Nats(c) => c.nak(pkid),
            _ => false,
        }
    }

    /// Whether this client acks a cluster partition's JetStream messages.
    pub fn is_partition(&self) -> bool {
        matches!(self, MqttClient::Nats(c) if c.acks())
    }

    pub fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        match self {
            MqttClient::V5(c) => Ok(c.try_publish(topic, qos, retain, payload)?),
            MqttClient::V311(c) => Ok(c.try_publish(topic, v311_qos(qos), retain, payload)?),
            MqttClient::Nats(c) => Ok(c.publish(topic, payload)?),
        }
    }

    /// Queues one SUBSCRIBE for all of `filters` at `qos` (nothing when there are none).
    pub fn subscribe(&self, filters: &[String], qos: QoS) -> Result<(), ClientError> {
        if filters.is_empty() {
            return Ok(());
        }
        match self {
            MqttClient::V5(c) => Ok(c.try_subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), qos)),
            )?),
            MqttClient::V311(c) => Ok(c.try_subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), v311_qos(qos))),
            )?),
            // The stream's subjects are fixed when the cluster starts.
            MqttClient::Nats(_) => Ok(()),
        }
    }

    /// Queues an UNSUBSCRIBE of one filter.
    pub fn unsubscribe(&self, filter: String) -> Result<(), ClientError> {
        match self {
            MqttClient::V5(c) => Ok(c.try_unsubscribe(filter)?),
            MqttClient::V311(c) => Ok(c.try_unsubscribe(filter)?),
            MqttClient::Nats(_) => Ok(()),
        }
    }

    /// Queues a DISCONNECT.
    pub fn disconnect(&self) -> Result<(), ClientError> {
        match self {
            MqttClient::V5(c) => Ok(c.try_disconnect()?),
            MqttClient::V311(c) => Ok(c.try_disconnect()?),
            MqttClient::Nats(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_3_1_1_client_queues_the_puback_of_the_packet_id_it_is_given() {
        let (tx, rx) = flume::bounded(4);
        let client = MqttClient::from(rumqttc::AsyncClient::from_senders(tx));
        client.ack(42).unwrap();
        client
            .publish(
                "p/d/ack".into(),
                QoS::AtLeastOnce,
                false,
                Bytes::from_static(b"{}"),
            )
            .unwrap();
        match rx.try_recv().unwrap() {
            rumqttc::Request::PubAck(a) => assert_eq!(a.pkid, 42),
            other => panic!("expected a PUBACK, got {other:?}"),
        }
        match rx.try_recv().unwrap() {
            rumqttc::Request::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), p.qos),
                    ("p/d/ack", rumqttc::QoS::AtLeastOnce)
                )
            }
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
}
