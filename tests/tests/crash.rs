//! Crash safety: the server process is SIGKILLed at random moments while producers send and
//! the engine delivers; after restarts on the same data dir, every accepted message is in S2
//! exactly once and every group is in order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_tests::client::{SinkConfig, TestConfig};
use s2sink_tests::process::{produce_changes_noting_unanswered, wait_drained, Load, ServerProcess};
use s2sink_tests::{read_all, verify_stream_lost_acks, LiteServer};

fn config(endpoint: &str, basin: &str, stream: &str) -> String {
    TestConfig::new()
        .sink(SinkConfig::new("crash", endpoint, basin, stream).backoff(20, 200))
        .render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let cycles: usize = std::env::var("S2SINK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("crash").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&lite.endpoint(), &basin, &stream);
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    // Messages of requests cut off by a kill: stored or not, their ids are unknown.
    let unanswered = Arc::new(Mutex::new(HashSet::new()));
    let mut rng = fastrand::Rng::with_seed(42);
    for cycle in 0..cycles {
        let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
        let producer = tokio::spawn(produce_changes_noting_unanswered(
            server.url.clone(),
            Load {
                sink: "crash",
                seed: cycle as u64 + 1,
                batches: 200,
                batch_size: 200,
                groups: 100,
                pace: Duration::ZERO,
            },
            accepted.clone(),
            unanswered.clone(),
        ));
        // A random kill moment (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        server.kill9();
        let _ = producer.await;
    }
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let drained = wait_drained(&server.url, "crash", Duration::from_secs(120)).await;
    assert!(drained, "backlog not drained; log:\n{}", server.log());
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 1000,
        "too few messages accepted: {}",
        accepted.len()
    );
    let records = read_all(&lite.client(), &basin, &stream).await;
    let unanswered = unanswered.lock().unwrap().clone();
    let verdict = verify_stream_lost_acks(&records, "crash", &accepted, &unanswered);
    assert!(
        verdict.is_clean(),
        "after {cycles} kills: lost {} duplicated {} reordered {} unexpected {}: {verdict:?}",
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len(),
        verdict.unexpected.len()
    );
}
