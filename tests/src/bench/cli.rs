//! Command-line options (clap derive) and their resolved values (`--smoke` defaults applied).

use std::path::PathBuf;

use clap::Parser;

/// End-to-end load generator for s2-sink.
///
/// Starts s2-lite and the `s2-sink` server, measures s2-lite's append ceiling in the same run
/// with records shaped like the sink's (same headers, same body size; 1 and 2 appends in
/// flight), offers load over the ingest API, reads the stream back and reports delivered
/// messages/s, latency ingest→S2, CPU of the server, s2-lite and the generator separately,
/// lost / duplicated / out-of-order messages.
///
/// Modes: closed loop (default: every producer sends its next batch when the previous one is
/// answered); open loop (`--rate`: batch k is scheduled at t0 + k·interval and stamped with that
/// intended time); step (`--find-max`: open-loop steps of rising rate until delivery stops
/// keeping up or p99 exceeds `--max-p99-ms`); recovery (`--restart-pending N`).
///
/// Exit status: 0 when every accepted message was delivered exactly once and in order per
/// group; 1 on loss, duplicates, order violations or an undrained backlog; 2 on a usage or
/// setup error. Never non-zero because of speed.
#[derive(Parser, Debug, Clone)]
#[command(name = "s2-sink-bench", version, about, long_about)]
pub struct Cli {
    /// Seconds of offered load (closed and open loop). [default: 30; --smoke: 3]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Number of message groups the load is spread over (uniformly at random).
    /// [default: 10000; --smoke: 200]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub groups: Option<u64>,

    /// Size of each message's JSON in bytes (padded). [default: 1024; --smoke: 256]
    #[arg(long, value_name = "BYTES")]
    pub size: Option<usize>,

    /// Offered rate in messages/s (open loop). Batch k is scheduled at t0 + k·interval and
    /// carries that intended time; latency is measured from it, so a generator or server that
    /// falls behind shows up in the latency. Without it: closed loop.
    #[arg(long, value_name = "MSG_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Concurrent HTTP producers (closed loop) or connection lanes that send the scheduled
    /// batches (open loop). Each sends one request at a time. [default: 8 closed loop, 16 open
    /// loop; --smoke: 2]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub producers: Option<u64>,

    /// Messages per NDJSON ingest request. In open loop a batch is rate/100 messages (100
    /// requests/s), at most this many. [default: 500; --smoke: 200]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,

    /// Send every message to one group (the "hot group" case) instead of `--groups`.
    #[arg(long)]
    pub hot: bool,

    /// Seconds of each ceiling measurement (unary appends 1 and 2 in flight, and 2 in flight
    /// on an append session); 0 skips the ceiling. [default: 10; --smoke: 1]
    #[arg(long, value_name = "SECS")]
    pub ceiling_secs: Option<f64>,

    /// CI mode: a few seconds of small messages (defaults marked --smoke above); checks
    /// correctness, reports speed without judging it.
    #[arg(long)]
    pub smoke: bool,

    /// The `s2-sink` binary to run (default: $S2SINK_BIN, else target/release/s2-sink when it
    /// exists, else target/debug/s2-sink).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// Sets the sink's `max_live_groups` (group actors alive at once).
    #[arg(long, value_name = "N")]
    pub live_groups: Option<u64>,

    /// Extra `key = value` TOML line for the sink's table in the server config (repeatable),
    /// e.g. `--sink-option 'max_live_groups = 500'`.
    #[arg(long, value_name = "TOML")]
    pub sink_option: Vec<String>,

    /// Extra `key = value` TOML line for the server config's `[server]` table (repeatable),
    /// e.g. `--server-option 'max_held_bytes = 16777216'`.
    #[arg(long, value_name = "TOML")]
    pub server_option: Vec<String>,

    /// Keep the server's log in this file (appended), with the engine's debug lines (each
    /// append), to see where time goes.
    #[arg(long, value_name = "PATH")]
    pub server_log: Option<PathBuf>,

    /// Recovery mode: fill the queue with N messages while delivery is throttled, SIGKILL the
    /// server, restart it normally and time healthy / first new record / drained.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "find_max"])]
    pub restart_pending: Option<u64>,

    /// Step mode: offer `--start-rate`, then `--step` more each step (open loop,
    /// `--step-secs` each), until delivery no longer keeps up or p99 exceeds `--max-p99-ms`;
    /// reports the highest rate sustained.
    #[arg(long, conflicts_with = "rate")]
    pub find_max: bool,

    /// First offered rate of `--find-max`, messages/s.
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub start_rate: u64,

    /// Rate increase per `--find-max` step, messages/s.
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub step: u64,

    /// Seconds each `--find-max` step offers load. [default: 10; --smoke: 2]
    #[arg(long, value_name = "SECS")]
    pub step_secs: Option<f64>,

    /// `--find-max`: a step fails when the p99 latency of its messages exceeds this.
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    pub max_p99_ms: f64,

    /// `--find-max`: at most this many steps.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_steps: u32,

    /// Seconds to wait for the backlog to drain after the load stops before giving up (the run
    /// then fails with "drained: false").
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub drain_timeout: f64,

    /// Print one JSON object with the headline figures as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// The options with defaults resolved.
#[derive(Debug, Clone)]
pub struct Opts {
    pub duration: f64,
    pub groups: u64,
    pub size: usize,
    pub rate: Option<u64>,
    pub producers: usize,
    pub batch: usize,
    pub hot: bool,
    pub ceiling_secs: f64,
    pub server_bin: Option<PathBuf>,
    pub live_groups: Option<u64>,
    pub sink_options: Vec<String>,
    pub server_options: Vec<String>,
    pub server_log: Option<PathBuf>,
    pub restart_pending: Option<u64>,
    pub find_max: bool,
    pub start_rate: u64,
    pub step: u64,
    pub step_secs: f64,
    pub max_p99_ms: f64,
    pub max_steps: u32,
    pub drain_timeout: f64,
    pub json: bool,
}

impl Opts {
    /// Parses the command line (exits with clap's message and status 2 on a usage error).
    pub fn parse() -> Opts {
        Opts::from(Cli::parse())
    }

    /// Groups messages are spread over (1 with `--hot`).
    /// The load these options describe, against `url`, for producers from `first_producer`.
    pub fn load_spec(&self, url: &str, first_producer: u64, seed: u64) -> super::load::LoadSpec {
        super::load::LoadSpec {
            url: url.to_string(),
            sink: super::setup::SINK.into(),
            groups: self.effective_groups(),
            size: self.size,
            batch: self.batch,
            lanes: self.producers,
            first_producer,
            seed,
        }
    }

    pub fn effective_groups(&self) -> u64 {
        if self.hot {
            1
        } else {
            self.groups
        }
    }
}

impl From<Cli> for Opts {
    fn from(c: Cli) -> Opts {
        let s = c.smoke;
        let pick =
            |v: Option<f64>, normal: f64, smoke: f64| v.unwrap_or(if s { smoke } else { normal });
        let open = c.rate.is_some() || c.find_max;
        Opts {
            duration: pick(c.duration, 30.0, 3.0),
            groups: c.groups.unwrap_or(if s { 200 } else { 10_000 }),
            size: c.size.unwrap_or(if s { 256 } else { 1024 }),
            rate: c.rate,
            producers: c.producers.unwrap_or(if s {
                2
            } else if open {
                16
            } else {
                8
            }) as usize,
            batch: c.batch.unwrap_or(if s { 200 } else { 500 }) as usize,
            hot: c.hot,
            ceiling_secs: pick(c.ceiling_secs, 10.0, 1.0),
            server_bin: c.server_bin,
            live_groups: c.live_groups,
            sink_options: c.sink_option,
            server_options: c.server_option,
            server_log: c.server_log,
            restart_pending: c.restart_pending,
            find_max: c.find_max,
            start_rate: c.start_rate,
            step: c.step,
            step_secs: pick(c.step_secs, 10.0, 2.0),
            max_p99_ms: c.max_p99_ms,
            max_steps: c.max_steps.max(1),
            drain_timeout: c.drain_timeout,
            json: c.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn smoke_defaults_yield_to_explicit_options() {
        let o = Opts::from(Cli::parse_from(["b", "--smoke", "--duration", "7"]));
        assert_eq!((o.duration, o.groups, o.size), (7.0, 200, 256));
    }

    #[test]
    fn unknown_options_are_rejected() {
        assert!(Cli::try_parse_from(["b", "--nope"]).is_err());
    }
}
