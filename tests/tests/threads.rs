//! The engine on several threads: group actors spread over the engine's arbiters (one
//! supervisor shard per thread), one stream writer shared by all of them, and still exactly
//! once and in order per group.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem};
use s2sink_tests::{change, eventually, ids_in, read_all, sink_settings, verify, LiteServer};

#[actix_rt::test]
async fn groups_spread_over_the_engine_threads_share_one_writer_and_stay_in_order() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("threads").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = sink_settings("spread", &lite.endpoint(), &basin, &stream);
    let options = EngineOptions {
        threads: Some(3),
        ..Default::default()
    };
    let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();

    let mut expected = HashMap::new();
    let mut seq = 0;
    for _ in 0..10 {
        let batch: Vec<IngestItem> = (0..300)
            .map(|i| {
                seq += 1;
                IngestItem::new(change(i % 150, seq, 64))
            })
            .collect();
        let groups: Vec<String> = batch
            .iter()
            .map(|i| format!("public.t/{}", i.message["record"]["id"]))
            .collect();
        for (id, g) in engine
            .ingest("spread", batch)
            .await
            .unwrap()
            .iter()
            .zip(groups)
        {
            expected.insert(id.0, g);
        }
    }
    // While delivery runs, one writer serves the stream for every shard.
    let max_writers = std::cell::Cell::new(0);
    let done = eventually(Duration::from_secs(60), || async {
        let live = engine.live_writers("spread").await.unwrap();
        max_writers.set(max_writers.get().max(live));
        queue.counts("spread").pending == 0
    })
    .await;
    assert!(done, "not delivered: {:?}", queue.counts("spread"));
    assert_eq!(
        max_writers.get(),
        1,
        "one writer per stream across all threads"
    );

    let shards = engine.shards("spread").await.unwrap();
    assert_eq!(shards.len(), 3, "{shards:?}");
    let threads: HashSet<_> = shards.iter().map(|s| s.thread).collect();
    assert_eq!(threads.len(), 3, "each shard on its own thread: {shards:?}");
    assert!(
        shards.iter().all(|s| s.groups_started > 0),
        "150 groups hash onto every shard: {shards:?}"
    );
    assert!(
        !threads.contains(&std::thread::current().id()),
        "no group actor on the caller's thread: {shards:?}"
    );

    let records = read_all(&lite.client(), &basin, &stream).await;
    let verdict = verify(&ids_in(&records, "spread"), &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(records.len(), 3000);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn one_thread_runs_the_engine_on_the_callers_arbiter() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("one").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = sink_settings("one", &lite.endpoint(), &basin, &stream);
    let options = EngineOptions {
        threads: Some(1),
        ..Default::default()
    };
    let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();
    let items = (0..20).map(|i| IngestItem::new(change(i, i, 8))).collect();
    engine.ingest("one", items).await.unwrap();
    let done = eventually(Duration::from_secs(30), || async {
        queue.counts("one").pending == 0
    })
    .await;
    assert!(done);
    let shards = engine.shards("one").await.unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].thread, std::thread::current().id());
    // Each of the 20 groups started at least once; the supervisor's recovery listing, which
    // runs at start, may find a group that is live at that moment still pending and start it
    // once more after it finishes (harmless: it finds nothing new to send).
    let started = shards[0].groups_started;
    assert!((20..=40).contains(&started), "groups started: {started}");
}

/// Dropping the last engine handle stops its threads and releases the queue: the same data
/// directory opens again at once, and what was pending is still there.
#[actix_rt::test]
async fn dropping_the_engine_releases_its_threads_and_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2u64 {
        let queue = Queue::open(dir.path()).unwrap();
        // A closed port: messages stay pending, group actors keep retrying on the threads.
        let settings = sink_settings("drop", "http://127.0.0.1:1", "drop-basin", "events");
        let options = EngineOptions {
            threads: Some(2),
            ..Default::default()
        };
        let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();
        let items = (0..50)
            .map(|i| IngestItem::new(change(i, round * 1000 + i, 8)))
            .collect();
        engine.ingest("drop", items).await.unwrap();
        assert_eq!(queue.counts("drop").pending, 50 * (round + 1));
        // Polled: on a loaded CI machine one more arbiter thread was seen once in round 1
        // (3, not 2); the engine's own count must settle at exactly two.
        let two = eventually(Duration::from_secs(5), || async { arbiter_threads() == 2 }).await;
        assert!(two, "{} arbiter threads, not 2", arbiter_threads());
        drop(engine);
        // The drop joins the arbiters; the kernel removes a joined thread from /proc a moment
        // after the join returns, so poll (a thread that was never stopped never goes).
        let gone = eventually(Duration::from_secs(5), || async { arbiter_threads() == 0 }).await;
        assert!(
            gone,
            "{} arbiter threads left after the engine was dropped",
            arbiter_threads()
        );
        drop(queue);
    }
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(queue.counts("drop").pending, 100);
}

/// Threads of this process that are actix arbiters (their names start with "actix-rt|").
fn arbiter_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-rt|"))
        .count()
}
