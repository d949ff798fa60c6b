//! Cluster mode (`[cluster]`): several engine processes share one fleet through NATS JetStream.
//!
//! Devices publish over MQTT to NATS (its MQTT listener); the stream (`stream`) captures their
//! subjects, each stored under the partition of its device id. Each instance renews an entry in
//! the members bucket and owns the partitions that rendezvous hashing gives it over the live
//! members (`assign`). For each it pulls the partition's consumer in a pinned priority group
//! (`partition`), so that JetStream delivers a partition to one instance at a time even while
//! two disagree about the members, and hands the messages to the router like an MQTT source.
//! Acks go to JetStream once the message is durable, replies to the device's MQTT topic through
//! NATS (`nats_client`). A released partition drains, its device actors stop, and its pin is
//! released so that the next owner starts at once.
//!
//! - `assign`: partitions to members (rendezvous hashing).
//! - `subjects`: MQTT topics, NATS subjects and the partition token.
//! - `stream`: the stream and the partition consumers.
//! - `partition`: one owned partition's pull loop and its release.
//! - `nats_client`: acks and replies over NATS behind [`crate::link::MqttClient`].
//! - `members`: the members bucket and the ownership loop.
//! - `queries`: device state from whichever instance holds the actor (admin API).
//! - `forget`: deleting a fleet prefix's consumers and members bucket (`cluster-forget`).

pub mod assign;
mod forget;
mod members;
mod nats_client;
mod partition;
mod queries;
pub mod stream;
pub mod subjects;

pub use forget::{forget, ForgetOptions, Forgotten};
pub use members::{start, Cluster, ClusterStart};
pub use nats_client::{AckSlots, NatsClient, Outgoing, WriterGone};
pub use queries::DeviceQueries;

/// Why cluster mode could not start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `[cluster]` settings that cannot work.
    #[error("invalid [cluster] settings: {0}")]
    Config(String),
    /// The stream, its consumers or the members bucket could not be set up.
    #[error("cluster setup: {0}")]
    Setup(String),
    /// A fleet prefix's consumers or members bucket were not deleted.
    #[error("cluster-forget: {0}")]
    Forget(#[from] ForgetError),
}

/// Why `cluster-forget` stopped: a refusal (nothing deleted: act, or override), a deletion that
/// instances joined during, or a NATS error.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// The members bucket names live instances (`--force` overrides).
    #[error(
        "instances {instances} are still members of fleet {prefix:?}: stop them first and wait \
         member_ttl_ms (or --force)"
    )]
    LiveMembers {
        /// The fleet prefix.
        prefix: String,
        /// The live instances, comma-separated.
        instances: String,
    },
    /// Consumers hold messages that deleting them would delete (`--discard-pending` overrides).
    #[error(
        "consumers still hold messages NATS acknowledged to devices: {0}; deleting them would \
         delete those messages (let an instance drain them, or --discard-pending)"
    )]
    MessagesHeld(String),
    /// Instances joined while the fleet was being forgotten, after its consumers (and members
    /// bucket) were deleted: they run without consumers until restarted.
    #[error(
        "deleted {consumers} partition consumer(s) and the members bucket of fleet {prefix:?}, \
         but instances {instances} joined it meanwhile: restart them"
    )]
    JoinedMeanwhile {
        /// The fleet prefix.
        prefix: String,
        /// The instances that joined, comma-separated.
        instances: String,
        /// Partition consumers deleted.
        consumers: usize,
    },
    /// NATS could not be reached or refused a request.
    #[error("{0}")]
    Nats(String),
}
