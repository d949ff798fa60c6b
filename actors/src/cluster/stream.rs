//! The partition consumers on `$MQTT_msgs`, the stream where NATS's MQTT listener stores a QoS 1
//! message before it PUBACKs it (an interest stream: a message is kept until every consumer that
//! matches it acked it). Whichever instance comes first creates them; creating them again with
//! the same settings changes nothing, so every instance does it at start.

use std::time::Duration;

use async_nats::jetstream::consumer::{
    pull, AckPolicy, DeliverPolicy, PriorityPolicy, PullConsumer,
};
use async_nats::jetstream::Context;

use super::partition::GROUP;
use super::subjects::{name_part, partition_filter};
use super::ClusterError;
use crate::config::ClusterConfig;

/// A partition consumer's durable name: one set of consumers per fleet prefix.
pub fn consumer_name(cfg: &ClusterConfig, prefix: &str, partition: u32) -> String {
    format!("{}-{}-p{partition}", cfg.subject_root, name_part(prefix))
}

/// The members bucket of a fleet prefix (KV): one entry per live instance.
pub fn members_bucket(cfg: &ClusterConfig, prefix: &str) -> String {
    format!("{}_{}_members", cfg.subject_root, name_part(prefix))
}

/// The consumer of one partition: pinned (one puller at a time), acked cumulatively (one `+ACK`
/// covers every message up to it: see `partition.rs` for why that is safe across owners),
/// redelivered for ever.
pub fn consumer_config(cfg: &ClusterConfig, prefix: &str, partition: u32) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer_name(cfg, prefix, partition)),
        filter_subject: partition_filter(&cfg.subject_root, partition, prefix),
        ack_policy: AckPolicy::All,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_millis(cfg.ack_wait_ms),
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_owned()],
        priority_timeout: Duration::from_millis(cfg.pin_timeout_ms),
        ..Default::default()
    }
}

/// Finds the stream and creates (or updates) every partition's consumer; answers the stream
/// and the consumers. The stream exists once an MQTT client has connected to NATS.
pub async fn ensure(
    js: &Context,
    cfg: &ClusterConfig,
    prefix: &str,
) -> Result<(async_nats::jetstream::stream::Stream, Vec<PullConsumer>), ClusterError> {
    let stream = js.get_stream(&cfg.stream).await.map_err(|e| {
        ClusterError::Setup(format!(
            "stream {}: {e} (is NATS's MQTT listener on, and has an MQTT client connected?)",
            cfg.stream
        ))
    })?;
    let mut consumers = Vec::with_capacity(cfg.partitions as usize);
    for p in 0..cfg.partitions {
        let c = stream
            .create_consumer(consumer_config(cfg, prefix, p))
            .await
            .map_err(|e| {
                ClusterError::Setup(format!(
                    "consumer {}: {e} (a consumer of that name made with other settings, such \
                     as by a version that acked one by one, must be deleted first)",
                    consumer_name(cfg, prefix, p)
                ))
            })?;
        consumers.push(c);
    }
    Ok((stream, consumers))
}
