//! Live counters shared by the simulator's connections, and an `indicatif` progress line with
//! rates, shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::SimConfig;

/// Counters updated by the connections.
#[derive(Debug, Default, Clone)]
pub struct Live(Arc<[AtomicU64; 4]>);

impl Live {
    /// A publish.
    pub fn published(&self) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
    }
    /// An ACK_OK.
    pub fn acked(&self) {
        self.0[1].fetch_add(1, Ordering::Relaxed);
    }
    /// A NACK.
    pub fn nacked(&self) {
        self.0[2].fetch_add(1, Ordering::Relaxed);
    }
    /// A reading PUBACKed.
    pub fn reading_acked(&self) {
        self.0[3].fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

/// Starts the progress line if stderr is a terminal.
pub fn spawn(live: Live, cfg: &SimConfig) -> tokio::task::JoinHandle<()> {
    let devices = cfg.devices;
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("static template"),
        );
        let mut prev = [0u64; 4];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = [live.get(0), live.get(1), live.get(2), live.get(3)];
            bar.set_message(format!(
                "{devices} devices | published {} ({}/s) | readings acked {} ({}/s) | ACK_OK {} ({}/s) | NACK {}",
                now[0],
                (now[0] - prev[0]) * 2,
                now[3],
                (now[3] - prev[3]) * 2,
                now[1],
                (now[1] - prev[1]) * 2,
                now[2]
            ));
            bar.tick();
            prev = now;
        }
    })
}

/// Ends the progress line.
pub fn finish() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}
