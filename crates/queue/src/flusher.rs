//! Group commit: one thread flushes sled for every writer waiting at the time.
//!
//! A writer applies its batch (in memory), registers, and waits for a flush that *started*
//! after it registered. The flusher thread takes every registration present when it starts a
//! flush (one generation number), so N concurrent writers share one fsync instead of paying N.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// The outcome of the latest finished flush.
#[derive(Clone)]
struct Done {
    /// The generation of the last finished flush.
    generation: u64,
    /// Set forever once a flush failed: the disk state is unknown from then on.
    error: Option<sled::Error>,
}

#[derive(Default)]
struct Requests {
    /// The generation the next flush will have.
    next: u64,
    /// Writers registered since the last flush started.
    waiting: usize,
    shutdown: bool,
}

struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
    done: watch::Sender<Done>,
}

/// Handle on the flusher thread; dropping it flushes what is waiting and joins the thread.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Why a wait for durability failed.
pub enum FlushError {
    /// sled's flush failed.
    Storage(sled::Error),
    /// The flusher is gone (cannot happen while the queue is alive).
    Stopped,
}

impl Flusher {
    /// Starts the thread flushing `db`.
    /// `delay` is waited before each flush, to gather more writers into it.
    pub fn start(db: sled::Db, delay: std::time::Duration) -> std::io::Result<Flusher> {
        let (done, _) = watch::channel(Done {
            generation: 0,
            error: None,
        });
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests {
                next: 1,
                ..Requests::default()
            }),
            wake: Condvar::new(),
            done,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("s2sink-queue-flush".into())
            .spawn(move || run(worker, db, delay))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// How many flushes finished so far.
    pub fn count(&self) -> u64 {
        self.shared.done.borrow().generation
    }

    /// Waits until everything written before this call is on disk.
    pub async fn wait(&self) -> Result<(), FlushError> {
        let mut rx = self.shared.done.subscribe();
        let target = {
            let mut r = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if r.shutdown {
                return Err(FlushError::Stopped);
            }
            r.waiting += 1;
            r.next
        };
        self.shared.wake.notify_one();
        let done = rx
            .wait_for(|d| d.generation >= target || d.error.is_some())
            .await
            .map_err(|_| FlushError::Stopped)?;
        match &done.error {
            Some(e) => Err(FlushError::Storage(e.clone())),
            None => Ok(()),
        }
    }
}

/// A flush at least this long is logged (debug).
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

fn run(shared: Arc<Shared>, db: sled::Db, delay: std::time::Duration) {
    loop {
        {
            let mut r = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
            while r.waiting == 0 && !r.shutdown {
                r = shared.wake.wait(r).unwrap_or_else(|p| p.into_inner());
            }
            if r.waiting == 0 {
                return;
            }
        }
        if !delay.is_zero() {
            // Let more writers join this flush (and, in tests, widen the apply→flush window).
            std::thread::sleep(delay);
        }
        let generation = {
            let mut r = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
            r.waiting = 0;
            r.next += 1;
            r.next - 1
        };
        let started = std::time::Instant::now();
        let result = db.flush();
        let took = started.elapsed();
        if took >= SLOW_FLUSH {
            // Every writer waiting for this flush waited this long: where ingest latency goes.
            tracing::debug!(
                ms = took.as_millis() as u64,
                bytes = result.as_ref().map_or(0, |b| *b),
                "slow sled flush"
            );
        }
        shared.done.send_modify(|d| {
            d.generation = generation;
            if let Err(e) = result {
                tracing::error!(error = %e, "sled flush failed; the queue stops");
                d.error.get_or_insert(e);
            }
        });
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
