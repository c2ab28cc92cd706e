//! A sink's state: the thread-safe part shared with ingest, the API and every engine thread
//! (`SinkShared`: settings, the S2 connection, the stream writers), and the part one engine
//! thread keeps for the groups of its shard (`SinkLocal`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, Release},
};
use std::sync::{Arc, Mutex, RwLock};

use s2sink_client::{S2Client, S2Error};
use s2sink_core::Route;
use s2sink_core::{ErrorClass, LastError};
use s2sink_queue::{MessageId, Queue, QueueError, StoredMessage};
use s2sink_transform::Functions;

use super::dead_letter::{self, DeadLetterError, DeadLetters};
use super::io::StreamIo;
use super::scan;
use super::settings::SinkSettings;
use super::stats::SinkStats;
use super::threads::Homes;
use super::writer::{
    spawn_writer, Failure, Run, RunError, RunResult, Start, WriterCtx, WriterGone, WriterHandle,
};
use super::{Clock, FatalHook};

/// Streams whose writers a restart starts and reconciles before resuming groups
/// ([`SinkLocal::prepare_marked_streams`]). A sink whose routing function wrote to more keeps
/// marks on all of them; the others are reconciled when a run first goes there, as always.
pub const MAX_PREPARED_AT_START: usize = 64;

/// The part of a sink that ingest handlers and the management API use from any thread.
pub struct SinkShared {
    pub name: String,
    pub queue: Queue,
    pub stats: Arc<SinkStats>,
    settings: RwLock<Arc<SinkSettings>>,
    functions: RwLock<Arc<Functions>>,
    stopping: Arc<AtomicBool>,
    /// The most recent failure (message id and error), for the sink's health view without
    /// scanning the queue.
    last_failure: Mutex<Option<(MessageId, LastError)>>,
    /// Bumped by every reload: writers of an older generation are replaced, with the new S2
    /// client (endpoint, token) and batch limits.
    generation: AtomicU64,
    /// The S2 connection delivery uses; a reload replaces it unless `fixed_io` (tests plug
    /// in their own).
    io: RwLock<Arc<dyn StreamIo>>,
    fixed_io: bool,
    /// The live stream writers, one per stream: shared by the groups of every engine thread
    /// (one writer per stream keeps the `match_seq_num` chain).
    writers: Mutex<HashMap<Route, WriterHandle>>,
    dead_letters: DeadLetters,
}

impl SinkShared {
    pub(crate) fn new(
        settings: SinkSettings,
        functions: Functions,
        queue: Queue,
        stopping: Arc<AtomicBool>,
        io: Arc<dyn StreamIo>,
        fixed_io: bool,
    ) -> SinkShared {
        SinkShared {
            name: settings.name.clone(),
            queue,
            stats: Arc::new(SinkStats::new()),
            settings: RwLock::new(Arc::new(settings)),
            functions: RwLock::new(Arc::new(functions)),
            stopping,
            last_failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            io: RwLock::new(io),
            fixed_io,
            writers: Mutex::new(HashMap::new()),
            dead_letters: DeadLetters::default(),
        }
    }

    /// Current settings (a snapshot; reloads swap it).
    pub fn settings(&self) -> Arc<SinkSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Current compiled functions (a snapshot; reloads swap it).
    pub fn functions(&self) -> Arc<Functions> {
        self.functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces settings, functions and the S2 client; later runs use them, and stream
    /// writers are replaced at their next run (so a rotated token takes effect on reload).
    pub(crate) fn replace(&self, settings: SinkSettings, functions: Functions, client: S2Client) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        *self.functions.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(functions);
        if !self.fixed_io {
            *self.io.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(client);
        }
        self.generation.fetch_add(1, Relaxed);
    }

    /// The S2 connection delivery uses now (a reload replaces it).
    pub fn io(&self) -> Arc<dyn StreamIo> {
        self.io.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Live stream writers (a gauge, and for tests of idle writers ending).
    pub fn live_writers(&self) -> usize {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|w| !w.is_closed())
            .count()
    }

    /// The most recent failed attempt of any message of this sink.
    pub fn last_failure(&self) -> Option<(MessageId, LastError)> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once shutdown began: no new runs start.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }
}

/// The part of a sink one engine thread keeps for the groups of its shard.
pub struct SinkLocal {
    pub shared: Arc<SinkShared>,
    pub clock: Clock,
    pub on_fatal: FatalHook,
    /// Concurrent function evaluations on the blocking pool (shared by every sink).
    pub function_slots: Arc<tokio::sync::Semaphore>,
    /// Messages that may be in a stream other than where they go next: an append of theirs
    /// had an unknown outcome there and no read-back of that stream has settled it yet.
    /// `None` = not known which (after a restart): every stream with a mark of this sink.
    uncertain: RefCell<HashMap<MessageId, Option<Route>>>,
    limits: EngineLimits,
    /// Where stream writers run.
    homes: Homes,
}

impl SinkLocal {
    /// The engine-wide budget of payload bytes group actors hold.
    pub fn held_budget(&self) -> &super::ByteBudget {
        &self.limits.held
    }
}

/// What every stream writer of the engine shares: how long an idle one lives, and the
/// engine-wide byte budgets.
#[derive(Clone)]
pub(crate) struct EngineLimits {
    /// `EngineOptions::writer_idle`.
    pub idle: std::time::Duration,
    /// JSON bytes of appends in flight (`EngineOptions::max_in_flight_bytes`).
    pub in_flight: super::ByteBudget,
    /// Payload bytes group actors hold (`EngineOptions::max_held_bytes`).
    pub held: super::ByteBudget,
}

impl SinkLocal {
    pub(crate) fn new(
        shared: Arc<SinkShared>,
        clock: Clock,
        on_fatal: FatalHook,
        function_slots: Arc<tokio::sync::Semaphore>,
        limits: EngineLimits,
        homes: Homes,
    ) -> SinkLocal {
        SinkLocal {
            shared,
            clock,
            on_fatal,
            function_slots,
            uncertain: RefCell::new(HashMap::new()),
            limits,
            homes,
        }
    }

    /// The S2 connection delivery uses now (a reload replaces it).
    pub fn io(&self) -> Arc<dyn StreamIo> {
        self.shared.io()
    }

    /// The writer of a stream: started on first use (on the engine thread the stream hashes
    /// to), and again when the previous one ended (idle) or belongs to settings replaced by a
    /// reload.
    pub fn writer(&self, route: &Route, settings: &SinkSettings) -> WriterHandle {
        self.writer_started(route, settings, Start::OnDemand)
    }

    /// After a restart: starts the writer of every stream this sink has a low-water mark on
    /// ([`MAX_PREPARED_AT_START`] at most), each reconciling at once, and returns their
    /// handles to wait on ([`WriterHandle::prepared`]). A stream whose writer runs already is
    /// left as it is.
    pub fn prepare_marked_streams(&self) -> Vec<WriterHandle> {
        let marks = match scan::marked_routes(&self.shared.queue, &self.shared.name) {
            Ok(m) => m,
            Err(e) => {
                (self.on_fatal)(&e);
                return Vec::new();
            }
        };
        let settings = self.shared.settings();
        marks
            .into_iter()
            .take(MAX_PREPARED_AT_START)
            .map(|(route, _)| self.writer_started(&route, &settings, Start::PrepareFirst))
            .collect()
    }

    fn writer_started(&self, route: &Route, settings: &SinkSettings, start: Start) -> WriterHandle {
        let generation = self.shared.generation.load(Relaxed);
        let mut writers = self
            .shared
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get(route) {
            if !w.is_closed() && w.generation == generation {
                return w.clone();
            }
        }
        // Forget ended writers of other streams too: the map stays as small as the tasks.
        writers.retain(|_, w| !w.is_closed());
        let home = self.homes.shard_of(&(&self.shared.name, route));
        let ctx = WriterCtx {
            sink: self.shared.name.clone(),
            route: route.clone(),
            io: self.io(),
            queue: self.shared.queue.clone(),
            stats: self.shared.stats.clone(),
            limits: settings.batch.limits,
            linger: settings.batch.linger,
            linger_when_idle: settings.batch.linger_when_idle,
            clock: self.clock,
            on_fatal: self.on_fatal.clone(),
            generation,
            idle: self.limits.idle,
            max_in_flight: settings
                .batch
                .max_appends_in_flight
                .clamp(1, super::settings::MAX_APPENDS_IN_FLIGHT),
            budget: self.limits.in_flight.clone(),
        };
        let w = spawn_writer(ctx, start, |f| self.homes.run_on(home, f));
        writers.insert(route.clone(), w.clone());
        w
    }

    /// Sends a run to its stream's writer, starting a new writer if the one it had ended.
    pub async fn submit(&self, route: &Route, settings: &SinkSettings, run: Run) -> RunResult {
        let mut run = run;
        loop {
            match self.writer(route, settings).submit(run).await {
                Ok(result) => return result,
                // The engine is going away (its threads stop): not a delivery failure.
                Err(WriterGone(_)) if self.shared.is_stopping() => return Err(RunError::Requeued),
                Err(WriterGone(back)) => run = back,
            }
        }
    }

    /// Records a failed attempt on `msg`: backoff (returns when it ends), or, after
    /// `max_retry_count` attempts, dead-letter and discard (returns `None`: the group goes on).
    /// `route` is where the message was going, when known. `Err` = queue failure.
    pub async fn fail_message(
        &self,
        settings: &SinkSettings,
        msg: &StoredMessage,
        failure: Failure,
        route: Option<&Route>,
    ) -> Result<Option<u64>, ()> {
        let shared = &self.shared;
        let attempts = msg.state.deliver_count + 1;
        log_failure(&shared.name, msg, &failure, attempts);
        if let (ErrorClass::OutcomeUnknown, Some(route)) = (failure.error.class, route) {
            self.uncertain
                .borrow_mut()
                .insert(msg.id, Some(route.clone()));
        }
        *shared
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((msg.id, failure.error.clone()));
        let now = self.clock.now_millis();
        // A message whose append may have landed is never discarded: the writer reconciles
        // after such a failure, so this class remains only while the stream cannot be read.
        let exhausted = settings.max_retry_count.is_some_and(|max| attempts >= max)
            && failure.error.class != ErrorClass::OutcomeUnknown;
        let until = if exhausted {
            now
        } else {
            now + settings
                .backoff
                .delay(attempts, failure.retry_after)
                .as_millis() as u64
        };
        match shared
            .queue
            .fail(&shared.name, msg.id, failure.error.clone(), until)
        {
            Ok(_) => {}
            // A reconciliation found it in S2 and acked it meanwhile: the group goes on.
            Err(QueueError::NotFound { .. }) => return Ok(None),
            Err(e) => {
                (self.on_fatal)(&e);
                return Err(());
            }
        }
        if !exhausted {
            return Ok(Some(until));
        }
        // The used-up attempt is on disk before the dead-letter append: after a crash the
        // message goes (back) to the dead-letter step, never to its stream again.
        if let Err(e) = shared.queue.flush().await {
            (self.on_fatal)(&e);
            return Err(());
        }
        let mut msg = msg.clone();
        msg.state.deliver_count = attempts;
        self.dead_letter_and_discard(settings, &msg, &failure.error, route)
            .await
    }

    /// Before `msg` goes to `planned`: when an append of it had an unknown outcome in another
    /// stream (the one it went to; after a restart, any stream with a mark of this sink), that
    /// stream is read back from its mark first and what is found there is acked. So a route
    /// change (reload) while an outcome is unknown never lands a second copy elsewhere. The
    /// planned stream needs nothing here: its writer reconciles before it appends; the record
    /// stays until the message is delivered or that stream was read back.
    ///
    /// Returns whether anything was acked: runs read before are then stale (re-read them).
    pub async fn check_uncertain(
        &self,
        msg: &StoredMessage,
        planned: &Route,
    ) -> Result<bool, Failure> {
        let persisted = msg
            .state
            .last_error
            .as_ref()
            .is_some_and(|e| e.class == ErrorClass::OutcomeUnknown);
        let entry = {
            let mut u = self.uncertain.borrow_mut();
            match u.get(&msg.id) {
                Some(e) => e.clone(),
                None if persisted => {
                    u.insert(msg.id, None);
                    None
                }
                None => return Ok(false),
            }
        };
        let sink = &self.shared.name;
        let queue = &self.shared.queue;
        let marks: Vec<(Route, Vec<u8>)> = match &entry {
            Some(r) if r == planned => return Ok(false),
            Some(r) => match queue.get_marker(&scan::lwm_key(sink, r)) {
                Ok(Some(m)) => vec![(r.clone(), m)],
                Ok(None) => Vec::new(), // this sink never appended there
                Err(e) => return Err(self.queue_failure(&e)),
            },
            None => scan::marked_routes(queue, sink).map_err(|e| self.queue_failure(&e))?,
        };
        let io = self.io();
        let s2 = |e: S2Error| Failure {
            error: e.to_last_error(),
            retry_after: e.retry_after(),
        };
        let mut planned_has_mark = false;
        let mut acked = false;
        for (route, mark) in &marks {
            if route == planned {
                planned_has_mark = true;
                continue;
            }
            // A corrupt mark: that stream's writer refuses it and reports it.
            let Some(mark) = scan::decode_mark(mark) else {
                continue;
            };
            let tail = scan::tail_or_zero(&*io, route).await.map_err(s2)?;
            // A tail below the mark: reset, nothing of ours is left there.
            let from = mark.min(tail);
            let (found, _) = scan::ours_between(&*io, sink, route, from, tail)
                .await
                .map_err(s2)?;
            if !found.is_empty() {
                queue
                    .ack_delivered(sink, &found)
                    .map_err(|e| self.queue_failure(&e))?;
                // As after a writer's reconciliation: runs read before are checked against
                // the queue before they are sent.
                self.shared.stats.reconciles.fetch_add(1, Release);
                acked = true;
            }
            tracing::info!(sink = %sink, id = %msg.id, stream = %route, found = found.len(), "re-read a stream where an append's outcome was unknown before sending elsewhere");
        }
        let mut u = self.uncertain.borrow_mut();
        if planned_has_mark {
            u.insert(msg.id, Some(planned.clone()));
        } else {
            u.remove(&msg.id);
        }
        Ok(acked)
    }

    /// A message was delivered: nothing of it is uncertain any more.
    pub fn delivered(&self, id: MessageId) {
        self.uncertain.borrow_mut().remove(&id);
    }

    fn queue_failure(&self, e: &QueueError) -> Failure {
        (self.on_fatal)(e);
        Failure {
            error: LastError {
                class: ErrorClass::Retryable,
                status: None,
                code: Some("queue".into()),
                message: e.to_string(),
                body: None,
                at_ms: self.clock.now_millis(),
            },
            retry_after: None,
        }
    }

    /// Whether `msg` already used up its attempts (its last failure was certain): it goes to
    /// the dead-letter step instead of its stream. True after a crash between recording the
    /// last attempt and the discard, while a dead-letter append keeps failing, or when a
    /// reload lowered `max_retry_count`.
    pub fn used_up(settings: &SinkSettings, msg: &StoredMessage) -> Option<LastError> {
        let max = settings.max_retry_count?;
        let e = msg.state.last_error.as_ref()?;
        (msg.state.deliver_count >= max && e.class != ErrorClass::OutcomeUnknown).then(|| e.clone())
    }

    /// Dead-letters `msg` exactly once (see `dead_letter`), when a dead-letter stream is
    /// configured, then discards it. When the dead-letter append fails the message backs off
    /// and the step is retried (`Ok(Some(until))`); the message keeps `error` as its last
    /// error, the sink's last failure shows the dead-letter one.
    pub async fn dead_letter_and_discard(
        &self,
        settings: &SinkSettings,
        msg: &StoredMessage,
        error: &LastError,
        route: Option<&Route>,
    ) -> Result<Option<u64>, ()> {
        let shared = &self.shared;
        let dlq = settings.dead_letter_stream.as_ref().and_then(|stream| {
            let basin = &route.or(settings.route.as_ref())?.basin;
            Route::new(basin.clone(), stream.clone()).ok()
        });
        // Held through the discard: the stream's mark must not pass this record before.
        let lock = dlq.as_ref().map(|d| self.shared.dead_letters.lock(d));
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        if let Some(dlq) = &dlq {
            let rec = dead_letter::record(&shared.name, msg, error, &settings.batch.limits);
            let io = self.io();
            match dead_letter::append_once(&*io, &shared.queue, &shared.name, dlq, msg, rec).await {
                Ok(()) => {}
                Err(DeadLetterError::Queue(e)) => {
                    (self.on_fatal)(&e);
                    return Err(());
                }
                Err(e) => {
                    let now = self.clock.now_millis();
                    tracing::warn!(sink = %shared.name, id = %msg.id, stream = %dlq, error = %e, "dead-letter append failed; the message backs off and tries again");
                    let retry_after = match &e {
                        DeadLetterError::S2(s2) => s2.retry_after(),
                        _ => None,
                    };
                    let mut last = match &e {
                        DeadLetterError::S2(s2) => s2.to_last_error(),
                        _ => LastError {
                            class: ErrorClass::NeedsAttention,
                            status: None,
                            code: Some("dead_letter".into()),
                            message: e.to_string(),
                            body: None,
                            at_ms: now,
                        },
                    };
                    last.message = format!("dead-letter stream {dlq}: {}", last.message);
                    *shared
                        .last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some((msg.id, last));
                    let until = now
                        + settings
                            .backoff
                            .delay(msg.state.deliver_count.max(1), retry_after)
                            .as_millis() as u64;
                    return match shared
                        .queue
                        .fail(&shared.name, msg.id, error.clone(), until)
                    {
                        Ok(_) => Ok(Some(until)),
                        Err(QueueError::NotFound { .. }) => Ok(None),
                        Err(e) => {
                            (self.on_fatal)(&e);
                            Err(())
                        }
                    };
                }
            }
        } else if settings.dead_letter_stream.is_some() {
            tracing::warn!(sink = %shared.name, id = %msg.id, "no basin for the dead-letter stream (the routing function failed and the sink has no static route): discarded without a dead-letter record");
        }
        match shared.queue.discard(&shared.name, msg.id).await {
            Ok(_) | Err(QueueError::NotFound { .. }) => {
                shared.stats.discarded.fetch_add(1, Relaxed);
                tracing::warn!(sink = %shared.name, id = %msg.id, attempts = msg.state.deliver_count, "message discarded after max_retry_count attempts");
                Ok(None)
            }
            Err(e) => {
                (self.on_fatal)(&e);
                Err(())
            }
        }
    }
}

/// Log line for a failed message, without payload (it may hold personal data).
fn log_failure(sink: &str, msg: &StoredMessage, f: &Failure, attempts: u32) {
    tracing::warn!(
        sink, id = %msg.id, attempts, class = f.error.class.as_str(),
        status = ?f.error.status, code = ?f.error.code, error = %f.error.message,
        "delivery failed"
    );
}
