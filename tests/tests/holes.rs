//! Exactly-once holes found in review, each reproduced against s2-lite (through the fault
//! proxy where S2 must misbehave): a stream deleted and recreated under the sink, and a
//! message reaching `max_retry_count` after an append whose outcome is unknown.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings};
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::{change, eventually, read_all, sink_settings, LiteServer};

/// An engine over one sink; the caller adjusts the settings first.
fn engine(queue: &Queue, settings: SinkSettings) -> Engine {
    let options = EngineOptions {
        on_fatal: Some(Rc::new(|e| eprintln!("fatal queue error: {e}"))),
        ..EngineOptions::default()
    };
    Engine::start(queue.clone(), vec![settings], options).unwrap()
}

async fn ingest(engine: &Engine, sink: &str, seqs: std::ops::Range<u64>) {
    let items: Vec<IngestItem> = seqs
        .map(|seq| IngestItem::new(change(seq % 7, seq, 50)))
        .collect();
    engine.ingest(sink, items).await.unwrap();
}

/// Sequence numbers of the records in a stream, with their number of copies.
async fn seqs_in(lite: &LiteServer, basin: &str, stream: &str) -> HashMap<u64, usize> {
    let mut copies = HashMap::new();
    for r in read_all(&lite.client(), basin, stream).await {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        *copies
            .entry(v["record"]["seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    copies
}

/// Issue: after the stream was deleted and recreated, every append failed with 412 "expected
/// N, tail is 0" forever (the expected position was on disk). Now the reset is detected,
/// reported, and delivery resumes from the new tail.
#[actix_rt::test]
async fn a_stream_deleted_and_recreated_under_the_sink_resumes_delivery() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("reset").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = sink_settings("reset", &lite.endpoint(), &basin, &stream);
    settings.backoff.base_ms = 20;
    settings.backoff.max_ms = 100;
    let engine = engine(&queue, settings);
    let marker = format!("lwm/reset/{basin}/{stream}");
    // Deliver until the durable position is past 0 (it is persisted about once a second).
    let mut seq = 0;
    let moved = eventually(Duration::from_secs(20), || {
        seq += 10;
        let (engine, queue, marker) = (&engine, &queue, &marker);
        let from = seq - 10;
        async move {
            ingest(engine, "reset", from..from + 10).await;
            let mark = queue.get_marker(marker).unwrap().unwrap_or_default();
            mark.as_slice() > &0u64.to_be_bytes()[..]
        }
    })
    .await;
    assert!(moved, "the low-water mark never moved");
    let drained = eventually(Duration::from_secs(20), || async {
        queue.counts("reset").pending == 0
    })
    .await;
    assert!(drained, "first messages not delivered");

    let client = lite.client();
    client.delete_stream(&basin, &stream).await.unwrap();
    let recreated = eventually(Duration::from_secs(20), || async {
        client
            .ensure_stream(&basin, &stream, None)
            .await
            .unwrap_or(false)
    })
    .await;
    assert!(recreated, "s2-lite did not recreate the stream");

    ingest(&engine, "reset", 1000..1020).await;
    let drained = eventually(Duration::from_secs(20), || async {
        queue.counts("reset").pending == 0
    })
    .await;
    let stats = &engine.sink("reset").unwrap().stats;
    assert!(
        drained,
        "delivery did not resume after the reset: {:?}, failures {:?}",
        queue.counts("reset"),
        stats.failures_by_status.lock().unwrap()
    );
    assert!(stats.stream_resets.load(Relaxed) >= 1, "reset not reported");
    assert!(stats.last_reset.lock().unwrap().is_some());
    let copies = seqs_in(&lite, &basin, &stream).await;
    for s in 1000..1020 {
        assert_eq!(copies.get(&s), Some(&1), "seq {s} in the recreated stream");
    }
}

/// Issue: a message reaching `max_retry_count` after a timeout or reset was discarded (and
/// dead-lettered) although its append may have landed. Now the writer reconciles at once
/// after such a failure: the message is found, acknowledged as delivered, never discarded.
#[actix_rt::test]
async fn a_message_whose_last_allowed_append_may_have_landed_is_not_discarded() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("unknown").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = sink_settings("unknown", &proxy.endpoint(), &basin, &stream);
    settings.s2 = settings.s2.with_request_timeout(Duration::from_millis(500));
    settings.max_retry_count = Some(1);
    settings.dead_letter_stream = Some("unknown-dlq".into());
    // The first append reaches s2-lite, and its answer is lost.
    proxy.push_faults([Fault::ForwardThenDrop]);
    let engine = engine(&queue, settings);
    ingest(&engine, "unknown", 1..6).await;
    let done = eventually(Duration::from_secs(20), || async {
        queue.counts("unknown").pending == 0 && proxy.stats().in_flight == 0
    })
    .await;
    assert!(done, "not settled: {:?}", queue.counts("unknown"));
    assert_eq!(
        proxy.stats().count("forward_then_drop"),
        1,
        "the fault never fired"
    );
    let counts = queue.counts("unknown");
    assert_eq!((counts.delivered, counts.discarded), (5, 0), "{counts:?}");
    let copies = seqs_in(&lite, &basin, &stream).await;
    assert_eq!(copies.len(), 5);
    assert!(copies.values().all(|n| *n == 1), "{copies:?}");
    let dlq = lite.client().check_tail(&basin, "unknown-dlq").await;
    assert!(
        dlq.map(|t| t.seq_num == 0).unwrap_or(true),
        "a delivered message was dead-lettered"
    );
}
