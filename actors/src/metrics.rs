//! Metric names and help texts, in one place (see `docs/metrics.md`). Label values come from
//! small fixed sets; a device id is never a label.

pub use fleetflow_protocol::metric_names::*;

/// (name, kind, help) for every metric the engine exports; `describe_all` registers the help.
pub const SPEC: &[(&str, &str, &str)] = &[
    (MQTT_MESSAGES_TOTAL, "counter", "MQTT PUBLISH packets received, by topic kind (status, data, chunk, cmd_result, invalid; own: the engine's own ACK/command seen through a broad filter)."),
    (MQTT_BYTES_TOTAL, "counter", "Payload bytes received over MQTT."),
    (MQTT_ACKS_TOTAL, "counter", "QoS 1 messages acknowledged to the broker after they were durable or deliberately rejected."),
    (MQTT_ACKS_STALE_TOTAL, "counter", "Acknowledgements skipped because the connection they belonged to had closed (the broker redelivers)."),
    (MQTT_ACKS_LEAKED_TOTAL, "counter", "QoS 1 messages whose ack token was dropped unacknowledged (a closed mailbox, a gone sink, a refused message); the source reconnects past a bound so that the broker redelivers them."),
    (MQTT_LEAK_RECONNECTS_TOTAL, "counter", "Reconnects made to have the broker redeliver leaked QoS 1 messages (mqtt.leak_max_count / leak_max_age_ms)."),
    (MQTT_UNACKED, "gauge", "QoS 1 messages received and not yet acknowledged to the broker (the receive maximum bounds it only on a broker that respects it)."),
    (MQTT_READ_PAUSES_TOTAL, "counter", "Times a source stopped reading because mqtt.max_in_flight messages were in the pipeline and not durable yet (a broker sending a backlog past the receive maximum)."),
    (MQTT_ACKS_HELD, "gauge", "PUBACKs of durable messages waiting for room in the MQTT client's request queue (a broker sending past the receive maximum); they go out in order as it drains."),
    (MQTT_DROPPED_TOTAL, "counter", "Messages not forwarded because the router queue was full: QoS 0 at once, QoS 1 after half the keep-alive (those are redelivered by the broker after a reconnect)."),
    (MQTT_CONNECTED, "gauge", "1 while the MQTT source is connected, else 0, by source (a product id, default: the [mqtt] file source, admin: the [mqtt] command publisher). A source stopped for good keeps 0."),
    (MQTT_RECONNECTS_TOTAL, "counter", "MQTT connection attempts after a failure."),
    (SOURCE_EXITS_TOTAL, "counter", "MQTT source tasks that ended without being stopped (restarted by the source manager; the log names the source)."),
    (MQTT_PUBLISHES_TOTAL, "counter", "Messages the engine published, by kind (ack, nack, command, republish, publish)."),
    (SUBSCRIPTION_MESSAGES_TOTAL, "counter", "Messages on a database-configured source, by outcome: matched an enabled subscription, or unmatched (acknowledged and skipped)."),
    (HOSTED_REPAIRS_TOTAL, "counter", "Hosted-broker clients the reconcile loop re-created (created), removed (deleted) or put back in shape (fixed: role, ACLs, enabled) to match mqtt_credentials."),
    (ACTIONS_EXECUTED_TOTAL, "counter", "Subscription actions carried out, by action type."),
    (ACTIONS_FAILED_TOTAL, "counter", "Subscription actions that failed (bad payload, full queue, webhook given up after retries), by action type."),
    (ROUTER_ROUTED_TOTAL, "counter", "Messages routed to device actors."),
    (ADMIN_REFUSED_TOTAL, "counter", "Admin requests refused: a missing or wrong token, a forbidden organisation, a restart within the cooldown."),
    (PUBLISH_LOG_DROPPED_TOTAL, "counter", "Message-log rows dropped because the Postgres sink was full (the log never holds up data)."),
    (DEVICE_MAILBOX_PUSHED_TOTAL, "counter", "Messages put into device actor mailboxes (depth = pushed - popped)."),
    (DEVICE_MAILBOX_POPPED_TOTAL, "counter", "Messages taken from device actor mailboxes."),
    (DEVICES_LAST_SEEN, "gauge", "Known devices by time since their last message: lt_1h, 1h_24h, gt_24h (refreshed every minute)."),
    (DEVICES_LOW_BATTERY, "gauge", "Known devices whose latest battery_v is below [alerts] low_battery_v (label below_v: that threshold), refreshed every http.fleet_stats_interval_ms."),
    (CAPTURES_STORED_BYTES, "gauge", "Image bytes of the stored captures in the database (ingest_status stored), refreshed every http.fleet_stats_interval_ms; delta() over 24h is the daily storage growth."),
    (SINK_BYTES_TOTAL, "counter", "Estimated bytes of rows written, by sink table."),
    (ROUTER_MAILBOX_WAITS_TOTAL, "counter", "Messages the router parked because their device's mailbox was full (it went on with other devices)."),
    (ROUTER_PARKED, "gauge", "Messages parked by the router for devices whose mailbox is full."),
    (ROUTER_REFUSED_TOTAL, "counter", "Messages the router dropped without acknowledging them (the broker redelivers them after a reconnect), by reason: device_gone (its actor stopped while they waited), sink_gone (the Postgres sink stopped)."),
    (DEVICE_ACTORS, "gauge", "Live device actors."),
    (DEVICE_ACTORS_SPAWNED_TOTAL, "counter", "Device actors started."),
    (DEVICE_ACTORS_PASSIVATED_TOTAL, "counter", "Device actors stopped after being idle."),
    (DEVICE_ACTORS_RESTARTED_TOTAL, "counter", "Device actors restarted by their supervisor after a failure."),
    (DEVICE_ACTORS_QUARANTINED_TOTAL, "counter", "Devices put in quarantine after too many restarts."),
    (CLUSTER_MEMBERS, "gauge", "Cluster mode: live engine instances in the members bucket, as this instance saw them last."),
    (CLUSTER_PARTITIONS_OWNED, "gauge", "Cluster mode: partitions this instance owns and pulls."),
    (CLUSTER_PARTITION_MOVES_TOTAL, "counter", "Cluster mode: partitions this instance acquired or released, by direction."),
    (CLUSTER_REPLAYED_MESSAGES_TOTAL, "counter", "Cluster mode: messages read again from the stream when a partition starts pulling: those delivered to a previous owner (or era) and not acknowledged, which the partition's first cumulative ack would otherwise pass."),
    (CLUSTER_PARTITION_RESTARTS_TOTAL, "counter", "Cluster mode: partitions restarted from their ack floor because one of their messages could not be acknowledged (its token was dropped)."),
    (CLUSTER_RELEASED_MESSAGES_TOTAL, "counter", "Cluster mode: messages of a partition released (or of a partition era that ended) while they queued, dropped before any device actor (the next owner or era reads them again)."),
    (MESSAGES_TOTAL, "counter", "Decoded device messages by kind (status, reading, capture_meta, chunk, cmd_result)."),
    (ASSEMBLIES_STARTED_TOTAL, "counter", "Captures whose assembly started."),
    (CAPTURES_STORED_TOTAL, "counter", "Captures stored and acknowledged with ACK_OK."),
    (CAPTURES_FAILED_TOTAL, "counter", "Captures that ended failed, by reason (timeout, storage, invalid: size mismatch or not a JPEG, device_error: reported by the device)."),
    (WAKE_ANSWERS_TOTAL, "counter", "GXP wake hellos (\"Alive\") answered on /cmd, by answer (capture_image, next_wake)."),
    (COMMANDS_SENT_TOTAL, "counter", "Queued device_commands rows published to devices, by format (gxp, v1)."),
    (NACKS_TOTAL, "counter", "NACKs sent to devices, by reason (missing_chunks, need_metadata, checksum, storage)."),
    (CHUNKS_TOTAL, "counter", "Chunks received, by outcome (accepted, duplicate, rejected, buffered)."),
    (ASSEMBLY_BYTES, "gauge", "Bytes held by in-flight assemblies and early chunks, all devices."),
    (ERRORS_TOTAL, "counter", "Device errors by protocol code (§7), including rate-limited ones."),
    (ERROR_ROWS_SUPPRESSED_TOTAL, "counter", "device_errors rows not written because of the per-device rate limit."),
    (SINK_BATCHES_TOTAL, "counter", "Batches written, by sink table."),
    (SINK_ROWS_TOTAL, "counter", "Rows written, by sink table."),
    (SINK_BATCH_ROWS, "histogram", "Rows per written batch, by sink table."),
    (SINK_BATCH_SECONDS, "histogram", "Time to write one batch, by sink table."),
    (SINK_RETRIES_TOTAL, "counter", "Batch writes retried after a retriable error, by sink."),
    (SINK_FAILURES_TOTAL, "counter", "Rows rejected by a permanent error, by sink table."),
    (SINK_QUEUE_ROWS, "gauge", "Rows buffered in a sink and not yet written, by sink."),
    (OBJECTS_UPLOADED_TOTAL, "counter", "Objects written to object storage."),
    (OBJECTS_BYTES_TOTAL, "counter", "Bytes written to object storage."),
    (OBJECT_UPLOAD_SECONDS, "histogram", "Time to write one object, retries included."),
    (OBJECT_FAILURES_TOTAL, "counter", "Objects that failed after every retry."),
    (CAPTURE_E2E_SECONDS, "histogram", "Time from a capture's last chunk to its committed captures row."),
    (CAPTURE_ANSWER_SECONDS, "histogram", "Time from the source handing on the message that completed a stored capture (normally its last chunk) to its ACK_OK handed to the MQTT client's queue."),
    (DEAD_LETTERED_TOTAL, "counter", "Messages written to the dead_letters table instead of being processed, by reason: restarting (the device's actor is in restart backoff), quarantined, device_busy (its mailbox and parking are full), max_device_actors (replay them with `fleetflow replay-dead-letters`), rejected (a row Postgres refused for good, kept as a record)."),
    (DEAD_LETTERS_TOTAL, "counter", "Images kept in the dead-letter directory after every upload attempt failed."),
    (RETENTION_DELETED_TOTAL, "counter", "What the retention task deleted, by kind: capture_objects (images deleted from object storage, their rows marked deleted_at; an object already gone counts), readings, device_errors, publish_log (rows deleted)."),
    (RETENTION_FAILURES_TOTAL, "counter", "Retention steps that failed and are retried next round, by kind: capture_objects (one object delete), or a table's batch statement."),
];

/// Counter; label `reason` (restarting, quarantined, device_busy, max_device_actors, rejected).
pub const DEAD_LETTERED_TOTAL: &str = "fleetflow_dead_lettered_messages_total";
/// Counter.
pub const DEAD_LETTERS_TOTAL: &str = "fleetflow_dead_letters_total";
/// Counter; label `kind` ([`RETENTION_KINDS`]).
pub const RETENTION_DELETED_TOTAL: &str = "fleetflow_retention_deleted_total";
/// Counter; label `kind` ([`RETENTION_KINDS`]).
pub const RETENTION_FAILURES_TOTAL: &str = "fleetflow_retention_failures_total";

/// Counter; label `kind`.
pub const MQTT_MESSAGES_TOTAL: &str = "fleetflow_mqtt_messages_total";
/// Counter.
pub const MQTT_BYTES_TOTAL: &str = "fleetflow_mqtt_received_bytes_total";
/// Counter.
pub const MQTT_ACKS_TOTAL: &str = "fleetflow_mqtt_acks_total";
/// Counter.
pub const MQTT_ACKS_STALE_TOTAL: &str = "fleetflow_mqtt_stale_acks_total";
/// Counter.
pub const MQTT_ACKS_LEAKED_TOTAL: &str = "fleetflow_mqtt_leaked_acks_total";
/// Counter.
pub const MQTT_LEAK_RECONNECTS_TOTAL: &str = "fleetflow_mqtt_leak_reconnects_total";
/// Gauge; label `source` (a source, its `-out` connection, `partition-N`, `cluster-out`).
pub const MQTT_UNACKED: &str = "fleetflow_mqtt_unacked";
/// Gauge; label `source`, as [`MQTT_UNACKED`].
pub const MQTT_ACKS_HELD: &str = "fleetflow_mqtt_acks_held";
/// Counter.
pub const MQTT_READ_PAUSES_TOTAL: &str = "fleetflow_mqtt_read_pauses_total";
/// Counter.
pub const MQTT_DROPPED_TOTAL: &str = "fleetflow_mqtt_dropped_total";
/// Gauge; label `source`.
pub const MQTT_CONNECTED: &str = "fleetflow_mqtt_connected";
/// Counter.
pub const SOURCE_EXITS_TOTAL: &str = "fleetflow_source_exits_total";
/// Counter.
pub const MQTT_RECONNECTS_TOTAL: &str = "fleetflow_mqtt_reconnects_total";
/// Counter; label `kind`.
pub const MQTT_PUBLISHES_TOTAL: &str = "fleetflow_mqtt_publishes_total";
/// Counter.
pub const ROUTER_ROUTED_TOTAL: &str = "fleetflow_router_routed_total";
/// Counter; labels `entry` (api, restart, restart_webhook, organization) and `reason`
/// (unauthorized, forbidden, cooldown).
pub const ADMIN_REFUSED_TOTAL: &str = "fleetflow_admin_refused_total";
/// Counter.
pub const PUBLISH_LOG_DROPPED_TOTAL: &str = "fleetflow_publish_log_dropped_total";
/// Counter.
pub const DEVICE_MAILBOX_PUSHED_TOTAL: &str = "fleetflow_device_mailbox_pushed_total";
/// Counter.
pub const DEVICE_MAILBOX_POPPED_TOTAL: &str = "fleetflow_device_mailbox_popped_total";
/// Gauge; label `bucket`.
pub const DEVICES_LAST_SEEN: &str = "fleetflow_devices_last_seen";
/// Gauge; label `below_v` (the configured threshold).
pub const DEVICES_LOW_BATTERY: &str = "fleetflow_devices_low_battery";
/// Gauge.
pub const CAPTURES_STORED_BYTES: &str = "fleetflow_captures_stored_bytes";
/// Counter; label `table`.
pub const SINK_BYTES_TOTAL: &str = "fleetflow_sink_bytes_total";
/// Counter.
pub const ROUTER_MAILBOX_WAITS_TOTAL: &str = "fleetflow_router_mailbox_waits_total";
/// Gauge.
pub const ROUTER_PARKED: &str = "fleetflow_router_parked";
/// Counter; label `reason` (device_gone, sink_gone).
pub const ROUTER_REFUSED_TOTAL: &str = "fleetflow_router_refused_total";
/// Gauge.
pub const DEVICE_ACTORS: &str = "fleetflow_device_actors";
/// Counter.
pub const DEVICE_ACTORS_SPAWNED_TOTAL: &str = "fleetflow_device_actors_spawned_total";
/// Counter.
pub const DEVICE_ACTORS_PASSIVATED_TOTAL: &str = "fleetflow_device_actors_passivated_total";
/// Counter.
pub const DEVICE_ACTORS_RESTARTED_TOTAL: &str = "fleetflow_device_actors_restarted_total";
/// Counter.
pub const DEVICE_ACTORS_QUARANTINED_TOTAL: &str = "fleetflow_device_actors_quarantined_total";
/// Gauge.
pub const CLUSTER_MEMBERS: &str = "fleetflow_cluster_members";
/// Gauge.
pub const CLUSTER_PARTITIONS_OWNED: &str = "fleetflow_cluster_partitions_owned";
/// Counter; label `direction`.
pub const CLUSTER_PARTITION_MOVES_TOTAL: &str = "fleetflow_cluster_partition_moves_total";
/// Counter.
pub const CLUSTER_REPLAYED_MESSAGES_TOTAL: &str = "fleetflow_cluster_replayed_messages_total";
/// Counter.
pub const CLUSTER_PARTITION_RESTARTS_TOTAL: &str = "fleetflow_cluster_partition_restarts_total";
/// Counter.
pub const CLUSTER_RELEASED_MESSAGES_TOTAL: &str = "fleetflow_cluster_released_messages_total";
/// Counter; label `format`.
pub const COMMANDS_SENT_TOTAL: &str = "fleetflow_commands_sent_total";
/// Counter; label `table`.
pub const SINK_BATCHES_TOTAL: &str = "fleetflow_sink_batches_total";
/// Counter; label `table`.
pub const SINK_ROWS_TOTAL: &str = "fleetflow_sink_rows_total";
/// Histogram; label `table`.
pub const SINK_BATCH_ROWS: &str = "fleetflow_sink_batch_rows";
/// Histogram; label `table`.
pub const SINK_BATCH_SECONDS: &str = "fleetflow_sink_batch_seconds";
/// Counter; label `sink`.
pub const SINK_RETRIES_TOTAL: &str = "fleetflow_sink_retries_total";
/// Counter; label `table`.
pub const SINK_FAILURES_TOTAL: &str = "fleetflow_sink_failures_total";
/// Gauge; label `sink`.
pub const SINK_QUEUE_ROWS: &str = "fleetflow_sink_queue_rows";
/// Counter.
pub const OBJECTS_UPLOADED_TOTAL: &str = "fleetflow_objects_uploaded_total";
/// Counter.
pub const OBJECTS_BYTES_TOTAL: &str = "fleetflow_objects_uploaded_bytes_total";
/// Histogram.
pub const OBJECT_UPLOAD_SECONDS: &str = "fleetflow_object_upload_seconds";
/// Counter.
pub const OBJECT_FAILURES_TOTAL: &str = "fleetflow_object_failures_total";
/// Histogram.
pub const CAPTURE_E2E_SECONDS: &str = "fleetflow_capture_e2e_seconds";
/// Histogram: the message that completed a stored capture handed on by the source → its ACK_OK
/// in the MQTT client's queue.
pub const CAPTURE_ANSWER_SECONDS: &str = "fleetflow_capture_answer_seconds";
/// Counter.
pub const HOSTED_REPAIRS_TOTAL: &str = "fleetflow_hosted_repairs_total";
/// Counter.
pub const SUBSCRIPTION_MESSAGES_TOTAL: &str = "fleetflow_subscription_messages_total";
/// Counter.
pub const ACTIONS_EXECUTED_TOTAL: &str = "fleetflow_actions_executed_total";
/// Counter.
pub const ACTIONS_FAILED_TOTAL: &str = "fleetflow_actions_failed_total";

/// Label sets known up front, so that every series is exported (at 0) from the start.
const LABELS: &[(&str, &str, &[&str])] = &[
    (
        MQTT_MESSAGES_TOTAL,
        "kind",
        &["status", "data", "chunk", "cmd_result", "invalid", "own"],
    ),
    (
        MQTT_PUBLISHES_TOTAL,
        "kind",
        &["ack", "nack", "command", "republish", "publish"],
    ),
    (
        SUBSCRIPTION_MESSAGES_TOTAL,
        "outcome",
        &["matched", "unmatched"],
    ),
    (
        HOSTED_REPAIRS_TOTAL,
        "kind",
        &["created", "deleted", "fixed"],
    ),
    (
        DEAD_LETTERED_TOTAL,
        "reason",
        &[
            "restarting",
            "quarantined",
            "device_busy",
            "max_device_actors",
            "rejected",
        ],
    ),
    (
        ROUTER_REFUSED_TOTAL,
        "reason",
        &["device_gone", "sink_gone"],
    ),
    (ACTIONS_EXECUTED_TOTAL, "type", ACTION_TYPES),
    (ACTIONS_FAILED_TOTAL, "type", ACTION_TYPES),
    (
        MESSAGES_TOTAL,
        "kind",
        &["status", "reading", "capture_meta", "chunk", "cmd_result"],
    ),
    (
        CAPTURES_FAILED_TOTAL,
        "reason",
        &["timeout", "storage", "invalid", "device_error"],
    ),
    (
        WAKE_ANSWERS_TOTAL,
        "answer",
        &["capture_image", "next_wake"],
    ),
    (COMMANDS_SENT_TOTAL, "format", &["gxp", "v1"]),
    (RETENTION_DELETED_TOTAL, "kind", RETENTION_KINDS),
    (RETENTION_FAILURES_TOTAL, "kind", RETENTION_KINDS),
    (
        NACKS_TOTAL,
        "reason",
        &["missing_chunks", "need_metadata", "checksum", "storage"],
    ),
    (
        CHUNKS_TOTAL,
        "outcome",
        &["accepted", "duplicate", "rejected", "buffered"],
    ),
    (
        ERRORS_TOTAL,
        "code",
        &[
            "1000", "1001", "1002", "1003", "1004", "2100", "2101", "2102", "2103", "2104", "2105",
            "2200", "2201", "2202", "2203", "2204", "2205", "2206", "2207", "2208", "2209", "2301",
        ],
    ),
    (
        ERROR_ROWS_SUPPRESSED_TOTAL,
        "code",
        &[
            "1000", "1001", "1002", "1003", "1004", "2100", "2101", "2102", "2103", "2104", "2105",
            "2200", "2201", "2202", "2203", "2204", "2205", "2206", "2207", "2208", "2209", "2301",
        ],
    ),
    (SINK_BATCHES_TOTAL, "table", TABLES),
    (SINK_ROWS_TOTAL, "table", TABLES),
    (SINK_BYTES_TOTAL, "table", TABLES),
    (DEVICES_LAST_SEEN, "bucket", &["lt_1h", "1h_24h", "gt_24h"]),
    (SINK_FAILURES_TOTAL, "table", TABLES),
    (SINK_RETRIES_TOTAL, "sink", &["postgres", "objects"]),
    (SINK_QUEUE_ROWS, "sink", &["postgres"]),
];

/// Gauges that are not exported at 0 from the start. `MQTT_CONNECTED` and
/// `DEVICES_LOW_BATTERY` carry a label known only at run time (the source's name, the
/// threshold): an unlabelled 0 next to them would read as a disconnected source. A 0 for
/// `CAPTURES_STORED_BYTES` would be false: `delta()` over a day would see every stored byte
/// appear at once after each restart. Each appears on its first update instead.
const NOT_AT_ZERO: &[&str] = &[MQTT_CONNECTED, DEVICES_LOW_BATTERY, CAPTURES_STORED_BYTES];

/// What the retention task deletes (`kind` label of the retention counters).
pub const RETENTION_KINDS: &[&str] = &[
    "capture_objects",
    "readings",
    "device_errors",
    "publish_log",
];

/// Subscription action types (`type` label).
pub const ACTION_TYPES: &[&str] = &["device_profile", "store_json", "republish", "webhook"];

const TABLES: &[&str] = &[
    "device_status",
    "sensor_readings",
    "captures",
    "device_errors",
    "device_commands",
    "telemetry",
    "device_schedules",
];

/// Registers help texts with the installed recorder and exports every counter and gauge at 0.
pub fn describe_all() {
    for (name, label, values) in LABELS {
        for v in *values {
            let labels = [(*label, *v)];
            if name.ends_with("_total") {
                metrics::counter!(*name, &labels).increment(0);
            } else {
                metrics::gauge!(*name, &labels).increment(0.0);
            }
        }
    }
    for (name, kind, _) in SPEC {
        if LABELS.iter().any(|(n, _, _)| n == name) || NOT_AT_ZERO.contains(name) {
            continue;
        }
        match *kind {
            "counter" => metrics::counter!(*name).increment(0),
            "gauge" => metrics::gauge!(*name).increment(0.0),
            _ => {}
        }
    }
    for (name, kind, help) in SPEC {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_follow_the_naming_rules() {
        for (name, kind, _) in super::SPEC {
            assert!(name.starts_with("fleetflow_"), "{name}");
            assert!(!name.contains('.'), "{name}");
            match *kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
                other => panic!("unknown kind {other}"),
            }
        }
        let mut names: Vec<_> = super::SPEC.iter().map(|s| s.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::SPEC.len(), "duplicate metric names");
    }
}
