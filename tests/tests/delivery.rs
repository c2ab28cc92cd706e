//! End-to-end delivery through the embedded engine into s2-lite: exactly once, in order per
//! group, batched.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem};
use s2sink_tests::{change, eventually, ids_in, read_all, sink_settings, verify, LiteServer};

#[actix_rt::test]
async fn many_groups_random_sizes_exactly_once_in_order() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = sink_settings("orders", &lite.endpoint(), &basin, &stream);
    let engine = Engine::start(queue.clone(), vec![settings], EngineOptions::default()).unwrap();

    let mut rng = fastrand::Rng::with_seed(7);
    let mut expected = HashMap::new();
    let total = 20_000u64;
    let mut seq = 0;
    while seq < total {
        let batch: Vec<IngestItem> = (0..500)
            .map(|_| {
                seq += 1;
                let pk = rng.u64(0..1000);
                IngestItem::new(change(pk, seq, rng.usize(0..2000)))
            })
            .collect();
        let groups: Vec<String> = batch
            .iter()
            .map(|i| format!("public.t/{}", i.message["record"]["id"]))
            .collect();
        let ids = engine.ingest("orders", batch).await.unwrap();
        for (id, g) in ids.iter().zip(groups) {
            expected.insert(id.0, g);
        }
    }
    let client = lite.client();
    let done = eventually(Duration::from_secs(120), || async {
        queue.counts("orders").pending == 0
    })
    .await;
    assert!(done, "not delivered in time: {:?}", queue.counts("orders"));
    let records = read_all(&client, &basin, &stream).await;
    let delivered = ids_in(&records, "orders");
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len() as u64, total);
    // Bodies are the producer's bytes.
    let first: serde_json::Value = serde_json::from_str(&records[0].body).unwrap();
    assert_eq!(first["metadata"]["table_name"], "t");
    let shared = engine.sink("orders").unwrap();
    let appends = shared.stats.appends.load(Relaxed);
    assert!(
        appends < total / 5,
        "{appends} appends for {total} messages"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn hot_group_is_batched_not_one_round_trip_per_message() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("hot").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = sink_settings("hot", &lite.endpoint(), &basin, &stream);
    let engine = Engine::start(queue.clone(), vec![settings], EngineOptions::default()).unwrap();
    let total = 50_000u64;
    let mut expected = HashMap::new();
    for chunk in 0..(total / 1000) {
        let batch: Vec<IngestItem> = (0..1000)
            .map(|i| IngestItem::new(change(42, chunk * 1000 + i, 16)))
            .collect();
        for id in engine.ingest("hot", batch).await.unwrap() {
            expected.insert(id.0, "public.t/42".to_string());
        }
    }
    let done = eventually(Duration::from_secs(120), || async {
        queue.counts("hot").pending == 0
    })
    .await;
    assert!(done, "not delivered: {:?}", queue.counts("hot"));
    let delivered = ids_in(&read_all(&lite.client(), &basin, &stream).await, "hot");
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    let appends = engine.sink("hot").unwrap().stats.appends.load(Relaxed);
    assert!(
        appends <= total / 100,
        "{appends} appends for {total} messages of one group"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
