//! Exactly-once holes found in review, each reproduced against s2-lite (through the fault
//! proxy where S2 must misbehave): a stream deleted and recreated under the sink, and a
//! message reaching `max_retry_count` after an append whose outcome is unknown.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings};
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::{
    change, eventually, proxied_sink_settings, read_all, sink_settings, LiteServer,
};

/// An engine over one sink; the caller adjusts the settings first.
fn engine(queue: &Queue, settings: SinkSettings) -> Engine {
    let options = EngineOptions {
        on_fatal: Some(Arc::new(|e| eprintln!("fatal queue error: {e}"))),
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

/// Waits up to `secs` for `sink` to have nothing pending; fails the test otherwise.
async fn settle(queue: &Queue, sink: &str, secs: u64) {
    let done = eventually(Duration::from_secs(secs), || async {
        queue.counts(sink).pending == 0
    })
    .await;
    assert!(done, "not settled: {:?}", queue.counts(sink));
}

/// Creates another stream in `basin`.
async fn add_stream(lite: &LiteServer, basin: &str, stream: &str) {
    lite.client()
        .ensure_stream(basin, stream, None)
        .await
        .unwrap();
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
    let mut settings = proxied_sink_settings("unknown", &proxy, &basin, &stream);
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

// ---------------------------------------------------------------------------------------
// Item 3: dead-lettering exactly once, for static and routed sinks, and for records too
// large for S2.

/// The dead-letter records' delivery ids (as the API's message ids) for `sink`, in order.
async fn dead_lettered(lite: &LiteServer, basin: &str, sink: &str) -> Vec<u64> {
    s2sink_tests::ids_in(&read_all(&lite.client(), basin, "dlq").await, sink)
}

/// Issue: the dead-letter append carried no `match_seq_num` and was not reconciled, so an
/// append whose answer was lost was written again on the next attempt. Now each attempt reads
/// the dead-letter stream from its mark first: the lost-answer record is found, the message
/// is discarded, nothing is written twice.
#[actix_rt::test]
async fn a_dead_letter_append_whose_answer_was_lost_lands_once() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    add_stream(&lite, &basin, "dlq").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    // Its own stream does not exist: every delivery attempt fails with 404.
    let mut settings = proxied_sink_settings("dl", &proxy, &basin, "missing");
    settings.max_retry_count = Some(2);
    settings.dead_letter_stream = Some("dlq".into());
    // The first dead-letter append reaches s2-lite and its answer is lost.
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dropped.clone();
    proxy.set_policy(move |r| {
        if r.is_append && r.path.contains("/streams/dlq/") && !d.swap(true, Relaxed) {
            Fault::ForwardThenDrop
        } else {
            Fault::Pass
        }
    });
    let engine = engine(&queue, settings);
    let ids = engine
        .ingest(
            "dl",
            (1..=3).map(|s| IngestItem::new(change(1, s, 10))).collect(),
        )
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(30), || async {
        queue.counts("dl").pending == 0 && proxy.stats().in_flight == 0
    })
    .await;
    assert!(done, "not settled: {:?}", queue.counts("dl"));
    assert_eq!(
        proxy.stats().count("forward_then_drop"),
        1,
        "the fault never fired"
    );
    assert_eq!(queue.counts("dl").discarded, 3);
    let want: Vec<u64> = ids.iter().map(|i| i.0).collect();
    assert_eq!(dead_lettered(&lite, &basin, "dl").await, want);
}

/// A message whose last allowed attempt is on disk (the process died before it was
/// dead-lettered and discarded) goes to the dead-letter step after a restart, not to its
/// stream again, although the stream now accepts it.
#[actix_rt::test]
async fn a_message_that_used_up_its_attempts_is_not_sent_to_its_stream_again() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("used-up").await;
    add_stream(&lite, &basin, "dlq").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let enqueued = queue
        .enqueue(
            "used",
            vec![s2sink_queue::NewMessage::new(
                None,
                change(1, 1, 10).to_string(),
            )],
        )
        .await
        .unwrap();
    let id = enqueued[0].id;
    let error = s2sink_core::LastError {
        class: s2sink_core::ErrorClass::NeedsAttention,
        status: Some(404),
        code: Some("stream_not_found".into()),
        message: "stream not found".into(),
        body: None,
        at_ms: 1,
    };
    for _ in 0..2 {
        queue.fail("used", id, error.clone(), 0).unwrap();
    }
    queue.flush().await.unwrap();
    let mut settings = sink_settings("used", &lite.endpoint(), &basin, &stream);
    settings.max_retry_count = Some(2);
    settings.dead_letter_stream = Some("dlq".into());
    let engine = engine(&queue, settings);
    settle(&queue, "used", 20).await;
    assert_eq!(queue.counts("used").discarded, 1);
    assert!(
        read_all(&lite.client(), &basin, &stream).await.is_empty(),
        "sent to its stream after using up its attempts"
    );
    assert_eq!(dead_lettered(&lite, &basin, "used").await, vec![id.0]);
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A record too large for S2 was never dead-lettered (the dead-letter append got 422 too).
/// Now its payload is cut to fit, and `s2sink-truncated` carries the original size.
#[actix_rt::test]
async fn a_record_too_large_for_s2_is_dead_lettered_truncated() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("big").await;
    add_stream(&lite, &basin, "dlq").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = sink_settings("big", &lite.endpoint(), &basin, &stream);
    settings.max_retry_count = Some(1);
    settings.dead_letter_stream = Some("dlq".into());
    let engine = engine(&queue, settings);
    let big = change(1, 1, 1_500_000);
    let payload = big.to_string();
    let ids = engine
        .ingest(
            "big",
            vec![IngestItem::new(big), IngestItem::new(change(1, 2, 10))],
        )
        .await
        .unwrap();
    settle(&queue, "big", 20).await;
    let dlq = read_all(&lite.client(), &basin, "dlq").await;
    assert_eq!(dlq.len(), 1);
    let h: HashMap<&str, &str> = dlq[0]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(h["s2sink-truncated"], payload.len().to_string());
    assert_eq!(h["s2sink-error-code"], "record_too_large");
    assert_eq!(s2sink_tests::ids_in(&dlq, "big"), vec![ids[0].0]);
    assert!(dlq[0].body.len() > 900_000, "cut to {}", dlq[0].body.len());
    assert!(
        payload.starts_with(&dlq[0].body),
        "not a prefix of the payload"
    );
    // The group went on: the next message was delivered.
    assert_eq!(seqs_in(&lite, &basin, &stream).await.get(&2), Some(&1));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// With a routing function and no static route the dead-letter stream was silently skipped.
/// Now it is the one in the basin the message was routed to.
#[actix_rt::test]
async fn a_routed_sink_dead_letters_into_the_basin_of_the_route() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    add_stream(&lite, &basin, "dlq").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = sink_settings("routed", &lite.endpoint(), &basin, "unused");
    settings.route = None;
    settings.functions.route = Some(s2sink_transform::FunctionSource::Inline(format!(
        r#"fn route(action, record, changes, metadata) {{ #{{ basin: "{basin}", stream: "missing" }} }}"#
    )));
    settings.max_retry_count = Some(1);
    settings.dead_letter_stream = Some("dlq".into());
    let engine = engine(&queue, settings);
    let ids = engine
        .ingest(
            "routed",
            (1..=2).map(|s| IngestItem::new(change(1, s, 10))).collect(),
        )
        .await
        .unwrap();
    settle(&queue, "routed", 20).await;
    let want: Vec<u64> = ids.iter().map(|i| i.0).collect();
    assert_eq!(dead_lettered(&lite, &basin, "routed").await, want);
    engine.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Item 4 (second half): a route change while an append's outcome is unknown.

/// Issue: a reload that changed the route while an append's outcome was unknown sent the
/// message to the new stream without re-reading the old one: if the first append had landed,
/// the message was in both. Now the old stream is read back first (the message waits, uncharged,
/// while it cannot be read), and what is found there is acknowledged.
#[actix_rt::test]
async fn a_route_change_while_an_outcome_is_unknown_re_reads_the_old_stream_first() {
    use s2sink_tests::proxy::Scope;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let lite = LiteServer::start().await;
    let (basin, first) = lite.fresh_stream("first").await;
    add_stream(&lite, &basin, "second").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_scope(Scope::All);
    // The first append to `first` lands and its answer is lost; from then on `first` cannot
    // be read (so the writer cannot settle the outcome) until `down` is cleared.
    let (dropped, down) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (d, dn) = (dropped.clone(), down.clone());
    let first_path = format!("/streams/{first}/");
    proxy.set_policy(move |r| {
        if !r.path.contains(&first_path) {
            return Fault::Pass;
        }
        if r.is_append && !d.swap(true, Relaxed) {
            dn.store(true, Relaxed);
            return Fault::ForwardThenDrop;
        }
        if dn.load(Relaxed) {
            Fault::s2_error(503, "unavailable", "stream temporarily unreadable")
        } else {
            Fault::Pass
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = proxied_sink_settings("moving", &proxy, &basin, &first);
    let engine = engine(&queue, settings.clone());
    let m = engine
        .ingest("moving", vec![IngestItem::new(change(1, 1, 10))])
        .await
        .unwrap()[0];
    let unknown = eventually(Duration::from_secs(20), || async {
        queue.get("moving", m).unwrap().is_some_and(|msg| {
            msg.state
                .last_error
                .is_some_and(|e| e.class == s2sink_core::ErrorClass::OutcomeUnknown)
        })
    })
    .await;
    assert!(unknown, "the first append never became outcome-unknown");
    // Reload: the sink now writes to `second`; a later message of the same group follows.
    let mut moved = settings.clone();
    moved.route = Some(s2sink_core::Route::new(&basin, "second").unwrap());
    engine.reload(vec![moved]).await.unwrap();
    let later = engine
        .ingest("moving", vec![IngestItem::new(change(1, 2, 10))])
        .await
        .unwrap()[0];
    // While `first` cannot be read, the message waits: several refused reads, nothing sent.
    let refused = eventually(Duration::from_secs(20), || async {
        proxy.stats().count("status_503") >= 4
    })
    .await;
    assert!(refused, "the old stream was never re-read");
    assert!(
        read_all(&lite.client(), &basin, "second").await.is_empty(),
        "sent to the new stream before the old one was re-read"
    );
    down.store(false, Relaxed);
    settle(&queue, "moving", 20).await;
    // The first message is in `first` once (found there, acknowledged), the later one in
    // `second`; nothing is in both.
    let in_first = s2sink_tests::ids_in(&read_all(&lite.client(), &basin, &first).await, "moving");
    let in_second =
        s2sink_tests::ids_in(&read_all(&lite.client(), &basin, "second").await, "moving");
    assert_eq!(in_first, vec![m.0]);
    assert_eq!(in_second, vec![later.0]);
    let counts = queue.counts("moving");
    assert_eq!((counts.delivered, counts.discarded), (2, 0), "{counts:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}
