//! A fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1, put between the sink and s2-lite.
//!
//! Every request is read whole (head + `Content-Length` body), then a [`Fault`] decides its
//! fate: pass it on, delay it, answer it with an error without forwarding, reset the
//! connection, or forward it and drop the response so the client never learns that S2 applied
//! it. Faults apply to requests in [`Scope`] only (by default appends, `POST …/records`), so
//! the reads and tail checks a sink uses to reconcile pass untouched.
//!
//! The fault for a request is, in order: the next one of [`Proxy::push_faults`]' queue, else
//! the policy's answer ([`Proxy::set_policy`], [`Proxy::set_random`]; [`Fault::Pass`] by
//! default). [`Proxy::stats`] counts requests and faults so a test can assert faults happened.
//!
//! Forwarding opens a fresh upstream connection per request (`connection: close`) and reads
//! the response to its end; the client side is kept alive across requests. Dropping the
//! [`Proxy`] aborts the listener and every connection.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use s2sink_client::testing::{head_end, header_value as header, read_http_request, HttpRequest};

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward and return the upstream response.
    Pass,
    /// Wait, then forward and answer. When the client gave up meanwhile (request timeout), the
    /// request still reaches S2: a late arrival, as a slow S2 would apply it.
    Delay(Duration),
    /// Hold the request without forwarding until the client gives up: a timeout that surely
    /// did not apply.
    Hang,
    /// Answer with this response without forwarding.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Reset the connection (RST) before forwarding: nothing applied.
    ResetBeforeForward,
    /// Forward, read S2's response, then close the client connection (FIN) without answering:
    /// the append is applied but the client never learns it.
    ForwardThenDrop,
    /// Hold the request without answering; it is forwarded (and its answer dropped) just
    /// before the next append that is forwarded: an append that lands late, at a moment the
    /// test controls (after the client gave up and reconciled, before its next append).
    Hold,
    /// As [`Fault::ForwardThenDrop`], but reset (RST) the client connection.
    ForwardThenReset,
    /// Wait, then apply the inner fault: an answer (or a dropped one) that comes late, so the
    /// client sends more requests meanwhile (pipelined appends behind a failing one).
    Late(Duration, Box<Fault>),
}

impl Fault {
    /// An S2-style error: `{"code","message"}` JSON body.
    pub fn s2_error(status: u16, code: &str, message: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::json!({"code": code, "message": message}).to_string(),
        }
    }

    /// An error with a non-JSON body (a load balancer's HTML page, say).
    pub fn plain(status: u16, body: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![("content-type".into(), "text/html".into())],
            body: body.to_string(),
        }
    }

    /// 429 `rate_limited` with `Retry-After: <secs>`.
    pub fn throttled(retry_after_secs: u64) -> Fault {
        Fault::Respond {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry_after_secs.to_string()),
            ],
            body: serde_json::json!({"code": "rate_limited", "message": "slow down"}).to_string(),
        }
    }

    /// A short name for counting: `pass`, `delay`, `hang`, `status_503`, `reset_before`,
    /// `forward_then_drop`, `forward_then_reset`.
    pub fn kind(&self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Delay(_) => "delay".into(),
            Fault::Hang => "hang".into(),
            Fault::Respond { status, .. } => format!("status_{status}"),
            Fault::ResetBeforeForward => "reset_before".into(),
            Fault::ForwardThenDrop => "forward_then_drop".into(),
            Fault::Hold => "hold".into(),
            Fault::ForwardThenReset => "forward_then_reset".into(),
            Fault::Late(_, inner) => format!("late_{}", inner.kind()),
        }
    }
}

/// The request a policy decides on.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// 0-based number of this request among all the proxy received.
    pub n: u64,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `POST …/records`.
    pub is_append: bool,
    pub body_len: usize,
    /// The `Authorization` header, when sent (for token tests).
    pub authorization: Option<String>,
    /// An append's `match_seq_num`, when its JSON body has one.
    pub match_seq_num: Option<u64>,
    /// An append's number of records (0 for other requests).
    pub records: usize,
}

/// Which requests faults apply to; the others always pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Appends only (`POST …/records`): reads and tail checks pass.
    Appends,
    /// Every request.
    All,
}

/// Decides the fault for a request in scope.
pub type Policy = Arc<dyn Fn(&RequestInfo) -> Fault + Send + Sync>;

/// Counts since start.
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    /// Requests received (complete heads and bodies).
    pub requests: u64,
    /// Of those, appends.
    pub appends: u64,
    /// Requests sent upstream (whatever happened to the response).
    pub forwarded: u64,
    /// Forward-then-drop/reset whose upstream answer was 2xx: applied, never acknowledged.
    pub applied_unacknowledged: u64,
    /// Faults injected by kind (everything but `pass`).
    pub faults: BTreeMap<String, u64>,
    /// Gauge: requests read and not yet finished (a delayed request counts until it has been
    /// forwarded, so a test can wait for late arrivals to land).
    pub in_flight: u64,
    /// Most requests in flight at once (a high-water mark of `in_flight`): proves that a
    /// client really had several requests outstanding.
    pub max_in_flight: u64,
}

impl ProxyStats {
    /// All faults injected.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Faults of one kind (see [`Fault::kind`]).
    pub fn count(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }
}

struct Shared {
    upstream: String,
    scope: Scope,
    queue: VecDeque<Fault>,
    policy: Option<Policy>,
    stats: ProxyStats,
    /// Requests under [`Fault::Hold`]: each waits for a sender to signal once it was forwarded.
    held: Vec<tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`http://host:port`), scope [`Scope::Appends`], policy
    /// pass.
    pub async fn start(upstream: &str) -> Proxy {
        let url = reqwest::Url::parse(upstream).expect("upstream URL");
        let host = url.host_str().expect("upstream host");
        let port = url.port_or_known_default().expect("upstream port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Mutex::new(Shared {
            upstream: format!("{host}:{port}"),
            scope: Scope::Appends,
            queue: VecDeque::new(),
            policy: None,
            stats: ProxyStats::default(),
            held: Vec::new(),
        }));
        let conn_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task ends them too.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { return };
                        let _ = socket.set_nodelay(true);
                        conns.spawn(serve(socket, conn_shared.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Proxy { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the sink.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Which requests faults apply to.
    pub fn set_scope(&self, scope: Scope) {
        self.lock().scope = scope;
    }

    /// Decides the fault of every request in scope (after the queue is used up).
    pub fn set_policy(&self, f: impl Fn(&RequestInfo) -> Fault + Send + Sync + 'static) {
        self.lock().policy = Some(Arc::new(f));
    }

    /// Every request in scope passes (the queue still applies).
    pub fn pass_all(&self) {
        self.lock().policy = None;
    }

    /// Random faults: each request in scope draws one, `faults` being `(probability, fault)`
    /// pairs (the rest pass), from an RNG seeded with `seed`.
    pub fn set_random(&self, seed: u64, faults: Vec<(f64, Fault)>) {
        let total: f64 = faults.iter().map(|(p, _)| p).sum();
        assert!(total <= 1.0, "fault probabilities add up to {total} > 1");
        let rng = Mutex::new(fastrand::Rng::with_seed(seed));
        self.set_policy(move |_| {
            let mut x = rng.lock().unwrap().f64();
            for (p, f) in &faults {
                if x < *p {
                    return f.clone();
                }
                x -= p;
            }
            Fault::Pass
        });
    }

    /// Faults for the next requests in scope, one each, before the policy is asked.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().queue.extend(faults);
    }

    /// Counts so far.
    pub fn stats(&self) -> ProxyStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request as read from the client (parsed by the same code as the fake S2 server's).
type Request = HttpRequest;

/// Serves one client connection, request after request, until it closes or a fault ends it.
async fn serve(mut client: TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    while let Some(req) = read_http_request(&mut client, &mut buf).await {
        let (fault, upstream, is_append) = decide(&shared, &req);
        let _in_flight = InFlight::enter(&shared);
        let fault = match fault {
            Fault::Late(d, inner) => {
                tokio::time::sleep(d).await;
                *inner
            }
            f => f,
        };
        if is_append && fault != Fault::Hold {
            release_held(&shared).await;
        }
        let outcome = match fault {
            Fault::Pass | Fault::Late(..) => forward(&shared, &upstream, &req).await,
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                forward(&shared, &upstream, &req).await
            }
            Fault::Hang => {
                // Until the client closes (or sends garbage): its timeout fires.
                let mut b = [0u8; 1024];
                let _ = client.read(&mut b).await;
                return;
            }
            Fault::Respond {
                status,
                headers,
                body,
            } => Some(synth_response(status, &headers, &body)),
            Fault::ResetBeforeForward => {
                reset(client);
                return;
            }
            Fault::Hold => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                lock(&shared).held.push(tx);
                if let Ok(done) = rx.await {
                    forward(&shared, &upstream, &req).await;
                    let _ = done.send(());
                }
                let _ = client.shutdown().await;
                return;
            }
            Fault::ForwardThenDrop | Fault::ForwardThenReset => {
                if let Some(resp) = forward(&shared, &upstream, &req).await {
                    if status_of(&resp).is_some_and(|s| (200..300).contains(&s)) {
                        lock(&shared).stats.applied_unacknowledged += 1;
                    }
                }
                if fault == Fault::ForwardThenReset {
                    reset(client);
                } else {
                    let _ = client.shutdown().await;
                }
                return;
            }
        };
        let Some(resp) = outcome else {
            // Upstream unreachable: what a gateway says.
            let _ = client
                .write_all(&synth_response(502, &[], "proxy: upstream unreachable"))
                .await;
            return;
        };
        let (resp, close) = for_client(resp);
        if client.write_all(&resp).await.is_err() || close {
            let _ = client.shutdown().await;
            return;
        }
    }
}

/// Counts a request in [`ProxyStats::in_flight`] while alive (also when its task is aborted).
struct InFlight(Arc<Mutex<Shared>>);

impl InFlight {
    fn enter(shared: &Arc<Mutex<Shared>>) -> InFlight {
        let mut s = lock(shared);
        s.stats.in_flight += 1;
        s.stats.max_in_flight = s.stats.max_in_flight.max(s.stats.in_flight);
        drop(s);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).stats.in_flight -= 1;
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forwards every held request (see [`Fault::Hold`]) and waits until they were sent.
async fn release_held(shared: &Mutex<Shared>) {
    let held = std::mem::take(&mut lock(shared).held);
    for h in held {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if h.send(tx).is_ok() {
            let _ = rx.await;
        }
    }
}

/// An append body's record count and `match_seq_num`, read without building the records
/// (appends of up to 1 MiB pass through chaos and overload tests).
fn append_summary(body: &[u8]) -> (usize, Option<u64>) {
    #[derive(serde::Deserialize)]
    struct Summary {
        #[serde(default)]
        records: Vec<serde::de::IgnoredAny>,
        match_seq_num: Option<u64>,
    }
    serde_json::from_slice::<Summary>(body)
        .map_or((0, None), |s| (s.records.len(), s.match_seq_num))
}

/// Counts the request and picks its fault; returns it with the upstream address and whether
/// it is an append.
fn decide(shared: &Mutex<Shared>, req: &Request) -> (Fault, String, bool) {
    let method = req.method().to_string();
    let path = req.target().to_string();
    let route = path.split('?').next().unwrap_or("");
    let is_append = method == "POST" && route.ends_with("/records");
    let (records, match_seq_num) = if is_append {
        append_summary(&req.body)
    } else {
        (0, None)
    };
    let mut s = lock(shared);
    let info = RequestInfo {
        n: s.stats.requests,
        method,
        path,
        is_append,
        body_len: req.body.len(),
        authorization: header(&req.head, "authorization").map(str::to_string),
        match_seq_num,
        records,
    };
    s.stats.requests += 1;
    if is_append {
        s.stats.appends += 1;
    }
    let in_scope = s.scope == Scope::All || is_append;
    let fault = if !in_scope {
        Fault::Pass
    } else if let Some(f) = s.queue.pop_front() {
        f
    } else if let Some(p) = s.policy.clone() {
        // The policy runs under the lock; it is a small pure decision.
        p(&info)
    } else {
        Fault::Pass
    };
    if fault != Fault::Pass {
        *s.stats.faults.entry(fault.kind()).or_default() += 1;
    }
    (fault, s.upstream.clone(), is_append)
}

/// Sends the request upstream on a fresh connection and reads the whole response (to EOF);
/// `None` when upstream could not be reached or failed mid-way.
async fn forward(shared: &Mutex<Shared>, upstream: &str, req: &Request) -> Option<Vec<u8>> {
    lock(shared).stats.forwarded += 1;
    let mut up = TcpStream::connect(upstream).await.ok()?;
    let _ = up.set_nodelay(true);
    let mut out = String::new();
    for (i, line) in req.head.lines().enumerate() {
        let name = line.split(':').next().unwrap_or("").trim();
        if i > 0
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).await.ok()?;
    up.write_all(&req.body).await.ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await.ok()?;
    (!resp.is_empty()).then_some(resp)
}

fn synth_response(status: u16, headers: &[(String, String)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Injected\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

fn response_head(resp: &[u8]) -> &str {
    let end = head_end(resp).unwrap_or(resp.len());
    std::str::from_utf8(&resp[..end]).unwrap_or("")
}

fn status_of(resp: &[u8]) -> Option<u16> {
    response_head(resp).split_whitespace().nth(1)?.parse().ok()
}

/// The upstream response as the client gets it, and whether to close after it. Upstream's
/// `connection: close` (we asked for it) is dropped so the client connection stays alive,
/// unless the body is delimited by the close itself (no length, not chunked).
fn for_client(resp: Vec<u8>) -> (Vec<u8>, bool) {
    let head = response_head(&resp);
    let head_len = head.len();
    if head_len == resp.len() {
        return (resp, true);
    }
    let framed =
        header(head, "content-length").is_some() || header(head, "transfer-encoding").is_some();
    let mut out = String::new();
    for (i, line) in head.lines().enumerate() {
        let name = line.split(':').next().unwrap_or("").trim();
        if i > 0 && name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !framed {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp[head_len + 4..]);
    (bytes, !framed)
}

/// Closes with RST instead of FIN.
fn reset(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}
