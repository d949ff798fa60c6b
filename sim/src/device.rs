//! A simulated device's state (v1 or GXP), the per-connection context the device behaviours
//! (`v1`, `gxp`) act through, and what they share: chunk plans, rates and step results. The
//! connection loop (`conn`) owns the devices and calls the behaviours; the behaviours see only
//! this module.

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::progress::Live;
use super::report::{ConnReport, SideCounts};
use super::{DeviceKind, SimConfig};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::time::Instant;

/// A capture the device keeps until its ACK_OK.
pub(super) struct Capture {
    /// Its metadata, resent by the retry timer.
    pub meta: Bytes,
    /// When its last chunk (the last message of its latest burst) was written to the
    /// connection: latency starts here. Until rumqttc reports that write, the queueing time.
    pub last_chunk_at: Instant,
    /// When that burst was queued on the connection (250 devices share one; a device's own
    /// link has no such queue), for the queue-inclusive latency.
    pub queued_at: Instant,
    /// When the engine last said anything about it.
    pub last_heard: Instant,
    /// Gone silent: ignores NACKs, never completes.
    pub silent: bool,
}

impl Capture {
    /// A new burst of the capture was queued at `now`: both clocks restart (the connection
    /// loop moves `last_chunk_at` on when the burst's last message is written).
    pub fn requeued(&mut self, now: Instant) {
        self.last_chunk_at = now;
        self.queued_at = now;
    }
}

/// One simulated device.
pub(super) struct Device {
    /// Its id (12 hex digits).
    pub id: String,
    /// Its firmware.
    pub kind: DeviceKind,
    /// Last reading's sequence number (v1).
    pub seq: u64,
    /// When the next reading is due (v1).
    pub next_reading: Instant,
    /// When the next status heartbeat is due (v1).
    pub next_status: Instant,
    /// When the next capture is due on the simulator's own schedule.
    pub next_capture: Instant,
    /// Captures announced so far.
    pub captures_sent: u32,
    /// Captures awaiting ACK_OK, by capture id (v1) or image name (GXP).
    pub inflight: HashMap<String, Capture>,
    /// Where a GXP device is in its wake cycle.
    pub wake: Wake,
}

impl Device {
    /// Captures still waiting for an answer (not abandoned on purpose).
    pub fn live_captures(&self) -> usize {
        self.inflight.values().filter(|c| !c.silent).count()
    }

    /// What the device holds of the `Max` mode capture window: its captures in flight, and a
    /// GXP wake waiting for its answer (which will likely start one).
    pub fn window_slots(&self) -> usize {
        self.inflight.len() + usize::from(matches!(self.wake, Wake::Waiting { .. }))
    }
}

/// What a queued publish is, for the connection loop to act on once rumqttc sends it.
pub(super) enum Sent {
    /// Nothing to track.
    Other,
    /// A reading (device index, seq), matched to its PUBACK.
    Reading(usize, u64),
    /// The last message of a capture's burst (device id, capture id or image name).
    LastOf { device: String, capture: String },
}

/// Publishes and remembers which were readings, so PUBACKs can be matched to them.
pub(super) struct Out<'a> {
    pub(super) client: &'a AsyncClient,
    /// What each queued publish is, in rumqttc's send order.
    pub(super) order: VecDeque<Sent>,
    /// Readings sent, by packet id, until their PUBACK.
    pub(super) by_pkid: HashMap<u16, (usize, u64)>,
    /// Publishes sent and not yet PUBACKed.
    pub unacked: usize,
    /// Publishes queued so far (for [`Out::mark_last`]).
    pub queued: u64,
    pub(super) live: Live,
}

impl Out<'_> {
    /// Queues a QoS 1 publish, counted on `side`.
    pub fn publish(
        &mut self,
        topic: String,
        payload: Bytes,
        reading: Option<(usize, u64)>,
        side: &mut SideCounts,
    ) {
        side.messages += 1;
        side.bytes += payload.len() as u64;
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.order
                    .push_back(reading.map_or(Sent::Other, |(d, s)| Sent::Reading(d, s)));
                self.unacked += 1;
                self.queued += 1;
                self.live.published();
            }
            Err(e) => {
                side.publish_errors += 1;
                tracing::warn!(error = %e, "simulator publish not queued");
            }
        }
    }

    pub(super) fn puback_pending(&self) -> bool {
        !self.by_pkid.is_empty() || self.order.iter().any(|s| matches!(s, Sent::Reading(..)))
    }

    /// After a connection error: rumqttc drops what it had queued or in flight when the broker
    /// starts a new session (`clean_start`), so none of it will be written or acknowledged.
    /// Answers how many queued publishes were lost.
    pub(super) fn forget_queued(&mut self) -> usize {
        let lost = self.order.len();
        self.order.clear();
        self.by_pkid.clear();
        self.unacked = 0;
        lost
    }

    /// Marks the publish queued last as the end of `capture`'s burst on `device`, when the burst
    /// (which began with `since` publishes queued) queued any: when rumqttc writes it, the
    /// capture's latency clock starts.
    pub fn mark_last(&mut self, since: u64, device: &str, capture: &str) {
        if self.queued == since {
            return;
        }
        if let Some(s @ Sent::Other) = self.order.back_mut() {
            *s = Sent::LastOf {
                device: device.to_owned(),
                capture: capture.to_owned(),
            };
        }
    }
}

/// What every device handler needs: settings, the image, the publisher, randomness, counts.
pub(super) struct Ctx<'a> {
    /// The run's settings.
    pub cfg: &'a SimConfig,
    /// This connection's JPEG (every capture sends it).
    pub image: Bytes,
    /// Its sha256, hex.
    pub sha: String,
    /// The connection's publisher.
    pub out: Out<'a>,
    /// Seeded per connection.
    pub rng: rand::rngs::StdRng,
    /// This connection's counts.
    pub report: ConnReport,
    /// Counters for the progress line.
    pub live: Live,
    /// Time between a v1 device's captures in `Rate` mode.
    pub capture_every: Duration,
    /// How long a GXP device sleeps between wakes.
    pub gxp_sleep: Duration,
}

impl Ctx<'_> {
    /// The counts of a device's firmware.
    pub fn side(&mut self, kind: DeviceKind) -> &mut SideCounts {
        match kind {
            DeviceKind::V1 => &mut self.report.v1,
            DeviceKind::Gxp => &mut self.report.gxp,
        }
    }
}

/// The order a capture's chunks go out in, after loss, reordering, duplication and silence.
pub(super) struct ChunkPlan {
    /// Chunk indexes in send order; `true` when the chunk is sent twice.
    pub order: Vec<(usize, bool)>,
    /// The device goes silent after these.
    pub silent: bool,
}

/// Draws a capture's [`ChunkPlan`] and counts its drops and duplicates on `side`.
pub(super) fn plan_chunks(cx: &mut Ctx<'_>, total: usize, kind: DeviceKind) -> ChunkPlan {
    let cfg = cx.cfg;
    let silent = cfg.silent_rate > 0.0 && cx.rng.random_bool(cfg.silent_rate.min(1.0));
    let mut idx: Vec<usize> = (0..total).collect();
    if cfg.reorder {
        idx.shuffle(&mut cx.rng);
    }
    if silent {
        idx.truncate(total / 2);
    }
    let mut order = Vec::with_capacity(idx.len());
    let (mut dropped, mut dups) = (0, 0);
    for i in idx {
        if cfg.loss_rate > 0.0 && cx.rng.random_bool(cfg.loss_rate.min(1.0)) {
            dropped += 1;
            continue;
        }
        let dup = cfg.duplicate_rate > 0.0 && cx.rng.random_bool(cfg.duplicate_rate.min(1.0));
        dups += u64::from(dup);
        order.push((i, dup));
    }
    let side = cx.side(kind);
    side.chunks_dropped += dropped;
    side.duplicates_sent += dups;
    ChunkPlan { order, silent }
}

/// What one `Max` mode step of a device did.
pub(super) struct Step {
    /// It published something.
    pub did: bool,
    /// It took a slot of the capture window (a capture or a wake).
    pub took_slot: bool,
}

/// The period of a per-second rate (`Duration::MAX` for 0).
pub(super) fn period(per_sec: f64) -> Duration {
    if per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / per_sec)
    } else {
        Duration::MAX
    }
}

/// Where a GXP device is in its wake cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Sleeping until then.
    Asleep {
        /// When it wakes.
        until: Instant,
    },
    /// Sent Alive at `since`, waiting for `capture_image` or `next_wake`.
    Waiting {
        /// When the Alive went out.
        since: Instant,
    },
    /// Sending a capture the engine asked for; sleeps once it is acknowledged.
    Capturing,
}
