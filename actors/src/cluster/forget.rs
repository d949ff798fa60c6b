//! Forgetting a fleet prefix (`fleetflow cluster-forget`): deletes its partition consumers and
//! its members bucket from JetStream. For a product taken out of service, for consumers made
//! with other settings by an earlier version (they must go before this one can start), and for
//! test and bench fleets: each prefix keeps `partitions` replicated consumers, and NATS spends
//! CPU on them even while nothing flows.
//!
//! Refused while the members bucket names a live instance (entries expire `member_ttl_ms` after
//! their last renewal), unless forced: an instance still running would make its consumers again
//! and, meanwhile, lose its pins. Messages stay in the stream; an instance started later for the
//! same prefix makes fresh consumers and reads what the stream still holds.

use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use futures::TryStreamExt;

use super::{stream, subjects, ClusterError};
use crate::config::ClusterConfig;

/// What was deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Partition consumers deleted.
    pub consumers: usize,
    /// Whether the members bucket existed and was deleted.
    pub members_bucket: bool,
}

/// Deletes every partition consumer of `prefix` on `cfg.stream` (whatever partition count made
/// them) and the prefix's members bucket. `force` skips the live-member check.
pub async fn forget(
    cfg: &ClusterConfig,
    prefix: &str,
    force: bool,
) -> Result<Forgotten, ClusterError> {
    let urls: Vec<&str> = cfg.nats_urls.split(',').map(str::trim).collect();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .name("fleetflow cluster-forget")
            .connect(urls),
    )
    .await
    .map_err(|_| ClusterError::Forget("no NATS server answered within 10 s".into()))?
    .map_err(|e| ClusterError::Forget(format!("connecting to NATS: {e}")))?;
    let js = jetstream::new(client);
    let bucket = stream::members_bucket(cfg, prefix);
    let has_bucket = stream_exists(&js, &format!("KV_{bucket}")).await?;
    if has_bucket && !force {
        let live = live_members(&js, &bucket).await?;
        if !live.is_empty() {
            return Err(ClusterError::Forget(format!(
                "instances {} are still members of fleet {prefix:?}: stop them first, wait \
                 member_ttl_ms, or force",
                live.join(", ")
            )));
        }
    }
    let mut done = Forgotten::default();
    if stream_exists(&js, &cfg.stream).await? {
        done.consumers = delete_consumers(&js, cfg, prefix).await?;
    }
    if has_bucket {
        js.delete_key_value(&bucket)
            .await
            .map_err(|e| ClusterError::Forget(format!("deleting bucket {bucket}: {e}")))?;
        done.members_bucket = true;
    }
    Ok(done)
}

async fn stream_exists(js: &jetstream::Context, name: &str) -> Result<bool, ClusterError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(false)
            }
            _ => Err(ClusterError::Forget(format!("stream {name}: {e}"))),
        },
    }
}

async fn live_members(js: &jetstream::Context, bucket: &str) -> Result<Vec<String>, ClusterError> {
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::Forget(format!("bucket {bucket}: {e}")))?;
    let keys = kv
        .keys()
        .await
        .map_err(|e| ClusterError::Forget(format!("listing {bucket}: {e}")))?;
    keys.try_collect()
        .await
        .map_err(|e| ClusterError::Forget(format!("listing {bucket}: {e}")))
}

async fn delete_consumers(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
    prefix: &str,
) -> Result<usize, ClusterError> {
    let s = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| ClusterError::Forget(format!("stream {}: {e}", cfg.stream)))?;
    let names: Vec<String> = s
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| ClusterError::Forget(format!("listing consumers: {e}")))?;
    let mut deleted = 0;
    for name in names
        .iter()
        .filter(|n| is_partition_consumer(cfg, prefix, n))
    {
        match s.delete_consumer(name).await {
            Ok(_) => deleted += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(ClusterError::Forget(format!("deleting {name}: {e}"))),
        }
    }
    Ok(deleted)
}

fn is_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// Whether `name` is one of `prefix`'s partition consumers (`{root}-{prefix}-p{n}`), and not
/// another prefix's that merely starts the same way.
fn is_partition_consumer(cfg: &ClusterConfig, prefix: &str, name: &str) -> bool {
    let head = format!("{}-{}-p", cfg.subject_root, subjects::name_part(prefix));
    name.strip_prefix(&head)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_prefixs_own_partition_consumers_match() {
        let cfg = ClusterConfig::default();
        let own = stream::consumer_name(&cfg, "fleet", 7);
        assert!(is_partition_consumer(&cfg, "fleet", &own));
        let other = stream::consumer_name(&cfg, "fleet-p1", 3);
        assert!(!is_partition_consumer(&cfg, "fleet", &other));
        assert!(is_partition_consumer(&cfg, "fleet-p1", &other));
        assert!(!is_partition_consumer(&cfg, "fleet", "somebody-else"));
        let bare = format!("{}-fleet-p", cfg.subject_root);
        assert!(!is_partition_consumer(&cfg, "fleet", &bare));
    }
}
