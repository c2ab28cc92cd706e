//! Pipelined appends under paused tokio time: a full append goes out at once, a second one is
//! sent before the first is answered (chained by `match_seq_num`), a partial one waits for
//! the linger, and with `max_appends_in_flight = 1` appends never overlap. S2 is an in-memory
//! stream that answers every append after a fixed (virtual) round trip.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_client::{AppendAck, AppendInput, S2Config, S2Error, SequencedRecord};
use s2sink_core::Route;
use s2sink_queue::Queue;
use s2sink_server::engine::{BoxFuture, IngestItem, SinkSettings, StreamIo};
use tokio::time::Instant;

mod common;
use common::MemStream;

const ROUND_TRIP: Duration = Duration::from_millis(100);

/// One append as the stub saw it.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    match_seq_num: Option<u64>,
    records: usize,
}

/// An in-memory stream: appends apply after [`ROUND_TRIP`] if their `match_seq_num` holds.
#[derive(Default)]
struct SlowStream {
    stream: MemStream,
    sent: Mutex<Vec<Sent>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl StreamIo for SlowStream {
    fn append<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        self.sent.lock().unwrap().push(Sent {
            at: Instant::now(),
            match_seq_num: input.match_seq_num,
            records: input.records.len(),
        });
        self.in_flight.fetch_add(1, SeqCst);
        self.max_in_flight
            .fetch_max(self.in_flight.load(SeqCst), SeqCst);
        Box::pin(async move {
            tokio::time::sleep(ROUND_TRIP).await;
            self.in_flight.fetch_sub(1, SeqCst);
            self.stream.apply(input)
        })
    }

    fn check_tail<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<u64, S2Error>> {
        Box::pin(async move { Ok(self.stream.len() as u64) })
    }

    fn read<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        Box::pin(async move { Ok(self.stream.read(start, count)) })
    }
}

/// Far beyond any schedule here (virtual time).
const POLL_DEADLINE: Duration = Duration::from_secs(600);

/// Ingests `messages` of one group with appends of `max_records`, `linger` (also with nothing
/// in flight when `linger_when_idle`) and `k` appends in flight; returns what the stream saw
/// once every message is in it.
fn run_paused(
    messages: u64,
    max_records: usize,
    linger: Duration,
    linger_when_idle: bool,
    k: usize,
) -> (Arc<SlowStream>, Instant) {
    common::paused(async move {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let stub = Arc::new(SlowStream::default());
        let mut s = SinkSettings::new(
            "s",
            Some(Route::new("test-basin", "events").unwrap()),
            S2Config::direct("http://127.0.0.1:9"),
        );
        s.batch.limits.max_records = max_records;
        s.batch.max_run_records = max_records;
        s.batch.linger = linger;
        s.batch.linger_when_idle = linger_when_idle;
        s.batch.max_appends_in_flight = k;
        let engine = common::engine_on_this_runtime(&queue, vec![s], stub.clone());
        let items = (0..messages)
            .map(|i| IngestItem::new(serde_json::json!({"record": {"id": 1}, "seq": i})))
            .collect();
        engine.ingest("s", items).await.unwrap();
        // Published to the group only now (after the flush): no append can be older.
        let ingested = Instant::now();
        let reached = tokio::time::timeout(POLL_DEADLINE, async {
            while (stub.stream.len() as u64) < messages {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{} of {messages} records within {POLL_DEADLINE:?}; sent {:?}",
            stub.stream.len(),
            stub.sent.lock().unwrap()
        );
        (stub, ingested)
    })
}

#[test]
fn full_appends_go_out_at_once_two_in_flight_chained_by_match_seq_num() {
    let (stub, _) = run_paused(40, 10, Duration::from_secs(5), false, 2);
    let sent = stub.sent.lock().unwrap();
    assert_eq!(sent.len(), 4, "{sent:?}");
    // Chained: each append expects the tail the previous one leaves; nothing was refused.
    let matches: Vec<Option<u64>> = sent.iter().map(|s| s.match_seq_num).collect();
    assert_eq!(matches, [Some(0), Some(10), Some(20), Some(30)]);
    assert!(sent.iter().all(|s| s.records == 10));
    // The second append left before the first was answered; full appends never waited for
    // the 5 s linger: the whole thing took two round trips, not four (nor a linger).
    assert!(sent[1].at - sent[0].at < ROUND_TRIP, "{sent:?}");
    assert!(sent[3].at - sent[0].at < 2 * ROUND_TRIP, "{sent:?}");
    assert_eq!(stub.max_in_flight.load(SeqCst), 2);
}

#[test]
fn one_append_in_flight_waits_for_each_answer() {
    let (stub, _) = run_paused(40, 10, Duration::from_secs(5), false, 1);
    let sent = stub.sent.lock().unwrap();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert_eq!(stub.max_in_flight.load(SeqCst), 1);
    for w in sent.windows(2) {
        assert!(w[1].at - w[0].at >= ROUND_TRIP, "{sent:?}");
    }
}

#[test]
fn a_partial_append_goes_at_once_when_nothing_is_in_flight() {
    // An hour: far beyond the poll deadline, so reaching the stream at all proves the append
    // did not wait for it (virtual time also runs on while the engine waits for real
    // threads, so a short linger could not tell the two apart).
    let linger = Duration::from_secs(3600);
    let (stub, ingested) = run_paused(3, 10, linger, false, 2);
    let sent = stub.sent.lock().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].records, 3);
    assert!(
        sent[0].at - ingested < linger,
        "waited {:?} with nothing in flight",
        sent[0].at - ingested
    );
}

#[test]
fn a_partial_append_behind_one_in_flight_waits_for_its_answer_not_the_linger() {
    // 13 messages, appends of 10: the full one goes at once; the 3 behind it are a partial
    // append while the first is in flight, so they wait — until its answer (the pipeline is
    // empty again), not for the hour of linger (beyond the poll deadline).
    let linger = Duration::from_secs(3600);
    let (stub, _) = run_paused(13, 10, linger, false, 2);
    let sent = stub.sent.lock().unwrap();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[0].records, sent[1].records), (10, 3));
    let gap = sent[1].at - sent[0].at;
    assert!(gap >= ROUND_TRIP && gap < linger, "{sent:?}");
}

#[test]
fn a_partial_append_waits_for_the_linger() {
    let linger = Duration::from_millis(700);
    let (stub, ingested) = run_paused(3, 10, linger, true, 2);
    let sent = stub.sent.lock().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].records, 3);
    // Not full: the append left only once the linger ended.
    assert!(
        sent[0].at - ingested >= linger,
        "{:?}",
        sent[0].at - ingested
    );
}
