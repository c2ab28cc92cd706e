//! Bugs that panic do not stop delivery: a stream writer that panicked is replaced at the
//! next run, and a group actor that panicked is started again by its supervisor (never left
//! "live" forever). S2 is an in-memory stub whose reads of a stream's tail panic once on
//! demand — s2-lite cannot make the engine panic.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_client::{AppendAck, AppendInput, S2Config, S2Error, SequencedRecord};
use s2sink_core::{BackoffPolicy, Route};
use s2sink_queue::Queue;
use s2sink_server::engine::{BoxFuture, Engine, EngineOptions, IngestItem, SinkSettings, StreamIo};

mod common;
use common::MemStreams;

/// Streams in memory. `check_tail` of a stream named in `panic_once` panics the first time;
/// appends to `events` whose records carry "poison" are refused with a 400.
#[derive(Default)]
struct Stub {
    streams: MemStreams,
    panic_once: Mutex<HashSet<String>>,
    panics: AtomicUsize,
}

impl StreamIo for Stub {
    fn append<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        Box::pin(async move {
            if stream == "events" && input.records.iter().any(|r| r.body.contains("poison")) {
                return Err(S2Error::Api {
                    context: "append".into(),
                    status: 400,
                    code: "invalid".into(),
                    message: "refused".into(),
                    body: String::new(),
                    retry_after: None,
                });
            }
            self.streams.stream(stream).apply(input)
        })
    }

    fn check_tail<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<u64, S2Error>> {
        if self.panic_once.lock().unwrap().remove(stream) {
            self.panics.fetch_add(1, SeqCst);
            panic!("injected panic reading the tail of {stream}");
        }
        let tail = self.streams.stream(stream).len() as u64;
        Box::pin(async move { Ok(tail) })
    }

    fn read<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        let records = self.streams.stream(stream).read(start, count);
        Box::pin(async move { Ok(records) })
    }
}

impl Stub {
    fn bodies(&self, stream: &str) -> Vec<String> {
        self.streams.stream(stream).bodies()
    }
}

fn settings() -> SinkSettings {
    let mut s = SinkSettings::new(
        "s",
        Some(Route::new("test-basin", "events").unwrap()),
        S2Config::direct("http://127.0.0.1:9"),
    );
    s.backoff = BackoffPolicy {
        base_ms: 20,
        max_ms: 100,
        jitter: 0.0,
    };
    s.batch.linger = Duration::ZERO;
    s
}

fn start(stub: &Arc<Stub>, queue: &Queue, s: SinkSettings) -> Engine {
    let options = EngineOptions {
        io: Some(stub.clone()),
        threads: Some(2),
        on_fatal: Some(Arc::new(|e| eprintln!("fatal queue error: {e}"))),
        ..Default::default()
    };
    Engine::start(queue.clone(), vec![s], options).unwrap()
}

async fn drained(queue: &Queue) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if queue.counts("s").pending == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn msg(n: u64, text: &str) -> IngestItem {
    let mut item = IngestItem::new(serde_json::json!({"n": n, "text": text}));
    item.group = Some(format!("g{}", n % 3));
    item
}

#[actix_rt::test]
async fn a_writer_that_panicked_is_replaced_and_delivery_goes_on() {
    let stub = Arc::new(Stub::default());
    stub.panic_once.lock().unwrap().insert("events".into());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let engine = start(&stub, &queue, settings());
    let items = (0..30).map(|n| msg(n, "ok")).collect();
    engine.ingest("s", items).await.unwrap();
    assert!(drained(&queue).await, "{:?}", queue.counts("s"));
    assert_eq!(stub.panics.load(SeqCst), 1, "the injected panic happened");
    let bodies = stub.bodies("events");
    assert_eq!(bodies.len(), 30, "exactly once: {bodies:?}");
    assert_eq!(engine.live_writers("s").await.unwrap(), 1);
}

#[actix_rt::test]
async fn a_group_actor_that_panicked_is_started_again_and_its_group_goes_on() {
    let stub = Arc::new(Stub::default());
    // The group actor itself reads the dead-letter stream's tail (dead-lettering runs there).
    stub.panic_once.lock().unwrap().insert("dlq".into());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut s = settings();
    s.max_retry_count = Some(1);
    s.dead_letter_stream = Some("dlq".into());
    let engine = start(&stub, &queue, s);
    // One group: the poison message first, then two good ones behind it.
    let mut items: Vec<IngestItem> = vec![msg(0, "poison"), msg(3, "ok"), msg(6, "ok")];
    for i in &mut items {
        i.group = Some("one".into());
    }
    engine.ingest("s", items).await.unwrap();
    assert!(drained(&queue).await, "{:?}", queue.counts("s"));
    assert_eq!(stub.panics.load(SeqCst), 1, "the injected panic happened");
    let dlq = stub.bodies("dlq");
    assert_eq!(dlq.len(), 1, "dead-lettered once: {dlq:?}");
    assert!(dlq[0].contains("poison"));
    let events = stub.bodies("events");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("\"n\":3") && events[1].contains("\"n\":6"));
    assert_eq!(queue.counts("s").discarded, 1);
    // The group's actor was started again after the panic, and none is left live. The last
    // actor stops just after its final ack (which is what `drained` saw): wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let shards = loop {
        let shards = engine.shards("s").await.unwrap();
        if shards.iter().all(|s| s.live_groups == 0) || tokio::time::Instant::now() > deadline {
            break shards;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        shards.iter().map(|s| s.groups_started).sum::<u64>() >= 2,
        "{shards:?}"
    );
    assert!(shards.iter().all(|s| s.live_groups == 0), "{shards:?}");
}
