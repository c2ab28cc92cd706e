//! StreamWriter: one task per (sink, basin/stream) that merges runs from many groups into
//! appends, acks what S2 took, and keeps the stream's exactly-once bookkeeping.
//!
//! Exactly once: every record carries the sink name and the message's delivery id (epoch and
//! id) in headers. A durable low-water mark per stream is kept at or below the start of every
//! append whose outcome is unknown. On start, and after any append that may have applied, the
//! writer reads the stream from the mark to the tail and acks every message of this sink it
//! finds there before it sends anything again. Every append carries `match_seq_num` = the tail
//! the writer expects (from the last ack, the initial tail, or the reconciliation), so an
//! uncertain append that S2 applies late fails with 412 instead of landing a second copy, and
//! a 412 always triggers another reconciliation. This assumes the sink is the only writer of
//! its streams; other writers only cost extra reconciliations.
//!
//! One append is in flight per writer at a time, so the mark is trivially correct; appends to
//! different streams run in parallel, and runs of many groups share each append. A writer
//! with nothing to do for [`IDLE`] ends; the next run for its stream starts a new one.
//!
//! - [`batch`](self): this module, collecting runs into appends;
//! - `stream`: the low-water mark and reconciliation;
//! - `append`: one append with its conflict handling.

mod append;
mod stream;

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use s2sink_client::{AppendRecord, BatchLimits, S2Error, BATCH_JSON_OVERHEAD};
use s2sink_core::{ErrorClass, LastError, Route};
use s2sink_queue::{DeliveryId, MessageId, Queue};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::io::StreamIo;
use super::stats::SinkStats;
use super::Clock;
use append::append_with_conflicts;
pub(crate) use stream::marker_key;
pub use stream::{our_delivery_id, our_id};
use stream::{prepare, queue_failure, State};

/// Record header naming the sink that wrote the record.
pub const HEADER_SINK: &str = "s2sink-sink";
/// Record header carrying the message's [`DeliveryId`] (`<epoch hex>-<id>`, or the plain
/// decimal id for messages accepted before epochs existed).
pub const HEADER_ID: &str = "s2sink-id";
/// Record header carrying the envelope's `metadata.idempotency_key`, when present.
pub const HEADER_IDEMPOTENCY_KEY: &str = "s2sink-idempotency-key";

/// How often the low-water mark is persisted while appends succeed.
const MARKER_INTERVAL: Duration = Duration::from_secs(1);
/// Reconcile-and-retry rounds after a `match_seq_num` conflict before giving up for now.
const MAX_CONFLICT_ROUNDS: usize = 3;
/// By default a writer with no run for this long ends (a routing function fanning out to many
/// streams does not keep a task per stream forever); `EngineOptions::writer_idle` changes it.
pub const IDLE: Duration = Duration::from_secs(30);

/// Consecutive messages of one group, to be appended together and in order.
#[derive(Debug)]
pub struct Run {
    pub ids: Vec<DeliveryId>,
    pub records: Vec<AppendRecord>,
    pub metered: u64,
    pub json_bytes: usize,
    /// The sink's reconciliation count when the run was read from the queue.
    pub read_epoch: u64,
}

/// Why a run was not delivered, as stored on the group's head.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: LastError,
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn from_s2(e: &S2Error) -> Failure {
        Failure {
            error: e.to_last_error(),
            retry_after: e.retry_after(),
        }
    }

    fn local(code: &str, message: String, at_ms: u64) -> Failure {
        Failure {
            error: LastError {
                class: ErrorClass::Retryable,
                status: None,
                code: Some(code.to_string()),
                message,
                body: None,
                at_ms,
            },
            retry_after: None,
        }
    }
}

/// Outcome of a submitted run.
pub type RunResult = Result<(), Failure>;

struct Submission {
    run: Run,
    reply: oneshot::Sender<RunResult>,
}

/// Sends runs to a writer task.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Submission>,
    /// The sink settings generation the writer was started with.
    pub generation: u64,
}

/// A submission that did not reach a writer because it had ended; the run comes back.
pub struct WriterGone(pub Run);

impl WriterHandle {
    /// Submits a run and waits for its outcome. The run's messages are acked in the queue
    /// by the writer before `Ok` is returned. If the writer has ended (idle), the run comes
    /// back untouched so the caller can start a new writer.
    pub async fn submit(&self, run: Run) -> Result<RunResult, WriterGone> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.tx.send(Submission { run, reply }).await {
            return Err(WriterGone(e.0.run));
        }
        Ok(rx.await.unwrap_or_else(|_| {
            Err(Failure::local(
                "shutdown",
                "stream writer stopped".into(),
                0,
            ))
        }))
    }

    /// Whether the writer task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a writer needs to know.
pub struct WriterCtx {
    pub sink: String,
    pub route: Route,
    pub io: Rc<dyn StreamIo>,
    pub queue: Queue,
    pub stats: Arc<SinkStats>,
    pub limits: BatchLimits,
    pub linger: Duration,
    pub clock: Clock,
    pub on_fatal: Rc<dyn Fn(&s2sink_queue::QueueError)>,
    pub generation: u64,
    /// How long the writer waits for a run before it ends.
    pub idle: Duration,
}

/// Starts a writer task on the current actix/tokio local set.
pub fn spawn_writer(ctx: WriterCtx) -> WriterHandle {
    let (tx, rx) = mpsc::channel(1024);
    let generation = ctx.generation;
    actix_rt::spawn(writer_loop(ctx, rx));
    WriterHandle { tx, generation }
}

async fn writer_loop(ctx: WriterCtx, mut rx: mpsc::Receiver<Submission>) {
    let mut state = State::new();
    let mut carry: Option<Submission> = None;
    loop {
        let first = match carry.take() {
            Some(s) => s,
            None => match tokio::time::timeout(ctx.idle, rx.recv()).await {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(_) => {
                    // Idle: refuse new runs (they come back to their sender), finish the
                    // ones already queued, end.
                    rx.close();
                    let mut rest = Vec::new();
                    while let Ok(s) = rx.try_recv() {
                        rest.push(s);
                    }
                    for s in rest {
                        process(&ctx, &mut state, vec![s]).await;
                    }
                    return;
                }
            },
        };
        let mut records = first.run.records.len();
        let mut metered = first.run.metered;
        let mut json = first.run.json_bytes;
        let mut batch = vec![first];
        // Take what is already waiting without delay; linger only while the batch is not full.
        let deadline = Instant::now() + ctx.linger;
        while records < ctx.limits.max_records {
            let next = match rx.try_recv() {
                Ok(s) => Some(s),
                Err(_) => tokio::select! {
                    s = rx.recv() => s,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
            };
            let Some(s) = next else { break };
            let fits = records + s.run.records.len() <= ctx.limits.max_records
                && metered + s.run.metered <= ctx.limits.max_metered_bytes
                && json + s.run.json_bytes + BATCH_JSON_OVERHEAD <= ctx.limits.max_json_bytes;
            if !fits {
                carry = Some(s);
                break;
            }
            records += s.run.records.len();
            metered += s.run.metered;
            json += s.run.json_bytes;
            batch.push(s);
        }
        process(&ctx, &mut state, batch).await;
    }
}

async fn process(ctx: &WriterCtx, state: &mut State, batch: Vec<Submission>) {
    if let Err(f) = prepare(ctx, state).await {
        ctx.stats.count_failure(f.error.class, f.error.status);
        tracing::warn!(
            sink = %ctx.sink, stream = %ctx.route, class = f.error.class.as_str(),
            status = ?f.error.status, error = %f.error.message,
            "append failed: could not prepare the stream (tail / reconcile)"
        );
        for s in batch {
            let _ = s.reply.send(Err(f.clone()));
        }
        return;
    }
    // The queue is the source of truth: a message no longer in it was delivered (found by a
    // reconciliation, or acked by an earlier append), acknowledged or discarded. Drop those
    // from the runs, so a stale resubmission can never land a second copy.
    let mut pending = Vec::with_capacity(batch.len());
    let epoch = ctx.stats.reconciles.load(Ordering::Acquire);
    for mut s in batch {
        if s.run.read_epoch >= epoch {
            // Read after the last reconciliation, so no id can have been found in S2 since
            // (only a manual acknowledge/discard racing with this run could have removed
            // one; that message is then delivered anyway). Skip the lookups.
            pending.push(s);
            continue;
        }
        let ids: Vec<MessageId> = s.run.ids.iter().map(|d| d.id).collect();
        let present = match ctx.queue.contains(&ctx.sink, &ids) {
            Ok(p) => p,
            Err(e) => {
                let _ = s.reply.send(Err(queue_failure(ctx, &e)));
                continue;
            }
        };
        let gone = present.iter().filter(|p| !**p).count();
        if gone > 0 {
            ctx.stats
                .deduplicated
                .fetch_add(gone as u64, Ordering::Relaxed);
            let mut keep = present.iter();
            s.run.records.retain(|_| *keep.next().unwrap());
            let mut keep = present.iter();
            s.run.ids.retain(|_| *keep.next().unwrap());
        }
        if s.run.ids.is_empty() {
            let _ = s.reply.send(Ok(()));
        } else {
            pending.push(s);
        }
    }
    if pending.is_empty() {
        return;
    }
    let outcome = append_with_conflicts(ctx, state, &pending).await;
    match outcome {
        Ok(()) => {
            for s in pending {
                let _ = s.reply.send(Ok(()));
            }
        }
        Err(f) if pending.len() > 1 && f.error.status == Some(422) => {
            // One record may be poison: isolate it by sending each group's run on its own.
            for s in pending {
                let single = vec![s];
                let r = append_with_conflicts(ctx, state, &single).await;
                let s = single.into_iter().next().unwrap();
                let _ = s.reply.send(r);
            }
        }
        Err(f) => {
            for s in pending {
                let _ = s.reply.send(Err(f.clone()));
            }
        }
    }
}
