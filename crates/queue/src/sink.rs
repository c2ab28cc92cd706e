//! One sink's tree and its in-memory copy of the meta record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::codec::Meta;
use crate::keys;
use crate::QueueError;

/// Prefix of the sled tree names that hold sinks.
pub const TREE_PREFIX: &[u8] = b"sink/";

/// A sink's storage. Writers hold `meta` while they build and apply their batch, so batches of
/// one sink are applied in the order their meta was computed and the persisted counters and id
/// high-water mark never go backwards.
pub struct Sink {
    pub name: String,
    pub tree: sled::Tree,
    meta: Mutex<Meta>,
    /// Mirror of `meta.pending` for lock-free totals across sinks.
    pending: AtomicU64,
}

impl Sink {
    /// Opens (or creates) the tree of sink `name` and reads its meta.
    pub fn open(db: &sled::Db, name: &str) -> Result<Sink, QueueError> {
        let storage = |source| QueueError::Storage {
            op: "open sink",
            sink: Some(name.to_string()),
            source,
        };
        let mut tree_name = TREE_PREFIX.to_vec();
        tree_name.extend_from_slice(name.as_bytes());
        let tree = db.open_tree(tree_name).map_err(storage)?;
        let meta = match tree.get(keys::META).map_err(storage)? {
            Some(bytes) => Meta::decode(&bytes).ok_or_else(|| QueueError::Corrupt {
                sink: name.to_string(),
                what: "meta record".into(),
            })?,
            None => Meta::new(),
        };
        Ok(Sink {
            name: name.to_string(),
            tree,
            pending: AtomicU64::new(meta.pending),
            meta: Mutex::new(meta),
        })
    }

    /// Locks the meta for a write.
    pub fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a meta that was just persisted.
    pub fn commit(&self, guard: &mut MutexGuard<'_, Meta>, meta: Meta) {
        **guard = meta;
        self.pending.store(meta.pending, Ordering::Relaxed);
    }

    /// Messages in the queue.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
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
}
