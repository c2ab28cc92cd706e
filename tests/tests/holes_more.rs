//! More exactly-once holes of issue 14 whose fixes had no test of their own, each reproduced
//! with the engine in-process against s2-lite (through the fault proxy where S2 must
//! misbehave): a 422 split after an ambiguous failure (4a), a 412 reconciliation that finds
//! part of a batch (7), a token rotated by reload (8), idle writers of a fan-out (9) and a
//! corrupt low-water mark with its way out (10). Two tests run the `s2-sink` binary
//! (`S2SINK_BIN`): the reconcile-from-start route and the token rotated by SIGHUP.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_client::{AppendInput, AppendRecord};
use s2sink_core::Route;
use s2sink_queue::{MessageId, Queue};
use s2sink_server::engine::{
    Engine, EngineOptions, IngestItem, SinkSettings, HEADER_ID, HEADER_SINK,
};
use s2sink_tests::client::{toml_str, Api, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::proxy::{Fault, Proxy, RequestInfo, Scope};
use s2sink_tests::{
    change, eventually, proxied_sink_settings, read_all, sink_settings, LiteServer,
};

/// An engine over one sink with the given options (fatal queue errors are printed).
fn engine_with(queue: &Queue, settings: SinkSettings, options: EngineOptions) -> Engine {
    let options = EngineOptions {
        on_fatal: Some(Arc::new(|e| eprintln!("fatal queue error: {e}"))),
        ..options
    };
    Engine::start(queue.clone(), vec![settings], options).unwrap()
}

fn engine(queue: &Queue, settings: SinkSettings) -> Engine {
    engine_with(queue, settings, EngineOptions::default())
}

/// One message per group `pk` (its `record.seq` = `pk`).
async fn ingest_groups(engine: &Engine, sink: &str, pks: std::ops::Range<u64>) -> Vec<MessageId> {
    let items = pks.map(|pk| IngestItem::new(change(pk, pk, 20))).collect();
    engine.ingest(sink, items).await.unwrap()
}

/// `record.seq` of each record of a stream, in stream order.
async fn seqs_in_order(lite: &LiteServer, basin: &str, stream: &str) -> Vec<u64> {
    read_all(&lite.client(), basin, stream)
        .await
        .iter()
        .map(|r| s2sink_tests::seq_of_body(&r.body).expect("a change message"))
        .collect()
}

/// Asserts the stream holds exactly the `want` seqs, each once (any order across groups).
async fn assert_exactly_once(lite: &LiteServer, basin: &str, stream: &str, want: &[u64]) {
    let mut got = seqs_in_order(lite, basin, stream).await;
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want, "stream {basin}/{stream}: lost or duplicated");
}

fn is_tail_check(r: &RequestInfo) -> bool {
    r.method == "GET"
        && r.path
            .split('?')
            .next()
            .unwrap_or("")
            .ends_with("/records/tail")
}

/// Issue 14.4a: after an ambiguous failure, splitting a batch rejected with 422 sent the
/// halves without `match_seq_num` (the writer's expected tail was unknown and nothing
/// re-established it). Now every append is prepared first. Here the batch of five groups gets
/// 422, the first single run's answer is lost and the reconciliation after it cannot read the
/// tail; the next single runs must still carry `match_seq_num`.
#[actix_rt::test]
async fn appends_of_a_split_batch_after_an_ambiguous_failure_carry_match_seq_num() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("split").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_scope(Scope::All);
    // (records, match_seq_num) of every append the proxy saw.
    type Seen = Vec<(usize, Option<u64>)>;
    let appends: Arc<Mutex<Seen>> = Arc::default();
    let step = Arc::new(AtomicU64::new(0));
    let (log, st) = (appends.clone(), step.clone());
    proxy.set_policy(move |r| {
        if r.is_append {
            log.lock().unwrap().push((r.records, r.match_seq_num));
        }
        match st.load(SeqCst) {
            0 if r.is_append => {
                st.store(1, SeqCst);
                Fault::s2_error(422, "invalid", "injected: one record is poison")
            }
            1 if r.is_append => {
                st.store(2, SeqCst);
                Fault::ForwardThenDrop
            }
            2 if is_tail_check(r) => {
                st.store(3, SeqCst);
                Fault::s2_error(503, "unavailable", "injected: cannot check the tail")
            }
            _ => Fault::Pass,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = proxied_sink_settings("split", &proxy, &basin, &stream);
    // All five runs in the first append: it waits for them even with nothing in flight (the
    // groups plan their runs on a blocking pool; on a loaded machine one could otherwise go
    // out alone).
    settings.batch.linger = Duration::from_millis(300);
    settings.batch.linger_when_idle = true;
    let engine = engine(&queue, settings);
    ingest_groups(&engine, "split", 1..6).await;
    let done = eventually(Duration::from_secs(20), || async {
        queue.counts("split").pending == 0 && proxy.stats().in_flight == 0
    })
    .await;
    assert!(done, "not delivered: {:?}", queue.counts("split"));
    assert_eq!(step.load(SeqCst), 3, "not every fault fired");
    let appends = appends.lock().unwrap().clone();
    assert!(
        appends[0].0 > 1,
        "the 422 was not on a multi-run batch: {appends:?}"
    );
    assert!(appends.len() > 2, "no split: {appends:?}");
    assert!(
        appends.iter().all(|(_, m)| m.is_some()),
        "an append without match_seq_num: {appends:?}"
    );
    assert_exactly_once(&lite, &basin, &stream, &[1, 2, 3, 4, 5]).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Issue 14.7: when the reconciliation after a 412 found part of a batch in the stream, every
/// run of the batch was charged the 412 as a failure, so other groups' heads got a deliver
/// count, a backoff and moved toward discard. Now found ids are acked and the rest appended
/// again at once, uncharged.
///
/// Ten groups' append is held by the proxy past the client's timeout (the reconciliation after
/// it cannot read the tail, so the outcome stays unknown and nothing is discarded); ten more
/// groups join the retry in one batch; the held append lands just before that batch, which
/// gets 412 with half of it in the stream. With `max_retry_count = 1` a charged 412 discards.
#[actix_rt::test]
async fn a_412_that_finds_part_of_the_batch_charges_no_other_group() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("partial").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_scope(Scope::All);
    let step = Arc::new(AtomicU64::new(0));
    // Records of every append the proxy saw.
    let appends: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (st, log) = (step.clone(), appends.clone());
    proxy.set_policy(move |r| {
        if r.is_append {
            log.lock().unwrap().push(r.records);
        }
        match st.load(SeqCst) {
            0 if r.is_append => {
                st.store(1, SeqCst);
                Fault::Hold
            }
            1 if is_tail_check(r) => {
                st.store(2, SeqCst);
                Fault::s2_error(503, "unavailable", "injected: cannot check the tail")
            }
            _ => Fault::Pass,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = proxied_sink_settings("partial", &proxy, &basin, &stream);
    settings.s2 = settings.s2.with_request_timeout(Duration::from_millis(500));
    settings.max_retry_count = Some(1);
    // The retries of the first ten groups (after a 20 ms backoff) and the ten new ones share
    // one append.
    settings.batch.linger = Duration::from_secs(1);
    settings.batch.linger_when_idle = true;
    let engine = engine(&queue, settings);
    ingest_groups(&engine, "partial", 1..11).await;
    let held = eventually(Duration::from_secs(10), || async {
        proxy.stats().count("hold") == 1
    })
    .await;
    assert!(held, "the first append never reached the proxy");
    ingest_groups(&engine, "partial", 11..21).await;
    let done = eventually(Duration::from_secs(20), || async {
        queue.counts("partial").pending == 0 && proxy.stats().in_flight == 0
    })
    .await;
    assert!(done, "not settled: {:?}", queue.counts("partial"));
    assert_eq!(step.load(SeqCst), 2, "not every fault fired");
    let stats = &engine.sink("partial").unwrap().stats;
    let conflicts: u64 = stats
        .failures_by_status
        .lock()
        .unwrap()
        .iter()
        .filter(|((_, status), _)| *status == 412)
        .map(|(_, n)| n)
        .sum();
    assert!(conflicts >= 1, "no 412: the scenario did not happen");
    let appends = appends.lock().unwrap().clone();
    assert_eq!(
        appends.get(..2),
        Some(&[10, 20][..]),
        "the batch after the held one is not both halves: {appends:?}"
    );
    let counts = queue.counts("partial");
    assert_eq!(
        (counts.delivered, counts.discarded),
        (20, 0),
        "a group was charged the 412: {counts:?}, last failure {:?}",
        engine.sink("partial").unwrap().last_failure()
    );
    assert_exactly_once(&lite, &basin, &stream, &(1..21).collect::<Vec<_>>()).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Issue 14.8: a rotated access token (the fix for S2's 401) must take effect on reload,
/// without a restart. The proxy answers 401 unless the new token is sent; after the reload
/// everything lands exactly once.
#[actix_rt::test]
async fn a_token_rotated_by_reload_is_used_without_a_restart() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("token").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_scope(Scope::All);
    proxy.set_policy(|r| {
        if r.authorization.as_deref() == Some("Bearer new-token") {
            Fault::Pass
        } else {
            Fault::s2_error(401, "unauthorized", "injected: token revoked")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = proxied_sink_settings("token", &proxy, &basin, &stream);
    settings.s2 = settings.s2.with_access_token("old-token");
    let engine = engine(&queue, settings.clone());
    ingest_groups(&engine, "token", 1..6).await;
    let shared = engine.sink("token").unwrap().clone();
    let refused = eventually(Duration::from_secs(10), || async {
        shared
            .last_failure()
            .is_some_and(|(_, e)| e.status == Some(401))
    })
    .await;
    assert!(
        refused,
        "the old token was not refused: {:?}",
        shared.last_failure()
    );
    assert_eq!(queue.counts("token").pending, 5);

    settings.s2 = settings.s2.with_access_token("new-token");
    engine.reload(vec![settings]).await.unwrap();
    let done = eventually(Duration::from_secs(20), || async {
        queue.counts("token").pending == 0
    })
    .await;
    assert!(
        done,
        "the new token was not used after the reload: {:?}, last failure {:?}",
        queue.counts("token"),
        shared.last_failure()
    );
    assert_exactly_once(&lite, &basin, &stream, &[1, 2, 3, 4, 5]).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Issue 14.9: writers were never removed, so a routing function fanning out to many streams
/// kept a task and a map entry per stream forever. Now idle writers end (here after 200 ms),
/// and messages to their streams afterwards start new ones and are delivered exactly once.
#[actix_rt::test]
async fn idle_writers_of_a_fan_out_end_and_come_back_on_demand() {
    const STREAMS: u64 = 50;
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let client = lite.client();
    for i in 0..STREAMS {
        client
            .ensure_stream(&basin, &format!("fan-{i}"), None)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut settings = sink_settings("fan", &lite.endpoint(), &basin, "unused");
    settings.route = None;
    settings.functions.route = Some(s2sink_transform::FunctionSource::Inline(format!(
        r#"fn route(action, record, changes, metadata) {{ #{{ basin: "{basin}", stream: "fan-" + (record.id % {STREAMS}).to_string() }} }}"#
    )));
    let options = EngineOptions {
        writer_idle: Some(Duration::from_millis(200)),
        ..EngineOptions::default()
    };
    let engine = engine_with(&queue, settings, options);
    for round in 0..2u64 {
        // Group (and stream) pk % 50, seq unique per round.
        let items = (0..STREAMS)
            .map(|pk| IngestItem::new(change(pk, round * 1000 + pk, 10)))
            .collect();
        engine.ingest("fan", items).await.unwrap();
        let delivered = eventually(Duration::from_secs(30), || async {
            queue.counts("fan").pending == 0
        })
        .await;
        assert!(delivered, "round {round}: {:?}", queue.counts("fan"));
        let ended = eventually(Duration::from_secs(10), || async {
            engine.live_writers("fan").await.unwrap() == 0
        })
        .await;
        assert!(
            ended,
            "round {round}: {} writers still alive after being idle",
            engine.live_writers("fan").await.unwrap()
        );
    }
    for i in 0..STREAMS {
        let seqs = seqs_in_order(&lite, &basin, &format!("fan-{i}")).await;
        assert_eq!(seqs, vec![i, 1000 + i], "stream fan-{i}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Issue 14.10: a corrupt low-water mark was padded or truncated, so the writer reconciled
/// from a wrong place. Now delivery to the stream stops with `corrupt_marker`, and nothing is
/// sent. The way out, `Engine::reconcile_from_start` (`POST
/// /api/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start`), sets the mark to 0: the
/// writer reads the whole stream back, skips the message that had already landed, and
/// delivers the rest once.
#[actix_rt::test]
async fn a_corrupt_marker_stops_delivery_until_reconciled_from_the_start() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("corrupt").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let key = format!("lwm/corrupt/{basin}/{stream}");
    queue.put_marker(&key, &[0, 0, 0, 0, 1]).await.unwrap();
    let mut settings = sink_settings("corrupt", &lite.endpoint(), &basin, &stream);
    settings.backoff.max_ms = 100;
    let engine = engine(&queue, settings);
    let ids = ingest_groups(&engine, "corrupt", 1..5).await;
    let shared = engine.sink("corrupt").unwrap().clone();
    let refused = eventually(Duration::from_secs(10), || async {
        shared
            .last_failure()
            .is_some_and(|(_, e)| e.code.as_deref() == Some("corrupt_marker"))
    })
    .await;
    let failure = shared.last_failure();
    assert!(refused, "the corrupt marker was not refused: {failure:?}");
    let message = failure.unwrap().1.message;
    assert!(
        message.contains("low-water mark") && message.contains("corrupt"),
        "{message}"
    );
    assert!(
        read_all(&lite.client(), &basin, &stream).await.is_empty(),
        "sent despite the corrupt marker"
    );

    // Meanwhile the first message had landed (its answer lost): it is in the stream, and the
    // way out must find it instead of sending it again.
    let first = queue.get("corrupt", ids[0]).unwrap().unwrap();
    let record = AppendRecord::new(String::from_utf8(first.payload.to_vec()).unwrap())
        .with_header(HEADER_SINK, "corrupt")
        .with_header(HEADER_ID, first.delivery_id().to_string());
    lite.client()
        .append(&basin, &stream, &AppendInput::new(vec![record]))
        .await
        .unwrap();

    let route = Route::new(basin.clone(), stream.clone()).unwrap();
    engine
        .reconcile_from_start("corrupt", &route)
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(20), || async {
        queue.counts("corrupt").pending == 0
    })
    .await;
    assert!(
        done,
        "not delivered after reconcile-from-start: {:?}, {:?}",
        queue.counts("corrupt"),
        shared.last_failure()
    );
    // Seq 1 once: found by reading from the start, not sent again.
    assert_exactly_once(&lite, &basin, &stream, &[1, 2, 3, 4]).await;
    let mark = queue.get_marker(&key).unwrap().unwrap();
    assert_eq!(mark.len(), 8, "the mark is not a valid one again");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// The way out of a corrupt marker through the binary's API: `POST
/// /api/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start` unblocks the stream; the
/// sink view shows `corrupt_marker` before.
#[actix_rt::test]
async fn the_reconcile_from_start_route_unblocks_a_stream_with_a_corrupt_marker() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("route").await;
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path().join("data")).unwrap();
        queue
            .put_marker(&format!("lwm/route/{basin}/{stream}"), &[1, 2, 3])
            .await
            .unwrap();
    }
    let config = TestConfig::new()
        .sink(SinkConfig::new("route", &lite.endpoint(), &basin, &stream).backoff(20, 100))
        .render();
    let server = ServerProcess::start(dir.path(), &config, &[]).await;
    let api = Api::new(&server, None);
    let body: Vec<String> = (1..4).map(|pk| change(pk, pk, 10).to_string()).collect();
    let a = api
        .ingest("route", "application/x-ndjson", body.join("\n"))
        .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.body);
    let refused = eventually(Duration::from_secs(10), || async {
        api.get("/api/sinks/route").await.body["last_error"]["code"] == "corrupt_marker"
    })
    .await;
    assert!(
        refused,
        "the sink view does not show the corrupt marker: {}",
        api.get("/api/sinks/route").await.body
    );
    assert!(read_all(&lite.client(), &basin, &stream).await.is_empty());
    let a = api
        .post(
            &format!("/api/sinks/route/streams/{basin}/{stream}/reconcile-from-start"),
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.body);
    assert!(
        api.wait_drained("route", Duration::from_secs(20)).await,
        "not delivered after reconcile-from-start: {}",
        api.get("/api/sinks/route").await.body
    );
    assert_exactly_once(&lite, &basin, &stream, &[1, 2, 3]).await;
}

/// Item 8 through the binary: the operator rotates the sink's `access_token` in the config
/// file and sends SIGHUP; the messages refused with 401 are then delivered, once, without a
/// restart.
#[actix_rt::test]
async fn a_token_rotated_in_the_config_file_is_used_after_sighup() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("hup").await;
    let proxy = Proxy::start(&lite.endpoint()).await;
    proxy.set_scope(Scope::All);
    proxy.set_policy(|r| {
        if r.authorization.as_deref() == Some("Bearer new-token") {
            Fault::Pass
        } else {
            Fault::s2_error(401, "unauthorized", "injected: token revoked")
        }
    });
    let config = |token: &str| {
        TestConfig::new()
            .sink(
                SinkConfig::new("hup", &proxy.endpoint(), &basin, &stream)
                    .set("append_session", "false")
                    .set("access_token", &toml_str(token))
                    .backoff(20, 100),
            )
            .render()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config("old-token"), &[]).await;
    let api = Api::new(&server, None);
    let body: Vec<String> = (1..6).map(|pk| change(pk, pk, 10).to_string()).collect();
    let a = api
        .ingest("hup", "application/x-ndjson", body.join("\n"))
        .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.body);
    let refused = eventually(Duration::from_secs(10), || async {
        api.get("/api/sinks/hup").await.body["last_error"]["status"] == 401
    })
    .await;
    assert!(refused, "{}", api.get("/api/sinks/hup").await.body);

    let text = config("new-token").replace("{port}", &server.port.to_string());
    std::fs::write(dir.path().join("s2-sink.toml"), text).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        api.wait_drained("hup", Duration::from_secs(20)).await,
        "the new token was not used after SIGHUP: {}\nlog:\n{}",
        api.get("/api/sinks/hup").await.body,
        server.log()
    );
    assert_exactly_once(&lite, &basin, &stream, &[1, 2, 3, 4, 5]).await;
}
