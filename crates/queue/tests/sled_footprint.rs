//! The patch to sled the queue builds with (`vendor/sled`, S2SINK-PATCHES.md): with sled's
//! metrics off (its default), its 42 latency histograms allocate no buckets. Upstream zeroes
//! 512 KiB for each at the first database operation: 22 MB of resident memory for nothing.
//! Alone in its test binary: it measures this process's resident memory around the first use
//! of sled, which initializes the histograms once per process.

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn opening_and_writing_a_small_database_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let before = rss_kib();
    let db = sled::Config::new()
        .path(dir.path())
        .segment_size(1 << 20)
        .cache_capacity(1 << 20)
        .open()
        .unwrap();
    let t = db.open_short_lived_tree("span").unwrap();
    for i in 0..100u32 {
        t.insert(i.to_be_bytes(), vec![1u8; 100]).unwrap();
    }
    db.flush().unwrap();
    let grew = rss_kib().saturating_sub(before);
    // ~22 MiB with upstream's histograms; a few MiB without (IO buffers, threads' stacks).
    assert!(
        grew < 12 * 1024,
        "sled took {} MiB of resident memory",
        grew / 1024
    );
}
