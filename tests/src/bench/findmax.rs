//! `--find-max`: open-loop steps of rising offered rate on one server, until a step is not
//! sustained; reports the highest sustained rate.
//!
//! A step at rate R is **sustained** when (1) no request got a 429, (2) the backlog is empty
//! within a grace period after the step's last request (max(1 s, 2 × `--max-p99-ms`)): delivery
//! kept up, and (3) the p99 latency of the step's messages (from their intended send times) is
//! at most `--max-p99-ms`. Between steps the backlog drains, so steps do not carry load over.

use std::time::Duration;

use serde_json::json;

use super::cli::Opts;
use super::load::{offer, Pace};
use super::procstat::{status_mb, CpuDelta, CpuSnapshot};
use super::report::{thousands, Report};
use super::run::report_cpu;
use super::setup::{self, Env, STREAM};
use super::verify::{check, Delivered, Latency, StreamReader};

/// Figures of one step.
struct Step {
    rate: u64,
    delivered_per_s: f64,
    lat: Latency,
    cpu: CpuDelta,
    delivered: u64,
    sustained: bool,
    why: String,
    /// Batches the generator sent > 10 ms after their intended time (counted in the latency).
    late_batches: u64,
}

/// Runs the steps; returns whether the delivery was clean over all of them.
pub async fn find_max(o: &Opts, env: &Env, rep: &mut Report) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let server = setup::start_server(o, dir.path(), &setup::server_config(o, env, "")).await;
    let spid = server.pid();
    let client = env.lite.client();
    let mut reader = StreamReader::new(&env.basin, STREAM);
    let mut all: Vec<Delivered> = Vec::new();
    let mut last_seq = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let grace = Duration::from_secs_f64((2.0 * o.max_p99_ms / 1000.0).max(1.0));
    let mut drained = true;
    for i in 0..o.max_steps {
        let rate = o.start_rate + u64::from(i) * o.step;
        let spec = o.load_spec(
            &server.url,
            u64::from(i) * o.producers as u64,
            1 + u64::from(i),
        );
        let c0 = CpuSnapshot::take(spid, env.lite_pid);
        let offered = offer(
            &spec,
            Pace::Open {
                rate,
                duration: Duration::from_secs_f64(o.step_secs),
            },
        )
        .await?;
        let kept_up = setup::wait_drained(&server.url, grace).await;
        if !kept_up {
            drained =
                setup::wait_drained(&server.url, Duration::from_secs_f64(o.drain_timeout)).await;
        }
        let cpu = CpuSnapshot::take(spid, env.lite_pid).since(&c0);
        last_seq.extend_from_slice(&offered.last_seq);
        let new = reader.read_new(&client).await?;
        let lat = Latency::of(&new);
        let end_ms = offered.end_us / 1000;
        let in_step = new.iter().filter(|r| r.ts_ms <= end_ms).count() as u64;
        let delivered_per_s = in_step as f64 / offered.secs().max(1e-3);
        let mut why = Vec::new();
        if offered.rejected_requests > 0 {
            why.push(format!("{} × 429", offered.rejected_requests));
        }
        if !kept_up {
            why.push(format!(
                "backlog not drained {:.1} s after the step",
                grace.as_secs_f64()
            ));
        }
        if lat.p99 > o.max_p99_ms {
            why.push(format!("p99 {:.0} ms > {:.0} ms", lat.p99, o.max_p99_ms));
        }
        let step = Step {
            rate,
            delivered_per_s,
            lat,
            cpu,
            delivered: new.len() as u64,
            late_batches: offered.late_batches,
            sustained: why.is_empty(),
            why: if why.is_empty() {
                "sustained".into()
            } else {
                why.join("; ")
            },
        };
        eprintln!(
            "step {}: {rate} msg/s offered, {:.0} delivered/s during the step, p50 {:.0} / p99 {:.0} ms, server {:.1} µs/msg, {} batches sent late: {}",
            i + 1,
            step.delivered_per_s,
            step.lat.p50,
            step.lat.p99,
            CpuDelta::us_per(step.cpu.server_s, step.delivered),
            step.late_batches,
            step.why
        );
        all.extend(new);
        let stop = !step.sustained || !drained;
        steps.push(step);
        if stop {
            break;
        }
    }
    let server_rss = spid.and_then(|p| status_mb(p, "VmHWM")).unwrap_or(0.0);
    drop(server);
    let verdict = check(&all, &last_seq);

    rep.row(
        "mode",
        format!(
            "find max: open loop from {} msg/s, +{} per step, {:.0} s per step, p99 bound {:.0} ms, {} lanes",
            o.start_rate, o.step, o.step_secs, o.max_p99_ms, o.producers
        ),
    );
    rep.row(
        "message size / groups",
        format!("{} B / {}", o.size, o.effective_groups()),
    );
    for s in &steps {
        rep.row(
            format!("step {} msg/s", s.rate),
            format!(
                "delivered {:.0}/s, p50 {:.0} / p99 {:.0} ms, server {:.1} µs/msg, {} batches sent > 10 ms late: {}",
                s.delivered_per_s,
                s.lat.p50,
                s.lat.p99,
                CpuDelta::us_per(s.cpu.server_s, s.delivered),
                s.late_batches,
                s.why
            ),
        );
    }
    let best = steps.iter().rev().find(|s| s.sustained);
    let max_rate = best.map_or(0, |s| s.rate);
    rep.row(
        "highest sustained rate",
        format!("**{} msg/s**", thousands(max_rate)),
    );
    rep.set("max_sustained_per_s", max_rate);
    rep.set(
        "steps",
        steps
            .iter()
            .map(|s| {
                let r1 = |x: f64| (x * 10.0).round() / 10.0;
                json!({"rate": s.rate, "delivered_per_s": s.delivered_per_s.round(),
                       "p50_ms": r1(s.lat.p50), "p99_ms": r1(s.lat.p99),
                       "server_cpu_us_per_msg": r1(CpuDelta::us_per(s.cpu.server_s, s.delivered)),
                       "late_batches": s.late_batches,
                       "sustained": s.sustained, "why": s.why})
            })
            .collect::<Vec<_>>(),
    );
    if let Some(b) = best {
        env.report_ceiling(rep, b.delivered_per_s);
        rep.row(
            "at the highest sustained rate: p50 / p99 / max",
            format!("{:.0} / {:.0} / {:.0} ms", b.lat.p50, b.lat.p99, b.lat.max),
        );
        report_cpu(rep, &b.cpu, b.delivered, None);
        rep.set("delivered_per_s", b.delivered_per_s);
        rep.set("p50_ms", b.lat.p50);
        rep.set("p99_ms", b.lat.p99);
    } else {
        env.report_ceiling(rep, 0.0);
    }
    rep.row("server max RSS", format!("{server_rss:.0} MB"));
    rep.verdict(
        "lost / duplicated / order violations (all steps)",
        &verdict,
        String::new(),
    );
    rep.set("mode", "find-max");
    rep.set("drained", drained);
    rep.set("max_rss_mb", server_rss);
    Ok(verdict.is_clean() && drained)
}
