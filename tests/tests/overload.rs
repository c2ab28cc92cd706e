//! Overload: producers offer far more than the S2 side can take while `server.max_pending` is
//! set. Ingest must push back (429 `backpressure` + `Retry-After`) instead of growing, the
//! backlog and the process's memory stay bounded, and every message that got a 202 reaches S2
//! exactly once and in group order once the slowness is lifted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s2sink_tests::client::{SinkConfig, TestConfig};
use s2sink_tests::process::{http_client, ServerProcess};
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::{change, eventually, read_all, verify_stream, LiteServer};
use serde_json::Value;

const SINK: &str = "overload";
const MAX_PENDING: u64 = 5000;
const PRODUCERS: u64 = 4;
const BATCH: u64 = 100;
const BLAST: Duration = Duration::from_secs(10);
/// Generous absolute bound on the server's resident memory during the blast.
const RSS_LIMIT_KB: u64 = 400 * 1024;

/// Appends of at most 10 records, each delayed 100 ms by the proxy: the S2 side takes about
/// 100 messages a second.
fn config(endpoint: &str, basin: &str, stream: &str) -> String {
    TestConfig::new()
        .server("max_pending", &MAX_PENDING.to_string())
        .sink(
            SinkConfig::new(SINK, endpoint, basin, stream)
                // The fault proxy faults HTTP/1.1 requests: appends go unary here.
                .set("append_session", "false")
                .table("batch", &[("max_records", "10"), ("linger_ms", "50")])
                .backoff(20, 200),
        )
        .render()
}

/// What the producers saw.
#[derive(Default)]
struct Seen {
    accepted: Mutex<HashSet<u64>>,
    offered: AtomicU64,
    ok_202: AtomicU64,
    rejected_429: AtomicU64,
    /// 202s that came after the first 429 (intake continues at the drain rate).
    ok_after_429: AtomicU64,
    other: Mutex<Vec<String>>,
    /// A 429 missing its `Retry-After` or its `backpressure` body, if any.
    bad_429: Mutex<Option<String>>,
}

/// Sends NDJSON batches until `stop`; on 429 waits 20 ms (far less than Retry-After, to keep
/// the offered load high) and tries again with fresh messages.
async fn produce(url: String, seen: Arc<Seen>, stop: Arc<AtomicBool>, seed: u64) {
    let http = http_client();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seq = seed * 10_000_000;
    while !stop.load(Relaxed) {
        let body: String = (0..BATCH)
            .map(|_| {
                seq += 1;
                format!("{}\n", change(rng.u64(0..50), seq, rng.usize(100..400)))
            })
            .collect();
        seen.offered.fetch_add(BATCH, Relaxed);
        let resp = http
            .post(format!("{url}/api/sinks/{SINK}/messages"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                seen.other.lock().unwrap().push(format!("transport: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let v: Value = resp.json().await.unwrap_or_default();
        match status {
            202 => {
                seen.ok_202.fetch_add(1, Relaxed);
                if seen.rejected_429.load(Relaxed) > 0 {
                    seen.ok_after_429.fetch_add(1, Relaxed);
                }
                let mut acc = seen.accepted.lock().unwrap();
                for id in v["ids"].as_array().expect("ids") {
                    acc.insert(id.as_u64().unwrap());
                }
            }
            429 => {
                seen.rejected_429.fetch_add(1, Relaxed);
                let secs = retry_after.as_deref().and_then(|s| s.parse::<u64>().ok());
                let good = secs.is_some_and(|s| s >= 1)
                    && v["error"]["code"] == "backpressure"
                    && v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty());
                if !good {
                    *seen.bad_429.lock().unwrap() =
                        Some(format!("Retry-After {retry_after:?}, body {v}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s => seen.other.lock().unwrap().push(format!("{s}: {v}")),
        }
    }
}

/// VmRSS of `pid` in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn sink_view(http: &reqwest::Client, url: &str) -> Value {
    match http.get(format!("{url}/api/sinks/{SINK}")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenfold_overload_pushes_back_stays_bounded_and_loses_nothing() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("overload").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_policy(|_| Fault::Delay(Duration::from_millis(100)));
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start(dir.path(), &config(&proxy.endpoint(), &basin, &stream), &[]).await;
    let pid = server.pid().expect("pid");
    let http = http_client();
    let rss_start = rss_kb(pid).unwrap_or(0);

    // Samplers: RSS every 100 ms, pending every 200 ms, until the blast ends.
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(rss_start));
    let rss_task = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                if let Some(kb) = rss_kb(pid) {
                    max_rss.fetch_max(kb, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let max_pending_seen = Arc::new(AtomicU64::new(0));
    let pending_task = {
        let (stop, seen_max, url) = (stop.clone(), max_pending_seen.clone(), server.url.clone());
        tokio::spawn(async move {
            let http = http_client();
            while !stop.load(Relaxed) {
                if let Some(p) = sink_view(&http, &url).await["counts"]["pending"].as_u64() {
                    seen_max.fetch_max(p, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let producers: Vec<_> = (1..=PRODUCERS)
        .map(|i| tokio::spawn(produce(server.url.clone(), seen.clone(), stop.clone(), i)))
        .collect();
    tokio::time::sleep(BLAST).await;
    let delivered_in_blast = sink_view(&http, &server.url).await["counts"]["delivered"]
        .as_u64()
        .unwrap_or(0);
    stop.store(true, Relaxed);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("a producer hung")
            .unwrap();
    }
    let blast_secs = started.elapsed().as_secs_f64();
    let _ = rss_task.await;
    let _ = pending_task.await;

    let offered = seen.offered.load(Relaxed);
    let accepted_n = seen.accepted.lock().unwrap().len() as u64;
    let max_rss_kb = max_rss.load(Relaxed);
    let max_pending = max_pending_seen.load(Relaxed);
    eprintln!(
        "overload: {blast_secs:.1} s, offered {offered} msgs, accepted {accepted_n} \
         ({} × 202, {} × 429, {} × 202 after the first 429), delivered during blast \
         {delivered_in_blast}, max pending seen {max_pending}, RSS start {rss_start} kB \
         max {max_rss_kb} kB",
        seen.ok_202.load(Relaxed),
        seen.rejected_429.load(Relaxed),
        seen.ok_after_429.load(Relaxed),
    );

    let other = seen.other.lock().unwrap().clone();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(
        seen.rejected_429.load(Relaxed) > 0,
        "no 429 under overload; log:\n{}",
        server.log()
    );
    if let Some(bad) = seen.bad_429.lock().unwrap().clone() {
        panic!("a 429 without Retry-After ≥ 1 s or `backpressure` error: {bad}");
    }
    // The offered load really was ten times what the S2 side took.
    assert!(
        offered >= 10 * delivered_in_blast.max(1),
        "offered {offered} is not 10× delivered {delivered_in_blast}"
    );
    // Intake keeps going at the drain rate (not stuck at 429 forever).
    assert!(
        seen.ok_after_429.load(Relaxed) > 0,
        "no 202 after the first 429 although the backlog drains"
    );
    // The backlog check runs before each request's enqueue, so at most one batch per producer
    // can land past the limit.
    assert!(
        max_pending <= MAX_PENDING + PRODUCERS * BATCH,
        "pending reached {max_pending}, limit {MAX_PENDING}"
    );
    assert!(
        max_rss_kb < RSS_LIMIT_KB,
        "RSS reached {max_rss_kb} kB (limit {RSS_LIMIT_KB} kB)"
    );

    // Lift the slowness and drain.
    proxy.pass_all();
    let drain_started = Instant::now();
    let drained = eventually(Duration::from_secs(180), || async {
        sink_view(&http, &server.url).await["counts"]["pending"] == 0
    })
    .await;
    assert!(drained, "backlog not drained; log:\n{}", server.log());
    eprintln!(
        "overload: drained in {:.1} s",
        drain_started.elapsed().as_secs_f64()
    );

    let accepted = seen.accepted.lock().unwrap().clone();
    let records = read_all(&lite.client(), &basin, &stream).await;
    let verdict = verify_stream(&records, SINK, &accepted);
    assert!(
        verdict.is_clean(),
        "{} accepted: lost {} duplicated {} reordered {}: {verdict:?}",
        accepted.len(),
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len()
    );
    assert_eq!(
        records.len(),
        accepted.len(),
        "S2 holds records that never got a 202"
    );
}
