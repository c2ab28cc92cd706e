//! Test harness (feature `test-util`): an s2-lite process per test file, and a fake HTTP
//! server on 127.0.0.1 for the failures s2-lite cannot produce (401, 429, 5xx, resets, hangs).
//!
//! Panics instead of returning errors: it only runs inside tests, where a clear panic message
//! is the most useful report.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};

use crate::{ReadLimits, S2Client, S2Config, SequencedRecord};

/// How long s2-lite may take to answer `/health` (it normally needs ≈1.1 s).
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 3;

/// Locates the s2-lite `server` binary: `$S2_LITE_BIN`, else `$S2SINK_TOOLS/bin/server`
/// (`S2SINK_TOOLS` defaults to `$HOME/.cache/s2-sink-tools`), else `server` on `PATH`.
///
/// # Panics
/// If none exists, with instructions to run `scripts/install-s2-lite.sh`.
pub fn lite_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("S2_LITE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "S2_LITE_BIN={} does not exist; run scripts/install-s2-lite.sh",
            bin.display()
        );
        return bin;
    }
    let tools = std::env::var_os("S2SINK_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/s2-sink-tools"))
        });
    if let Some(bin) = tools.map(|t| t.join("bin/server")).filter(|p| p.is_file()) {
        return bin;
    }
    if let Some(bin) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("server"))
            .find(|p| p.is_file())
    }) {
        return bin;
    }
    panic!(
        "s2-lite binary not found (looked at $S2_LITE_BIN, $S2SINK_TOOLS/bin/server with \
         S2SINK_TOOLS defaulting to ~/.cache/s2-sink-tools, and `server` on PATH); \
         run scripts/install-s2-lite.sh to install it"
    );
}

/// A port that was free a moment ago (bound on 127.0.0.1:0 and released).
fn free_port() -> u16 {
    StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A name unique to this process and call, valid as an S2 basin name (`[a-z0-9-]`, 8–48).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = format!("{prefix}-{:x}-{n}-{nanos:x}", std::process::id());
    name.truncate(48);
    name
}

/// Every record of a stream, from the start to the tail.
///
/// # Panics
/// If the tail or a read fails.
pub async fn read_all(client: &S2Client, basin: &str, stream: &str) -> Vec<SequencedRecord> {
    let mut out = Vec::new();
    let tail = client
        .check_tail(basin, stream)
        .await
        .expect("check tail")
        .seq_num;
    let mut pos = 0;
    while pos < tail {
        let limits = ReadLimits {
            count: Some(1000),
            bytes: None,
        };
        let batch = client.read(basin, stream, pos, limits).await.expect("read");
        let Some(last) = batch.last() else { break };
        pos = last.seq_num + 1;
        out.extend(batch);
    }
    out
}

/// An in-memory s2-lite server on a free port, killed when dropped.
///
/// It binds 0.0.0.0 (no bind flag exists); the harness only ever connects via 127.0.0.1.
pub struct LiteServer {
    child: Child,
    port: u16,
    client: S2Client,
}

impl LiteServer {
    /// Starts s2-lite and waits (polling `/health`, deadline 20 s) until it serves.
    /// Retries on a fresh port if the process exits early (e.g. the port was taken).
    ///
    /// # Panics
    /// If the binary is missing or the server does not become healthy.
    pub async fn start() -> LiteServer {
        let bin = lite_binary();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--no-dashboard"])
                .env(
                    "RUST_LOG",
                    std::env::var("S2_LITE_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            match wait_healthy(&mut child, port).await {
                Ok(()) => {
                    let endpoint = format!("http://127.0.0.1:{port}");
                    let client =
                        S2Client::new(S2Config::direct(&endpoint)).expect("client for s2-lite");
                    return LiteServer {
                        child,
                        port,
                        client,
                    };
                }
                Err(e) => {
                    let _ = child.kill().await;
                    failures.push(format!("port {port}: {e}"));
                }
            }
        }
        panic!(
            "s2-lite ({}) did not start: {}",
            bin.display(),
            failures.join("; ")
        );
    }

    /// The s2-lite process's pid (for measuring its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The port s2-lite listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client for this server (direct endpoint, default timeouts).
    pub fn client(&self) -> S2Client {
        self.client.clone()
    }

    /// Creates a basin with a unique name and returns it.
    pub async fn fresh_basin(&self) -> String {
        let basin = unique_name("test");
        self.client
            .ensure_basin(&basin, None)
            .await
            .unwrap_or_else(|e| panic!("create basin {basin}: {e}"));
        basin
    }

    /// Creates a unique basin with a stream named `stream`; returns `(basin, stream)`.
    pub async fn fresh_stream(&self, stream: &str) -> (String, String) {
        let basin = self.fresh_basin().await;
        self.client
            .ensure_stream(&basin, stream, None)
            .await
            .unwrap_or_else(|e| panic!("create stream {stream} in {basin}: {e}"));
        (basin, stream.to_string())
    }
}

async fn wait_healthy(child: &mut Child, port: u16) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited early with {status}"));
        }
        if let Ok(resp) = http.get(&url).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("not healthy within {STARTUP_DEADLINE:?}"));
        }
        // Poll interval, not a wait for a guessed duration.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What the fake server does with each request it receives.
#[derive(Debug, Clone)]
pub enum FakeReply {
    /// Answer with this status, extra headers and body (HTTP/1.1, connection closed after).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, then reset the connection (linger 0) without answering.
    Reset,
    /// Read the request and never answer (exercises request timeouts).
    Hang,
}

impl FakeReply {
    /// A response with a JSON body (`Content-Type: application/json`).
    pub fn json(status: u16, body: &str) -> Self {
        FakeReply::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// A response with a plain-text/HTML body, as a proxy would send.
    pub fn text(status: u16, body: &str) -> Self {
        FakeReply::Respond {
            status,
            headers: vec![("content-type".into(), "text/html".into())],
            body: body.into(),
        }
    }

    /// Adds a response header (builder style; ignored for `Reset`/`Hang`).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let FakeReply::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// A request as the fake server received it.
pub type CapturedRequest = HttpRequest;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every request with one canned reply.
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<CapturedRequest>>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts the server on a free loopback port.
    pub async fn start(reply: FakeReply) -> FakeServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind fake server");
        let addr = listener.local_addr().expect("fake server addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let captured = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task ends them too.
            let mut conns = JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                conns.spawn(serve(socket, reply.clone(), Arc::clone(&captured)));
            }
        });
        FakeServer {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A direct-endpoint config for this server (adjust timeouts/token as needed).
    pub fn config(&self) -> S2Config {
        S2Config::direct(self.endpoint())
    }

    /// A client with [`FakeServer::config`].
    pub fn client(&self) -> S2Client {
        S2Client::new(self.config()).expect("client for fake server")
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<CapturedRequest> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    reply: FakeReply,
    captured: Arc<Mutex<Vec<CapturedRequest>>>,
) {
    let Some(request) = read_http_request(&mut socket, &mut Vec::new()).await else {
        return;
    };
    captured.lock().expect("requests lock").push(request);
    match reply {
        FakeReply::Respond {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} Fake\r\n");
            for (n, v) in headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            out.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ));
            let _ = socket.write_all(out.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        FakeReply::Reset => {
            let _ = socket.set_zero_linger();
            drop(socket);
        }
        FakeReply::Hang => {
            std::future::pending::<()>().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 request parsing, shared by the fake server and the fault proxy of the end-to-end
// tests (`tests/src/proxy.rs`).

/// One HTTP/1.1 request: head (request line and headers, as sent) and body.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Request line and headers, as sent, without the blank line that ends them.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `METHOD /path HTTP/1.1`, the request line.
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The method of the request line (`""` if missing).
    pub fn method(&self) -> &str {
        self.request_line().split_whitespace().next().unwrap_or("")
    }

    /// Path and query of the request line (`""` if missing).
    pub fn target(&self) -> &str {
        self.request_line().split_whitespace().nth(1).unwrap_or("")
    }

    /// The value of header `name` (case-insensitive, trimmed), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }
}

/// The value of header `name` (case-insensitive, trimmed) in an HTTP head (request or status
/// line first, then `name: value` lines).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Where the head of an HTTP message in `bytes` ends (the index of its `\r\n\r\n`).
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads one request (head and `Content-Length` body) from `socket`. `buf` holds bytes already
/// read from this connection and keeps those read past the request (the next request on a
/// kept-alive connection); pass the same `buf` for every request of a connection.
///
/// `None` when the connection ends (or fails) before a whole request arrived.
///
/// # Panics
/// On a chunked request body (`Transfer-Encoding`), which neither the S2 client nor the sink
/// sends; failing loudly beats misreading the stream.
pub async fn read_http_request<S>(socket: &mut S, buf: &mut Vec<u8>) -> Option<HttpRequest>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = head_end(buf) {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(
        header_value(&head, "transfer-encoding").is_none(),
        "test HTTP server: chunked request bodies are not supported"
    );
    let len: usize = header_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut rest = buf.split_off(end + 4);
    while rest.len() < len {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    *buf = rest.split_off(len);
    Some(HttpRequest { head, body: rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pipelined_requests_split_anywhere() {
        let wire = b"POST /v1/streams/s/records HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /v1/streams/s/records/tail HTTP/1.1\r\ncontent-length:0\r\n\r\n";
        // Every split point of the bytes into two reads gives the same two requests.
        for cut in 0..wire.len() {
            let mut reader = tokio_test_reader(&wire[..cut], &wire[cut..]);
            let mut buf = Vec::new();
            let a = read_http_request(&mut reader, &mut buf).await.unwrap();
            assert_eq!(a.method(), "POST");
            assert_eq!(a.target(), "/v1/streams/s/records");
            assert_eq!(a.header("HOST"), Some("x"));
            assert_eq!(a.body, b"hello", "cut {cut}");
            let b = read_http_request(&mut reader, &mut buf).await.unwrap();
            assert_eq!(b.request_line(), "GET /v1/streams/s/records/tail HTTP/1.1");
            assert_eq!(b.header("Content-Length"), Some("0"));
            assert!(b.body.is_empty());
            assert!(read_http_request(&mut reader, &mut buf).await.is_none());
        }
        // A body cut short by the peer is no request.
        let mut reader = tokio_test_reader(b"POST / HTTP/1.1\r\ncontent-length: 9\r\n\r\nabc", b"");
        assert!(read_http_request(&mut reader, &mut Vec::new())
            .await
            .is_none());
    }

    /// A reader yielding `a` then `b` then EOF.
    fn tokio_test_reader(a: &[u8], b: &[u8]) -> impl tokio::io::AsyncRead + Unpin {
        tokio::io::AsyncReadExt::chain(
            std::io::Cursor::new(a.to_vec()),
            std::io::Cursor::new(b.to_vec()),
        )
    }
}
