//! The stream writer on S2's append session (the default transport): pipelined appends reach
//! s2-lite in order, connections cut mid-session lose and duplicate nothing, and an ack that
//! never comes is an unknown outcome, not a failure to resend blindly.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use s2sink_client::{AppendInput, AppendRecord, S2Client, S2Config};
use s2sink_core::ErrorClass;
use s2sink_server::engine::SinkSettings;
use s2sink_tests::cutter::TcpCutter;
use s2sink_tests::rig::EngineRig;
use s2sink_tests::{eventually, sink_settings, verify, LiteServer};

/// A sink on s2-lite at `endpoint` (s2-lite itself when `None`, or a forwarder in front).
async fn start(
    lite: LiteServer,
    endpoint: Option<&str>,
    name: &'static str,
    tune: impl FnOnce(&mut SinkSettings),
) -> EngineRig {
    let endpoint = endpoint.map_or_else(|| lite.endpoint(), str::to_owned);
    EngineRig::start(lite, name, |basin, stream| {
        let mut settings = sink_settings(name, &endpoint, basin, stream);
        assert!(settings.s2.append_session, "sessions are the default");
        tune(&mut settings);
        settings
    })
    .await
}

async fn drain(rig: &EngineRig) -> Vec<u64> {
    rig.drain(Duration::from_secs(180), || async { true }, "")
        .await
}

/// One hot group, appends of 200 records, two in flight: on a session they reach S2 in send
/// order, so no append ever overtakes the one ahead of it (a reorder would be a 412).
#[actix_rt::test]
async fn pipelined_appends_on_a_session_never_overtake_each_other() {
    let lite = LiteServer::start().await;
    let rig = start(lite, None, "hot", |s| {
        s.batch.limits.max_records = 200;
        s.batch.max_run_records = 200;
    })
    .await;
    let mut expected = HashMap::new();
    for chunk in 0..20u64 {
        let items: Vec<(u64, u64)> = (0..1000).map(|i| (7, chunk * 1000 + i)).collect();
        expected.extend(rig.ingest(&items, 32).await);
    }
    let delivered = drain(&rig).await;
    eprintln!("hot group on a session: {}", rig.stats_line());
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
    let rig = start(lite, Some(&cutter.endpoint()), "cut", |s| {
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
    let delivered = drain(&rig).await;
    eprintln!("{} connections cut: {}", cutter.cuts(), rig.stats_line());
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(delivered.len(), 10_000);
}

/// S2 applies an append but its ack never arrives (every answer swallowed on the way): the
/// append fails after the request timeout as "may have applied" — it did land, so resending
/// without reading the stream back would duplicate it.
#[tokio::test]
async fn an_ack_that_never_comes_is_an_unknown_outcome_after_the_timeout() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("mute").await;
    let cutter = TcpCutter::start(&lite.endpoint(), 1, (Duration::ZERO, Duration::ZERO)).await;
    cutter.mute();
    let config =
        S2Config::direct(cutter.endpoint()).with_request_timeout(Duration::from_millis(300));
    let client = S2Client::new(config).unwrap();
    let input = AppendInput::new(vec![AppendRecord::new("landed")]).with_match_seq_num(0);
    let e = client
        .append_ordered(&basin, &stream, Arc::new(input))
        .await
        .expect_err("no ack can arrive");
    assert_eq!(e.code(), Some("session_ended"), "{e}");
    assert_eq!(e.class(), ErrorClass::OutcomeUnknown, "{e}");
    assert!(e.to_string().contains("no ack within"), "{e}");
    let applied = eventually(Duration::from_secs(10), || async {
        let tail = lite.client().check_tail(&basin, &stream).await.unwrap();
        tail.seq_num == 1
    })
    .await;
    assert!(applied, "S2 never got the append");
}
