//! The HTTP API of the `s2-sink` binary: every route, status code and error shape, auth,
//! all-or-nothing ingest, 413, 404, 429 + Retry-After, and secrets kept out of responses
//! and logs.

use std::time::Duration;

use reqwest::StatusCode;
use s2sink_client::testing::{FakeReply, FakeServer};
use s2sink_tests::client::{self, toml_str, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::{change, eventually, ids_in, read_all, LiteServer};
use serde_json::{json, Value};

const API_TOKEN: &str = "api-tok-3f9a1c";
const S2_TOKEN: &str = "s2-tok-77b2e0";

fn config(endpoint: &str, basin: &str) -> String {
    TestConfig::new()
        .server("max_pending", "30")
        .server("max_body_bytes", "1048576")
        .sink(
            SinkConfig::new("good", endpoint, basin, "events")
                .set("access_token", &toml_str(S2_TOKEN)),
        )
        .sink(SinkConfig::new("stuck", endpoint, basin, "does-not-exist").backoff(50, 200))
        .render()
}

/// The shared client, its answers as the tuples this file's assertions read.
struct Api(client::Api);

impl Api {
    fn new(server: &ServerProcess) -> Api {
        Api(client::Api::new(server, Some(API_TOKEN)))
    }

    async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let a = self.0.request_as(method, path, token, body).await;
        (a.status, a.headers, a.body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let a = self.0.get(path).await;
        (a.status, a.body)
    }

    async fn post(
        &self,
        path: &str,
        ct: &str,
        body: String,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let a = self.0.post(path, ct, body).await;
        (a.status, a.headers, a.body)
    }
}

fn assert_error(v: &Value, code: &str, needle: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_status_and_error_shape() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    lite.client()
        .ensure_stream(&basin, "events", None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &config(&lite.endpoint(), &basin),
        &[("S2SINK_SERVER__API_TOKEN", API_TOKEN)],
    )
    .await;
    let api = Api::new(&server);
    let json_ct = "application/json";

    // Open routes.
    let (s, _, v) = api.req(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = api.req(reqwest::Method::GET, "/", None, None).await;
    assert_eq!(s, 200);

    // Auth: missing, wrong, right.
    let (s, _, v) = api
        .req(reqwest::Method::GET, "/api/sinks", None, None)
        .await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthorized", "Authorization");
    let (s, _, v) = api
        .req(reqwest::Method::GET, "/api/sinks", Some("nope"), None)
        .await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthorized", "wrong");
    let (s, v) = api.get("/api/sinks").await;
    assert_eq!(s, 200);
    assert_eq!(v["sinks"].as_array().unwrap().len(), 2);
    assert_eq!(v["sinks"][0]["access_token"], "[redacted]");
    assert!(!v.to_string().contains(S2_TOKEN));

    // Ingest: object, array, NDJSON.
    let (s, _, v) = api
        .post(
            "/api/sinks/good/messages",
            json_ct,
            change(1, 1, 5).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["accepted"], 1);
    let arr = json!([change(2, 2, 5), change(3, 3, 5), change(2, 4, 5)]).to_string();
    let (s, _, v) = api.post("/api/sinks/good/messages", json_ct, arr).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
    let nd = format!("{}\n{}\n", change(4, 5, 5), change(5, 6, 5));
    let (s, _, v) = api
        .post("/api/sinks/good/messages", "application/x-ndjson", nd)
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["accepted"], 2);

    // All or nothing: a bad message in a batch names its index; nothing is stored.
    let (_, before) = api.get("/api/sinks/good").await;
    let bad = format!("[{}, 5, {}]", change(6, 7, 5), change(7, 8, 5));
    let (s, _, v) = api.post("/api/sinks/good/messages", json_ct, bad).await;
    assert_eq!(s, 400);
    assert_error(&v, "invalid_message", "message 1");
    let (s, _, v) = api
        .post("/api/sinks/good/messages", json_ct, "{\"a\":".into())
        .await;
    assert_eq!(s, 400, "{v}");
    // An empty `?group=` would make the messages ungrouped (order lost): refused, naming it.
    for query in ["?group=", "?group"] {
        let (s, h, v) = api
            .post(
                &format!("/api/sinks/good/messages{query}"),
                json_ct,
                change(8, 9, 5).to_string(),
            )
            .await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(h["content-type"], "application/json", "{query}");
        assert_error(&v, "bad_request", "`group`");
    }
    let (_, after) = api.get("/api/sinks/good").await;
    let total = |v: &Value| {
        v["counts"]["pending"].as_u64().unwrap() + v["counts"]["delivered"].as_u64().unwrap()
    };
    assert_eq!(
        total(&before),
        total(&after),
        "a rejected request stored something"
    );

    // 413 and 404.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_100_000));
    let (s, _, v) = api.post("/api/sinks/good/messages", json_ct, big).await;
    assert_eq!(s, 413);
    assert_error(&v, "payload_too_large", "1048576");
    let (s, _, v) = api
        .post("/api/sinks/nope/messages", json_ct, "{}".into())
        .await;
    assert_eq!(s, 404);
    assert_error(&v, "unknown_sink", "nope");
    let (s, v) = api.get("/api/sinks/nope").await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api.get("/api/nothing-here").await;
    assert_eq!(s, 404, "{v}");

    // The good sink delivers.
    let client = lite.client();
    let delivered = eventually(Duration::from_secs(30), || async {
        ids_in(&read_all(&client, &basin, "events").await, "good").len() == 6
    })
    .await;
    assert!(delivered);

    // The stuck sink: messages fail with S2's 404 and can be inspected and managed.
    let batch: Vec<Value> = (0..25).map(|i| change(100 + i, 100 + i, 5)).collect();
    let (s, _, v) = api
        .post(
            "/api/sinks/stuck/messages",
            json_ct,
            Value::from(batch).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    let failed = eventually(Duration::from_secs(30), || async {
        let (_, v) = api
            .get("/api/sinks/stuck/messages?state=failed&limit=100")
            .await;
        v["messages"].as_array().map(|m| m.len()) == Some(25)
    })
    .await;
    assert!(failed, "stuck messages did not fail");
    let (s, v) = api
        .get(&format!("/api/sinks/stuck/messages/{}", ids[0]))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["last_error"]["status"], 404, "{v}");
    assert_eq!(v["last_error"]["code"], "stream_not_found");
    assert_eq!(v["last_error"]["class"], "needs_attention");
    assert!(v["deliver_count"].as_u64().unwrap() >= 1);
    assert_eq!(v["delivery"]["route"]["stream"], "does-not-exist");
    assert_eq!(v["message"]["record"]["id"], 100);
    let (s, v) = api.get("/api/sinks/stuck").await;
    assert_eq!(s, 200);
    assert_eq!(v["health"], "failing");
    assert_eq!(v["last_error"]["code"], "stream_not_found");
    let (s, v) = api.get("/api/sinks/stuck/messages?state=bogus").await;
    assert_eq!(s, 400);
    assert_error(&v, "bad_request", "bogus");
    let (s, v) = api.get("/api/sinks/stuck/messages?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    let cursor = v["next_after"].as_u64().unwrap();
    let (_, v) = api
        .get(&format!("/api/sinks/stuck/messages?limit=2&after={cursor}"))
        .await;
    assert!(v["messages"][0]["id"].as_u64().unwrap() > cursor);

    // Backlog over max_pending (30): 429 with Retry-After.
    let more: Vec<Value> = (0..10).map(|i| change(200 + i, 200 + i, 5)).collect();
    let (s, _, _) = api
        .post(
            "/api/sinks/stuck/messages",
            json_ct,
            Value::from(more).to_string(),
        )
        .await;
    assert_eq!(s, 202);
    let (s, h, v) = api
        .post(
            "/api/sinks/stuck/messages",
            json_ct,
            change(300, 300, 5).to_string(),
        )
        .await;
    assert_eq!(s, 429, "{v}");
    assert_error(&v, "backpressure", "30");
    assert!(h.get("retry-after").is_some());

    // Manual actions.
    let act = |id: u64, a: &str| format!("/api/sinks/stuck/messages/{id}/{a}");
    let (s, _, v) = api
        .post(&act(ids[1], "redeliver"), json_ct, String::new())
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = api
        .post(&act(ids[2], "discard"), json_ct, String::new())
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = api
        .post(&act(ids[3], "acknowledge"), json_ct, String::new())
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = api
        .post(&act(ids[3], "acknowledge"), json_ct, String::new())
        .await;
    assert_eq!(s, 404, "{v}");
    assert_error(&v, "unknown_message", &ids[3].to_string());
    let (s, _, v) = api
        .post(&act(ids[4], "explode"), json_ct, String::new())
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, _, v) = api
        .post(
            "/api/sinks/stuck/messages/abc/redeliver",
            json_ct,
            String::new(),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _, v) = api
        .post("/api/sinks/stuck/redeliver", json_ct, String::new())
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["redelivered"].as_u64().unwrap() >= 1);
    let (s, v) = api.get("/api/sinks/stuck/discarded").await;
    assert_eq!(s, 200);
    assert_eq!(v["messages"][0]["id"], ids[2]);
    assert_eq!(v["messages"][0]["last_error"]["code"], "stream_not_found");
    let (_, v) = api.get("/api/sinks/stuck").await;
    assert_eq!(v["counts"]["discarded"], 1);
    assert_eq!(v["counts"]["delivered"], 1);

    // Metrics.
    let (s, _, m) = api.req(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains("s2sink_messages_ingested_total{sink=\"good\"} 6"),
        "{m}"
    );
    assert!(
        m.contains(
            "s2sink_failed_attempts_total{sink=\"stuck\",class=\"needs_attention\",status=\"404\"}"
        ),
        "{m}"
    );
    assert!(m.contains("s2sink_pending_messages{sink=\"stuck\"}"));

    // Secrets never reach the logs.
    let log = server.log();
    assert!(
        log.contains("append failed"),
        "expected failure logs:\n{log}"
    );
    assert!(
        !log.contains(API_TOKEN) && !log.contains(S2_TOKEN),
        "a token leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_out_of_logs_when_s2_rejects_the_token() {
    // A proxy in front of S2 answering 401 to everything, as S2 does for a bad token.
    let fake = FakeServer::start(FakeReply::json(
        401,
        r#"{"code":"authn","message":"invalid token"}"#,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .sink(
            SinkConfig::new("auth", &fake.endpoint(), "some-basin-01", "events")
                .set("access_token_env", &toml_str("MY_S2_TOKEN"))
                .backoff(20, 100),
        )
        .render();
    let server = ServerProcess::start(
        dir.path(),
        &cfg,
        &[
            ("MY_S2_TOKEN", S2_TOKEN),
            ("S2SINK_SERVER__API_TOKEN", API_TOKEN),
        ],
    )
    .await;
    let api = Api::new(&server);
    let (s, _, _) = api
        .post(
            "/api/sinks/auth/messages",
            "application/json",
            change(1, 1, 5).to_string(),
        )
        .await;
    assert_eq!(s, 202);
    let seen = eventually(Duration::from_secs(30), || async {
        let (_, v) = api.get("/api/sinks/auth/messages?state=failed").await;
        v["messages"][0]["deliver_count"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    assert!(seen);
    let (_, v) = api.get("/api/sinks/auth/messages?state=failed").await;
    assert_eq!(v["messages"][0]["last_error"]["status"], 401);
    assert_eq!(v["messages"][0]["last_error"]["code"], "authn");
    // The token did reach S2 (as a bearer header) …
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {S2_TOKEN}"))));
    // … but never the logs, API responses or metrics.
    let log = server.log();
    assert!(log.contains("authn"), "{log}");
    assert!(!log.contains(S2_TOKEN) && !log.contains(API_TOKEN));
    let (_, all) = api.get("/api/sinks").await;
    let (_, _, m) = api.req(reqwest::Method::GET, "/metrics", None, None).await;
    assert!(!all.to_string().contains(S2_TOKEN) && !m.to_string().contains(S2_TOKEN));
}
