//! Chaos: sustained load over many groups through the `s2-sink` binary while S2 (behind a
//! fault-injecting proxy) errors, throttles, hangs, resets and applies appends without
//! answering, and the server is SIGKILLed and restarted at random moments. At the end every
//! accepted message is in S2 exactly once, in order per group.
//!
//! A few cycles by default; `S2SINK_CHAOS_CYCLES=20` (or more) for a long run. The figures
//! are printed (`--nocapture`) so a long run can be recorded.
//! The server exiting by itself fails the test.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s2sink_tests::client::{SinkConfig, TestConfig};
use s2sink_tests::process::{
    http_client, pending, produce_changes_noting_unanswered, Load, ServerProcess,
};
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::{eventually, read_all, verify_stream_lost_acks, LiteServer};

const SINK: &str = "chaos";

fn config(endpoint: &str, basin: &str, stream: &str) -> String {
    TestConfig::new()
        .sink(
            SinkConfig::new(SINK, endpoint, basin, stream)
                // The fault proxy faults HTTP/1.1 requests: appends go unary here.
                .set("append_session", "false")
                .set("request_timeout_ms", "500")
                .backoff(20, 200)
                .table("batch", &[("max_records", "100")]),
        )
        .render()
}

/// S2 misbehaving on about a quarter of appends (reads and tail checks pass).
fn chaos_faults(proxy: &Proxy, seed: u64) {
    proxy.set_random(
        seed,
        vec![
            (0.04, Fault::s2_error(500, "other", "internal")),
            (0.04, Fault::s2_error(503, "unavailable", "unavailable")),
            (0.02, Fault::plain(502, "<html>bad gateway</html>")),
            (0.02, Fault::throttled(1)),
            (0.02, Fault::Hang),
            (0.04, Fault::ForwardThenDrop),
            (0.03, Fault::ForwardThenReset),
            (0.02, Fault::ResetBeforeForward),
            // Applied after the client gave up (request_timeout_ms is 500).
            (0.02, Fault::Delay(Duration::from_millis(800))),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_and_s2_faults_lose_duplicate_and_reorder_nothing() {
    let cycles: usize = std::env::var("S2SINK_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let started = Instant::now();
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream(SINK).await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&proxy.endpoint(), &basin, &stream);
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    // Messages of requests cut off by a kill: stored or not, their ids are unknown.
    let unanswered = Arc::new(Mutex::new(HashSet::new()));
    let mut rng = fastrand::Rng::with_seed(99);
    let mut unexpected_exits = Vec::new();
    for cycle in 0..cycles {
        chaos_faults(&proxy, cycle as u64 + 1000);
        let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let seed = (cycle * 2 + p) as u64 + 1;
                tokio::spawn(produce_changes_noting_unanswered(
                    server.url.clone(),
                    Load {
                        sink: SINK,
                        seed,
                        batches: 60,
                        batch_size: 100,
                        groups: 500,
                        // Load spread over the cycle, so delivery (and faults) happen during it.
                        pace: Duration::from_millis(20),
                    },
                    accepted.clone(),
                    unanswered.clone(),
                ))
            })
            .collect();
        // A random kill moment (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(rng.u64(800..3000))).await;
        if !server.is_running() {
            // The server died by itself: a bug, whatever the delivery verdict.
            let log = server.log();
            let last_run = log.rsplit("s2-sink listening").next().unwrap_or("");
            let tail: Vec<&str> = last_run.lines().rev().take(8).collect();
            eprintln!("chaos: server exited by itself in cycle {cycle}; log (newest first):");
            for l in tail {
                eprintln!("  {l}");
            }
            unexpected_exits.push(cycle);
        }
        server.kill9();
        for p in producers {
            let _ = p.await;
        }
    }

    // Drain with S2 healthy again.
    proxy.pass_all();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let http = http_client();
    let drained = eventually(Duration::from_secs(60), || async {
        pending(&http, &server.url, SINK).await == Some(0) && proxy.stats().in_flight == 0
    })
    .await;
    let p = proxy.stats();
    assert!(
        drained,
        "backlog not drained: pending {:?}; proxy {p:?}; log:\n{}",
        pending(&http, &server.url, SINK).await,
        server.log()
    );
    let accepted = accepted.lock().unwrap().clone();
    let records = read_all(&lite.client(), &basin, &stream).await;
    let unanswered = unanswered.lock().unwrap().clone();
    let verdict = verify_stream_lost_acks(&records, SINK, &accepted, &unanswered);
    eprintln!(
        "chaos: cycles {cycles} accepted {} records {} lost {} duplicated {} order_violations {} \
         unexpected {} (unanswered in kills {}) unexpected_exits {} | proxy appends {} faults {} {:?} applied_unacknowledged {} | {:?}",
        accepted.len(),
        records.len(),
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len(),
        verdict.unexpected.len(),
        unanswered.len(),
        unexpected_exits.len(),
        p.appends,
        p.total_faults(),
        p.faults,
        p.applied_unacknowledged,
        started.elapsed(),
    );
    assert!(
        accepted.len() > 1000,
        "too few messages accepted: {}",
        accepted.len()
    );
    assert!(
        p.total_faults() > 0 && p.applied_unacknowledged > 0,
        "{p:?}"
    );
    if !verdict.is_clean() {
        // Keep the evidence: where each copy of a duplicate sits, and the data dir and log.
        for id in verdict.duplicated.iter().take(5) {
            let copies: Vec<(u64, u64)> = records
                .iter()
                .filter(|r| s2sink_server::engine::our_id(SINK, &r.headers) == Some(*id))
                .map(|r| (r.seq_num, r.timestamp))
                .collect();
            eprintln!("chaos: id {id} at (seq_num, timestamp ms) {copies:?}");
        }
        eprintln!(
            "chaos: data dir and server.log kept at {}",
            dir.keep().display()
        );
    }
    assert!(
        verdict.is_clean(),
        "after {cycles} kills: lost {} duplicated {} reordered {} unexpected {}: {verdict:?}",
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len(),
        verdict.unexpected.len()
    );
    assert!(
        unexpected_exits.is_empty(),
        "the server exited by itself in cycles {unexpected_exits:?}"
    );
}
