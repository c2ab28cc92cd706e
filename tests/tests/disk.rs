//! Disk trouble: the server's data dir sits on an 8 MiB tmpfs that ingest fills up (the sink
//! points at a stream that does not exist, so nothing drains). What could not be stored must
//! not get a 202 (503 `storage`, or a clean exit with code 74 on a fatal sled error), and
//! nothing hangs. After the filesystem is grown and the server restarted on the same data dir
//! with a working stream, every message that got a 202 is in S2 exactly once, in group order.
//!
//! Needs root (mount). Without permission to mount, the test says so and returns.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use s2sink_tests::client::{SinkConfig, TestConfig};
use s2sink_tests::process::{http_client, wait_drained, ServerProcess};
use s2sink_tests::{change, eventually, read_all, verify_stream_lost_acks, LiteServer};
use serde_json::Value;

const SINK: &str = "disk";
/// Messages per ingest request.
const BATCH: u64 = 20;
/// Padding per message: about 4 KiB, so a request is about 80 KiB.
const PAD: usize = 4000;
/// Stop offering after this much (8× the filesystem): if all of it got a 202, that is a bug.
const MAX_OFFERED_BYTES: usize = 64 * 1024 * 1024;

/// A tmpfs mounted for the test; unmounted on drop (also when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `path`; `None` when mounting is not permitted.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "mount tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {size} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a failed test's leftover): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn config(endpoint: &str, data_dir: &Path, basin: &str, stream: &str) -> String {
    TestConfig::new()
        .data_dir(&data_dir.display().to_string())
        .sink(SinkConfig::new(SINK, endpoint, basin, stream).backoff(20, 200))
        .render()
}

/// A log line without its colour escapes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGTERM, then waits at most `deadline` for the exit; SIGKILL and `None` if it does not
/// come. Returns the exit code (`Some(None)` when killed by a signal).
async fn stop_bounded(server: &mut ServerProcess, deadline: Duration) -> Option<Option<i32>> {
    if server.is_running() {
        if let Some(pid) = server.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let exited = eventually(deadline, || {
            let running = server.is_running();
            async move { !running }
        })
        .await;
        if !exited {
            server.kill9();
            return None;
        }
    }
    // Exited: the status is cached by `is_running`, so this only collects it.
    Some(server.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_gets_no_202_and_recovers_after_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(fs) = Tmpfs::mount(&mnt, "8m") else {
        // A skip passes; where the test must run (CI as root), make it fail instead.
        assert!(
            std::env::var_os("S2SINK_REQUIRE_TMPFS").is_none(),
            "cannot mount a tmpfs and S2SINK_REQUIRE_TMPFS is set"
        );
        eprintln!(
            "SKIPPED disk_full test: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); \
             set S2SINK_REQUIRE_TMPFS=1 to make this a failure"
        );
        return;
    };
    let data_dir = mnt.join("data");
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let mut server = ServerProcess::start(
        dir.path(),
        &config(&lite.endpoint(), &data_dir, &basin, "does-not-exist"),
        &[],
    )
    .await;
    let http = http_client();

    // Fill the disk.
    let started = Instant::now();
    let mut accepted: HashSet<u64> = HashSet::new();
    // Messages of requests whose outcome is unknown: no answer (the server may exit on a
    // full disk), or `503 storage` (the disk failed during the write, which may or may not
    // have reached the disk: docs/API.md).
    let mut unanswered: HashSet<u64> = HashSet::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error: Option<(u16, Value)> = None;
    let mut timeouts = Vec::new();
    let mut offered_bytes = 0;
    let mut seq = 0;
    let mut after_error = 0;
    while offered_bytes < MAX_OFFERED_BYTES && after_error < 10 {
        let body: String = (0..BATCH)
            .map(|_| {
                seq += 1;
                format!("{}\n", change(seq % 16, seq, PAD))
            })
            .collect();
        offered_bytes += body.len();
        let resp = http
            .post(format!("{}/api/sinks/{SINK}/messages", server.url))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or_default();
                *statuses.entry(status.to_string()).or_default() += 1;
                if status == 202 {
                    for id in v["ids"].as_array().expect("ids") {
                        accepted.insert(id.as_u64().unwrap());
                    }
                } else {
                    if status == 503 && v["error"]["code"] == "storage" {
                        unanswered.extend(seq + 1 - BATCH..=seq);
                    }
                    first_error.get_or_insert((status, v));
                }
            }
            Err(e) => {
                unanswered.extend(seq + 1 - BATCH..=seq);
                if e.is_timeout() {
                    timeouts.push(e.to_string());
                }
                let kind = if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                *statuses.entry(kind.into()).or_default() += 1;
            }
        }
        if first_error.is_some() || statuses.keys().any(|k| k == "connect" || k == "transport") {
            after_error += 1;
            if !server.is_running() {
                break;
            }
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    // Within bounded time, the server either answers or has exited by itself.
    let settled_running = server.is_running()
        && eventually(Duration::from_secs(10), || async {
            http.get(format!("{}/healthz", server.url))
                .send()
                .await
                .is_ok()
        })
        .await;
    let exited_by_itself = !server.is_running();
    let exit = stop_bounded(&mut server, Duration::from_secs(30)).await;
    let log = server.log();
    let storage_lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains("fatal storage error") || l.contains("storage failed"))
        .map(strip_ansi)
        .collect();
    eprintln!(
        "disk: {fill_secs:.1} s, offered {offered_bytes} bytes, {} messages got a 202, \
         answers {statuses:?}, first error {first_error:?}, running after errors: \
         {settled_running}, exited by itself: {exited_by_itself}, exit {exit:?}, \
         log: {storage_lines:#?}",
        accepted.len()
    );

    assert!(timeouts.is_empty(), "ingest hung: {timeouts:?}");
    assert!(
        offered_bytes < MAX_OFFERED_BYTES,
        "{offered_bytes} bytes offered to an 8 MiB filesystem and never an error"
    );
    if let Some((status, v)) = &first_error {
        assert_eq!(*status, 503, "{v}");
        assert_eq!(v["error"]["code"], "storage", "{v}");
    }
    assert!(!accepted.is_empty(), "nothing fit before the disk was full");
    let exit = exit.expect("server did not stop within 30 s of SIGTERM (hang)");
    if exited_by_itself {
        assert_eq!(
            exit,
            Some(74),
            "exit after a fatal storage error; log:\n{log}"
        );
    }

    // Free space, restart on the same data dir with a working stream, drain, verify.
    fs.resize("256m");
    let stream = "events";
    lite.client()
        .ensure_stream(&basin, stream, None)
        .await
        .unwrap();
    let restarted = Instant::now();
    let server = ServerProcess::start(
        dir.path(),
        &config(&lite.endpoint(), &data_dir, &basin, stream),
        &[],
    )
    .await;
    let drained = wait_drained(&server.url, SINK, Duration::from_secs(120)).await;
    assert!(drained, "backlog not drained; log:\n{}", server.log());
    let records = read_all(&lite.client(), &basin, stream).await;
    eprintln!(
        "disk: restarted and drained in {:.1} s, {} records in S2 for {} accepted",
        restarted.elapsed().as_secs_f64(),
        records.len(),
        accepted.len()
    );
    let verdict = verify_stream_lost_acks(&records, SINK, &accepted, &unanswered);
    assert!(
        verdict.is_clean(),
        "{} accepted: lost {} duplicated {} reordered {}: {verdict:?}",
        accepted.len(),
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len()
    );
    drop(server);
    drop(fs);
}
