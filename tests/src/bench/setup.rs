//! Starting what a run needs: s2-lite (and finding its pid), the same-run ceiling, the server
//! binary and its configuration.

use std::path::PathBuf;
use std::time::Duration;

use s2sink_tests::process::{pending, ServerProcess};
use s2sink_tests::LiteServer;

use super::ceiling::{self, Ceiling, Transport};
use super::cli::Opts;
use super::report::Report;

/// The sink every mode delivers through.
pub const SINK: &str = "bench";
/// The stream it delivers to.
pub const STREAM: &str = "bench";

/// s2-lite, a basin, and the ceilings measured on it.
pub struct Env {
    pub lite: LiteServer,
    pub basin: String,
    pub lite_pid: Option<u32>,
    /// Unary appends 1 and 2 in flight, and 2 in flight on an append session (the sink's
    /// default transport); `None` with `--ceiling-secs 0`.
    pub ceiling_1: Option<Ceiling>,
    pub ceiling_2: Option<Ceiling>,
    pub ceiling_session: Option<Ceiling>,
}

impl Env {
    /// The 2-in-flight ceiling in records/s, the higher of unary and session (0 when skipped).
    pub fn ceiling_per_s(&self) -> f64 {
        [self.ceiling_2, self.ceiling_session]
            .iter()
            .flatten()
            .map(|c| c.records_per_s)
            .fold(0.0, f64::max)
    }

    /// Table rows and JSON fields of the ceilings, and `ratio` of `delivered_per_s` to the
    /// higher 2-in-flight ceiling.
    pub fn report_ceiling(&self, rep: &mut Report, delivered_per_s: f64) {
        for (name, c) in [
            ("1 unary", &self.ceiling_1),
            ("2 unary", &self.ceiling_2),
            ("2 on a session", &self.ceiling_session),
        ] {
            if let Some(c) = c {
                rep.row(
                    format!("s2-lite ceiling, {name} in flight (same run, sink-shaped records)"),
                    c.describe(),
                );
            }
        }
        if let Some(c) = self.ceiling_session {
            rep.set("ceiling_session_per_s", c.records_per_s);
        }
        let ceiling = self.ceiling_per_s();
        if ceiling > 0.0 {
            rep.row(
                "delivered / ceiling (2 in flight, the higher)",
                format!("**{:.1}%**", 100.0 * delivered_per_s / ceiling),
            );
            rep.set("ratio", delivered_per_s / ceiling);
            rep.set("ceiling_per_s", ceiling);
        }
        if let Some(c) = self.ceiling_1 {
            rep.set("ceiling_1_per_s", c.records_per_s);
        }
        if let Some(c) = self.ceiling_2 {
            rep.set(
                "ceiling_2_mode",
                "two concurrent append loops on one stream, no match_seq_num",
            );
            rep.set(
                "ceiling_s2lite_cpu_us_per_record",
                super::procstat::CpuDelta::us_per(c.cpu.lite_s, c.records),
            );
        }
    }
}

/// Points `S2SINK_BIN` at the server binary to run: `--server-bin`, else `$S2SINK_BIN`, else
/// target/release/s2-sink, else target/debug/s2-sink.
pub fn choose_server_bin(o: &Opts) -> Result<PathBuf, String> {
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
    let bin = match (&o.server_bin, std::env::var_os("S2SINK_BIN")) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => PathBuf::from(b),
        (None, None) => ["release", "debug"]
            .iter()
            .map(|p| PathBuf::from(format!("{target}/{p}/s2-sink")))
            .find(|p| p.is_file())
            .ok_or("no s2-sink binary: build it (cargo build --release -p s2sink-server --bin s2-sink) or pass --server-bin")?,
    };
    let abs =
        std::fs::canonicalize(&bin).map_err(|e| format!("server binary {}: {e}", bin.display()))?;
    std::env::set_var("S2SINK_BIN", &abs);
    Ok(abs)
}

/// Measures the ceilings, then starts the s2-lite the run uses and creates its basin and
/// stream. Each ceiling gets an s2-lite of its own, and the run a fresh one: s2-lite keeps
/// every record in memory and slows down as it grows (deleting a stream does not give the
/// memory back), so a ceiling measured after another one, or a run after the ceilings, was
/// measured against a slower server (a 2-in-flight ceiling below the 1-in-flight one, and a
/// run at half speed, after s2-lite had grown to 12.8 GB). Ceilings run before the server
/// starts, so nothing else competes for the cores.
pub async fn start(o: &Opts) -> Result<Env, String> {
    let (mut ceiling_1, mut ceiling_2, mut ceiling_session) = (None, None, None);
    if o.ceiling_secs > 0.0 {
        let batch = ceiling::sink_shaped_batch(SINK, o.size, o.effective_groups());
        for (n, transport, slot) in [
            (1, Transport::Unary, &mut ceiling_1),
            (2, Transport::Unary, &mut ceiling_2),
            (2, Transport::Session, &mut ceiling_session),
        ] {
            let lite = LiteServer::start().await;
            let basin = lite.fresh_basin().await;
            let stream = format!("ceiling-{n}-{transport:?}").to_lowercase();
            let c = ceiling::measure(
                &lite.client(),
                &basin,
                &stream,
                &batch,
                n,
                transport,
                o.ceiling_secs,
                (None, lite.pid()),
            )
            .await?;
            eprintln!("ceiling: {}", c.describe());
            *slot = Some(c);
        }
    }
    let lite = LiteServer::start().await;
    let lite_pid = lite.pid();
    if lite_pid.is_none() {
        eprintln!("warning: s2-lite's pid not found; its CPU is reported as 0");
    }
    let basin = lite.fresh_basin().await;
    lite.client()
        .ensure_stream(&basin, STREAM, None)
        .await
        .map_err(|e| format!("create stream {STREAM}: {e}"))?;
    Ok(Env {
        lite,
        basin,
        lite_pid,
        ceiling_1,
        ceiling_2,
        ceiling_session,
    })
}

/// The server config: one sink `bench` to `STREAM`, plus `extra` lines in the sink's table.
/// A key `extra` sets in the sink's table wins over the same key from `--live-groups` or
/// `--sink-option` (the restart mode's throttled fill sets `max_live_groups`): TOML refuses
/// a key set twice, and the server would not start.
pub fn server_config(o: &Opts, env: &Env, extra: &str) -> String {
    let mut c = String::from(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nmax_pending = 5000000\n",
    );
    for line in &o.server_options {
        c.push_str(line);
        c.push('\n');
    }
    c += &format!(
        "\n[[sinks]]\nname = \"{SINK}\"\nbasin = \"{}\"\nstream = \"{STREAM}\"\nendpoint = \"{}\"\n",
        env.basin,
        env.lite.endpoint()
    );
    let user = o
        .live_groups
        .map(|n| format!("max_live_groups = {n}"))
        .into_iter()
        .chain(o.sink_options.iter().cloned());
    for line in user.filter(|l| !sets_same_key(extra, l)) {
        c.push_str(&line);
        c.push('\n');
    }
    c.push_str(extra);
    c
}

/// Whether the sink-table lines of `extra` (those before its first `[table]`) set the key
/// that `line` sets.
fn sets_same_key(extra: &str, line: &str) -> bool {
    let key = |l: &str| l.split('=').next().map(|k| k.trim().to_string());
    let Some(wanted) = key(line) else {
        return false;
    };
    extra
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter(|l| l.contains('='))
        .any(|l| key(l).as_deref() == Some(wanted.as_str()))
}

/// Starts the server with `config` in `dir`; with `--server-log`, its log (engine at debug)
/// goes to that file through a link, so it outlives the temporary directory.
pub async fn start_server(o: &Opts, dir: &std::path::Path, config: &str) -> ServerProcess {
    let Some(keep) = &o.server_log else {
        return ServerProcess::start(dir, config, &[]).await;
    };
    let link = dir.join("server.log");
    if !link.exists() {
        let keep = std::path::absolute(keep).expect("--server-log path");
        std::os::unix::fs::symlink(keep, &link).expect("link the server log");
    }
    ServerProcess::start(
        dir,
        config,
        &[(
            "RUST_LOG",
            "info,s2sink_server::engine=debug,s2sink_queue=debug",
        )],
    )
    .await
}

/// Polls the sink's pending count every 100 ms until it is 0 or `timeout` passes.
pub async fn wait_drained(url: &str, timeout: Duration) -> bool {
    let http = s2sink_tests::process::http_client();
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if pending(&http, url, SINK).await == Some(0) {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::sets_same_key;

    #[test]
    fn a_key_the_extra_lines_set_is_not_set_again() {
        let extra = "max_live_groups = 1\n[sinks.batch]\nmax_records = 1\n";
        assert!(sets_same_key(extra, "max_live_groups = 1000"));
        assert!(sets_same_key(extra, "max_live_groups=5"));
        assert!(!sets_same_key(extra, "max_retry_count = 3"));
        // Keys of a sub-table of `extra` are another table's.
        assert!(!sets_same_key(extra, "max_records = 10"));
        assert!(!sets_same_key("", "max_live_groups = 1000"));
    }
}
