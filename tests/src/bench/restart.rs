//! `--restart-pending N`: fill the queue with N messages while delivery crawls, SIGKILL the
//! server, restart it with normal settings and time the recovery.

use std::time::{Duration, Instant};

use s2sink_tests::eventually;

use super::cli::Opts;
use super::load::{offer, Pace};
use super::procstat::{status_mb, CpuSnapshot};
use super::report::{thousands, Report};
use super::run::report_cpu;
use super::setup::{self, Env, STREAM};
use super::verify::{check, StreamReader};

/// Runs the recovery measurement; returns whether the delivery was clean.
pub async fn restart_with_pending(
    o: &Opts,
    env: &Env,
    n: u64,
    rep: &mut Report,
) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let normal = setup::server_config(o, env, "");
    // Throttled: one record per append, one group actor.
    let slow = setup::server_config(
        o,
        env,
        "max_live_groups = 1\n[sinks.batch]\nmax_records = 1\nlinger_ms = 100\n",
    );
    let mut server = setup::start_server(o, dir.path(), &slow).await;
    let spec = o.load_spec(&server.url, 0, 7);
    let per_lane = n.div_ceil(o.producers as u64);
    eprintln!("filling {} messages", per_lane * o.producers as u64);
    let offered = offer(&spec, Pace::Count { per_lane }).await?;
    let fill_secs = offered.secs();
    server.kill9();
    let client = env.lite.client();
    let tail_at_kill = client
        .check_tail(&env.basin, STREAM)
        .await
        .map_err(|e| format!("check tail: {e}"))?
        .seq_num;

    let restart = Instant::now();
    let server = setup::start_server(o, dir.path(), &normal).await;
    let spid = server.pid();
    let c0 = CpuSnapshot::take(spid, env.lite_pid);
    let healthy_secs = restart.elapsed().as_secs_f64();
    let resumed = eventually(Duration::from_secs(120), || async {
        client
            .check_tail(&env.basin, STREAM)
            .await
            .map(|t| t.seq_num)
            .unwrap_or(0)
            > tail_at_kill
    })
    .await;
    let resume_secs = restart.elapsed().as_secs_f64();
    let drained = setup::wait_drained(&server.url, Duration::from_secs_f64(o.drain_timeout)).await;
    let drain_secs = restart.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(spid, env.lite_pid).since(&c0);
    let server_rss = spid.and_then(|p| status_mb(p, "VmHWM")).unwrap_or(0.0);
    drop(server);

    let records = StreamReader::new(&env.basin, STREAM)
        .read_new(&client)
        .await?;
    let verdict = check(&records, &offered.last_seq);
    let pending = offered.accepted.saturating_sub(tail_at_kill);
    let drain_rate = pending as f64 / (drain_secs - healthy_secs).max(1e-3);

    rep.row(
        "pending at the kill",
        format!(
            "{} of {} accepted ({} B, {} groups; filled in {fill_secs:.1} s)",
            thousands(pending),
            thousands(offered.accepted),
            o.size,
            o.effective_groups()
        ),
    );
    rep.row(
        "restart → healthy (/healthz)",
        format!("{healthy_secs:.2} s"),
    );
    rep.row(
        "restart → first new record in S2",
        format!("**{resume_secs:.2} s**"),
    );
    rep.row(
        "restart → backlog drained",
        format!("{drain_secs:.1} s (drained: {drained}); {drain_rate:.0} msg/s after healthy"),
    );
    env.report_ceiling(rep, drain_rate);
    report_cpu(rep, &cpu, pending, None);
    rep.row(
        "server max RSS after restart",
        format!("{server_rss:.0} MB"),
    );
    rep.verdict(
        "lost / duplicated / order violations",
        &verdict,
        String::new(),
    );
    rep.set("mode", "restart-pending");
    rep.set("pending_at_kill", pending);
    rep.set("healthy_s", healthy_secs);
    rep.set("first_append_s", resume_secs);
    rep.set("drained_s", drain_secs);
    rep.set("drained", drained);
    rep.set("delivered_per_s", drain_rate);
    rep.set("max_rss_mb", server_rss);
    Ok(verdict.is_clean() && drained && resumed)
}
