//! The delivery engine: per-sink supervisors, one actor per message group, stream writers.
//!
//! Embed it without the HTTP server:
//!
//! ```no_run
//! # async fn demo() -> Result<(), s2sink_server::ServerError> {
//! use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings};
//! use s2sink_client::S2Config;
//! use s2sink_core::Route;
//!
//! let queue = s2sink_queue::Queue::open("data")?;
//! let s2 = S2Config::direct("http://127.0.0.1:8080");
//! let sink = SinkSettings::new("orders", Some(Route::new("my-basin-01", "orders").unwrap()), s2);
//! // Inside an actix System (e.g. `#[actix_rt::main]`):
//! let engine = Engine::start(queue, vec![sink], EngineOptions::default())?;
//! let ids = engine
//!     .ingest("orders", vec![IngestItem::new(serde_json::json!({"action": "insert"}))])
//!     .await?;
//! # let _ = ids; Ok(()) }
//! ```

mod budget;
mod clock;
mod dead_letter;
mod group;
mod io;
mod pacing;
mod plan;
mod scan;
mod settings;
mod sink;
mod stats;
mod supervisor;
mod threads;
mod view;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use s2sink_client::{S2Client, Text};
use s2sink_core::{Envelope, GroupKey};
use s2sink_queue::{
    Enqueued, Idempotency, MessageId, NewMessage, Queue, QueueError, RequestKey, SourcePosition,
};
use s2sink_transform::Functions;
use serde_json::Value;

pub use budget::{ByteBudget, Held};
pub use clock::Clock;
pub use group::{deliver_group, GroupDone, GroupOutcome};
pub use io::{BoxFuture, StreamIo};
pub use settings::{
    BatchSettings, SinkSettings, DEFAULT_IDEMPOTENCY_WINDOW, MAX_APPENDS_IN_FLIGHT,
};
pub use sink::{SinkLocal, SinkShared};
pub use stats::{Histogram, SinkStats};
pub use supervisor::{
    AllGroupsReady, GetShardInfo, GroupsReady, LiveGroups, ShardInfo, Supervisor,
};
pub use view::valid_json;
pub use writer::{
    our_delivery_id, our_id, Failure, HEADER_ID, HEADER_IDEMPOTENCY_KEY, HEADER_SINK,
};

use crate::ServerError;

/// One message handed to the engine.
#[derive(Debug, Clone)]
pub struct IngestItem {
    /// The JSON message (Sequin envelope or any object). May be `Value::Null` when `raw` is
    /// given: the engine then reads the fields it needs from `raw` without building the tree
    /// (what HTTP ingest does), in one pass that also checks it; a text that is not a JSON
    /// object fails the call ([`ServerError::InvalidMessage`]), as a tree parse would.
    pub message: Value,
    /// The producer's exact text of the message, stored instead of re-serializing `message`
    /// (keeps numbers beyond i64/u64/f64 exact). Shared text: HTTP ingest hands each message
    /// as a slice of the request body, not a copy.
    pub raw: Option<Text>,
    /// Explicit group for producers that are not CDC sources (wins over derivation).
    pub group: Option<String>,
}

impl IngestItem {
    /// A message whose group is derived from its envelope.
    pub fn new(message: Value) -> IngestItem {
        IngestItem {
            message,
            raw: None,
            group: None,
        }
    }
}

/// What [`Engine::ingest_idempotent`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    /// Per message, in order: its id, or for a duplicate the id of the message first accepted
    /// with its key.
    pub ids: Vec<MessageId>,
    /// How many messages were duplicates (not stored again).
    pub duplicates: usize,
    /// The request key was seen before for the same request: nothing was stored and this is
    /// the original answer.
    pub replayed: bool,
}

/// Called when the queue reports a fatal storage error (from any engine thread).
pub type FatalHook = Arc<dyn Fn(&QueueError) + Send + Sync>;

/// Engine-wide options that are not per sink.
#[derive(Default)]
pub struct EngineOptions {
    /// Ingest answers back-pressure errors past this many pending messages (all sinks).
    pub max_pending: Option<u64>,
    /// Replaces the S2 client (engine unit tests only).
    pub io: Option<Arc<dyn StreamIo>>,
    /// Called on a fatal queue error; default logs and exits the process (code 74).
    pub on_fatal: Option<FatalHook>,
    /// How long a stream writer with nothing to send lives before it ends (its task and map
    /// entry go; the next run for its stream starts a new one); `None` = 30 s. Tests shorten
    /// it to see idle writers end.
    pub writer_idle: Option<Duration>,
    /// Bytes (JSON bodies) of appends in flight at once across every writer; a writer waits
    /// for room before sending. Bounds memory when many streams pipeline. `None` =
    /// [`DEFAULT_MAX_IN_FLIGHT_BYTES`].
    pub max_in_flight_bytes: Option<u64>,
    /// Engine threads: group actors (and stream writers) are spread over this many actix
    /// arbiters, each with a supervisor shard per sink owning the groups that hash to it.
    /// `Some(1)` runs everything on the arbiter that calls [`Engine::start`] and starts no
    /// thread (tests with paused tokio time need that). `None` = the number of cores.
    pub threads: Option<usize>,
    /// Payload bytes group actors hold at once across every sink (read from the queue, not
    /// yet delivered or failed); a group waits for room before reading its head. Bounds
    /// what delivery holds whatever the backlog (sled's own memory is separate).
    /// `None` = [`DEFAULT_MAX_HELD_BYTES`].
    pub max_held_bytes: Option<u64>,
}

/// Default engine-wide in-flight append budget: 64 MiB.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 * 1024 * 1024;

/// Default engine-wide budget of payload bytes held by group actors: 16 MiB. Enough to keep
/// a stream's 2 pipelined appends of up to 1 MiB full with runs queued behind them (several
/// busy streams at once); more only queues runs longer. Measured against 64 MiB (the old
/// default, docs/BENCHMARKS.md): a restart draining 1M messages peaked ~100 MB lower and cost
/// less CPU per message; a fixed 40k msg/s, the closed loop and one hot group no worse.
pub const DEFAULT_MAX_HELD_BYTES: u64 = 16 * 1024 * 1024;

/// A running engine. Cheap to share across threads (`Arc` inside); created inside an actix
/// System. Dropping the last handle stops the engine's threads.
#[derive(Clone)]
pub struct Engine {
    sinks: Arc<BTreeMap<String, Arc<SinkShared>>>,
    /// Each sink's supervisor shards, one per engine thread (same keys as `sinks`).
    supervisors: Arc<BTreeMap<String, Vec<Addr<Supervisor>>>>,
    /// The engine's arbiters; they stop when the last handle is dropped.
    threads: Arc<threads::Threads>,
    queue: Queue,
    max_pending: Option<u64>,
    stopping: Arc<AtomicBool>,
    held: ByteBudget,
}

fn exit_on_fatal(e: &QueueError) {
    tracing::error!(error = %e, "fatal storage error: stopping so nothing continues on unknown disk state");
    std::process::exit(74);
}

impl Engine {
    /// Compiles every sink's functions, starts the engine threads with one supervisor shard
    /// per sink on each (which recovers its share of the sink's pending groups from the
    /// queue) and returns the handle. Must run inside an actix System.
    pub fn start(
        queue: Queue,
        sinks: Vec<SinkSettings>,
        options: EngineOptions,
    ) -> Result<Engine, ServerError> {
        let stopping = Arc::new(AtomicBool::new(false));
        let clock = Clock::new();
        let on_fatal = options
            .on_fatal
            .unwrap_or_else(|| Arc::new(exit_on_fatal) as FatalHook);
        let mut map = BTreeMap::new();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let function_slots = Arc::new(tokio::sync::Semaphore::new(cores));
        let in_flight = ByteBudget::new(
            options
                .max_in_flight_bytes
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT_BYTES),
        );
        let held = ByteBudget::new(options.max_held_bytes.unwrap_or(DEFAULT_MAX_HELD_BYTES));
        for settings in sinks {
            let name = settings.name.clone();
            if map.contains_key(&name) {
                return Err(ServerError::Config {
                    key: "sinks.name".into(),
                    reason: format!("sink `{name}` is configured twice"),
                });
            }
            settings
                .backoff
                .validate()
                .map_err(|source| ServerError::Settings {
                    sink: name.clone(),
                    source,
                })?;
            let functions = Functions::compile(&settings.functions).map_err(|source| {
                ServerError::Functions {
                    sink: name.clone(),
                    source: Box::new(source),
                }
            })?;
            let io: Arc<dyn StreamIo> = match &options.io {
                Some(io) => io.clone(),
                None => Arc::new(S2Client::new(settings.s2.clone())?),
            };
            let fixed_io = options.io.is_some();
            let shared = Arc::new(SinkShared::new(
                settings,
                functions,
                queue.clone(),
                stopping.clone(),
                io,
                fixed_io,
            ));
            map.insert(name, shared);
        }
        let threads = Arc::new(threads::Threads::start(
            options.threads.unwrap_or(cores),
            stopping.clone(),
        ));
        let homes = threads.homes.clone();
        let limits = sink::EngineLimits {
            idle: options.writer_idle.unwrap_or(writer::IDLE),
            in_flight,
            held: held.clone(),
        };
        let mut supervisors = BTreeMap::new();
        for (name, shared) in &map {
            let shards = (0..homes.count())
                .map(|shard| {
                    let (shared, on_fatal, slots, limits, homes) = (
                        shared.clone(),
                        on_fatal.clone(),
                        function_slots.clone(),
                        limits.clone(),
                        homes.clone(),
                    );
                    homes.clone().start_on(shard, move || {
                        let local =
                            SinkLocal::new(shared, clock, on_fatal, slots, limits, homes.clone());
                        Supervisor::new(std::rc::Rc::new(local), shard, homes)
                    })
                })
                .collect();
            supervisors.insert(name.clone(), shards);
        }
        Ok(Engine {
            sinks: Arc::new(map),
            supervisors: Arc::new(supervisors),
            threads,
            queue,
            max_pending: options.max_pending,
            stopping,
            held,
        })
    }

    /// The sinks, by name.
    pub fn sinks(&self) -> impl Iterator<Item = &Arc<SinkShared>> {
        self.sinks.values()
    }

    /// One sink, or `UnknownSink`.
    pub fn sink(&self, name: &str) -> Result<&Arc<SinkShared>, ServerError> {
        self.sinks
            .get(name)
            .ok_or_else(|| ServerError::UnknownSink {
                sink: name.to_string(),
            })
    }

    /// The supervisor shards of a sink that exists.
    fn supervisors(&self, sink: &str) -> &[Addr<Supervisor>] {
        &self.supervisors[sink]
    }

    /// Wakes groups of a sink, each on the shard that owns it. Waits while a shard's mailbox
    /// is full: a slow engine slows ingest instead of growing memory.
    async fn wake(&self, sink: &str, groups: Vec<s2sink_queue::GroupRef>) {
        let shards = self.supervisors(sink);
        let homes = &self.threads.homes;
        let mut by_shard: Vec<Vec<s2sink_queue::GroupRef>> = vec![Vec::new(); shards.len()];
        for g in groups {
            by_shard[homes.shard_of(&g)].push(g);
        }
        for (addr, groups) in shards.iter().zip(by_shard) {
            if !groups.is_empty() {
                let _ = addr.send(GroupsReady(groups)).await;
            }
        }
    }

    /// Makes every pending group of a sink ready, on every shard.
    async fn wake_all(&self, sink: &str) {
        for addr in self.supervisors(sink) {
            let _ = addr.send(AllGroupsReady).await;
        }
    }

    /// True once shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// The budget of payload bytes group actors hold (`EngineOptions::max_held_bytes`):
    /// what is held now and the most held at once, for metrics and tests.
    pub fn held_budget(&self) -> &ByteBudget {
        &self.held
    }

    /// The durable queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Validates, groups and durably enqueues messages, all or nothing; returns their ids once
    /// they are on disk, and wakes their groups. A message whose `metadata.idempotency_key`
    /// was accepted for the sink within its `idempotency_window` is not stored again: its id
    /// is the original one (see [`Engine::ingest_idempotent`]).
    pub async fn ingest(
        &self,
        sink: &str,
        items: Vec<IngestItem>,
    ) -> Result<Vec<MessageId>, ServerError> {
        Ok(self.ingest_idempotent(sink, items, None).await?.ids)
    }

    /// [`Engine::ingest`] with an optional request key (the HTTP `Idempotency-Key`): a repeat
    /// of an accepted request (same key, same fingerprint) within the sink's
    /// `idempotency_window` returns the original answer and stores nothing; the same key with
    /// another fingerprint is [`ServerError::IdempotencyConflict`]. Message keys
    /// (`metadata.idempotency_key`, a non-empty string) are deduplicated per sink within the
    /// same window. Producers that retry after losing an answer thus create no duplicates.
    pub async fn ingest_idempotent(
        &self,
        sink: &str,
        items: Vec<IngestItem>,
        request: Option<RequestKey>,
    ) -> Result<IngestOutcome, ServerError> {
        let shared = self.admit(sink)?;
        let settings = shared.settings();
        let msgs = prepare(&settings, items, settings.dedup_message_keys)?;
        if msgs.is_empty() && request.is_none() {
            return Ok(IngestOutcome::default());
        }
        let idempotency = Idempotency {
            request,
            window: settings.idempotency_window,
        };
        let outcome = self
            .queue
            .enqueue_idempotent(sink, msgs, idempotency)
            .await
            .map_err(|e| match e {
                QueueError::IdempotencyConflict { sink, key } => {
                    ServerError::IdempotencyConflict { sink, key }
                }
                other => other.into(),
            })?;
        let duplicates = outcome.duplicates();
        let ids = outcome.accepted.iter().map(|a| a.id).collect();
        let replayed = outcome.replayed;
        if replayed {
            shared.stats.replayed.fetch_add(1, Relaxed);
        } else {
            shared
                .stats
                .ingest_duplicates
                .fetch_add(duplicates as u64, Relaxed);
        }
        self.stored(sink, shared, outcome.stored).await;
        Ok(IngestOutcome {
            ids,
            duplicates,
            replayed,
        })
    }

    /// [`Engine::ingest`] for a producer that tracks its own position (the Postgres source):
    /// the messages and `position` are stored in one atomic batch (see
    /// [`Queue::enqueue_at`]), so after a crash the producer resumes right after what was
    /// stored. Message keys are not deduplicated here: the position already makes a re-read
    /// store nothing twice. `items` may be empty to move only the position. Back-pressure
    /// applies as for [`Engine::ingest`].
    pub async fn ingest_at(
        &self,
        sink: &str,
        items: Vec<IngestItem>,
        position: SourcePosition<'_>,
    ) -> Result<Vec<MessageId>, ServerError> {
        let shared = self.admit(sink)?;
        let msgs = prepare(&shared.settings(), items, false)?;
        let stored = self.queue.enqueue_at(sink, msgs, position).await?;
        let ids = stored.iter().map(|e| e.id).collect();
        self.stored(sink, shared, stored).await;
        Ok(ids)
    }

    /// The sink an ingest may store into now: not while stopping, not past `max_pending`.
    fn admit(&self, sink: &str) -> Result<&Arc<SinkShared>, ServerError> {
        if self.stopping.load(Relaxed) {
            return Err(ServerError::ShuttingDown);
        }
        let shared = self.sink(sink)?;
        if let Some(limit) = self.max_pending {
            let pending = self.queue.total_pending();
            if pending >= limit {
                return Err(ServerError::Backpressure { pending, limit });
            }
        }
        Ok(shared)
    }

    /// Counts newly stored messages and wakes their groups.
    async fn stored(&self, sink: &str, shared: &SinkShared, stored: Vec<Enqueued>) {
        if stored.is_empty() {
            return;
        }
        shared
            .stats
            .ingested
            .fetch_add(stored.len() as u64, Relaxed);
        // Each group once, in order; the set borrows the keys and hashes with foldhash (per
        // ingested message, this was ~1.5% of the server's CPU with an owned key and
        // SipHash), then the first message of each group gives its key up for the wake-up:
        // moved, not cloned.
        let first: Vec<bool> = {
            let mut seen: foldhash::HashSet<&s2sink_queue::GroupRef> =
                foldhash::HashSet::with_capacity_and_hasher(stored.len(), Default::default());
            stored.iter().map(|e| seen.insert(&e.group)).collect()
        };
        let groups: Vec<s2sink_queue::GroupRef> = stored
            .into_iter()
            .zip(first)
            .filter_map(|(e, first)| first.then_some(e.group))
            .collect();
        self.wake(sink, groups).await;
    }

    /// Clears the backoff of one message (or of all, with `None`) and wakes the groups.
    pub async fn redeliver(&self, sink: &str, id: Option<MessageId>) -> Result<u64, ServerError> {
        match id {
            Some(id) => {
                self.manual(sink, id, |q| async move {
                    q.redeliver(sink, id).await.map(|_| ())
                })
                .await?;
                Ok(1)
            }
            None => {
                let shared = self.sink(sink)?;
                let n = self.queue.redeliver_all(sink).await?;
                self.wake_all(&shared.name).await;
                Ok(n as u64)
            }
        }
    }

    /// Removes a message as delivered (manual acknowledge) and wakes its group.
    pub async fn acknowledge(&self, sink: &str, id: MessageId) -> Result<(), ServerError> {
        self.manual(sink, id, |q| async move {
            q.acknowledge(sink, id).await.map(|_| ())
        })
        .await?
        .stats
        .delivered
        .fetch_add(1, Relaxed);
        Ok(())
    }

    /// Removes a message as undeliverable (kept in the discarded list) and wakes its group.
    pub async fn discard(&self, sink: &str, id: MessageId) -> Result<(), ServerError> {
        self.manual(sink, id, |q| async move {
            q.discard(sink, id).await.map(|_| ())
        })
        .await?
        .stats
        .discarded
        .fetch_add(1, Relaxed);
        Ok(())
    }

    /// A manual action on one pending message: `UnknownMessage` if it is not pending, else
    /// `act` (which is on disk when it returns), then its group is woken so the change takes
    /// effect now.
    async fn manual<'q, F>(
        &'q self,
        sink: &str,
        id: MessageId,
        act: impl FnOnce(&'q Queue) -> F,
    ) -> Result<&'q Arc<SinkShared>, ServerError>
    where
        F: std::future::Future<Output = Result<(), QueueError>>,
    {
        let shared = self.sink(sink)?;
        let Some(msg) = self.queue.get(sink, id)? else {
            return Err(ServerError::UnknownMessage {
                sink: sink.into(),
                id: id.0,
            });
        };
        act(&self.queue).await?;
        self.wake(sink, vec![msg.group]).await;
        Ok(shared)
    }

    /// Applies new settings, functions and S2 client (endpoint, access token) to existing
    /// sinks — new functions un-stick messages already queued, a rotated token takes effect at
    /// once — and wakes every pending group. Sinks cannot be added or removed without a
    /// restart.
    pub async fn reload(&self, sinks: Vec<SinkSettings>) -> Result<(), ServerError> {
        let new: std::collections::BTreeSet<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        let running: std::collections::BTreeSet<&str> =
            self.sinks.keys().map(String::as_str).collect();
        if new != running {
            return Err(ServerError::Config {
                key: "sinks".into(),
                reason: format!(
                    "a reload cannot add, rename or remove sinks (running: {running:?}, new config: {new:?}); restart the server for that"
                ),
            });
        }
        let mut compiled = Vec::new();
        for settings in sinks {
            let shared = self.sink(&settings.name)?.clone();
            settings
                .backoff
                .validate()
                .map_err(|source| ServerError::Settings {
                    sink: settings.name.clone(),
                    source,
                })?;
            let functions = Functions::compile(&settings.functions).map_err(|source| {
                ServerError::Functions {
                    sink: settings.name.clone(),
                    source: Box::new(source),
                }
            })?;
            let client = S2Client::new(settings.s2.clone())?;
            compiled.push((shared, settings, functions, client));
        }
        for (shared, settings, functions, client) in compiled {
            shared.replace(settings, functions, client);
            self.wake_all(&shared.name).await;
        }
        Ok(())
    }

    /// The sink's supervisor shards, one per engine thread: the thread each runs its group
    /// actors on and how many it started (how the load spreads over the threads).
    pub async fn shards(&self, sink: &str) -> Result<Vec<ShardInfo>, ServerError> {
        let shared = self.sink(sink)?;
        let mut out = Vec::new();
        for addr in self.supervisors(&shared.name) {
            if let Ok(info) = addr.send(GetShardInfo).await {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Live stream writers of a sink: one per stream with recent runs; writers idle for
    /// `EngineOptions::writer_idle` end, so a fan-out over many streams does not keep a task
    /// per stream forever.
    pub async fn live_writers(&self, sink: &str) -> Result<usize, ServerError> {
        Ok(self.sink(sink)?.live_writers())
    }

    /// The way out of a corrupt low-water mark (delivery to that stream stops with
    /// `corrupt_marker`): stores the stream's mark as 0 and retries the sink's messages now.
    /// The writer then reads the whole stream back before it sends again and skips every
    /// message of this sink already there; starting from the tail instead (deleting the mark)
    /// could send those a second time. On a healthy stream it only costs one full read.
    pub async fn reconcile_from_start(
        &self,
        sink: &str,
        route: &s2sink_core::Route,
    ) -> Result<(), ServerError> {
        let shared = self.sink(sink)?;
        self.queue
            .put_marker(
                &writer::marker_key(&shared.name, route),
                &0u64.to_be_bytes(),
            )
            .await?;
        tracing::warn!(sink, stream = %route, "low-water mark set to 0: the stream is reconciled from its start");
        self.redeliver(sink, None).await?;
        Ok(())
    }

    /// Stops intake and new runs, waits (up to `timeout`) for in-flight runs to finish, and
    /// flushes the queue.
    pub async fn shutdown(&self, timeout: Duration) {
        self.stopping.store(true, Relaxed);
        let deadline = tokio::time::Instant::now() + timeout;
        for supervisor in self.supervisors.values().flatten() {
            loop {
                let live = supervisor.send(LiveGroups).await.unwrap_or(0);
                if live == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Err(e) = self.queue.flush().await {
            tracing::error!(error = %e, "final queue flush failed");
        }
    }
}

/// Validates and groups `items` into queue messages (the payload is the producer's exact text
/// when given); an invalid message fails the whole call, naming its index. `dedup_keys`: carry
/// `metadata.idempotency_key` into the queue's deduplication.
fn prepare(
    settings: &SinkSettings,
    items: Vec<IngestItem>,
    dedup_keys: bool,
) -> Result<Vec<NewMessage>, ServerError> {
    let mut msgs = Vec::with_capacity(items.len());
    let with_record = !settings.group_columns.is_empty();
    for (index, mut item) in items.into_iter().enumerate() {
        let invalid = |reason: String| ServerError::InvalidMessage { index, reason };
        // Given as text only (HTTP ingest): read the few fields grouping needs from the text,
        // without building the tree; anything unusual takes the full path below.
        // The group and the idempotency key when deduplicating (an empty one would make every
        // keyless-looking message a duplicate of the first), read without copying the fields.
        let light = match (&item.raw, item.message.is_null()) {
            (Some(raw), true) => view::light(raw, with_record),
            _ => None,
        };
        let (group, key) = match light {
            Some(light) => {
                let explicit = item.group.as_deref().or(light.group_id());
                let group =
                    GroupKey::derive_from(&light.group_source(), explicit, &settings.group_columns);
                let key = light
                    .idempotency_key()
                    .filter(|k| dedup_keys && !k.is_empty());
                (group, key.map(str::to_string))
            }
            None => {
                if let (Some(raw), true) = (&item.raw, item.message.is_null()) {
                    item.message = serde_json::from_str(raw).map_err(|e| invalid(e.to_string()))?;
                }
                let envelope =
                    Envelope::from_value(&item.message).map_err(|e| invalid(e.to_string()))?;
                let explicit = item.group.as_deref().or_else(|| {
                    item.message
                        .pointer("/metadata/group_id")
                        .and_then(|g| g.as_str())
                });
                let group = GroupKey::derive(&envelope, explicit, &settings.group_columns);
                let key = envelope
                    .idempotency_key()
                    .filter(|k| dedup_keys && !k.is_empty());
                (group, key.map(str::to_string))
            }
        };
        let payload = match item.raw {
            Some(raw) => raw.into_bytes(),
            None => serde_json::to_vec(&item.message)
                .map_err(|e| invalid(e.to_string()))?
                .into(),
        };
        let mut msg = NewMessage::new(group, payload);
        if let Some(key) = key {
            msg = msg.with_idempotency_key(key);
        }
        msgs.push(msg);
    }
    Ok(msgs)
}
