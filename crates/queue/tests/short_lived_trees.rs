//! The patch to sled the queue builds with (`vendor/sled`, S2SINK-PATCHES.md): a tree created by
//! `open_short_lived_tree` remembers its pages, and dropping it frees them without reading them
//! back. These tests pin what the queue relies on: a drop still frees every page (the log's size
//! stays bounded over many spans), and freeing by the remembered page list never touches a page
//! of another tree, also across a reopen.

mod common;

use sled::Db;

const VALUE: usize = 4096;

fn open(dir: &std::path::Path) -> Db {
    common::open(dir, 8 << 20)
}

fn value(tree: u32, i: u32) -> Vec<u8> {
    let mut v = vec![(tree % 251) as u8; VALUE];
    v[..4].copy_from_slice(&tree.to_be_bytes());
    v[4..8].copy_from_slice(&i.to_be_bytes());
    v
}

/// Fills a short-lived tree with `n` values of 4 KiB, as a span of chunk bodies is filled.
fn fill(db: &Db, name: &str, tree: u32, n: u32) -> sled::Tree {
    let t = db.open_short_lived_tree(name).unwrap();
    for i in 0..n {
        t.insert(i.to_be_bytes(), value(tree, i)).unwrap();
    }
    t
}

#[test]
fn dropped_short_lived_trees_free_their_pages_for_the_next_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    // 40 trees of 2,000 × 4 KiB (8 MiB each, 320 MiB in all), never more than two alive.
    for k in 0..40u32 {
        let t = fill(&db, &format!("span/{k}"), k, 2000);
        // Read some back: the pages are evicted and pulled like the queue's bodies.
        assert_eq!(
            t.get(1000u32.to_be_bytes()).unwrap().unwrap(),
            value(k, 1000)
        );
        if k > 0 {
            assert!(db.drop_tree(format!("span/{}", k - 1)).unwrap());
        }
        db.flush().unwrap();
    }
    assert!(db.drop_tree("span/39").unwrap());
    db.flush().unwrap();
    let size = db.size_on_disk().unwrap();
    // Without freeing, the log holds every tree ever written (> 320 MiB).
    assert!(
        size < 160 << 20,
        "the log kept {} MiB for at most 16 MiB of live data",
        size >> 20
    );
    drop(db);
    let db = open(dir.path());
    assert!(db.tree_names().iter().all(|n| !n.starts_with(b"span/")));
}

#[test]
fn a_dropped_short_lived_tree_leaves_other_trees_whole_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let kept = db.open_tree("kept").unwrap();
        for round in 0..6u32 {
            let name = format!("span/{round}");
            let t = db.open_short_lived_tree(&name).unwrap();
            // Interleave: the kept tree splits and allocates pages between the span's own.
            for i in 0..1500u32 {
                t.insert(i.to_be_bytes(), value(round, i)).unwrap();
                let k = round * 1500 + i;
                kept.insert(k.to_be_bytes(), value(1000 + round, i))
                    .unwrap();
            }
            assert!(db.drop_tree(&name).unwrap());
            // Pages freed by the drop are reused by the kept tree from here on.
            for i in 0..300u32 {
                let k = 100_000 + round * 300 + i;
                kept.insert(k.to_be_bytes(), value(2000 + round, i))
                    .unwrap();
            }
        }
        db.flush().unwrap();
        check_kept(&kept);
    }
    let db = open(dir.path());
    check_kept(&db.open_tree("kept").unwrap());
    assert!(db.tree_names().iter().all(|n| !n.starts_with(b"span/")));
}

fn check_kept(kept: &sled::Tree) {
    assert_eq!(kept.len(), 6 * 1500 + 6 * 300);
    for round in 0..6u32 {
        for i in (0..1500u32).step_by(7) {
            let k = round * 1500 + i;
            assert_eq!(
                kept.get(k.to_be_bytes()).unwrap().unwrap(),
                value(1000 + round, i),
                "key {k}"
            );
        }
        for i in (0..300u32).step_by(7) {
            let k = 100_000 + round * 300 + i;
            assert_eq!(
                kept.get(k.to_be_bytes()).unwrap().unwrap(),
                value(2000 + round, i),
                "key {k}"
            );
        }
    }
}
