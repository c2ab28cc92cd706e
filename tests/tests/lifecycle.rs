//! Process lifecycle of `s2-sink serve`: a graceful stop (SIGTERM) loses and duplicates
//! nothing across a restart, and config reloads (`POST /api/reload`, SIGHUP) take effect
//! without a restart while an invalid config is refused and the old one keeps running.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use s2sink_tests::client::{Api, SinkConfig, TestConfig};
use s2sink_tests::process::{http_client, ServerProcess};
use s2sink_tests::{change, eventually, ids_in, read_all, verify, verify_stream, LiteServer};
use serde_json::Value;

const API_TOKEN: &str = "life-api-tok-1c2d";

/// Sends NDJSON batches to `sink` until told to stop or the server stops answering 202;
/// records ids that got a 202.
async fn produce(
    url: String,
    sink: &'static str,
    accepted: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let http = http_client();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seq = seed * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let body: String = (0..100)
            .map(|_| {
                seq += 1;
                format!("{}\n", change(rng.u64(0..50), seq, rng.usize(0..200)))
            })
            .collect();
        let resp = http
            .post(format!("{url}/api/sinks/{sink}/messages"))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let Ok(resp) = resp else { return };
        if resp.status().as_u16() != 202 {
            return;
        }
        let Ok(v) = resp.json::<Value>().await else {
            return;
        };
        let mut acc = accepted.lock().unwrap();
        for id in v["ids"].as_array().unwrap() {
            acc.insert(id.as_u64().unwrap());
        }
    }
}

/// The API of the server at `url`, with the token.
fn api(url: &str) -> Api {
    Api {
        http: http_client(),
        url: url.to_string(),
        token: Some(API_TOKEN.to_string()),
    }
}

/// `GET path`; `None` when the server does not answer (e.g. while it restarts).
async fn get(url: &str, path: &str) -> Option<Value> {
    let a = api(url)
        .try_request_as(Method::GET, path, Some(API_TOKEN), None)
        .await
        .ok()?;
    Some(a.body)
}

async fn pending(url: &str, sink: &str) -> Option<u64> {
    api(url).pending(sink).await
}

/// SIGTERM; returns the exit code and how long the stop took. A watchdog SIGKILLs the
/// process after `limit` so a hung stop fails the test instead of hanging it.
fn terminate_within(server: &mut ServerProcess, limit: Duration) -> (Option<i32>, Duration) {
    let pid = server.pid().expect("server runs");
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
    };
    let start = Instant::now();
    let code = server.terminate();
    let took = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    (code, took)
}

fn stop_config(endpoint: &str, basin: &str) -> String {
    TestConfig::new()
        .api_token(API_TOKEN)
        .server("shutdown_timeout_ms", "5000")
        .sink(SinkConfig::new("healthy", endpoint, basin, "events").backoff(20, 200))
        .sink(SinkConfig::new("blocked", endpoint, basin, "later").backoff(50, 300))
        .render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_restart_delivers_every_accepted_message_once() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = stop_config(&lite.endpoint(), &basin);
    let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;

    let healthy = Arc::new(Mutex::new(HashSet::new()));
    let blocked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers = [
        tokio::spawn(produce(
            server.url.clone(),
            "healthy",
            healthy.clone(),
            stop.clone(),
            1,
        )),
        tokio::spawn(produce(
            server.url.clone(),
            "healthy",
            healthy.clone(),
            stop.clone(),
            2,
        )),
        tokio::spawn(produce(
            server.url.clone(),
            "blocked",
            blocked.clone(),
            stop.clone(),
            3,
        )),
    ];
    // Stop while producers send and the healthy sink delivers.
    let client = lite.client();
    let busy = eventually(Duration::from_secs(30), || async {
        healthy.lock().unwrap().len() >= 2000
            && !ids_in(&read_all(&client, &basin, &stream).await, "healthy").is_empty()
    })
    .await;
    assert!(busy, "no traffic before the stop; log:\n{}", server.log());
    let blocked_pending = pending(&server.url, "blocked").await.unwrap_or(0);
    assert!(blocked_pending > 0, "the blocked sink holds nothing");
    let (code, took) = terminate_within(&mut server, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(
        code,
        Some(0),
        "SIGTERM exit (after {took:?}); log:\n{}",
        server.log()
    );
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    eprintln!(
        "stopped in {took:?}; accepted healthy {} blocked {} (blocked pending at stop {blocked_pending})",
        healthy.lock().unwrap().len(),
        blocked.lock().unwrap().len()
    );
    assert!(
        server.log().contains("stopping"),
        "no graceful stop logged:\n{}",
        server.log()
    );

    // Restart on the same data dir; the blocked sink's stream now exists.
    client.ensure_stream(&basin, "later", None).await.unwrap();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let drained = eventually(Duration::from_secs(120), || async {
        pending(&server.url, "healthy").await == Some(0)
            && pending(&server.url, "blocked").await == Some(0)
    })
    .await;
    assert!(drained, "backlog not drained; log:\n{}", server.log());

    for (sink, stream, accepted) in [
        ("healthy", "events", &healthy),
        ("blocked", "later", &blocked),
    ] {
        let accepted = accepted.lock().unwrap().clone();
        assert!(!accepted.is_empty(), "{sink}: nothing accepted");
        let records = read_all(&client, &basin, stream).await;
        let verdict = verify_stream(&records, sink, &accepted);
        assert!(
            verdict.is_clean(),
            "{sink}: {} accepted, lost {} duplicated {} reordered {}: {verdict:?}",
            accepted.len(),
            verdict.missing.len(),
            verdict.duplicated.len(),
            verdict.order_violations.len()
        );
    }
}

const BROKEN: &str = r#"fn transform(action, record, changes, metadata) { throw "broken"; }"#;
const V2: &str = r#"fn transform(action, record, changes, metadata) { #{ id: record.id, seq: record.seq, v: 2 } }"#;

fn reload_config(endpoint: &str, basin: &str, transform: &str) -> String {
    TestConfig::new()
        .api_token(API_TOKEN)
        .sink(
            SinkConfig::new("fx", endpoint, basin, "events")
                .set("transform", &format!("'''{transform}'''"))
                .backoff(50, 300),
        )
        .render()
}

/// Rewrites the server's config file (as an operator would).
fn rewrite(dir: &Path, server: &ServerProcess, text: &str) {
    let text = text.replace("{port}", &server.port.to_string());
    std::fs::write(dir.join("s2-sink.toml"), text).unwrap();
}

async fn reload(server: &ServerProcess) -> (u16, Value) {
    let r = http_client()
        .post(format!("{}/api/reload", server.url))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("reload");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn sighup(server: &ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends `n` changes over `groups` primary keys; returns (id, pk) in acceptance order.
async fn send(server: &ServerProcess, first_seq: u64, n: u64, groups: u64) -> Vec<(u64, u64)> {
    let pks: Vec<u64> = (0..n).map(|i| i % groups).collect();
    let body: String = pks
        .iter()
        .enumerate()
        .map(|(i, pk)| format!("{}\n", change(*pk, first_seq + i as u64, 10)))
        .collect();
    let r = http_client()
        .post(format!("{}/api/sinks/fx/messages", server.url))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    ids.into_iter().zip(pks).collect()
}

/// Waits until the sink holds `n` messages and the head of every group has failed with a
/// `transform` error (only heads are attempted while a group is failing).
async fn wait_transform_failures(server: &ServerProcess, n: usize) {
    let ok = eventually(Duration::from_secs(30), || async {
        let Some(v) = get(&server.url, "/api/sinks/fx/messages?state=all&limit=1000").await else {
            return false;
        };
        let msgs = v["messages"].as_array().cloned().unwrap_or_default();
        let mut heads: HashMap<String, &Value> = HashMap::new();
        for m in &msgs {
            heads.entry(m["group"].to_string()).or_insert(m);
        }
        msgs.len() == n
            && heads
                .values()
                .all(|m| m["last_error"]["code"] == "transform")
    })
    .await;
    assert!(
        ok,
        "messages did not fail with `transform`: {:?}; log:\n{}",
        get(&server.url, "/api/sinks/fx/messages?state=all&limit=1000").await,
        server.log()
    );
}

/// Checks that the sink's stream holds exactly `sent` (once each, per group in order).
async fn check_stream(lite: &LiteServer, basin: &str, sent: &[(u64, u64)]) -> Vec<Value> {
    let records = read_all(&lite.client(), basin, "events").await;
    let delivered = ids_in(&records, "fx");
    let expected: HashMap<u64, String> =
        sent.iter().map(|(id, pk)| (*id, pk.to_string())).collect();
    let verdict = verify(&delivered, &expected);
    assert!(verdict.is_clean(), "{verdict:?}");
    records
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_fixes_a_broken_transform_without_a_restart() {
    let lite = LiteServer::start().await;
    let (basin, _) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = lite.endpoint();
    let server =
        ServerProcess::start(dir.path(), &reload_config(&endpoint, &basin, BROKEN), &[]).await;

    // 1. Broken transform: nothing is delivered, the heads fail with code `transform`.
    let mut sent = send(&server, 1, 30, 4).await;
    wait_transform_failures(&server, 30).await;
    let (_, v) = {
        let id = sent[0].0;
        (
            id,
            get(&server.url, &format!("/api/sinks/fx/messages/{id}"))
                .await
                .unwrap(),
        )
    };
    assert_eq!(v["last_error"]["code"], "transform", "{v}");
    assert!(
        v["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("broken"),
        "{v}"
    );
    assert!(read_all(&lite.client(), &basin, "events").await.is_empty());

    // POST /api/reload with a fixed transform: the stuck messages drain in order.
    rewrite(
        dir.path(),
        &server,
        &reload_config(&endpoint, &basin, "record"),
    );
    let (status, v) = reload(&server).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reloaded"], true, "{v}");
    let drained = eventually(Duration::from_secs(30), || async {
        pending(&server.url, "fx").await == Some(0)
    })
    .await;
    assert!(drained, "not drained after reload; log:\n{}", server.log());
    let bodies = check_stream(&lite, &basin, &sent).await;
    assert!(bodies
        .iter()
        .all(|b| b["id"].is_u64() && b.get("record").is_none()));

    // 2. Same via SIGHUP: break it again, then fix it with a different transform.
    let reloads = |s: &ServerProcess| s.log().matches("config reloaded").count();
    let base = reloads(&server);
    rewrite(
        dir.path(),
        &server,
        &reload_config(&endpoint, &basin, BROKEN),
    );
    sighup(&server);
    let applied = eventually(Duration::from_secs(10), || async {
        reloads(&server) > base
    })
    .await;
    assert!(applied, "SIGHUP not applied; log:\n{}", server.log());
    let batch2 = send(&server, 1000, 20, 3).await;
    wait_transform_failures(&server, 20).await;
    rewrite(dir.path(), &server, &reload_config(&endpoint, &basin, V2));
    sighup(&server);
    let applied = eventually(Duration::from_secs(10), || async {
        reloads(&server) > base + 1
    })
    .await;
    assert!(applied, "second SIGHUP not applied; log:\n{}", server.log());
    let drained = eventually(Duration::from_secs(30), || async {
        pending(&server.url, "fx").await == Some(0)
    })
    .await;
    assert!(drained, "not drained after SIGHUP; log:\n{}", server.log());
    sent.extend(&batch2);
    let bodies = check_stream(&lite, &basin, &sent).await;
    assert_eq!(bodies.len(), 50);
    assert!(bodies[30..].iter().all(|b| b["v"] == 2), "{bodies:?}");

    // 3. An invalid config is refused with 422; the server keeps running the V2 transform.
    let invalid = reload_config(&endpoint, &basin, V2)
        .replace("stream = \"events\"", "stream = \"events\"\nstreem = 1");
    rewrite(dir.path(), &server, &invalid);
    let (status, v) = reload(&server).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("streem"),
        "{v}"
    );
    let bad_fn = reload_config(
        &endpoint,
        &basin,
        "fn transform(action, record, changes, metadata) { record +* }",
    );
    rewrite(dir.path(), &server, &bad_fn);
    let (status, v) = reload(&server).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config", "{v}");
    sighup(&server);
    let logged = eventually(Duration::from_secs(10), || async {
        server.log().contains("reload failed")
    })
    .await;
    assert!(
        logged,
        "failed SIGHUP reload not logged; log:\n{}",
        server.log()
    );
    let health = http_client()
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let batch3 = send(&server, 2000, 10, 2).await;
    let drained = eventually(Duration::from_secs(30), || async {
        pending(&server.url, "fx").await == Some(0)
    })
    .await;
    assert!(
        drained,
        "not drained on the old config; log:\n{}",
        server.log()
    );
    sent.extend(&batch3);
    let bodies = check_stream(&lite, &basin, &sent).await;
    assert_eq!(bodies.len(), 60);
    assert!(bodies[50..].iter().all(|b| b["v"] == 2), "{bodies:?}");
}

/// A reload cannot add sinks; such a config must be refused like any other invalid config
/// (`422 invalid_config`, docs/API.md), with the running config kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_new_sink_is_refused_as_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = reload_config("http://127.0.0.1:1", "reload-basin-01", "record");
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let added = format!(
        "{cfg}\n[[sinks]]\nname = \"extra\"\nbasin = \"reload-basin-01\"\nstream = \"more\"\nendpoint = \"http://127.0.0.1:1\"\n"
    );
    rewrite(dir.path(), &server, &added);
    let (status, v) = reload(&server).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("extra"),
        "{v}"
    );
    let sinks = get(&server.url, "/api/sinks").await.unwrap();
    assert_eq!(sinks["sinks"].as_array().unwrap().len(), 1, "{sinks}");
}
