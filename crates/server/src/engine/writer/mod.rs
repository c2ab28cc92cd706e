//! StreamWriter: one task per (sink, basin/stream) that merges runs from many groups into
//! appends, acks what S2 took, and keeps the stream's exactly-once bookkeeping.
//!
//! Exactly once: every record carries the sink name and the message's delivery id (epoch and
//! id) in headers. A durable low-water mark per stream is kept at or below the start of every
//! append whose outcome is unknown. On start, and after any append that may have applied, the
//! writer reads the stream from the mark to the tail and acks every message of this sink it
//! finds there before it sends anything again. Every append carries `match_seq_num` = the tail
//! the writer expects (from the last ack, the initial tail, the reconciliation, or — while
//! appends are in flight — the tail the previous append will leave), so an uncertain append
//! that S2 applies late fails with 412 instead of landing a second copy, and a 412 always
//! triggers another reconciliation (or, for a pipelined append that overtook its predecessor,
//! a resend from the known tail). This assumes the sink is the only writer of its streams;
//! other writers only cost extra reconciliations.
//!
//! Pipelining: up to `max_appends_in_flight` appends (sink setting, default 2) are in flight
//! per writer. An append is sent as soon as it is full, or at once when none is in flight; only
//! a partial one behind an append in flight lingers (Nagle's rule). Append
//! k+1 is chained to k by `match_seq_num`, so it can only land right behind a landed k;
//! outcomes are applied strictly in send order and the mark only follows an append whose
//! predecessors all succeeded. The first failure stops sending, drains the pipeline and
//! reconciles; the runs of later appends go back to their groups uncharged
//! ([`RunError::Requeued`]). See `pipeline` for the details. A group may have its next runs in
//! the same writer behind its current one (never in another writer); all share
//! [`Run::chain`], so a later one is never sent after an earlier one failed.
//!
//! Order on the wire: appends go out with [`StreamIo::append_ordered`], which queues each
//! one before it returns. With the default transport, S2's append session (one HTTP/2
//! streaming request per stream, `S2Config::append_session`), S2 applies and acknowledges
//! them in that order, and after a failure nothing behind it lands. With sessions off
//! (`append_session = false`, for an HTTP/1.1-only proxy) they are unary requests on pooled
//! connections, and append k+1 can reach S2 before k. So ordering is still not assumed: an
//! overtaking append fails with 412 (its `match_seq_num` is ahead of the tail), which is
//! definite — it did not land — so the writer resends it from the tail its predecessor's ack
//! proved, without a reconciliation read, and counts it in `pipeline_reorders` (0 on
//! sessions; measured in docs/BENCHMARKS.md). Nothing is lost or duplicated either way.
//!
//! Memory: every append holds its JSON size in KiB of the engine-wide in-flight budget
//! (`EngineOptions::max_in_flight_bytes`, default 64 MiB) until it is answered; a writer
//! waits for room before sending. Appends to different streams run in parallel, and runs of
//! many groups share each append. A writer with nothing to do for [`IDLE`] ends; the next run
//! for its stream starts a new one.
//!
//! - [`batch`](self): this module, the types shared with the group actors;
//! - `pipeline`: the writer task, batching and the appends in flight, failure recovery;
//! - `stream`: the low-water mark and reconciliation;
//! - `append`: one append at a time with its conflict handling (after a failure, 422 split).

mod append;
mod pipeline;
mod stream;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use s2sink_client::{AppendRecord, BatchLimits, S2Error};
use s2sink_core::{ErrorClass, LastError, Route};
use s2sink_queue::{DeliveryId, Queue};
use tokio::sync::{mpsc, oneshot};

use super::io::StreamIo;
use super::stats::SinkStats;
use super::Clock;
pub use crate::engine::scan::{our_delivery_id, our_id, HEADER_ID, HEADER_SINK};
pub(crate) use stream::marker_key;

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
    /// Shared by the runs of one group that are in a writer at once (a group sends its next
    /// run before the previous one is acked). The writer sets it when any of them is not
    /// delivered, and does not send a run whose flag is set (it is requeued), so a group's
    /// later run never lands after its earlier one failed.
    pub chain: Option<Arc<AtomicBool>>,
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

/// Why a submitted run was not delivered.
#[derive(Debug, Clone)]
pub enum RunError {
    /// The run's append failed: the group charges an attempt to its head.
    Failed(Failure),
    /// The run was in an append behind one that failed; `match_seq_num` kept it out of the
    /// stream. Not a delivery failure: the group reads its head again, uncharged.
    Requeued,
}

/// Outcome of a submitted run.
pub type RunResult = Result<(), RunError>;

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
    /// Turns true once a writer started with [`Start::PrepareFirst`] has prepared its stream
    /// (or failed to; it tries again before its first append).
    prepared: tokio::sync::watch::Receiver<bool>,
}

/// The outcome of an enqueued run, to be awaited.
pub struct Pending(oneshot::Receiver<RunResult>);

impl Pending {
    /// Waits for the run's outcome (acked in the queue before `Ok`).
    pub async fn outcome(self) -> RunResult {
        self.0.await.unwrap_or_else(|_| {
            Err(RunError::Failed(Failure::local(
                "shutdown",
                "stream writer stopped".into(),
                0,
            )))
        })
    }
}

/// A submission that did not reach a writer because it had ended; the run comes back.
pub struct WriterGone(pub Run);

impl WriterHandle {
    /// Submits a run and waits for its outcome. The run's messages are acked in the queue
    /// by the writer before `Ok` is returned. If the writer has ended (idle), the run comes
    /// back untouched so the caller can start a new writer.
    pub async fn submit(&self, run: Run) -> Result<RunResult, WriterGone> {
        Ok(self.enqueue(run).await?.outcome().await)
    }

    /// Hands a run to the writer without waiting for its outcome: runs enqueued one after the
    /// other on the same handle are appended in that order.
    pub async fn enqueue(&self, run: Run) -> Result<Pending, WriterGone> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.tx.send(Submission { run, reply }).await {
            return Err(WriterGone(e.0.run));
        }
        Ok(Pending(rx))
    }

    /// Whether the writer task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until a writer started with [`Start::PrepareFirst`] has prepared its stream
    /// (reconciled it from its mark), tried and failed, or ended. Returns at once for a
    /// writer started on demand: it prepares before its first append instead.
    pub async fn prepared(&self) {
        let mut rx = self.prepared.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// How a writer task starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// For a run that is waiting: prepare the stream right before its first append.
    OnDemand,
    /// After a restart, for a stream this sink has a mark on: load the mark and reconcile at
    /// once, before any run arrives, so the supervisors can hold group recovery back until
    /// then (see `Supervisor::started`). Reconciling while thousands of recovering groups
    /// read their heads on the same engine thread took ~0.3 s (each S2 call waits for its
    /// turn behind those reads); before them it takes milliseconds.
    PrepareFirst,
}

/// What a writer needs to know.
pub struct WriterCtx {
    pub sink: String,
    pub route: Route,
    pub io: Arc<dyn StreamIo>,
    pub queue: Queue,
    pub stats: Arc<SinkStats>,
    pub limits: BatchLimits,
    pub linger: Duration,
    /// `BatchSettings::linger_when_idle`.
    pub linger_when_idle: bool,
    pub clock: Clock,
    pub on_fatal: super::FatalHook,
    pub generation: u64,
    /// How long the writer waits for a run before it ends.
    pub idle: Duration,
    /// Appends in flight at once on this stream (1..=16).
    pub max_in_flight: usize,
    /// The engine-wide in-flight byte budget (shared by every writer).
    pub budget: super::ByteBudget,
}

/// Starts a writer task: `place` runs the given start-up on the engine thread the writer
/// belongs to (the handle works from any thread at once; runs wait in the channel).
pub fn spawn_writer(
    ctx: WriterCtx,
    start: Start,
    place: impl FnOnce(Box<dyn FnOnce() + Send>),
) -> WriterHandle {
    let (tx, rx) = mpsc::channel(1024);
    let generation = ctx.generation;
    let (done, prepared) = tokio::sync::watch::channel(start == Start::OnDemand);
    place(Box::new(move || {
        actix_rt::spawn(pipeline::writer_loop(
            ctx,
            rx,
            (start == Start::PrepareFirst).then_some(done),
        ));
    }));
    WriterHandle {
        tx,
        generation,
        prepared,
    }
}
