//! One sink: its sled tree and its in-memory [`Index`], changed together under one lock so
//! that every state change is one atomic sled batch mirrored exactly in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use s2sink_core::{now_millis, LastError, UnixMillis};
use sled::Batch;

use crate::bodies::{Bodies, Reaper};
use crate::chunk;
use crate::codec::{self, Meta, Record};
use crate::idem::{self, IdemKey, Keys, LoadError, RequestRecord, Staged, Value as IdemValue};
use crate::index::{Chunk, Failed, Index, Msg, Place, SOLO};
use crate::keys;
use crate::parts::{self, ScanError};
use crate::{
    Accepted, Counts, DeliveryId, DeliveryState, DiscardedMessage, Enqueued, GroupRef, Idempotency,
    ListFilter, MessageId, NewMessage, QueueError, SourcePosition, StateFilter, StoredMessage,
};

/// Prefix of the sled tree names that hold sinks.
pub const TREE_PREFIX: &[u8] = b"sink/";

type Result<T> = std::result::Result<T, QueueError>;

/// Why a message leaves the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Delivered, written in the same batch (manual acknowledge).
    Delivered,
    /// Delivered, its bitmap write deferred to the sink's next batch or
    /// [`Sink::persist_acks`] (acks of S2 appends: many appends touch the same chunks).
    Acked,
    Discarded,
}

/// What [`Sink::enqueue_keyed`] did.
pub enum Keyed {
    /// The request key was accepted before for the same request: its original answer.
    Replayed(Vec<Accepted>),
    /// Per message its id and whether it was a duplicate; the messages stored and the first
    /// id to publish (none when every message was a duplicate).
    Stored {
        accepted: Vec<Accepted>,
        stored: Vec<Enqueued>,
        first: Option<u64>,
    },
}

/// How many times the payload bytes a head run returns it may read from sled for chunk bodies
/// that are not cached (its first message is always served).
const READ_AMPLIFICATION: usize = 4;

/// Chunk bodies one head run reads from sled at most (its first message is always served).
/// A run is read on an engine thread: right after a restart, with nothing cached and a
/// group's messages spread over a hundred chunks, one unbounded read took 15–70 ms and a
/// few hundred of them delayed the stream writers on the same thread (and the first append)
/// by most of a second. The chunks read stay cached for the groups that read next.
const MAX_CHUNK_READS: usize = 8;

/// What a paced head run found ([`Queue::head_run_paced`](crate::Queue::head_run_paced)).
#[derive(Debug)]
pub enum Paced {
    /// The run (empty: the group has nothing pending).
    Run(Vec<StoredMessage>),
    /// The group's head is in the chunk with this first id, which the read-ahead has not
    /// cached yet: come back once its frontier has passed it.
    Wait(u64),
}

/// What one [`Sink::prefetch`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Prefetched {
    /// Read one chunk body into the cache (there may be more to read).
    Loaded,
    /// The oldest uncached body does not fit: the cache holds older ones.
    Full,
    /// Every live chunk's body is cached.
    Idle,
}

/// A chunk body a head run would read from sled for one message.
struct BodyRead {
    bytes: usize,
    /// The cache keeps it (an older chunk: the delivery frontier, which serves other groups
    /// too); otherwise it is read and dropped.
    kept: bool,
}

/// A live message's chunk: what reading its payload and stamping its origin need.
#[derive(Clone, Copy)]
struct ChunkLoc {
    first: u64,
    body_parts: u16,
    body_len: u32,
    epoch: u64,
    enqueued_at: UnixMillis,
}

/// What the sink's lock protects.
pub struct State {
    pub meta: Meta,
    pub index: Index,
    /// Chunks changed by deferred acks ([`Removal::Acked`]) and not yet written: `None` =
    /// write its bitmap, `Some((head_parts, body_parts))` = it ended, remove its keys. Every
    /// batch of the sink that settles chunks writes them all, so what is on disk is always
    /// the in-memory acks as of some moment (a group's later message is never gone while an
    /// earlier one is back after a crash).
    pub unwritten: BTreeMap<u64, Option<(u16, u16)>>,
    /// The totals changed by deferred acks and are not yet written.
    pub totals_unwritten: bool,
    /// Chunks whose removal is in the batch being built: their spans learn of it once the
    /// batch is applied ([`Sink::apply_settled`]).
    pub ended: Vec<u64>,
    /// Every live chunk below this id has its body cached (or is too large for the cache):
    /// where [`Sink::prefetch`] starts looking. It stays true because the cache only ever
    /// evicts bodies newer than the one it takes in.
    pub prefetch_from: u64,
}

/// A sink's storage.
pub struct Sink {
    pub name: String,
    pub tree: sled::Tree,
    /// The span trees of its chunk bodies.
    bodies: Bodies,
    state: Mutex<State>,
    /// Held by an enqueue from reserving its ids until its index entries are in: batches are
    /// applied in id order. It guards the idempotency records, so their check-and-insert is
    /// atomic against concurrent enqueues.
    enqueue_order: Mutex<Keys>,
    /// Mirror of the pending count for lock-free totals across sinks.
    pending: AtomicU64,
}

impl Sink {
    /// Opens (or creates) the tree of sink `name`, rebuilds its index from one pass over the
    /// chunk headers and failed records, and stamps the new epoch into its meta.
    /// Loads its idempotency records, removing expired ones and the oldest beyond `key_cap`.
    pub fn open(
        db: &sled::Db,
        name: &str,
        epoch: u64,
        cache_bytes: usize,
        key_cap: usize,
        span_bytes: u64,
        reaper: &Reaper,
    ) -> Result<Sink> {
        let storage = |source| QueueError::Storage {
            op: "open sink",
            sink: Some(name.to_string()),
            source,
        };
        let mut tree_name = TREE_PREFIX.to_vec();
        tree_name.extend_from_slice(name.as_bytes());
        let tree = db.open_tree(tree_name).map_err(storage)?;
        let corrupt = |what: &str| QueueError::Corrupt {
            sink: name.to_string(),
            what: what.to_string(),
        };
        // Chunks written before spans existed keep their bodies in this tree: all below the
        // next id of the first open by a version with spans.
        let mut batch = Batch::default();
        let spans_from = match tree.get(keys::SPANS_FROM).map_err(storage)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("first span id"))?,
            ),
            None => {
                let ids = tree.get(keys::META).map_err(storage)?;
                let next = Meta::decode(ids.as_deref(), None)
                    .ok_or_else(|| corrupt("meta record"))?
                    .next_id;
                batch.insert(keys::SPANS_FROM, &next.to_be_bytes()[..]);
                next
            }
        };
        let bodies = Bodies::open(db, name, tree.clone(), spans_from, span_bytes, reaper)
            .map_err(storage)?;
        let sink = Sink {
            name: name.to_string(),
            tree,
            bodies,
            state: Mutex::new(State {
                meta: Meta::new(epoch),
                index: Index::new(cache_bytes),
                unwritten: BTreeMap::new(),
                totals_unwritten: false,
                ended: Vec::new(),
                prefetch_from: 0,
            }),
            enqueue_order: Mutex::new(Keys::new(key_cap)),
            pending: AtomicU64::new(0),
        };
        let state = sink.rebuild(epoch, cache_bytes)?;
        for (&first, c) in &state.index.chunks {
            if c.live > 0 {
                sink.bodies.count_live(first);
            }
        }
        sink.bodies.opened();
        let loaded =
            Keys::load(&sink.tree, key_cap, now_millis(), &mut batch).map_err(|e| match e {
                LoadError::Storage(source) => QueueError::Storage {
                    op: "open sink",
                    sink: Some(name.to_string()),
                    source,
                },
                LoadError::Corrupt(seq) => sink.corrupt(format!("idempotency record {seq}")),
            })?;
        batch.insert(keys::META, &state.meta.encode_ids()[..]);
        sink.apply(batch, "open sink")?;
        *sink.order() = loaded;
        sink.pending
            .store(state.index.msgs.len() as u64, Ordering::Relaxed);
        *sink.lock() = state;
        Ok(sink)
    }

    fn rebuild(&self, epoch: u64, cache_bytes: usize) -> Result<State> {
        let op = "open sink";
        let ids = self.tree.get(keys::META).map_err(self.storage(op))?;
        let totals = self.tree.get(keys::TOTALS).map_err(self.storage(op))?;
        let meta = Meta {
            epoch,
            ..Meta::decode(ids.as_deref(), totals.as_deref())
                .ok_or_else(|| self.corrupt("meta record"))?
        };
        let mut index = Index::new(cache_bytes);
        let mut bitmaps: HashMap<u64, Vec<u8>> = HashMap::new();
        for kv in self.tree.scan_prefix([keys::DONE]) {
            let (k, v) = kv.map_err(self.storage(op))?;
            let first = keys::parse_base(&k).ok_or_else(|| self.corrupt("bitmap key"))?;
            bitmaps.insert(first, v.to_vec());
        }
        // Every pending message as (id, entry), built in id order from the chunks (their keys
        // sort by first id) and bulk-loaded at the end: one sorted build instead of 1M map
        // inserts and lookups. Each group's encoded key is decoded and interned once (`slots`),
        // not once per message.
        let mut entries: Vec<(u64, Msg)> = Vec::new();
        let mut slots: HashMap<Box<[u8]>, u32> = HashMap::new();
        for item in parts::scan(&self.tree, keys::HEAD) {
            let (first, head_parts, bytes) = item.map_err(|e| self.scan_error(e, "chunk"))?;
            let head =
                codec::decode_head(&bytes).ok_or_else(|| self.corrupt(format!("chunk {first}")))?;
            let count = head.entries.len();
            let done = match bitmaps.remove(&first) {
                Some(b) => codec::decode_bitmap(&b, count)
                    .ok_or_else(|| self.corrupt(format!("bitmap of chunk {first}")))?,
                None => vec![0; count.div_ceil(64)],
            };
            let body_len: u64 = head.entries.iter().map(|(_, l)| *l as u64).sum();
            let mut chunk = Chunk {
                epoch: head.epoch,
                enqueued_at: head.enqueued_at,
                count: count as u32,
                live: count as u32,
                done,
                head_parts,
                body_parts: parts::count(body_len as usize),
                body_len: body_len as u32,
            };
            let mut off = 0u32;
            for (i, (group, len)) in head.entries.iter().enumerate() {
                if chunk.is_done(i) {
                    chunk.live -= 1;
                } else {
                    let slot = match slots.get(*group) {
                        Some(&slot) => index.groups.bump(slot),
                        None => {
                            let g = GroupRef::decode(group)
                                .ok_or_else(|| self.corrupt(format!("group in chunk {first}")))?;
                            let slot = index.groups.add_ref(&g);
                            if slot != SOLO {
                                slots.insert((*group).into(), slot);
                            }
                            slot
                        }
                    };
                    entries.push((first + i as u64, Msg::stored(slot, off, *len)));
                }
                off += len;
            }
            index.chunks.insert(first, chunk);
        }
        drop(slots);
        let chunked = entries.len();
        for item in parts::scan(&self.tree, keys::STATE) {
            let (id, state_parts, bytes) = item.map_err(|e| self.scan_error(e, "failed state"))?;
            let (record, _) = codec::decode_record(&bytes)
                .ok_or_else(|| self.corrupt(format!("failed message {id}")))?;
            let slot = index.groups.add_ref(&record.group);
            let mut m = Msg::stored(slot, 0, record.payload_len);
            m.failed = true;
            entries.push((id, m));
            index.failed.insert(
                id,
                Failed {
                    record,
                    state_parts,
                },
            );
        }
        if entries.len() > chunked {
            // Failed messages interleave with the chunks' ids.
            entries.sort_unstable_by_key(|(id, _)| *id);
        }
        index.load_published(entries);
        for (seq, parts) in parts::ids(&self.tree, keys::DISCARDED).map_err(self.storage(op))? {
            index.discarded.push_back((seq, parts));
        }
        Ok(State {
            meta,
            index,
            unwritten: BTreeMap::new(),
            totals_unwritten: false,
            ended: Vec::new(),
            prefetch_from: 0,
        })
    }

    /// Locks the sink's state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many span trees hold this sink's chunk bodies.
    pub fn body_spans(&self) -> usize {
        self.bodies.span_count()
    }

    /// Messages in the queue.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn sync_pending(&self, st: &State) {
        self.pending
            .store(st.index.msgs.len() as u64, Ordering::Relaxed);
    }

    /// A wrapper for sled errors of this sink.
    pub fn storage(&self, op: &'static str) -> impl Fn(sled::Error) -> QueueError + '_ {
        move |source| QueueError::Storage {
            op,
            sink: Some(self.name.clone()),
            source,
        }
    }

    /// A corrupt-record error for this sink.
    pub fn corrupt(&self, what: impl Into<String>) -> QueueError {
        QueueError::Corrupt {
            sink: self.name.clone(),
            what: what.into(),
        }
    }

    fn scan_error(&self, e: ScanError, what: &str) -> QueueError {
        match e {
            ScanError::Storage(source) => QueueError::Storage {
                op: "open sink",
                sink: Some(self.name.clone()),
                source,
            },
            ScanError::Corrupt => self.corrupt(format!("{what} key")),
        }
    }

    fn apply(&self, batch: Batch, op: &'static str) -> Result<()> {
        self.tree.apply_batch(batch).map_err(self.storage(op))
    }

    /// Applies a batch built with [`Sink::settle_chunks`] or [`Sink::write_unwritten`], then
    /// lets the spans of the chunks it removed go (never before: a span is dropped only once
    /// no header on disk points into it).
    fn apply_settled(&self, st: &mut State, batch: Batch, op: &'static str) -> Result<()> {
        let ended = std::mem::take(&mut st.ended);
        self.apply(batch, op)?;
        self.bodies.release(&ended);
        Ok(())
    }

    // ---- enqueue and publish ----

    /// Stores `msgs` as chunks in one batch (not yet visible to delivery). Returns their ids
    /// and the first id, to pass to [`Sink::publish`] once the batch is durable.
    pub fn enqueue(&self, msgs: Vec<NewMessage>, now: UnixMillis) -> Result<(Vec<Enqueued>, u64)> {
        // Chunk boundaries and bodies depend only on sizes: built before taking the lock, so
        // delivery (which reads under the same lock) waits only for ids, headers and the apply.
        self.enqueue_at(msgs, None, now)
            .map(|(out, first)| (out, first.unwrap_or(0)))
    }

    /// [`Sink::enqueue`] that also writes a source's position (see
    /// [`Queue::enqueue_at`](crate::Queue::enqueue_at)) in the same batch, so a crash keeps
    /// both or neither. `msgs` may be empty (only the position moves); the first id is then
    /// `None`: nothing to publish.
    pub fn enqueue_at(
        &self,
        msgs: Vec<NewMessage>,
        position: Option<SourcePosition<'_>>,
        now: UnixMillis,
    ) -> Result<(Vec<Enqueued>, Option<u64>)> {
        // Chunk boundaries and bodies depend only on sizes: built before taking the lock, so
        // delivery (which reads under the same lock) waits only for ids, headers and the apply.
        let spans = Self::spans(&msgs);
        let mut batch = Batch::default();
        if let Some(p) = position {
            batch.insert(keys::position(p.source), p.value);
        }
        let _order = self.order();
        if msgs.is_empty() {
            self.apply(batch, "enqueue")?;
            return Ok((Vec::new(), None));
        }
        let (out, first, ()) = self.store(msgs, spans, now, batch, |_, _| ())?;
        Ok((out, Some(first)))
    }

    /// The position last stored for `source` by [`Sink::enqueue_at`].
    pub fn position(&self, source: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(keys::position(source))
            .map_err(self.storage("position"))?
            .map(|v| v.to_vec()))
    }

    /// [`Sink::enqueue`] with idempotency: the request key and the messages' keys are checked
    /// and recorded under the enqueue order lock, so two concurrent enqueues of one key store
    /// one message; the records go into the same batch as the messages they name.
    pub fn enqueue_keyed(
        &self,
        msgs: Vec<NewMessage>,
        idem: &Idempotency,
        now: UnixMillis,
    ) -> Result<Keyed> {
        // Built before the lock, as in `enqueue`; rebuilt under it only when duplicates were
        // dropped (retries are the rare case).
        let n_in = msgs.len();
        let mut spans = Some(Self::spans(&msgs));
        let mut keys = self.order();
        let expires_at = now.saturating_add(idem.window.as_millis().min(u64::MAX as u128) as u64);
        if let Some(r) = &idem.request {
            if let Some(value) = keys.live(&IdemKey::request(&r.key), now) {
                return match value {
                    IdemValue::Request(rec) if rec.fingerprint == r.fingerprint => {
                        Ok(Keyed::Replayed(idem::expand(&rec.runs)))
                    }
                    _ => Err(QueueError::IdempotencyConflict {
                        sink: self.name.clone(),
                        key: r.key.clone(),
                    }),
                };
            }
        }
        enum Slot {
            New(usize),
            Dup(MessageId),
            DupOfNew(usize),
        }
        let mut slots = Vec::with_capacity(msgs.len());
        let mut fresh: HashMap<Arc<str>, usize> = HashMap::new();
        let mut new_keys: Vec<Option<Arc<str>>> = Vec::with_capacity(msgs.len());
        let mut new_msgs = Vec::with_capacity(msgs.len());
        for m in msgs {
            if let Some(k) = m.idempotency_key.as_deref() {
                if let Some(&j) = fresh.get(k) {
                    slots.push(Slot::DupOfNew(j));
                    continue;
                }
                let key: Arc<str> = k.into();
                if let Some(IdemValue::Message(id)) = keys.live(&IdemKey::Message(key.clone()), now)
                {
                    slots.push(Slot::Dup(*id));
                    continue;
                }
                fresh.insert(key.clone(), new_msgs.len());
                new_keys.push(Some(key));
            } else {
                new_keys.push(None);
            }
            slots.push(Slot::New(new_msgs.len()));
            new_msgs.push(m);
        }
        let mut batch = Batch::default();
        let mut staged = Staged::default();
        let incoming = fresh.len() + idem.request.is_some() as usize;
        keys.prune(&mut batch, &mut staged, now, incoming);
        let record = |keys: &mut Keys, batch: &mut Batch, staged: &mut Staged, first: u64| {
            let accepted: Vec<Accepted> = slots
                .iter()
                .map(|slot| match *slot {
                    Slot::New(j) => Accepted {
                        id: MessageId(first + j as u64),
                        duplicate: false,
                    },
                    Slot::Dup(id) => Accepted {
                        id,
                        duplicate: true,
                    },
                    Slot::DupOfNew(j) => Accepted {
                        id: MessageId(first + j as u64),
                        duplicate: true,
                    },
                })
                .collect();
            let messages = new_keys
                .into_iter()
                .enumerate()
                .filter_map(|(j, key)| Some((key?, MessageId(first + j as u64))))
                .collect();
            let request = idem.request.as_ref().map(|r| {
                let rec = RequestRecord {
                    fingerprint: r.fingerprint,
                    runs: idem::runs_of(&accepted),
                };
                (r.key.as_str(), rec)
            });
            keys.record(batch, staged, now, expires_at, request, messages);
            accepted
        };
        let out = if new_msgs.is_empty() {
            // Only duplicates: nothing to store but the request's record and the pruning.
            let accepted = record(&mut keys, &mut batch, &mut staged, 0);
            if !staged.is_empty() {
                self.apply(batch, "enqueue")?;
            }
            Keyed::Stored {
                accepted,
                stored: Vec::new(),
                first: None,
            }
        } else {
            let spans = match spans.take() {
                Some(spans) if new_msgs.len() == n_in => spans,
                _ => Self::spans(&new_msgs),
            };
            let keys = &mut *keys;
            let staged = &mut staged;
            let (stored, first, accepted) =
                self.store(new_msgs, spans, now, batch, |batch, first| {
                    record(keys, batch, staged, first)
                })?;
            Keyed::Stored {
                accepted,
                stored,
                first: Some(first),
            }
        };
        keys.commit(staged);
        Ok(out)
    }

    /// How many idempotency records the sink keeps in memory (and on disk).
    pub fn idempotency_keys(&self) -> usize {
        self.order().len()
    }

    fn order(&self) -> MutexGuard<'_, Keys> {
        self.enqueue_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunk boundaries and bodies of `msgs`.
    fn spans(msgs: &[NewMessage]) -> Vec<(usize, usize, chunk::Body)> {
        let mut spans = Vec::new();
        let mut start = 0;
        while start < msgs.len() {
            let end = chunk::end(|i| msgs[i].payload.len(), start, msgs.len());
            let body = chunk::body(msgs[start..end].iter().map(|m| &m.payload[..]));
            spans.push((start, end, body));
            start = end;
        }
        spans
    }

    /// Reserves ids for `msgs` (not empty), writes their chunks, `extra`'s records (given the
    /// first id) and the meta into `batch`, applies it and records the chunks in the index.
    /// The caller holds the enqueue order lock.
    fn store<R>(
        &self,
        mut msgs: Vec<NewMessage>,
        spans: Vec<(usize, usize, chunk::Body)>,
        now: UnixMillis,
        mut batch: Batch,
        extra: impl FnOnce(&mut Batch, u64) -> R,
    ) -> Result<(Vec<Enqueued>, u64, R)> {
        // Enqueues apply one at a time, in id order (publishing relies on it), but hold the
        // index lock only to reserve ids and to record what they stored: never during sled's
        // apply, so delivery and acks are not stuck behind a large ingest.
        let n = msgs.len() as u64;
        let (first_id, epoch) = {
            let mut st = self.lock();
            let first = st.meta.next_id;
            st.meta.next_id += n;
            (first, st.meta.epoch)
        };
        let end_id = first_id + n;
        let mut groups: Vec<GroupRef> = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter_mut().enumerate() {
            // Moved, not cloned: only the payloads are read from here on.
            groups.push(GroupRef::of(m.group.take(), MessageId(first_id + i as u64)));
        }
        // Every group's encoding in one buffer (`ends[i]`: where message i's ends), not an
        // allocation per message.
        let mut encoded = Vec::with_capacity(groups.iter().map(GroupRef::encoded_len).sum());
        let ends: Vec<usize> = groups
            .iter()
            .map(|g| {
                g.encode_into(&mut encoded);
                encoded.len()
            })
            .collect();
        let encoded_group = |i: usize| &encoded[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
        let mut chunks = Vec::with_capacity(spans.len());
        for (start, end, body) in spans {
            let first = first_id + start as u64;
            let entries: Vec<(&[u8], u32)> = (start..end)
                .map(|i| (encoded_group(i), msgs[i].payload.len() as u32))
                .collect();
            let head_parts = chunk::put_head(&mut batch, first, epoch, now, &entries);
            let body_parts = parts::count(body.shared.len());
            let count = end - start;
            let info = Chunk {
                epoch,
                enqueued_at: now,
                count: count as u32,
                live: count as u32,
                done: vec![0; count.div_ceil(64)],
                head_parts,
                body_parts,
                body_len: entries.iter().map(|(_, l)| *l).sum(),
            };
            chunks.push((first, info, body));
        }
        let ids_meta = Meta {
            next_id: end_id,
            epoch,
            ..Meta::default()
        };
        batch.insert(keys::META, &ids_meta.encode_ids()[..]);
        let extra = extra(&mut batch, first_id);
        let bodies: Vec<(u64, &chunk::Body)> = chunks.iter().map(|(f, _, b)| (*f, b)).collect();
        self.bodies
            .write_with(&bodies, &batch)
            .map_err(self.storage("enqueue"))?;
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut out = Vec::with_capacity(msgs.len());
        for (first, info, body) in chunks {
            st.index.chunks.insert(first, info);
            st.index.cache.offer(first, body.shared);
        }
        let mut off = 0u32;
        for (i, (m, group)) in msgs.into_iter().zip(groups).enumerate() {
            let id = first_id + i as u64;
            if st.index.chunks.contains_key(&id) {
                off = 0; // a new chunk starts here
            }
            let len = m.payload.len() as u32;
            st.index.insert(id, &group, off, len, false);
            off += len;
            out.push(Enqueued {
                id: MessageId(id),
                group,
            });
        }
        st.index.unpublished.push_back((first_id, end_id));
        self.sync_pending(st);
        Ok((out, first_id, extra))
    }

    /// Makes the enqueue starting at `first` (and every earlier one) visible to delivery.
    /// Called once its batch is durable; earlier batches are then durable too.
    pub fn publish(&self, first: u64) {
        self.lock().index.publish_through(first);
    }

    // ---- reads ----

    /// Where message `id`'s payload is: its chunk (`None` for a failed message, which has
    /// its own keys). Looked up once per message and handed on, so a head run finds each
    /// message's chunk once.
    fn locate(&self, st: &State, id: u64, m: &Msg) -> Result<Option<ChunkLoc>> {
        if m.failed {
            return Ok(None);
        }
        let (first, c) = st
            .index
            .chunk_of(id)
            .ok_or_else(|| self.corrupt(format!("chunk of message {id}")))?;
        Ok(Some(ChunkLoc {
            first,
            body_parts: c.body_parts,
            body_len: c.body_len,
            epoch: c.epoch,
            enqueued_at: c.enqueued_at,
        }))
    }

    /// The payload of a stored message: from its chunk's body (cached, else read once and
    /// cached while the budget allows), or a failed message's own key.
    fn payload(&self, st: &mut State, id: u64, m: Msg, loc: Option<ChunkLoc>) -> Result<Bytes> {
        let Some(loc) = loc else {
            return parts::get(
                &self.tree,
                &keys::base(keys::FAILED, id),
                parts::count(m.len as usize),
            )
            .map_err(self.storage("read"))?
            .ok_or_else(|| self.corrupt(format!("payload of failed message {id}")));
        };
        let first = loc.first;
        let (off, len) = (m.off as usize, m.len as usize);
        let corrupt = || self.corrupt(format!("body of chunk {first}"));
        // Copies, not slices: a message held by delivery (a group's run, a writer's batch)
        // must not pin its chunk's body beyond the cache's budget.
        if let Some(body) = st.index.cache.get(first) {
            return body.copy(off, len).ok_or_else(corrupt);
        }
        // A body the cache will not keep: only the values holding this message, when the
        // layout allows (see `Bodies::read_range`).
        if !st.index.cache.would_keep(first, loc.body_len as usize) {
            let range = self
                .bodies
                .read_range(first, off, len)
                .map_err(self.storage("read"))?;
            if let Some(payload) = range {
                return Ok(payload);
            }
        }
        let body = self
            .bodies
            .read(first, loc.body_parts)
            .map_err(self.storage("read"))?
            .ok_or_else(corrupt)?;
        let payload = body.copy(off, len).ok_or_else(corrupt)?;
        st.index.cache.offer(first, body);
        Ok(payload)
    }

    /// The payload of stored message `id` (`m`), located on the way (moving it out of its
    /// chunk: a failure, a discard).
    fn payload_of(&self, st: &mut State, id: u64, m: Msg) -> Result<Bytes> {
        let loc = self.locate(st, id, &m)?;
        self.payload(st, id, m, loc)
    }

    /// Stored message `id` with its state, if it is published.
    fn stored(&self, st: &mut State, id: u64) -> Result<Option<StoredMessage>> {
        let Some(&m) = st.index.msgs.get(id) else {
            return Ok(None);
        };
        if !m.published {
            return Ok(None);
        }
        let loc = self.locate(st, id, &m)?;
        self.message(st, id, m, loc).map(Some)
    }

    /// Message `id` (`m`, located at `loc`) as delivery and the API see it.
    fn message(
        &self,
        st: &mut State,
        id: u64,
        m: Msg,
        loc: Option<ChunkLoc>,
    ) -> Result<StoredMessage> {
        let payload = self.payload(st, id, m, loc)?;
        let (epoch, enqueued_at) = match loc {
            Some(l) => (l.epoch, l.enqueued_at),
            None => st.index.origin(id, &m),
        };
        let state = match st.index.failed.get(&id) {
            Some(f) => f.record.state.clone(),
            None => DeliveryState::default(),
        };
        Ok(StoredMessage {
            id: MessageId(id),
            epoch,
            group: st.index.group_of(id, &m),
            payload,
            enqueued_at,
            state,
        })
    }

    /// See [`Queue::get`](crate::Queue::get).
    pub fn get(&self, id: MessageId) -> Result<Option<StoredMessage>> {
        let mut st = self.lock();
        self.stored(&mut st, id.0)
    }

    /// The published ids of a group, in order.
    fn group_ids(st: &State, group: &GroupRef) -> Vec<u64> {
        Self::ids_of(st, group).collect()
    }

    /// The ids of `group`'s queued messages, oldest first (at most one for a solo message).
    fn ids_of<'a>(st: &'a State, group: &GroupRef) -> Box<dyn Iterator<Item = u64> + 'a> {
        match group.solo() {
            Some(id) => Box::new(st.index.solos.get(&id.0).copied().into_iter()),
            None => match st.index.groups.lookup(group) {
                Some(slot) => Box::new(st.index.groups.ids(slot).iter().copied()),
                None => Box::new(std::iter::empty()),
            },
        }
    }

    /// The ids of `group` after `after` (all of them for `None`), oldest first: a binary
    /// search in the group's ordered ids, not a walk from the head.
    fn ids_after<'a>(
        st: &'a State,
        group: &GroupRef,
        after: Option<u64>,
    ) -> Box<dyn Iterator<Item = u64> + 'a> {
        let Some(after) = after else {
            return Self::ids_of(st, group);
        };
        match group.solo() {
            Some(_) => Box::new(Self::ids_of(st, group).filter(move |id| *id > after)),
            None => match st.index.groups.lookup(group) {
                Some(slot) => {
                    let ids = st.index.groups.ids(slot);
                    let from = ids.partition_point(|id| *id <= after);
                    Box::new(ids.range(from..).copied())
                }
                None => Box::new(std::iter::empty()),
            },
        }
    }

    /// Reads the body of the oldest live chunk the cache does not hold, whole and outside the
    /// lock, and offers it to the cache (see [`crate::prefetch`]).
    pub fn prefetch(&self) -> Result<Prefetched> {
        let (first, body_parts) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let cache = &st.index.cache;
            let mut next = None;
            let mut seen = st.prefetch_from;
            for (&first, c) in st.index.chunks.range(st.prefetch_from..) {
                let len = c.body_len as usize;
                if cache.get(first).is_none() && len <= cache.cap() {
                    next = Some((first, c.body_parts, len));
                    break;
                }
                seen = first + 1;
            }
            st.prefetch_from = seen;
            let Some((first, body_parts, len)) = next else {
                return Ok(Prefetched::Idle);
            };
            if !cache.would_keep(first, len) {
                return Ok(Prefetched::Full);
            }
            (first, body_parts)
        };
        let body = self
            .bodies
            .read(first, body_parts)
            .map_err(self.storage("read"))?;
        let mut st = self.lock();
        // Its chunk may have ended meanwhile (its span maybe dropped: no body).
        if let Some(body) = body {
            if st.index.chunks.contains_key(&first) {
                st.index.cache.offer(first, body);
            }
        }
        Ok(Prefetched::Loaded)
    }

    /// See [`Queue::head_run`](crate::Queue::head_run).
    pub fn head_run(
        &self,
        group: &GroupRef,
        after: Option<MessageId>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        match self.head_run_paced(group, after, max_messages, max_bytes, false)? {
            Paced::Run(v) => Ok(v),
            Paced::Wait(_) => Ok(Vec::new()),
        }
    }

    /// See [`Queue::head_run_paced`](crate::Queue::head_run_paced).
    pub fn head_run_paced(
        &self,
        group: &GroupRef,
        after: Option<MessageId>,
        max_messages: usize,
        max_bytes: usize,
        pace: bool,
    ) -> Result<Paced> {
        let mut guard = self.lock();
        let st = &mut *guard;
        // Only the ids first (a copy out of the group's list): each message is looked up as
        // the run reaches it, since a run often stops long before `max_messages` (the read
        // rule below), and looking up a group's whole backlog per run was a third of a
        // restart drain's CPU (cache misses in the 1M-entry message map).
        let ids: Vec<u64> = Self::ids_after(st, group, after.map(|a| a.0))
            .take(max_messages.max(1))
            .collect();
        // Not sized for the ids: a run that stops early (below) would keep the room for every
        // message it might have read, and a group holds its runs for as long as they are in
        // flight — 10k groups after a restart held ~130 MB of empty room that way.
        let mut out = Vec::new();
        // Bytes read from sled for this run and not kept by the cache, and payload bytes
        // returned: a group whose messages are spread over many chunks the cache will not
        // keep (many interleaved groups, a backlog larger than the cache) reads the span
        // values holding each message (a whole body in the older layout) and drops them.
        // The run stops before such a read that would take more than `READ_AMPLIFICATION`
        // times what it returns; the next run goes on from there. Reads the cache keeps
        // (older chunks: the delivery frontier) serve other groups too and are not limited by
        // that rule; any run reads at most `MAX_CHUNK_READS` bodies from sled.
        let (mut bytes, mut unkept, mut got, mut reads) = (0usize, 0usize, 0usize, 0usize);
        for id in ids {
            let m = *st.index.msgs.get(id).expect("a listed id is stored");
            let len = m.len as usize;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            let loc = self.locate(st, id, &m)?;
            if let Some((l, r)) = loc.and_then(|l| Some((l, self.body_read(st, l, &m)?))) {
                // Paced, the head waits for the read-ahead when the cache would not keep its
                // body and the read-ahead has not reached it; a body the cache keeps (it has
                // room, e.g. one not offered yet) is read here and serves other groups too.
                // A later message of the run in such a chunk ends the run the same way: the
                // read-ahead brings it, and the group's next run finds it cached. Read here, a
                // 10k-group backlog beyond the cache had every group's first run read its
                // messages all over the backlog (~40% more CPU per message draining a 1M
                // restart, half the closed-loop rate; docs/BENCHMARKS.md, session 11).
                if pace && !r.kept && l.first >= st.prefetch_from {
                    if out.is_empty() {
                        return Ok(Paced::Wait(l.first));
                    }
                    break;
                }
                let amplified = !r.kept && unkept + r.bytes > READ_AMPLIFICATION * got;
                if !out.is_empty() && (reads == MAX_CHUNK_READS || amplified) {
                    break;
                }
                reads += 1;
                if !r.kept {
                    unkept += r.bytes;
                }
            }
            bytes += len;
            let msg = self.message(st, id, m, loc)?;
            got += msg.payload.len();
            out.push(msg);
        }
        out.shrink_to_fit();
        Ok(Paced::Run(out))
    }

    /// The sled read message `m` in chunk `loc` needs: `None` when the chunk's body is cached.
    /// A body the cache keeps is read whole; otherwise only the span values holding `m`
    /// (see [`Sink::payload`]; a body in an older layout is read whole either way).
    fn body_read(&self, st: &State, loc: ChunkLoc, m: &Msg) -> Option<BodyRead> {
        let cache = &st.index.cache;
        if cache.get(loc.first).is_some() {
            return None;
        }
        let body = loc.body_len as usize;
        let kept = cache.would_keep(loc.first, body);
        let range = (!kept)
            .then(|| {
                self.bodies
                    .range_bytes(loc.first, m.off as usize, m.len as usize)
            })
            .flatten();
        Some(BodyRead {
            bytes: range.unwrap_or(body),
            kept,
        })
    }

    /// See [`Queue::pending_groups_page`](crate::Queue::pending_groups_page).
    pub fn pending_groups_page(&self, after: Option<&GroupRef>, limit: usize) -> Vec<GroupRef> {
        let st = self.lock();
        let mut out: Vec<GroupRef> = match after.and_then(|a| a.solo()) {
            Some(_) => Vec::new(),
            None => st
                .index
                .groups
                .keyed_after(after)
                .take(limit)
                .cloned()
                .collect(),
        };
        if out.len() < limit {
            let from = after.and_then(|a| a.solo()).map_or(0, |id| id.0 + 1);
            out.extend(
                st.index
                    .solos
                    .range(from..)
                    .take(limit - out.len())
                    .map(|&id| GroupRef::of(None, MessageId(id))),
            );
        }
        out
    }

    /// See [`Queue::pending_groups_oldest_first`](crate::Queue::pending_groups_oldest_first).
    pub fn pending_groups_oldest_first(&self) -> Vec<GroupRef> {
        let mut heads: Vec<(u64, GroupRef)> = {
            let st = self.lock();
            let solos = st
                .index
                .solos
                .iter()
                .map(|&id| (id, GroupRef::of(None, MessageId(id))));
            st.index
                .groups
                .heads()
                .map(|(h, g)| (h, g.clone()))
                .chain(solos)
                .collect()
        };
        heads.sort_unstable_by_key(|(h, _)| *h);
        heads.into_iter().map(|(_, g)| g).collect()
    }

    /// See [`Queue::contains`](crate::Queue::contains).
    pub fn contains(&self, ids: &[MessageId]) -> Vec<bool> {
        let st = self.lock();
        ids.iter()
            .map(|id| st.index.msgs.get(id.0).is_some_and(|m| m.published))
            .collect()
    }

    /// See [`Queue::counts`](crate::Queue::counts).
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            pending: st.index.msgs.len() as u64,
            failing: st.index.failing(),
            delivered: st.meta.delivered,
            discarded: st.meta.discarded,
        }
    }

    /// When the oldest message still in the queue was accepted.
    pub fn oldest_pending_at(&self) -> Option<UnixMillis> {
        let st = self.lock();
        let (id, m) = st.index.msgs.first()?;
        Some(st.index.origin(id, m).1)
    }

    /// See [`Queue::read_ahead_frontier`](crate::Queue::read_ahead_frontier).
    pub fn frontier(&self) -> u64 {
        self.lock().prefetch_from
    }

    /// See [`Queue::cached_chunks`](crate::Queue::cached_chunks).
    pub fn cached_chunks(&self) -> Vec<MessageId> {
        self.lock().index.cache.firsts().map(MessageId).collect()
    }

    /// Bytes of payload held in the cache.
    pub fn cached_bytes(&self) -> usize {
        self.lock().index.cache.bytes()
    }

    /// See [`Queue::list`](crate::Queue::list).
    pub fn list(&self, filter: &ListFilter, now: UnixMillis) -> Result<Vec<StoredMessage>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let default_state = DeliveryState::default();
        let matches = |st: &State, id: u64| {
            let state = st
                .index
                .failed
                .get(&id)
                .map_or(&default_state, |f| &f.record.state);
            filter.state.matches(state, now)
        };
        let after = filter.after.map(|a| a.0);
        let in_range = |id: u64| match after {
            None => true,
            Some(a) if filter.newest_first => id < a,
            Some(a) => id > a,
        };
        let mut picked = Vec::new();
        {
            let ordered: Vec<u64>;
            let iter: Box<dyn Iterator<Item = u64>> = match &filter.group {
                Some(g) => {
                    ordered = Self::group_ids(st, g);
                    if filter.newest_first {
                        Box::new(ordered.iter().rev().copied())
                    } else {
                        Box::new(ordered.iter().copied())
                    }
                }
                None if matches!(filter.state, StateFilter::Failed | StateFilter::BackingOff) => {
                    let keys = st.index.failed.keys().copied();
                    if filter.newest_first {
                        Box::new(keys.rev())
                    } else {
                        Box::new(keys)
                    }
                }
                None => {
                    let keys = st
                        .index
                        .msgs
                        .iter()
                        .filter(|(_, m)| m.published)
                        .map(|(id, _)| id);
                    if filter.newest_first {
                        Box::new(keys.rev())
                    } else {
                        Box::new(keys)
                    }
                }
            };
            for id in iter {
                if picked.len() >= filter.limit {
                    break;
                }
                if in_range(id) && matches(st, id) {
                    picked.push(id);
                }
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for id in picked {
            if let Some(m) = self.stored(st, id)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// See [`Queue::discarded_page`](crate::Queue::discarded_page).
    pub fn discarded_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DiscardedMessage>> {
        let entries: Vec<(u64, u16)> = {
            let st = self.lock();
            st.index
                .discarded
                .iter()
                .rev()
                .filter(|(seq, _)| before.is_none_or(|b| *seq < b))
                .take(limit)
                .copied()
                .collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        for (seq, n) in entries {
            // Trimmed meanwhile by a concurrent discard: skip it.
            let Some(bytes) = parts::get(&self.tree, &keys::base(keys::DISCARDED, seq), n)
                .map_err(self.storage("discarded"))?
            else {
                continue;
            };
            let (at, id, record, payload) = codec::decode_discarded(&bytes[..])
                .ok_or_else(|| self.corrupt(format!("discarded entry {seq}")))?;
            out.push(DiscardedMessage {
                message: StoredMessage {
                    id: MessageId(id),
                    epoch: record.epoch,
                    group: record.group,
                    payload: Bytes::copy_from_slice(payload),
                    enqueued_at: record.enqueued_at,
                    state: record.state,
                },
                discarded_at: at,
                seq,
            });
        }
        Ok(out)
    }

    // ---- changes ----

    /// Writes the done bitmap of each touched chunk, or removes a chunk whose messages are all
    /// done, in `batch`.
    fn settle_chunks(&self, st: &mut State, batch: &mut Batch, touched: &BTreeSet<u64>) {
        Self::settle_in_memory(st, touched);
        self.write_unwritten(st, batch);
    }

    /// Chunk bookkeeping after messages left `touched` chunks, in memory: an ended chunk
    /// leaves the index and the cache; what must be written is recorded in `unwritten`.
    fn settle_in_memory(st: &mut State, touched: &BTreeSet<u64>) {
        for &first in touched {
            let Some(c) = st.index.chunks.get(&first) else {
                continue;
            };
            if c.live == 0 {
                let parts = (c.head_parts, c.body_parts);
                st.index.chunks.remove(&first);
                st.index.cache.remove(first);
                st.unwritten.insert(first, Some(parts));
            } else {
                st.unwritten.entry(first).or_insert(None);
            }
        }
    }

    /// Writes every unwritten chunk change (bitmaps, ended chunks' removal) and the totals
    /// into `batch`.
    /// Apply it with [`Sink::apply_settled`].
    fn write_unwritten(&self, st: &mut State, batch: &mut Batch) {
        for (first, ended) in std::mem::take(&mut st.unwritten) {
            match ended {
                Some((head_parts, body_parts)) => {
                    parts::remove(batch, &keys::base(keys::HEAD, first), head_parts);
                    if first < self.bodies.spans_from() {
                        parts::remove(batch, &keys::base(keys::BODY, first), body_parts);
                    }
                    batch.remove(&keys::base(keys::DONE, first));
                    st.ended.push(first);
                }
                None => {
                    if let Some(c) = st.index.chunks.get(&first) {
                        batch.insert(
                            &keys::base(keys::DONE, first),
                            codec::encode_bitmap(&c.done),
                        );
                    }
                }
            }
        }
        batch.insert(keys::TOTALS, &st.meta.encode_totals()[..]);
        st.totals_unwritten = false;
    }

    /// Writes the deferred acks (see [`Removal::Acked`]), if any. Called before a marker is
    /// stored (a stream's low-water mark may only pass acks that are on disk), before a
    /// flush, and when the queue closes.
    pub fn persist_acks(&self) -> Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.unwritten.is_empty() && !st.totals_unwritten {
            return Ok(());
        }
        let mut batch = Batch::default();
        self.write_unwritten(st, &mut batch);
        self.apply_settled(st, batch, "ack")
    }

    /// The record of a stored message, for moving it out of its chunk.
    fn record_of(st: &State, id: u64, m: &Msg) -> Record {
        match st.index.failed.get(&id) {
            Some(f) => f.record.clone(),
            None => {
                let (epoch, enqueued_at) = st.index.origin(id, m);
                Record {
                    epoch,
                    enqueued_at,
                    group: st.index.group_of(id, m),
                    state: DeliveryState::default(),
                    payload_len: m.len,
                }
            }
        }
    }

    /// Removes messages (ids not in the queue are ignored) in one batch; returns the removed ids.
    pub fn remove(
        &self,
        ids: &[MessageId],
        kind: Removal,
        now: UnixMillis,
        discarded_cap: usize,
        op: &'static str,
    ) -> Result<Vec<MessageId>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut batch = Batch::default();
        let mut meta = st.meta;
        let mut touched = BTreeSet::new();
        let mut seen = HashSet::with_capacity(ids.len());
        let mut removed = Vec::with_capacity(ids.len());
        // Whether the batch holds more than chunk changes (discarded copies, failed keys).
        let mut keyed = false;
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            let Some(&m) = st.index.msgs.get(id.0).filter(|m| m.published) else {
                continue;
            };
            if kind == Removal::Discarded {
                let payload = self.payload_of(st, id.0, m)?;
                let record = Self::record_of(st, id.0, &m);
                let entry = codec::encode_discarded(now, id.0, &record, &payload);
                let seq = meta.discarded;
                let n = parts::put(&mut batch, &keys::base(keys::DISCARDED, seq), &entry, 0);
                st.index.discarded.push_back((seq, n));
                meta.discarded += 1;
                keyed = true;
            } else {
                meta.delivered += 1;
            }
            match st.index.remove(id.0) {
                Some((_, Place::Chunk { first })) => {
                    touched.insert(first);
                }
                Some((m, Place::Failed(f))) => {
                    keyed = true;
                    parts::remove(&mut batch, &keys::base(keys::STATE, id.0), f.state_parts);
                    parts::remove(
                        &mut batch,
                        &keys::base(keys::FAILED, id.0),
                        parts::count(m.len as usize),
                    );
                }
                None => {}
            }
            removed.push(id);
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        // Acks of chunk messages only: nothing is written now (see `Removal::Acked`).
        if kind == Removal::Acked && !keyed {
            Self::settle_in_memory(st, &touched);
            st.meta = meta;
            st.totals_unwritten = true;
            self.sync_pending(st);
            return Ok(removed);
        }
        self.settle_chunks(st, &mut batch, &touched);
        while st.index.discarded.len() > discarded_cap {
            let (seq, n) = st.index.discarded.pop_front().expect("non-empty");
            parts::remove(&mut batch, &keys::base(keys::DISCARDED, seq), n);
        }
        batch.insert(keys::TOTALS, &meta.encode_totals()[..]);
        self.apply_settled(st, batch, op)?;
        st.meta = meta;
        self.sync_pending(st);
        Ok(removed)
    }

    /// Removes as delivered the messages whose full delivery id matches (same epoch).
    pub fn remove_delivered(
        &self,
        found: &[DeliveryId],
        now: UnixMillis,
    ) -> Result<Vec<MessageId>> {
        let matching: Vec<MessageId> = {
            let st = self.lock();
            found
                .iter()
                .filter(|d| {
                    st.index
                        .msgs
                        .get(d.id.0)
                        .is_some_and(|m| m.published && st.index.origin(d.id.0, m).0 == d.epoch)
                })
                .map(|d| d.id)
                .collect()
        };
        // Between the two locks only this sink's own removals can run; `remove` skips ids
        // that are gone, and a message never changes epoch.
        self.remove(&matching, Removal::Acked, now, usize::MAX, "ack")
    }

    /// Records a failed attempt; moves the message out of its chunk on its first failure.
    pub fn fail(
        &self,
        id: MessageId,
        error: LastError,
        not_visible_until: UnixMillis,
    ) -> Result<Option<DeliveryState>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(&m) = st.index.msgs.get(id.0).filter(|m| m.published) else {
            return Ok(None);
        };
        let mut batch = Batch::default();
        let mut record = Self::record_of(st, id.0, &m);
        let state = &mut record.state;
        state.deliver_count = state.deliver_count.saturating_add(1);
        state.last_attempt_at = Some(error.at_ms);
        state.last_error = Some(error);
        state.not_visible_until = Some(not_visible_until);
        let new_state = record.state.clone();
        if m.failed {
            let f = st.index.failed.get_mut(&id.0).expect("failed message");
            let n = parts::put(
                &mut batch,
                &keys::base(keys::STATE, id.0),
                &codec::encode_record(&record, b""),
                f.state_parts,
            );
            self.apply(batch, "fail")?;
            f.state_parts = n;
            f.record = record;
        } else {
            let payload = self.payload_of(st, id.0, m)?;
            let state_parts = chunk::put_failed(&mut batch, id.0, &record, &payload);
            let first = st
                .index
                .move_out(
                    id.0,
                    Failed {
                        record,
                        state_parts,
                    },
                )
                .ok_or_else(|| self.corrupt(format!("chunk of message {id}")))?;
            self.settle_chunks(st, &mut batch, &BTreeSet::from([first]));
            self.apply_settled(st, batch, "fail")?;
        }
        Ok(Some(new_state))
    }

    /// Clears the backoff of the given messages (all failed ones with `None`); returns how
    /// many were in the queue (`ids`) or backing off (`None`).
    pub fn redeliver(&self, ids: Option<&[MessageId]>) -> Result<usize> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let targets: Vec<u64> = match ids {
            Some(ids) => ids.iter().map(|i| i.0).collect(),
            None => st
                .index
                .failed
                .iter()
                .filter(|(_, f)| f.record.state.not_visible_until.is_some())
                .map(|(id, _)| *id)
                .collect(),
        };
        let mut batch = Batch::default();
        let mut changed = Vec::new();
        let mut present = 0;
        for id in targets {
            if !st.index.msgs.get(id).is_some_and(|m| m.published) {
                continue;
            }
            present += 1;
            let Some(f) = st.index.failed.get(&id) else {
                continue;
            };
            if f.record.state.not_visible_until.is_none() {
                continue;
            }
            let mut record = f.record.clone();
            record.state.not_visible_until = None;
            let n = parts::put(
                &mut batch,
                &keys::base(keys::STATE, id),
                &codec::encode_record(&record, b""),
                f.state_parts,
            );
            changed.push((id, record, n));
        }
        if !changed.is_empty() {
            self.apply(batch, "redeliver")?;
        }
        let n_changed = changed.len();
        for (id, record, n) in changed {
            let f = st.index.failed.get_mut(&id).expect("failed");
            f.record = record;
            f.state_parts = n;
        }
        Ok(if ids.is_some() { present } else { n_changed })
    }
}
