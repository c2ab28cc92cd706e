//! StreamWriter: one task per (sink, basin/stream) that merges runs from many groups into
//! appends, acks what S2 took, and keeps the stream's exactly-once bookkeeping.
//!
//! Exactly once: every record carries the sink name and message id in headers. A durable
//! low-water mark per stream is kept at or below the start of every append whose outcome is
//! unknown. On start, and after any append that may have applied, the writer reads the stream
//! from the mark to the tail and acks every message of this sink it finds there before it sends
//! anything again. Every append carries `match_seq_num` = the tail the writer expects (from the
//! last ack, the initial tail, or the reconciliation), so an uncertain append that S2 applies
//! late fails with 412 instead of landing a second copy, and a 412 always triggers another
//! reconciliation. This assumes the sink is the only writer of its streams; other writers only
//! cost extra reconciliations.
//!
//! One append is in flight per writer at a time, so the mark is trivially correct; appends to
//! different streams run in parallel, and runs of many groups share each append.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use s2sink_client::{AppendInput, AppendRecord, BatchLimits, S2Error, BATCH_JSON_OVERHEAD};
use s2sink_core::{ErrorClass, LastError, Route};
use s2sink_queue::{DeliveryId, MessageId, Queue};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::io::StreamIo;
use super::stats::SinkStats;
use super::Clock;

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
}

impl WriterHandle {
    /// Submits a run and waits for its outcome. The run's messages are acked in the queue
    /// by the writer before `Ok` is returned.
    pub async fn submit(&self, run: Run) -> RunResult {
        let (reply, rx) = oneshot::channel();
        let gone = || Failure::local("shutdown", "stream writer stopped".into(), 0);
        if self.tx.send(Submission { run, reply }).await.is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
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
}

/// Starts a writer task on the current actix/tokio local set.
pub fn spawn_writer(ctx: WriterCtx) -> WriterHandle {
    let (tx, rx) = mpsc::channel(1024);
    actix_rt::spawn(writer_loop(ctx, rx));
    WriterHandle { tx }
}

fn marker_key(sink: &str, route: &Route) -> String {
    format!("lwm/{sink}/{}/{}", route.basin, route.stream)
}

struct State {
    /// Durable low-water mark (`None` until loaded).
    marker: Option<u64>,
    last_persist: Instant,
    needs_reconcile: bool,
    /// Where the next append must start (`match_seq_num`); `None` while unknown.
    next_seq: Option<u64>,
}

async fn writer_loop(ctx: WriterCtx, mut rx: mpsc::Receiver<Submission>) {
    let mut state = State {
        marker: None,
        last_persist: Instant::now(),
        needs_reconcile: false,
        next_seq: None,
    };
    let mut carry: Option<Submission> = None;
    loop {
        let first = match carry.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => return,
            },
        };
        let mut records = first.run.records.len();
        let mut metered = first.run.metered;
        let mut json = first.run.json_bytes;
        let mut batch = vec![first];
        let deadline = Instant::now() + ctx.linger;
        while records < ctx.limits.max_records {
            let next = tokio::select! {
                s = rx.recv() => s,
                _ = tokio::time::sleep_until(deadline) => None,
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
    let epoch = ctx
        .stats
        .reconciles
        .load(std::sync::atomic::Ordering::Acquire);
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
                .fetch_add(gone as u64, std::sync::atomic::Ordering::Relaxed);
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

/// Loads or initialises the low-water mark and reconciles when needed.
async fn prepare(ctx: &WriterCtx, state: &mut State) -> Result<(), Failure> {
    if state.marker.is_none() {
        let key = marker_key(&ctx.sink, &ctx.route);
        match ctx.queue.get_marker(&key) {
            Ok(Some(bytes)) => {
                state.marker = Some(decode_marker(&bytes));
                state.needs_reconcile = true;
            }
            Ok(None) => {
                let tail = ctx
                    .io
                    .check_tail(&ctx.route.basin, &ctx.route.stream)
                    .await
                    .map_err(|e| Failure::from_s2(&e))?;
                persist_marker(ctx, state, tail).await?;
                state.next_seq = Some(tail);
            }
            Err(e) => {
                return Err(queue_failure(ctx, &e));
            }
        }
    }
    if state.needs_reconcile {
        reconcile(ctx, state).await?;
    }
    Ok(())
}

/// A queue error stops the process (unknown disk state); the run fails meanwhile.
fn queue_failure(ctx: &WriterCtx, e: &s2sink_queue::QueueError) -> Failure {
    (ctx.on_fatal)(e);
    Failure::local("queue", e.to_string(), ctx.clock.now_millis())
}

fn decode_marker(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

async fn persist_marker(ctx: &WriterCtx, state: &mut State, at: u64) -> Result<(), Failure> {
    let key = marker_key(&ctx.sink, &ctx.route);
    if let Err(e) = ctx.queue.put_marker(&key, &at.to_be_bytes()).await {
        return Err(queue_failure(ctx, &e));
    }
    state.marker = Some(at);
    state.last_persist = Instant::now();
    Ok(())
}

/// Reads the stream from the mark to the tail; acks every message of this sink found there
/// (matching the full delivery id, epoch included) and returns the delivery ids found.
async fn reconcile(ctx: &WriterCtx, state: &mut State) -> Result<HashSet<DeliveryId>, Failure> {
    let (basin, stream) = (&ctx.route.basin, &ctx.route.stream);
    let fail = |e: S2Error| Failure::from_s2(&e);
    let tail = ctx.io.check_tail(basin, stream).await.map_err(fail)?;
    let mut pos = state.marker.unwrap_or(0);
    let mut found = HashSet::new();
    while pos < tail {
        let records = ctx.io.read(basin, stream, pos, 1000).await.map_err(fail)?;
        let Some(last) = records.last() else { break };
        pos = last.seq_num + 1;
        for r in &records {
            if let Some(id) = our_delivery_id(&ctx.sink, &r.headers) {
                found.insert(id);
            }
        }
    }
    if !found.is_empty() {
        let ids: Vec<DeliveryId> = found.iter().copied().collect();
        if let Err(e) = ctx.queue.ack_delivered(&ctx.sink, &ids) {
            return Err(queue_failure(ctx, &e));
        }
    }
    // Counted after the acks: a run read from the queue before this point carries a lower
    // epoch and is checked against the queue before it is sent (see `process`).
    ctx.stats
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    state.needs_reconcile = false;
    state.next_seq = Some(pos.max(tail));
    Ok(found)
}

/// The delivery id in a record's headers when the record was written by `sink`.
pub fn our_delivery_id(sink: &str, headers: &[(String, String)]) -> Option<DeliveryId> {
    let mut is_ours = false;
    let mut id = None;
    for (k, v) in headers {
        if k == HEADER_SINK {
            is_ours = v == sink;
        } else if k == HEADER_ID {
            id = DeliveryId::parse(v);
        }
    }
    if is_ours {
        id
    } else {
        None
    }
}

/// The queue message id (without epoch) in a record's headers when the record was written by
/// `sink`: what the ingest API returned for it. Unique within one data directory's history.
pub fn our_id(sink: &str, headers: &[(String, String)]) -> Option<u64> {
    our_delivery_id(sink, headers).map(|d| d.id.0)
}

async fn append_with_conflicts(
    ctx: &WriterCtx,
    state: &mut State,
    subs: &[Submission],
) -> Result<(), Failure> {
    let records: Vec<AppendRecord> = subs
        .iter()
        .flat_map(|s| s.run.records.iter().cloned())
        .collect();
    let dids: Vec<DeliveryId> = subs
        .iter()
        .flat_map(|s| s.run.ids.iter().copied())
        .collect();
    let ids: Vec<MessageId> = dids.iter().map(|d| d.id).collect();
    let mut round = 0;
    loop {
        let input = AppendInput {
            records: records.clone(),
            match_seq_num: state.next_seq,
            fencing_token: None,
        };
        let started = Instant::now();
        // One span per append: sink, stream, records, outcome (never payloads or tokens).
        let span = tracing::info_span!(
            "append",
            sink = %ctx.sink,
            stream = %ctx.route,
            records = ids.len(),
            outcome = tracing::field::Empty,
        );
        let res = ctx
            .io
            .append(&ctx.route.basin, &ctx.route.stream, &input)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &res {
                Ok(_) => "ok",
                Err(e) => e.class().as_str(),
            },
        );
        match res {
            Ok(ack) => {
                tracing::debug!(parent: &span, start = ack.start.seq_num, end = ack.end.seq_num, "appended");
                state.next_seq = Some(ack.end.seq_num);
                ctx.stats
                    .append_latency_ms
                    .observe(started.elapsed().as_millis() as u64);
                ctx.stats.batch_size.observe(ids.len() as u64);
                ctx.stats
                    .appends
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = ctx.queue.ack(&ctx.sink, &ids) {
                    return Err(queue_failure(ctx, &e));
                }
                ctx.stats
                    .delivered
                    .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if state.last_persist.elapsed() >= MARKER_INTERVAL {
                    // Acks above are written before the marker and flushed with it, so the
                    // durable mark never passes a message that would come back as pending
                    // after a crash. The flush runs beside the next appends instead of
                    // stalling them; a lower mark in memory meanwhile is always safe.
                    state.marker = Some(ack.end.seq_num);
                    state.last_persist = Instant::now();
                    let (queue, key, on_fatal) = (
                        ctx.queue.clone(),
                        marker_key(&ctx.sink, &ctx.route),
                        ctx.on_fatal.clone(),
                    );
                    let at = ack.end.seq_num;
                    actix_rt::spawn(async move {
                        if let Err(e) = queue.put_marker(&key, &at.to_be_bytes()).await {
                            on_fatal(&e);
                        }
                    });
                }
                return Ok(());
            }
            Err(e) => {
                ctx.stats.count_failure(e.class(), e.status());
                let conflict = matches!(e, S2Error::SeqNumMismatch { .. });
                if e.may_have_applied() || conflict {
                    state.needs_reconcile = true;
                    state.next_seq = None;
                }
                tracing::warn!(
                    parent: &span,
                    sink = %ctx.sink, stream = %ctx.route, records = ids.len(),
                    class = e.class().as_str(), status = ?e.status(), error = %e,
                    "append failed"
                );
                if conflict && round < MAX_CONFLICT_ROUNDS {
                    round += 1;
                    let found = reconcile(ctx, state).await?;
                    // Anything the reconciliation found is delivered; send only the rest.
                    if dids.iter().all(|id| found.contains(id)) {
                        return Ok(());
                    }
                    if dids.iter().any(|id| found.contains(id)) {
                        // Part of the batch is in S2: let the groups resubmit what is left.
                        return Err(Failure::from_s2(&e));
                    }
                    continue;
                }
                return Err(Failure::from_s2(&e));
            }
        }
    }
}
