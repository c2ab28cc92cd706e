//! Retry limits and dead-lettering, and the bound on live group actors.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{our_id, Engine, EngineOptions, IngestItem};
use s2sink_tests::{change, eventually, ids_in, read_all, sink_settings, verify, LiteServer};

#[actix_rt::test]
async fn max_retry_count_discards_into_the_dead_letter_stream_with_the_error() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let client = lite.client();
    client.ensure_stream(&basin, "dlq", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    // The sink's stream does not exist: every attempt fails with 404.
    let mut s = sink_settings("capped", &lite.endpoint(), &basin, "missing");
    s.max_retry_count = Some(3);
    s.dead_letter_stream = Some("dlq".into());
    let engine = Engine::start(queue.clone(), vec![s], EngineOptions::default()).unwrap();
    let ids = engine
        .ingest(
            "capped",
            vec![
                IngestItem::new(change(1, 1, 10)),
                IngestItem::new(change(1, 2, 10)),
            ],
        )
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(30), || async {
        queue.counts("capped").pending == 0
    })
    .await;
    assert!(done, "not discarded: {:?}", queue.counts("capped"));
    assert_eq!(queue.counts("capped").discarded, 2);
    let discarded = queue.discarded("capped", 10).unwrap();
    let first = discarded.iter().find(|d| d.message.id == ids[0]).unwrap();
    assert_eq!(
        first.message.state.deliver_count, 3,
        "discarded after exactly 3 attempts"
    );
    let err = first.message.state.last_error.as_ref().unwrap();
    assert_eq!(err.code.as_deref(), Some("stream_not_found"));
    // Both are in the dead-letter stream, in order, with the error in headers and the
    // producer's bytes as body.
    let dlq = read_all(&client, &basin, "dlq").await;
    assert_eq!(ids_in(&dlq, "capped"), vec![ids[0].0, ids[1].0]);
    let h: HashMap<&str, &str> = dlq[0]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(h["s2sink-error-status"], "404");
    assert_eq!(h["s2sink-error-code"], "stream_not_found");
    assert_eq!(h["s2sink-error-class"], "needs_attention");
    let body: serde_json::Value = serde_json::from_str(&dlq[0].body).unwrap();
    assert_eq!(body["record"]["seq"], 1);
    assert_eq!(
        engine.sink("capped").unwrap().stats.discarded.load(Relaxed),
        2
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn live_group_actors_stay_within_the_bound() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("bounded").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut s = sink_settings("bounded", &lite.endpoint(), &basin, &stream);
    s.max_live_groups = 3;
    let engine = Engine::start(queue.clone(), vec![s], EngineOptions::default()).unwrap();
    let items: Vec<IngestItem> = (0..2000)
        .map(|i| IngestItem::new(change(i % 200, i, 10)))
        .collect();
    let groups: Vec<String> = items
        .iter()
        .map(|i| format!("public.t/{}", i.message["record"]["id"]))
        .collect();
    let ids = engine.ingest("bounded", items).await.unwrap();
    let expected: HashMap<u64, String> = ids.iter().map(|i| i.0).zip(groups).collect();
    let stats = &engine.sink("bounded").unwrap().stats;
    let mut max_live = 0;
    let done = eventually(Duration::from_secs(60), || {
        max_live = max_live.max(stats.live_groups.load(Relaxed));
        let pending = queue.counts("bounded").pending;
        async move { pending == 0 }
    })
    .await;
    assert!(done);
    assert!(
        max_live <= 3,
        "{max_live} live group actors with max_live_groups = 3"
    );
    assert!(max_live >= 1);
    let records = read_all(&lite.client(), &basin, &stream).await;
    let verdict = verify(&ids_in(&records, "bounded"), &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert!(records
        .iter()
        .all(|r| our_id("bounded", &r.headers).is_some()));
    engine.shutdown(Duration::from_secs(5)).await;
}
