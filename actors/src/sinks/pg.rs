//! The Postgres sink actor: batches rows per table (flushing on rows, bytes or age), writes each
//! batch in one round trip with bounded concurrency, retries retriable errors with backoff, and
//! only then acknowledges the batch's messages to the broker and tells any waiter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use actix::prelude::*;
use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::pg_write::write_batch;
use super::rows::{DeadLetterRow, Durable, PendingRow, Row, RowNotStored, Table};
use super::SinkError;
use crate::batcher::Batcher;
use crate::config::SinksConfig;
use crate::metrics as m;

/// Flushes everything buffered and waits until every batch in flight is written.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Message for PendingRow {
    type Result = ();
}

/// The Postgres sink.
pub struct PgSink {
    pool: Pool,
    cfg: SinksConfig,
    batchers: Vec<Batcher<PendingRow>>,
    timers: Vec<Option<SpawnHandle>>,
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

impl PgSink {
    /// A sink over `pool`; each row's ack goes back on the connection it came from.
    pub fn new(pool: Pool, cfg: SinksConfig) -> Self {
        let limits = cfg.limits();
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        Self {
            pool,
            batchers: Table::ALL.iter().map(|_| Batcher::new(limits)).collect(),
            timers: Table::ALL.iter().map(|_| None).collect(),
            permits,
            queued: Arc::new(AtomicUsize::new(0)),
            cfg,
        }
    }

    fn dispatch(&mut self, table: Table, batch: Vec<PendingRow>, ctx: &mut Context<Self>) {
        if batch.is_empty() {
            return;
        }
        if let Some(h) = self.timers[table.index()].take() {
            ctx.cancel_future(h);
        }
        metrics::gauge!(m::SINK_QUEUE_ROWS, "sink" => "postgres")
            .set(self.queued.load(Ordering::Relaxed) as f64);
        let permits = self.permits.clone();
        let writer = BatchWriter {
            pool: self.pool.clone(),
            retry_min: Duration::from_millis(self.cfg.retry_min_ms),
            retry_max: Duration::from_millis(self.cfg.retry_max_ms),
            queued: self.queued.clone(),
        };
        // Wait (blocking this actor's mailbox) until a write slot is free: backpressure.
        ctx.wait(
            async move { permits.acquire_owned().await }
                .into_actor(self)
                .map(move |permit, _act, _ctx| {
                    let Ok(permit) = permit else { return };
                    actix::spawn(async move {
                        writer.write(table, batch).await;
                        drop(permit);
                    });
                }),
        );
    }
}

impl PgSink {
    /// Flushes `table` when its oldest row reaches `age`. If every writer is busy at that moment,
    /// the batch keeps filling (up to `max_batch_rows`) until one is free: under load, batches
    /// grow instead of queueing behind each other, so fewer and larger commits keep up.
    fn arm_age_timer(&mut self, table: Table, age: Duration, ctx: &mut Context<Self>) {
        let i = table.index();
        self.timers[i] = Some(ctx.run_later(age, move |act, ctx| {
            act.timers[i] = None;
            if act.permits.available_permits() == 0 {
                act.arm_age_timer(table, Duration::from_millis(1), ctx);
                return;
            }
            let batch = act.batchers[i].take();
            act.dispatch(table, batch, ctx);
        }));
    }
}

impl Actor for PgSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.mailbox_capacity);
    }
}

impl Handler<PendingRow> for PgSink {
    type Result = ();

    fn handle(&mut self, p: PendingRow, ctx: &mut Self::Context) {
        let table = p.row.table();
        let bytes = p.row.estimated_bytes();
        self.queued.fetch_add(1, Ordering::Relaxed);
        let i = table.index();
        if let Some(batch) = self.batchers[i].push(p, bytes, Instant::now()) {
            self.dispatch(table, batch, ctx);
        } else if self.timers[i].is_none() {
            let age = Duration::from_millis(match table {
                Table::Captures => self.cfg.captures_max_age_ms.min(self.cfg.max_batch_age_ms),
                _ => self.cfg.max_batch_age_ms,
            });
            self.arm_age_timer(table, age, ctx);
        }
    }
}

impl Handler<Flush> for PgSink {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        for t in Table::ALL {
            let batch = self.batchers[t.index()].take();
            self.dispatch(t, batch, ctx);
        }
        let permits = self.permits.clone();
        let n = self.cfg.concurrency.max(1) as u32;
        Box::pin(
            async move {
                // Every permit free means no batch is being written.
                let _all = permits.acquire_many(n).await;
            }
            .into_actor(self),
        )
    }
}

/// What one batch write needs: the pool, the retry bounds, and the queue gauge to decrement.
struct BatchWriter {
    pool: Pool,
    retry_min: Duration,
    retry_max: Duration,
    queued: Arc<AtomicUsize>,
}

impl BatchWriter {
    async fn write(&self, table: Table, batch: Vec<PendingRow>) {
        match self.write_retrying(table, &batch).await {
            Ok(()) => self.finish(batch, Ok(())),
            Err(e) if batch.len() == 1 => self.reject(table, batch, e).await,
            Err(e) => {
                tracing::warn!(table = table.label(), error = %e, rows = batch.len(), "batch refused; writing rows one by one");
                for p in batch {
                    let one = vec![p];
                    match self.write_retrying(table, &one).await {
                        Ok(()) => self.finish(one, Ok(())),
                        Err(e) => self.reject(table, one, e).await,
                    }
                }
            }
        }
    }

    /// A row Postgres refused for good: recorded in `dead_letters` (reason `rejected`, the
    /// row as text), so that it is not dropped silently, then acknowledged (redelivering it
    /// would fail the same way). When that record cannot be written either, or the refused row
    /// was itself a dead letter, the message is not acknowledged: the broker redelivers it.
    async fn reject(&self, table: Table, mut one: Vec<PendingRow>, e: SinkError) {
        metrics::counter!(m::SINK_FAILURES_TOTAL, "table" => table.label()).increment(1);
        tracing::error!(table = table.label(), error = %e, "row rejected by Postgres; kept in dead_letters");
        let mut kept = false;
        if table != Table::DeadLetters {
            if let Some(p) = one.first() {
                let record = PendingRow::new(
                    Row::DeadLetter(DeadLetterRow {
                        device_id: p.row.device_id().to_string(),
                        topic: Bytes::from(format!("rejected/{}", table.label())),
                        payload: Bytes::from(format!("{:?}\n{e}", p.row)),
                        reason: "rejected",
                        source: Arc::from(""),
                        received_at: chrono::Utc::now(),
                    }),
                    None,
                );
                match self.write_retrying(Table::DeadLetters, &[record]).await {
                    Ok(()) => {
                        kept = true;
                        metrics::counter!(m::DEAD_LETTERED_TOTAL, "reason" => "rejected")
                            .increment(1);
                    }
                    Err(e2) => {
                        tracing::error!(error = %e2, "the rejected row could not be kept in dead_letters either; its message is left for redelivery")
                    }
                }
            }
        }
        if !kept {
            for p in &mut one {
                drop(p.ack.take()); // a leak: counted, and redelivered after a reconnect
            }
        }
        self.finish(one, Err(RowNotStored::Rejected(Arc::new(e))));
    }

    /// Retries retriable errors until they succeed; returns permanent ones.
    async fn write_retrying(&self, table: Table, batch: &[PendingRow]) -> Result<(), SinkError> {
        let mut delay = self.retry_min;
        loop {
            let started = StdInstant::now();
            let res = async {
                let mut client = self.pool.get().await?;
                write_batch(&mut client, table, batch).await
            }
            .await;
            match res {
                Ok(_) => {
                    metrics::histogram!(m::SINK_BATCH_SECONDS, "table" => table.label())
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(m::SINK_BATCH_ROWS, "table" => table.label())
                        .record(batch.len() as f64);
                    metrics::counter!(m::SINK_BATCHES_TOTAL, "table" => table.label()).increment(1);
                    metrics::counter!(m::SINK_ROWS_TOTAL, "table" => table.label())
                        .increment(batch.len() as u64);
                    return Ok(());
                }
                Err(e) if e.is_retriable() => {
                    metrics::counter!(m::SINK_RETRIES_TOTAL, "sink" => "postgres").increment(1);
                    tracing::warn!(table = table.label(), error = %e, retry_in_ms = delay.as_millis() as u64, "batch write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry_max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Tells each row's waiter the outcome and acknowledges the rows' messages.
    fn finish(&self, batch: Vec<PendingRow>, outcome: Durable) {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let mut tokens = Vec::with_capacity(batch.len());
        for p in batch {
            if let Some(t) = p.ack {
                tokens.push(t);
            }
            if let Some(done) = p.done {
                let _ = done.send(outcome.clone());
            }
        }
        // Durable (or deliberately rejected): now the broker may forget these messages.
        crate::link::ack_all(tokens);
    }
}

/// Replaces the sink's connection pool (`sink:postgres` restart). Batches in flight finish on
/// the connections they hold; the next ones use the new pool.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplacePool(pub Pool);

impl Handler<ReplacePool> for PgSink {
    type Result = ();

    fn handle(&mut self, msg: ReplacePool, _ctx: &mut Self::Context) {
        self.pool = msg.0;
        tracing::info!("postgres sink: connection pool replaced");
    }
}

/// A round trip through the sink's pool (`SELECT 1`); answers the time it took.
#[derive(Debug, Message)]
#[rtype(result = "Result<Duration, PgProbeError>")]
pub struct Probe;

/// Why the Postgres sink's probe failed.
#[derive(Debug, thiserror::Error)]
pub enum PgProbeError {
    /// No connection from the pool.
    #[error("{0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// `SELECT 1` failed.
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
}

impl Handler<Probe> for PgSink {
    type Result = ResponseFuture<Result<Duration, PgProbeError>>;

    fn handle(&mut self, _: Probe, _ctx: &mut Self::Context) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(async move {
            let started = StdInstant::now();
            let c = pool.get().await?;
            c.query_one("SELECT 1", &[]).await?;
            Ok(started.elapsed())
        })
    }
}
