//! The patch to sled the queue builds with (`vendor/sled`, S2SINK-PATCHES.md): a short-lived
//! tree's rightmost leaf splits off only its last entry, before it is ever consolidated, so a
//! tree filled in key order (a span of chunk bodies) keeps full leaves, each rewritten once.
//! Upstream's middle splits leave every leaf half full and rewrite it more. Alone in its test
//! binary: it counts the bytes this process writes.

use sled::{Config, Db};

const VALUE: usize = 4096;

fn open(dir: &std::path::Path) -> Db {
    Config::new()
        .path(dir)
        .segment_size(1 << 20)
        .cache_capacity(64 << 20)
        .open()
        .unwrap()
}

fn value(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v
}

/// Bytes this process has passed to `write` calls so far.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("wchar:")).unwrap();
    line["wchar:".len()..].trim().parse().unwrap()
}

#[test]
fn a_short_lived_tree_filled_in_order_writes_less_and_reads_back_whole() {
    // The same 16 MiB in key order into a plain tree and a short-lived one, then a fifth as many
    // keys between them (out of order: those leaves split as upstream's do), then a reopen.
    let n = 4096u32;
    let mut wrote = Vec::new();
    for short_lived in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            let t = if short_lived {
                db.open_short_lived_tree("span").unwrap()
            } else {
                db.open_tree("span").unwrap()
            };
            db.flush().unwrap();
            let before = written();
            for i in 0..n {
                t.insert((2 * i).to_be_bytes(), value(2 * i)).unwrap();
            }
            db.flush().unwrap();
            wrote.push((written() - before) as f64 / (n as usize * VALUE) as f64);
            for i in (0..n).step_by(5) {
                t.insert((2 * i + 1).to_be_bytes(), value(2 * i + 1))
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let db = open(dir.path());
        let t = db.open_tree("span").unwrap();
        let mut expected = (0..n)
            .map(|i| 2 * i)
            .chain((0..n).step_by(5).map(|i| 2 * i + 1))
            .collect::<Vec<_>>();
        expected.sort_unstable();
        let keys = t
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                let k = u32::from_be_bytes(k.as_ref().try_into().unwrap());
                assert_eq!(v, value(k), "key {k}");
                k
            })
            .collect::<Vec<_>>();
        assert_eq!(keys, expected, "short-lived: {short_lived}");
    }
    // 3.6x the values for the plain tree and 2.7x for the short-lived one when this was written.
    let (plain, short) = (wrote[0], wrote[1]);
    assert!(
        short < plain * 0.85,
        "the short-lived tree wrote {short:.2}x its values, the plain one {plain:.2}x"
    );
}
