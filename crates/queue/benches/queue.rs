//! Load benchmarks of the durable queue (a plain binary: these are throughput runs over
//! hundreds of thousands of messages, not micro-benchmarks). Results: `docs/BENCHMARKS.md`.
//!
//! `cargo bench -p s2sink-queue --bench queue` runs everything at full size (a few minutes);
//! `QUEUE_BENCH_SCALE=0.1` shrinks every message count,
//! `QUEUE_BENCH_ONLY=cycle|cycle-paced|enqueue|ack|reopen|disk` runs some parts,
//! `QUEUE_BENCH_CYCLE_MSGS` sets how many messages a cycle part reads and acks (400k),
//! `QUEUE_BENCH_DIR` chooses the disk (default: the system temp dir),
//! `QUEUE_BENCH_MIMALLOC_DEFAULTS=1` skips
//! [`s2sink_queue::tune_mimalloc`] (which the `s2-sink` binary calls).
//!
//! `cycle` is the storage target: enqueue + read + ack of 1 KB messages over 10k groups with a
//! 200k backlog, reporting the process's CPU time (user + system, every thread, sled's
//! included, from /proc/self/stat) per message. `cycle-paced` (line `cycle/p`) is the same
//! with head runs paced to the read-ahead, as the engine's group actors read.

use std::path::Path;
use std::time::{Duration, Instant};

use s2sink_core::GroupKey;
use s2sink_queue::{MessageId, NewMessage, Paced, Queue, QueueOptions};

/// The allocator the `s2-sink` binary uses, so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SINK: &str = "bench";
const PAYLOAD: usize = 1024;

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("QUEUE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(1)
}

/// Messages a cycle part reads and acks: 400k (scaled), or `QUEUE_BENCH_CYCLE_MSGS` for a
/// longer run that spreads the process's one-time growth (its first touch of fresh memory) over
/// more messages.
fn cycle_msgs() -> usize {
    std::env::var("QUEUE_BENCH_CYCLE_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| scale(400_000))
}

fn wanted(part: &str) -> bool {
    std::env::var("QUEUE_BENCH_ONLY").map_or(true, |v| v.split(',').any(|p| p == part))
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var("QUEUE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn batch(n: usize, groups: u64, seq: &mut u64) -> Vec<NewMessage> {
    (0..n)
        .map(|_| {
            *seq += 1;
            NewMessage::new(
                Some(GroupKey(format!("public.orders/{}", *seq % groups))),
                vec![b'x'; PAYLOAD],
            )
        })
        .collect()
}

/// The queue options of every part: defaults, or `QUEUE_BENCH_CACHE_MB` of payload cache.
fn open(path: &Path) -> Queue {
    let mut o = QueueOptions::default();
    if let Some(mb) = env_mb("QUEUE_BENCH_CACHE_MB") {
        o.payload_cache_bytes = (mb << 20) as usize;
    }
    if let Some(mb) = env_mb("QUEUE_BENCH_SLED_CACHE_MB") {
        o.cache_capacity = mb << 20;
    }
    Queue::open_with(path, o).unwrap()
}

/// A size in MiB from the environment variable `name`, when set and a number.
fn env_mb(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>9.0} msg/s", n as f64 / d.as_secs_f64())
}

/// `producers` tasks each enqueue batches of `batch_size` until `total` messages are durable.
fn enqueue(rt: &tokio::runtime::Runtime, producers: usize, batch_size: usize, total: usize) {
    let dir = tempdir();
    let q = open(dir.path());
    let per = total / producers / batch_size;
    let flushes = q.flush_count();
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut seq = p as u64 * 1_000_000_000;
                    for _ in 0..per {
                        q.enqueue(SINK, batch(batch_size, 100_000, &mut seq))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let d = start.elapsed();
    let n = per * producers * batch_size;
    println!(
        "enqueue  producers={producers:>2} batch={batch_size:>3} msgs={n:>7}  {}  {:>6.1} MB/s  flushes={}  ({:.2?})",
        rate(n, d),
        (n * PAYLOAD) as f64 / 1e6 / d.as_secs_f64(),
        q.flush_count() - flushes,
        d
    );
}

fn fill(rt: &tokio::runtime::Runtime, q: &Queue, total: usize, groups: u64) -> Vec<MessageId> {
    rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut seq = p as u64;
                    let mut ids = Vec::new();
                    for _ in 0..total / 16 / 100 {
                        // Spread groups evenly: message k goes to group k % groups.
                        let msgs: Vec<NewMessage> = (0..100)
                            .map(|_| {
                                seq += 16;
                                NewMessage::new(
                                    Some(GroupKey(format!("public.orders/{}", seq % groups))),
                                    vec![b'x'; PAYLOAD],
                                )
                            })
                            .collect();
                        ids.extend(
                            q.enqueue(SINK, msgs)
                                .await
                                .unwrap()
                                .into_iter()
                                .map(|e| e.id),
                        );
                    }
                    ids
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        ids.sort();
        ids
    })
}

/// What the process did so far that the cycle reports: bytes its `write`s and `read`s moved
/// (`/proc/self/io` `wchar`/`rchar`: sled's log writes and the page reads of what it pulls back,
/// page cache included) and its minor page faults (fresh memory the kernel zeroed).
#[derive(Clone, Copy)]
struct Io {
    wrote: u64,
    read: u64,
    faults: u64,
}

fn io() -> Io {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Io {
        wrote: field("wchar:"),
        read: field("rchar:"),
        faults: stat_field(10), // minflt
    }
}

/// Numeric field `n` (1-based, as `man proc` counts) of `/proc/self/stat`.
fn stat_field(n: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
}

/// CPU time (user + system) of this process so far, all threads.
fn cpu() -> Duration {
    let ticks = stat_field(14) + stat_field(15); // utime, stime
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// The engine's pattern on a standing backlog: producers enqueue 1 KB messages in requests
/// of 500; a consumer walks the groups, reads each head run (as a group actor does) and acks
/// ~1000 ids at a time (as a writer does after an append). Reports CPU µs per message.
/// `paced`: head runs wait for the read-ahead as the engine's group actors do
/// ([`Queue::head_run_paced`]); a group told to wait is skipped until the next pass over the
/// groups, and a pass that delivered nothing sleeps 1 ms (the engine checks its waiting groups
/// every 5 ms). Unpaced: every head run reads what it needs itself (the engine's path for a
/// group that waited its limit).
fn cycle(rt: &tokio::runtime::Runtime, backlog: usize, total: usize, groups: u64, paced: bool) {
    let dir = tempdir();
    let q = open(dir.path());
    fill(rt, &q, backlog, groups);
    let mut seq = 7u64;
    let rss0 = rss_mib();
    let (cpu0, io0, t0) = (cpu(), io(), Instant::now());
    let mut consumed = 0usize;
    let mut enqueued = 0usize;
    let mut cursor: Option<s2sink_queue::GroupRef> = None;
    let mut pending_ack: Vec<MessageId> = Vec::new();
    // As the engine does: a stream's low-water mark stored at most once a second, which also
    // writes the acks deferred since (so their cost is counted here).
    let mut last_mark = Instant::now();
    while consumed < total {
        if enqueued < total {
            let reqs: Vec<_> = (0..4)
                .map(|_| q.enqueue(SINK, batch(500, groups, &mut seq)))
                .collect();
            rt.block_on(async {
                for r in reqs {
                    r.await.unwrap();
                }
            });
            enqueued += 2000;
        }
        let mut took = 0;
        let mut took_at_pass = 0;
        while took < 2000 {
            let page = q.pending_groups_page(SINK, cursor.as_ref(), 64).unwrap();
            if page.is_empty() {
                cursor = None;
                if took == took_at_pass {
                    std::thread::sleep(Duration::from_millis(1));
                }
                took_at_pass = took;
                continue;
            }
            for g in &page {
                // The next pass starts after the last group served, so that stopping at 2000
                // (below) leaves no group behind.
                cursor = Some(g.clone());
                let run = match q.head_run_paced(SINK, g, 1000, 1 << 20, paced).unwrap() {
                    Paced::Run(run) => run,
                    Paced::Wait(_) => continue,
                };
                took += run.len();
                pending_ack.extend(run.iter().map(|m| m.id));
                if pending_ack.len() >= 1000 {
                    q.ack(SINK, &pending_ack).unwrap();
                    pending_ack.clear();
                    if last_mark.elapsed() >= Duration::from_secs(1) {
                        rt.block_on(q.put_marker("lwm/bench", &consumed.to_be_bytes()))
                            .unwrap();
                        last_mark = Instant::now();
                    }
                }
                // As many read as enqueued per round (to a run's length), so the backlog
                // stays at its size instead of draining: stopping only at the end of a page
                // of 64 groups read ~2,560 per 2,000 enqueued.
                if took >= 2000 {
                    break;
                }
            }
        }
        consumed += took;
    }
    q.ack(SINK, &pending_ack).unwrap();
    rt.block_on(q.flush()).unwrap();
    let (cpu_used, io1, wall) = (cpu() - cpu0, io(), t0.elapsed());
    let hwm = peak_rss_mib();
    let tag = if paced { "/p" } else { "  " };
    println!(
        "cycle{tag}  peak RSS {hwm} MB (payload cache {} MB of chunk bodies at the end)",
        q.cached_bytes() >> 20
    );
    let payload = (enqueued * PAYLOAD) as f64;
    let left = (backlog + enqueued).saturating_sub(consumed);
    println!(
        "cycle{tag}  RSS {rss0} MB after the fill; over the cycle: wrote {} ({:.1}x the payload \
         enqueued), read {}, {} minor page faults; backlog at the end {left}",
        mib(io1.wrote - io0.wrote),
        (io1.wrote - io0.wrote) as f64 / payload,
        mib(io1.read - io0.read),
        io1.faults - io0.faults
    );
    println!(
        "cycle{tag}  backlog={backlog} groups={groups} enqueued={enqueued} read+acked={consumed}  \
         CPU {:.1} µs/msg (user+sys, all threads; {:.2?} CPU in {:.2?} wall)",
        cpu_used.as_secs_f64() * 1e6 / consumed.max(enqueued) as f64,
        cpu_used,
        wall
    );
}

fn ack(rt: &tokio::runtime::Runtime, total: usize) {
    for per_call in [1usize, 100] {
        let dir = tempdir();
        let q = open(dir.path());
        let n = if per_call == 1 { total / 4 } else { total };
        let ids = fill(rt, &q, n, 10_000);
        let start = Instant::now();
        for chunk in ids.chunks(per_call) {
            q.ack(SINK, chunk).unwrap();
        }
        rt.block_on(q.flush()).unwrap();
        let d = start.elapsed();
        println!(
            "ack      ids/call={per_call:>3} msgs={:>7}  {}  ({d:.2?}, incl. one final flush)",
            ids.len(),
            rate(ids.len(), d)
        );
    }
}

fn reopen(rt: &tokio::runtime::Runtime, total: usize, groups: u64) {
    let dir = tempdir();
    let start = Instant::now();
    {
        let q = open(dir.path());
        fill(rt, &q, total, groups);
    }
    println!(
        "reopen   filled {total} msgs in {groups} groups in {:.2?}, {} on disk",
        start.elapsed(),
        mib(dir_size(dir.path()))
    );
    println!("reopen   RSS before reopening {} MiB", rss_mib());
    if std::env::var("QUEUE_BENCH_SLED_SCAN").is_ok() {
        // Experiment: read every value straight from sled (same config as the queue's).
        let db = sled::Config::new()
            .path(dir.path().join("queue-v2"))
            .cache_capacity(env_mb("QUEUE_BENCH_SLED_CACHE_MB").unwrap_or(64) << 20)
            .segment_size(8 << 20)
            .open()
            .unwrap();
        println!("sledscan opened; RSS {} MiB", rss_mib());
        let mut bytes = 0usize;
        for name in db.tree_names() {
            for (i, kv) in db.open_tree(name).unwrap().iter().enumerate() {
                bytes += kv.unwrap().1.len();
                if std::env::var("QUEUE_BENCH_EBR_FLUSH").is_ok() && i % 64 == 0 {
                    sled::pin().flush();
                }
            }
        }
        println!(
            "sledscan read {} MiB of values; RSS {} MiB (peak {} MiB; anon {} MiB, file {} MiB)",
            bytes >> 20,
            rss_mib(),
            peak_rss_mib(),
            status_kib("RssAnon:") / 1024,
            status_kib("RssFile:") / 1024
        );
        drop(db);
        println!("sledscan dropped the db; RSS {} MiB", rss_mib());
        return;
    }
    let start = Instant::now();
    let q = open(dir.path());
    let opened = start.elapsed();
    let g = q.pending_groups(SINK).unwrap();
    let listed = start.elapsed();
    let counts = q.counts(SINK);
    let t = q.open_times();
    println!(
        "reopen   open {opened:.2?} (sled recovery {:.2?}, index rebuild {:.2?}), + pending_groups ({} groups) = {listed:.2?}; pending={}; RSS {} MiB",
        t.recovery,
        t.rebuild,
        g.len(),
        counts.pending,
        rss_mib()
    );
    // Every group's head run once (what delivery reads first after a restart).
    let start = Instant::now();
    let mut read = 0usize;
    for group in &g {
        read += q.head_run(SINK, group, 1000, 1 << 20).unwrap().len();
    }
    println!(
        "reopen   every group's head run ({read} msgs) {:.2?}; RSS {} MiB (peak {} MiB)",
        start.elapsed(),
        rss_mib(),
        peak_rss_mib()
    );
    drop(q);
    let start = Instant::now();
    let q = open(dir.path());
    let t = q.open_times();
    println!(
        "reopen   second open (nothing written since) {:.2?} (sled recovery {:.2?}, index rebuild {:.2?})",
        start.elapsed(),
        t.recovery,
        t.rebuild
    );
    assert_eq!(g.len() as u64, groups.min(total as u64));
    assert_eq!(counts.pending as usize, total / 1600 * 1600);
    let start = Instant::now();
    let first = q.head_run(SINK, &g[0], 1000, 1 << 20).unwrap();
    println!(
        "reopen   first head run ({} msgs, cold cache) {:.2?}",
        first.len(),
        start.elapsed()
    );
}

fn disk(rt: &tokio::runtime::Runtime, cycles: usize) {
    let dir = tempdir();
    let q = open(dir.path());
    let start = Instant::now();
    let mut seq = 0;
    let report_every = (cycles / 10).max(100);
    let mut line = String::new();
    rt.block_on(async {
        for i in 0..cycles / 100 {
            let ids: Vec<MessageId> = q
                .enqueue(SINK, batch(100, 1000, &mut seq))
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            q.ack(SINK, &ids).unwrap();
            let done = (i + 1) * 100;
            if done % report_every == 0 {
                q.flush().await.unwrap();
                line.push_str(&format!(" {}k:{}", done / 1000, mib(dir_size(dir.path()))));
            }
        }
    });
    println!("disk     {cycles} enqueue+ack cycles (1 KB, batches of 100) in {:.2?}; size on disk after:{line}", start.elapsed());
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// The process's resident memory now (`VmRSS`), MiB.
fn rss_mib() -> u64 {
    status_kib("VmRSS:") / 1024
}

/// The process's peak resident memory (`VmHWM`), MiB.
fn peak_rss_mib() -> u64 {
    status_kib("VmHWM:") / 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?.to_string();
            line[field.len()..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn mib(b: u64) -> String {
    format!("{:.0}MiB", b as f64 / (1 << 20) as f64)
}

fn main() {
    // As the `s2-sink` binary does; `QUEUE_BENCH_MIMALLOC_DEFAULTS=1` measures without it.
    if std::env::var_os("QUEUE_BENCH_MIMALLOC_DEFAULTS").is_none() {
        s2sink_queue::tune_mimalloc();
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let rt = runtime();
    if wanted("cycle") {
        cycle(&rt, scale(200_000), cycle_msgs(), 10_000, false);
    }
    if wanted("cycle-paced") {
        cycle(&rt, scale(200_000), cycle_msgs(), 10_000, true);
    }
    if wanted("enqueue") {
        for producers in [1, 16, 64] {
            enqueue(
                &rt,
                producers,
                100,
                scale(if producers == 1 { 100_000 } else { 400_000 }),
            );
        }
        for producers in [1, 16, 64] {
            enqueue(
                &rt,
                producers,
                1,
                scale(if producers == 1 { 2_000 } else { 20_000 }),
            );
        }
    }
    if wanted("ack") {
        ack(&rt, scale(200_000));
    }
    if wanted("reopen") {
        reopen(&rt, scale(1_000_000), scale(100_000) as u64);
    }
    if wanted("disk") {
        disk(&rt, scale(1_000_000));
    }
}
