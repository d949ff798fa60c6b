//! The simulator's report: counts and end-to-end capture latency percentiles.

use std::time::Duration;

use serde::Serialize;

use super::SimConfig;

/// One connection's counts.
#[derive(Debug, Default)]
pub struct ConnReport {
    /// Messages published.
    pub messages: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Readings published.
    pub readings_sent: u64,
    /// Readings the broker acknowledged (PUBACK).
    pub readings_acked: u64,
    /// Which readings: (device id, seq).
    pub acked_readings: Vec<(String, u64)>,
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
    /// SUBACKs.
    pub suback: u64,
    /// Publishes that could not be queued.
    pub publish_errors: u64,
    /// Connection errors.
    pub connection_errors: u64,
    /// Last chunk → ACK_OK, ms.
    pub latencies_ms: Vec<f64>,
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
    /// Latency percentiles, ms.
    pub latency_ms: Latency,
    /// Readings the broker acknowledged: (device id, seq). Not serialised.
    #[serde(skip)]
    pub acked_readings: Vec<(String, u64)>,
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

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl SimReport {
    /// Merges connection reports.
    pub fn merge(cfg: &SimConfig, mut parts: Vec<ConnReport>, elapsed: Duration) -> Self {
        let acked_readings: Vec<(String, u64)> = parts
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.acked_readings))
            .collect();
        let sum = |f: fn(&ConnReport) -> u64| parts.iter().map(f).sum::<u64>();
        let mut lat: Vec<f64> = parts
            .iter()
            .flat_map(|p| p.latencies_ms.iter().copied())
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let readings_sent = sum(|p| p.readings_sent);
        Self {
            devices: cfg.devices,
            connections: parts.len(),
            elapsed_s: elapsed.as_secs_f64(),
            messages_sent: sum(|p| p.messages),
            bytes_sent: sum(|p| p.bytes),
            readings_sent,
            readings_acked_by_broker: sum(|p| p.readings_acked),
            captures_started: sum(|p| p.captures_started),
            captures_acked: sum(|p| p.acks),
            captures_unacked: sum(|p| p.unacked_captures),
            captures_silent: sum(|p| p.silent_captures),
            duplicates_sent: sum(|p| p.duplicates_sent),
            duplicate_acks: sum(|p| p.duplicate_acks),
            nacks: sum(|p| p.nacks),
            resends: sum(|p| p.resends),
            chunks_sent: sum(|p| p.chunks_sent),
            chunks_dropped: sum(|p| p.chunks_dropped),
            publish_errors: sum(|p| p.publish_errors),
            connection_errors: sum(|p| p.connection_errors),
            device_retries: sum(|p| p.retries),
            acked_readings,
            readings_per_sec: readings_sent as f64 / elapsed.as_secs_f64().max(0.001),
            latency_ms: Latency {
                p50: pct(&lat, 0.50),
                p90: pct(&lat, 0.90),
                p99: pct(&lat, 0.99),
                max: lat.last().copied().unwrap_or(0.0),
            },
        }
    }
}
