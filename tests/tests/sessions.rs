//! The stream writer on S2's append session (the default transport): pipelined appends reach
//! s2-lite in order, and connections cut mid-session lose and duplicate nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings, SinkShared};
use s2sink_tests::cutter::TcpCutter;
use s2sink_tests::{change, eventually, ids_in, read_all, sink_settings, verify, LiteServer};

struct Rig {
    lite: LiteServer,
    basin: String,
    stream: String,
    queue: Queue,
    engine: Engine,
    name: &'static str,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A sink on s2-lite at `endpoint` (s2-lite itself, or a forwarder in front of it).
    async fn start(
        lite: LiteServer,
        endpoint: Option<&str>,
        name: &'static str,
        tune: impl FnOnce(&mut SinkSettings),
    ) -> Rig {
        let (basin, stream) = lite.fresh_stream(name).await;
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let endpoint = endpoint.map_or_else(|| lite.endpoint(), str::to_owned);
        let mut settings = sink_settings(name, &endpoint, &basin, &stream);
        assert!(settings.s2.append_session, "sessions are the default");
        tune(&mut settings);
        let options = EngineOptions {
            on_fatal: Some(Arc::new(|e| eprintln!("fatal queue error: {e}"))),
            ..EngineOptions::default()
        };
        let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();
        Rig {
            lite,
            basin,
            stream,
            queue,
            engine,
            name,
            _dir: dir,
        }
    }

    fn sink(&self) -> &SinkShared {
        self.engine.sink(self.name).unwrap()
    }

    /// Ingests `(group, seq)` changes with `pad` bytes each; returns id → group name.
    async fn ingest(&self, items: &[(u64, u64)], pad: usize) -> HashMap<u64, String> {
        let batch: Vec<IngestItem> = items
            .iter()
            .map(|(pk, seq)| IngestItem::new(change(*pk, *seq, pad)))
            .collect();
        let ids = self.engine.ingest(self.name, batch).await.unwrap();
        ids.iter()
            .zip(items)
            .map(|(id, (pk, _))| (id.0, format!("public.t/{pk}")))
            .collect()
    }

    async fn drain(&self, deadline: Duration) -> Vec<u64> {
        let done = eventually(deadline, || async {
            self.queue.counts(self.name).pending == 0
        })
        .await;
        assert!(
            done,
            "not delivered within {deadline:?}: {:?}",
            self.queue.counts(self.name)
        );
        ids_in(
            &read_all(&self.lite.client(), &self.basin, &self.stream).await,
            self.name,
        )
    }

    fn report(&self, test: &str) {
        let s = &self.sink().stats;
        eprintln!(
            "{test}: appends {} max in flight {} requeued {} reorders {} reconciles {} \
             failures {:?}",
            s.appends.load(Relaxed),
            s.max_appends_in_flight.load(Relaxed),
            s.requeued.load(Relaxed),
            s.pipeline_reorders.load(Relaxed),
            s.reconciles.load(Relaxed),
            s.failures_by_status.lock().unwrap(),
        );
    }
}

/// One hot group, appends of 200 records, two in flight: on a session they reach S2 in send
/// order, so no append ever overtakes the one ahead of it (a reorder would be a 412).
#[actix_rt::test]
async fn pipelined_appends_on_a_session_never_overtake_each_other() {
    let lite = LiteServer::start().await;
    let rig = Rig::start(lite, None, "hot", |s| {
        s.batch.limits.max_records = 200;
        s.batch.max_run_records = 200;
    })
    .await;
    let mut expected = HashMap::new();
    for chunk in 0..20u64 {
        let items: Vec<(u64, u64)> = (0..1000).map(|i| (7, chunk * 1000 + i)).collect();
        expected.extend(rig.ingest(&items, 32).await);
    }
    let delivered = rig.drain(Duration::from_secs(120)).await;
    rig.report("hot group on a session");
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), 20_000);
    let s = &rig.sink().stats;
    assert_eq!(s.max_appends_in_flight.load(Relaxed), 2, "pipelined");
    assert_eq!(s.pipeline_reorders.load(Relaxed), 0, "in order on the wire");
    assert_eq!(s.requeued.load(Relaxed), 0);
    assert!(rig.sink().last_failure().is_none());
}

/// Every connection to S2 is reset after 100–600 ms, sessions included, while 40 groups
/// deliver: appends cut before their ack are reconciled by read-back, nothing is lost,
/// duplicated or reordered.
#[actix_rt::test]
async fn connections_cut_mid_session_lose_and_duplicate_nothing() {
    let lite = LiteServer::start().await;
    let cutter = TcpCutter::start(
        &lite.endpoint(),
        7,
        (Duration::from_millis(100), Duration::from_millis(600)),
    )
    .await;
    let rig = Rig::start(lite, Some(&cutter.endpoint()), "cut", |s| {
        s.batch.limits.max_records = 100;
        s.batch.max_run_records = 100;
    })
    .await;
    let mut expected = HashMap::new();
    for round in 0..10u64 {
        let items: Vec<(u64, u64)> = (0..1000).map(|i| (i % 40, round * 1000 + i)).collect();
        expected.extend(rig.ingest(&items, 1000).await);
    }
    let cut = eventually(Duration::from_secs(60), || async { cutter.cuts() >= 5 }).await;
    assert!(cut, "the cutter cut fewer than 5 connections");
    cutter.disarm();
    let delivered = rig.drain(Duration::from_secs(180)).await;
    rig.report(&format!("{} connections cut", cutter.cuts()));
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), 10_000);
}
