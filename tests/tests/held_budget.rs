//! Memory bound: group actors hold at most `max_held_bytes` of payload at once
//! (`EngineOptions::max_held_bytes`), whatever the backlog — and delivery stays exactly once
//! and in order per group while groups wait for room.

use std::collections::HashMap;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem};
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::{
    change, eventually, ids_in, proxied_sink_settings, read_all, verify, LiteServer,
};

#[actix_rt::test]
async fn group_actors_hold_no_more_than_the_budget_and_deliver_everything_in_order() {
    const BUDGET: u64 = 64 * 1024;
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("held").await;
    // Every append takes 30 ms on the wire, so runs stay held while the backlog waits.
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_policy(|_| Fault::Delay(Duration::from_millis(30)));
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let settings = proxied_sink_settings("held", &proxy, &basin, &stream);
    let options = EngineOptions {
        max_held_bytes: Some(BUDGET),
        threads: Some(2),
        ..Default::default()
    };
    let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();

    // A backlog of 100 groups × 30 messages of ~1 KB: ~3 MB, 47× the budget.
    let mut expected = HashMap::new();
    for round in 0..30u64 {
        let items: Vec<IngestItem> = (0..100u64)
            .map(|pk| IngestItem::new(change(pk, round, 1000)))
            .collect();
        let ids = engine.ingest("held", items).await.unwrap();
        for (pk, id) in ids.iter().enumerate() {
            expected.insert(id.0, format!("public.t/{pk}"));
        }
    }
    let budget = engine.held_budget().clone();
    let mut seen_held = 0usize;
    let done = eventually(Duration::from_secs(90), || {
        seen_held = seen_held.max(budget.held());
        async { queue.counts("held").pending == 0 }
    })
    .await;
    assert!(done, "not delivered: {:?}", queue.counts("held"));

    // Group actors did take from the budget (reads of up to a quarter of it), never more
    // than all of it, and gave everything back.
    assert_eq!(budget.capacity(), BUDGET as usize);
    assert!(
        budget.high_water() >= BUDGET as usize / 4,
        "no group read went through the budget: high water {}",
        budget.high_water()
    );
    assert!(budget.high_water() <= BUDGET as usize);
    assert!(seen_held > 0, "nothing was ever held while delivering");
    // Each group gives its bytes back as its last run settles (just after the last ack).
    let released = eventually(Duration::from_secs(10), || async { budget.held() == 0 }).await;
    assert!(released, "held bytes not given back: {}", budget.held());
    engine.shutdown(Duration::from_secs(5)).await;

    let records = read_all(&lite.client(), &basin, &stream).await;
    let verdict = verify(&ids_in(&records, "held"), &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(records.len(), 3000);
}
