//! [`Queue`]: the durable store, its sinks and every state change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use s2sink_core::{now_millis, LastError, UnixMillis};

use crate::bodies::Reaper;
use crate::flusher::{FlushError, Flusher};
use crate::prefetch::Prefetcher;
use crate::sink::{Keyed, Paced, Removal, Sink, TREE_PREFIX};
use crate::{
    upgrade, Accepted, Counts, DeliveryId, DeliveryState, DiscardedMessage, EnqueueOutcome,
    Enqueued, GroupRef, Idempotency, ListFilter, MessageId, NewMessage, QueueError, QueueOptions,
    SourcePosition, StoredMessage,
};

const MARKERS_TREE: &[u8] = b"markers";

type Result<T> = std::result::Result<T, QueueError>;

/// The durable per-group queue: one sled database per data directory, several sinks in it.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`. Every method but the `async` ones works on
/// the in-memory index (plus one sled batch for changes, or one chunk read on a cache miss)
/// and returns in microseconds.
///
/// Durability: [`enqueue`](Queue::enqueue) returns once the messages are on disk, and only
/// then are they visible to [`head_run`](Queue::head_run) (publish after flush, in id order).
/// The manual operations ([`acknowledge`](Queue::acknowledge), [`discard`](Queue::discard),
/// [`redeliver`](Queue::redeliver)) and markers are flushed before they return. Acks and
/// failures are atomic but not flushed on their own (the next flush, or sled's background
/// flush within 500 ms, persists them); after a crash such a change may be lost as a whole,
/// which re-delivers a message that S2 reconciliation then recognises by its [`DeliveryId`].
///
/// Once a storage error happened every later call fails with [`QueueError::Stopped`]: nothing
/// continues on an unknown disk state.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so it is dropped first: it only reads, and holds the sinks.
    prefetcher: Option<Prefetcher>,
    // Dropped next: it flushes what is waiting and joins its thread.
    flusher: Flusher,
    // Dropped next: finishes the span drops asked for (the last acks may end spans) and
    // joins its thread, which holds the database open.
    reaper: Reaper,
    sinks: RwLock<HashMap<String, Arc<Sink>>>,
    markers: sled::Tree,
    db: sled::Db,
    options: QueueOptions,
    epoch: u64,
    open_times: OpenTimes,
    stopped: AtomicBool,
}

impl Drop for Inner {
    /// Deferred acks are written when the last handle goes (a clean close loses none).
    fn drop(&mut self) {
        let sinks = self.sinks.get_mut().unwrap_or_else(|p| p.into_inner());
        for s in sinks.values() {
            if let Err(e) = s.persist_acks() {
                tracing::warn!(sink = %s.name, error = %e, "could not write deferred acks on close; they are found again in S2 after the restart");
            }
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "final flush on close failed");
        }
    }
}

/// How long [`Queue::open_with`] took, by phase.
#[derive(Debug, Clone, Copy)]
pub struct OpenTimes {
    /// sled's own recovery (it replays the log written since the previous open), plus a v1
    /// conversion when there was one.
    pub recovery: std::time::Duration,
    /// Rebuilding the in-memory index from the chunk headers and failed records.
    pub rebuild: std::time::Duration,
}

/// A random, non-zero epoch for this open of the queue (see [`DeliveryId`]). std's
/// `RandomState` is seeded from the OS; time and pid are mixed in for good measure.
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

impl Queue {
    /// Opens (or creates) the queue in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Queue> {
        Queue::open_with(path, QueueOptions::default())
    }

    /// Opens (or creates) the queue in directory `path`: converts a v1 data directory first
    /// (see [`crate::upgrade`]), rebuilds every sink's in-memory index from one pass over its
    /// chunk headers, and takes a new epoch.
    pub fn open_with(path: impl AsRef<Path>, options: QueueOptions) -> Result<Queue> {
        let storage = |op| {
            move |source| QueueError::Storage {
                op,
                sink: None,
                source,
            }
        };
        let started = std::time::Instant::now();
        let db = upgrade::open(path.as_ref(), options.cache_capacity)?;
        let recovered = started.elapsed();
        let markers = db.open_tree(MARKERS_TREE).map_err(storage("open"))?;
        let epoch = new_epoch();
        let reaper = Reaper::start(db.clone()).map_err(QueueError::Thread)?;
        let mut sinks = HashMap::new();
        for name in db.tree_names() {
            if let Some(sink) = name.strip_prefix(TREE_PREFIX) {
                let sink = String::from_utf8_lossy(sink).into_owned();
                let opened = Sink::open(
                    &db,
                    &sink,
                    epoch,
                    options.payload_cache_bytes,
                    options.idempotency_max_keys,
                    options.span_bytes,
                    &reaper,
                )?;
                sinks.insert(sink, Arc::new(opened));
            }
        }
        db.flush().map_err(storage("open"))?;
        let open_times = OpenTimes {
            recovery: recovered,
            rebuild: started.elapsed() - recovered,
        };
        tracing::info!(
            recovery_ms = open_times.recovery.as_millis() as u64,
            rebuild_ms = open_times.rebuild.as_millis() as u64,
            "queue opened"
        );
        let flusher =
            Flusher::start(db.clone(), options.commit_delay).map_err(QueueError::Thread)?;
        let prefetcher = if options.read_ahead {
            let p = Prefetcher::start().map_err(QueueError::Thread)?;
            for s in sinks.values() {
                p.watch(Arc::clone(s));
            }
            Some(p)
        } else {
            None
        };
        Ok(Queue {
            inner: Arc::new(Inner {
                prefetcher,
                flusher,
                reaper,
                sinks: RwLock::new(sinks),
                markers,
                db,
                options,
                epoch,
                open_times,
                stopped: AtomicBool::new(false),
            }),
        })
    }

    /// How long opening took, by phase (logged at open; for the benchmark).
    pub fn open_times(&self) -> OpenTimes {
        self.inner.open_times
    }

    /// The epoch of this open of the queue: new messages' [`DeliveryId`]s carry it.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Names of the sinks that have stored anything.
    pub fn sinks(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read_sinks().keys().cloned().collect();
        v.sort();
        v
    }

    /// Stores `msgs` for `sink` and returns their ids and groups once they are on disk; only
    /// then do their groups see them.
    ///
    /// The whole request is one atomic sled batch of chunks (≤ 60 KiB of payload each);
    /// concurrent calls share one flush (group commit).
    pub async fn enqueue(&self, sink: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>> {
        self.check()?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.sink_or_create(sink)?;
        let (out, first) = self.track(s.enqueue(msgs, now_millis()))?;
        self.wait_flush("enqueue", Some(sink)).await?;
        s.publish(first);
        Ok(out)
    }

    /// Stores `msgs` for `sink` like [`enqueue`](Queue::enqueue), together with a source's
    /// position in the same atomic batch: after a crash either both the messages and the
    /// position are on disk or neither is. A producer that reads its position back with
    /// [`source_position`](Queue::source_position) on restart and skips what lies at or before
    /// it thus stores every message exactly once (the Postgres source does this with its
    /// slot's commit positions). `msgs` may be empty to move only the position.
    pub async fn enqueue_at(
        &self,
        sink: &str,
        msgs: Vec<NewMessage>,
        position: SourcePosition<'_>,
    ) -> Result<Vec<Enqueued>> {
        self.check()?;
        let s = self.sink_or_create(sink)?;
        let (out, first) = self.track(s.enqueue_at(msgs, Some(position), now_millis()))?;
        self.wait_flush("enqueue", Some(sink)).await?;
        if let Some(first) = first {
            s.publish(first);
        }
        Ok(out)
    }

    /// The position `source` last stored for `sink` with [`enqueue_at`](Queue::enqueue_at), if
    /// any.
    pub fn source_position(&self, sink: &str, source: &str) -> Result<Option<Vec<u8>>> {
        self.with_sink(sink, None, |s| s.position(source))
    }

    /// Stores `msgs` for `sink` like [`enqueue`](Queue::enqueue), but idempotently, so that a
    /// producer who retries after losing an answer does not create duplicates:
    ///
    /// - a request key ([`Idempotency::request`]) accepted within its window with the same
    ///   fingerprint returns the original answer (`replayed`) and stores nothing; with another
    ///   fingerprint it fails with [`QueueError::IdempotencyConflict`];
    /// - a message whose [`NewMessage::idempotency_key`] was accepted for the sink within its
    ///   window (or earlier in the same call) is not stored; its answer is the original id
    ///   with `duplicate` set.
    ///
    /// The keys' records are written in the same sled batch as the messages (a crash keeps
    /// both or neither) and checked under the sink's enqueue order lock (two concurrent calls
    /// with one key store one message). Records expire `window` after acceptance and are
    /// pruned lazily by later calls (at most 16 records per call) and at open; past
    /// [`QueueOptions::idempotency_max_keys`] the oldest are forgotten first. Every answer,
    /// a replay or an all-duplicate one too, is returned only once what it names is on disk.
    pub async fn enqueue_idempotent(
        &self,
        sink: &str,
        msgs: Vec<NewMessage>,
        idempotency: Idempotency,
    ) -> Result<EnqueueOutcome> {
        self.check()?;
        if msgs.is_empty() && idempotency.request.is_none() {
            return Ok(EnqueueOutcome::default());
        }
        if idempotency.request.is_none() && msgs.iter().all(|m| m.idempotency_key.is_none()) {
            // Nothing to check or record: the plain path.
            let stored = self.enqueue(sink, msgs).await?;
            return Ok(EnqueueOutcome {
                accepted: stored
                    .iter()
                    .map(|e| Accepted {
                        id: e.id,
                        duplicate: false,
                    })
                    .collect(),
                stored,
                replayed: false,
            });
        }
        let s = self.sink_or_create(sink)?;
        let keyed = self.track(s.enqueue_keyed(msgs, &idempotency, now_millis()))?;
        // Also for a duplicate: the id it returns may be a concurrent enqueue's, applied but
        // not yet flushed; this flush covers it.
        self.wait_flush("enqueue", Some(sink)).await?;
        Ok(match keyed {
            Keyed::Replayed(accepted) => EnqueueOutcome {
                accepted,
                stored: Vec::new(),
                replayed: true,
            },
            Keyed::Stored {
                accepted,
                stored,
                first,
            } => {
                if let Some(first) = first {
                    s.publish(first);
                }
                EnqueueOutcome {
                    accepted,
                    stored,
                    replayed: false,
                }
            }
        })
    }

    /// How many idempotency records (request and message keys) `sink` keeps.
    pub fn idempotency_keys(&self, sink: &str) -> usize {
        self.sink(sink).map_or(0, |s| s.idempotency_keys())
    }

    /// The first messages of `group` in acceptance order: at most `max_messages` and, beyond
    /// the first, at most `max_bytes` of payload. Always the head alone if it is larger. The
    /// head's `state.not_visible_until` tells whether the group is backing off.
    pub fn head_run(
        &self,
        sink: &str,
        group: &GroupRef,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.with_sink(sink, Vec::new(), |s| {
            s.head_run(group, None, max_messages, max_bytes)
        })
    }

    /// [`head_run`](Queue::head_run) paced to the read-ahead: with `pace` (and read-ahead on),
    /// a group whose first message lies in a chunk whose body is not cached, would not be
    /// kept by the cache if read now (it holds older ones), and which the read-ahead has not
    /// reached yet gets [`Paced::Wait`] with that chunk's first id instead of reading it from
    /// sled itself; a run that reaches such a chunk after its first message ends there.
    /// Groups deliver at their own pace; read one message at a time, a backlog beyond the
    /// cache made sled pull a whole leaf per ~1 KiB message (a quarter of the server's CPU).
    /// Waiting for the read-ahead, which reads each body once, whole and in id order, turns
    /// those reads into cache hits.
    pub fn head_run_paced(
        &self,
        sink: &str,
        group: &GroupRef,
        max_messages: usize,
        max_bytes: usize,
        pace: bool,
    ) -> Result<Paced> {
        let pace = pace && self.inner.options.read_ahead;
        self.with_sink(sink, Paced::Run(Vec::new()), |s| {
            s.head_run_paced(group, None, max_messages, max_bytes, pace)
        })
    }

    /// The read-ahead's frontier in `sink`: the first id of the oldest live chunk whose body
    /// it has not cached yet. A group told to [`Paced::Wait`] for a chunk below it can go on.
    pub fn read_ahead_frontier(&self, sink: &str) -> u64 {
        self.with_sink(sink, 0, |s| Ok(s.frontier())).unwrap_or(0)
    }

    /// Like [`head_run`](Queue::head_run), but the messages of `group` after `after`: what a
    /// group sends next while its earlier runs are still being appended (not yet acked).
    pub fn run_after(
        &self,
        sink: &str,
        group: &GroupRef,
        after: MessageId,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.with_sink(sink, Vec::new(), |s| {
            s.head_run(group, Some(after), max_messages, max_bytes)
        })
    }

    /// Every group of `sink` that has messages (keyed groups in key order, then ungrouped
    /// messages in id order).
    pub fn pending_groups(&self, sink: &str) -> Result<Vec<GroupRef>> {
        self.pending_groups_page(sink, None, usize::MAX)
    }

    /// Every group of `sink` with pending messages, the one whose oldest message is oldest
    /// first: the order a restart resumes delivery in. Groups that start together then read
    /// the same chunk bodies (a chunk holds consecutive messages of many groups) while they
    /// are cached, and the backlog drains from its old end, so ended body spans are dropped
    /// early instead of all at the end.
    pub fn pending_groups_oldest_first(&self, sink: &str) -> Result<Vec<GroupRef>> {
        self.with_sink(sink, Vec::new(), |s| Ok(s.pending_groups_oldest_first()))
    }

    /// Up to `limit` groups with pending messages, in the order of
    /// [`pending_groups`](Queue::pending_groups), starting after `after`.
    pub fn pending_groups_page(
        &self,
        sink: &str,
        after: Option<&GroupRef>,
        limit: usize,
    ) -> Result<Vec<GroupRef>> {
        self.with_sink(
            sink,
            Vec::new(),
            |s| Ok(s.pending_groups_page(after, limit)),
        )
    }

    /// One message with its state.
    pub fn get(&self, sink: &str, id: MessageId) -> Result<Option<StoredMessage>> {
        self.with_sink(sink, None, |s| s.get(id))
    }

    /// Which of `ids` are still in the queue (not yet acked, acknowledged or discarded).
    /// In memory only.
    pub fn contains(&self, sink: &str, ids: &[MessageId]) -> Result<Vec<bool>> {
        self.with_sink(sink, vec![false; ids.len()], |s| Ok(s.contains(ids)))
    }

    /// Removes delivered messages (ids not in the queue are ignored) and counts them as
    /// delivered; returns how many were removed. At once in memory (delivery never sees them
    /// again); on disk with the sink's next batch that settles chunks, the next
    /// [`put_marker`](Queue::put_marker) or [`flush`](Queue::flush), or when the queue is
    /// dropped — many S2 appends touch the same chunks, so their bitmaps are written once
    /// for all of them. A crash can bring back acks not yet written: callers must be able to
    /// find such messages delivered again (the engine reads its streams back from a mark
    /// stored only after the acks behind it).
    pub fn ack(&self, sink: &str, ids: &[MessageId]) -> Result<usize> {
        self.with_sink(sink, 0, |s| {
            s.remove(ids, Removal::Acked, now_millis(), usize::MAX, "ack")
                .map(|r| r.len())
        })
    }

    /// Removes as delivered the messages found in a stream by reconciliation: only those whose
    /// [`DeliveryId`] matches exactly (same epoch), so a record written under an older or
    /// another queue's epoch never acknowledges a new message. Returns the ids removed.
    pub fn ack_delivered(&self, sink: &str, found: &[DeliveryId]) -> Result<Vec<MessageId>> {
        self.with_sink(sink, Vec::new(), |s| {
            s.remove_delivered(found, now_millis())
        })
    }

    /// Manual acknowledge: removes the message as if delivered (unblocking its group), on disk
    /// before it returns. Returns false if it is not in the queue.
    pub async fn acknowledge(&self, sink: &str, id: MessageId) -> Result<bool> {
        let done = self.with_sink(sink, 0, |s| {
            s.remove(
                &[id],
                Removal::Delivered,
                now_millis(),
                usize::MAX,
                "acknowledge",
            )
            .map(|r| r.len())
        })?;
        self.wait_flush("acknowledge", Some(sink)).await?;
        Ok(done == 1)
    }

    /// Removes the message as undeliverable and keeps a copy (with its last error) in the
    /// sink's bounded discarded list, on disk before it returns. Returns false if it is not in
    /// the queue.
    pub async fn discard(&self, sink: &str, id: MessageId) -> Result<bool> {
        let cap = self.inner.options.discarded_cap;
        let done = self.with_sink(sink, 0, |s| {
            s.remove(&[id], Removal::Discarded, now_millis(), cap, "discard")
                .map(|r| r.len())
        })?;
        self.wait_flush("discard", Some(sink)).await?;
        Ok(done == 1)
    }

    /// Records a failed attempt: `deliver_count + 1`, the error, the backoff end, and the
    /// attempt time (`error.at_ms`). On its first failure the message moves out of its chunk
    /// into its own keys, so it never pins the chunk. Returns the new state.
    pub fn fail(
        &self,
        sink: &str,
        id: MessageId,
        error: LastError,
        not_visible_until: UnixMillis,
    ) -> Result<DeliveryState> {
        self.check()?;
        let s = self.sink(sink).ok_or_else(|| not_found(sink, id))?;
        self.track(s.fail(id, error, not_visible_until))?
            .ok_or_else(|| not_found(sink, id))
    }

    /// Clears the message's backoff so it is retried now (keeps `deliver_count`), on disk
    /// before it returns. Returns false if it is not in the queue.
    pub async fn redeliver(&self, sink: &str, id: MessageId) -> Result<bool> {
        let n = self.with_sink(sink, 0, |s| s.redeliver(Some(&[id])))?;
        self.wait_flush("redeliver", Some(sink)).await?;
        Ok(n == 1)
    }

    /// Clears the backoff of every message of the sink; returns how many were backing off.
    pub async fn redeliver_all(&self, sink: &str) -> Result<usize> {
        let n = self.with_sink(sink, 0, |s| s.redeliver(None))?;
        self.wait_flush("redeliver", Some(sink)).await?;
        Ok(n)
    }

    /// The newest `limit` discarded messages, newest first.
    pub fn discarded(&self, sink: &str, limit: usize) -> Result<Vec<DiscardedMessage>> {
        self.discarded_page(sink, None, limit)
    }

    /// A page of discarded messages, newest first, with `seq` below `before` (the `seq` of
    /// the last entry of the previous page).
    pub fn discarded_page(
        &self,
        sink: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DiscardedMessage>> {
        self.with_sink(sink, Vec::new(), |s| s.discarded_page(before, limit))
    }

    /// A page of the sink's messages matching `filter`, from the in-memory index (payloads
    /// from the cache or their chunk). `BackingOff` is judged at the current time.
    pub fn list(&self, sink: &str, filter: &ListFilter) -> Result<Vec<StoredMessage>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        self.with_sink(sink, Vec::new(), |s| s.list(filter, now_millis()))
    }

    /// The id the sink's next message will get (ids below it were handed out, durable or not).
    pub fn next_id(&self, sink: &str) -> MessageId {
        MessageId(self.sink(sink).map_or(1, |s| s.lock().meta.next_id))
    }

    /// The sink's counters (in memory, no scan).
    pub fn counts(&self, sink: &str) -> Counts {
        self.sink(sink).map(|s| s.counts()).unwrap_or_default()
    }

    /// When the oldest message still queued for `sink` was accepted (the sink's lag).
    pub fn oldest_pending_at(&self, sink: &str) -> Option<UnixMillis> {
        self.sink(sink).and_then(|s| s.oldest_pending_at())
    }

    /// The chunks of `sink` whose bodies are cached, by their first message id, oldest
    /// first: what delivery reads without touching sled (for tests and debugging).
    pub fn cached_chunks(&self, sink: &str) -> Vec<MessageId> {
        self.sink(sink)
            .map(|s| s.cached_chunks())
            .unwrap_or_default()
    }

    /// Bytes of payload the cache holds across sinks.
    pub fn cached_bytes(&self) -> usize {
        self.read_sinks().values().map(|s| s.cached_bytes()).sum()
    }

    /// Messages queued across all sinks, for the ingest back-pressure limit.
    pub fn total_pending(&self) -> u64 {
        self.read_sinks().values().map(|s| s.pending()).sum()
    }

    /// Waits until every change made before this call is on disk (shares the enqueue flush),
    /// deferred acks included.
    pub async fn flush(&self) -> Result<()> {
        self.check()?;
        self.persist_acks()?;
        self.wait_flush("flush", None).await
    }

    /// Writes every sink's deferred acks (see [`Queue::ack`]) without waiting for the disk.
    fn persist_acks(&self) -> Result<()> {
        let sinks: Vec<Arc<Sink>> = self.read_sinks().values().cloned().collect();
        for s in sinks {
            self.track(s.persist_acks())?;
        }
        Ok(())
    }

    /// How many disk flushes the queue has done since it was opened: with group commit this
    /// grows much slower than the number of enqueue calls (exported as a metric).
    pub fn flush_count(&self) -> u64 {
        self.inner.flusher.count()
    }

    /// Stores a small durable value for other crates (e.g. a stream's low-water mark) and
    /// returns once it is on disk. Deferred acks are written before it, so a mark that may
    /// only pass acked messages never lands on disk ahead of their acks.
    pub async fn put_marker(&self, name: &str, value: &[u8]) -> Result<()> {
        self.check()?;
        self.persist_acks()?;
        self.track(
            self.inner
                .markers
                .insert(name.as_bytes(), value)
                .map(drop)
                .map_err(|source| QueueError::Storage {
                    op: "put_marker",
                    sink: None,
                    source,
                }),
        )?;
        self.wait_flush("put_marker", None).await
    }

    /// Reads a marker written by [`put_marker`](Queue::put_marker).
    pub fn get_marker(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        self.track(
            self.inner
                .markers
                .get(name.as_bytes())
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|source| QueueError::Storage {
                    op: "get_marker",
                    sink: None,
                    source,
                }),
        )
    }

    /// Every marker whose name starts with `prefix` (e.g. all low-water marks of one sink),
    /// in name order.
    pub fn markers_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.check()?;
        let mut out = Vec::new();
        for kv in self.inner.markers.scan_prefix(prefix.as_bytes()) {
            let (k, v) = self.track(kv.map_err(|source| QueueError::Storage {
                op: "markers_with_prefix",
                sink: None,
                source,
            }))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// How many span trees hold sink `sink`'s chunk bodies (see the crate's storage notes):
    /// it falls as chunks end, for monitoring and tests.
    pub fn body_spans(&self, sink: &str) -> usize {
        self.sink(sink).map_or(0, |s| s.body_spans())
    }

    /// Bytes sled uses on disk (for monitoring and the disk-growth benchmark).
    ///
    /// Only reads file sizes, so a failure here (e.g. sled's blob directory unreadable) is
    /// returned but does not stop the queue: a metrics scrape must never end the work.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.check()?;
        self.inner
            .db
            .size_on_disk()
            .map_err(|source| QueueError::Storage {
                op: "size_on_disk",
                sink: None,
                source,
            })
    }

    /// Runs `f` on the sink (or returns `absent` when it never stored anything), stopping the
    /// queue on a fatal error.
    fn with_sink<T>(&self, sink: &str, absent: T, f: impl FnOnce(&Sink) -> Result<T>) -> Result<T> {
        self.check()?;
        match self.sink(sink) {
            Some(s) => self.track(f(&s)),
            None => Ok(absent),
        }
    }

    fn sink(&self, name: &str) -> Option<Arc<Sink>> {
        self.read_sinks().get(name).cloned()
    }

    fn sink_or_create(&self, name: &str) -> Result<Arc<Sink>> {
        if let Some(s) = self.sink(name) {
            return Ok(s);
        }
        let mut sinks = self.inner.sinks.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sinks.get(name) {
            return Ok(Arc::clone(s));
        }
        let s = Sink::open(
            &self.inner.db,
            name,
            self.inner.epoch,
            self.inner.options.payload_cache_bytes,
            self.inner.options.idempotency_max_keys,
            self.inner.options.span_bytes,
            &self.inner.reaper,
        )?;
        let s = Arc::new(s);
        sinks.insert(name.to_string(), Arc::clone(&s));
        if let Some(p) = &self.inner.prefetcher {
            p.watch(Arc::clone(&s));
        }
        Ok(s)
    }

    fn read_sinks(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Sink>>> {
        self.inner.sinks.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_flush(&self, op: &'static str, sink: Option<&str>) -> Result<()> {
        match self.inner.flusher.wait().await {
            Ok(()) => Ok(()),
            Err(FlushError::Storage(source)) => self.track(Err(QueueError::Storage {
                op,
                sink: sink.map(str::to_string),
                source,
            })),
            Err(FlushError::Stopped) => self.track(Err(QueueError::Stopped)),
        }
    }

    fn check(&self) -> Result<()> {
        if self.inner.stopped.load(Ordering::Acquire) {
            Err(QueueError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Stops the queue on a fatal error.
    fn track<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_fatal() {
                tracing::error!(error = %e, "queue storage failed; refusing further work");
                self.inner.stopped.store(true, Ordering::Release);
            }
        }
        r
    }
}

fn not_found(sink: &str, id: MessageId) -> QueueError {
    QueueError::NotFound {
        sink: sink.to_string(),
        id,
    }
}
