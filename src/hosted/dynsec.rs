//! A client of Mosquitto's dynamic security plugin: commands are published as JSON on
//! `$CONTROL/dynamic-security/v1` over an admin connection, and each answer is matched to its
//! command by `correlationData` on `.../v1/response`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleetflow_actors::config::MqttConfig;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";
/// Mosquitto's notices when `log_dest topic` is set: client connections are read from here.
const LOG_NOTICE: &str = "$SYS/broker/log/N";

/// A command that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    /// Not connected (or not subscribed to the responses) in time.
    #[error("the hosted broker is not reachable as its admin user: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("the hosted broker did not answer {0} within 10 s")]
    Timeout(String),
    /// The plugin refused the command.
    #[error("{command}: {error}")]
    Refused {
        /// The command.
        command: String,
        /// The plugin's reason.
        error: String,
    },
    /// Bad settings.
    #[error("{0}")]
    Config(String),
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// The admin connection.
#[derive(Clone)]
pub struct Dynsec {
    client: AsyncClient,
    waiters: Waiters,
    ready: watch::Receiver<bool>,
    next: Arc<AtomicU64>,
    /// Every admin client subscribed to the response topic receives every answer, so the
    /// correlation data starts with this connection's own client id.
    tag: Arc<str>,
}

impl Dynsec {
    /// Connects as the admin user (reconnecting on failures) and subscribes to the responses.
    /// `connections` receives the username of every client that connects, when the broker
    /// publishes its notices (`log_dest topic`).
    pub fn connect(
        url: &str,
        username: &str,
        password: &str,
        client_id: &str,
        connections: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Self, DynsecError> {
        let cfg = MqttConfig {
            url: url.to_string(),
            client_id: client_id.to_string(),
            username: Some(username.to_string()),
            password: Some(password.into()),
            clean_start: true,
            session_expiry_secs: 0,
            ..MqttConfig::default()
        };
        let mut opts = fleetflow_actors::source::options(&cfg)
            .map_err(|e| DynsecError::Config(format!("hosted.broker_url: {e}")))?;
        opts.set_manual_acks(false);
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let waiters: Waiters = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let task_waiters = waiters.clone();
        let sub = client.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if connections.is_some() {
                            let _ = sub.try_subscribe(LOG_NOTICE, QoS::AtMostOnce);
                        }
                        let _ = sub.try_subscribe(RESPONSE, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        // The responses' SUBACK comes last.
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.as_ref() == RESPONSE.as_bytes() {
                            answer(&task_waiters, &p.payload);
                        } else if let (Some(tx), Some(user)) =
                            (&connections, connected_username(&p.payload))
                        {
                            // Statistics only: dropped rather than waited for when behind.
                            let _ = tx.try_send(user);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if *ready_tx.borrow() {
                            tracing::warn!(error = %e, "hosted broker admin connection lost");
                        }
                        let _ = ready_tx.send(false);
                        if ready_tx.is_closed() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            client,
            waiters,
            ready,
            next: Arc::new(AtomicU64::new(1)),
            tag: Arc::from(client_id),
        })
    }

    /// Waits (up to `timeout`) for the connection to be ready.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), DynsecError> {
        let mut ready = self.ready.clone();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .map_err(|_| DynsecError::Unavailable("not connected".into()))?
            .map_err(|_| DynsecError::Unavailable("connection task ended".into()))?;
        Ok(())
    }

    /// Runs one command; returns its `data` (or `null`). When the connection drops before the
    /// answer (Mosquitto disconnects admin clients whose roles change), the command is sent
    /// again after reconnecting, up to three times in all; the commands fleetflow sends are
    /// safe to repeat.
    pub async fn call(&self, command: Value) -> Result<Value, DynsecError> {
        let mut last = DynsecError::Unavailable("not tried".into());
        for _ in 0..3 {
            match self.call_once(command.clone()).await {
                Err(e @ (DynsecError::Timeout(_) | DynsecError::Unavailable(_))) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    async fn call_once(&self, mut command: Value) -> Result<Value, DynsecError> {
        self.wait_ready(Duration::from_secs(10)).await?;
        let name = command["command"].as_str().unwrap_or("?").to_string();
        let id = format!("{}-{}", self.tag, self.next.fetch_add(1, Ordering::Relaxed));
        command["correlationData"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("dynsec waiters lock")
            .insert(id.clone(), tx);
        let body = Bytes::from(json!({"commands": [command]}).to_string());
        if let Err(e) = self
            .client
            .publish(CONTROL, QoS::AtLeastOnce, false, body)
            .await
        {
            self.waiters
                .lock()
                .expect("dynsec waiters lock")
                .remove(&id);
            return Err(DynsecError::Unavailable(e.to_string()));
        }
        let mut ready = self.ready.clone();
        let outcome = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), rx) => match r {
                Ok(Ok(r)) => Ok(r),
                _ => Err(DynsecError::Timeout(name.clone())),
            },
            _ = ready.wait_for(|r| !*r) => Err(DynsecError::Unavailable("connection lost".into())),
        };
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.waiters
                    .lock()
                    .expect("dynsec waiters lock")
                    .remove(&id);
                return Err(e);
            }
        };
        if let Some(error) = response.get("error").and_then(Value::as_str) {
            return Err(DynsecError::Refused {
                command: name,
                error: error.to_string(),
            });
        }
        Ok(response.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Sends one command without waiting for its answer (for commands that disconnect the
    /// admin connection itself).
    pub async fn send(&self, command: Value) -> Result<(), DynsecError> {
        self.wait_ready(Duration::from_secs(10)).await?;
        let body = Bytes::from(json!({"commands": [command]}).to_string());
        self.client
            .publish(CONTROL, QoS::AtLeastOnce, false, body)
            .await
            .map_err(|e| DynsecError::Unavailable(e.to_string()))
    }

    /// Like [`Dynsec::call`], but an "already exists" / "not found" refusal counts as done
    /// (the command's goal already holds).
    pub async fn call_idempotent(&self, command: Value) -> Result<Value, DynsecError> {
        match self.call(command).await {
            Err(DynsecError::Refused { error, .. })
                if error.contains("already") || error.contains("not found") =>
            {
                Ok(Value::Null)
            }
            other => other,
        }
    }

    /// The usernames of every broker client.
    pub async fn list_clients(&self) -> Result<Vec<String>, DynsecError> {
        let data = self
            .call(json!({"command": "listClients", "verbose": false, "count": -1}))
            .await?;
        Ok(data["clients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().or_else(|| c["username"].as_str()))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every broker client with its roles and `disabled` flag (`listClients`, verbose).
    pub async fn list_clients_verbose(&self) -> Result<Vec<Value>, DynsecError> {
        let data = self
            .call(json!({"command": "listClients", "verbose": true, "count": -1}))
            .await?;
        Ok(data["clients"].as_array().cloned().unwrap_or_default())
    }

    /// Every role with its ACLs (`listRoles`, verbose).
    pub async fn list_roles_verbose(&self) -> Result<Vec<Value>, DynsecError> {
        let data = self
            .call(json!({"command": "listRoles", "verbose": true, "count": -1}))
            .await?;
        Ok(data["roles"].as_array().cloned().unwrap_or_default())
    }

    /// Publishes through the admin connection (for organisation-scoped publishing).
    pub async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<(), DynsecError> {
        self.wait_ready(Duration::from_secs(5)).await?;
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|e| DynsecError::Unavailable(e.to_string()))
    }
}

/// The username in a Mosquitto notice `New client connected from A as C (p5, c1, k30, u'U').`
pub fn connected_username(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    if !line.contains("New client connected from") {
        return None;
    }
    let start = line.rfind(", u'")? + 4;
    let end = line[start..].find("')")? + start;
    Some(line[start..end].to_string())
}

fn answer(waiters: &Waiters, payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        tracing::warn!("unreadable dynamic security response");
        return;
    };
    let Some(responses) = v["responses"].as_array() else {
        return;
    };
    let mut map = waiters.lock().expect("dynsec waiters lock");
    for r in responses {
        if let Some(id) = r["correlationData"].as_str() {
            if let Some(tx) = map.remove(id) {
                let _ = tx.send(r.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_notices_name_the_username() {
        assert_eq!(
            super::connected_username(
                b"1795449447: New client connected from 127.0.0.1:40096 as dev-1 (p5, c1, k30, u'ff_0a1b')."
            )
            .as_deref(),
            Some("ff_0a1b")
        );
        assert_eq!(
            super::connected_username(b"New client connected from 127.0.0.1:1 as x (p2, c1, k60)."),
            None
        );
        assert_eq!(
            super::connected_username(b"Client x closed its connection."),
            None
        );
    }
}
