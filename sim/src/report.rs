//! The simulator's report: counts and end-to-end capture latency percentiles, in total and
//! per firmware (fleetflow's protocol `v1` and the GXP firmware), plus the GXP wake handshakes.

use std::time::Duration;

use serde::Serialize;

use super::SimConfig;

/// One firmware's counts on one connection.
#[derive(Debug, Default)]
pub struct SideCounts {
    /// Devices of this firmware.
    pub devices: u64,
    /// Messages published.
    pub messages: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Publishes that could not be queued.
    pub publish_errors: u64,
    /// Metadata resent by the device-side retry timer.
    pub retries: u64,
    /// Captures announced.
    pub captures_started: u64,
    /// ACK_OK received.
    pub acks: u64,
    /// ACK_OK for captures no longer in flight.
    pub duplicate_acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Chunks and metadata resent.
    pub resends: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunks skipped by the loss rate.
    pub chunks_dropped: u64,
    /// Captures never acknowledged.
    pub unacked_captures: u64,
    /// Captures abandoned on purpose (silent devices).
    pub silent_captures: u64,
    /// Chunks deliberately sent twice.
    pub duplicates_sent: u64,
    /// GXP quirk: extra metadata copies sent among the chunks.
    pub metadata_copies: u64,
    /// Of those, copies with null fields.
    pub null_copies: u64,
    /// Last chunk written → ACK_OK, ms.
    pub latencies_ms: Vec<f64>,
    /// Last chunk queued on the shared connection → ACK_OK, ms.
    pub queued_latencies_ms: Vec<f64>,
}

impl SideCounts {
    /// An ACK_OK for `c`: its latency from the last chunk's write and from its queueing.
    pub(crate) fn record_latency(&mut self, c: &crate::device::Capture) {
        let ms = |t: tokio::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        self.latencies_ms.push(ms(c.last_chunk_at));
        self.queued_latencies_ms.push(ms(c.queued_at));
    }
}

/// The GXP wake handshakes on one connection.
#[derive(Debug, Default)]
pub struct WakeCounts {
    /// `"status": "Alive"` hellos sent.
    pub alive_sent: u64,
    /// Answered with `capture_image`.
    pub answered_capture: u64,
    /// Answered with `next_wake`.
    pub answered_next_wake: u64,
    /// Not answered within the answer timeout (or by the end of the run).
    pub unanswered: u64,
    /// Alive → answer, ms.
    pub answer_ms: Vec<f64>,
    /// `send_image` / `send_all_pending` commands acted on.
    pub resend_commands: u64,
    /// Commands that came while the device was not waiting for one (asleep or busy).
    pub unexpected_commands: u64,
}

/// One connection's counts.
#[derive(Debug, Default)]
pub struct ConnReport {
    /// Readings published.
    pub readings_sent: u64,
    /// Readings the broker acknowledged (PUBACK).
    pub readings_acked: u64,
    /// Which readings: (device id, seq).
    pub acked_readings: Vec<(String, u64)>,
    /// SUBACKs.
    pub suback: u64,
    /// Connection errors.
    pub connection_errors: u64,
    /// Devices speaking fleetflow's protocol.
    pub v1: SideCounts,
    /// Devices running the GXP firmware.
    pub gxp: SideCounts,
    /// GXP wake handshakes.
    pub handshake: WakeCounts,
    /// This connection's device ids.
    pub device_ids: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Devices simulated.
    pub devices: usize,
    /// Connections used.
    pub connections: usize,
    /// Wall time.
    pub elapsed_s: f64,
    /// Messages published.
    pub messages_sent: u64,
    /// Payload bytes published.
    pub bytes_sent: u64,
    /// Readings published.
    pub readings_sent: u64,
    /// Readings PUBACKed by the broker.
    pub readings_acked_by_broker: u64,
    /// Captures announced.
    pub captures_started: u64,
    /// ACK_OK received.
    pub captures_acked: u64,
    /// Captures never acknowledged (excluding silent ones).
    pub captures_unacked: u64,
    /// Captures abandoned by silent devices.
    pub captures_silent: u64,
    /// Chunks deliberately duplicated.
    pub duplicates_sent: u64,
    /// Duplicate ACK_OK.
    pub duplicate_acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Resent chunks and metadata.
    pub resends: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunks deliberately lost.
    pub chunks_dropped: u64,
    /// Publishes not queued.
    pub publish_errors: u64,
    /// Connection errors.
    pub connection_errors: u64,
    /// Readings per second over the traffic phase.
    pub readings_per_sec: f64,
    /// Metadata resent by the device-side retry timer.
    pub device_retries: u64,
    /// Latency percentiles, ms: from a capture's last chunk written to the connection to its
    /// ACK_OK.
    pub latency_ms: Latency,
    /// The same from the last chunk queued on the connection the simulator's devices share.
    pub latency_from_queue_ms: Latency,
    /// The devices speaking fleetflow's protocol.
    pub v1: Side,
    /// The devices running the GXP firmware.
    pub gxp: Side,
    /// The GXP devices' wake handshakes.
    pub gxp_handshake: Handshake,
    /// Readings the broker acknowledged: (device id, seq). Not serialised.
    #[serde(skip)]
    pub acked_readings: Vec<(String, u64)>,
}

/// One firmware's part of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// Devices.
    pub devices: u64,
    /// Messages published.
    pub messages_sent: u64,
    /// Payload bytes published.
    pub bytes_sent: u64,
    /// Captures announced.
    pub captures_started: u64,
    /// ACK_OK received.
    pub captures_acked: u64,
    /// Captures never acknowledged (excluding silent ones).
    pub captures_unacked: u64,
    /// Captures abandoned by silent devices.
    pub captures_silent: u64,
    /// Duplicate ACK_OK.
    pub duplicate_acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Resent chunks and metadata.
    pub resends: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunks deliberately lost.
    pub chunks_dropped: u64,
    /// Metadata resent by the device-side retry timer.
    pub device_retries: u64,
    /// GXP quirk: extra metadata copies sent among the chunks.
    pub metadata_copies: u64,
    /// Of those, copies with null fields.
    pub null_metadata_copies: u64,
    /// Last chunk written → ACK_OK percentiles, ms.
    pub latency_ms: Latency,
    /// Last chunk queued on the shared connection → ACK_OK percentiles, ms.
    pub latency_from_queue_ms: Latency,
}

/// The GXP wake handshakes of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Handshake {
    /// Alive hellos sent.
    pub alive_sent: u64,
    /// Answered with `capture_image`.
    pub answered_capture_image: u64,
    /// Answered with `next_wake`.
    pub answered_next_wake: u64,
    /// Never answered in time.
    pub unanswered: u64,
    /// Alive → answer percentiles, ms.
    pub answer_ms: Latency,
    /// `send_image` / `send_all_pending` commands acted on.
    pub resend_commands: u64,
    /// Commands received while not waiting for one.
    pub unexpected_commands: u64,
}

/// Percentiles of last-chunk → ACK_OK.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// Max.
    pub max: f64,
}

impl Latency {
    /// Percentiles of unsorted samples.
    pub fn of<'a>(samples: impl Iterator<Item = &'a f64>) -> Self {
        let mut s: Vec<f64> = samples.copied().collect();
        s.sort_by(|a, b| a.total_cmp(b));
        Self {
            p50: pct(&s, 0.50),
            p90: pct(&s, 0.90),
            p99: pct(&s, 0.99),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Side {
    fn merge(parts: &[&SideCounts]) -> Self {
        let sum = |f: fn(&SideCounts) -> u64| parts.iter().map(|p| f(p)).sum::<u64>();
        Self {
            devices: sum(|p| p.devices),
            messages_sent: sum(|p| p.messages),
            bytes_sent: sum(|p| p.bytes),
            captures_started: sum(|p| p.captures_started),
            captures_acked: sum(|p| p.acks),
            captures_unacked: sum(|p| p.unacked_captures),
            captures_silent: sum(|p| p.silent_captures),
            duplicate_acks: sum(|p| p.duplicate_acks),
            nacks: sum(|p| p.nacks),
            resends: sum(|p| p.resends),
            chunks_sent: sum(|p| p.chunks_sent),
            chunks_dropped: sum(|p| p.chunks_dropped),
            device_retries: sum(|p| p.retries),
            metadata_copies: sum(|p| p.metadata_copies),
            null_metadata_copies: sum(|p| p.null_copies),
            latency_ms: Latency::of(parts.iter().flat_map(|p| p.latencies_ms.iter())),
            latency_from_queue_ms: Latency::of(
                parts.iter().flat_map(|p| p.queued_latencies_ms.iter()),
            ),
        }
    }
}

impl Handshake {
    fn merge(parts: &[&WakeCounts]) -> Self {
        let sum = |f: fn(&WakeCounts) -> u64| parts.iter().map(|p| f(p)).sum::<u64>();
        Self {
            alive_sent: sum(|p| p.alive_sent),
            answered_capture_image: sum(|p| p.answered_capture),
            answered_next_wake: sum(|p| p.answered_next_wake),
            unanswered: sum(|p| p.unanswered),
            answer_ms: Latency::of(parts.iter().flat_map(|p| p.answer_ms.iter())),
            resend_commands: sum(|p| p.resend_commands),
            unexpected_commands: sum(|p| p.unexpected_commands),
        }
    }
}

impl SimReport {
    /// Merges connection reports.
    pub fn merge(cfg: &SimConfig, mut parts: Vec<ConnReport>, elapsed: Duration) -> Self {
        let acked_readings: Vec<(String, u64)> = parts
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.acked_readings))
            .collect();
        let sum = |f: fn(&ConnReport) -> u64| parts.iter().map(f).sum::<u64>();
        let both: Vec<&SideCounts> = parts.iter().flat_map(|p| [&p.v1, &p.gxp]).collect();
        let all = Side::merge(&both);
        let v1 = Side::merge(&parts.iter().map(|p| &p.v1).collect::<Vec<_>>());
        let gxp = Side::merge(&parts.iter().map(|p| &p.gxp).collect::<Vec<_>>());
        let readings_sent = sum(|p| p.readings_sent);
        Self {
            devices: cfg.devices,
            connections: parts.len(),
            elapsed_s: elapsed.as_secs_f64(),
            messages_sent: all.messages_sent,
            bytes_sent: all.bytes_sent,
            readings_sent,
            readings_acked_by_broker: sum(|p| p.readings_acked),
            captures_started: all.captures_started,
            captures_acked: all.captures_acked,
            captures_unacked: all.captures_unacked,
            captures_silent: all.captures_silent,
            duplicates_sent: both.iter().map(|p| p.duplicates_sent).sum(),
            duplicate_acks: all.duplicate_acks,
            nacks: all.nacks,
            resends: all.resends,
            chunks_sent: all.chunks_sent,
            chunks_dropped: all.chunks_dropped,
            publish_errors: both.iter().map(|p| p.publish_errors).sum(),
            connection_errors: sum(|p| p.connection_errors),
            device_retries: all.device_retries,
            acked_readings,
            readings_per_sec: readings_sent as f64 / elapsed.as_secs_f64().max(0.001),
            latency_ms: all.latency_ms,
            latency_from_queue_ms: all.latency_from_queue_ms,
            v1,
            gxp,
            gxp_handshake: Handshake::merge(
                &parts.iter().map(|p| &p.handshake).collect::<Vec<_>>(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_sum_of_both_firmwares_and_sides_stay_apart() {
        let mut a = ConnReport::default();
        a.v1.captures_started = 3;
        a.v1.acks = 3;
        a.v1.latencies_ms = vec![10.0, 30.0];
        a.gxp.captures_started = 2;
        a.gxp.acks = 1;
        a.gxp.nacks = 4;
        a.gxp.latencies_ms = vec![20.0];
        a.handshake.alive_sent = 5;
        a.handshake.answer_ms = vec![2.0, 4.0];
        let mut b = ConnReport::default();
        b.gxp.captures_started = 1;
        b.handshake.answered_next_wake = 2;
        let r = SimReport::merge(&SimConfig::default(), vec![a, b], Duration::from_secs(1));
        assert_eq!((r.captures_started, r.captures_acked, r.nacks), (6, 4, 4));
        assert_eq!((r.v1.captures_started, r.gxp.captures_started), (3, 3));
        assert_eq!((r.v1.nacks, r.gxp.nacks), (0, 4));
        assert_eq!(r.latency_ms.max, 30.0);
        assert_eq!(r.latency_ms.p50, 20.0);
        assert_eq!(r.gxp.latency_ms.max, 20.0);
        assert_eq!(
            (
                r.gxp_handshake.alive_sent,
                r.gxp_handshake.answered_next_wake
            ),
            (5, 2)
        );
        assert_eq!(r.gxp_handshake.answer_ms.max, 4.0);
    }
}
