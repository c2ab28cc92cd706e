//! A sink's state: the thread-safe part shared with ingest and the API (`SinkShared`), and
//! the engine-thread part (`SinkLocal`) holding the S2 connection and stream writers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use s2sink_client::{AppendInput, AppendRecord, S2Client};
use s2sink_core::Route;
use s2sink_core::{ErrorClass, LastError};
use s2sink_queue::{MessageId, Queue, QueueError, StoredMessage};
use s2sink_transform::Functions;

use super::io::StreamIo;
use super::settings::SinkSettings;
use super::stats::SinkStats;
use super::writer::{
    spawn_writer, Failure, Run, RunResult, WriterCtx, WriterGone, WriterHandle, HEADER_ID,
    HEADER_SINK,
};
use super::Clock;

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
    /// The S2 client built by the last reload, for the engine thread to pick up.
    reloaded_client: Mutex<Option<S2Client>>,
}

impl SinkShared {
    pub(crate) fn new(
        settings: SinkSettings,
        functions: Functions,
        queue: Queue,
        stopping: Arc<AtomicBool>,
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
            reloaded_client: Mutex::new(None),
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
        *self
            .reloaded_client
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(client);
        self.generation.fetch_add(1, Relaxed);
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

/// The engine-thread part of a sink.
pub struct SinkLocal {
    pub shared: Arc<SinkShared>,
    /// The S2 connection; replaced on reload unless `fixed_io` (tests plug in their own).
    io: RefCell<Rc<dyn StreamIo>>,
    fixed_io: bool,
    pub clock: Clock,
    pub on_fatal: Rc<dyn Fn(&QueueError)>,
    /// Concurrent function evaluations on the blocking pool (shared by every sink).
    pub function_slots: Arc<tokio::sync::Semaphore>,
    writers: RefCell<HashMap<Route, WriterHandle>>,
    /// The engine-wide in-flight append byte budget (KiB permits, shared by every sink).
    budget: Arc<tokio::sync::Semaphore>,
    budget_kib: u32,
}

impl SinkLocal {
    pub(crate) fn new(
        shared: Arc<SinkShared>,
        io: Rc<dyn StreamIo>,
        fixed_io: bool,
        clock: Clock,
        on_fatal: Rc<dyn Fn(&QueueError)>,
        function_slots: Arc<tokio::sync::Semaphore>,
        budget: (Arc<tokio::sync::Semaphore>, u32),
    ) -> SinkLocal {
        SinkLocal {
            shared,
            io: RefCell::new(io),
            fixed_io,
            clock,
            on_fatal,
            function_slots,
            writers: RefCell::new(HashMap::new()),
            budget: budget.0,
            budget_kib: budget.1,
        }
    }

    /// The S2 connection delivery uses now (picks up a reloaded client).
    pub fn io(&self) -> Rc<dyn StreamIo> {
        if !self.fixed_io {
            let new = self
                .shared
                .reloaded_client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(client) = new {
                *self.io.borrow_mut() = Rc::new(client);
            }
        }
        self.io.borrow().clone()
    }

    /// The writer of a stream: started on first use, and again when the previous one ended
    /// (idle) or belongs to settings replaced by a reload.
    pub fn writer(&self, route: &Route, settings: &SinkSettings) -> WriterHandle {
        let generation = self.shared.generation.load(Relaxed);
        let mut writers = self.writers.borrow_mut();
        if let Some(w) = writers.get(route) {
            if !w.is_closed() && w.generation == generation {
                return w.clone();
            }
        }
        // Forget ended writers of other streams too: the map stays as small as the tasks.
        writers.retain(|_, w| !w.is_closed());
        let w = spawn_writer(WriterCtx {
            sink: self.shared.name.clone(),
            route: route.clone(),
            io: self.io(),
            queue: self.shared.queue.clone(),
            stats: self.shared.stats.clone(),
            limits: settings.batch.limits,
            linger: settings.batch.linger,
            clock: self.clock,
            on_fatal: self.on_fatal.clone(),
            generation,
            max_in_flight: settings
                .batch
                .max_appends_in_flight
                .clamp(1, super::settings::MAX_APPENDS_IN_FLIGHT),
            budget: self.budget.clone(),
            budget_kib: self.budget_kib,
        });
        writers.insert(route.clone(), w.clone());
        w
    }

    /// Live stream writers (a gauge, and for tests of idle writers ending).
    pub fn live_writers(&self) -> usize {
        self.writers
            .borrow()
            .values()
            .filter(|w| !w.is_closed())
            .count()
    }

    /// Sends a run to its stream's writer, starting a new writer if the one it had ended.
    pub async fn submit(&self, route: &Route, settings: &SinkSettings, run: Run) -> RunResult {
        let mut run = run;
        loop {
            match self.writer(route, settings).submit(run).await {
                Ok(result) => return result,
                Err(WriterGone(back)) => run = back,
            }
        }
    }

    /// Records a failed attempt on `msg`: backoff (returns when it ends), or discard after
    /// `max_retry_count` attempts (returns `None`: the group goes on). `Err` = queue failure.
    pub async fn fail_message(
        &self,
        settings: &SinkSettings,
        msg: &StoredMessage,
        failure: Failure,
    ) -> Result<Option<u64>, ()> {
        let shared = &self.shared;
        let attempts = msg.state.deliver_count + 1;
        log_failure(&shared.name, msg, &failure, attempts);
        *shared
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((msg.id, failure.error.clone()));
        let now = self.clock.now_millis();
        // A message whose append may have landed is never discarded: the writer reconciles
        // after such a failure, so this class remains only while the stream cannot be read.
        let exhausted = settings.max_retry_count.is_some_and(|max| attempts >= max)
            && failure.error.class != ErrorClass::OutcomeUnknown;
        if exhausted && self.dead_letter(settings, msg, &failure).await {
            let res = match shared
                .queue
                .fail(&shared.name, msg.id, failure.error.clone(), now)
            {
                Ok(_) => shared.queue.discard(&shared.name, msg.id).await.map(|_| ()),
                Err(e) => Err(e),
            };
            return match res {
                Err(QueueError::NotFound { .. }) => Ok(None),
                Ok(()) => {
                    shared.stats.discarded.fetch_add(1, Relaxed);
                    tracing::warn!(sink = %shared.name, id = %msg.id, attempts, "message discarded after max_retry_count attempts");
                    Ok(None)
                }
                Err(e) => {
                    (self.on_fatal)(&e);
                    Err(())
                }
            };
        }
        let delay = settings.backoff.delay(attempts, failure.retry_after);
        let until = now + delay.as_millis() as u64;
        match shared
            .queue
            .fail(&shared.name, msg.id, failure.error, until)
        {
            Ok(_) => Ok(Some(until)),
            // A reconciliation found it in S2 and acked it meanwhile: the group goes on.
            Err(QueueError::NotFound { .. }) => Ok(None),
            Err(e) => {
                (self.on_fatal)(&e);
                Err(())
            }
        }
    }

    /// Appends a discarded message to the dead-letter stream, when one is configured.
    /// Returns false when that append failed (the message then keeps backing off).
    async fn dead_letter(&self, settings: &SinkSettings, msg: &StoredMessage, f: &Failure) -> bool {
        let Some(dlq) = &settings.dead_letter_stream else {
            return true;
        };
        let Some(basin) = settings.route.as_ref().map(|r| r.basin.clone()) else {
            return true;
        };
        let e = &f.error;
        let mut headers = vec![
            (HEADER_SINK.to_string(), self.shared.name.clone()),
            (HEADER_ID.to_string(), msg.delivery_id().to_string()),
            (
                "s2sink-error-class".to_string(),
                e.class.as_str().to_string(),
            ),
            ("s2sink-error-message".to_string(), e.message.clone()),
        ];
        if let Some(s) = e.status {
            headers.push(("s2sink-error-status".to_string(), s.to_string()));
        }
        if let Some(c) = &e.code {
            headers.push(("s2sink-error-code".to_string(), c.clone()));
        }
        let input = AppendInput {
            records: vec![AppendRecord {
                headers,
                body: String::from_utf8_lossy(&msg.payload).into_owned(),
                timestamp: None,
            }],
            match_seq_num: None,
            fencing_token: None,
        };
        match self.io().append(&basin, dlq, &input).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(sink = %self.shared.name, id = %msg.id, error = %err, "dead-letter append failed; message keeps backing off");
                false
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
