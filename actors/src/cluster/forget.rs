//! Forgetting a fleet prefix (`fleetflow cluster-forget`): deletes its partition consumers and
//! its members bucket from JetStream. For a product taken out of service, for consumers made
//! with other settings by an earlier version (they must go before this one can start), and for
//! test and bench fleets: each prefix keeps `partitions` replicated consumers, and NATS spends
//! CPU on them even while nothing flows.
//!
//! Two refusals guard it:
//! - **Live members.** While the members bucket names an instance (entries expire `member_ttl_ms`
//!   after their last renewal), unless `force_members`: a running instance does not make its
//!   consumers again; its pulls fail until it is restarted.
//! - **Messages held.** `$MQTT_msgs` keeps a message only while a consumer is interested in it,
//!   so deleting a consumer deletes the messages it still holds (pending or delivered and not
//!   acknowledged), which NATS has already acknowledged to the devices. Unless `discard_pending`,
//!   a consumer that holds any is not deleted.
//!
//! A consumer is deleted only when its name and its filter subject are this prefix's (prefixes
//! that differ only in characters a NATS name cannot hold share names; the filters tell them
//! apart).

use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use futures::TryStreamExt;

use super::{stream, subjects, ClusterError, ForgetError};
use crate::config::ClusterConfig;

/// What was deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Partition consumers deleted.
    pub consumers: usize,
    /// Whether the members bucket existed and was deleted.
    pub members_bucket: bool,
}

/// What may be deleted despite the checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForgetOptions {
    /// Delete even while the members bucket names live instances.
    pub force_members: bool,
    /// Delete consumers that still hold messages (those messages are lost).
    pub discard_pending: bool,
}

/// Deletes every partition consumer of `prefix` on `cfg.stream` (whatever partition count made
/// them) and the prefix's members bucket.
pub async fn forget(
    cfg: &ClusterConfig,
    prefix: &str,
    opts: ForgetOptions,
) -> Result<Forgotten, ClusterError> {
    let urls: Vec<&str> = cfg.nats_urls.split(',').map(str::trim).collect();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .name("fleetflow cluster-forget")
            .connect(urls),
    )
    .await
    .map_err(|_| nats("no NATS server answered within 10 s".into()))?
    .map_err(|e| nats(format!("connecting to NATS: {e}")))?;
    let js = jetstream::new(client);
    let bucket = stream::members_bucket(cfg, prefix);
    let bucket_stream = get_stream(&js, &format!("KV_{bucket}")).await?;
    let has_bucket = bucket_stream.is_some();
    // Entries put after this revision are instances that joined while this command ran.
    let floor = bucket_stream.map_or(0, |s| s.cached_info().state.last_sequence);
    if has_bucket && !opts.force_members {
        let live = live_members(&js, &bucket, None).await?;
        if !live.is_empty() {
            return Err(ForgetError::LiveMembers {
                prefix: prefix.to_string(),
                instances: live.join(", "),
            }
            .into());
        }
    }
    let mut done = Forgotten::default();
    if let Some(s) = get_stream(&js, &cfg.stream).await? {
        let doomed = partition_consumers(&s, cfg, prefix, opts.discard_pending).await?;
        done.consumers = delete_consumers(&s, &doomed).await?;
    }
    if has_bucket {
        let live = if opts.force_members {
            Vec::new()
        } else {
            live_members(&js, &bucket, Some(floor)).await?
        };
        js.delete_key_value(&bucket)
            .await
            .map_err(|e| nats(format!("deleting bucket {bucket}: {e}")))?;
        done.members_bucket = true;
        if !live.is_empty() {
            return Err(ForgetError::JoinedMeanwhile {
                prefix: prefix.to_string(),
                instances: live.join(", "),
                consumers: done.consumers,
            }
            .into());
        }
    }
    Ok(done)
}

fn nats(msg: String) -> ClusterError {
    ForgetError::Nats(msg).into()
}

/// The stream `name`, or `None` when JetStream has none by that name.
async fn get_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<jetstream::stream::Stream>, ClusterError> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(nats(format!("stream {name}: {e}"))),
        },
    }
}

/// The instances the members bucket names; with `since`, only those whose entry was put after
/// that revision. An expired entry that one replica has not removed yet is older than the
/// revision read when the command began, so it is not taken for an instance that joined.
async fn live_members(
    js: &jetstream::Context,
    bucket: &str,
    since: Option<u64>,
) -> Result<Vec<String>, ClusterError> {
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|e| nats(format!("bucket {bucket}: {e}")))?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| nats(format!("listing {bucket}: {e}")))?
        .try_collect()
        .await
        .map_err(|e| nats(format!("listing {bucket}: {e}")))?;
    let Some(floor) = since else {
        return Ok(keys);
    };
    let mut joined = Vec::new();
    for key in keys {
        let entry = kv
            .entry(key.as_str())
            .await
            .map_err(|e| nats(format!("reading {bucket}: {e}")))?;
        if entry.is_some_and(|e| e.revision > floor) {
            joined.push(key);
        }
    }
    Ok(joined)
}

/// The prefix's partition consumers, by name and filter subject; an error names those that
/// still hold messages unless `discard_pending`.
async fn partition_consumers(
    s: &jetstream::stream::Stream,
    cfg: &ClusterConfig,
    prefix: &str,
    discard_pending: bool,
) -> Result<Vec<String>, ClusterError> {
    let names: Vec<String> = s
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| nats(format!("listing consumers: {e}")))?;
    let (mut doomed, mut holding) = (Vec::new(), Vec::new());
    for name in names {
        let Some(p) = partition_of(cfg, prefix, &name) else {
            continue;
        };
        let info = s
            .consumer_info(&name)
            .await
            .map_err(|e| nats(format!("consumer {name}: {e}")))?;
        if info.config.filter_subject != subjects::partition_filter(&cfg.subject_root, p, prefix) {
            continue;
        }
        let held = info.num_pending + info.num_ack_pending as u64;
        if held > 0 {
            holding.push(format!("{name} ({held})"));
        }
        doomed.push(name);
    }
    if !holding.is_empty() && !discard_pending {
        return Err(ForgetError::MessagesHeld(holding.join(", ")).into());
    }
    Ok(doomed)
}

async fn delete_consumers(
    s: &jetstream::stream::Stream,
    names: &[String],
) -> Result<usize, ClusterError> {
    let mut deleted = 0;
    for name in names {
        match s.delete_consumer(name).await {
            Ok(_) => deleted += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(nats(format!("deleting {name}: {e}"))),
        }
    }
    Ok(deleted)
}

fn is_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// The partition of `name` when it is named as one of `prefix`'s partition consumers
/// (`{root}-{prefix}-p{n}`), and not another prefix's that merely starts the same way.
fn partition_of(cfg: &ClusterConfig, prefix: &str, name: &str) -> Option<u32> {
    let head = format!("{}-{}-p", cfg.subject_root, subjects::name_part(prefix));
    let n = name.strip_prefix(&head)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_prefixs_own_partition_consumers_match() {
        let cfg = ClusterConfig::default();
        let own = stream::consumer_name(&cfg, "fleet", 7);
        assert_eq!(partition_of(&cfg, "fleet", &own), Some(7));
        let other = stream::consumer_name(&cfg, "fleet-p1", 3);
        assert_eq!(partition_of(&cfg, "fleet", &other), None);
        assert_eq!(partition_of(&cfg, "fleet-p1", &other), Some(3));
        assert_eq!(partition_of(&cfg, "fleet", "somebody-else"), None);
        let bare = format!("{}-fleet-p", cfg.subject_root);
        assert_eq!(partition_of(&cfg, "fleet", &bare), None);
    }

    /// Prefixes that share consumer names (`/` and `_` both become `_`) have different filter
    /// subjects, which is what `partition_consumers` compares before deleting.
    #[test]
    fn prefixes_sharing_names_differ_in_their_filters() {
        let cfg = ClusterConfig::default();
        assert_eq!(
            stream::consumer_name(&cfg, "acme/cams", 1),
            stream::consumer_name(&cfg, "acme_cams", 1)
        );
        assert_ne!(
            subjects::partition_filter(&cfg.subject_root, 1, "acme/cams"),
            subjects::partition_filter(&cfg.subject_root, 1, "acme_cams")
        );
    }
}
