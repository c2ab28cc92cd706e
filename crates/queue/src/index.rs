//! The in-memory index of one sink: every stored message's group and place, the ordered ids
//! of each group, the chunks and their done bitmaps, failed messages' state, and a bounded
//! payload cache. Rebuilt from sled on open; delivery reads only this on its hot path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use s2sink_core::UnixMillis;

use crate::codec::Record;
pub use crate::msgs::Msg;
use crate::msgs::Msgs;
use crate::shared_body::SharedBody;
use crate::GroupRef;

/// `Msg::group` of an ungrouped message (its own group).
pub const SOLO: u32 = u32::MAX;

/// A chunk: the messages `first .. first + count` of one enqueue.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub epoch: u64,
    pub enqueued_at: UnixMillis,
    pub count: u32,
    /// Messages not yet done (delivered, discarded or moved).
    pub live: u32,
    pub done: Vec<u64>,
    pub head_parts: u16,
    pub body_parts: u16,
    /// Bytes of the chunk's body (what a cache miss reads).
    pub body_len: u32,
}

impl Chunk {
    pub fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks message `i` done; false if it already was.
    pub fn mark(&mut self, i: usize) -> bool {
        if self.is_done(i) {
            return false;
        }
        self.done[i / 64] |= 1 << (i % 64);
        self.live -= 1;
        true
    }
}

/// A message moved out of its chunk on its first failure.
#[derive(Debug, Clone)]
pub struct Failed {
    pub record: Record,
    /// Parts of its `s` value.
    pub state_parts: u16,
}

/// Group keys interned to slots, each with its published ids in order.
#[derive(Default)]
pub struct Groups {
    /// Slots by key, for the lookups every message makes (ingest interns each message's
    /// group): one hash and one key comparison, where the ordered map below compared ~14 keys
    /// (each a cache miss on its text) per lookup among 10k groups — 3–4% of the server's CPU.
    /// Seeded per process, so keys chosen to collide cannot be computed offline.
    by_hash: foldhash::HashMap<GroupRef, u32>,
    /// The same slots in key order, for paging through the groups; touched only when a group
    /// gets its first stored message or loses its last.
    by_key: BTreeMap<GroupRef, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    key: Option<GroupRef>,
    /// Published ids, ascending.
    ids: VecDeque<u64>,
    /// Stored messages referring to this slot (published or not).
    refs: u32,
}

impl Groups {
    /// The slot of `key`, created if needed; counts one more message referring to it.
    pub fn add_ref(&mut self, key: &GroupRef) -> u32 {
        if key.solo().is_some() {
            return SOLO;
        }
        let slot = match self.by_hash.get(key) {
            Some(&s) => s,
            None => {
                let s = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.slots.push(Slot::default());
                        (self.slots.len() - 1) as u32
                    }
                };
                self.slots[s as usize].key = Some(key.clone());
                self.by_hash.insert(key.clone(), s);
                self.by_key.insert(key.clone(), s);
                s
            }
        };
        self.slots[slot as usize].refs += 1;
        slot
    }

    /// One more message refers to `slot` (a slot [`Groups::add_ref`] returned before).
    pub fn bump(&mut self, slot: u32) -> u32 {
        self.slots[slot as usize].refs += 1;
        slot
    }

    /// One message of `slot` is gone; frees the slot with its last message.
    fn drop_ref(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.refs -= 1;
        if s.refs == 0 {
            if let Some(key) = s.key.take() {
                self.by_hash.remove(&key);
                self.by_key.remove(&key);
            }
            s.ids.clear();
            self.free.push(slot);
        }
    }

    pub fn lookup(&self, key: &GroupRef) -> Option<u32> {
        self.by_hash.get(key).copied()
    }

    pub fn key(&self, slot: u32) -> &GroupRef {
        self.slots[slot as usize].key.as_ref().expect("live slot")
    }

    pub fn ids(&self, slot: u32) -> &VecDeque<u64> {
        &self.slots[slot as usize].ids
    }

    fn push(&mut self, slot: u32, id: u64) {
        let ids = &mut self.slots[slot as usize].ids;
        debug_assert!(ids.back().is_none_or(|&b| b < id), "published in id order");
        ids.push_back(id);
    }

    fn remove_id(&mut self, slot: u32, id: u64) {
        let ids = &mut self.slots[slot as usize].ids;
        if ids.front() == Some(&id) {
            ids.pop_front();
        } else if let Ok(pos) = ids.binary_search(&id) {
            ids.remove(pos);
        }
    }

    /// Keyed groups with published messages and their oldest published id, in key order.
    pub fn heads(&self) -> impl Iterator<Item = (u64, &GroupRef)> + '_ {
        self.by_key
            .iter()
            .filter_map(|(k, &s)| self.slots[s as usize].ids.front().map(|&h| (h, k)))
    }

    /// Keyed groups with published messages, in key order, after `after`.
    pub fn keyed_after<'a>(
        &'a self,
        after: Option<&GroupRef>,
    ) -> impl Iterator<Item = &'a GroupRef> + 'a {
        use std::ops::Bound::*;
        let lo = match after {
            Some(a) => Excluded(a.clone()),
            None => Unbounded,
        };
        self.by_key
            .range((lo, Unbounded))
            .filter(|(_, &s)| !self.slots[s as usize].ids.is_empty())
            .map(|(k, _)| k)
    }
}

/// Chunk bodies kept in memory so delivery serves payloads from them, bounded in bytes. When
/// full it keeps the **oldest** chunks: groups deliver from their oldest pending message, so
/// the chunks at the low end of the id range are the ones read next, while a chunk just
/// enqueued behind a large backlog is read last. A body offered when the cache is full evicts
/// newer bodies to fit, never older ones; a body that does not fit is read from sled when its
/// messages are needed. A body also leaves with its chunk, when its last message is done.
pub struct Cache {
    map: BTreeMap<u64, SharedBody>,
    bytes: usize,
    cap: usize,
}

impl Cache {
    pub fn new(cap: usize) -> Cache {
        Cache {
            map: BTreeMap::new(),
            bytes: 0,
            cap,
        }
    }

    /// The cached body of chunk `first`.
    pub fn get(&self, first: u64) -> Option<&SharedBody> {
        self.map.get(&first)
    }

    /// Whether [`offer`](Cache::offer) would keep a body of `len` bytes for chunk `first`.
    pub fn would_keep(&self, first: u64, len: usize) -> bool {
        if len > self.cap {
            return false;
        }
        if self.bytes + len <= self.cap {
            return true;
        }
        // Only newer bodies may go: room only if evicting them makes enough. Newest first,
        // stopping as soon as they do: asked once per body read, and summing every newer
        // body each time was linear in the cache's entries.
        let need = self.bytes + len - self.cap;
        let mut freed = 0;
        for (_, b) in self.map.range(first + 1..).rev() {
            freed += b.len();
            if freed >= need {
                return true;
            }
        }
        false
    }

    /// Keeps the body of chunk `first` if it fits, evicting bodies of newer chunks for it.
    pub fn offer(&mut self, first: u64, body: SharedBody) {
        if self.map.contains_key(&first) || !self.would_keep(first, body.len()) {
            return;
        }
        while self.bytes + body.len() > self.cap {
            match self.map.last_key_value() {
                Some((&newest, _)) if newest > first => self.remove(newest),
                _ => return,
            }
        }
        self.bytes += body.len();
        self.map.insert(first, body);
    }

    /// Drops the body of chunk `first` (its chunk is gone).
    pub fn remove(&mut self, first: u64) {
        if let Some(p) = self.map.remove(&first) {
            self.bytes -= p.len();
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The chunks whose bodies are kept, oldest first.
    pub fn firsts(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().copied()
    }

    /// The budget in bytes: a body larger than this is never kept.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// Where a removed message was.
pub enum Place {
    /// In chunk `first` (now marked done there).
    Chunk { first: u64 },
    /// In its own keys.
    Failed(Failed),
}

/// The whole in-memory state of a sink.
pub struct Index {
    pub msgs: Msgs,
    pub chunks: BTreeMap<u64, Chunk>,
    pub failed: BTreeMap<u64, Failed>,
    pub groups: Groups,
    /// Published ungrouped ids.
    pub solos: BTreeSet<u64>,
    pub cache: Cache,
    /// Discarded entries kept on disk, oldest first: (seq, parts).
    pub discarded: VecDeque<(u64, u16)>,
    /// Stored but not yet published id ranges `[first, end)`, in id order.
    pub unpublished: VecDeque<(u64, u64)>,
}

impl Index {
    pub fn new(cache_bytes: usize) -> Index {
        Index {
            msgs: Msgs::default(),
            chunks: BTreeMap::new(),
            failed: BTreeMap::new(),
            groups: Groups::default(),
            solos: BTreeSet::new(),
            cache: Cache::new(cache_bytes),
            discarded: VecDeque::new(),
            unpublished: VecDeque::new(),
        }
    }

    /// Adds a stored message (not yet visible unless `published`).
    pub fn insert(&mut self, id: u64, group: &GroupRef, off: u32, len: u32, published: bool) {
        let slot = self.groups.add_ref(group);
        self.msgs.insert(
            id,
            Msg {
                group: slot,
                off,
                len,
                published: false,
                failed: false,
            },
        );
        if published {
            self.publish_one(id);
        }
    }

    /// Loads every message of a freshly opened sink, all published (they are on disk), from
    /// `entries` in ascending id order: one bulk build of the maps, and each group's ids pushed
    /// in order.
    pub fn load_published(&mut self, mut entries: Vec<(u64, Msg)>) {
        debug_assert!(self.msgs.is_empty(), "only on an empty index");
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "ascending ids");
        let mut solos = Vec::new();
        for (id, m) in &mut entries {
            m.published = true;
            if m.group == SOLO {
                solos.push(*id);
            } else {
                self.groups.push(m.group, *id);
            }
        }
        self.solos = solos.into_iter().collect();
        self.msgs = Msgs::from_sorted(entries);
    }

    /// Makes message `id` visible to its group (ids must be published in ascending order).
    pub fn publish_one(&mut self, id: u64) {
        let Some(m) = self.msgs.get_mut(id) else {
            return;
        };
        if m.published {
            return;
        }
        m.published = true;
        if m.group == SOLO {
            self.solos.insert(id);
        } else {
            let slot = m.group;
            self.groups.push(slot, id);
        }
    }

    /// Publishes every unpublished range up to and including the one starting at `first`.
    pub fn publish_through(&mut self, first: u64) {
        while let Some(&(lo, hi)) = self.unpublished.front() {
            if lo > first {
                break;
            }
            self.unpublished.pop_front();
            for id in lo..hi {
                self.publish_one(id);
            }
        }
    }

    /// The chunk holding message `id` (which must not be failed).
    pub fn chunk_of(&self, id: u64) -> Option<(u64, &Chunk)> {
        self.chunks
            .range(..=id)
            .next_back()
            .map(|(f, c)| (*f, c))
            .filter(|(f, c)| id < f + c.count as u64)
    }

    /// The group of a stored message.
    pub fn group_of(&self, id: u64, m: &Msg) -> GroupRef {
        if m.group == SOLO {
            GroupRef::of(None, crate::MessageId(id))
        } else {
            self.groups.key(m.group).clone()
        }
    }

    /// Epoch and acceptance time of a stored message.
    pub fn origin(&self, id: u64, m: &Msg) -> (u64, UnixMillis) {
        if m.failed {
            let r = &self.failed[&id].record;
            (r.epoch, r.enqueued_at)
        } else {
            let (_, c) = self.chunk_of(id).expect("a live message is in a chunk");
            (c.epoch, c.enqueued_at)
        }
    }

    /// Takes message `id` out of the index. The caller writes the matching sled changes:
    /// for `Place::Chunk` the chunk's bitmap (or its removal when `live == 0`).
    pub fn remove(&mut self, id: u64) -> Option<(Msg, Place)> {
        let m = self.msgs.remove(id)?;
        if m.published {
            if m.group == SOLO {
                self.solos.remove(&id);
            } else {
                self.groups.remove_id(m.group, id);
            }
        }
        if m.group != SOLO {
            self.groups.drop_ref(m.group);
        }
        let place = if m.failed {
            Place::Failed(self.failed.remove(&id).expect("failed message has state"))
        } else {
            let (first, _) = self.chunk_of(id).expect("a live message is in a chunk");
            let chunk = self.chunks.get_mut(&first).expect("chunk");
            chunk.mark((id - first) as usize);
            Place::Chunk { first }
        };
        Some((m, place))
    }

    /// Marks message `id` moved out of its chunk into its own keys; returns the chunk's first id.
    pub fn move_out(&mut self, id: u64, failed: Failed) -> Option<u64> {
        let (first, _) = self.chunk_of(id)?;
        self.chunks
            .get_mut(&first)
            .expect("chunk")
            .mark((id - first) as usize);
        self.msgs.get_mut(id).expect("message").failed = true;
        self.failed.insert(id, failed);
        Some(first)
    }

    /// Published messages that failed at least once.
    pub fn failing(&self) -> u64 {
        self.failed.len() as u64
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn body(n: usize) -> SharedBody {
        SharedBody::new(vec![sled::IVec::from(vec![0u8; n])])
    }

    #[test]
    fn a_full_cache_keeps_the_oldest_chunks() {
        let mut c = Cache::new(300);
        c.offer(10, body(100));
        c.offer(20, body(100));
        c.offer(30, body(100));
        // Newer than everything cached: not kept.
        c.offer(40, body(100));
        assert!(c.get(40).is_none());
        // Older than what is cached: the newest goes.
        c.offer(5, body(100));
        assert!(c.get(5).is_some() && c.get(30).is_none());
        assert_eq!(c.bytes(), 300);
        // Would need older ones to go: not kept, and nothing evicted for it.
        c.offer(15, body(200));
        assert!(c.get(15).is_none() && c.get(20).is_some());
        assert_eq!(c.bytes(), 300);
        c.offer(15, body(100));
        assert!(c.get(15).is_some() && c.get(20).is_none() && c.get(10).is_some());
        assert!(c.get(5).is_some());
        assert_eq!(c.bytes(), 300);
        // Larger than the whole cache: never kept.
        c.offer(1, body(301));
        assert!(c.get(1).is_none() && c.get(5).is_some());
    }
}
