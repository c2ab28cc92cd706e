//! The `s2-sink` CLI as users run it: a subprocess talking to a running server over HTTP
//! (`send`, `sinks`, `messages …`), its exit codes and error messages, its `--help`, typo
//! suggestions and completion scripts, and `serve` refusing invalid configs before it listens.
//! Also `s2-sink-bench --help`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use s2sink_tests::client::{toml_str, Api, SinkConfig, TestConfig};
use s2sink_tests::process::{free_port, http_client, sink_binary, ServerProcess};
use s2sink_tests::{change, eventually, ids_in, read_all, LiteServer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const API_TOKEN: &str = "cli-api-tok-5d1e";
const S2_TOKEN: &str = "cli-s2-tok-90aa";

/// What one CLI run produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "CLI failed: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `s2-sink ARGS` with only `envs` of the S2SINK_* variables set, feeding `stdin`.
async fn cli_in(
    dir: Option<&Path>,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&str>,
) -> Run {
    let mut cmd = tokio::process::Command::new(sink_binary());
    cmd.args(args)
        .env_remove("S2SINK_URL")
        .env_remove("S2SINK_API_TOKEN")
        .env_remove("S2SINK_SERVER__API_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn s2-sink CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`s2-sink {}` did not finish within 60 s", args.join(" ")))
        .expect("wait for CLI");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn cli(args: &[&str]) -> Run {
    cli_in(None, args, &[], None).await
}

fn config(endpoint: &str, basin: &str) -> String {
    TestConfig::new()
        .api_token(API_TOKEN)
        .sink(
            SinkConfig::new("good", endpoint, basin, "events")
                .set("access_token", &toml_str(S2_TOKEN)),
        )
        .sink(SinkConfig::new("stuck", endpoint, basin, "not-yet").backoff(60_000, 60_000))
        .render()
}

/// `GET path` with the token; the body as JSON.
async fn get(url: &str, path: &str) -> Value {
    let api = Api {
        http: http_client(),
        url: url.to_string(),
        token: Some(API_TOKEN.to_string()),
    };
    let a = api.get(path).await;
    assert!(!a.body.is_string(), "GET {path}: not JSON: {}", a.body);
    a.body
}

fn ids_of(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {v}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_drive_a_running_server() {
    let lite = LiteServer::start().await;
    let (basin, _) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &config(&lite.endpoint(), &basin), &[]).await;
    let url = server.url.clone();
    let auth = ["--url", url.as_str(), "--token", API_TOKEN];
    let with = |rest: &[&'static str]| -> Vec<String> {
        rest.iter()
            .map(|s| s.to_string())
            .chain(auth.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs).await
    };

    // send: an NDJSON file.
    let file = dir.path().join("batch.ndjson");
    let nd: String = (1..=3).map(|i| format!("{}\n", change(i, i, 10))).collect();
    std::fs::write(&file, nd).unwrap();
    let mut args = with(&["send", "--sink", "good"]);
    args.push(file.display().to_string());
    let r = run(args).await;
    r.ok();
    assert!(
        r.stdout.contains("accepted 3 messages") && r.stdout.contains("good"),
        "{r:?}"
    );

    // send: a JSON array on stdin, with a small --batch so it takes several requests.
    let arr = Value::from((4..=8).map(|i| change(i, i, 10)).collect::<Vec<_>>()).to_string();
    let args = with(&["send", "--sink", "good", "--batch", "2", "-"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = cli_in(None, &refs, &[], Some(&arr)).await;
    r.ok();
    assert!(r.stdout.contains("accepted 5 messages"), "{r:?}");
    // stderr is a pipe here, not a terminal: no progress line.
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains("msg/s"),
        "progress on a pipe: {r:?}"
    );

    // send and sinks with the URL and token from the environment.
    let env = [
        ("S2SINK_URL", url.as_str()),
        ("S2SINK_API_TOKEN", API_TOKEN),
    ];
    let one = format!("{}\n", change(9, 9, 10));
    let r = cli_in(None, &["send", "--sink", "good", "-"], &env, Some(&one)).await;
    r.ok();
    assert!(r.stdout.contains("accepted 1 messages"), "{r:?}");
    let r = cli_in(None, &["sinks"], &env, None).await;
    r.ok();
    let sinks = r.json();
    let names: Vec<&str> = sinks["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good", "stuck"], "{sinks}");
    assert_eq!(sinks["sinks"][0]["access_token"], "[redacted]", "{sinks}");
    assert!(!r.stdout.contains(S2_TOKEN), "token leaked: {}", r.stdout);
    assert!(
        !r.stdout.contains(API_TOKEN),
        "API token leaked: {}",
        r.stdout
    );

    // All nine reach S2, once each.
    let client = lite.client();
    let delivered = eventually(Duration::from_secs(30), || async {
        ids_in(&read_all(&client, &basin, "events").await, "good").len() >= 9
    })
    .await;
    assert!(
        delivered,
        "good sink did not deliver; log:\n{}",
        server.log()
    );
    let got = ids_in(&read_all(&client, &basin, "events").await, "good");
    assert_eq!(got.len(), 9, "{got:?}");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 9, "{got:?}");

    // The stuck sink: its stream does not exist, so every message fails with 404 and then
    // waits a minute before the next try.
    let five = Value::from((100..105).map(|i| change(i, i, 10)).collect::<Vec<_>>()).to_string();
    let args = with(&["send", "--sink", "stuck", "-"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_in(None, &refs, &[], Some(&five)).await.ok();
    let list_failed = || {
        run(with(&[
            "messages", "list", "--sink", "stuck", "--state", "failed",
        ]))
    };
    let listed = eventually(Duration::from_secs(30), || async {
        let r = list_failed().await;
        r.ok();
        r.json()["messages"].as_array().map(Vec::len) == Some(5)
    })
    .await;
    let r = list_failed().await;
    r.ok();
    let failed = r.json();
    assert!(listed, "stuck messages not listed as failed: {failed}");
    let ids = ids_of(&failed);
    for m in failed["messages"].as_array().unwrap() {
        assert_eq!(m["last_error"]["status"], 404, "{m}");
    }

    // show: the last error with S2's 404.
    let id = |i: usize| ids[i].to_string();
    let mut args = with(&["messages", "show", "--sink", "stuck"]);
    args.push(id(0));
    let r = run(args).await;
    r.ok();
    let shown = r.json();
    assert_eq!(shown["id"], ids[0], "{shown}");
    assert_eq!(shown["last_error"]["status"], 404, "{shown}");
    assert_eq!(shown["last_error"]["code"], "stream_not_found", "{shown}");
    assert_eq!(shown["message"]["record"]["id"], 100, "{shown}");

    // redeliver: retried now instead of in a minute, so its deliver count goes up.
    let count_of = |v: &Value, id: u64| {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["deliver_count"].as_u64().unwrap())
    };
    let before = count_of(&failed, ids[0]).unwrap();
    let mut args = with(&["messages", "redeliver", "--sink", "stuck"]);
    args.push(id(0));
    run(args).await.ok();
    let retried = eventually(Duration::from_secs(20), || async {
        let v = get(&url, "/api/sinks/stuck/messages?state=all").await;
        count_of(&v, ids[0]).is_some_and(|c| c > before)
    })
    .await;
    assert!(retried, "redeliver did not retry message {}", ids[0]);

    // discard: gone from the pending list, present in the discarded list.
    let mut args = with(&["messages", "discard", "--sink", "stuck"]);
    args.push(id(1));
    run(args).await.ok();
    let pending = ids_of(&get(&url, "/api/sinks/stuck/messages?state=all").await);
    assert!(!pending.contains(&ids[1]), "{pending:?}");
    let discarded = ids_of(&get(&url, "/api/sinks/stuck/discarded").await);
    assert_eq!(discarded, [ids[1]]);

    // ack: removed as delivered (it is never appended), not discarded.
    let mut args = with(&["messages", "ack", "--sink", "stuck"]);
    args.push(id(2));
    run(args).await.ok();
    let pending = ids_of(&get(&url, "/api/sinks/stuck/messages?state=all").await);
    assert_eq!(pending, [ids[0], ids[3], ids[4]]);
    let discarded = ids_of(&get(&url, "/api/sinks/stuck/discarded").await);
    assert_eq!(discarded, [ids[1]]);

    // redeliver-all, once the stream exists: the three left are delivered right away
    // (not after the one-minute backoff), and only they.
    client.ensure_stream(&basin, "not-yet", None).await.unwrap();
    let r = run(with(&["messages", "redeliver-all", "--sink", "stuck"])).await;
    r.ok();
    let n = r.json()["redelivered"].as_u64();
    assert!(matches!(n, Some(1..=3)), "{r:?}");
    let drained = eventually(Duration::from_secs(20), || async {
        get(&url, "/api/sinks/stuck").await["counts"]["pending"] == 0
    })
    .await;
    assert!(
        drained,
        "redeliver-all did not drain; log:\n{}",
        server.log()
    );
    let got = ids_in(&read_all(&client, &basin, "not-yet").await, "stuck");
    assert_eq!(
        got.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([ids[0], ids[3], ids[4]])
    );
    assert_eq!(got.len(), 3, "{got:?}");

    // Errors: wrong token, unknown sink, unknown message, missing arguments.
    let r = cli(&["sinks", "--url", &url, "--token", "wrong"]).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("HTTP 401"), "{r:?}");
    let r = cli(&["sinks", "--url", &url]).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("HTTP 401"), "{r:?}");
    let args = with(&["send", "--sink", "nope", "-"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = cli_in(None, &refs, &[], Some(&one)).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr.contains("HTTP 404") && r.stderr.contains("nope"),
        "{r:?}"
    );
    let r = run(with(&["messages", "list", "--sink", "nope"])).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("HTTP 404"), "{r:?}");
    let r = run(with(&["messages", "show", "--sink", "stuck", "999999"])).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("HTTP 404"), "{r:?}");
    let r = run(with(&["messages", "show", "--sink", "stuck"])).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("<ID>"), "{r:?}");
    let r = run(with(&["send", "-"])).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("--sink"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_usage_errors_and_unreachable_server() {
    let r = cli(&[]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("Usage:"), "{r:?}");
    let r = cli(&["frobnicate"]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("unrecognized subcommand") && r.stderr.contains("frobnicate"),
        "{r:?}"
    );
    let r = cli(&["--help"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("Usage:"), "{r:?}");

    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}", free_port());
    let r = cli(&["sinks", "--url", &url, "--token", API_TOKEN]).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("cannot reach"), "{r:?}");
    let body = format!("{}\n", change(1, 1, 1));
    let r = cli_in(
        None,
        &["send", "--sink", "x", "--url", &url, "-"],
        &[],
        Some(&body),
    )
    .await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("cannot reach"), "{r:?}");
    let r = cli_in(None, &["sinks"], &[("S2SINK_URL", url.as_str())], None).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr.contains("cannot reach") && r.stderr.contains(&url),
        "{r:?}"
    );
}

const VALID_SINK: &str = r#"[[sinks]]
name = "orders"
basin = "orders-basin-01"
stream = "orders"
endpoint = "http://127.0.0.1:1"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_invalid_configs_before_listening() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "bad basin name",
            VALID_SINK.replace("orders-basin-01", "Bad_Basin"),
            &["sinks.orders.basin", "Bad_Basin"],
        ),
        (
            "unknown key",
            VALID_SINK.replace("stream = \"orders\"", "stream = \"orders\"\nstreem = 1"),
            &["streem"],
        ),
        (
            "cloud without token",
            VALID_SINK.replace("http://127.0.0.1:1", "cloud"),
            &["sinks.orders.access_token", "missing"],
        ),
        (
            "missing function file",
            format!("{VALID_SINK}transform = \"functions/missing.rhai\"\n"),
            &["sinks.orders.transform", "missing.rhai"],
        ),
    ];
    // The control case starts (so the failures are the configs' fault).
    let dir = tempfile::tempdir().unwrap();
    let ok = format!("[server]\nlisten = \"127.0.0.1:{{port}}\"\n\n{VALID_SINK}");
    let mut server = ServerProcess::start(dir.path(), &ok, &[]).await;
    server.kill9();

    for (what, sinks, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n{sinks}");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let r = cli_in(
            Some(dir.path()),
            &["serve", "--config", path.to_str().unwrap()],
            &[],
            None,
        )
        .await;
        assert_eq!(r.code, Some(2), "{what}: {r:?}");
        for n in needles {
            assert!(
                r.stderr.contains(n),
                "{what}: stderr does not name `{n}`: {r:?}"
            );
        }
        assert!(!r.stderr.contains("listening"), "{what}: {r:?}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{what}: something listens on {port}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "{what}: data dir created"
        );
    }

    // A missing config file is an error naming the file, not a default config.
    let dir = tempfile::tempdir().unwrap();
    let r = cli_in(
        Some(dir.path()),
        &["serve", "--config", "nope.toml"],
        &[],
        None,
    )
    .await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("nope.toml"), "{r:?}");
}

/// Writes `config` (with `{port}` filled in) to `dir/s2-sink.toml` and runs
/// `s2-sink check --config` on it.
async fn check(dir: &Path, config: &str) -> Run {
    let path = dir.join("s2-sink.toml");
    std::fs::write(&path, config.replace("{port}", &free_port().to_string())).unwrap();
    cli_in(
        Some(dir),
        &["check", "--config", path.to_str().unwrap()],
        &[],
        None,
    )
    .await
}

/// The table line of `sink` whose CHECK column starts with `what`.
fn check_line<'a>(run: &'a Run, sink: &str, what: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| {
            let mut cols = l.split_whitespace();
            cols.next() == Some(sink) && l[sink.len()..].trim_start().starts_with(what)
        })
        .unwrap_or_else(|| panic!("no `{sink}` / `{what}` line: {run:?}"))
}

/// `s2-sink check` names what is wrong on the S2 side of each sink, without appending: a
/// missing stream or basin, an endpoint that does not answer, a refused token; exit 0 only
/// when all is well, 2 for an invalid config. `serve` logs the same failures at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong_on_the_s2_side() {
    use s2sink_tests::proxy::{Fault, Proxy, Scope};

    let lite = LiteServer::start().await;
    let (basin, _) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();

    let good = TestConfig::new()
        .sink(SinkConfig::new("good", &lite.endpoint(), &basin, "events"))
        .render();
    let run = check(dir.path(), &good).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(check_line(&run, "good", "endpoint and token").contains(" ok "));
    assert!(check_line(&run, "good", &format!("basin {basin}")).contains(" ok "));
    assert!(check_line(&run, "good", &format!("stream {basin}/events")).contains("exists"));
    assert!(check_line(&run, "good", "append").contains("only by appending"));
    assert!(check_line(&run, "good", "append session").contains(" ok "));

    // Through an HTTP/1.1-only proxy everything answers but the session: the report says
    // so and how to fix it.
    let http1 = Proxy::start(&lite.endpoint()).await;
    let behind = TestConfig::new()
        .sink(SinkConfig::new(
            "behind",
            &http1.endpoint(),
            &basin,
            "events",
        ))
        .render();
    let run = check(dir.path(), &behind).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(check_line(&run, "behind", &format!("stream {basin}/events")).contains(" ok "));
    let line = check_line(&run, "behind", "append session");
    assert!(
        line.contains("FAIL") && line.contains("append_session = false"),
        "{line}"
    );
    let run = check(
        dir.path(),
        &behind.replace(
            "name = \"behind\"",
            "name = \"behind\"\nappend_session = false",
        ),
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");

    let refusing = Proxy::start(&lite.endpoint()).await;
    refusing.set_scope(Scope::All);
    refusing.set_policy(|_| Fault::s2_error(401, "unauthorized", "invalid token"));
    let bad = TestConfig::new()
        .sink(
            SinkConfig::new("no-stream", &lite.endpoint(), &basin, "nope")
                .set("dead_letter_stream", "\"events\""),
        )
        .sink(SinkConfig::new(
            "no-basin",
            &lite.endpoint(),
            "no-such-basin-here",
            "events",
        ))
        .sink(SinkConfig::new(
            "down",
            "http://127.0.0.1:1",
            &basin,
            "events",
        ))
        .sink(SinkConfig::new(
            "refused",
            &refusing.endpoint(),
            &basin,
            "events",
        ))
        .render();
    let run = check(dir.path(), &bad).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let line = check_line(&run, "no-stream", &format!("stream {basin}/nope"));
    assert!(
        line.contains("FAIL") && line.contains("does not exist"),
        "{line}"
    );
    assert!(check_line(&run, "no-stream", &format!("stream {basin}/events")).contains(" ok "));
    let line = check_line(&run, "no-basin", "basin no-such-basin-here");
    assert!(
        line.contains("FAIL") && line.contains("does not exist"),
        "{line}"
    );
    let line = check_line(&run, "down", "endpoint");
    assert!(
        line.contains("FAIL") && line.contains("does not answer"),
        "{line}"
    );
    let line = check_line(&run, "refused", "token");
    assert!(line.contains("FAIL") && line.contains("refused"), "{line}");

    // Nothing was appended anywhere.
    assert!(read_all(&lite.client(), &basin, "events").await.is_empty());

    // An invalid config: exit 2 naming the key, before any S2 call.
    let run = check(dir.path(), &good.replace(&basin, "Bad_Basin")).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("basin"), "{run:?}");

    // serve checks once at start and logs what failed, but starts.
    let server = ServerProcess::start(dir.path(), &bad, &[]).await;
    let logged = eventually(Duration::from_secs(20), || async {
        let log = server.log();
        log.contains("S2 check at start failed") && log.contains("no-basin")
    })
    .await;
    assert!(logged, "no start-up check warning:\n{}", server.log());
}

/// `examples/s2-sink.service` runs the binary with flags it accepts, and (where
/// `systemd-analyze` exists) passes `systemd-analyze verify` with the binary at its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_example_is_valid() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/s2-sink.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/s2-sink"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args[..2], ["serve", "--config"]);
    for key in [
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // The same flags with a config that does not exist: a config error (exit 2), not a
    // usage error, so every flag was understood.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let mut flags: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    flags[2] = missing.to_str().unwrap().to_string();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let run = cli_in(Some(dir.path()), &flags, &[], None).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        !run.stderr.contains("Usage:"),
        "a flag was refused: {run:?}"
    );

    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        println!("systemd-analyze not installed: only the flags were checked");
        return;
    };
    assert!(out.status.success());
    let local = dir.path().join("s2-sink.service");
    let bin = sink_binary();
    std::fs::write(
        &local,
        unit.replace("/usr/local/bin/s2-sink", bin.to_str().unwrap()),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// `s2-sink reload` asks the server to re-read its config; `messages list --state discarded`
/// pages the discarded messages (their own route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_the_discarded_list_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // The stuck sink's S2 is a closed port: what is sent stays pending until discarded.
    let server = ServerProcess::start(
        dir.path(),
        &config("http://127.0.0.1:1", "cli-basin-01"),
        &[],
    )
    .await;
    let env = [
        ("S2SINK_URL", server.url.as_str()),
        ("S2SINK_API_TOKEN", API_TOKEN),
    ];
    let two = format!("{}\n{}\n", change(1, 1, 10), change(2, 2, 10));
    cli_in(None, &["send", "--sink", "stuck", "-"], &env, Some(&two))
        .await
        .ok();
    let listed = cli_in(None, &["messages", "list", "--sink", "stuck"], &env, None).await;
    let ids = ids_of(&listed.ok().json());
    assert_eq!(ids.len(), 2, "{listed:?}");
    for id in &ids {
        let id = id.to_string();
        cli_in(
            None,
            &["messages", "discard", "--sink", "stuck", &id],
            &env,
            None,
        )
        .await
        .ok();
    }
    let page = cli_in(
        None,
        &[
            "messages",
            "list",
            "--sink",
            "stuck",
            "--state",
            "discarded",
            "--limit",
            "1",
        ],
        &env,
        None,
    )
    .await;
    let page = page.ok().json();
    assert_eq!(ids_of(&page).len(), 1, "{page}");
    assert_eq!(page["messages"][0]["state"], "discarded");
    let before = page["next_before"].to_string();
    let rest = cli_in(
        None,
        &[
            "messages",
            "list",
            "--sink",
            "stuck",
            "--state",
            "discarded",
            "--before",
            &before,
        ],
        &env,
        None,
    )
    .await;
    let mut all = ids_of(&page);
    all.extend(ids_of(&rest.ok().json()));
    all.sort();
    assert_eq!(all, ids);

    let r = cli_in(None, &["reload"], &env, None).await;
    assert_eq!(r.ok().json()["reloaded"], true);
}

/// Every command's `--help` exits 0, on stdout, and names the command's flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help_naming_its_flags() {
    const API: [&str; 4] = ["--url", "--token", "S2SINK_URL", "S2SINK_API_TOKEN"];
    const ONE: [&str; 2] = ["--sink", "<ID>"];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "serve",
                "check",
                "send",
                "sinks",
                "reload",
                "messages",
                "completions",
                "Exit status",
                "69",
            ],
        ),
        (&["serve", "--help"], &["--config", "--log-format", "json"]),
        (
            &["check", "--help"],
            &["--config", "s2-sink.toml", "Exit status"],
        ),
        (
            &["send", "--help"],
            &["--sink", "--group", "--batch", "[FILE]"],
        ),
        (&["sinks", "--help"], &API),
        (&["reload", "--help"], &API),
        (
            &["messages", "--help"],
            &[
                "list",
                "show",
                "ack",
                "redeliver",
                "discard",
                "redeliver-all",
            ],
        ),
        (
            &["messages", "list", "--help"],
            &[
                "--sink",
                "--state",
                "backing_off",
                "discarded",
                "--group",
                "--limit",
                "--after",
                "--before",
                "--order",
            ],
        ),
        (&["messages", "show", "--help"], &ONE),
        (&["messages", "ack", "--help"], &ONE),
        (&["messages", "redeliver", "--help"], &ONE),
        (&["messages", "discard", "--help"], &ONE),
        (&["messages", "redeliver-all", "--help"], &["--sink"]),
        (&["completions", "--help"], &["bash", "zsh", "fish"]),
        (&["help", "send"], &["--sink", "--batch"]),
    ];
    let env = [("S2SINK_API_TOKEN", "help-secret-7f3a")];
    for (args, needles) in cases {
        let r = cli_in(None, args, &env, None).await;
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        for n in *needles {
            assert!(r.stdout.contains(n), "{args:?}: no `{n}` in:\n{}", r.stdout);
        }
        assert!(
            !r.stdout.contains("help-secret-7f3a"),
            "{args:?}: the token's value is shown: {}",
            r.stdout
        );
    }
    // Remote commands take --url and --token, with their variables.
    for cmd in ["send", "messages"] {
        let r = cli(&[cmd, "--help"]).await;
        for n in API {
            assert!(r.stdout.contains(n), "{cmd}: no `{n}`: {}", r.stdout);
        }
    }
}

/// A mistyped command or flag is a usage error (exit 2) with clap's suggestion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typos_exit_2_with_a_suggestion() {
    let cases: &[(&[&str], &str)] = &[
        (&["sned"], "'send'"),
        (&["mesages", "list"], "'messages'"),
        (&["messages", "shwo", "--sink", "s", "1"], "'show'"),
        (&["send", "--sink", "s", "--grup", "g"], "--group"),
        (&["serve", "--confg", "x.toml"], "--config"),
    ];
    for (args, suggestion) in cases {
        let r = cli(args).await;
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            (r.stderr.contains("tip:") || r.stderr.contains("similar"))
                && r.stderr.contains(suggestion),
            "{args:?}: no suggestion of {suggestion}: {r:?}"
        );
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    // Bad values name the valid ones.
    let r = cli(&["messages", "list", "--sink", "s", "--state", "faild"]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("failed"), "{r:?}");
    let r = cli(&["completions", "tcsh"]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("bash"), "{r:?}");
}

/// `s2-sink completions SHELL` prints a completion script for `s2-sink`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_print_a_script_per_shell() {
    for (shell, needle) in [
        ("bash", "-o default s2-sink"),
        ("zsh", "#compdef s2-sink"),
        ("fish", "complete -c s2-sink"),
        ("elvish", "s2-sink"),
        ("powershell", "s2-sink"),
    ] {
        let r = cli(&["completions", shell]).await;
        assert_eq!(r.code, Some(0), "{shell}: {r:?}");
        assert!(r.stdout.contains(needle), "{shell}: {}", r.stdout);
        // The subcommands are in it.
        assert!(r.stdout.contains("redeliver-all"), "{shell}: {}", r.stdout);
    }
    if let Ok(out) = std::process::Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(cli(&["completions", "bash"]).await.stdout)
        .output()
    {
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The load generator's `--help` prints its options and exits 0 (no panic).
#[test]
fn bench_help_exits_0() {
    let bin = env!("CARGO_BIN_EXE_s2-sink-bench");
    for flag in ["--help", "-h"] {
        let out = std::process::Command::new(bin).arg(flag).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{flag}: {stdout}{stderr}");
        for n in ["Usage: s2-sink-bench", "--rate", "--find-max", "--smoke"] {
            assert!(stdout.contains(n), "{flag}: no `{n}`: {stdout}");
        }
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
    let out = std::process::Command::new(bin)
        .arg("--nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
