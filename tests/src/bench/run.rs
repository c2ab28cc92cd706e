//! The default modes: closed loop, or open loop at `--rate`. Offer for `--duration`, wait for
//! the backlog to drain, read the stream back, check it and report ingest-phase and drain-phase
//! figures separately.

use std::time::Duration;

use super::cli::Opts;
use super::load::{offer, Pace};
use super::procstat::{status_mb, CpuDelta, CpuSnapshot};
use super::report::{thousands, Report};
use super::setup::{self, Env, SINK, STREAM};
use super::verify::{check, slow_windows, Latency, StreamReader};

/// Runs one closed- or open-loop measurement; returns whether the delivery was clean.
pub async fn run(o: &Opts, env: &Env, rep: &mut Report) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let server = setup::start_server(o, dir.path(), &setup::server_config(o, env, "")).await;
    let spid = server.pid();
    let spec = o.load_spec(&server.url, 0, 1);
    let duration = Duration::from_secs_f64(o.duration);
    let pace = match o.rate {
        Some(rate) => Pace::Open { rate, duration },
        None => Pace::Closed { duration },
    };
    eprintln!("offering for {:.0} s ({pace:?})", o.duration);
    let c0 = CpuSnapshot::take(spid, env.lite_pid);
    let offered = offer(&spec, pace).await?;
    let c1 = CpuSnapshot::take(spid, env.lite_pid);
    eprintln!("offered {} messages; draining", offered.accepted);
    let drained = setup::wait_drained(&server.url, Duration::from_secs_f64(o.drain_timeout)).await;
    let c2 = CpuSnapshot::take(spid, env.lite_pid);
    // The engine's own counters (appends, pipelining, reconciliations) before it stops.
    let engine_stats = sink_stats(&server.url).await;
    let server_rss = spid.and_then(|p| status_mb(p, "VmHWM")).unwrap_or(0.0);
    let lite_rss = env
        .lite_pid
        .and_then(|p| status_mb(p, "VmRSS"))
        .unwrap_or(0.0);
    drop(server);

    let mut reader = StreamReader::new(&env.basin, STREAM);
    let records = reader.read_new(&env.lite.client()).await?;
    let verdict = check(&records, &offered.last_seq);

    // Phases, from S2's arrival timestamps: during the offering, and the drain after it.
    let end_ms = offered.end_us / 1000;
    let in_offer = records.iter().filter(|r| r.ts_ms <= end_ms).count() as u64;
    let last_ms = records.iter().map(|r| r.ts_ms).max().unwrap_or(end_ms);
    let offer_s = offered.secs().max(1e-3);
    let drain_s = last_ms.saturating_sub(end_ms) as f64 / 1000.0;
    let after = (records.len() as u64).saturating_sub(in_offer);
    let delivered_per_s = in_offer as f64 / offer_s;
    let total_s = (last_ms * 1000).saturating_sub(offered.start_us) as f64 / 1e6;
    let n = verdict.delivered;
    let cpu = c2.since(&c0);
    let lat = Latency::of(&records);

    let mode = match o.rate {
        Some(r) => format!(
            "open loop, {r} msg/s scheduled ({} msg per request, {} lanes)",
            spec.open_batch(r),
            o.producers
        ),
        None => format!(
            "closed loop ({} producers × {}-message requests)",
            o.producers, o.batch
        ),
    };
    rep.row("mode", mode);
    rep.row(
        "message size / groups",
        format!(
            "{} B / {}",
            o.size,
            if o.hot {
                "1 (hot)".into()
            } else {
                o.groups.to_string()
            }
        ),
    );
    rep.row(
        "ingest phase: offered for",
        format!(
            "{offer_s:.1} s; accepted (202) {} = **{:.0} msg/s**",
            thousands(offered.accepted),
            offered.accepted as f64 / offer_s
        ),
    );
    rep.row(
        "ingest phase: 429 answers (retried after 100 ms, same messages)",
        format!(
            "{} requests / {} messages",
            offered.rejected_requests,
            thousands(offered.rejected_msgs)
        ),
    );
    if o.rate.is_some() {
        rep.row(
            "generator behind schedule",
            format!(
                "{} batches sent > 10 ms late; max lag {:.0} ms (counted in the latency)",
                offered.late_batches, offered.max_send_lag_ms
            ),
        );
    }
    rep.row(
        "ingest phase: delivered",
        format!("{} = **{delivered_per_s:.0} msg/s**", thousands(in_offer)),
    );
    rep.row(
        "drain phase (after the load stopped)",
        format!(
            "{} more in {drain_s:.1} s{}; drained: {drained}",
            thousands(after),
            if drain_s > 0.0 {
                format!(" = {:.0} msg/s", after as f64 / drain_s)
            } else {
                String::new()
            }
        ),
    );
    rep.row(
        "delivered in all",
        format!(
            "{} in {total_s:.1} s = {:.0} msg/s",
            thousands(n),
            n as f64 / total_s.max(1e-3)
        ),
    );
    env.report_ceiling(rep, delivered_per_s);
    if let Some(st) = &engine_stats {
        let get = |k: &str| st[k].as_u64().unwrap_or(0);
        rep.row(
            "engine: appends / max appends in flight / pipeline reorders (412) / reconciles / requeued",
            format!(
                "{} / {} / {} / {} / {}",
                thousands(get("appends")),
                get("max_appends_in_flight"),
                get("pipeline_reorders"),
                get("reconciles"),
                get("requeued")
            ),
        );
        rep.set("engine_stats", st.clone());
    }
    rep.row(
        format!(
            "latency ingest→S2 p50 / p99 / p99.9 / max (from {})",
            if o.rate.is_some() {
                "intended send time"
            } else {
                "message creation"
            }
        ),
        format!(
            "{:.0} / **{:.0}** / {:.0} / {:.0} ms",
            lat.p50, lat.p99, lat.p999, lat.max
        ),
    );
    // Where the tail comes from: 100 ms windows (by intended send time) with a message
    // over 50 ms, worst first.
    let slow = slow_windows(&records, offered.start_us, 100, 50.0);
    rep.row(
        "100 ms windows with a latency > 50 ms (worst 3: start / max / messages over)",
        format!(
            "{}{}",
            slow.len(),
            slow.iter()
                .take(3)
                .map(|w| format!("; +{:.1} s / {:.0} ms / {}", w.at_s, w.max_ms, w.slow))
                .collect::<String>()
        ),
    );
    rep.set("slow_windows", slow.len());
    rep.set(
        "worst_windows",
        slow.iter()
            .take(5)
            .map(|w| serde_json::json!({"at_s": w.at_s, "max_ms": w.max_ms, "slow": w.slow}))
            .collect::<Vec<_>>(),
    );
    report_cpu(rep, &cpu, n, Some((&c1.since(&c0), &c2.since(&c1))));
    rep.row(
        "max RSS server / s2-lite (at the end)",
        format!("{server_rss:.0} MB / {lite_rss:.0} MB"),
    );
    let foreign = if verdict.unexpected + reader.foreign > 0 {
        format!(
            " ({} unacknowledged, {} foreign records)",
            verdict.unexpected, reader.foreign
        )
    } else {
        String::new()
    };
    rep.verdict("lost / duplicated / order violations", &verdict, foreign);

    rep.set("mode", if o.rate.is_some() { "open" } else { "closed" });
    rep.set("offered_rate", o.rate);
    rep.set("accepted", offered.accepted);
    rep.set("accepted_per_s", offered.accepted as f64 / offer_s);
    rep.set("rejected_429_msgs", offered.rejected_msgs);
    rep.set("delivered", n);
    rep.set("delivered_per_s", delivered_per_s);
    rep.set("delivered_total_per_s", n as f64 / total_s.max(1e-3));
    rep.set("drain_s", drain_s);
    rep.set("drained", drained);
    rep.set("p50_ms", lat.p50);
    rep.set("p99_ms", lat.p99);
    rep.set("p999_ms", lat.p999);
    rep.set("max_latency_ms", lat.max);
    rep.set("max_rss_mb", server_rss);
    rep.set("s2lite_rss_mb", lite_rss);
    Ok(verdict.is_clean() && drained)
}

/// CPU rows (per process, per delivered message) and their JSON fields; `phases` splits the
/// window into ingest and drain.
pub fn report_cpu(
    rep: &mut Report,
    cpu: &CpuDelta,
    delivered: u64,
    phases: Option<(&CpuDelta, &CpuDelta)>,
) {
    let us = |s: f64| CpuDelta::us_per(s, delivered);
    rep.row(
        "CPU µs per delivered message: server / s2-lite / generator",
        format!(
            "**{:.1}** / {:.1} / {:.1} (over {:.1} s: {})",
            us(cpu.server_s),
            us(cpu.lite_s),
            us(cpu.generator_s),
            cpu.wall_s,
            cpu.percents()
        ),
    );
    if let Some((ingest, drain)) = phases {
        rep.row(
            "CPU by phase",
            format!(
                "ingest ({:.1} s): {}; drain ({:.1} s): {}",
                ingest.wall_s,
                ingest.percents(),
                drain.wall_s,
                drain.percents()
            ),
        );
    }
    // What sled writes and reads back per message, next to the CPU it costs (the queue bench
    // alone writes ~3.7 KB per 1 KB message, docs/BENCHMARKS.md).
    let kb = |b: u64| b as f64 / 1024.0 / delivered.max(1) as f64;
    rep.row(
        "server I/O per delivered message: written to disk / read back (sled's log; reads include the page cache)",
        format!(
            "{:.1} KB / {:.1} KB",
            kb(cpu.server_wrote),
            kb(cpu.server_read)
        ),
    );
    rep.set("server_write_kb_per_msg", kb(cpu.server_wrote));
    rep.set("server_read_kb_per_msg", kb(cpu.server_read));
    rep.set("server_cpu_us_per_msg", us(cpu.server_s));
    rep.set("s2lite_cpu_us_per_msg", us(cpu.lite_s));
    rep.set("loadgen_cpu_us_per_msg", us(cpu.generator_s));
    rep.set("server_cpu_s", cpu.server_s);
    rep.set("s2lite_cpu_s", cpu.lite_s);
    rep.set("loadgen_cpu_s", cpu.generator_s);
    rep.set("cpu_window_s", cpu.wall_s);
}

/// The sink's `stats` object from the management API (`None` if the server did not answer).
async fn sink_stats(url: &str) -> Option<serde_json::Value> {
    let http = s2sink_tests::process::http_client();
    let r = http
        .get(format!("{url}/api/sinks/{SINK}"))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    Some(v["stats"].clone())
}
