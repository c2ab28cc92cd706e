//! The engine's notion of "now", tied to tokio's clock.
//!
//! Backoff deadlines are stored as wall-clock milliseconds (they survive restarts), but the
//! engine measures them through tokio's `Instant` so tests can pause and advance time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s2sink_core::UnixMillis;
use tokio::time::Instant;

/// Wall-clock milliseconds derived from a fixed origin plus tokio's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_wall: UnixMillis,
    origin: Instant,
}

impl Clock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            origin_wall: wall,
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch, advancing with tokio's clock.
    pub fn now_millis(&self) -> UnixMillis {
        self.origin_wall + self.origin.elapsed().as_millis() as u64
    }

    /// How long from now until `at` (zero when `at` is past).
    pub fn until(&self, at: UnixMillis) -> Duration {
        Duration::from_millis(at.saturating_sub(self.now_millis()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
