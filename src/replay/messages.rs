//! Replays `dead_letters` rows: each message is published again, QoS 1, on its own topic through
//! the `[mqtt]` broker, and its row deleted once the broker acknowledged it. The engine then
//! ingests it like any other message. Rows are replayed per source (the product they came
//! from, `default` for the `[mqtt]` source), so that each goes back to its own broker: point
//! `[mqtt]` at that broker (`FLEETFLOW_MQTT__URL` and friends) and name the source.

use std::time::Duration;

use fleetflow_actors::config::MqttConfig;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming};

use super::{ReplayError, ReplayReport};

/// Rows read per round.
const PAGE: i64 = 500;
/// How long one PUBACK may take.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Replays the dead-lettered messages of `source`, oldest first.
pub async fn replay_messages(
    mqtt: &MqttConfig,
    db: &tokio_postgres::Client,
    source: &str,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE source = $1 AND reason <> 'rejected'",
            &[&source],
        )
        .await?
        .get(0);
    if pending == 0 {
        return Ok(report);
    }
    let (client, mut el) = connect(mqtt)?;
    let mut after = 0i64;
    loop {
        let rows = db
            .query(
                "SELECT id, topic, payload FROM dead_letters WHERE source = $1 AND reason <> 'rejected' AND id > $2 ORDER BY id LIMIT $3",
                &[&source, &after, &PAGE],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let id: i64 = r.get("id");
            after = id;
            let topic: String = r.get("topic");
            let payload: Vec<u8> = r.get("payload");
            match publish_acked(&client, &mut el, &topic, payload).await {
                Ok(()) => {
                    db.execute("DELETE FROM dead_letters WHERE id = $1", &[&id])
                        .await?;
                    report.replayed += 1;
                }
                Err(e) => {
                    tracing::error!(id, topic = %topic, error = %e, "dead-lettered message not replayed; left in place");
                    report.failed += 1;
                }
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(report)
}

/// A connection of its own: a client id of its own, a clean session, automatic acks.
fn connect(mqtt: &MqttConfig) -> Result<(AsyncClient, EventLoop), ReplayError> {
    let cfg = MqttConfig {
        client_id: format!("{}-replay-{:08x}", mqtt.client_id, rand::random::<u32>()),
        clean_start: true,
        session_expiry_secs: 0,
        ..mqtt.clone()
    };
    let opts = fleetflow_actors::source::options(&cfg).map_err(ReplayError::Mqtt)?;
    Ok(AsyncClient::new(opts, 16))
}

/// Why one message was not replayed (it stays in the table).
#[derive(Debug, thiserror::Error)]
enum NotReplayed {
    /// The client could not queue it.
    #[error("cannot queue the publish: {0}")]
    Queue(#[from] rumqttc::v5::ClientError),
    /// The broker answered with a failure, or had no subscriber for it (thrown away).
    #[error("the broker did not take it: {0:?}")]
    Refused(rumqttc::v5::mqttbytes::v5::PubAckReason),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] rumqttc::v5::ConnectionError),
    /// No PUBACK in time.
    #[error("no PUBACK within 10 s")]
    Timeout,
}

/// Publishes one message at QoS 1 and drives the connection until the broker acknowledges it.
async fn publish_acked(
    client: &AsyncClient,
    el: &mut EventLoop,
    topic: &str,
    payload: Vec<u8>,
) -> Result<(), NotReplayed> {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(a))) => {
                    // No matching subscriber: the broker threw it away (a wrong broker, or no
                    // engine subscribed to that topic): the row stays.
                    return match a.reason {
                        rumqttc::v5::mqttbytes::v5::PubAckReason::Success => Ok(()),
                        other => Err(NotReplayed::Refused(other)),
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(ACK_WAIT, wait)
        .await
        .map_err(|_| NotReplayed::Timeout)?
}
