//! [`Queue`]: the durable store, its sinks and every state change.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use s2sink_core::{now_millis, LastError, UnixMillis};
use sled::{Batch, IVec};

use crate::codec::{self, Meta};
use crate::flusher::{FlushError, Flusher};
use crate::keys;
use crate::sink::{Sink, TREE_PREFIX};
use crate::{
    Counts, DeliveryState, DiscardedMessage, Enqueued, GroupRef, ListFilter, MessageId, NewMessage,
    QueueError, QueueOptions, StoredMessage,
};

const MARKERS_TREE: &[u8] = b"markers";

type Result<T> = std::result::Result<T, QueueError>;
type KvIter = Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>>>;

/// The durable per-group queue: one sled database per data directory, several sinks in it.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`. Only [`enqueue`](Queue::enqueue),
/// [`flush`](Queue::flush) and [`put_marker`](Queue::put_marker) wait for the disk and are
/// `async`; every other method only touches sled's in-memory pages and returns in
/// microseconds, so async callers may call them directly from a runtime thread.
///
/// Durability: enqueues and markers are flushed before they return. Acks, failures and the
/// manual operations are atomic but not flushed on their own (the next flush, or sled's own
/// background flush within 500 ms, persists them); after a crash such a change may be lost
/// as a whole, which re-delivers a message that S2 reconciliation then recognises. Call
/// [`flush`](Queue::flush) to make them durable now.
///
/// Once a storage error happened every later call fails with [`QueueError::Stopped`]: nothing
/// continues on an unknown disk state.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so it is dropped first: it flushes what is waiting and joins its thread.
    flusher: Flusher,
    sinks: RwLock<HashMap<String, Arc<Sink>>>,
    markers: sled::Tree,
    db: sled::Db,
    options: QueueOptions,
    stopped: AtomicBool,
}

/// Why a message leaves the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    Delivered,
    Discarded,
}

/// Opens sled, waiting briefly if the directory's lock is still held: when a queue in this
/// process was just dropped, sled's background threads may hold the database for a moment.
/// Another process holding the lock still fails, after about 2 s.
fn open_db(path: &Path, cache_capacity: u64) -> std::result::Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()
        {
            Err(sled::Error::Io(e))
                if tries < 100 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Queue {
    /// Opens (or creates) the queue in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Queue> {
        Queue::open_with(path, QueueOptions::default())
    }

    /// Opens (or creates) the queue in directory `path`. Recovery is sled's: the last flushed
    /// state, each batch all or nothing; the per-sink counters are read, not recomputed.
    pub fn open_with(path: impl AsRef<Path>, options: QueueOptions) -> Result<Queue> {
        let storage = |op| {
            move |source| QueueError::Storage {
                op,
                sink: None,
                source,
            }
        };
        let db = open_db(path.as_ref(), options.cache_capacity).map_err(storage("open"))?;
        let markers = db.open_tree(MARKERS_TREE).map_err(storage("open"))?;
        let mut sinks = HashMap::new();
        for name in db.tree_names() {
            if let Some(sink) = name.strip_prefix(TREE_PREFIX) {
                let sink = String::from_utf8_lossy(sink).into_owned();
                let opened = Sink::open(&db, &sink)?;
                sinks.insert(sink, Arc::new(opened));
            }
        }
        let flusher = Flusher::start(db.clone()).map_err(QueueError::Thread)?;
        Ok(Queue {
            inner: Arc::new(Inner {
                flusher,
                sinks: RwLock::new(sinks),
                markers,
                db,
                options,
                stopped: AtomicBool::new(false),
            }),
        })
    }

    /// Names of the sinks that have stored anything.
    pub fn sinks(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read_sinks().keys().cloned().collect();
        v.sort();
        v
    }

    /// Stores `msgs` for `sink` and returns their ids and groups once they are on disk.
    ///
    /// The whole batch is one atomic sled batch; concurrent calls share one flush (group
    /// commit), so durable throughput grows with the number of producers.
    pub async fn enqueue(&self, sink: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>> {
        self.check()?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.track(self.apply_enqueue(sink, msgs))?;
        self.wait_flush("enqueue", Some(sink)).await?;
        Ok(out)
    }

    fn apply_enqueue(&self, sink: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>> {
        let s = self.sink_or_create(sink)?;
        let now = now_millis();
        let state = DeliveryState::default();
        let mut guard = s.lock();
        let mut meta = *guard;
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let id = MessageId(meta.next_id);
            meta.next_id += 1;
            let group = GroupRef::of(msg.group, id);
            let g = group.encode();
            batch.insert(
                &keys::message(id),
                codec::encode_record(&g, now, &state, &msg.payload),
            );
            batch.insert(keys::group_entry(&g, id), &[][..]);
            out.push(Enqueued { id, group });
        }
        meta.pending += out.len() as u64;
        batch.insert(keys::META, &meta.encode()[..]);
        s.tree.apply_batch(batch).map_err(s.storage("enqueue"))?;
        s.commit(&mut guard, meta);
        Ok(out)
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
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(Vec::new());
        };
        self.track((|| {
            let mut out: Vec<StoredMessage> = Vec::new();
            let mut bytes = 0usize;
            for entry in s.tree.scan_prefix(keys::group_prefix(&group.encode())) {
                let (key, _) = entry.map_err(s.storage("head_run"))?;
                let (_, id) =
                    keys::parse_group_entry(&key).ok_or_else(|| s.corrupt("group index"))?;
                let Some(msg) = self.load(&s, id, "head_run")? else {
                    continue; // removed since the index was read
                };
                if !out.is_empty()
                    && (out.len() >= max_messages || bytes + msg.payload.len() > max_bytes)
                {
                    break;
                }
                bytes += msg.payload.len();
                out.push(msg);
            }
            Ok(out)
        })())
    }

    /// Every group of `sink` that has messages, in stored-key order. One pass over the group
    /// index (keys only, no payloads), keeping the first entry of each group.
    pub fn pending_groups(&self, sink: &str) -> Result<Vec<GroupRef>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(Vec::new());
        };
        self.track((|| {
            let mut out = Vec::new();
            let mut last: Option<IVec> = None;
            for entry in s.tree.scan_prefix([keys::GROUP]) {
                let (key, _) = entry.map_err(s.storage("pending_groups"))?;
                let (g, _) =
                    keys::parse_group_entry(&key).ok_or_else(|| s.corrupt("group index"))?;
                if last.as_deref().is_some_and(|l| l == g) {
                    continue;
                }
                out.push(GroupRef::decode(g).ok_or_else(|| s.corrupt("group key"))?);
                last = Some(IVec::from(g));
            }
            Ok(out)
        })())
    }

    /// Up to `limit` groups with pending messages, in key order, starting after `after`: lets a
    /// caller start work on the first groups of a large backlog before it has listed them all.
    pub fn pending_groups_page(
        &self,
        sink: &str,
        after: Option<&GroupRef>,
        limit: usize,
    ) -> Result<Vec<GroupRef>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(g) => keys::after_group(&keys::group_prefix(&g.encode())),
            None => vec![keys::GROUP],
        };
        self.track((|| {
            let mut out = Vec::new();
            let mut last: Option<IVec> = None;
            for entry in s.tree.range(start..) {
                let (key, _) = entry.map_err(s.storage("pending_groups"))?;
                if key.first() != Some(&keys::GROUP) {
                    break;
                }
                let (g, _) =
                    keys::parse_group_entry(&key).ok_or_else(|| s.corrupt("group index"))?;
                if last.as_deref().is_some_and(|l| l == g) {
                    continue;
                }
                if out.len() == limit {
                    break;
                }
                out.push(GroupRef::decode(g).ok_or_else(|| s.corrupt("group key"))?);
                last = Some(IVec::from(g));
            }
            Ok(out)
        })())
    }

    /// One message with its state.
    pub fn get(&self, sink: &str, id: MessageId) -> Result<Option<StoredMessage>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(None);
        };
        self.track(self.load(&s, id, "get"))
    }

    /// Which of `ids` are still in the queue (not yet acked, acknowledged or discarded).
    /// Cheap: key lookups only, no payload is read.
    pub fn contains(&self, sink: &str, ids: &[MessageId]) -> Result<Vec<bool>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(vec![false; ids.len()]);
        };
        self.track(
            ids.iter()
                .map(|id| {
                    s.tree
                        .contains_key(keys::message(*id))
                        .map_err(s.storage("contains"))
                })
                .collect(),
        )
    }

    /// Removes delivered messages (ids not in the queue are ignored) and counts them as
    /// delivered; returns how many were removed. One atomic batch.
    pub fn ack(&self, sink: &str, ids: &[MessageId]) -> Result<usize> {
        self.remove(sink, ids, Removal::Delivered, "ack")
    }

    /// Manual acknowledge: removes the message as if delivered (unblocking its group).
    /// Returns false if it is not in the queue.
    pub fn acknowledge(&self, sink: &str, id: MessageId) -> Result<bool> {
        Ok(self.remove(sink, &[id], Removal::Delivered, "acknowledge")? == 1)
    }

    /// Removes the message as undeliverable and keeps a copy (with its last error) in the
    /// sink's bounded discarded list. Returns false if it is not in the queue.
    pub fn discard(&self, sink: &str, id: MessageId) -> Result<bool> {
        Ok(self.remove(sink, &[id], Removal::Discarded, "discard")? == 1)
    }

    /// Records a failed attempt: `deliver_count + 1`, the error, the backoff end, and the
    /// attempt time (`error.at_ms`). Returns the new state.
    pub fn fail(
        &self,
        sink: &str,
        id: MessageId,
        error: LastError,
        not_visible_until: UnixMillis,
    ) -> Result<DeliveryState> {
        self.check()?;
        let s = self.sink(sink).ok_or_else(|| not_found(sink, id))?;
        self.track((|| {
            let mut guard = s.lock();
            let mut meta = *guard;
            let mut msg = self
                .load(&s, id, "fail")?
                .ok_or_else(|| not_found(sink, id))?;
            if msg.state.deliver_count == 0 {
                meta.failing += 1;
            }
            msg.state.deliver_count = msg.state.deliver_count.saturating_add(1);
            msg.state.last_attempt_at = Some(error.at_ms);
            msg.state.last_error = Some(error);
            msg.state.not_visible_until = Some(not_visible_until);
            let mut batch = Batch::default();
            batch.insert(&keys::message(id), encode(&msg));
            batch.insert(keys::META, &meta.encode()[..]);
            s.tree.apply_batch(batch).map_err(s.storage("fail"))?;
            s.commit(&mut guard, meta);
            Ok(msg.state)
        })())
    }

    /// Clears the message's backoff so it is retried now (keeps `deliver_count`). Returns
    /// false if it is not in the queue.
    pub fn redeliver(&self, sink: &str, id: MessageId) -> Result<bool> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(false);
        };
        self.track((|| {
            let _guard = s.lock();
            let Some(mut msg) = self.load(&s, id, "redeliver")? else {
                return Ok(false);
            };
            if msg.state.not_visible_until.take().is_some() {
                s.tree
                    .insert(keys::message(id), encode(&msg))
                    .map_err(s.storage("redeliver"))?;
            }
            Ok(true)
        })())
    }

    /// Clears the backoff of every message of the sink; returns how many were backing off.
    /// Scans the sink (a manual, rare operation); one atomic batch.
    pub fn redeliver_all(&self, sink: &str) -> Result<usize> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(0);
        };
        self.track((|| {
            let _guard = s.lock();
            let mut batch = Batch::default();
            let mut n = 0;
            for entry in s.tree.scan_prefix([keys::MESSAGE]) {
                let (key, value) = entry.map_err(s.storage("redeliver_all"))?;
                let id = keys::message_id(&key).ok_or_else(|| s.corrupt("message key"))?;
                let mut msg = decode(&s, id, &value)?;
                if msg.state.not_visible_until.take().is_some() {
                    batch.insert(key, encode(&msg));
                    n += 1;
                }
            }
            if n > 0 {
                s.tree
                    .apply_batch(batch)
                    .map_err(s.storage("redeliver_all"))?;
            }
            Ok(n)
        })())
    }

    /// The newest `limit` discarded messages, newest first.
    pub fn discarded(&self, sink: &str, limit: usize) -> Result<Vec<DiscardedMessage>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(Vec::new());
        };
        self.track(
            s.tree
                .scan_prefix([keys::DISCARDED])
                .rev()
                .take(limit)
                .map(|entry| {
                    let (_, value) = entry.map_err(s.storage("discarded"))?;
                    let (at, id, record) = codec::decode_discarded(&value)
                        .ok_or_else(|| s.corrupt("discarded entry"))?;
                    Ok(DiscardedMessage {
                        message: record.into_message(id),
                        discarded_at: at,
                    })
                })
                .collect(),
        )
    }

    /// A page of the sink's messages matching `filter`, read range by range and stopping at
    /// `filter.limit` (the queue is never loaded whole). `BackingOff` is judged at the
    /// current time.
    pub fn list(&self, sink: &str, filter: &ListFilter) -> Result<Vec<StoredMessage>> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(Vec::new());
        };
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_millis();
        self.track((|| {
            let mut out = Vec::new();
            let mut keep = |msg: StoredMessage| {
                if filter.state.matches(&msg.state, now) {
                    out.push(msg);
                }
                out.len() >= filter.limit
            };
            match &filter.group {
                Some(group) => {
                    let prefix = keys::group_prefix(&group.encode());
                    let g = group.encode();
                    let cursor = |id: MessageId| keys::group_entry(&g, id);
                    let iter = range(
                        &s.tree,
                        prefix.clone(),
                        keys::after_group(&prefix),
                        filter,
                        cursor,
                    );
                    for entry in iter {
                        let (key, _) = entry.map_err(s.storage("list"))?;
                        let (_, id) = keys::parse_group_entry(&key)
                            .ok_or_else(|| s.corrupt("group index"))?;
                        if let Some(msg) = self.load(&s, id, "list")? {
                            if keep(msg) {
                                break;
                            }
                        }
                    }
                }
                None => {
                    let cursor = |id: MessageId| keys::message(id).to_vec();
                    let iter = range(
                        &s.tree,
                        vec![keys::MESSAGE],
                        vec![keys::MESSAGE + 1],
                        filter,
                        cursor,
                    );
                    for entry in iter {
                        let (key, value) = entry.map_err(s.storage("list"))?;
                        let id = keys::message_id(&key).ok_or_else(|| s.corrupt("message key"))?;
                        if keep(decode(&s, id, &value)?) {
                            break;
                        }
                    }
                }
            }
            Ok(out)
        })())
    }

    /// The sink's counters (no scan: they are kept in memory and in every batch).
    pub fn counts(&self, sink: &str) -> Counts {
        match self.sink(sink) {
            Some(s) => {
                let m = *s.lock();
                Counts {
                    pending: m.pending,
                    failing: m.failing,
                    delivered: m.delivered,
                    discarded: m.discarded,
                }
            }
            None => Counts::default(),
        }
    }

    /// Messages queued across all sinks, for the ingest back-pressure limit.
    pub fn total_pending(&self) -> u64 {
        self.read_sinks().values().map(|s| s.pending()).sum()
    }

    /// Waits until every change made before this call is on disk (shares the enqueue flush).
    pub async fn flush(&self) -> Result<()> {
        self.check()?;
        self.wait_flush("flush", None).await
    }

    /// How many disk flushes the queue has done since it was opened: with group commit this
    /// grows much slower than the number of enqueue calls (exported as a metric).
    pub fn flush_count(&self) -> u64 {
        self.inner.flusher.count()
    }

    /// Stores a small durable value for other crates (e.g. a stream's low-water mark) and
    /// returns once it is on disk.
    pub async fn put_marker(&self, name: &str, value: &[u8]) -> Result<()> {
        self.check()?;
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

    /// Bytes sled uses on disk (for monitoring and the disk-growth benchmark).
    pub fn size_on_disk(&self) -> Result<u64> {
        self.check()?;
        self.track(
            self.inner
                .db
                .size_on_disk()
                .map_err(|source| QueueError::Storage {
                    op: "size_on_disk",
                    sink: None,
                    source,
                }),
        )
    }

    fn remove(
        &self,
        sink: &str,
        ids: &[MessageId],
        kind: Removal,
        op: &'static str,
    ) -> Result<usize> {
        self.check()?;
        let Some(s) = self.sink(sink) else {
            return Ok(0);
        };
        self.track((|| {
            let now = now_millis();
            let mut guard = s.lock();
            let mut meta = *guard;
            let mut batch = Batch::default();
            let mut seen = HashSet::with_capacity(ids.len());
            let first_new_discard = meta.discarded;
            let mut removed = 0;
            for &id in ids {
                if !seen.insert(id) {
                    continue;
                }
                let key = keys::message(id);
                let Some(bytes) = s.tree.get(key).map_err(s.storage(op))? else {
                    continue;
                };
                let (group, deliver_count) =
                    codec::peek_group(&bytes).ok_or_else(|| s.corrupt(format!("message {id}")))?;
                batch.remove(&key);
                batch.remove(keys::group_entry(group, id));
                meta.pending = meta.pending.saturating_sub(1);
                if deliver_count > 0 {
                    meta.failing = meta.failing.saturating_sub(1);
                }
                match kind {
                    Removal::Delivered => meta.delivered += 1,
                    Removal::Discarded => {
                        batch.insert(
                            &keys::discarded(meta.discarded),
                            codec::encode_discarded(now, id, &bytes),
                        );
                        meta.discarded += 1;
                        meta.discarded_len += 1;
                    }
                }
                removed += 1;
            }
            if removed == 0 {
                return Ok(0);
            }
            if kind == Removal::Discarded {
                self.trim_discarded(&s, &mut meta, &mut batch, first_new_discard)?;
            }
            batch.insert(keys::META, &meta.encode()[..]);
            s.tree.apply_batch(batch).map_err(s.storage(op))?;
            s.commit(&mut guard, meta);
            Ok(removed)
        })())
    }

    /// Drops the oldest discarded entries beyond the cap: stored ones first, then (if the cap
    /// is smaller than this batch) the oldest of the ones this batch adds.
    fn trim_discarded(
        &self,
        s: &Sink,
        meta: &mut Meta,
        batch: &mut Batch,
        first_new: u64,
    ) -> Result<()> {
        let cap = self.inner.options.discarded_cap as u64;
        let mut excess = meta.discarded_len.saturating_sub(cap);
        for entry in s.tree.scan_prefix([keys::DISCARDED]) {
            if excess == 0 {
                break;
            }
            let (key, _) = entry.map_err(s.storage("discard"))?;
            batch.remove(key);
            excess -= 1;
            meta.discarded_len -= 1;
        }
        let mut seq = first_new;
        while excess > 0 && seq < meta.discarded {
            batch.remove(&keys::discarded(seq));
            seq += 1;
            excess -= 1;
            meta.discarded_len -= 1;
        }
        Ok(())
    }

    fn load(&self, s: &Sink, id: MessageId, op: &'static str) -> Result<Option<StoredMessage>> {
        match s.tree.get(keys::message(id)).map_err(s.storage(op))? {
            Some(bytes) => Ok(Some(decode(s, id, &bytes)?)),
            None => Ok(None),
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
        let s = Arc::new(Sink::open(&self.inner.db, name)?);
        sinks.insert(name.to_string(), Arc::clone(&s));
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

fn encode(msg: &StoredMessage) -> Vec<u8> {
    codec::encode_record(
        &msg.group.encode(),
        msg.enqueued_at,
        &msg.state,
        &msg.payload,
    )
}

fn decode(s: &Sink, id: MessageId, bytes: &[u8]) -> Result<StoredMessage> {
    codec::decode_record(bytes)
        .map(|r| r.into_message(id))
        .ok_or_else(|| s.corrupt(format!("message {id}")))
}

/// The key range `[lo, hi)` narrowed by the filter's cursor and walked in its direction.
fn range(
    tree: &sled::Tree,
    lo: Vec<u8>,
    hi: Vec<u8>,
    filter: &ListFilter,
    cursor: impl Fn(MessageId) -> Vec<u8>,
) -> KvIter {
    if filter.newest_first {
        let hi = filter.after.map_or(hi, &cursor);
        Box::new(
            tree.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi)))
                .rev(),
        )
    } else {
        let lo = match filter.after {
            Some(a) => Bound::Excluded(cursor(a)),
            None => Bound::Included(lo),
        };
        Box::new(tree.range::<Vec<u8>, _>((lo, Bound::Excluded(hi))))
    }
}
