//! Device commands as rows: every `device_commands` row with status `queued`, whether the
//! commands API wrote it or another tool did (the old GXP dashboard inserted
//! `(device_id, command_type, command_payload, status)`), is published on the device's `/cmd`
//! topic in the device's own format and marked `sent`, within a second: a NOTIFY wakes the
//! dispatcher at once and a 1 s poll covers a missed notification. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several engines never send one command twice.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;
use fleetflow_actors::pipeline::Pipeline;
use fleetflow_protocol::gxp::GxpCommand;
use fleetflow_protocol::ids::{DeviceId, DeviceIdError};
use fleetflow_protocol::topic::TopicParser;
use serde_json::{json, Value};

/// The NOTIFY channel of queued commands (migration V8).
pub const CHANNEL: &str = "fleetflow_device_commands";
/// The fallback poll.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait for the router to say which connection a device's messages come from.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows claimed per pass.
const BATCH: i64 = 100;

/// Why a command could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Why a command can never be sent as written (its row becomes `failed` with this text; the API
/// answers 400 naming `name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    /// The row's device id is not one.
    #[error("invalid device id: {0}")]
    DeviceId(#[from] DeviceIdError),
    /// A GXP device is sent something its firmware does not understand.
    #[error("{name:?} is not a GXP firmware command with its argument (capture_image, send_image {{image_name}}, next_wake {{wake_time}}, send_all_pending)")]
    NotGxp {
        /// The command's name.
        name: String,
    },
}

/// One queued command.
#[derive(Debug, Clone)]
pub struct Queued {
    /// `device_commands.id`.
    pub id: String,
    /// The device.
    pub device_id: String,
    /// `name` (or the old `command_type`).
    pub name: String,
    /// `args` (or the old `command_payload`).
    pub args: Value,
    /// `devices.wire_format`, when known.
    pub wire_format: Option<String>,
}

/// Where and how a command went.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The command topic.
    pub topic: String,
    /// `device_source` (the connection the device's messages come from) or `default_broker`.
    pub via: &'static str,
    /// `gxp` or `v1`.
    pub format: &'static str,
}

/// Publishes commands through the connection a device's messages come from.
#[derive(Clone)]
pub struct CommandSender {
    pipeline: Pipeline,
    topics: TopicParser,
}

impl CommandSender {
    /// `topics`: the `[mqtt]` broker's layout, for devices with no live actor (which get their
    /// command through the pipeline's default publisher).
    pub fn new(pipeline: Pipeline, topics: TopicParser) -> Self {
        Self { pipeline, topics }
    }

    /// Builds the command in the device's format and publishes it. `Err` names what is wrong
    /// with the command itself (it will never be sendable).
    pub async fn send(&self, c: &Queued) -> Result<Sent, CommandRefused> {
        let id = DeviceId::parse(&c.device_id)?;
        let (format, payload) = payload(c)?;
        // Bounded: a device whose mailbox is full must not stall the whole queue.
        let route = self.pipeline.reply_route(&id, ROUTE_TIMEOUT).await;
        let (link, topic, via) = match &route {
            Some(r) => (&r.link, r.topics.cmd_topic(&id), "device_source"),
            None => (
                self.pipeline.default_link(),
                self.topics.cmd_topic(&id),
                "default_broker",
            ),
        };
        link.publish(topic.clone(), payload, "command");
        metrics::counter!(m::COMMANDS_SENT_TOTAL, "format" => format).increment(1);
        Ok(Sent { topic, via, format })
    }
}

/// The payload in the device's format: the GXP firmware's shape for a GXP device (or, for a
/// device never heard from, for the firmware's own command names), else `PROTOCOL.md` §6.
pub fn payload(c: &Queued) -> Result<(&'static str, Bytes), CommandRefused> {
    let gxp = GxpCommand::from_name(&c.name, &c.args);
    let is_gxp = match c.wire_format.as_deref() {
        Some("gxp") => true,
        Some(_) => false,
        None => gxp.is_some(),
    };
    if is_gxp {
        let cmd = gxp.ok_or_else(|| CommandRefused::NotGxp {
            name: c.name.clone(),
        })?;
        return Ok(("gxp", cmd.payload(&c.device_id)));
    }
    let v = json!({"type": "command", "command_id": c.id, "name": c.name, "args": c.args});
    Ok(("v1", Bytes::from(v.to_string())))
}

/// Runs the queue until aborted: a pass on every NOTIFY and every second.
pub fn spawn(pool: Pool, pg_url: String, sender: CommandSender) -> tokio::task::JoinHandle<()> {
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let listener = tokio::spawn(crate::db::listen(pg_url, CHANNEL, wake_tx));
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                w = wake.recv() => if w.is_none() { break },
            }
            loop {
                match dispatch_once(&pool, &sender).await {
                    Ok(n) if n as i64 == BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "command queue pass failed");
                        break;
                    }
                }
            }
        }
        listener.abort();
    })
}

/// Claims up to [`BATCH`] queued rows, sends each and marks it `sent` (or `failed` when it can
/// never be sent), in one transaction. Returns how many rows it claimed.
pub async fn dispatch_once(pool: &Pool, sender: &CommandSender) -> Result<usize, CommandError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT c.id, c.device_id, c.name, c.args, d.wire_format
               FROM device_commands c LEFT JOIN devices d ON d.device_id = c.device_id
              WHERE c.status = 'queued'
              ORDER BY c.created_at
              LIMIT $1
                FOR UPDATE OF c SKIP LOCKED",
            &[&BATCH],
        )
        .await?;
    for r in &rows {
        let q = Queued {
            id: r.get("id"),
            device_id: r.get("device_id"),
            name: r.get("name"),
            args: r.get("args"),
            wire_format: r.get("wire_format"),
        };
        match sender.send(&q).await {
            Ok(sent) => {
                tx.execute(
                    "UPDATE device_commands SET status = 'sent', sent_at = now(), wire_format = $2 WHERE id = $1",
                    &[&q.id, &sent.format],
                )
                .await?;
            }
            Err(why) => {
                tracing::warn!(command = %q.id, device = %q.device_id, %why, "command refused");
                tx.execute(
                    "UPDATE device_commands SET status = 'failed', completed_at = now(), error = $2 WHERE id = $1",
                    &[&q.id, &why.to_string()],
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, args: Value, fmt: Option<&str>) -> Queued {
        Queued {
            id: "c-1".into(),
            device_id: "AABBCCDDEEFF".into(),
            name: name.into(),
            args,
            wire_format: fmt.map(str::to_owned),
        }
    }

    fn json_of(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn gxp_devices_get_the_firmware_shapes() {
        let (f, p) = payload(&q(
            "send_image",
            json!({"image_name": "image_001.jpg"}),
            Some("gxp"),
        ))
        .unwrap();
        assert_eq!(f, "gxp");
        assert_eq!(
            json_of(&p),
            json!({"device_id": "AABBCCDDEEFF", "send_image": "image_001.jpg"})
        );
        let (_, p) = payload(&q(
            "next_wake",
            json!({"wake_time": "2025-10-07T16:48:00Z"}),
            None,
        ))
        .unwrap();
        assert_eq!(
            json_of(&p),
            json!({"device_id": "AABBCCDDEEFF", "next_wake": "2025-10-07T16:48:00Z"})
        );
        assert_eq!(
            payload(&q("send_image", json!({}), Some("gxp"))).unwrap_err(),
            CommandRefused::NotGxp {
                name: "send_image".into()
            }
        );
        let e = payload(&q("reboot", json!({}), Some("gxp"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("\"reboot\" is not a GXP firmware command"),
            "{e}"
        );
    }

    #[test]
    fn v1_devices_and_unknown_names_get_the_protocol_shape() {
        let (f, p) = payload(&q("capture_image", json!({}), Some("v1"))).unwrap();
        assert_eq!(f, "v1");
        assert_eq!(json_of(&p)["type"], "command");
        assert_eq!(json_of(&p)["command_id"], "c-1");
        let (f, _) = payload(&q("capture_now", json!({}), None)).unwrap();
        assert_eq!(f, "v1");
    }
}
