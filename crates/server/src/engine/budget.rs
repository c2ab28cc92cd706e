//! ByteBudget: an engine-wide cap on bytes held at once, shared by every sink.
//!
//! Two budgets use it: the payload bytes group actors hold (read from the queue and not yet
//! delivered or failed: the run and the copy a writer holds of it), and the JSON bytes of
//! appends in flight. Without the first, memory grows with the backlog: every live group
//! reads up to two runs (2 MiB) of its head, so 10k groups behind a 1 GB backlog held about a
//! gigabyte. Counted in KiB permits of a fair (FIFO) semaphore; one holder never asks for
//! more than the whole budget, so it never waits forever.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A budget of bytes, cheap to clone (shared inside).
#[derive(Clone)]
pub struct ByteBudget {
    sem: Arc<Semaphore>,
    kib: u32,
    /// Most KiB held at once so far (for tests and benchmarks: proves the budget is used).
    high_water: Arc<AtomicU64>,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
pub struct Held {
    permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> ByteBudget {
        let kib = (bytes / 1024).clamp(1, u32::MAX as u64 / 2) as u32;
        ByteBudget {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
            high_water: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> usize {
        self.kib as usize * 1024
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held_kib() * 1024
    }

    fn held_kib(&self) -> usize {
        self.kib as usize - self.sem.available_permits()
    }

    /// The most bytes held at once so far.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Relaxed) as usize * 1024
    }

    /// Waits until `bytes` (rounded up to KiB, at most the whole budget) are free and takes
    /// them.
    pub async fn take(&self, bytes: usize) -> Held {
        let kib = Self::kib_of(bytes).min(self.kib);
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("a byte budget is never closed");
        self.note_high_water();
        Held { permit }
    }

    /// Takes `bytes` (as [`take`](ByteBudget::take)) only if they are free now: for work
    /// that can wait for its own holdings to come back instead of waiting here (a group that
    /// reads ahead while its earlier runs, held, are still in flight).
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        let kib = Self::kib_of(bytes).min(self.kib);
        let permit = self.sem.clone().try_acquire_many_owned(kib).ok()?;
        self.note_high_water();
        Some(Held { permit })
    }

    fn note_high_water(&self) {
        self.high_water.fetch_max(self.held_kib() as u64, Relaxed);
    }

    fn kib_of(bytes: usize) -> u32 {
        bytes.div_ceil(1024).clamp(1, u32::MAX as usize / 2) as u32
    }
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits() * 1024
    }

    /// Keeps only `bytes` (rounded up to KiB) of what was taken and gives the rest back:
    /// take the most a read may need, read, then keep what it really holds.
    pub fn keep(&mut self, bytes: usize) {
        let keep = ByteBudget::kib_of(bytes) as usize;
        let extra = self.permit.num_permits().saturating_sub(keep);
        if extra > 0 {
            drop(self.permit.split(extra));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takers_wait_for_room_and_keep_gives_the_rest_back() {
        let budget = ByteBudget::new(64 * 1024);
        let mut a = budget.take(48 * 1024).await;
        assert_eq!(budget.held(), 48 * 1024);
        // 32 KiB do not fit beside 48: the second taker waits.
        let b = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take(32 * 1024).await })
        };
        tokio::task::yield_now().await;
        assert!(!b.is_finished());
        // The first read turned out to hold 10 KiB: the rest goes back, the second fits.
        a.keep(10 * 1000);
        assert_eq!(a.bytes(), 10 * 1024);
        let b = b.await.unwrap();
        assert_eq!(budget.held(), 42 * 1024);
        assert_eq!(budget.high_water(), 48 * 1024);
        drop((a, b));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn try_take_takes_only_what_is_free_now() {
        let budget = ByteBudget::new(8 * 1024);
        let a = budget.try_take(6 * 1024).expect("free");
        assert!(budget.try_take(4 * 1024).is_none(), "only 2 KiB are free");
        let b = budget.try_take(2 * 1024).expect("exactly what is left");
        assert_eq!(budget.held(), 8 * 1024);
        drop((a, b));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn one_taker_never_asks_for_more_than_the_whole_budget() {
        let budget = ByteBudget::new(8 * 1024);
        let held = budget.take(10 * 1024 * 1024).await;
        assert_eq!(held.bytes(), 8 * 1024);
        // Zero bytes still count one KiB (a message always costs something).
        drop(held);
        assert_eq!(budget.take(0).await.bytes(), 1024);
    }
}
