//! The prefetcher: a thread that keeps each sink's payload cache filled with the bodies of
//! its **oldest** live chunks, read whole, in id order, outside the sink's lock.
//!
//! Why: groups deliver from their oldest pending message, so once a backlog outgrows the
//! cache (a restart with a large backlog, ingest faster than delivery for a while) the bodies
//! delivery needs next are exactly the oldest ones the cache does not hold. Without this, each
//! group read them itself, one message at a time, at random places in sled: sled pulled a
//! whole leaf from disk for each ~1 KiB message, and those pulls were a quarter of the
//! server's CPU while the backlog lasted. Read in id order, one leaf pull serves a whole
//! chunk, and the groups' runs find their messages cached.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sink::{Prefetched, Sink};

/// How long the thread waits after a pass that loaded something or found a cache full (space
/// comes back as chunks end), and after a pass with nothing to load.
const BUSY_WAIT: Duration = Duration::from_millis(5);
const IDLE_WAIT: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Control {
    sinks: Vec<Arc<Sink>>,
    kicked: bool,
    stop: bool,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
}

/// Handle on the prefetch thread; dropping it stops and joins the thread.
pub struct Prefetcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts the thread, with no sinks yet.
    pub fn start() -> std::io::Result<Prefetcher> {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("s2sink-queue-prefetch".into())
            .spawn(move || run(&worker))?;
        Ok(Prefetcher {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a sink to keep filled, and starts a pass now (a sink just opened has an empty
    /// cache and maybe a backlog).
    pub fn watch(&self, sink: Arc<Sink>) {
        let mut c = self.control();
        c.sinks.push(sink);
        c.kicked = true;
        self.shared.wake.notify_one();
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.shared
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.control().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut wait = Duration::ZERO;
    loop {
        let sinks = {
            let mut c = shared.control.lock().unwrap_or_else(|p| p.into_inner());
            if !c.kicked && !c.stop && !wait.is_zero() {
                c = shared
                    .wake
                    .wait_timeout(c, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if c.stop {
                return;
            }
            c.kicked = false;
            c.sinks.clone()
        };
        wait = IDLE_WAIT;
        for sink in sinks {
            loop {
                match sink.prefetch() {
                    Ok(Prefetched::Loaded) => wait = BUSY_WAIT,
                    Ok(Prefetched::Full) => {
                        wait = BUSY_WAIT;
                        break;
                    }
                    Ok(Prefetched::Idle) => break,
                    Err(e) => {
                        // Only a read ahead: delivery reads the same body itself when it
                        // needs it, and meets (and reports) the same error there.
                        tracing::warn!(sink = %sink.name, error = %e, "could not read a chunk body ahead of delivery");
                        break;
                    }
                }
            }
        }
    }
}
