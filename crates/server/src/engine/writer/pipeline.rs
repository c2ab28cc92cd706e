//! The writer task: collects runs into appends and keeps up to `max_in_flight` of them in
//! flight, chained by `match_seq_num`, applying their outcomes strictly in append order.
//!
//! Append k+1 is sent with `match_seq_num` = the tail append k leaves (k's start plus its
//! record count), so S2 takes k+1 only right behind k: if k did not land, k+1 cannot land
//! either (412). Outcomes are applied in send order (the oldest in flight first), so the
//! durable low-water mark only moves to the end of an append whose predecessors all
//! succeeded — it stays at or below the start of every append whose outcome is unknown.
//!
//! The first failure stops sending. The writer waits for every append still in flight, acks
//! the later ones S2 took anyway, and — after an outcome-unknown failure, a 412, or whenever
//! later appends were in flight — reconciles (reads the stream from the mark and acks what it
//! finds). The failed append's runs are then handled as with one append in flight (412:
//! appended again at once, uncharged; outcome unknown: what is proven absent fails as
//! retryable; any other error fails its runs, 422 split per run). The runs of the later
//! appends failed only because of the chain: they go back to their groups uncharged
//! ([`RunError::Requeued`]) and are read from the queue again.
//!
//! Each append runs as its own local task holding its share of the engine-wide in-flight byte
//! budget, so a writer waiting for budget never stalls appends already sent (its own or other
//! writers').

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;

use s2sink_client::{AppendAck, AppendInput, AppendRecord, S2Error, BATCH_JSON_OVERHEAD};
use s2sink_core::ErrorClass;
use s2sink_queue::{DeliveryId, MessageId};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::Instrument;

use super::append::{append_with_conflicts, persist_mark_behind};
use super::stream::{prepare, queue_failure, reconcile, State};
use super::{Failure, RunError, Submission, WriterCtx, MARKER_INTERVAL};

/// One append sent and not yet applied.
struct InFlight {
    /// Its runs; their records were moved into `input` (see [`InFlight::take_subs`]).
    subs: Vec<Submission>,
    /// The append as sent, shared with its task: the records are not copied per append.
    input: Arc<AppendInput>,
    dids: Vec<DeliveryId>,
    /// The `match_seq_num` it was sent with: where it lands if it lands.
    start: u64,
    /// Whether an earlier append was still in flight when this one was sent (a 412 on it may
    /// then be a reordering on the wire, counted in `pipeline_reorders`).
    sent_behind: bool,
    started: Instant,
    handle: JoinHandle<Result<AppendAck, S2Error>>,
}

impl InFlight {
    /// Its runs with their records back (copied from the append; only after a failure, when
    /// they may be sent again).
    fn take_subs(self) -> Vec<Submission> {
        let mut records = self.input.records.iter();
        let mut subs = self.subs;
        for s in &mut subs {
            s.run.records = records.by_ref().take(s.run.ids.len()).cloned().collect();
        }
        debug_assert!(records.next().is_none(), "one record per id");
        subs
    }
}

/// Why an append in flight did not succeed.
enum AppendErr {
    S2(S2Error),
    /// The append task died (a bug): the request may have been sent.
    Lost(String),
}

impl AppendErr {
    fn from_join(r: Result<Result<AppendAck, S2Error>, JoinError>) -> Result<AppendAck, AppendErr> {
        match r {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => Err(AppendErr::S2(e)),
            Err(e) => Err(AppendErr::Lost(e.to_string())),
        }
    }

    fn conflict(&self) -> bool {
        matches!(self, AppendErr::S2(S2Error::SeqNumMismatch { .. }))
    }

    fn uncertain(&self) -> bool {
        match self {
            AppendErr::S2(e) => e.may_have_applied(),
            AppendErr::Lost(_) => true,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            AppendErr::S2(e) => e.status(),
            AppendErr::Lost(_) => None,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            AppendErr::S2(e) => e.class(),
            AppendErr::Lost(_) => ErrorClass::OutcomeUnknown,
        }
    }

    fn failure(&self, ctx: &WriterCtx) -> Failure {
        match self {
            AppendErr::S2(e) => Failure::from_s2(e),
            AppendErr::Lost(why) => {
                let mut f = Failure::local(
                    "append_task",
                    format!("the append task ended without an answer: {why}"),
                    ctx.clock.now_millis(),
                );
                f.error.class = ErrorClass::OutcomeUnknown;
                f
            }
        }
    }

    fn message(&self) -> String {
        match self {
            AppendErr::S2(e) => e.to_string(),
            AppendErr::Lost(why) => why.clone(),
        }
    }
}

/// Runs collected for the next append.
#[derive(Default)]
struct Batch {
    subs: Vec<Submission>,
    records: usize,
    metered: u64,
    json: usize,
    /// When a partial batch is sent anyway (first run's arrival + linger).
    deadline: Option<Instant>,
}

impl Batch {
    fn fits(&self, ctx: &WriterCtx, s: &Submission) -> bool {
        self.records + s.run.records.len() <= ctx.limits.max_records
            && self.metered + s.run.metered <= ctx.limits.max_metered_bytes
            && self.json + s.run.json_bytes + BATCH_JSON_OVERHEAD <= ctx.limits.max_json_bytes
    }

    fn push(&mut self, ctx: &WriterCtx, s: Submission) {
        if self.subs.is_empty() {
            self.deadline = Some(Instant::now() + ctx.linger);
        }
        self.records += s.run.records.len();
        self.metered += s.run.metered;
        self.json += s.run.json_bytes;
        self.subs.push(s);
    }
}

struct Writer<'a> {
    ctx: &'a WriterCtx,
    state: State,
    inflight: VecDeque<InFlight>,
    batch: Batch,
    /// Received runs that are not in `batch` yet (the first did not fit).
    waiting: VecDeque<Submission>,
}

enum Event {
    Done(Result<Result<AppendAck, S2Error>, JoinError>),
    Got(Option<Submission>),
    Linger,
    Idle,
}

/// The writer task.
///
/// `prepared`: set for a writer started with [`Start::PrepareFirst`](super::Start): the
/// stream is prepared before anything else and the sender told (whatever the outcome: a
/// failure is retried before the first append, as for any writer).
pub(super) async fn writer_loop(
    ctx: WriterCtx,
    mut rx: mpsc::Receiver<Submission>,
    prepared: Option<tokio::sync::watch::Sender<bool>>,
) {
    tracing::debug!(sink = %ctx.sink, stream = %ctx.route, "writer started");
    let mut w = Writer {
        ctx: &ctx,
        state: State::new(),
        inflight: VecDeque::new(),
        batch: Batch::default(),
        waiting: VecDeque::new(),
    };
    if let Some(done) = prepared {
        // Not counted as a delivery failure: no run was in it.
        if let Err(f) = prepare(&ctx, &mut w.state).await {
            tracing::warn!(
                sink = %ctx.sink, stream = %ctx.route, class = f.error.class.as_str(),
                error = %f.error.message,
                "could not prepare the stream at start (tail / reconcile); trying again before the first append"
            );
        }
        let _ = done.send(true);
    }
    let mut closing = false;
    loop {
        // Take every run already waiting in the channel before deciding, so an idle pipeline
        // sends them together rather than the first alone.
        while !closing && w.waiting.is_empty() && w.batch.records < ctx.limits.max_records {
            match rx.try_recv() {
                Ok(s) => {
                    w.waiting.push_back(s);
                    w.fill();
                }
                Err(_) => break,
            }
        }
        w.fill();
        while w.can_send() && w.batch_ready(closing) {
            let batch = std::mem::take(&mut w.batch);
            w.send(batch.subs).await;
            w.fill();
        }
        if closing && w.is_idle() {
            return;
        }
        let can_recv = !closing && w.waiting.is_empty() && w.batch.records < ctx.limits.max_records;
        let linger = match w.batch.deadline {
            Some(d) if w.can_send() => Some(d),
            _ => None,
        };
        let idle = w.is_idle();
        let ev = {
            let front = async {
                match w.inflight.front_mut() {
                    Some(f) => (&mut f.handle).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = front => Event::Done(r),
                s = rx.recv(), if can_recv => Event::Got(s),
                _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => Event::Linger,
                _ = tokio::time::sleep(ctx.idle), if idle => Event::Idle,
            }
        };
        match ev {
            Event::Done(r) => {
                let f = w.inflight.pop_front().expect("a completion has its append");
                w.complete(f, AppendErr::from_join(r)).await;
            }
            Event::Got(Some(s)) => w.waiting.push_back(s),
            Event::Got(None) => closing = true,
            // The loop head sends the batch (its deadline passed).
            Event::Linger => {}
            Event::Idle => {
                // Refuse new runs (they come back to their sender), finish those queued, end.
                rx.close();
                while let Ok(s) = rx.try_recv() {
                    w.waiting.push_back(s);
                }
                closing = true;
            }
        }
    }
}

impl Writer<'_> {
    /// Moves received runs into the batch while they fit.
    fn fill(&mut self) {
        while let Some(s) = self.waiting.front() {
            if !self.batch.subs.is_empty() && !self.batch.fits(self.ctx, s) {
                break;
            }
            let s = self.waiting.pop_front().expect("front exists");
            self.batch.push(self.ctx, s);
        }
    }

    fn is_idle(&self) -> bool {
        self.batch.subs.is_empty() && self.waiting.is_empty() && self.inflight.is_empty()
    }

    /// Whether another append may be sent now: below the in-flight limit, and — while appends
    /// are in flight — only when the chain's tail is known.
    fn can_send(&self) -> bool {
        self.inflight.is_empty()
            || (self.inflight.len() < self.ctx.max_in_flight
                && self.state.next_seq.is_some()
                && !self.state.needs_reconcile)
    }

    /// A batch goes out when full, when the next run does not fit, when its linger ended,
    /// when the writer is closing, or at once when no append is in flight (unless
    /// `linger_when_idle`): lingering only pays while an append is on the wire anyway (as
    /// Nagle's algorithm does), so a quiet stream's message goes out without waiting and a
    /// busy one still sends full appends.
    fn batch_ready(&self, closing: bool) -> bool {
        if self.batch.subs.is_empty() {
            return false;
        }
        closing
            || (self.inflight.is_empty() && !self.ctx.linger_when_idle)
            || !self.waiting.is_empty()
            || self.batch.records >= self.ctx.limits.max_records
            || self.batch.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sends one append of `subs` (after dropping ids no longer queued) as a local task.
    async fn send(&mut self, subs: Vec<Submission>) {
        let ctx = self.ctx;
        if self.inflight.is_empty() {
            if let Err(f) = prepare(ctx, &mut self.state).await {
                ctx.stats.count_failure(f.error.class, f.error.status);
                tracing::warn!(
                    sink = %ctx.sink, stream = %ctx.route, class = f.error.class.as_str(),
                    status = ?f.error.status, error = %f.error.message,
                    "append failed: could not prepare the stream (tail / reconcile)"
                );
                for s in subs {
                    reject(s, RunError::Failed(f.clone()));
                }
                return;
            }
        }
        let (subs, broken): (Vec<_>, Vec<_>) = subs.into_iter().partition(|s| !chain_broken(s));
        for s in broken {
            requeue(ctx, s);
        }
        let subs = drop_stale(ctx, subs);
        if subs.is_empty() {
            return;
        }
        let start = self
            .state
            .next_seq
            .expect("prepare leaves the tail known; appends in flight keep it known");
        // Moved, not copied: only a failed append gives them back to its runs (`take_subs`).
        let mut subs = subs;
        let records: Vec<AppendRecord> = subs
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.run.records))
            .collect();
        let dids: Vec<DeliveryId> = subs
            .iter()
            .flat_map(|s| s.run.ids.iter().copied())
            .collect();
        let json: usize =
            subs.iter().map(|s| s.run.json_bytes).sum::<usize>() + BATCH_JSON_OVERHEAD;
        // One append never needs more than the whole budget (`ByteBudget::take`).
        let permit = ctx.budget.take(json).await;
        let n = records.len() as u64;
        let input = Arc::new(AppendInput {
            records,
            match_seq_num: Some(start),
            fencing_token: None,
        });
        // One span per append: sink, stream, records, outcome (never payloads or tokens).
        let span = tracing::info_span!(
            "append",
            sink = %ctx.sink,
            stream = %ctx.route,
            records = n,
            start,
        );
        // Queued on the stream's session here, in send order (not when the task first runs).
        let answer = span.in_scope(|| {
            ctx.io.clone().append_ordered(
                ctx.route.basin.clone(),
                ctx.route.stream.clone(),
                input.clone(),
            )
        });
        let handle = actix_rt::spawn(
            async move {
                let r = answer.await;
                drop(permit);
                r
            }
            .instrument(span),
        );
        self.state.next_seq = Some(start + n);
        let sent_behind = !self.inflight.is_empty();
        self.inflight.push_back(InFlight {
            subs,
            input,
            dids,
            start,
            sent_behind,
            started: Instant::now(),
            handle,
        });
        ctx.stats
            .max_appends_in_flight
            .fetch_max(self.inflight.len() as u64, Relaxed);
    }

    /// Applies the outcome of the oldest append in flight.
    async fn complete(&mut self, f: InFlight, r: Result<AppendAck, AppendErr>) {
        match r {
            Ok(ack) => self.apply_ack(f, ack, true),
            Err(e) => self.recover(f, e).await,
        }
    }

    /// Acks an append S2 took. `may_move_mark`: every earlier append succeeded, so the mark
    /// may follow (never while an earlier append's outcome is unknown).
    fn apply_ack(&mut self, f: InFlight, ack: AppendAck, may_move_mark: bool) {
        let ctx = self.ctx;
        tracing::debug!(sink = %ctx.sink, stream = %ctx.route, start = ack.start.seq_num, end = ack.end.seq_num, "appended");
        if ack.start.seq_num != f.start {
            // match_seq_num makes this impossible; say so loudly if S2 ever disagrees.
            tracing::error!(sink = %ctx.sink, stream = %ctx.route, expected = f.start, got = ack.start.seq_num, "append landed at an unexpected position");
        }
        ctx.stats
            .append_latency_ms
            .observe(f.started.elapsed().as_millis() as u64);
        ctx.stats.batch_size.observe(f.dids.len() as u64);
        ctx.stats.appends.fetch_add(1, Relaxed);
        let bytes = f.subs.iter().map(|s| s.run.metered).sum();
        ctx.stats
            .count_append(&ctx.route, f.dids.len() as u64, bytes);
        let ids: Vec<MessageId> = f.dids.iter().map(|d| d.id).collect();
        if let Err(e) = ctx.queue.ack(&ctx.sink, &ids) {
            let failure = queue_failure(ctx, &e);
            for s in f.subs {
                reject(s, RunError::Failed(failure.clone()));
            }
            return;
        }
        ctx.stats.delivered.fetch_add(ids.len() as u64, Relaxed);
        if may_move_mark && self.state.last_persist.elapsed() >= MARKER_INTERVAL {
            // The appends still in flight start at or after `ack.end`.
            persist_mark_behind(ctx, &mut self.state, ack.end.seq_num);
        }
        for s in f.subs {
            let _ = s.reply.send(Ok(()));
        }
    }

    /// The oldest append in flight failed: drain the pipeline, reconcile, put runs back.
    async fn recover(&mut self, first: InFlight, e: AppendErr) {
        let ctx = self.ctx;
        // A 412 on an append sent behind others, all of which succeeded: most likely the two
        // overtook each other on the wire (separate connections), not another writer.
        let reorder = e.conflict() && first.sent_behind;
        if reorder {
            ctx.stats.pipeline_reorders.fetch_add(1, Relaxed);
            tracing::debug!(
                sink = %ctx.sink, stream = %ctx.route, start = first.start,
                "pipelined append overtook the one before it (412); sending it again"
            );
        } else {
            ctx.stats.count_failure(e.class(), e.status());
            tracing::warn!(
                sink = %ctx.sink, stream = %ctx.route, records = first.dids.len(),
                class = e.class().as_str(), status = ?e.status(), error = %e.message(),
                in_flight_behind = self.inflight.len(), "append failed"
            );
        }
        // Wait for every later append; apply them in order. Their fate is tied to `first`
        // by match_seq_num: one that S2 took landed right behind a landed `first`.
        let mut victims = Vec::new();
        let mut later_ok = false;
        let mut later_uncertain = false;
        while let Some(mut f) = self.inflight.pop_front() {
            let r = AppendErr::from_join((&mut f.handle).await);
            match r {
                Ok(ack) => {
                    later_ok = true;
                    self.apply_ack(f, ack, false);
                }
                Err(e2) => {
                    if !e2.conflict() {
                        ctx.stats.count_failure(e2.class(), e2.status());
                    }
                    later_uncertain |= e2.uncertain();
                    victims.push((f, e2));
                }
            }
        }
        let had_later = later_ok || !victims.is_empty();
        let found = if reorder && !later_ok && !later_uncertain {
            // Nothing after `first` landed (412s and definite failures only) and `first` did
            // not land (412): the tail is still where `first` was to start, unless another
            // writer moved it — then the retry gets 412 again and reconciles.
            self.state.next_seq = Some(first.start);
            Some(Ok(HashSet::new()))
        } else if e.conflict() || e.uncertain() || had_later {
            self.state.needs_reconcile = true;
            self.state.next_seq = None;
            Some(reconcile(ctx, &mut self.state).await)
        } else {
            // Nothing else was in flight and `first` did not land: the tail is where it was.
            self.state.next_seq = Some(first.start);
            None
        };
        let unreadable = matches!(found, Some(Err(_)));
        for (f, e2) in victims {
            // Failed because an earlier append failed: back to the group's head, uncharged —
            // unless its own outcome is unknown and the stream could not be read.
            let reply = if e2.uncertain() && unreadable {
                RunError::Failed(e2.failure(ctx))
            } else {
                let n: usize = f.subs.iter().map(|s| s.run.ids.len()).sum();
                ctx.stats.requeued.fetch_add(n as u64, Relaxed);
                RunError::Requeued
            };
            for s in f.subs {
                reject(s, reply.clone());
            }
        }
        let subs = first.take_subs();
        match found {
            Some(Err(rf)) => {
                // Cannot read the stream: a conflict reports the read error; an uncertain
                // append stays outcome-unknown (never discarded while it may have landed).
                let f = if e.conflict() { rf } else { e.failure(ctx) };
                reply_all(subs, &f);
            }
            Some(Ok(found)) => {
                let rest = drop_found(subs, &found);
                if rest.is_empty() {
                    return;
                }
                if e.conflict() {
                    // The stream moved (a reordering on the wire, or another writer):
                    // append the rest again at once, uncharged (bounded rounds).
                    self.append_now(rest).await;
                } else if e.uncertain() {
                    // Proven not in the stream: an ordinary retryable failure from here on.
                    let mut f = e.failure(ctx);
                    f.error.class = ErrorClass::Retryable;
                    f.error.message =
                        format!("{} (reconciled: the append did not land)", f.error.message);
                    reply_all(rest, &f);
                } else {
                    self.fail_definite(rest, e.failure(ctx)).await;
                }
            }
            None => self.fail_definite(subs, e.failure(ctx)).await,
        }
    }

    /// Appends `subs` with nothing else in flight (conflict rounds, 422 split).
    async fn append_now(&mut self, subs: Vec<Submission>) {
        match append_with_conflicts(self.ctx, &mut self.state, &subs).await {
            Ok(()) => {
                for s in subs {
                    let _ = s.reply.send(Ok(()));
                }
            }
            Err(f) => self.fail_definite(subs, f).await,
        }
    }

    /// Fails `subs` with `f`; a 422 on several runs sends each run on its own first, so one
    /// poison record fails only its own group.
    async fn fail_definite(&mut self, subs: Vec<Submission>, f: Failure) {
        if subs.len() > 1 && f.error.status == Some(422) {
            for s in subs {
                if chain_broken(&s) {
                    requeue(self.ctx, s);
                    continue;
                }
                let single = vec![s];
                let r = append_with_conflicts(self.ctx, &mut self.state, &single).await;
                let s = single.into_iter().next().expect("one run");
                match r {
                    Ok(()) => {
                        let _ = s.reply.send(Ok(()));
                    }
                    Err(f) => reject(s, RunError::Failed(f)),
                }
            }
        } else {
            reply_all(subs, &f);
        }
    }
}

/// Answers a run that was not delivered and marks its group's chain broken, so a later run
/// of the group still waiting in this writer is not sent.
fn reject(s: Submission, e: RunError) {
    if let Some(chain) = &s.run.chain {
        chain.store(true, Ordering::Release);
    }
    let _ = s.reply.send(Err(e));
}

/// Whether an earlier run of the same group was not delivered.
fn chain_broken(s: &Submission) -> bool {
    s.run
        .chain
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Acquire))
}

/// Sends a run back to its group uncharged.
fn requeue(ctx: &WriterCtx, s: Submission) {
    ctx.stats
        .requeued
        .fetch_add(s.run.ids.len() as u64, Relaxed);
    reject(s, RunError::Requeued);
}

fn reply_all(subs: Vec<Submission>, f: &Failure) {
    for s in subs {
        reject(s, RunError::Failed(f.clone()));
    }
}

/// Removes ids a reconciliation found (and acked); runs left empty are delivered.
fn drop_found(subs: Vec<Submission>, found: &HashSet<DeliveryId>) -> Vec<Submission> {
    let mut rest = Vec::with_capacity(subs.len());
    for mut s in subs {
        let keep: Vec<bool> = s.run.ids.iter().map(|d| !found.contains(d)).collect();
        let mut k = keep.iter();
        s.run
            .records
            .retain(|_| *k.next().expect("one flag per record"));
        let mut k = keep.iter();
        s.run.ids.retain(|_| *k.next().expect("one flag per id"));
        if s.run.ids.is_empty() {
            let _ = s.reply.send(Ok(()));
        } else {
            rest.push(s);
        }
    }
    rest
}

/// The queue is the source of truth: a message no longer in it was delivered (found by a
/// reconciliation, or acked by an earlier append), acknowledged or discarded. Drops those
/// from the runs, so a stale resubmission can never land a second copy.
fn drop_stale(ctx: &WriterCtx, batch: Vec<Submission>) -> Vec<Submission> {
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
                reject(s, RunError::Failed(queue_failure(ctx, &e)));
                continue;
            }
        };
        let gone = present.iter().filter(|p| !**p).count();
        if gone > 0 {
            ctx.stats
                .deduplicated
                .fetch_add(gone as u64, Ordering::Relaxed);
            let mut keep = present.iter();
            s.run
                .records
                .retain(|_| *keep.next().expect("one flag per record"));
            let mut keep = present.iter();
            s.run.ids.retain(|_| *keep.next().expect("one flag per id"));
        }
        if s.run.ids.is_empty() {
            let _ = s.reply.send(Ok(()));
        } else {
            pending.push(s);
        }
    }
    pending
}
