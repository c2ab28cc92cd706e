//! Where chunk bodies live: sled trees of their own, one per *span* of consecutive chunks
//! (a few MiB of payload), each dropped whole once every chunk in it has ended.
//!
//! A span takes chunks until it holds [`QueueOptions::span_bytes`](crate::QueueOptions) of
//! payload (16 MiB by default).
//!
//! Why: sled 0.34 keeps much of what it has read in memory (its cache accounts accesses in 256
//! shards through 64-access queues, 8 in the patched build, so a leaf pulled stays until that
//! many more accesses reach its shard), and removing a body from a leaf rewrites the whole leaf
//! through the log. Bodies in the sink's own tree, in 60 KiB values (leaves of ~1 MiB), made a
//! 1M-message drain hold ~1.4 GB. A span tree is only ever inserted into, in values of
//! [`keys::SPAN_PART`] bytes (small leaves: less rewritten per insert, less pulled per read);
//! when its last chunk ends the tree is dropped, which frees its pages in memory and on disk at
//! once, with no leaf rewrite per chunk.
//!
//! Order on disk: an enqueue's bodies and headers go in one sled transaction (one atomic log
//! batch over the span tree and the sink's tree); only when an enqueue starts a new span are
//! the bodies of the span before applied first, alone. A span is dropped only after the batch
//! removing its last header was applied. sled's log is replayed as a prefix, so a crash leaves
//! at worst a body without a header (garbage in a span, gone with the span) and never a header
//! without its body. A span whose chunks all ended before a crash is dropped at the next open.
//!
//! Chunks written before spans existed (a data directory of an older version, or converted
//! from v1) keep their bodies in the sink's tree under [`crate::keys::BODY`]: every chunk below
//! the sink's [`crate::keys::SPANS_FROM`] id.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Batch, IVec, Tree};

use crate::chunk::Body;
use crate::shared_body::{copy_part, SharedBody};
use crate::{keys, parts};

/// Prefix of the sled tree names of spans: `body2/` start-id(8, big-endian) sink-name. Their
/// values are parts of [`keys::SPAN_PART`] bytes.
pub const SPAN_PREFIX: &[u8] = b"body2/";

/// Prefix of spans written before session 23, whose values are parts of
/// [`keys::OLD_SPAN_PART`] bytes: the part size is in the name because reading a range of a
/// body needs it, and a data directory may hold spans of both until the old ones are dropped.
pub const OLD_SPAN_PREFIX: &[u8] = b"body/";

/// The tree name of the span of sink `sink` starting at chunk `start`, whose values are parts
/// of `part` bytes ([`keys::SPAN_PART`], or [`keys::OLD_SPAN_PART`] for an older span).
pub fn span_name(sink: &str, start: u64, part: usize) -> Vec<u8> {
    let prefix = if part == keys::OLD_SPAN_PART {
        OLD_SPAN_PREFIX
    } else {
        debug_assert_eq!(part, keys::SPAN_PART);
        SPAN_PREFIX
    };
    let mut n = Vec::with_capacity(prefix.len() + 8 + sink.len());
    n.extend_from_slice(prefix);
    n.extend_from_slice(&start.to_be_bytes());
    n.extend_from_slice(sink.as_bytes());
    n
}

/// The (sink, start, part size) of a span tree name.
pub fn parse_span_name(name: &[u8]) -> Option<(&[u8], u64, usize)> {
    let (rest, part) = match name.strip_prefix(SPAN_PREFIX) {
        Some(rest) => (rest, keys::SPAN_PART),
        None => (name.strip_prefix(OLD_SPAN_PREFIX)?, keys::OLD_SPAN_PART),
    };
    let start = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((&rest[8..], start, part))
}

/// The first and last value of a span with parts of `part` bytes that hold `off .. off +
/// len` of a body.
fn values_holding(part: usize, off: usize, len: usize) -> (usize, usize) {
    let last = off + len.max(1) - 1;
    (off / part, last / part)
}

struct Span {
    tree: Tree,
    /// Bytes per value (see [`span_name`]).
    part: usize,
    /// Chunks in the span whose removal is not yet applied.
    live: u64,
    /// Payload bytes written to it.
    bytes: u64,
}

#[derive(Default)]
struct Spans {
    by_start: BTreeMap<u64, Span>,
    /// The span new chunks go to (none after an open: the next enqueue starts one).
    open: Option<u64>,
}

/// One sink's span trees.
pub struct Bodies {
    db: sled::Db,
    sink: String,
    /// The sink's own tree: bodies of chunks below `spans_from`.
    legacy: Tree,
    spans_from: u64,
    /// Payload bytes after which a span takes no more chunks.
    span_bytes: u64,
    spans: Mutex<Spans>,
    reaper: Sender<Job>,
}

impl Bodies {
    /// The spans of sink `sink` (its tree is `legacy`), found by tree name. `spans_from` is
    /// the first chunk id whose body is in a span. Call [`Bodies::count_live`] for every live
    /// chunk and then [`Bodies::opened`].
    pub fn open(
        db: &sled::Db,
        sink: &str,
        legacy: Tree,
        spans_from: u64,
        span_bytes: u64,
        reaper: &Reaper,
    ) -> sled::Result<Bodies> {
        let mut spans = Spans::default();
        for name in db.tree_names() {
            let Some((owner, start, part)) = parse_span_name(&name) else {
                continue;
            };
            if owner != sink.as_bytes() {
                continue;
            }
            let tree = db.open_tree(&name)?;
            spans.by_start.insert(
                start,
                Span {
                    tree,
                    part,
                    live: 0,
                    bytes: span_bytes,
                },
            );
        }
        Ok(Bodies {
            db: db.clone(),
            sink: sink.to_string(),
            legacy,
            spans_from,
            span_bytes,
            spans: Mutex::new(spans),
            reaper: reaper.tx.clone(),
        })
    }

    /// The first chunk id whose body is in a span.
    pub fn spans_from(&self) -> u64 {
        self.spans_from
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Spans> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts chunk `first`, found live when the sink was opened.
    pub fn count_live(&self, first: u64) {
        if first < self.spans_from {
            return;
        }
        if let Some((_, span)) = self.spans().by_start.range_mut(..=first).next_back() {
            span.live += 1;
        }
    }

    /// Ends the open: spans left with no live chunk (their last chunk ended before a crash,
    /// or they only hold bodies whose headers never made it) are dropped.
    pub fn opened(&self) {
        let mut spans = self.spans();
        let empty: Vec<u64> = spans
            .by_start
            .iter()
            .filter(|(_, s)| s.live == 0)
            .map(|(start, _)| *start)
            .collect();
        for start in empty {
            self.drop_span(&mut spans, start);
        }
    }

    /// Writes the bodies of new chunks `(first, body)` (in id order) to their spans, starting
    /// a new span when the open one is full, and `head` (the chunks' headers, to the sink's
    /// tree) in one sled transaction with the last span's bodies: one sled write lock and one
    /// atomic log batch per enqueue, as when bodies and headers shared a tree (two batches
    /// made one-message enqueues half as fast). Bodies of an earlier span, when the enqueue
    /// starts a new one, are applied before it.
    pub fn write_with(&self, chunks: &[(u64, &Body)], head: &Batch) -> sled::Result<()> {
        let mut batches: Vec<(Tree, Batch)> = Vec::new();
        {
            let mut spans = self.spans();
            let mut last_start = None;
            for &(first, body) in chunks {
                let start = self.span_for_new(&mut spans, first)?;
                let span = spans.by_start.get_mut(&start).expect("open span");
                span.live += 1;
                span.bytes += body.shared.len() as u64;
                if last_start != Some(start) {
                    batches.push((span.tree.clone(), Batch::default()));
                    last_start = Some(start);
                }
                let batch = &mut batches.last_mut().expect("pushed").1;
                body.put(batch, first);
            }
        }
        // Outside the lock: readers only look for chunks whose headers are in, after this.
        let (last_tree, last) = batches.pop().expect("an enqueue stores at least one chunk");
        for (tree, batch) in batches {
            tree.apply_batch(batch)?;
        }
        (&last_tree, &self.legacy)
            .transaction(|(bodies, sink)| {
                bodies.apply_batch(&last)?;
                sink.apply_batch(head)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => e,
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })
    }

    /// The start of the span chunk `first` goes to, opening a new one when needed.
    fn span_for_new(&self, spans: &mut Spans, first: u64) -> sled::Result<u64> {
        if let Some(open) = spans.open {
            if spans.by_start[&open].bytes < self.span_bytes {
                return Ok(open);
            }
        }
        // Short-lived (the patched sled in vendor/sled): dropping it frees its pages without
        // reading them back.
        let tree = self
            .db
            .open_short_lived_tree(span_name(&self.sink, first, keys::SPAN_PART))?;
        spans.by_start.insert(
            first,
            Span {
                tree,
                part: keys::SPAN_PART,
                live: 0,
                bytes: 0,
            },
        );
        if let Some(old) = spans.open.replace(first) {
            if spans.by_start.get(&old).is_some_and(|s| s.live == 0) {
                self.drop_span(spans, old);
            }
        }
        Ok(first)
    }

    /// Chunk `first`'s body (`body_parts` parts of [`keys::PART`] if it is below
    /// `spans_from`), `None` if no span holds it or it is missing: a corrupt index. The
    /// values sled returned, shared (see [`SharedBody`]): each is an allocation of its own,
    /// so the cache that keeps them counts exactly what it pins.
    pub fn read(&self, first: u64, body_parts: u16) -> sled::Result<Option<SharedBody>> {
        let base = keys::base(keys::BODY, first);
        if first < self.spans_from {
            let body = parts::get(&self.legacy, &base, body_parts)?;
            return Ok(body.map(|b| SharedBody::new(vec![IVec::from(&b[..])])));
        }
        let Some(tree) = self.tree_of(first) else {
            return Ok(None);
        };
        // One walk over the parts (consecutive keys) instead of a lookup per part.
        let mut values = Vec::new();
        for kv in tree.scan_prefix(base) {
            values.push(kv?.1);
        }
        Ok((!values.is_empty()).then(|| SharedBody::new(values)))
    }

    /// Bytes `off .. off + len` of chunk `first`'s body, reading only the span values that
    /// hold them: for a message whose chunk the cache will not keep, where reading the whole
    /// body (~60 KiB for a 1 KiB message) and dropping it was most of a restart drain's CPU.
    /// `None` when the chunk's body is not in a span (an older layout, whose part size is not
    /// known here: read it whole) or the values do not hold the range (a corrupt index).
    pub fn read_range(&self, first: u64, off: usize, len: usize) -> sled::Result<Option<Bytes>> {
        let Some((tree, part)) = self.span_of(first) else {
            return Ok(None);
        };
        let end = off + len;
        if len == 0 {
            return Ok(Some(Bytes::new()));
        }
        let (p0, p1) = values_holding(part, off, len);
        let (Ok(lo), Ok(hi)) = (u16::try_from(p0), u16::try_from(p1)) else {
            return Ok(None);
        };
        let base = keys::base(keys::BODY, first);
        let mut out = Vec::with_capacity(len);
        let mut at = p0 * part; // body offset of the value in hand

        // A lookup per value (one or two): sled's range iterator starts by cloning the leaf
        // it reads from (every entry's key and value handle), a lookup does not.
        for part in lo..=hi {
            let Some(value) = tree.get(keys::part(&base, part))? else {
                break;
            };
            at = copy_part(&mut out, &value, at, off, end);
        }
        Ok((out.len() == len).then(|| Bytes::from(out)))
    }

    /// Bytes [`Bodies::read_range`] reads from sled for `off .. off + len` of chunk `first`'s
    /// body; `None` when it reads none (the body is read whole instead).
    pub fn range_bytes(&self, first: u64, off: usize, len: usize) -> Option<usize> {
        let part = self.in_span(first, |s| s.part)?;
        let (p0, p1) = values_holding(part, off, len);
        Some(if len == 0 { 0 } else { (p1 - p0 + 1) * part })
    }

    /// The tree and part size of the span holding chunk `first`; `None` for a body in the
    /// older layout (the sink's own tree, parts of a size not known here) or when no span
    /// holds it (a corrupt index).
    fn span_of(&self, first: u64) -> Option<(Tree, usize)> {
        self.in_span(first, |s| (s.tree.clone(), s.part))
    }

    /// `f` of the span holding chunk `first`; `None` below `spans_from` (the sink's own
    /// tree) or when no span holds it (a corrupt index).
    fn in_span<T>(&self, first: u64, f: impl FnOnce(&Span) -> T) -> Option<T> {
        if first < self.spans_from {
            return None;
        }
        self.spans()
            .by_start
            .range(..=first)
            .next_back()
            .map(|(_, s)| f(s))
    }

    /// The tree holding chunk `first`'s body (`None`: no span holds it, a corrupt index).
    pub fn tree_of(&self, first: u64) -> Option<Tree> {
        if first < self.spans_from {
            return Some(self.legacy.clone());
        }
        self.in_span(first, |s| s.tree.clone())
    }

    /// Chunks `ended` were removed by a batch that is now applied: a span whose chunks have
    /// all ended is dropped (unless new chunks still go to it).
    pub fn release(&self, ended: &[u64]) {
        let mut spans = self.spans();
        for &first in ended {
            if first < self.spans_from {
                continue;
            }
            let Some((&start, span)) = spans.by_start.range_mut(..=first).next_back() else {
                continue;
            };
            span.live = span.live.saturating_sub(1);
            if span.live == 0 && spans.open != Some(start) {
                self.drop_span(&mut spans, start);
            }
        }
    }

    /// How many span trees the sink has (for tests and monitoring).
    pub fn span_count(&self) -> usize {
        self.spans().by_start.len()
    }

    /// Forgets span `start` and has the reaper drop its tree (by the name its part size
    /// gives it).
    fn drop_span(&self, spans: &mut Spans, start: u64) {
        let Some(span) = spans.by_start.remove(&start) else {
            return;
        };
        // Dropping reads the tree's leaves to free them: off the caller's thread.
        let _ = self
            .reaper
            .send(Job::Drop(span_name(&self.sink, start, span.part).into()));
    }
}

enum Job {
    Drop(IVec),
    Stop,
}

/// The thread that drops ended spans (sled's `drop_tree` reads every leaf of the tree, which
/// must not happen under a sink's lock or on an engine thread). Dropping it finishes the
/// drops already asked for and joins the thread.
pub struct Reaper {
    tx: Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the thread, dropping trees of `db`.
    pub fn start(db: sled::Db) -> std::io::Result<Reaper> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("s2sink-queue-reap".into())
            .spawn(move || reap(db, rx))?;
        Ok(Reaper {
            tx,
            thread: Some(thread),
        })
    }
}

fn reap(db: sled::Db, rx: Receiver<Job>) {
    while let Ok(Job::Drop(name)) = rx.recv() {
        if let Err(e) = db.drop_tree(&name) {
            // The span's chunks have ended: its bodies are garbage, found again at the next
            // open (a span with no live chunk is dropped then).
            tracing::warn!(error = %e, "could not drop an ended span of chunk bodies");
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.tx.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Span trees of sink `s` left in the database.
    fn span_trees(db: &sled::Db) -> Vec<u64> {
        db.tree_names()
            .iter()
            .filter_map(|n| parse_span_name(n))
            .filter(|(sink, _, _)| *sink == b"s")
            .map(|(_, start, _)| start)
            .collect()
    }

    /// A database in a temporary directory (kept while the directory is), with its reaper.
    fn database() -> (tempfile::TempDir, sled::Db, Reaper) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let reaper = Reaper::start(db.clone()).unwrap();
        (dir, db, reaper)
    }

    /// Sink `s`'s bodies in `db`.
    fn sink_bodies(db: &sled::Db, reaper: &Reaper, spans_from: u64, span_bytes: u64) -> Bodies {
        let legacy = db.open_tree("sink/s").unwrap();
        Bodies::open(db, "s", legacy, spans_from, span_bytes, reaper).unwrap()
    }

    #[test]
    fn a_span_leaves_sled_once_its_chunks_ended_but_the_open_span_stays() {
        let (_dir, db, reaper) = database();
        // Spans of 100 bytes: each 120-byte chunk fills one.
        let bodies = sink_bodies(&db, &reaper, 10, 100);
        let body = crate::chunk::body([&[1u8; 60][..], &[2u8; 60][..]].into_iter());
        bodies
            .write_with(&[(10, &body)], &Batch::default())
            .unwrap();
        bodies
            .write_with(&[(12, &body), (14, &body)], &Batch::default())
            .unwrap();
        assert_eq!(bodies.span_count(), 3);
        let part0 = |first| keys::part(&keys::base(keys::BODY, first), 0);
        let read =
            |bodies: &Bodies, first| bodies.tree_of(first).unwrap().get(part0(first)).unwrap();
        assert_eq!(
            read(&bodies, 12).as_deref(),
            Some(&body.shared.to_vec()[..])
        );
        // Below `spans_from`: the sink's own tree (where the test wrote nothing).
        assert_eq!(read(&bodies, 9), None);

        bodies.release(&[12]);
        assert_eq!(bodies.span_count(), 2, "an ended span is dropped");
        bodies.release(&[14]);
        assert_eq!(
            bodies.span_count(),
            2,
            "the open span takes new chunks: kept"
        );
        bodies
            .write_with(&[(16, &body)], &Batch::default())
            .unwrap();
        assert_eq!(
            bodies.span_count(),
            2,
            "the ended open span goes when the next opens"
        );
        assert_eq!(
            read(&bodies, 10).as_deref(),
            Some(&body.shared.to_vec()[..])
        );
        drop(bodies);
        drop(reaper); // finishes the drops asked for
        assert_eq!(span_trees(&db), vec![10, 16]);

        // Reopened: the spans are found by name; one with no live chunk left is dropped.
        let reaper = Reaper::start(db.clone()).unwrap();
        let bodies = sink_bodies(&db, &reaper, 10, 100);
        bodies.count_live(10);
        bodies.opened();
        assert_eq!(bodies.span_count(), 1);
        assert_eq!(
            read(&bodies, 10).as_deref(),
            Some(&body.shared.to_vec()[..])
        );
        drop(bodies);
        drop(reaper);
        assert_eq!(span_trees(&db), vec![10]);
    }

    #[test]
    fn a_body_read_back_is_the_values_written_shared_not_copies() {
        let (_dir, db, reaper) = database();
        let bodies = sink_bodies(&db, &reaper, 0, 1 << 20);
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 700]).collect();
        let body = crate::chunk::body(payloads.iter().map(|p| &p[..]));
        assert_eq!(
            body.shared.values().len(),
            14_000usize.div_ceil(keys::SPAN_PART)
        );
        bodies.write_with(&[(0, &body)], &Batch::default()).unwrap();
        let read = bodies.read(0, 0).unwrap().expect("written");
        assert_eq!(read.to_vec(), payloads.concat());
        // The very allocations ingest handed to sled (what the cache holds after an
        // enqueue), not a second copy of the body.
        let ptrs = |b: &SharedBody| b.values().iter().map(|v| v.as_ptr()).collect::<Vec<_>>();
        assert_eq!(ptrs(&read), ptrs(&body.shared));
        assert_eq!(bodies.read(1, 0).unwrap().map(|b| b.len()), None);
    }

    #[test]
    fn a_range_read_is_the_bytes_of_the_values_holding_it_and_nothing_past_the_body() {
        let (_dir, db, reaper) = database();
        let bodies = sink_bodies(&db, &reaper, 0, 1 << 20);
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 700]).collect();
        let whole = payloads.concat(); // 14,000 bytes: 4 span values
        let body = crate::chunk::body(payloads.iter().map(|p| &p[..]));
        bodies.write_with(&[(0, &body)], &Batch::default()).unwrap();
        let part = keys::SPAN_PART;
        for (off, len) in [
            (0, 700),             // inside the first value
            (part - 100, 700),    // across a value boundary
            (part * 3 + 1, 1000), // inside the last (short) value
            (13_300, 700),        // the body's end
            (5, 0),
        ] {
            let got = bodies.read_range(0, off, len).unwrap();
            assert_eq!(got.as_deref(), Some(&whole[off..off + len]), "{off}+{len}");
        }
        // Past the body's end: not the bytes asked for, so the caller reads it whole.
        assert_eq!(bodies.read_range(0, 13_900, 200).unwrap(), None);
        assert_eq!(bodies.read_range(0, part * 4, 10).unwrap(), None);
    }

    #[test]
    fn a_span_of_the_older_part_size_is_read_with_it_and_dropped_by_its_own_name() {
        let (_dir, db, reaper) = database();
        // As a build before 4,088-byte parts left it: a `body/` span of 4,096-byte values.
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 700]).collect();
        let whole = payloads.concat();
        let old_part = keys::OLD_SPAN_PART;
        let old = crate::chunk::body_in_parts(payloads.iter().map(|p| &p[..]), old_part);
        let tree = db.open_tree(span_name("s", 0, old_part)).unwrap();
        let mut batch = Batch::default();
        old.put(&mut batch, 0);
        tree.apply_batch(batch).unwrap();

        let bodies = sink_bodies(&db, &reaper, 0, 1 << 20);
        bodies.count_live(0);
        bodies.opened();
        assert_eq!(bodies.span_count(), 1);
        // Offsets where the two part sizes put different bytes in a value.
        for (off, len, values) in [
            (0, 700, 1),
            (old_part - 100, 700, 2),
            (old_part * 3 + 1, 1000, 1),
        ] {
            let got = bodies.read_range(0, off, len).unwrap();
            assert_eq!(got.as_deref(), Some(&whole[off..off + len]), "{off}+{len}");
            assert_eq!(bodies.range_bytes(0, off, len), Some(values * old_part));
        }
        assert_eq!(
            bodies.read(0, 0).unwrap().map(|b| b.to_vec()),
            Some(whole.clone())
        );

        // New chunks go to a span of today's part size, next to the old one.
        let new = crate::chunk::body(payloads.iter().map(|p| &p[..]));
        bodies.write_with(&[(2, &new)], &Batch::default()).unwrap();
        let part = keys::SPAN_PART;
        let got = bodies.read_range(2, part - 100, 700).unwrap();
        assert_eq!(got.as_deref(), Some(&whole[part - 100..part + 600]));
        assert_eq!(bodies.range_bytes(2, part - 100, 700), Some(2 * part));

        bodies.release(&[0]);
        drop(bodies);
        drop(reaper); // finishes the drops asked for
        assert_eq!(
            span_trees(&db),
            vec![2],
            "the old span is dropped by its own name"
        );
        assert!(db
            .tree_names()
            .iter()
            .all(|n| !n.starts_with(OLD_SPAN_PREFIX)));
    }

    #[test]
    fn span_names_round_trip_and_keep_the_sink_apart() {
        let n = span_name("a/b", 42, keys::SPAN_PART);
        assert!(n.starts_with(SPAN_PREFIX));
        assert_eq!(
            parse_span_name(&n),
            Some((&b"a/b"[..], 42, keys::SPAN_PART))
        );
        let old = span_name("a/b", 42, keys::OLD_SPAN_PART);
        assert!(old.starts_with(OLD_SPAN_PREFIX));
        assert_eq!(
            parse_span_name(&old),
            Some((&b"a/b"[..], 42, keys::OLD_SPAN_PART))
        );
        assert_eq!(parse_span_name(b"sink/x"), None);
        assert_eq!(parse_span_name(b"body/123"), None);
        assert_eq!(parse_span_name(b"body2/123"), None);
    }
}
