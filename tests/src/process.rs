//! Running the `s2-sink` binary as a child process (API, crash and log tests).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `s2-sink` binary of this workspace (env `S2SINK_BIN` overrides). Built on demand
/// when a test runs before it exists.
pub fn sink_binary() -> PathBuf {
    if let Ok(p) = std::env::var("S2SINK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/s2-sink
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("s2-sink");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "s2sink-server", "--bin", "s2-sink"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for s2-sink");
        assert!(status.success(), "building s2-sink failed");
    }
    bin
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running `s2-sink serve`, killed (SIGKILL) on drop.
pub struct ServerProcess {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Writes `config` (with `{port}` replaced) to `dir/s2-sink.toml`, starts the server with
    /// `envs`, and waits for `/healthz` (deadline 30 s). Logs go to `dir/server.log`
    /// (appended across restarts).
    pub async fn start(dir: &Path, config: &str, envs: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let config = config.replace("{port}", &port.to_string());
        let config_path = dir.join("s2-sink.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open log");
        let mut cmd = Command::new(sink_binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn s2-sink");
        let mut p = ServerProcess {
            child: Some(child),
            port,
            url: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        p.wait_healthy().await;
        p
    }

    async fn wait_healthy(&mut self) {
        let http = http_client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "s2-sink exited with {status} before becoming healthy; log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "s2-sink not healthy within 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The child's process id (for /proc sampling), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client that never uses a proxy (everything here is on 127.0.0.1).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Pending messages of `sink` from `GET {url}/api/sinks/{sink}`; `None` when the server does
/// not answer (e.g. while it restarts).
pub async fn pending(http: &reqwest::Client, url: &str, sink: &str) -> Option<u64> {
    let r = http
        .get(format!("{url}/api/sinks/{sink}"))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["counts"]["pending"].as_u64()
}

/// Polls until `sink` has nothing pending or `deadline` passes; returns whether it drained.
pub async fn wait_drained(url: &str, sink: &str, deadline: Duration) -> bool {
    let http = http_client();
    crate::eventually(deadline, || async {
        pending(&http, url, sink).await == Some(0)
    })
    .await
}

/// How a [`produce_changes`] producer loads a server.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    pub sink: &'a str,
    pub seed: u64,
    pub batches: usize,
    pub batch_size: usize,
    pub groups: u64,
    /// Pause between batches (spreads load over a crash cycle); zero for none.
    pub pace: Duration,
}

/// Sends NDJSON batches of [`change`](crate::change) messages until `batches` are sent or the
/// server stops answering 202; records every id that got a 202 in `accepted`.
pub async fn produce_changes(
    url: String,
    load: Load<'_>,
    accepted: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
) {
    produce_changes_noting_unanswered(url, load, accepted, Default::default()).await
}

/// [`produce_changes`] that also records in `unanswered` the `seq` of every message sent in a
/// request that got no answer (connection lost, e.g. the server was killed): the server may
/// have stored those messages without the producer learning their ids (see
/// [`verify_stream_lost_acks`](crate::verify_stream_lost_acks)). An error answer stores
/// nothing (ingest is all or nothing), so its messages are not recorded.
pub async fn produce_changes_noting_unanswered(
    url: String,
    load: Load<'_>,
    accepted: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
    unanswered: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
) {
    let http = http_client();
    let mut rng = fastrand::Rng::with_seed(load.seed);
    let mut seq = load.seed * 1_000_000;
    for _ in 0..load.batches {
        let first = seq + 1;
        let body: String = (0..load.batch_size)
            .map(|_| {
                seq += 1;
                format!(
                    "{}\n",
                    crate::change(rng.u64(0..load.groups), seq, rng.usize(0..300))
                )
            })
            .collect();
        let lost = || unanswered.lock().unwrap().extend(first..=seq);
        let resp = http
            .post(format!("{url}/api/sinks/{}/messages", load.sink))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let Ok(resp) = resp else {
            lost();
            return;
        };
        if resp.status().as_u16() != 202 {
            return;
        }
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            // A 202 whose body was cut off: stored, ids unknown.
            lost();
            return;
        };
        {
            let mut acc = accepted.lock().unwrap();
            for id in v["ids"].as_array().unwrap() {
                acc.insert(id.as_u64().unwrap());
            }
        }
        if !load.pace.is_zero() {
            tokio::time::sleep(load.pace).await;
        }
    }
}
