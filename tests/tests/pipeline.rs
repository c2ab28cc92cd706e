//! Pipelined appends (`max_appends_in_flight`): several appends of one stream in flight at
//! once, chained by `match_seq_num`, still exactly once and in order per group — also when an
//! append in the middle of the pipeline fails or its answer is lost.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use s2sink_server::engine::SinkSettings;
use s2sink_tests::proxy::{Fault, Proxy};
use s2sink_tests::rig::EngineRig;
use s2sink_tests::{proxied_sink_settings, verify, LiteServer};

/// One sink `name` writing through a fault proxy in front of s2-lite.
struct Rig {
    rig: EngineRig,
    proxy: Proxy,
}

impl Deref for Rig {
    type Target = EngineRig;

    fn deref(&self) -> &EngineRig {
        &self.rig
    }
}

impl Rig {
    async fn start(name: &'static str, tune: impl FnOnce(&mut SinkSettings)) -> Rig {
        let lite = LiteServer::start().await;
        let proxy = Proxy::start(&lite.endpoint()).await;
        let rig = EngineRig::start(lite, name, |basin, stream| {
            let mut settings = proxied_sink_settings(name, &proxy, basin, stream);
            tune(&mut settings);
            settings
        })
        .await;
        Rig { rig, proxy }
    }

    /// Ingests `(group, seq)` changes in one request; returns id → group name.
    async fn ingest(&self, items: &[(u64, u64)]) -> HashMap<u64, String> {
        self.rig.ingest(items, 32).await
    }

    /// Waits (bounded) until nothing is pending and the proxy holds nothing; returns the ids
    /// in the stream.
    async fn drain(&self, deadline: Duration) -> Vec<u64> {
        let what = format!("proxy {:?}", self.proxy.stats());
        self.rig
            .drain(
                deadline,
                || async { self.proxy.stats().in_flight == 0 },
                &what,
            )
            .await
    }

    /// Ingests `n` messages of group `group` in one request and asserts (bounded wait) that
    /// all of them land exactly once and in order.
    async fn one_group_lands_once_in_order(&self, test: &str, group: u64, n: u64) {
        let items: Vec<(u64, u64)> = (0..n).map(|i| (group, i)).collect();
        let expected = self.ingest(&items).await;
        let delivered = self.drain(Duration::from_secs(60)).await;
        self.report(test);
        let verdict = verify(&delivered, &expected);
        assert!(verdict.is_clean(), "{verdict:?}");
        assert_eq!(delivered.len() as u64, n);
    }

    fn report(&self, test: &str) {
        eprintln!(
            "{test}: proxy {:?}; engine {}",
            self.proxy.stats(),
            self.rig.stats_line()
        );
    }
}

/// Appends (and a group's runs) of at most 500 records, `k` in flight.
fn appends_of_500(s: &mut SinkSettings, k: usize) {
    s.batch.max_appends_in_flight = k;
    s.batch.limits.max_records = 500;
    s.batch.max_run_records = 500;
}

/// A hot group of 20k messages over appends of 500 records, every append delayed 20 ms on
/// the wire: with `k` appends in flight. Returns (max in flight seen by the engine, by the
/// proxy).
async fn hot_group(k: usize) -> (u64, u64) {
    let rig = Rig::start("hot", |s| appends_of_500(s, k)).await;
    rig.proxy
        .set_policy(|_| Fault::Delay(Duration::from_millis(20)));
    let total = 20_000u64;
    let mut expected = HashMap::new();
    for chunk in 0..(total / 1000) {
        let items: Vec<(u64, u64)> = (0..1000).map(|i| (42, chunk * 1000 + i)).collect();
        expected.extend(rig.ingest(&items).await);
    }
    let delivered = rig.drain(Duration::from_secs(120)).await;
    rig.report(&format!("hot group k={k}"));
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len() as u64, total);
    let stats = &rig.sink().stats;
    // Nothing was charged: no failure reached a group.
    assert!(
        rig.sink().last_failure().is_none(),
        "{:?}",
        rig.sink().last_failure()
    );
    assert_eq!(stats.discarded.load(Relaxed), 0);
    (
        stats.max_appends_in_flight.load(Relaxed),
        rig.proxy.stats().max_in_flight,
    )
}

#[actix_rt::test]
async fn a_hot_group_with_two_appends_in_flight_lands_exactly_once_in_order() {
    let (engine_max, wire_max) = hot_group(2).await;
    // Two appends of the one group really were outstanding at once, at the engine and on
    // the wire (the proxy saw two requests at the same time).
    assert_eq!(engine_max, 2, "engine never had two appends in flight");
    assert!(wire_max >= 2, "the proxy never saw two appends at once");
}

#[actix_rt::test]
async fn one_append_in_flight_is_still_one() {
    // The control: with k = 1 the same load never overlaps appends (so the k = 2 test's
    // counters do measure pipelining).
    let (engine_max, wire_max) = hot_group(1).await;
    assert_eq!(engine_max, 1);
    assert_eq!(wire_max, 1);
}

#[actix_rt::test]
async fn a_hot_group_sends_its_next_run_while_an_earlier_one_is_still_unanswered() {
    // The group keeps a window of runs in the writer that moves on as each is acked: when
    // append 0 is answered and append 1 is still held on the wire, append 2 goes out. (Sent
    // in rounds of two, append 2 would wait for append 1's answer.) One ingest of 3,000
    // messages in one group, appends of 500 records: append i has match_seq_num 500·i.
    let rig = Rig::start("window", |s| appends_of_500(s, 2)).await;
    // Below the client's 5 s request timeout: append 1 is slow, not lost.
    let held = Duration::from_secs(3);
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let seen = arrivals.clone();
    rig.proxy.set_policy(move |info| {
        if let Some(m) = info.match_seq_num {
            seen.lock()
                .unwrap()
                .entry(m)
                .or_insert_with(std::time::Instant::now);
        }
        match info.match_seq_num {
            Some(500) => Fault::Delay(held),
            _ => Fault::Pass,
        }
    });
    rig.one_group_lands_once_in_order("window", 7, 3000).await;
    let arrivals = arrivals.lock().unwrap();
    let (Some(t1), Some(t2)) = (arrivals.get(&500), arrivals.get(&1000)) else {
        panic!("appends 1 and 2 not seen: {arrivals:?}");
    };
    // Append 1 cannot have been answered before `held` passed since it arrived.
    assert!(
        t2.duration_since(*t1) < held,
        "append 2 waited for append 1's answer ({:?} after it)",
        t2.duration_since(*t1)
    );
    assert!(rig.sink().last_failure().is_none(), "a group was charged");
}

#[actix_rt::test]
async fn a_refused_append_inside_a_groups_window_charges_its_run_once_and_loses_nothing() {
    // One group, appends of 500: append 2 (match_seq_num 1000) is refused once with 429 after
    // 1 s, while the runs behind it are already in the writer. The group is charged once
    // (the refused run's head), the runs behind go back uncharged, and everything lands once,
    // in order.
    let rig = Rig::start("window_fail", |s| {
        appends_of_500(s, 2);
        s.max_retry_count = Some(5);
    })
    .await;
    let refused = std::sync::atomic::AtomicBool::new(false);
    rig.proxy.set_policy(move |info| {
        if info.match_seq_num == Some(1000) && !refused.swap(true, Relaxed) {
            Fault::Late(Duration::from_secs(1), Box::new(Fault::throttled(0)))
        } else {
            Fault::Pass
        }
    });
    rig.one_group_lands_once_in_order("window_fail", 9, 4000)
        .await;
    let stats = &rig.sink().stats;
    let failures: u64 = stats.failures_by_status.lock().unwrap().values().sum();
    assert_eq!(failures, 1, "charged more than the refused run's head");
    assert_eq!(stats.discarded.load(Relaxed), 0);
    // The runs behind the refused one were in the writer and went back (uncharged).
    assert!(
        stats.requeued.load(Relaxed) >= 500,
        "no run behind the refused one was in the writer"
    );
}

/// Two groups, five messages each, appends of five records: one run per append, so one
/// group's run is append k and the other's is append k+1, sent while k is still in flight.
/// `faults[i]` applies to the append at chain position i (match_seq_num 5·i), once.
async fn two_groups_behind_a_fault(
    name: &'static str,
    faults: Vec<Fault>,
) -> (Rig, HashMap<u64, String>) {
    let rig = Rig::start(name, |s| {
        s.batch.max_appends_in_flight = 2;
        s.batch.limits.max_records = 5;
        s.batch.max_run_records = 5;
        s.batch.linger = Duration::ZERO;
        // A charged attempt discards: a chain victim charged by mistake would go missing.
        s.max_retry_count = Some(1);
    })
    .await;
    // Faults go by the append's place in the chain (its `match_seq_num`: 0 for k, 5 for k+1),
    // not by arrival order: k and k+1 travel on two connections, and k+1 may reach the proxy
    // first. Each fault applies once; resends pass.
    let by_position = std::sync::Mutex::new(
        faults
            .into_iter()
            .enumerate()
            .map(|(i, f)| (5 * i as u64, f))
            .collect::<HashMap<u64, Fault>>(),
    );
    rig.proxy.set_policy(move |info| {
        info.match_seq_num
            .and_then(|m| by_position.lock().unwrap().remove(&m))
            .unwrap_or(Fault::Pass)
    });
    let mut items = Vec::new();
    for seq in 0..5 {
        items.push((1, seq));
    }
    for seq in 0..5 {
        items.push((2, seq));
    }
    let expected = rig.ingest(&items).await;
    (rig, expected)
}

#[actix_rt::test]
async fn a_failed_append_sends_the_one_behind_it_back_uncharged() {
    // Append k is refused (429) only after 1.5 s, when k+1 is surely on the wire (also on a
    // loaded machine, with the two groups on different engine threads); k+1 reaches
    // S2 first with match_seq_num = k's end and gets 412. The group of k is charged (and, with
    // max_retry_count = 1, its head discarded); the group of k+1 is not charged at all.
    let (rig, mut expected) = two_groups_behind_a_fault(
        "refused",
        vec![Fault::Late(
            Duration::from_millis(1500),
            Box::new(Fault::throttled(0)),
        )],
    )
    .await;
    let delivered = rig.drain(Duration::from_secs(30)).await;
    rig.report("refused");
    let stats = &rig.sink().stats;
    assert_eq!(
        stats.max_appends_in_flight.load(Relaxed),
        2,
        "k+1 was not in flight"
    );
    assert_eq!(
        stats.discarded.load(Relaxed),
        1,
        "exactly the refused group's head is charged (and discarded)"
    );
    assert!(
        stats.requeued.load(Relaxed) >= 5,
        "k+1's run was not requeued"
    );
    // The discarded message is the head (lowest id) of one group; everything else landed
    // exactly once and in order.
    let missing: Vec<u64> = expected
        .keys()
        .copied()
        .filter(|id| !delivered.contains(id))
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    let group = expected[&missing[0]].clone();
    let head = expected
        .iter()
        .filter(|(_, g)| **g == group)
        .map(|(id, _)| *id)
        .min()
        .unwrap();
    assert_eq!(missing[0], head);
    expected.remove(&head);
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), expected.len());
}

#[actix_rt::test]
async fn a_lost_answer_with_the_next_append_landing_behind_it_is_not_duplicated() {
    // Append k is applied after 1 s but its answer is dropped (outcome unknown); k+1 is
    // held 2 s and then lands right behind k (its match_seq_num holds). The writer applies
    // k+1's ack, reconciles from the mark (which did not move past k) and finds k: nothing
    // is sent twice, nothing is charged.
    let (rig, expected) = two_groups_behind_a_fault(
        "lost",
        vec![
            Fault::Late(
                Duration::from_millis(1000),
                Box::new(Fault::ForwardThenDrop),
            ),
            Fault::Delay(Duration::from_millis(2000)),
        ],
    )
    .await;
    let delivered = rig.drain(Duration::from_secs(30)).await;
    rig.report("lost");
    let stats = &rig.sink().stats;
    assert_eq!(
        stats.max_appends_in_flight.load(Relaxed),
        2,
        "k+1 was not in flight"
    );
    assert_eq!(rig.proxy.stats().applied_unacknowledged, 1);
    assert_eq!(stats.discarded.load(Relaxed), 0, "a group was charged");
    assert!(
        rig.sink().last_failure().is_none(),
        "a group was charged: {:?}",
        rig.sink().last_failure()
    );
    assert!(
        stats.reconciles.load(Relaxed) >= 1,
        "the lost answer was not reconciled"
    );
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), expected.len());
    // Both appends landed on the first try: ten records, no resend.
    let tail = rig
        .lite
        .client()
        .check_tail(&rig.basin, &rig.stream)
        .await
        .unwrap()
        .seq_num;
    assert_eq!(tail, 10);
}

#[actix_rt::test]
async fn a_lost_answer_whose_follower_got_412_resends_only_the_follower() {
    // Append k is applied after 1.5 s (room for k+1 to be sent on a loaded machine), answer
    // dropped; k+1 passes at once, reaches S2 before k and gets 412. Reconciliation finds k; k+1's run goes back uncharged and lands once.
    let (rig, expected) = two_groups_behind_a_fault(
        "lost412",
        vec![Fault::Late(
            Duration::from_millis(1500),
            Box::new(Fault::ForwardThenDrop),
        )],
    )
    .await;
    let delivered = rig.drain(Duration::from_secs(30)).await;
    rig.report("lost412");
    let stats = &rig.sink().stats;
    assert_eq!(
        stats.max_appends_in_flight.load(Relaxed),
        2,
        "k+1 was not in flight"
    );
    assert_eq!(stats.discarded.load(Relaxed), 0, "a group was charged");
    assert!(
        rig.sink().last_failure().is_none(),
        "a group was charged: {:?}",
        rig.sink().last_failure()
    );
    assert!(
        stats.requeued.load(Relaxed) >= 5,
        "k+1's run was not requeued"
    );
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), expected.len());
}
