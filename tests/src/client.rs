//! The config builder and API client the process-level tests share (one place that knows the
//! config layout, the bearer token and the JSON error shape).

use std::time::Duration;

use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::Value;

use crate::process::{http_client, ServerProcess};

/// A TOML basic string: `s` quoted and escaped.
pub fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// An `s2-sink.toml` for [`ServerProcess::start`]: `[server]` listening on `127.0.0.1:{port}`
/// with `data_dir = "data"`, then the sinks in order.
#[derive(Debug, Clone)]
pub struct TestConfig {
    data_dir: String,
    server: Vec<String>,
    sinks: Vec<SinkConfig>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig::new()
    }
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig {
            data_dir: "data".to_string(),
            server: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// `server.data_dir` (default `data`, relative to the server's working directory).
    pub fn data_dir(mut self, dir: &str) -> TestConfig {
        self.data_dir = dir.to_string();
        self
    }

    /// `server.api_token`.
    pub fn api_token(self, token: &str) -> TestConfig {
        self.server("api_token", &toml_str(token))
    }

    /// Any `[server]` key; `value` is TOML (`"30"`, `toml_str("x")`, …).
    pub fn server(mut self, key: &str, value: &str) -> TestConfig {
        self.server.push(format!("{key} = {value}"));
        self
    }

    pub fn sink(mut self, sink: SinkConfig) -> TestConfig {
        self.sinks.push(sink);
        self
    }

    /// The TOML text (`{port}` is left for [`ServerProcess::start`] to fill in).
    pub fn render(&self) -> String {
        let mut out = format!(
            "[server]\nlisten = \"127.0.0.1:{{port}}\"\ndata_dir = {}\n",
            toml_str(&self.data_dir)
        );
        for line in &self.server {
            out.push_str(line);
            out.push('\n');
        }
        for s in &self.sinks {
            out.push_str(&format!("\n[[sinks]]\n{}\n", s.keys.join("\n")));
            for (table, keys) in &s.tables {
                out.push_str(&format!("[sinks.{table}]\n{}\n", keys.join("\n")));
            }
        }
        out
    }
}

/// One `[[sinks]]` entry.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    keys: Vec<String>,
    tables: Vec<(String, Vec<String>)>,
}

impl SinkConfig {
    /// A sink `name` delivering to `basin`/`stream` at `endpoint`.
    pub fn new(name: &str, endpoint: &str, basin: &str, stream: &str) -> SinkConfig {
        SinkConfig::routed(name, endpoint)
            .set("basin", &toml_str(basin))
            .set("stream", &toml_str(stream))
    }

    /// A sink without a static basin/stream (give it `routing`).
    pub fn routed(name: &str, endpoint: &str) -> SinkConfig {
        SinkConfig {
            keys: vec![
                format!("name = {}", toml_str(name)),
                format!("endpoint = {}", toml_str(endpoint)),
            ],
            tables: Vec::new(),
        }
    }

    /// Any sink key; `value` is TOML.
    pub fn set(mut self, key: &str, value: &str) -> SinkConfig {
        self.keys.push(format!("{key} = {value}"));
        self
    }

    /// `[sinks.backoff]` with `base_ms` and `max_ms`.
    pub fn backoff(self, base_ms: u64, max_ms: u64) -> SinkConfig {
        self.table(
            "backoff",
            &[
                ("base_ms", &base_ms.to_string()),
                ("max_ms", &max_ms.to_string()),
            ],
        )
    }

    /// A `[sinks.<name>]` table of TOML key/values.
    pub fn table(mut self, name: &str, keys: &[(&str, &str)]) -> SinkConfig {
        let keys = keys.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        self.tables.push((name.to_string(), keys));
        self
    }
}

/// An answer of the API: status, headers and the body as JSON (a non-JSON body as a string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts the documented error shape: `status`, `{"error":{"code","message"}}` with
    /// `code` and a message mentioning `needle`.
    pub fn assert_error(&self, status: u16, code: &str, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        let msg = self.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
    }
}

/// A client of one server's HTTP API, with its bearer token (if any).
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(server: &ServerProcess, token: Option<&str>) -> Api {
        Api {
            http: http_client(),
            url: server.url.clone(),
            token: token.map(str::to_string),
        }
    }

    /// `method path` with `token` (not the client's) and an optional `(content type, body)`.
    /// Panics when the server does not answer.
    pub async fn request_as(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        self.try_request_as(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// As [`Api::request_as`], but `Err` when the server does not answer (e.g. restarting).
    pub async fn try_request_as(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Result<Answer, reqwest::Error> {
        let (headers, body) = match body {
            Some((ct, b)) => (vec![("content-type", ct)], Some(b.into_bytes())),
            None => (vec![], None),
        };
        self.send(method, path, token, &headers, body).await
    }

    /// The most general request: `token` as bearer (if any), then exactly `headers`, and a
    /// raw body. `Err` when the server does not answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, reqwest::Error> {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `GET path` with the client's token.
    pub async fn get(&self, path: &str) -> Answer {
        self.request_as(Method::GET, path, self.token.as_deref(), None)
            .await
    }

    /// `POST path` with the client's token and a body.
    pub async fn post(&self, path: &str, content_type: &str, body: String) -> Answer {
        self.request_as(
            Method::POST,
            path,
            self.token.as_deref(),
            Some((content_type, body)),
        )
        .await
    }

    /// `POST /api/sinks/{sink}/messages`.
    pub async fn ingest(&self, sink: &str, content_type: &str, body: String) -> Answer {
        self.post(&format!("/api/sinks/{sink}/messages"), content_type, body)
            .await
    }

    /// Pending messages of `sink`; `None` when the server does not answer or the sink is
    /// unknown.
    pub async fn pending(&self, sink: &str) -> Option<u64> {
        let a = self
            .try_request_as(
                Method::GET,
                &format!("/api/sinks/{sink}"),
                self.token.as_deref(),
                None,
            )
            .await
            .ok()?;
        a.body["counts"]["pending"].as_u64()
    }

    /// Polls until `sink` has nothing pending or `deadline` passes; returns whether it drained.
    pub async fn wait_drained(&self, sink: &str, deadline: Duration) -> bool {
        crate::eventually(deadline, || async { self.pending(sink).await == Some(0) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_layout_the_server_reads() {
        let text = TestConfig::new()
            .api_token("t\"ok")
            .data_dir("/tmp/d")
            .server("max_pending", "30")
            .sink(
                SinkConfig::new("a", "http://127.0.0.1:1", "b", "events")
                    .set("request_timeout_ms", "500")
                    .backoff(20, 200),
            )
            .sink(SinkConfig::routed("r", "http://127.0.0.1:1").set("routing", "'''f'''"))
            .render();
        assert_eq!(
            text,
            r#"[server]
listen = "127.0.0.1:{port}"
data_dir = "/tmp/d"
api_token = "t\"ok"
max_pending = 30

[[sinks]]
name = "a"
endpoint = "http://127.0.0.1:1"
basin = "b"
stream = "events"
request_timeout_ms = 500
[sinks.backoff]
base_ms = 20
max_ms = 200

[[sinks]]
name = "r"
endpoint = "http://127.0.0.1:1"
routing = '''f'''
"#
        );
    }
}
