//! Hostile input against the running server: each case gets the right status and an error
//! naming the problem, the server stays up, and messages accepted before still arrive.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use s2sink_tests::client::{self, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::{change, eventually, ids_in, read_all, LiteServer};
use serde_json::{json, Value};

const TOKEN: &str = "hostile-api-token";

fn config(endpoint: &str, basin: &str) -> String {
    let sink = |name: &str| SinkConfig::new(name, endpoint, basin, "events");
    let inflate = r#"'''fn transform(action, record, changes, metadata) {
    let s = "x";
    while s.len() < 1100000 { s += s; }
    #{ big: s }
}'''"#;
    let routing = format!(
        r#"'''fn route(action, record, changes, metadata) {{
    if record.kind == "bad_basin" {{ return #{{ basin: "Bad_Basin", stream: "events" }}; }}
    if record.kind == "empty_stream" {{ return #{{ basin: "{basin}", stream: "" }}; }}
    if record.kind == "extra" {{ return #{{ basin: "{basin}", stream: "events", color: "red" }}; }}
    #{{ basin: "{basin}", stream: "events" }}
}}'''"#
    );
    let spin = r#""fn transform(action, record, changes, metadata) { loop { } }""#;
    let grow = r#"'''fn transform(action, record, changes, metadata) { let s = "xy"; loop { s += s; } }'''"#;
    TestConfig::new()
        .api_token(TOKEN)
        .sink(sink("main").backoff(50, 200))
        .sink(sink("inflate").set("transform", inflate).backoff(50, 200))
        .sink(
            SinkConfig::routed("router", endpoint)
                .set("routing", &routing)
                .backoff(50, 200),
        )
        .sink(sink("spin").set("transform", spin).backoff(50, 200))
        .sink(sink("grow").set("transform", grow).backoff(50, 200))
        .render()
}

/// The shared client, its answers as `(status, body)`.
struct Client(client::Api);

impl Client {
    async fn post_raw(
        &self,
        sink: &str,
        ct: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let path = format!("/api/sinks/{sink}/messages");
        let headers = [("content-type", ct)];
        pair(
            self.0
                .send(Method::POST, &path, token, &headers, Some(body))
                .await,
        )
    }

    /// POSTs `{}` to `path` with exactly `headers` (the token unless one is given).
    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let token = (!headers.iter().any(|(k, _)| *k == "authorization")).then_some(TOKEN);
        let body = Some(b"{}".to_vec());
        pair(self.0.send(Method::POST, path, token, headers, body).await)
    }

    async fn send_get(&self, path: &str) -> (StatusCode, Value) {
        let a = self.0.get(path).await;
        (a.status, a.body)
    }

    async fn post(&self, sink: &str, body: impl Into<Vec<u8>>) -> (StatusCode, Value) {
        self.post_raw(sink, "application/json", body.into(), Some(TOKEN))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.0.get(path).await.body
    }

    /// The last error of the first failed message of a sink, once there is one.
    async fn first_failure(&self, sink: &str) -> Value {
        let path = format!("/api/sinks/{sink}/messages?state=failed");
        let ok = eventually(Duration::from_secs(20), || async {
            !self.get(&path).await["messages"][0]["last_error"].is_null()
        })
        .await;
        assert!(ok, "sink {sink}: no failure recorded");
        self.get(&path).await["messages"][0]["last_error"].clone()
    }
}

fn pair(answer: Result<client::Answer, reqwest::Error>) -> (StatusCode, Value) {
    let a = answer.expect("server answers");
    (a.status, a.body)
}

fn assert_err(case: &str, got: (StatusCode, Value), status: u16, needle: &str) {
    assert_eq!(got.0.as_u16(), status, "{case}: {}", got.1);
    let msg = got.1["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains(needle),
        "{case}: `{msg}` does not name `{needle}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_table() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let s2 = lite.client();
    s2.ensure_stream(&basin, "events", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &config(&lite.endpoint(), &basin), &[]).await;
    let c = Client(client::Api::new(&server, Some(TOKEN)));

    // Accepted before the abuse; must still arrive.
    let early: Vec<Value> = (0..50).map(|i| change(i, i, 20)).collect();
    let (s, v) = c.post("main", Value::from(early).to_string()).await;
    assert_eq!(s, 202, "{v}");
    let early_ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();

    assert_err(
        "malformed JSON",
        c.post("main", "{\"a\": [1, 2").await,
        400,
        "not valid JSON",
    );
    assert_err(
        "non-object message",
        c.post("main", "[{\"a\":1}, \"str\"]").await,
        400,
        "message 1: expected a JSON object, got a string",
    );
    assert_err(
        "invalid UTF-8",
        c.post("main", b"{\"a\": \"\xff\xfe\"}".to_vec()).await,
        400,
        "UTF-8",
    );
    let huge = vec![b' '; 20 * 1024 * 1024];
    assert_err("20 MiB body", c.post("main", huge).await, 413, "16777216");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_err(
        "10,000-deep nesting",
        c.post("main", format!("{{\"a\":{deep}}}")).await,
        400,
        "recursion limit",
    );
    assert_err(
        "number beyond f64",
        c.post("main", "{\"n\": 1e400}").await,
        400,
        "number out of range",
    );
    // Each message is checked once, in the engine's read of its envelope; a body it refuses
    // still names the first message that is not JSON, before any envelope error.
    assert_err(
        "a wrong envelope field before invalid JSON",
        c.post("main", r#"[{"action":5}, {"record":{"s":"\ud800"}}]"#)
            .await,
        400,
        "message 1: not valid JSON",
    );
    assert_err(
        "a wrong envelope field alone",
        c.post("main", r#"[{"a":1}, {"action":5}]"#).await,
        400,
        "message 1",
    );
    let (s, v) = c.post("main", "[]").await;
    assert_eq!(
        (s.as_u16(), v["accepted"].as_u64()),
        (202, Some(0)),
        "empty array: {v}"
    );
    assert_err("unknown sink", c.post("nope", "{}").await, 404, "nope");
    assert_err(
        "missing API token",
        c.post_raw("main", "application/json", b"{}".to_vec(), None)
            .await,
        401,
        "Authorization",
    );
    assert_err(
        "wrong API token",
        c.post_raw("main", "application/json", b"{}".to_vec(), Some("guess"))
            .await,
        401,
        "wrong API token",
    );

    // Issue 17: what a browser page or a sloppy client can send (details in http_hardening.rs).
    assert_err(
        "text/plain body",
        c.post_raw("main", "text/plain", b"{\"probe\":1}".to_vec(), Some(TOKEN))
            .await,
        415,
        "text/plain",
    );
    assert_err(
        "Content-Encoding: br",
        c.send(
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
        )
        .await,
        415,
        "br",
    );
    assert_err(
        "cross-site Origin",
        c.send(
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
        )
        .await,
        403,
        "evil.example",
    );
    assert_err(
        "rebound Host",
        c.send(
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/json"),
                ("host", "evil.example"),
            ],
        )
        .await,
        421,
        "evil.example",
    );
    assert_err(
        "?limit=-1",
        c.send_get("/api/sinks/main/messages?limit=-1").await,
        400,
        "limit",
    );
    let (s, v) = c
        .send(
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("bearer {TOKEN}")),
            ],
        )
        .await;
    assert_eq!(s, 202, "lower-case bearer: {v}");

    // Numbers beyond i64/u64 are kept exactly as sent.
    let big = r#"{"record":{"id":1,"n":123456789012345678901234567890,"m":-99999999999999999999},"metadata":{"table_schema":"public","table_name":"big","record_pks":["1"]}}"#;
    let (s, v) = c.post("main", big).await;
    assert_eq!(s, 202, "{v}");
    // A NUL in a group value.
    let (s, v) = c
        .post_raw(
            "main",
            "application/json",
            json!({"metadata": {"group_id": "a\u{0}b"}, "k": "nul"})
                .to_string()
                .into_bytes(),
            Some(TOKEN),
        )
        .await;
    assert_eq!(s, 202, "NUL group: {v}");

    // Messages that fail at delivery: each fails alone with a clear error.
    assert_eq!(c.post("inflate", change(1, 1, 10).to_string()).await.0, 202);
    let e = c.first_failure("inflate").await;
    assert_eq!(e["code"], "record_too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("1048576"), "{e}");
    for (kind, needle) in [
        ("bad_basin", "Bad_Basin"),
        ("empty_stream", "empty"),
        ("extra", "color"),
    ] {
        let msg = json!({"record": {"kind": kind}, "metadata": {"group_id": kind}});
        assert_eq!(c.post("router", msg.to_string()).await.0, 202);
        let found = eventually(Duration::from_secs(20), || async {
            let v = c
                .get(&format!(
                    "/api/sinks/router/messages?state=failed&group={kind}"
                ))
                .await;
            v["messages"][0]["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
        })
        .await;
        assert!(
            found,
            "route returning {kind} did not fail naming `{needle}`"
        );
    }
    let ok_route = json!({"record": {"kind": "fine"}, "metadata": {"group_id": "fine"}});
    assert_eq!(c.post("router", ok_route.to_string()).await.0, 202);
    assert_eq!(c.post("spin", change(1, 1, 10).to_string()).await.0, 202);
    let e = c.first_failure("spin").await;
    assert_eq!(e["code"], "transform", "{e}");
    assert!(e["message"].as_str().unwrap().contains("stopped"), "{e}");
    assert_eq!(c.post("grow", change(1, 1, 10).to_string()).await.0, 202);
    let e = c.first_failure("grow").await;
    assert_eq!(e["code"], "transform", "{e}");

    // 100k distinct groups in one request.
    let many: String = (0..100_000u64)
        .map(|i| format!("{{\"i\":{i},\"metadata\":{{\"group_id\":\"g{i}\"}}}}\n"))
        .collect();
    let (s, v) = c
        .post_raw(
            "main",
            "application/x-ndjson",
            many.into_bytes(),
            Some(TOKEN),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["accepted"], 100_000);

    // The server is still up, and everything deliverable arrived.
    assert!(server.is_running(), "server died; log:\n{}", server.log());
    let drained = eventually(Duration::from_secs(120), || async {
        c.get("/api/sinks/main").await["counts"]["pending"] == 0
    })
    .await;
    assert!(
        drained,
        "main did not drain: {}",
        c.get("/api/sinks/main").await
    );
    let records = read_all(&s2, &basin, "events").await;
    let main_ids = ids_in(&records, "main");
    for id in &early_ids {
        assert!(main_ids.contains(id), "early message {id} lost");
    }
    assert_eq!(main_ids.len(), 50 + 1 + 1 + 1 + 100_000);
    let exact = records.iter().any(|r| {
        r.body.contains("123456789012345678901234567890")
            && r.body.contains("-99999999999999999999")
    });
    assert!(exact, "big numbers were not delivered exactly");
    assert_eq!(
        ids_in(&records, "router").len(),
        1,
        "only the valid route is delivered"
    );
    assert_eq!(c.get("/api/sinks/router").await["counts"]["failing"], 3);
    let h =
        c.0.http
            .get(format!("{}/healthz", c.0.url))
            .send()
            .await
            .unwrap();
    assert_eq!(h.status(), 200);
}
