//! The patch to sled the queue builds with (`vendor/sled`, S2SINK-PATCHES.md): dropping a tree
//! whose pages are not known (a span found on disk at open: after every restart) walks its
//! leaves, pulling each back from disk only to free it. Each page freed must be destroyed as
//! the walk goes. Upstream walked under one epoch guard, so every leaf it pulled stayed
//! allocated until the walk ended (a 1M-message restart drain held ~75 MB of such leaves).
//! Alone in its test binary: it counts this process's heap with a global allocator of its own.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes allocated now and the most ever at once.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VALUE: usize = 4096;
/// 48 MiB of values: far more than the walk may hold at once.
const VALUES: u32 = 12_288;

#[test]
fn dropping_a_tree_found_on_disk_frees_each_leaf_as_the_walk_goes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = common::open(dir.path(), 1 << 20);
        let t = db.open_short_lived_tree("span").unwrap();
        for i in 0..VALUES {
            t.insert(i.to_be_bytes(), vec![(i % 251) as u8; VALUE])
                .unwrap();
        }
        db.flush().unwrap();
    }
    // Reopened, the tree is found on disk: its pages are not known, the drop walks it.
    let db = common::open(dir.path(), 1 << 20);
    assert!(db.tree_names().iter().any(|n| n == b"span"));
    let before = NOW.load(Relaxed);
    PEAK.store(before, Relaxed);
    assert!(db.drop_tree("span").unwrap());
    let grew = PEAK.load(Relaxed).saturating_sub(before);
    eprintln!("the drop held at most {} KiB at once", grew >> 10);
    // Upstream: the whole tree (~52 MiB: every leaf pulled, held until the walk ends); a guard
    // per page without flushing it: ~9 MiB (freed pages wait in the thread's deferred bag);
    // flushed: ~0.2 MiB on an idle machine, but up to ~10 MiB on a loaded one (a freed page is
    // destroyed only once the global epoch advances, which waits for every pinned thread,
    // sled's own included, to be scheduled). The bound tells the walk from upstream's, not
    // the machine's load.
    assert!(
        grew < 24 << 20,
        "dropping a 48 MiB tree held {} MiB at once",
        grew >> 20
    );
    drop(db);
    let db = common::open(dir.path(), 1 << 20);
    assert!(db.tree_names().iter().all(|n| n != b"span"));
}
