//! HTTP hardening (issue 17), against the real binary: cross-site writes and DNS rebinding
//! refused, ingest off the HTTP workers, one JSON error shape, strict Content-Type /
//! Content-Encoding, case-insensitive `bearer` and a body read timeout, reloads that apply
//! `[server]` keys or say why not, strict CLI flags, paging, and config / listen / console
//! header checks. The browser side of the CSRF case is `tests/browser/csrf.test.mjs`.
//!
//! No S2 is needed: the sinks point at a closed port, so accepted messages stay pending.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use s2sink_tests::process::{free_port, http_client, sink_binary, ServerProcess};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "hardening-token-1";

fn config(extra_server: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{{port}}"
data_dir = "data"
api_token = "{TOKEN}"
{extra_server}

[[sinks]]
name = "main"
basin = "hardening-basin"
stream = "events"
endpoint = "http://127.0.0.1:1"
[sinks.backoff]
base_ms = 60000
max_ms = 60000

[[sinks]]
name = "other"
basin = "hardening-basin"
stream = "events"
endpoint = "http://127.0.0.1:1"
"#
    )
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts the status and the JSON error shape with `code`, and that the message names
    /// `needle`.
    fn error(&self, status: u16, code: &str, needle: &str) -> &Answer {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/json"), "not JSON: {self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        let msg = self.body["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "`{msg}` does not name `{needle}`");
        self
    }
}

impl Api {
    fn new(server: &ServerProcess) -> Api {
        Api {
            http: http_client(),
            url: server.url.clone(),
            token: TOKEN.into(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.expect("server answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], None).await
    }

    async fn ingest(&self, sink: &str, ct: &str, body: impl Into<Vec<u8>>) -> Answer {
        self.send(
            Method::POST,
            &format!("/api/sinks/{sink}/messages"),
            &[("content-type", ct)],
            Some(body.into()),
        )
        .await
    }

    async fn pending(&self, sink: &str) -> u64 {
        self.get(&format!("/api/sinks/{sink}")).await.body["counts"]["pending"]
            .as_u64()
            .expect("pending count")
    }
}

fn msg(i: u64) -> String {
    json!({"i": i, "metadata": {"group_id": format!("g{i}")}}).to_string()
}

// ---------------------------------------------------------------------------------------
// 1. Cross-site writes and DNS rebinding.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_writes_and_foreign_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &config(
            "allowed_hosts = [\"sink.internal\"]\ncors_allowed_origins = [\"https://admin.example\"]",
        ),
        &[],
    )
    .await;
    let api = Api::new(&server);
    let path = "/api/sinks/main/messages";
    let own_origin = format!("http://127.0.0.1:{}", server.port);

    // What a no-cors fetch from another page sends: text/plain, Origin, Sec-Fetch-Site.
    api.ingest("main", "text/plain", msg(1)).await.error(
        415,
        "unsupported_media_type",
        "text/plain",
    );
    for (origin, site) in [
        ("http://evil.example", "cross-site"),
        ("http://127.0.0.1:1234", "same-site"),
    ] {
        let hs = [
            ("content-type", "application/json"),
            ("origin", origin),
            ("sec-fetch-site", site),
        ];
        api.send(Method::POST, path, &hs, Some(msg(2).into()))
            .await
            .error(403, "cross_site", origin);
        // Origin alone (older browsers) and Sec-Fetch-Site alone are each enough.
        api.send(Method::POST, path, &hs[..2], Some(msg(2).into()))
            .await
            .error(403, "cross_site", origin);
        api.send(Method::POST, path, &[hs[0], hs[2]], Some(msg(2).into()))
            .await
            .error(403, "cross_site", site);
    }
    api.send(
        Method::POST,
        path,
        &[("content-type", "application/json"), ("origin", "null")],
        Some(msg(2).into()),
    )
    .await
    .error(403, "cross_site", "null");
    assert_eq!(
        api.pending("main").await,
        0,
        "a refused request stored something"
    );

    // Same origin (the console) and non-browser clients are accepted.
    let a = api
        .send(
            Method::POST,
            path,
            &[
                ("content-type", "application/json"),
                ("origin", &own_origin),
                ("sec-fetch-site", "same-origin"),
            ],
            Some(msg(3).into()),
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["ids"][0].as_u64().unwrap();
    assert_eq!(
        api.ingest("main", "application/json", msg(4)).await.status,
        202
    );

    // A cross-site discard / reload is refused too; the message stays pending.
    api.send(
        Method::POST,
        &format!("/api/sinks/main/messages/{id}/discard"),
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        None,
    )
    .await
    .error(403, "cross_site", "evil.example");
    api.send(
        Method::POST,
        "/api/reload",
        &[("origin", "http://evil.example")],
        None,
    )
    .await
    .error(403, "cross_site", "evil.example");
    let a = api.get(&format!("/api/sinks/main/messages/{id}")).await;
    assert_eq!(a.status, 200, "message {id} is gone: {a:?}");

    // DNS rebinding: a foreign Host is refused on every route, the server's names are not.
    for route in ["/api/sinks", "/", "/healthz"] {
        api.send(Method::GET, route, &[("host", "evil.example")], None)
            .await
            .error(421, "host_not_allowed", "evil.example");
    }
    let port = server.port;
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("sink.internal:{port}"),
    ] {
        let a = api
            .send(Method::GET, "/api/sinks", &[("host", &host)], None)
            .await;
        assert_eq!(a.status, 200, "Host {host}: {a:?}");
    }

    // CORS only for the configured origin.
    let api_ref = &api;
    let preflight = |origin: &'static str| async move {
        let hs = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ];
        api_ref.send(Method::OPTIONS, path, &hs, None).await
    };
    let a = preflight("https://admin.example").await;
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://admin.example"
    );
    preflight("http://evil.example")
        .await
        .error(403, "cross_site", "evil.example");
    let a = api
        .send(
            Method::GET,
            "/api/sinks",
            &[("origin", "http://evil.example")],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(
        !a.headers.contains_key("access-control-allow-origin"),
        "{a:?}"
    );
    let a = api
        .send(
            Method::POST,
            path,
            &[
                ("content-type", "application/json"),
                ("origin", "https://admin.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            Some(msg(5).into()),
        )
        .await;
    assert_eq!(a.status, 202, "configured CORS origin: {a:?}");
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://admin.example"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Ingest off the HTTP workers.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_answers_quickly_while_large_ingests_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    // Two 100k-line NDJSON requests at once (~3.5 MB each): both HTTP workers would be busy
    // parsing if parsing ran on them.
    let body: String = (0..100_000u64)
        .map(|i| {
            format!(
                "{{\"i\":{i},\"pad\":\"xxxxxxxxxx\",\"metadata\":{{\"group_id\":\"g{}\"}}}}\n",
                i % 1000
            )
        })
        .collect();
    let started = Instant::now();
    let mut ingests = Vec::new();
    for _ in 0..2 {
        let http = http_client();
        let url = format!("{}/api/sinks/main/messages", server.url);
        let body = body.clone();
        ingests.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, Instant::now())
        }));
    }
    // Poll /healthz on fresh connections (so both workers are sampled) until both ingests end.
    let mut latencies = Vec::new();
    let mut answered_during_ingest = 0;
    while ingests.iter().any(|h| !h.is_finished()) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let t = Instant::now();
        let r = http
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let took = t.elapsed();
        latencies.push(took);
        if ingests.iter().any(|h| !h.is_finished()) {
            answered_during_ingest += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ends = Vec::new();
    for h in ingests {
        let (status, end) = h.await.unwrap();
        assert_eq!(status, 202);
        ends.push(end - started);
    }
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "ingests took {ends:?}; {} /healthz calls, {answered_during_ingest} during the ingests, max {max:?}",
        latencies.len()
    );
    assert!(
        answered_during_ingest >= 3,
        "only {answered_during_ingest} /healthz answers arrived before the ingests ended ({ends:?}): /healthz waited for them"
    );
    assert!(
        max < Duration::from_millis(1500),
        "/healthz took {max:?} during a large ingest (ingests: {ends:?})"
    );
    assert_eq!(api.pending("main").await, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_past_the_concurrency_limit_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &config(
            "max_concurrent_ingest = 1\ningest_queue_timeout_ms = 200\nbody_timeout_ms = 20000",
        ),
        &[],
    )
    .await;
    let api = Api::new(&server);
    // One request holds the only slot by sending its body slowly.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/sinks/main/messages HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{{",
        server.port
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    // Until the slot is taken, a second request may still get through; poll for the 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        let a = api.ingest("main", "application/json", msg(1)).await;
        if a.status == 503 {
            break a;
        }
        assert_eq!(a.status, 202, "{a:?}");
        assert!(Instant::now() < deadline, "never answered 503 busy");
    };
    busy.error(503, "busy", "max_concurrent_ingest");
    assert_eq!(busy.headers["retry-after"], "1");
    drop(slow);
    // The slot comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = api.ingest("main", "application/json", msg(2)).await;
        if a.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "slot not released: {a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 2 (connections): 2,500 ingest requests sent at the same moment on their own connections
/// each get a real answer — `202`, or `503 busy` with `Retry-After` when no ingest slot frees
/// up in time — never a `408` from requests that sat unread, never a dropped connection; and
/// exactly the accepted messages are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_concurrent_ingest_connections_get_answers_not_timeouts() {
    const CONNECTIONS: usize = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    let port = server.port;
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect {i}: {e}"))?;
            let body = msg(i as u64);
            let req = format!(
                "POST /api/sinks/main/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            go.wait().await;
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write {i}: {e}"))?;
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer))
                .await
                .map_err(|_| format!("request {i}: no answer in 60 s"))?
                .map_err(|e| format!("read {i}: {e}"))?;
            Ok::<String, String>(String::from_utf8_lossy(&answer).into_owned())
        }));
    }
    let (mut accepted, mut busy) = (0u64, 0u64);
    for t in tasks {
        let text = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        let (head, body) = text.split_once("\r\n\r\n").expect("a full answer");
        let status = head.get(9..12).unwrap_or("");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        match status {
            "202" => accepted += v["accepted"].as_u64().expect("accepted"),
            "503" => {
                assert_eq!(v["error"]["code"], "busy", "{text}");
                assert!(
                    head.to_ascii_lowercase().contains("retry-after: "),
                    "{head}"
                );
                busy += 1;
            }
            _ => panic!("want 202 or 503 busy, got: {text}"),
        }
    }
    println!("{accepted} accepted, {busy} answered 503 busy");
    assert_eq!(accepted + busy, CONNECTIONS as u64);
    assert_eq!(api.pending("main").await, accepted);
}

// ---------------------------------------------------------------------------------------
// 3. One JSON error shape. 4. Strict parsing. 5. Auth scheme and body timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_and_parsing_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &config("max_body_bytes = 1048576\nbody_timeout_ms = 1000"),
        &[],
    )
    .await;
    let api = Api::new(&server);

    // 3: query, path and routing errors.
    let list = "/api/sinks/main/messages";
    api.get(&format!("{list}?limit=-1"))
        .await
        .error(400, "bad_request", "limit");
    api.get(&format!("{list}?limit=0"))
        .await
        .error(400, "bad_request", "limit");
    api.get(&format!("{list}?after=abc"))
        .await
        .error(400, "bad_request", "after");
    api.get(&format!("{list}?limit=1&limit=2"))
        .await
        .error(400, "bad_request", "more than once");
    api.get(&format!("{list}?limt=5"))
        .await
        .error(400, "bad_request", "limt");
    api.get(&format!("{list}?state=zzz"))
        .await
        .error(400, "bad_request", "zzz");
    api.get("/api/sinks?limit=x")
        .await
        .error(400, "bad_request", "limit");
    api.get("/api/sinks/main/discarded?before=-3")
        .await
        .error(400, "bad_request", "before");
    api.get("/api/sinks/main/messages/abc")
        .await
        .error(400, "bad_request", "abc");
    api.get("/no/such/page")
        .await
        .error(404, "not_found", "no such route");
    api.send(Method::DELETE, "/api/no/such", &[], None)
        .await
        .error(404, "not_found", "no such API route");
    // A known path with a method it does not take: 405 naming the methods it takes.
    let a = api.send(Method::DELETE, "/api/sinks", &[], None).await;
    a.error(405, "method_not_allowed", "DELETE");
    assert_eq!(a.headers["allow"], "GET");
    let a = api
        .send(Method::PUT, "/api/sinks/main/messages", &[], None)
        .await;
    a.error(405, "method_not_allowed", "GET, POST");
    assert_eq!(a.headers["allow"], "GET, POST");
    api.send(Method::POST, "/healthz", &[], None)
        .await
        .error(405, "method_not_allowed", "GET");
    // Query errors on ingest too.
    api.send(
        Method::POST,
        "/api/sinks/main/messages?group=a&group=b",
        &[("content-type", "application/json")],
        Some(msg(1).into()),
    )
    .await
    .error(400, "bad_request", "group");

    // 4: Content-Type.
    let nd = format!("{}\n{}\n", msg(1), msg(2));
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        api.ingest("main", ct, msg(1))
            .await
            .error(415, "unsupported_media_type", ct);
    }
    api.send(
        Method::POST,
        "/api/sinks/main/messages",
        &[],
        Some(msg(1).into()),
    )
    .await
    .error(415, "unsupported_media_type", "no Content-Type");
    let a = api
        .ingest("main", "Application/X-NDJSON; charset=utf-8", nd.clone())
        .await;
    assert_eq!(
        (a.status.as_u16(), &a.body["accepted"]),
        (202, &json!(2)),
        "{a:?}"
    );
    let a = api.ingest("main", "APPLICATION/JSON", msg(3)).await;
    assert_eq!(a.status, 202, "{a:?}");
    // NDJSON line numbers count from 1, also for envelope errors found by the engine.
    api.ingest(
        "main",
        "application/x-ndjson",
        format!("{}\n{{oops\n", msg(1)),
    )
    .await
    .error(400, "invalid_message", "line 2:");
    api.ingest("main", "application/x-ndjson", format!("\n{}\n7\n", msg(1)))
        .await
        .error(400, "invalid_message", "line 3:");

    // 4: Content-Encoding.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(nd.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let a = api
        .send(
            Method::POST,
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "gzip"),
            ],
            Some(gz),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), &a.body["accepted"]),
        (202, &json!(2)),
        "gzip: {a:?}"
    );
    let zs = zstd::encode_all(nd.as_bytes(), 3).unwrap();
    let a = api
        .send(
            Method::POST,
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "ZSTD"),
            ],
            Some(zs),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), &a.body["accepted"]),
        (202, &json!(2)),
        "zstd: {a:?}"
    );
    for enc in ["br", "foo", "gzip, br"] {
        api.send(
            Method::POST,
            "/api/sinks/main/messages",
            &[
                ("content-type", "application/json"),
                ("content-encoding", enc),
            ],
            Some(msg(1).into()),
        )
        .await
        .error(415, "unsupported_media_type", enc);
    }
    // Bombs: 64 MiB of spaces in ~64 KiB of gzip / a few KiB of zstd; the limit (1 MiB)
    // applies to the decoded bytes.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..64 {
        bomb.write_all(&zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    api.send(
        Method::POST,
        "/api/sinks/main/messages",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        Some(bomb),
    )
    .await
    .error(413, "payload_too_large", "1048576");
    let zbomb = zstd::encode_all(&vec![b' '; 64 << 20][..], 19).unwrap();
    api.send(
        Method::POST,
        "/api/sinks/main/messages",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "zstd"),
        ],
        Some(zbomb),
    )
    .await
    .error(413, "payload_too_large", "decoded");
    api.send(
        Method::POST,
        "/api/sinks/main/messages",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        Some(b"this is not gzip".to_vec()),
    )
    .await
    .error(400, "bad_request", "gzip");

    // 5: the auth scheme is case-insensitive; a wrong token still fails.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let a = api
            .http
            .get(format!("{}/api/sinks", server.url))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 200, "scheme {scheme}");
    }
    let a = api
        .http
        .get(format!("{}/api/sinks", server.url))
        .header("authorization", "bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 401);

    // 5: a body trickling in at 1 byte / 300 ms is cut off after body_timeout_ms (1 s).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/sinks/main/messages HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        server.port
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n")
                        && String::from_utf8_lossy(&answer).contains("request_timeout")
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer within 10 s to a slow body: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("server.body_timeout_ms"), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "408 came after {:?}",
        t.elapsed()
    );
    assert_eq!(
        api.pending("main").await,
        2 + 1 + 2 + 2,
        "only the accepted requests are stored"
    );
}

/// Sends `raw` on a new connection and reads the answer until the server closes it.
async fn raw_exchange(port: u16, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may answer and close before it read everything (431): not an error here.
    let _ = s.write_all(raw).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        // Until close, or a reset after the answer arrived.
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "the server did not close within 15 s: {text}");
    text
}

/// The JSON error body of a raw HTTP/1.1 answer, checked for status, code and a length that
/// matches the body.
fn raw_error(text: &str, status: u16, code: &str) -> Value {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {text:?}"));
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "want {status}: {text:?}"
    );
    let head_lc = head.to_ascii_lowercase();
    assert!(head_lc.contains("content-type: application/json"), "{head}");
    assert!(
        head_lc.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v
}

/// 3 (protocol layer): the errors actix's HTTP/1 codec answers before any application code
/// runs — a malformed request line, a header section over its limit, a head that never
/// completes — carry the same JSON error body as every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_have_the_json_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let port = server.port;

    let bad_line = raw_exchange(port, b"THIS IS NOT HTTP\r\n\r\n").await;
    raw_error(&bad_line, 400, "bad_request");
    let bad_header = raw_exchange(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nbad header line\r\n\r\n")
            .as_bytes(),
    )
    .await;
    raw_error(&bad_header, 400, "bad_request");

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    raw_error(
        &raw_exchange(port, huge.as_bytes()).await,
        431,
        "headers_too_large",
    );

    // A head that stops half way: 408 after the 5 s head timeout, not a silent close.
    let partial = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    raw_error(
        &raw_exchange(port, partial.as_bytes()).await,
        408,
        "request_timeout",
    );

    // Good requests on the same server are untouched.
    let ok = raw_exchange(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
}

// ---------------------------------------------------------------------------------------
// 6. Reload applies [server] keys or names the ones needing a restart.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_server_keys_or_names_the_ones_needing_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let write = |text: String| {
        std::fs::write(
            dir.path().join("s2-sink.toml"),
            text.replace("{port}", &server.port.to_string()),
        )
        .unwrap()
    };
    let mut api = Api::new(&server);
    let reload = |api: &Api| {
        let api = Api {
            http: api.http.clone(),
            url: api.url.clone(),
            token: api.token.clone(),
        };
        async move { api.send(Method::POST, "/api/reload", &[], None).await }
    };

    // A key that needs a restart: 422 naming it, nothing applied (the token stays).
    write(config("max_pending = 5\nmax_body_bytes = 1000").replace(TOKEN, "new-token-2"));
    let a = reload(&api).await;
    a.error(422, "invalid_config", "server.max_pending");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart"),
        "{a:?}"
    );
    assert_eq!(
        api.get("/api/sinks").await.status,
        200,
        "old token must still work"
    );

    // Live keys: the new token works at once, the old one no longer; the body limit applies.
    write(config("max_body_bytes = 1000").replace(TOKEN, "new-token-2"));
    let a = reload(&api).await;
    assert_eq!(a.status, 200, "{a:?}");
    let applied = a.body["server_keys_applied"].to_string();
    assert!(
        applied.contains("server.api_token") && applied.contains("server.max_body_bytes"),
        "{a:?}"
    );
    assert!(
        !a.body.to_string().contains("new-token-2"),
        "token echoed: {a:?}"
    );
    api.get("/api/sinks")
        .await
        .error(401, "unauthorized", "wrong API token");
    api.token = "new-token-2".into();
    assert_eq!(api.get("/api/sinks").await.status, 200);
    api.ingest(
        "main",
        "application/json",
        format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)),
    )
    .await
    .error(413, "payload_too_large", "1000");

    // SIGHUP takes the same path.
    write(config(""));
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let http = http_client();
    let ok = s2sink_tests::eventually(Duration::from_secs(10), || async {
        http.get(format!("{}/api/sinks", server.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "SIGHUP did not apply the token; log:\n{}", server.log());
    assert!(!server.log().contains("new-token-2"), "token in the log");
}

/// `THP_enabled` of process `pid` from /proc (the kernel's view of `PR_SET_THP_DISABLE`).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status:\n{status}"))
}

/// `server.memory = "lean"` reaches the allocator: the kernel stops giving the process
/// transparent huge pages and the log says so with the purge delay; `fast` (the default)
/// leaves them on; a reload cannot switch modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lean_turns_huge_pages_off_and_a_reload_cannot_switch_it() {
    let fast_dir = tempfile::tempdir().unwrap();
    let fast = ServerProcess::start(fast_dir.path(), &config(""), &[]).await;
    assert_eq!(thp_enabled(fast.pid().unwrap()), "1");
    drop(fast);

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config("memory = \"lean\""), &[]).await;
    assert_eq!(thp_enabled(server.pid().unwrap()), "0", "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("memory = \\\"lean\\\"") || log.contains("memory = \"lean\""),
        "{log}"
    );
    assert!(log.contains("freed_memory_returned_after_ms=250"), "{log}");

    std::fs::write(
        dir.path().join("s2-sink.toml"),
        config("memory = \"fast\"").replace("{port}", &server.port.to_string()),
    )
    .unwrap();
    let api = Api::new(&server);
    api.send(Method::POST, "/api/reload", &[], None)
        .await
        .error(422, "invalid_config", "server.memory");
    assert_eq!(thp_enabled(server.pid().unwrap()), "0");
}

// ---------------------------------------------------------------------------------------
// 7. CLI flags.

/// Runs `s2-sink ARGS` in `dir`; a run that does not end within 20 s (e.g. a `serve` that
/// should have refused its config) is killed and reported as exit `None`.
fn run_cli(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let stderr_path = dir.join(format!("cli-{}.stderr", fastrand::u64(..)));
    let mut child = Command::new(sink_binary())
        .args(args)
        .current_dir(dir)
        .env_remove("S2SINK_URL")
        .env_remove("S2SINK_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    (code, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cli_flags_are_errors_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    let file = dir.path().join("msgs.ndjson");
    std::fs::write(&file, format!("{}\n", msg(1))).unwrap();
    let file = file.to_str().unwrap();
    let url = server.url.as_str();
    for args in [
        vec![
            "send", "--url", url, "--token", TOKEN, "--sink", "main", "--grup", "g1", file,
        ],
        vec![
            "send",
            "--url",
            url,
            "--token",
            TOKEN,
            "--sink",
            "main",
            "--frobnicate",
            file,
        ],
        vec![
            "send", "--url", url, "--token", TOKEN, "--sink", "main", "-g", "g1", file,
        ],
        vec![
            "send", "--url", url, "--token", TOKEN, "--sink", "main", file, "extra",
        ],
        vec!["send", "--url", url, "--token", TOKEN, "--sink"],
        vec!["sinks", "--url", url, "--token", TOKEN, "--verbose", "x"],
        vec![
            "messages", "list", "--url", url, "--token", TOKEN, "--sink", "main", "--stat",
            "failed",
        ],
        vec!["serve", "--confg", "x.toml"],
        vec!["serve", "--log-format", "xml"],
    ] {
        let (code, stderr) = run_cli(&args, dir.path());
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
        let bad = args.iter().find(|a| {
            [
                "--grup",
                "--frobnicate",
                "-g",
                "extra",
                "--verbose",
                "--stat",
                "--confg",
                "xml",
            ]
            .contains(a)
        });
        if let Some(bad) = bad {
            assert!(
                stderr.contains(bad),
                "{args:?}: `{stderr}` does not name {bad}"
            );
        }
    }
    assert_eq!(
        api.pending("main").await,
        0,
        "a rejected command line sent something"
    );
    // The same command without the typo works.
    let (code, stderr) = run_cli(
        &[
            "send", "--url", url, "--token", TOKEN, "--sink", "main", "--group", "g1", file,
        ],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(api.pending("main").await, 1);
}

// ---------------------------------------------------------------------------------------
// 8. Paging on every list route.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_route_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    let body: String = (0..7).map(|i| format!("{}\n", msg(i))).collect();
    let a = api.ingest("main", "application/x-ndjson", body).await;
    let ids: Vec<u64> = a.body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for id in &ids {
        let a = api
            .send(
                Method::POST,
                &format!("/api/sinks/main/messages/{id}/discard"),
                &[],
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Discarded: newest first, 3 per page, every id once.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    for page in 0.. {
        assert!(page < 10, "paging does not end");
        let path = match cursor {
            Some(c) => format!("/api/sinks/main/discarded?limit=3&before={c}"),
            None => "/api/sinks/main/discarded?limit=3".to_string(),
        };
        let a = api.get(&path).await;
        assert_eq!(a.status, 200, "{a:?}");
        let items = a.body["messages"].as_array().unwrap();
        assert!(items.len() <= 3, "{a:?}");
        seen.extend(items.iter().map(|m| m["id"].as_u64().unwrap()));
        match a.body["next_before"].as_u64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    api.get("/api/sinks/main/discarded?limit=0")
        .await
        .error(400, "bad_request", "limit");
    api.get("/api/sinks/main/discarded?limit=101")
        .await
        .error(400, "bad_request", "limit");

    // Sinks: by name, one per page.
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "paging does not end");
        let path = match &after {
            Some(a) => format!("/api/sinks?limit=1&after={a}"),
            None => "/api/sinks?limit=1".to_string(),
        };
        let a = api.get(&path).await;
        let items = a.body["sinks"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{a:?}");
        names.push(items[0]["name"].as_str().unwrap().to_string());
        match a.body["next_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["main", "other"]);
    // Messages: limit and after (already paged; now validated).
    let a = api
        .ingest(
            "other",
            "application/x-ndjson",
            format!("{}\n{}\n", msg(1), msg(2)),
        )
        .await;
    assert_eq!(a.status, 202);
    let a = api.get("/api/sinks/other/messages?limit=1").await;
    assert_eq!(a.body["messages"].as_array().unwrap().len(), 1, "{a:?}");
    let next = a.body["next_after"].as_u64().unwrap();
    let a = api
        .get(&format!("/api/sinks/other/messages?limit=1&after={next}"))
        .await;
    assert_eq!(a.body["messages"].as_array().unwrap().len(), 1, "{a:?}");
}

// ---------------------------------------------------------------------------------------
// 9. Config limits, a port in use, console security headers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_limits_and_a_busy_port_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["max_pending", "max_body_bytes"] {
        let text = config(&format!("{key} = 0")).replace("{port}", &free_port().to_string());
        std::fs::write(dir.path().join("zero.toml"), text).unwrap();
        let (code, stderr) = run_cli(&["serve", "--config", "zero.toml"], dir.path());
        assert_eq!(code, Some(2), "{key} = 0: {stderr}");
        assert!(
            stderr.contains(&format!("server.{key}")) && stderr.contains("greater than 0"),
            "{key} = 0: {stderr}"
        );
    }
    // A port in use: exit 69 naming the address and the cause, before the data dir is touched.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let text = config("")
        .replace("{port}", &port.to_string())
        .replace("data_dir = \"data\"", "data_dir = \"busy-data\"");
    std::fs::write(dir.path().join("busy.toml"), text).unwrap();
    let (code, stderr) = run_cli(&["serve", "--config", "busy.toml"], dir.path());
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("server.listen"),
        "{stderr}"
    );
    assert!(!dir.path().join("busy-data").exists(), "data dir created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_has_security_headers_and_no_inline_script() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let http = http_client();
    let r = http.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let page = r.text().await.unwrap();
    let get = |h: &HeaderMap, k: &str| {
        h.get(k)
            .unwrap_or(&HeaderValue::from_static(""))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = get(&h, "content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert!(!script_src.contains("unsafe-inline"), "{csp}");
    assert_eq!(get(&h, "x-frame-options"), "DENY");
    assert_eq!(get(&h, "x-content-type-options"), "nosniff");
    assert!(
        !page.contains("<script>"),
        "inline script left in the console"
    );
    assert!(page.contains("<script src=\"/console.js\"></script>"));
    let r = http
        .get(format!("{}/console.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(get(r.headers(), "content-type").starts_with("text/javascript"));
    assert!(r.text().await.unwrap().contains("sessionStorage"));
}

// ---------------------------------------------------------------------------------------
// Logs (operability): plain text off a terminal, one access line per request.

/// Logs written to a file carry no ANSI colour escapes; every request leaves one access line
/// with method, route pattern, status and duration, and no token; `access_log = false`
/// switches those lines off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_text_with_one_access_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    assert_eq!(api.get("/api/sinks/main").await.status, 200);
    api.get("/api/sinks/nope")
        .await
        .error(404, "unknown_sink", "nope");
    assert_eq!(
        api.ingest("main", "application/json", msg(1)).await.status,
        202
    );
    let want = [
        ("GET", "/api/sinks/{sink}", "200"),
        ("GET", "/api/sinks/{sink}", "404"),
        ("POST", "/api/sinks/{sink}/messages", "202"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = server.log();
        let access = log.lines().filter(|l| l.contains("s2sink::access")).count();
        if access >= want.len() || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the API token is in the log");
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("s2sink::access"))
        .collect();
    for (method, route, status) in want {
        assert!(
            access
                .iter()
                .any(|l| l.contains(&format!("method={method}"))
                    && l.contains(&format!("route={route} "))
                    && l.contains(&format!("status={status}"))
                    && l.contains("duration_ms=")),
            "no access line for {method} {route} {status}:\n{}",
            access.join("\n")
        );
    }

    let quiet_dir = tempfile::tempdir().unwrap();
    let quiet = ServerProcess::start(quiet_dir.path(), &config("access_log = false"), &[]).await;
    assert_eq!(Api::new(&quiet).get("/api/sinks/main").await.status, 200);
    // The answer came back after the line would have been written.
    assert!(
        !quiet.log().contains("s2sink::access"),
        "access lines although access_log = false:\n{}",
        quiet.log()
    );
}

// ---------------------------------------------------------------------------------------
// Metrics (operability): one block per family, and the lag gauge.

/// `/metrics` with two sinks keeps each family's samples together (the text format's rule;
/// the queue gauges used to interleave), and reports each sink's lag: the age of its oldest
/// pending message, 0 for a sink with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_families_stay_together_and_report_lag() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(""), &[]).await;
    let api = Api::new(&server);
    assert_eq!(
        api.ingest("main", "application/json", msg(1)).await.status,
        202
    );
    let text = http_client()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Family of every sample line, in order; a family may not come back after another one.
    let mut order: Vec<String> = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|_| {
                    text.contains(&format!(
                        "# TYPE {} histogram",
                        &name[..name.len() - s.len()]
                    ))
                })
            })
            .unwrap_or(name)
            .to_string();
        if order.last() != Some(&family) {
            assert!(
                !order.contains(&family),
                "samples of {family} are split:\n{text}"
            );
            order.push(family);
        }
    }
    assert!(order.len() > 10, "{text}");
    let sample = |sink: &str| -> f64 {
        let prefix = format!("s2sink_oldest_pending_age_seconds{{sink=\"{sink}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no lag sample for {sink}:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(sample("main") >= 0.0);
    assert_eq!(sample("other"), 0.0, "nothing pending in `other`");
    assert!(text.contains("# TYPE s2sink_oldest_pending_age_seconds gauge"));
}
