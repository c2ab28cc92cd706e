//! Restoring an older copy of the data directory (a VM snapshot, a copied volume) must never
//! make a new message look delivered: the ids the restored queue hands out again were already
//! used by records in the stream, but each open of the queue takes a new epoch and the S2
//! header carries it, so reconciliation matches nothing of the new messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_queue::testing::copy_dir;
use s2sink_tests::process::{produce_changes, wait_drained, Load, ServerProcess};
use s2sink_tests::{read_all, LiteServer};

const SINK: &str = "orders";

fn config(endpoint: &str, basin: &str, stream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{{port}}"
data_dir = "data"

[[sinks]]
name = "{SINK}"
basin = "{basin}"
stream = "{stream}"
endpoint = "{endpoint}"
"#
    )
}

/// Sends `n` change messages with sequence numbers from `seed * 1_000_000 + 1`, waits until
/// the sink drained them, and returns the ids the server answered.
async fn send_and_drain(server: &ServerProcess, seed: u64, batches: usize) -> Vec<u64> {
    let accepted = Arc::new(Mutex::new(Default::default()));
    produce_changes(
        server.url.clone(),
        Load {
            sink: SINK,
            seed,
            batches,
            batch_size: 100,
            groups: 40,
            pace: Duration::ZERO,
        },
        accepted.clone(),
    )
    .await;
    let ids: Vec<u64> = accepted.lock().unwrap().iter().copied().collect();
    assert_eq!(ids.len(), batches * 100, "not every batch got a 202");
    assert!(
        wait_drained(&server.url, SINK, Duration::from_secs(60)).await,
        "not drained; log:\n{}",
        server.log()
    );
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_after_restoring_an_old_data_dir_reach_the_stream_exactly_once() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("restore").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let cfg = config(&lite.endpoint(), &basin, &stream);

    // A: delivered, then the data dir is backed up (server stopped, as a snapshot would be).
    let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let a = send_and_drain(&server, 1, 2).await;
    assert_eq!(server.terminate(), Some(0));
    copy_dir(&data, &backup);

    // B: delivered after the backup; its ids continue after A's.
    let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let b = send_and_drain(&server, 2, 5).await;
    assert_eq!(server.terminate(), Some(0));

    // Restore the backup: the queue hands out B's ids again for C.
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let c = send_and_drain(&server, 3, 5).await;
    let reused = c.iter().filter(|id| b.contains(id)).count();
    assert!(
        reused > 0,
        "the restore did not make ids repeat: nothing tested"
    );

    // Every message of A, B and C is in the stream exactly once (by its sequence number).
    let records = read_all(&lite.client(), &basin, &stream).await;
    let mut copies: HashMap<u64, usize> = HashMap::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        *copies
            .entry(v["record"]["seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    for (seed, n) in [(1u64, a.len()), (2, b.len()), (3, c.len())] {
        let missing: Vec<u64> = (1..=n as u64)
            .map(|i| seed * 1_000_000 + i)
            .filter(|s| !copies.contains_key(s))
            .collect();
        assert!(
            missing.is_empty(),
            "batch {seed}: {} of {n} messages never reached the stream (first: {:?}); {reused} ids were reused",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    let dups: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated: {dups:?}");
    assert_eq!(records.len(), a.len() + b.len() + c.len());
}
