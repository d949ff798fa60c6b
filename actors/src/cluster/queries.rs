//! Device state from any instance: the admin API asks its own router first, and in cluster mode
//! the other instances for the devices it has no actor for. A request on
//! `{root}.{prefix}.devices` carries device ids; every instance answers with the snapshots of the
//! ones it holds (none answers for a device nobody holds), and the asker gathers the answers for
//! a short while (scatter-gather over core NATS). A `device:` restart is asked the same way on
//! `{root}.{prefix}.devices.restart`: only the instance that holds the actor restarts it and
//! answers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::Addr;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::device::DeviceSnapshot;
use crate::router::{DeviceRouter, QueryDevices, RestartRunning};
use fleetflow_protocol::ids::DeviceId;

/// How long the asker gathers answers.
const GATHER: Duration = Duration::from_millis(500);

/// A snapshot on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireSnapshot {
    in_flight: usize,
    held_bytes: usize,
    restarts: u64,
    state: String,
}

impl From<&DeviceSnapshot> for WireSnapshot {
    fn from(s: &DeviceSnapshot) -> Self {
        Self {
            in_flight: s.in_flight,
            held_bytes: s.held_bytes,
            restarts: s.restarts,
            state: s.state.to_owned(),
        }
    }
}

impl WireSnapshot {
    fn into_snapshot(self) -> DeviceSnapshot {
        let state = match self.state.as_str() {
            "restarting" => "restarting",
            "quarantined" => "quarantined",
            _ => "running",
        };
        DeviceSnapshot {
            in_flight: self.in_flight,
            held_bytes: self.held_bytes,
            restarts: self.restarts,
            state,
        }
    }
}

/// The asking side, usable once cluster mode has connected.
#[derive(Clone, Default)]
pub struct DeviceQueries {
    client: Arc<OnceLock<(async_nats::Client, String)>>,
}

impl DeviceQueries {
    /// Set once connected: the client and the request subject.
    pub(super) fn connected(&self, client: async_nats::Client, subject: String) {
        let _ = self.client.set((client, subject));
    }

    /// The snapshots the other instances hold for `ids` (empty before cluster mode connects).
    pub async fn ask(&self, ids: &[DeviceId]) -> HashMap<String, DeviceSnapshot> {
        let mut out = HashMap::new();
        let Some((client, subject)) = self.client.get() else {
            return out;
        };
        let inbox = client.new_inbox();
        let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
            return out;
        };
        let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
        let Ok(body) = serde_json::to_vec(&ids) else {
            return out;
        };
        if client
            .publish_with_reply(subject.clone(), inbox, body.into())
            .await
            .is_err()
        {
            return out;
        }
        let deadline = tokio::time::Instant::now() + GATHER;
        while out.len() < ids.len() {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await else {
                break;
            };
            if let Ok(found) = serde_json::from_slice::<HashMap<String, WireSnapshot>>(&m.payload) {
                out.extend(found.into_iter().map(|(k, v)| (k, v.into_snapshot())));
            }
        }
        out
    }

    /// Asks the instance that holds `id`'s actor to restart it; true once one answers that it
    /// did (false before cluster mode connects, or when no instance holds one).
    pub async fn restart(&self, id: &DeviceId) -> bool {
        let Some((client, subject)) = self.client.get() else {
            return false;
        };
        let ask = client.request(restart_subject(subject), id.as_str().to_owned().into());
        matches!(
            tokio::time::timeout(GATHER, ask).await,
            Ok(Ok(m)) if m.payload.as_ref() == RESTARTED
        )
    }
}

/// The answer of the instance that restarted an actor.
const RESTARTED: &[u8] = b"restarted";

fn restart_subject(devices: &str) -> String {
    format!("{devices}.restart")
}

/// Restarts the actors this instance holds when another instance asks (the others stay silent),
/// until the subscription ends.
pub(super) async fn serve_restarts(
    client: async_nats::Client,
    subject: String,
    router: Addr<DeviceRouter>,
) {
    serve_requests(
        client,
        restart_subject(&subject),
        "device restarts",
        |payload| {
            let router = router.clone();
            async move {
                let Some(id) = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|s| DeviceId::parse(s).ok())
                else {
                    return Ok(None);
                };
                let restarted = router.send(RestartRunning(id)).await.map_err(drop)?;
                Ok(restarted.then(|| RESTARTED.into()))
            }
        },
    )
    .await;
}

/// Answers the other instances' requests with this instance's snapshots, until the
/// subscription ends.
pub(super) async fn serve(client: async_nats::Client, subject: String, router: Addr<DeviceRouter>) {
    serve_requests(client, subject, "device queries", |payload| {
        let router = router.clone();
        async move {
            let Ok(ids) = serde_json::from_slice::<Vec<String>>(&payload) else {
                return Ok(None);
            };
            let ids: Vec<DeviceId> = ids.iter().filter_map(|i| DeviceId::parse(i).ok()).collect();
            let found = router.send(QueryDevices(ids)).await.map_err(drop)?;
            if found.is_empty() {
                return Ok(None); // the asker gathers from those that hold some
            }
            let wire: HashMap<&String, WireSnapshot> =
                found.iter().map(|(k, v)| (k, v.into())).collect();
            Ok(serde_json::to_vec(&wire).ok().map(Into::into))
        }
    })
    .await;
}

/// Serves requests on `subject` until the subscription ends: `answer` turns a request's
/// payload into its reply (`None`: stay silent), or fails when the router is gone, which ends it.
async fn serve_requests<F, Fut>(client: async_nats::Client, subject: String, what: &str, answer: F)
where
    F: Fn(bytes::Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Option<bytes::Bytes>, ()>>,
{
    let mut requests = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot serve {what}");
            return;
        }
    };
    while let Some(m) = requests.next().await {
        let Some(reply) = m.reply else { continue };
        match answer(m.payload).await {
            Ok(Some(body)) => {
                let _ = client.publish(reply, body).await;
            }
            Ok(None) => {}
            Err(()) => return,
        }
    }
}
