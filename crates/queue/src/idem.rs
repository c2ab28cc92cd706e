//! Idempotency records of one sink: which request keys and message keys were accepted, and
//! the ids they were given, so that a producer's retry is answered with the original ids
//! instead of storing the messages again.
//!
//! One record per enqueue call that accepted keys, under `k seq(8) part(2)` (see
//! [`crate::keys`]), holding all its keys: written in the same sled batch as the messages it
//! names, so a crash keeps both or neither. One record per call, not per key, keeps sled small
//! (a key costs its bytes plus 12 in the record) and an enqueue of 1,000 keyed messages one
//! write instead of 1,000. All keys of a call share its acceptance time and window, so a record
//! expires as a whole. `seq` grows with every record: a scan in key order is the acceptance
//! order. Records leave in expiry order (for one window, the acceptance order): expired ones
//! are pruned, and past the cap the one closest to expiry is forgotten first.
//!
//! The keys are also held in memory ([`Keys`]), loaded on open, so the check costs no sled
//! read; they are only touched under the sink's enqueue order lock, which makes
//! check-and-insert atomic against concurrent enqueues of the same key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use s2sink_core::UnixMillis;
use sled::Batch;

use crate::codec::Reader;
use crate::{keys, parts, Accepted, MessageId};

const RECORD_V1: u8 = 1;

/// How many expired records one enqueue removes at most (besides evictions for the cap):
/// pruning is spread over later batches so that no enqueue pays for a whole window at once.
pub const PRUNE_PER_BATCH: usize = 16;

/// A key as producers give it, with its kind: request keys and message keys are separate
/// namespaces (the same string may be both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdemKey {
    /// The key of a whole request (`Idempotency-Key` header).
    Request(Arc<str>),
    /// The key of one message (`metadata.idempotency_key`).
    Message(Arc<str>),
}

impl IdemKey {
    /// The key of a whole request.
    pub fn request(key: &str) -> IdemKey {
        IdemKey::Request(key.into())
    }
}

/// What a key maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A message key: the id of the message first accepted with it.
    Message(MessageId),
    /// A request key: the fingerprint of the request and its answer (boxed: message keys,
    /// the common case, stay small in memory).
    Request(Box<RequestRecord>),
}

/// What a request key remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub fingerprint: u128,
    /// The answer as runs of consecutive ids (`first`, `len`, duplicate), so a large request
    /// costs a few bytes.
    pub runs: Vec<Run>,
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

/// What one enqueue call accepted: its request key (if any) and its new message keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub accepted_at: UnixMillis,
    /// Not a duplicate of anything from this time on (accepted + the window in force then).
    pub expires_at: UnixMillis,
    pub request: Option<(Arc<str>, RequestRecord)>,
    pub messages: Vec<(Arc<str>, MessageId)>,
}

fn encode(r: &Record) -> Vec<u8> {
    let keys: usize = r.messages.iter().map(|(k, _)| k.len() + 12).sum();
    let mut v = Vec::with_capacity(64 + keys);
    v.push(RECORD_V1);
    v.extend_from_slice(&r.accepted_at.to_be_bytes());
    v.extend_from_slice(&r.expires_at.to_be_bytes());
    match &r.request {
        None => v.push(0),
        Some((key, rec)) => {
            v.push(1);
            v.extend_from_slice(&(key.len() as u32).to_be_bytes());
            v.extend_from_slice(key.as_bytes());
            v.extend_from_slice(&rec.fingerprint.to_be_bytes());
            v.extend_from_slice(&(rec.runs.len() as u32).to_be_bytes());
            for run in &rec.runs {
                v.extend_from_slice(&run.first.to_be_bytes());
                v.extend_from_slice(&run.len.to_be_bytes());
                v.push(run.duplicate as u8);
            }
        }
    }
    v.extend_from_slice(&(r.messages.len() as u32).to_be_bytes());
    for (key, id) in &r.messages {
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(key.as_bytes());
        v.extend_from_slice(&id.0.to_be_bytes());
    }
    v
}

fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_V1 {
        return None;
    }
    let accepted_at = r.u64()?;
    let expires_at = r.u64()?;
    let string = |r: &mut Reader<'_>| -> Option<Arc<str>> {
        let len = r.u32()? as usize;
        Some(std::str::from_utf8(r.take(len)?).ok()?.into())
    };
    let request = match r.u8()? {
        0 => None,
        1 => {
            let key = string(&mut r)?;
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
            Some((key, RequestRecord { fingerprint, runs }))
        }
        _ => return None,
    };
    let n = r.u32()? as usize;
    let mut messages = Vec::with_capacity(n.min(bytes.len() / 12));
    for _ in 0..n {
        let key = string(&mut r)?;
        messages.push((key, MessageId(r.u64()?)));
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Record {
        accepted_at,
        expires_at,
        request,
        messages,
    })
}

/// A record as memory holds it: its place in expiry order, its keys, and each key's entry.
type InMemory = ((UnixMillis, u64), Rec, Vec<(IdemKey, Entry)>);

/// A key's entry in memory.
#[derive(Debug)]
struct Entry {
    /// The record holding it.
    seq: u64,
    expires_at: UnixMillis,
    value: Value,
}

/// A record in memory: its keys (to forget them with it) and its size on disk.
#[derive(Debug)]
struct Rec {
    parts: u16,
    keys: Vec<IdemKey>,
}

/// The in-memory set of a sink's idempotency keys, bounded by `cap` keys.
pub struct Keys {
    map: HashMap<IdemKey, Entry>,
    /// Expiry order: (expires_at, seq) → record.
    records: BTreeMap<(UnixMillis, u64), Rec>,
    /// Keys listed by the records (≥ `map.len()`: a key accepted again after its record
    /// expired is listed by both); kept ≤ `cap`.
    listed: usize,
    next_seq: u64,
    cap: usize,
}

/// Changes decided under the lock, applied to memory once their batch is applied.
#[derive(Default)]
pub struct Staged {
    /// (expires_at, seq) of removed records, oldest first.
    removed: Vec<(UnixMillis, u64)>,
    /// Keys those records list.
    removed_keys: usize,
    inserted: Option<InMemory>,
}

impl Staged {
    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.inserted.is_none()
    }
}

impl Keys {
    /// An empty set holding at most `cap` keys (at least one).
    pub fn new(cap: usize) -> Keys {
        Keys {
            map: HashMap::new(),
            records: BTreeMap::new(),
            listed: 0,
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
            let record = decode(&bytes).ok_or(LoadError::Corrupt(seq))?;
            keys.next_seq = keys.next_seq.max(seq + 1);
            if record.expires_at <= now {
                parts::remove(batch, &keys::base(keys::IDEM, seq), n);
                continue;
            }
            let (at, rec, entries) = Self::entries(seq, n, record);
            keys.add(at, rec, entries);
        }
        let mut staged = Staged::default();
        keys.evict(batch, &mut staged, 0);
        keys.commit(staged);
        Ok(keys)
    }

    /// The memory form of a record.
    fn entries(seq: u64, parts: u16, r: Record) -> InMemory {
        let entry = |value| Entry {
            seq,
            expires_at: r.expires_at,
            value,
        };
        let mut entries = Vec::with_capacity(r.messages.len() + 1);
        if let Some((key, rec)) = r.request {
            entries.push((IdemKey::Request(key), entry(Value::Request(Box::new(rec)))));
        }
        for (key, id) in r.messages {
            entries.push((IdemKey::Message(key), entry(Value::Message(id))));
        }
        let keys = entries.iter().map(|(k, _)| k.clone()).collect();
        ((r.expires_at, seq), Rec { parts, keys }, entries)
    }

    fn add(&mut self, at: (UnixMillis, u64), rec: Rec, entries: Vec<(IdemKey, Entry)>) {
        self.listed += rec.keys.len();
        self.records.insert(at, rec);
        // A later record of the same key (accepted again after expiry) replaces it.
        self.map.extend(entries);
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// What `key` maps to, unless it expired.
    pub fn live(&self, key: &IdemKey, now: UnixMillis) -> Option<&Value> {
        self.map
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| &e.value)
    }

    /// Removes up to [`PRUNE_PER_BATCH`] expired records, and then the records closest to
    /// expiry while the keys they list leave fewer than `incoming` places under the cap.
    pub fn prune(&self, batch: &mut Batch, staged: &mut Staged, now: UnixMillis, incoming: usize) {
        for (&(expires_at, seq), rec) in self.records.iter().take(PRUNE_PER_BATCH) {
            if expires_at > now {
                break;
            }
            parts::remove(batch, &keys::base(keys::IDEM, seq), rec.parts);
            staged.removed.push((expires_at, seq));
            staged.removed_keys += rec.keys.len();
        }
        self.evict(batch, staged, incoming);
    }

    fn evict(&self, batch: &mut Batch, staged: &mut Staged, incoming: usize) {
        // What `prune` removed so far is the oldest end of `records`.
        let skip = staged.removed.len();
        for (&(expires_at, seq), rec) in self.records.iter().skip(skip) {
            if self.listed - staged.removed_keys + incoming <= self.cap {
                break;
            }
            parts::remove(batch, &keys::base(keys::IDEM, seq), rec.parts);
            staged.removed.push((expires_at, seq));
            staged.removed_keys += rec.keys.len();
        }
    }

    /// Writes the record of one call into `batch`: its request key and answer, and its new
    /// message keys (a call with more keys than the cap keeps its request key and its last
    /// message keys). Nothing when there is no key.
    pub fn record(
        &mut self,
        batch: &mut Batch,
        staged: &mut Staged,
        now: UnixMillis,
        expires_at: UnixMillis,
        request: Option<(&str, RequestRecord)>,
        mut messages: Vec<(Arc<str>, MessageId)>,
    ) {
        let room = self.cap - request.is_some() as usize;
        if messages.len() > room {
            messages.drain(..messages.len() - room);
        }
        if request.is_none() && messages.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = Record {
            accepted_at: now,
            expires_at,
            request: request.map(|(k, rec)| (Arc::from(k), rec)),
            messages,
        };
        let n = parts::put(batch, &keys::base(keys::IDEM, seq), &encode(&record), 0);
        staged.inserted = Some(Self::entries(seq, n, record));
    }

    /// Mirrors in memory what `staged` wrote (call once its batch is applied).
    pub fn commit(&mut self, staged: Staged) {
        for at in staged.removed {
            let Some(rec) = self.records.remove(&at) else {
                continue;
            };
            self.listed -= rec.keys.len();
            for key in rec.keys {
                if self.map.get(&key).is_some_and(|e| e.seq == at.1) {
                    self.map.remove(&key);
                }
            }
        }
        if let Some((at, rec, entries)) = staged.inserted {
            self.add(at, rec, entries);
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
        let record = Record {
            accepted_at: 10,
            expires_at: 20,
            request: Some((
                "k-1".into(),
                RequestRecord {
                    fingerprint: u128::MAX - 3,
                    runs,
                },
            )),
            messages: vec![("k-1".into(), MessageId(5)), ("".into(), MessageId(6))],
        };
        assert_eq!(decode(&encode(&record)), Some(record.clone()));
        let bare = Record {
            request: None,
            ..record
        };
        assert_eq!(decode(&encode(&bare)), Some(bare.clone()));
        let mut bad = encode(&bare);
        bad.push(0);
        assert_eq!(decode(&bad), None);
        assert_ne!(IdemKey::Message("k".into()), IdemKey::request("k"));
    }
}
