//! Idempotency records of one sink: which request keys and message keys were accepted, and
//! the ids they were given, so that a producer's retry is answered with the original ids
//! instead of storing the messages again.
//!
//! Stored under `k seq(8) part(2)` (see [`crate::keys`]), one record per key, written in the
//! same sled batch as the enqueue that accepted it: a crash keeps both or neither. `seq` grows
//! with every record (a scan in key order is the acceptance order). Records leave in expiry
//! order, which for one window is the acceptance order: expired ones are pruned, and past the
//! cap the one closest to expiry is forgotten first. The whole set is also held in memory ([`Keys`]), loaded on open, so the check costs
//! no sled read; it is only touched under the sink's enqueue order lock, which makes
//! check-and-insert atomic against concurrent enqueues of the same key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use s2sink_core::UnixMillis;
use sled::Batch;

use crate::codec::Reader;
use crate::{keys, parts, Accepted, MessageId};

const KIND_REQUEST: u8 = b'r';
const KIND_MESSAGE: u8 = b'm';

/// How many expired records one enqueue removes at most (besides evictions for the cap):
/// pruning is spread over later batches so that no enqueue pays for a whole window at once.
pub const PRUNE_PER_BATCH: usize = 64;

/// A key as producers give it, with its kind: request keys and message keys are separate
/// namespaces (the same string may be both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdemKey {
    kind: u8,
    key: Arc<str>,
}

impl IdemKey {
    /// The key of a whole request (`Idempotency-Key` header).
    pub fn request(key: &str) -> IdemKey {
        IdemKey {
            kind: KIND_REQUEST,
            key: key.into(),
        }
    }

    /// The key of one message (`metadata.idempotency_key`).
    pub fn message(key: &str) -> IdemKey {
        IdemKey {
            kind: KIND_MESSAGE,
            key: key.into(),
        }
    }
}

/// What a key maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A message key: the id of the message first accepted with it.
    Message(MessageId),
    /// A request key: the fingerprint of the request and its answer, as runs of consecutive
    /// ids (`first`, `len`, duplicate) so a large request costs a few bytes.
    Request { fingerprint: u128, runs: Vec<Run> },
}

/// `len` consecutive ids from `first`, all new or all duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub len: u32,
    pub duplicate: bool,
}

/// Compresses an answer into runs.
pub fn runs_of(accepted: &[Accepted]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for a in accepted {
        match runs.last_mut() {
            Some(r)
                if r.duplicate == a.duplicate
                    && r.first + r.len as u64 == a.id.0
                    && r.len < u32::MAX =>
            {
                r.len += 1
            }
            _ => runs.push(Run {
                first: a.id.0,
                len: 1,
                duplicate: a.duplicate,
            }),
        }
    }
    runs
}

/// Expands runs back into the answer.
pub fn expand(runs: &[Run]) -> Vec<Accepted> {
    runs.iter()
        .flat_map(|r| {
            (0..r.len as u64).map(move |i| Accepted {
                id: MessageId(r.first + i),
                duplicate: r.duplicate,
            })
        })
        .collect()
}

/// One record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its place in acceptance order (and its sled key).
    pub seq: u64,
    pub accepted_at: UnixMillis,
    /// Not a duplicate of anything from this time on (accepted + the window in force then).
    pub expires_at: UnixMillis,
    /// Parts of its sled value.
    pub parts: u16,
    pub value: Value,
}

fn encode(key: &IdemKey, e: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + key.key.len());
    v.push(key.kind);
    v.extend_from_slice(&e.accepted_at.to_be_bytes());
    v.extend_from_slice(&e.expires_at.to_be_bytes());
    v.extend_from_slice(&(key.key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.key.as_bytes());
    match &e.value {
        Value::Message(id) => v.extend_from_slice(&id.0.to_be_bytes()),
        Value::Request { fingerprint, runs } => {
            v.extend_from_slice(&fingerprint.to_be_bytes());
            v.extend_from_slice(&(runs.len() as u32).to_be_bytes());
            for r in runs {
                v.extend_from_slice(&r.first.to_be_bytes());
                v.extend_from_slice(&r.len.to_be_bytes());
                v.push(r.duplicate as u8);
            }
        }
    }
    v
}

fn decode(seq: u64, parts: u16, bytes: &[u8]) -> Option<(IdemKey, Entry)> {
    let mut r = Reader(bytes);
    let kind = r.u8()?;
    let accepted_at = r.u64()?;
    let expires_at = r.u64()?;
    let len = r.u32()? as usize;
    let key: Arc<str> = std::str::from_utf8(r.take(len)?).ok()?.into();
    let value = match kind {
        KIND_MESSAGE => Value::Message(MessageId(r.u64()?)),
        KIND_REQUEST => {
            let fingerprint = u128::from_be_bytes(r.take(16)?.try_into().ok()?);
            let n = r.u32()? as usize;
            let mut runs = Vec::with_capacity(n.min(bytes.len() / 13));
            for _ in 0..n {
                runs.push(Run {
                    first: r.u64()?,
                    len: r.u32()?,
                    duplicate: r.u8()? != 0,
                });
            }
            Value::Request { fingerprint, runs }
        }
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some((
        IdemKey { kind, key },
        Entry {
            seq,
            accepted_at,
            expires_at,
            parts,
            value,
        },
    ))
}

/// The in-memory set of a sink's idempotency records, bounded by `cap` entries.
pub struct Keys {
    map: HashMap<IdemKey, Entry>,
    /// Expiry order: (expires_at, seq) → key (its entry in `map` has this seq).
    order: BTreeMap<(UnixMillis, u64), IdemKey>,
    next_seq: u64,
    cap: usize,
}

/// Changes decided under the lock, applied to memory once their batch is applied.
#[derive(Default)]
pub struct Staged {
    /// (expires_at, seq) of removed records.
    removed: HashSet<(UnixMillis, u64)>,
    inserted: Vec<(IdemKey, Entry)>,
}

impl Staged {
    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.inserted.is_empty()
    }
}

impl Keys {
    /// An empty set holding at most `cap` keys (at least one).
    pub fn new(cap: usize) -> Keys {
        Keys {
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            cap: cap.max(1),
        }
    }

    /// Loads every record of `tree`; expired ones, and the oldest beyond the cap, are removed
    /// in `batch`.
    pub fn load(
        tree: &sled::Tree,
        cap: usize,
        now: UnixMillis,
        batch: &mut Batch,
    ) -> Result<Keys, LoadError> {
        let mut keys = Keys::new(cap);
        for item in parts::scan(tree, keys::IDEM) {
            let (seq, n, bytes) = item.map_err(|e| match e {
                parts::ScanError::Storage(e) => LoadError::Storage(e),
                parts::ScanError::Corrupt => LoadError::Corrupt(0),
            })?;
            let (key, entry) = decode(seq, n, &bytes).ok_or(LoadError::Corrupt(seq))?;
            keys.next_seq = keys.next_seq.max(seq + 1);
            if entry.expires_at <= now {
                parts::remove(batch, &keys::base(keys::IDEM, seq), n);
                continue;
            }
            // A later record of the same key (accepted again after expiry) replaces it.
            let at = (entry.expires_at, seq);
            if let Some(old) = keys.map.insert(key.clone(), entry) {
                keys.order.remove(&(old.expires_at, old.seq));
                parts::remove(batch, &keys::base(keys::IDEM, old.seq), old.parts);
            }
            keys.order.insert(at, key);
        }
        let mut staged = Staged::default();
        keys.evict(batch, &mut staged, 0);
        keys.commit(staged);
        Ok(keys)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The live (not expired) record of `key`.
    pub fn live(&self, key: &IdemKey, now: UnixMillis) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.expires_at > now)
    }

    /// Removes up to [`PRUNE_PER_BATCH`] expired records, and then the records closest to
    /// expiry while fewer than `incoming` free places remain under the cap.
    pub fn prune(&self, batch: &mut Batch, staged: &mut Staged, now: UnixMillis, incoming: usize) {
        for (&(expires_at, seq), key) in self.order.iter().take(PRUNE_PER_BATCH) {
            if expires_at > now {
                break;
            }
            parts::remove(batch, &keys::base(keys::IDEM, seq), self.map[key].parts);
            staged.removed.insert((expires_at, seq));
        }
        self.evict(batch, staged, incoming);
    }

    fn evict(&self, batch: &mut Batch, staged: &mut Staged, incoming: usize) {
        let keep = self.cap.saturating_sub(incoming);
        let live = self.map.len() - staged.removed.len();
        if live <= keep {
            return;
        }
        // What `prune` removed so far is the oldest end of `order`.
        let skip = staged.removed.len();
        for (&(expires_at, seq), key) in self.order.iter().skip(skip).take(live - keep) {
            parts::remove(batch, &keys::base(keys::IDEM, seq), self.map[key].parts);
            staged.removed.insert((expires_at, seq));
        }
    }

    /// Writes a new record for `key` into `batch` (replacing an expired one of the same key).
    pub fn insert(
        &mut self,
        batch: &mut Batch,
        staged: &mut Staged,
        key: IdemKey,
        value: Value,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) {
        if let Some(old) = self.map.get(&key) {
            if staged.removed.insert((old.expires_at, old.seq)) {
                parts::remove(batch, &keys::base(keys::IDEM, old.seq), old.parts);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry {
            seq,
            accepted_at: now,
            expires_at,
            parts: 0,
            value,
        };
        entry.parts = parts::put(
            batch,
            &keys::base(keys::IDEM, seq),
            &encode(&key, &entry),
            0,
        );
        staged.inserted.push((key, entry));
    }

    /// Keeps the cap when one call brings more new keys than the cap holds (`prune` already
    /// made room for smaller calls): the call's earliest new records are not written (their
    /// writes are undone in `batch`), so a request with more keys than the cap keeps its own
    /// record and its newest message keys. Call after the call's last `insert`.
    pub fn enforce_cap(&self, batch: &mut Batch, staged: &mut Staged) {
        let existing = self.map.len() - staged.removed.len();
        let excess = (existing + staged.inserted.len()).saturating_sub(self.cap);
        let n = excess.min(staged.inserted.len());
        for (_, e) in staged.inserted.drain(..n) {
            parts::remove(batch, &keys::base(keys::IDEM, e.seq), e.parts);
        }
    }

    /// Mirrors in memory what `staged` wrote (call once its batch is applied).
    pub fn commit(&mut self, staged: Staged) {
        for (expires_at, seq) in staged.removed {
            if let Some(key) = self.order.remove(&(expires_at, seq)) {
                if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&key);
                }
            }
        }
        for (key, entry) in staged.inserted {
            self.order
                .insert((entry.expires_at, entry.seq), key.clone());
            self.map.insert(key, entry);
        }
    }
}

/// Why loading the records failed.
pub enum LoadError {
    Storage(sled::Error),
    /// The record with this seq (0: a key) cannot be decoded.
    Corrupt(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_runs_round_trip() {
        let answer = vec![
            Accepted {
                id: MessageId(5),
                duplicate: false,
            },
            Accepted {
                id: MessageId(6),
                duplicate: false,
            },
            Accepted {
                id: MessageId(2),
                duplicate: true,
            },
            Accepted {
                id: MessageId(7),
                duplicate: false,
            },
        ];
        let runs = runs_of(&answer);
        assert_eq!(runs.len(), 3);
        assert_eq!(expand(&runs), answer);
        let key = IdemKey::request("k-1");
        let entry = Entry {
            seq: 9,
            accepted_at: 10,
            expires_at: 20,
            parts: 1,
            value: Value::Request {
                fingerprint: u128::MAX - 3,
                runs,
            },
        };
        let (k, e) = decode(9, 1, &encode(&key, &entry)).unwrap();
        assert_eq!(k, key);
        assert_eq!(e.value, entry.value);
        assert_eq!((e.accepted_at, e.expires_at), (10, 20));
        let m = IdemKey::message("k-1");
        assert_ne!(m, key);
        let entry = Entry {
            value: Value::Message(MessageId(3)),
            ..entry
        };
        assert_eq!(
            decode(9, 1, &encode(&m, &entry)).unwrap().1.value,
            entry.value
        );
    }
}
