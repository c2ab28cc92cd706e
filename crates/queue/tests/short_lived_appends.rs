//! The patch to sled the queue builds with (`vendor/sled`, S2SINK-PATCHES.md): a short-lived
//! tree's rightmost leaf splits off only its last entry, before it is ever consolidated, so a
//! tree filled in key order (a span of chunk bodies) keeps full leaves, each rewritten once.
//! Upstream's middle splits leave every leaf half full and rewrite it more. A batch's and a
//! transaction's writes are applied in key order, so a chunk body written as one batch appends
//! too. Alone in its test binary: it counts the bytes this process writes.

mod common;

use sled::Db;

const VALUE: usize = 4096;

fn open(dir: &std::path::Path) -> Db {
    common::open(dir, 64 << 20)
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

/// How the values go in: one insert each, one batch, or one transaction. sled applies a batch's
/// and a transaction's writes at once; the patched sled applies them in key order (upstream: in
/// a `HashMap`'s order, which spreads them over the tree like random inserts).
#[derive(Clone, Copy, Debug)]
enum Fill {
    Inserts,
    Batch,
    Transaction,
}

fn fill(t: &sled::Tree, keys: impl Iterator<Item = u32>, how: Fill) {
    let keys: Vec<u32> = keys.collect();
    match how {
        Fill::Inserts => {
            for k in keys {
                t.insert(k.to_be_bytes(), value(k)).unwrap();
            }
        }
        Fill::Batch => {
            // Batches of 128 values (512 KiB), as an ingest chunk's body is written.
            for c in keys.chunks(128) {
                let mut b = sled::Batch::default();
                for &k in c {
                    b.insert(&k.to_be_bytes(), value(k));
                }
                t.apply_batch(b).unwrap();
            }
        }
        Fill::Transaction => {
            for c in keys.chunks(128) {
                t.transaction(|tx| {
                    for &k in c {
                        tx.insert(&k.to_be_bytes(), value(k))?;
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .unwrap();
            }
        }
    }
}

#[test]
fn a_short_lived_tree_filled_in_order_writes_less_and_reads_back_whole() {
    // The same 16 MiB in key order into a plain tree and a short-lived one, then a fifth as many
    // keys between them (out of order: those leaves split as upstream's do), then a reopen.
    let n = 4096u32;
    for how in [Fill::Inserts, Fill::Batch, Fill::Transaction] {
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
                fill(&t, (0..n).map(|i| 2 * i), how);
                db.flush().unwrap();
                wrote.push((written() - before) as f64 / (n as usize * VALUE) as f64);
                fill(&t, (0..n).step_by(5).map(|i| 2 * i + 1), how);
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
            assert_eq!(keys, expected, "{how:?}, short-lived: {short_lived}");
        }
        // 3.6x the values for the plain tree and 2.7x for the short-lived one when this was
        // written (inserts; batches and transactions alike once applied in key order).
        let (plain, short) = (wrote[0], wrote[1]);
        assert!(
            short < plain * 0.85,
            "{how:?}: the short-lived tree wrote {short:.2}x its values, the plain one {plain:.2}x"
        );
    }
}
