//! `webhook` actions: each one gets a bounded queue and a worker that POSTs messages as JSON,
//! with a per-attempt timeout and retries with doubling backoff. A full queue refuses the
//! message at once (counted as a failed action) instead of stalling the source. The message's
//! broker ack waits for delivery, or for the last retry to fail (then the failure is counted
//! and logged): a crash before either leaves it for the broker to redeliver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::link::{self, AckToken};
use crate::metrics as m;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::model::WebhookSpec;
use super::stats::SubStats;

/// Deliveries in flight per webhook.
const CONCURRENCY: usize = 4;

/// Webhook jobs queued or being delivered, every webhook of the process: shutdown waits for
/// them (up to its deadline) so that their acks go out on live connections.
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits until no webhook job is queued or in delivery, or `within` passes; answers whether
/// none is.
pub async fn wait_idle(within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if PENDING.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message to deliver.
pub struct WebhookJob {
    /// The JSON body.
    pub body: Bytes,
    /// The message's share of its broker ack.
    pub ack: Option<AckToken>,
    /// The subscription's counters.
    pub stats: Arc<SubStats>,
    /// Counts the job in [`PENDING`] from the time it is queued until it is dropped, whatever
    /// ends it (delivered, given up, or its worker gone).
    pub pending: Option<Pending>,
}

/// One job counted in [`PENDING`].
pub struct Pending(());

impl Pending {
    fn new() -> Self {
        PENDING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Pending(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A webhook's queue. Dropping the last handle lets the worker finish what is queued and end.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<WebhookJob>,
}

impl Webhook {
    /// Starts the worker for one action.
    pub fn start(spec: WebhookSpec, client: reqwest::Client) -> Self {
        let (tx, rx) = mpsc::channel(spec.queue);
        let spec = Arc::new(spec);
        tokio::spawn(async move {
            tokio_stream_from(rx)
                .for_each_concurrent(CONCURRENCY, |job| {
                    let spec = spec.clone();
                    let client = client.clone();
                    async move { deliver(&spec, &client, job).await }
                })
                .await;
        });
        Self { tx }
    }

    /// Queues a message; gives it back when the queue is full.
    pub fn try_send(&self, mut job: WebhookJob) -> Result<(), WebhookJob> {
        job.pending = Some(Pending::new());
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(mut j) | mpsc::error::TrySendError::Closed(mut j) => {
                j.pending = None;
                j
            }
        })
    }
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|j| (j, rx)) })
}

/// Whether a response status is worth another attempt.
fn retriable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

async fn deliver(spec: &WebhookSpec, client: &reqwest::Client, job: WebhookJob) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut last_error = String::new();
    let mut ok = false;
    for attempt in 0..=spec.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        let mut req = client
            .post(&spec.url)
            .timeout(Duration::from_millis(spec.timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(job.body.clone());
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                ok = true;
                break;
            }
            Ok(r) => {
                last_error = format!("HTTP {}", r.status());
                if !retriable(r.status()) {
                    break;
                }
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    if ok {
        job.stats.executed();
        metrics::counter!(m::ACTIONS_EXECUTED_TOTAL, "type" => "webhook").increment(1);
    } else {
        job.stats.failed();
        metrics::counter!(m::ACTIONS_FAILED_TOTAL, "type" => "webhook").increment(1);
        tracing::warn!(url = %redact(&spec.url), error = %last_error, attempts = spec.retries + 1,
            elapsed_ms = started.elapsed().as_millis() as u64, "webhook given up");
    }
    link::ack(job.ack);
}

/// The URL without credentials or query (which may hold tokens), for logs.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_lose_credentials_and_query() {
        assert_eq!(
            redact("https://user:pw@hooks.example.com:8443/in?token=abc"),
            "https://hooks.example.com:8443/in"
        );
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        assert!(retriable(reqwest::StatusCode::BAD_GATEWAY));
        assert!(retriable(reqwest::StatusCode::TOO_MANY_REQUESTS));
        assert!(!retriable(reqwest::StatusCode::NOT_FOUND));
        assert!(!retriable(reqwest::StatusCode::BAD_REQUEST));
    }
}
