//! Shared by the tests of the patched sled (`short_lived_trees.rs`, `short_lived_appends.rs`).

use sled::{Config, Db};

/// Opens the sled database in `dir` with 1 MiB segments (the queue's) and `cache_capacity`.
/// Right after a `Db` of it is dropped, sled's background threads may hold its lock for a
/// moment (as the queue's own open allows for): polled, with a deadline.
pub fn open(dir: &std::path::Path, cache_capacity: u64) -> Db {
    let config = Config::new()
        .path(dir)
        .segment_size(1 << 20)
        .cache_capacity(cache_capacity);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
}
