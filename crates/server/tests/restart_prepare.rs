//! A restart reconciles the streams the sink has marks on before it resumes its groups (so the
//! first append after a restart does not wait behind thousands of head reads), and resumes
//! them anyway when S2 does not answer in time. Paused tokio time, S2 as a stub whose
//! `check_tail` can be held (s2-lite cannot be made to hang on demand).

use std::sync::Mutex;
use std::time::Duration;

use s2sink_client::{AppendAck, AppendInput, S2Config, S2Error, SequencedRecord};
use s2sink_core::{GroupKey, Route};
use s2sink_queue::{NewMessage, Queue};
use s2sink_server::engine::{BoxFuture, Engine, IngestItem, SinkSettings, StreamIo};
use tokio::sync::watch;
use tokio::time::Instant;

mod common;
use common::{paused, MemStream};

/// Far beyond any schedule here (virtual time).
const POLL_DEADLINE: Duration = Duration::from_secs(600);

/// An in-memory stream that logs each call; `check_tail` waits while the gate is closed.
struct GatedStream {
    stream: MemStream,
    calls: Mutex<Vec<(&'static str, Instant)>>,
    gate: watch::Receiver<bool>,
}

impl GatedStream {
    fn new(gate: watch::Receiver<bool>) -> GatedStream {
        GatedStream {
            stream: MemStream::default(),
            calls: Mutex::new(Vec::new()),
            gate,
        }
    }

    fn log(&self, call: &'static str) {
        self.calls.lock().unwrap().push((call, Instant::now()));
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }

    fn len(&self) -> usize {
        self.stream.len()
    }
}

impl StreamIo for GatedStream {
    fn append<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        self.log("append");
        Box::pin(async move { self.stream.apply(input) })
    }

    fn check_tail<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<u64, S2Error>> {
        self.log("tail");
        Box::pin(async move {
            let _ = self.gate.clone().wait_for(|open| *open).await;
            Ok(self.len() as u64)
        })
    }

    fn read<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        self.log("read");
        Box::pin(async move { Ok(self.stream.read(start, count)) })
    }
}

fn settings() -> SinkSettings {
    SinkSettings::new(
        "s",
        Some(Route::new("test-basin", "events").unwrap()),
        S2Config::direct("http://127.0.0.1:9"),
    )
}

fn start(queue: &Queue, stub: &std::sync::Arc<GatedStream>) -> Engine {
    common::engine_on_this_runtime(queue, vec![settings()], stub.clone())
}

async fn wait_for_records(stub: &GatedStream, n: usize) {
    let reached = tokio::time::timeout(POLL_DEADLINE, async {
        while stub.len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{} of {n} records; calls {:?}",
        stub.len(),
        stub.calls()
    );
}

async fn groups_started(engine: &Engine) -> u64 {
    engine
        .shards("s")
        .await
        .unwrap()
        .iter()
        .map(|s| s.groups_started)
        .sum()
}

/// Delivers 3 messages (so the sink has a mark on the stream), stops that engine, queues 4
/// more of the same group behind its back (as if it had crashed with them pending) and
/// returns the queue and the stream.
async fn restart_with_pending(
    dir: &std::path::Path,
    gate: watch::Receiver<bool>,
) -> (Queue, std::sync::Arc<GatedStream>) {
    let queue = Queue::open(dir).unwrap();
    let stub = std::sync::Arc::new(GatedStream::new(gate));
    let first = start(&queue, &stub);
    let items = (0..3)
        .map(|i| IngestItem::new(serde_json::json!({"record": {"id": 1}, "seq": i})))
        .collect();
    first.ingest("s", items).await.unwrap();
    wait_for_records(&stub, 3).await;
    first.shutdown(Duration::from_secs(5)).await;
    drop(first);
    let pending = (3..7)
        .map(|i| {
            let body = serde_json::json!({"record": {"id": 1}, "seq": i}).to_string();
            NewMessage::new(Some(GroupKey("g".into())), body.into_bytes())
        })
        .collect();
    queue.enqueue("s", pending).await.unwrap();
    stub.calls.lock().unwrap().clear();
    (queue, stub)
}

/// A restart with pending messages while S2 holds every `check_tail` until `gate` opens.
struct Restarted {
    _dir: tempfile::TempDir,
    gate: watch::Sender<bool>,
    stub: std::sync::Arc<GatedStream>,
    engine: Engine,
    at: Instant,
}

async fn restart_with_s2_held() -> Restarted {
    let dir = tempfile::tempdir().unwrap();
    let (gate, rx) = watch::channel(true);
    let (queue, stub) = restart_with_pending(dir.path(), rx).await;
    gate.send_replace(false);
    let engine = start(&queue, &stub);
    Restarted {
        _dir: dir,
        gate,
        stub,
        engine,
        at: Instant::now(),
    }
}

#[test]
fn a_restart_reconciles_marked_streams_before_it_resumes_groups() {
    paused(async {
        let r = restart_with_s2_held().await;
        let (gate, stub, engine, restarted) = (&r.gate, &r.stub, &r.engine, r.at);
        // The writer of the marked stream starts by itself and asks for the tail at once.
        let asked = tokio::time::timeout(POLL_DEADLINE, async {
            while !stub.calls().contains(&"tail") {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            asked.is_ok(),
            "no reconciliation started: {:?}",
            stub.calls()
        );
        // While S2 has not answered (half of the 1 s the supervisors wait at most), no
        // group is resumed and nothing is appended.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(restarted.elapsed() < Duration::from_secs(1));
        assert_eq!(groups_started(engine).await, 0, "calls {:?}", stub.calls());
        assert_eq!(stub.len(), 3);
        gate.send_replace(true);
        wait_for_records(stub, 7).await;
        let calls = stub.calls();
        let first_append = calls.iter().position(|c| *c == "append").unwrap();
        assert_eq!(&calls[..first_append], ["tail", "read"], "{calls:?}");
        // The group resumed right after the reconciliation, not after the wait ran out.
        let appended = stub.calls.lock().unwrap()[first_append].1;
        assert!(
            appended - restarted < Duration::from_secs(1),
            "{:?}",
            appended - restarted
        );
        let seqs: Vec<u64> = stub
            .stream
            .bodies()
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seqs, (0..7).collect::<Vec<u64>>());
    });
}

#[test]
fn a_restart_resumes_groups_when_s2_does_not_answer_the_reconciliation() {
    paused(async {
        let r = restart_with_s2_held().await;
        let (gate, stub, engine, restarted) = (&r.gate, &r.stub, &r.engine, r.at);
        // S2 hangs for 5 s: after the 1 s wait the groups are resumed anyway (their runs wait
        // in the writer until the stream is reconciled).
        let resumed = tokio::time::timeout(POLL_DEADLINE, async {
            while groups_started(engine).await == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(resumed.is_ok(), "no group resumed: {:?}", stub.calls());
        let waited = restarted.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(stub.len(), 3, "appended before the stream was reconciled");
        tokio::time::sleep(Duration::from_secs(5) - waited).await;
        gate.send_replace(true);
        wait_for_records(stub, 7).await;
        assert_eq!(stub.len(), 7);
    });
}
