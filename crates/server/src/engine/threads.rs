//! The engine's threads: supervisors and group actors spread over N actix arbiters.
//!
//! Each arbiter (a thread with its own single-threaded runtime) runs one supervisor shard per
//! sink; a group always hashes to the same shard, so its actor — and so its delivery order —
//! lives on one thread. Stream writers live on the arbiter their (sink, stream) hashes to and
//! take runs from group actors of every shard over a channel. With one thread the engine runs
//! on the arbiter that started it and starts no thread (what tests with paused tokio time
//! need, since paused time is per runtime).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr};
use actix_rt::{Arbiter, ArbiterHandle};

/// Where engine work runs: the calling arbiter, or N arbiters of the engine's own.
#[derive(Clone, Default)]
pub(crate) struct Homes {
    /// Empty: the calling arbiter only.
    handles: Arc<Vec<ArbiterHandle>>,
}

impl Homes {
    /// How many shards there are (at least 1).
    pub fn count(&self) -> usize {
        self.handles.len().max(1)
    }

    /// The shard `key` belongs to: stable for the life of the process.
    pub fn shard_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        if self.handles.len() <= 1 {
            return 0;
        }
        // SipHash with fixed keys: the same key always lands on the same shard.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        key.hash(&mut h);
        (h.finish() % self.handles.len() as u64) as usize
    }

    /// Runs `f` on the shard's arbiter (queued behind what it is doing), or right here when
    /// the engine has no threads of its own.
    pub fn run_on(&self, shard: usize, f: impl FnOnce() + Send + 'static) {
        match self.handles.get(shard) {
            Some(h) => {
                // False only once the arbiter stopped (engine dropped): nothing to run then.
                let _ = h.spawn_fn(f);
            }
            None => f(),
        }
    }

    /// Starts an actor on the shard's arbiter; `make` builds it there (its state may be
    /// thread-local).
    pub fn start_on<A>(&self, shard: usize, make: impl FnOnce() -> A + Send + 'static) -> Addr<A>
    where
        A: Actor<Context = actix::Context<A>>,
    {
        match self.handles.get(shard) {
            Some(h) => A::start_in_arbiter(h, move |_| make()),
            None => make().start(),
        }
    }
}

/// The engine's arbiters. Dropping the last engine handle stops them and waits for their
/// threads, so the actors' hold on the queue is gone when the drop returns (a test or an
/// embedding program can open the same data directory again at once).
pub(crate) struct Threads {
    pub homes: Homes,
    owned: Mutex<Vec<Arbiter>>,
    /// The engine's stop flag: set before the arbiters stop, so group actors end their loops
    /// instead of retrying writers whose arbiter is gone.
    stopping: Arc<AtomicBool>,
}

impl Threads {
    /// `n` ≤ 1: the calling arbiter; otherwise `n` new arbiters.
    pub fn start(n: usize, stopping: Arc<AtomicBool>) -> Threads {
        let owned: Vec<Arbiter> = if n <= 1 {
            Vec::new()
        } else {
            (0..n).map(|_| Arbiter::new()).collect()
        };
        let handles = owned.iter().map(|a| a.handle()).collect();
        Threads {
            homes: Homes {
                handles: Arc::new(handles),
            },
            owned: Mutex::new(owned),
            stopping,
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let owned = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|e| e.into_inner()));
        if !owned.is_empty() {
            self.stopping.store(true, Relaxed);
        }
        for a in &owned {
            a.stop();
        }
        for a in owned {
            let _ = a.join();
        }
    }
}
