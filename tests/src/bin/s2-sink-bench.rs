//! `s2-sink-bench`: end-to-end load generator. Starts s2-lite and the `s2-sink` server, offers
//! load over the ingest API, reads the stream back and reports delivered messages/s, ingest-to-S2
//! latency percentiles, duplicates, order violations, server RSS and CPU — next to s2-lite's raw
//! append ceiling measured in the same run with ideal 1000-record batches.
//!
//! ```text
//! s2-sink-bench [--duration S] [--groups N] [--size BYTES] [--rate MSG_PER_S] [--producers N]
//!               [--batch N] [--hot] [--ceiling-secs S] [--smoke] [--server-bin PATH]
//!               [--live-groups N] [--restart-pending N]
//! ```
//! `--restart-pending N` measures recovery instead: it fills the queue with N messages while
//! delivery is throttled, SIGKILLs the server, restarts it normally and reports how long until
//! delivery resumes and until the backlog is drained.
//! ```text
//! ```
//! Exit status is non-zero on any lost or duplicated message or order violation (never on speed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use s2sink_client::{AppendInput, AppendRecord};
use s2sink_server::engine::our_id;
use s2sink_tests::process::{http_client, wait_drained, ServerProcess};
use s2sink_tests::{eventually, read_all, LiteServer};

#[derive(Debug, Clone)]
struct Opts {
    duration: u64,
    groups: u64,
    size: usize,
    rate: u64,
    producers: usize,
    batch: usize,
    hot: bool,
    ceiling_secs: u64,
    server_bin: Option<String>,
    live_groups: Option<u64>,
    restart_pending: u64,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            duration: 60,
            groups: 10_000,
            size: 1024,
            rate: 0,
            producers: 8,
            batch: 500,
            hot: false,
            ceiling_secs: 10,
            server_bin: None,
            live_groups: None,
            restart_pending: 0,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let v = || args.get(i + 1).cloned().unwrap_or_default();
            let num = |s: String| {
                s.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{} needs a number", args[i]))
            };
            match args[i].as_str() {
                "--duration" => {
                    o.duration = num(v());
                    i += 1
                }
                "--groups" => {
                    o.groups = num(v()).max(1);
                    i += 1
                }
                "--size" => {
                    o.size = num(v()) as usize;
                    i += 1
                }
                "--rate" => {
                    o.rate = num(v());
                    i += 1
                }
                "--producers" => {
                    o.producers = num(v()).max(1) as usize;
                    i += 1
                }
                "--batch" => {
                    o.batch = num(v()).max(1) as usize;
                    i += 1
                }
                "--ceiling-secs" => {
                    o.ceiling_secs = num(v());
                    i += 1
                }
                "--server-bin" => {
                    o.server_bin = Some(v());
                    i += 1
                }
                "--live-groups" => {
                    o.live_groups = Some(num(v()));
                    i += 1
                }
                "--restart-pending" => {
                    o.restart_pending = num(v());
                    i += 1
                }
                "--hot" => o.hot = true,
                "--smoke" => {
                    o.duration = 3;
                    o.groups = 200;
                    o.size = 256;
                    o.producers = 2;
                    o.batch = 200;
                    o.ceiling_secs = 1;
                }
                other => panic!("unknown option {other}; see the doc comment of s2-sink-bench"),
            }
            i += 1;
        }
        o
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn message(group: u64, seq: u64, size: usize) -> String {
    // Pad so the serialized message is about `size` bytes.
    let head = format!(
        r#"{{"action":"insert","record":{{"id":{group},"seq":{seq},"sent_us":{},"pad":""#,
        now_us()
    );
    let tail = format!(
        r#""}},"changes":null,"metadata":{{"table_schema":"public","table_name":"bench","record_pks":["{group}"]}}}}"#
    );
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// s2-lite's raw append throughput: one client, back-to-back 1000-record batches.
async fn ceiling(lite: &LiteServer, basin: &str, size: usize, secs: u64) -> f64 {
    let client = lite.client();
    client.ensure_stream(basin, "ceiling", None).await.unwrap();
    let body = "x".repeat(size);
    let records: Vec<AppendRecord> = (0..1000).map(|_| AppendRecord::new(body.clone())).collect();
    let input = AppendInput::new(records);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs.max(1)) {
        client
            .append(basin, "ceiling", &input)
            .await
            .expect("ceiling append");
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct ProcSample {
    max_rss_kb: u64,
    cpu_ticks: u64,
}

fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = Opts::parse();
    if let Some(bin) = &o.server_bin {
        let abs = std::fs::canonicalize(bin).unwrap_or_else(|e| panic!("--server-bin {bin}: {e}"));
        std::env::set_var("S2SINK_BIN", abs);
    } else if std::env::var("S2SINK_BIN").is_err() {
        let release = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/s2-sink");
        if std::path::Path::new(release).exists() {
            std::env::set_var("S2SINK_BIN", release);
        }
    }
    eprintln!("options: {o:?}");
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let raw = ceiling(&lite, &basin, o.size, o.ceiling_secs).await;
    eprintln!("raw ceiling: {raw:.0} records/s");
    lite.client()
        .ensure_stream(&basin, "bench", None)
        .await
        .unwrap();

    if o.restart_pending > 0 {
        return restart_with_pending(&o, &lite, &basin).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\ndata_dir = \"data\"\nmax_pending = 5000000\n\n\
         [[sinks]]\nname = \"bench\"\nbasin = \"{basin}\"\nstream = \"bench\"\nendpoint = \"{}\"\n",
        lite.endpoint()
    );
    if let Some(n) = o.live_groups {
        config.push_str(&format!("max_live_groups = {n}\n"));
    }
    let server = ServerProcess::start(dir.path(), &config, &[]).await;
    let pid = server.pid().unwrap();
    let (_, cpu0) = sample(pid).unwrap_or_default();

    let stop = Arc::new(AtomicBool::new(false));
    let proc_stats = Arc::new(Mutex::new(ProcSample {
        max_rss_kb: 0,
        cpu_ticks: 0,
    }));
    let sampler = {
        let (stop, stats) = (stop.clone(), proc_stats.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                if let Some((rss, ticks)) = sample(pid) {
                    let mut s = stats.lock().unwrap();
                    s.max_rss_kb = s.max_rss_kb.max(rss);
                    s.cpu_ticks = ticks;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(o.duration);
    let mut tasks = Vec::new();
    for p in 0..o.producers {
        let (o, accepted, rejected, url) = (
            o.clone(),
            accepted.clone(),
            rejected.clone(),
            server.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = http_client();
            let mut rng = fastrand::Rng::with_seed(p as u64 + 1);
            let per_producer_rate = o.rate as f64 / o.producers as f64;
            let mut sent = 0u64;
            let mut seq = (p as u64) << 40;
            while Instant::now() < deadline {
                if per_producer_rate > 0.0 {
                    let due = start + Duration::from_secs_f64(sent as f64 / per_producer_rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let n = if per_producer_rate > 0.0 {
                    ((per_producer_rate / 100.0).ceil() as usize).clamp(1, o.batch)
                } else {
                    o.batch
                };
                let body: String = (0..n)
                    .map(|_| {
                        seq += 1;
                        let g = if o.hot { 0 } else { rng.u64(0..o.groups) };
                        message(g, seq, o.size) + "\n"
                    })
                    .collect();
                let r = http
                    .post(format!("{url}/api/sinks/bench/messages"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted.fetch_add(n as u64, Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        rejected.fetch_add(n as u64, Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(r) => panic!("ingest answered {}", r.status()),
                    Err(e) => panic!("ingest failed: {e}"),
                }
                sent += n as u64;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let offered_secs = start.elapsed().as_secs_f64();
    let drained = wait_drained(&server.url, "bench", Duration::from_secs(300)).await;
    let drain_secs = start.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    sampler.await.unwrap();
    let (max_rss_kb, cpu_ticks) = {
        let ps = proc_stats.lock().unwrap();
        (ps.max_rss_kb, ps.cpu_ticks)
    };
    let ticks_per_s = 100.0;
    let cpu = (cpu_ticks.saturating_sub(cpu0)) as f64 / ticks_per_s / drain_secs;

    let records = read_all(&lite.client(), &basin, "bench").await;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    let mut latencies = Vec::with_capacity(records.len());
    let (mut first_ts, mut last_ts) = (u64::MAX, 0);
    let mut order_violations = 0u64;
    for r in &records {
        let Some(id) = our_id("bench", &r.headers) else {
            continue;
        };
        *seen.entry(id).or_default() += 1;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let g = v["record"]["id"].as_u64().unwrap_or(0);
        if let Some(prev) = last_seq.insert(g, id) {
            if prev > id {
                order_violations += 1;
            }
        }
        let sent_ms = v["record"]["sent_us"].as_u64().unwrap_or(0) / 1000;
        latencies.push(r.timestamp.saturating_sub(sent_ms));
        first_ts = first_ts.min(r.timestamp);
        last_ts = last_ts.max(r.timestamp);
    }
    latencies.sort_unstable();
    let delivered = seen.len() as u64;
    let duplicates: u64 = seen.values().map(|n| (*n as u64).saturating_sub(1)).sum();
    let accepted = accepted.load(Relaxed);
    let lost = accepted.saturating_sub(delivered);
    let span = (last_ts.saturating_sub(first_ts)).max(1) as f64 / 1000.0;
    let rate = delivered as f64 / span;
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| offered for | {offered_secs:.1} s ({} producers, batch {}, rate {}) |",
        o.producers,
        o.batch,
        if o.rate == 0 {
            "closed loop".to_string()
        } else {
            format!("{}/s", o.rate)
        }
    );
    println!(
        "| message size / groups | {} B / {} |",
        o.size,
        if o.hot {
            "1 (hot)".to_string()
        } else {
            o.groups.to_string()
        }
    );
    println!(
        "| accepted (202) / rejected (429) | {accepted} / {} |",
        rejected.load(Relaxed)
    );
    println!("| delivered | {delivered} in {span:.1} s = **{rate:.0} msg/s** |");
    println!(
        "| raw s2-lite ceiling (same run) | {raw:.0} records/s; ratio **{:.0}%** |",
        100.0 * rate / raw
    );
    println!(
        "| latency ingest→S2 p50 / p99 / max | {} / {} / {} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    println!("| drained within deadline | {drained} ({drain_secs:.1} s after start) |");
    println!(
        "| server max RSS / avg CPU | {} MB / {:.0}% of a core |",
        max_rss_kb / 1024,
        cpu * 100.0
    );
    println!(
        "| lost / duplicated / order violations | {lost} / {duplicates} / {order_violations} |"
    );
    if lost > 0 || duplicates > 0 || order_violations > 0 || !drained {
        eprintln!("FAILED: lost {lost}, duplicated {duplicates}, order violations {order_violations}, drained {drained}");
        std::process::exit(1);
    }
}

/// Fills the queue with `o.restart_pending` messages while delivery crawls, SIGKILLs the server,
/// restarts it with normal settings and times the recovery.
async fn restart_with_pending(o: &Opts, lite: &LiteServer, basin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\ndata_dir = \"data\"\nmax_pending = 5000000\n\n\
         [[sinks]]\nname = \"bench\"\nbasin = \"{basin}\"\nstream = \"bench\"\nendpoint = \"{}\"\n",
        lite.endpoint()
    );
    // Throttled: one record per append, one group actor.
    let slow =
        format!("{base}max_live_groups = 1\n[sinks.batch]\nmax_records = 1\nlinger_ms = 100\n");
    let mut server = ServerProcess::start(dir.path(), &slow, &[]).await;
    let accepted = Arc::new(AtomicU64::new(0));
    let fill_start = Instant::now();
    let per = o.restart_pending / o.producers as u64;
    let mut tasks = Vec::new();
    for p in 0..o.producers {
        let (o, accepted, url) = (o.clone(), accepted.clone(), server.url.clone());
        tasks.push(tokio::spawn(async move {
            let http = http_client();
            let mut rng = fastrand::Rng::with_seed(p as u64 + 7);
            let mut seq = (p as u64) << 40;
            let mut sent = 0;
            while sent < per {
                let n = (o.batch as u64).min(per - sent);
                let body: String = (0..n)
                    .map(|_| {
                        seq += 1;
                        message(rng.u64(0..o.groups), seq, o.size) + "\n"
                    })
                    .collect();
                let r = http
                    .post(format!("{url}/api/sinks/bench/messages"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .expect("ingest");
                assert_eq!(r.status().as_u16(), 202, "ingest answered {}", r.status());
                accepted.fetch_add(n, Relaxed);
                sent += n;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    server.kill9();
    let client = lite.client();
    let tail_at_kill = client.check_tail(basin, "bench").await.unwrap().seq_num;
    let restart = Instant::now();
    let server = ServerProcess::start(dir.path(), &base, &[]).await;
    let healthy_secs = restart.elapsed().as_secs_f64();
    let resumed = eventually(Duration::from_secs(120), || async {
        client
            .check_tail(basin, "bench")
            .await
            .map(|t| t.seq_num)
            .unwrap_or(0)
            > tail_at_kill
    })
    .await;
    let resume_secs = restart.elapsed().as_secs_f64();
    let drained = wait_drained(&server.url, "bench", Duration::from_secs(600)).await;
    let drain_secs = restart.elapsed().as_secs_f64();
    let records = read_all(&client, basin, "bench").await;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for r in &records {
        if let Some(id) = our_id("bench", &r.headers) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let accepted = accepted.load(Relaxed);
    let duplicates: u64 = seen.values().map(|n| (*n as u64).saturating_sub(1)).sum();
    let lost = accepted.saturating_sub(seen.len() as u64);
    println!("| metric | value |");
    println!("|---|---|");
    println!("| pending at the kill | {} of {accepted} accepted ({} B, {} groups; filled in {fill_secs:.1} s) |", accepted - tail_at_kill, o.size, o.groups);
    println!("| restart → healthy (/healthz) | {healthy_secs:.2} s |");
    println!("| restart → first new record in S2 | **{resume_secs:.2} s** |");
    println!("| restart → backlog drained | {drain_secs:.1} s (drained: {drained}) |");
    println!("| lost / duplicated | {lost} / {duplicates} |");
    if lost > 0 || duplicates > 0 || !drained || !resumed {
        eprintln!(
            "FAILED: lost {lost}, duplicated {duplicates}, drained {drained}, resumed {resumed}"
        );
        std::process::exit(1);
    }
}
