//! The data directory's layout and the conversion of a v1 queue.
//!
//! Storage v2 is a sled database in `<data dir>/queue-v2` (1 MiB segments, 8 MiB in one
//! created before session 7; see [`keys::PART`](crate::keys::PART)). A v1 database — sled's
//! files directly in the data directory, one key per message — is converted on open, losing
//! nothing:
//!
//! 1. the v1 database is read and written as v2 into `queue-v2.converting` (pending messages
//!    as chunks, failed ones with their state, the discarded list, counters, markers), flushed;
//! 2. `queue-v2.converting` is renamed to `queue-v2` (the commit point);
//! 3. the v1 files are removed.
//!
//! A crash before 2 redoes the conversion; after it, the next open finishes 3. Converted
//! messages keep their ids and get epoch 0, whose delivery id is the plain decimal id v1 wrote
//! into S2 headers, so reconciliation still recognises records appended before the upgrade.

use std::path::{Path, PathBuf};

use sled::Batch;

use crate::codec::{self, Meta, Record};
use crate::keys::{self, OLD_SEGMENT_SIZE, PART, SEGMENT_SIZE};
use crate::sink::TREE_PREFIX;
use crate::{chunk, parts, v1, QueueError};

const V2_DIR: &str = "queue-v2";
const CONVERTING_DIR: &str = "queue-v2.converting";
const MARKERS_TREE: &[u8] = b"markers";

type Result<T> = std::result::Result<T, QueueError>;

fn storage(op: &'static str) -> impl Fn(sled::Error) -> QueueError {
    move |source| QueueError::Storage {
        op,
        sink: None,
        source,
    }
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> QueueError {
    move |e| QueueError::Storage {
        op,
        sink: None,
        source: sled::Error::Io(e),
    }
}

/// Opens sled, waiting briefly if the directory's lock is still held: when a queue in this
/// process was just dropped, sled's background threads may hold the database for a moment.
/// Another process holding the lock still fails, after about 2 s.
fn open_db(config: sled::Config) -> std::result::Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if tries < 100 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn v2_config(path: &Path, cache_capacity: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .segment_size(segment_size(path))
}

/// The segment size to open the database at `path` with: the one it was created with (sled
/// refuses to open it with another), [`SEGMENT_SIZE`] for a new one.
fn segment_size(path: &Path) -> usize {
    // sled's `conf` file: lines `key: value`, then a checksum.
    let Ok(conf) = std::fs::read(path.join("conf")) else {
        return SEGMENT_SIZE;
    };
    let persisted = String::from_utf8_lossy(&conf).lines().find_map(|l| {
        l.strip_prefix("segment_size: ")?
            .trim()
            .parse::<usize>()
            .ok()
    });
    match persisted {
        Some(size) => size,
        // Unreadable: let sled say what is wrong with its file, for the size all older data
        // dirs have.
        None => OLD_SEGMENT_SIZE,
    }
}

/// Whether `dir` holds a v1 database.
fn has_v1(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Opens the v2 database of data directory `dir`, converting a v1 database first.
pub fn open(dir: &Path, cache_capacity: u64) -> Result<sled::Db> {
    std::fs::create_dir_all(dir).map_err(io("open"))?;
    let v2 = dir.join(V2_DIR);
    if !v2.exists() && has_v1(dir) {
        let tmp = dir.join(CONVERTING_DIR);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("upgrade"))?;
        }
        tracing::info!(dir = %dir.display(), "converting the v1 queue to storage v2");
        convert(dir, &tmp, cache_capacity)?;
        std::fs::rename(&tmp, &v2).map_err(io("upgrade"))?;
        sync_dir(dir)?;
    }
    if v2.exists() && has_v1(dir) {
        remove_v1(dir)?;
    }
    open_db(v2_config(&v2, cache_capacity)).map_err(storage("open"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("upgrade"))
}

/// Removes sled's v1 files from `dir` (after the converted copy was committed).
fn remove_v1(dir: &Path) -> Result<()> {
    let mut victims: Vec<PathBuf> = vec![dir.join("conf"), dir.join("db")];
    for entry in std::fs::read_dir(dir).map_err(io("upgrade"))? {
        let path = entry.map_err(io("upgrade"))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") || name == "blobs" {
            victims.push(path);
        }
    }
    for p in victims {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io("upgrade")(e));
            }
        }
    }
    sync_dir(dir)
}

fn convert(v1_dir: &Path, tmp: &Path, cache_capacity: u64) -> Result<()> {
    let old = open_db(
        sled::Config::new()
            .path(v1_dir)
            .cache_capacity(cache_capacity),
    )
    .map_err(storage("upgrade"))?;
    let new = open_db(v2_config(tmp, cache_capacity)).map_err(storage("upgrade"))?;
    let markers = old.open_tree(MARKERS_TREE).map_err(storage("upgrade"))?;
    let new_markers = new.open_tree(MARKERS_TREE).map_err(storage("upgrade"))?;
    for kv in markers.iter() {
        let (k, v) = kv.map_err(storage("upgrade"))?;
        new_markers.insert(k, v).map_err(storage("upgrade"))?;
    }
    for name in old.tree_names() {
        if name.starts_with(TREE_PREFIX) {
            let sink = String::from_utf8_lossy(&name[TREE_PREFIX.len()..]).into_owned();
            let from = old.open_tree(&name).map_err(storage("upgrade"))?;
            let to = new.open_tree(&name).map_err(storage("upgrade"))?;
            convert_sink(&sink, &from, &to)?;
        }
    }
    new.flush().map_err(storage("upgrade"))?;
    Ok(())
}

fn convert_sink(sink: &str, from: &sled::Tree, to: &sled::Tree) -> Result<()> {
    let corrupt = |what: String| QueueError::Corrupt {
        sink: sink.to_string(),
        what,
    };
    let st = |source| QueueError::Storage {
        op: "upgrade",
        sink: Some(sink.to_string()),
        source,
    };
    let (next_id, delivered, discarded) = match from.get(b"#").map_err(st)? {
        Some(b) => v1::decode_meta(&b).ok_or_else(|| corrupt("v1 meta record".into()))?,
        None => (1, 0, 0),
    };
    // Pending messages, in id order: never-failed ones into chunks (a new chunk where the
    // acceptance time changes, as v1 stamped one time per enqueue), failed ones on their own.
    let mut run: Vec<(u64, v1::Record)> = Vec::new();
    let flush_run = |run: &mut Vec<(u64, v1::Record)>| -> Result<()> {
        let groups: Vec<Vec<u8>> = run.iter().map(|(_, r)| r.group.encode()).collect();
        let mut start = 0;
        while start < run.len() {
            let end = chunk::end(|i| run[i].1.payload.len(), start, run.len());
            // ids inside a chunk are consecutive: cut where they are not.
            let end = (start + 1..end)
                .find(|&i| run[i].0 != run[i - 1].0 + 1)
                .unwrap_or(end);
            let entries: Vec<(&[u8], u32)> = (start..end)
                .map(|i| (&groups[i][..], run[i].1.payload.len() as u32))
                .collect();
            // The layout before spans: the body in the sink's tree, in parts of `PART`.
            let body = chunk::body_in_parts((start..end).map(|i| &run[i].1.payload[..]), PART);
            let mut batch = Batch::default();
            chunk::put(
                &mut batch,
                run[start].0,
                0,
                run[start].1.enqueued_at,
                &entries,
                &body,
            );
            to.apply_batch(batch).map_err(st)?;
            start = end;
        }
        run.clear();
        Ok(())
    };
    for kv in from.scan_prefix([v1::MESSAGE]) {
        let (k, v) = kv.map_err(st)?;
        let id = u64::from_be_bytes(
            k.get(1..9)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("v1 message key".into()))?,
        );
        let r = v1::decode_record(&v).ok_or_else(|| corrupt(format!("v1 message {id}")))?;
        let failed = r.state != crate::DeliveryState::default();
        if failed {
            flush_run(&mut run)?;
            let record = Record {
                epoch: 0,
                enqueued_at: r.enqueued_at,
                group: r.group.clone(),
                state: r.state.clone(),
                payload_len: r.payload.len() as u32,
            };
            let mut batch = Batch::default();
            chunk::put_failed(&mut batch, id, &record, &r.payload);
            to.apply_batch(batch).map_err(st)?;
        } else {
            if run
                .last()
                .is_some_and(|(_, last)| last.enqueued_at != r.enqueued_at)
            {
                flush_run(&mut run)?;
            }
            run.push((id, r));
        }
    }
    flush_run(&mut run)?;
    for kv in from.scan_prefix([v1::DISCARDED]) {
        let (k, v) = kv.map_err(st)?;
        let seq = u64::from_be_bytes(
            k.get(1..9)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("v1 discarded key".into()))?,
        );
        let (at, id, r) =
            v1::decode_discarded(&v).ok_or_else(|| corrupt(format!("v1 discarded entry {seq}")))?;
        let record = Record {
            epoch: 0,
            enqueued_at: r.enqueued_at,
            group: r.group,
            state: r.state,
            payload_len: r.payload.len() as u32,
        };
        let entry = codec::encode_discarded(at, id, &record, &r.payload);
        let mut batch = Batch::default();
        parts::put(&mut batch, &keys::base(keys::DISCARDED, seq), &entry, 0);
        to.apply_batch(batch).map_err(st)?;
    }
    let meta = Meta {
        next_id,
        epoch: 0,
        delivered,
        discarded,
    };
    to.insert(keys::META, &meta.encode_ids()[..]).map_err(st)?;
    to.insert(keys::TOTALS, &meta.encode_totals()[..])
        .map_err(st)?;
    Ok(())
}
