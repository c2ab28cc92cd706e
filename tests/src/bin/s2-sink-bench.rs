//! `s2-sink-bench`: the end-to-end load generator (see `--help` and docs/BENCHMARKS.md).
//!
//! Starts s2-lite, measures its append ceiling with sink-shaped records (1 and 2 appends in
//! flight), starts the `s2-sink` server, offers load over the ingest API (closed loop, open loop
//! at `--rate`, rising steps with `--find-max`, or a crash with `--restart-pending N`), reads the
//! stream back and reports throughput, latency, CPU per delivered message of the server, s2-lite
//! and the generator, memory, and lost / duplicated / out-of-order messages.
//!
//! Exit status: 1 on loss, duplicates, order violations or an undrained backlog; 2 on a setup
//! error; never because of speed.
//!
//! Modules (tests/src/bench/), one job each: `cli` (options), `setup` (s2-lite, server, config), `ceiling` (the
//! same-run ceiling), `load` (message format, closed/open-loop producers), `verify` (read back,
//! exactly-once and order checks, latency), `procstat` (CPU and RSS from /proc), `run` (closed
//! and open loop), `findmax` (step mode), `restart` (recovery), `report` (table and JSON).

#[path = "../bench/mod.rs"]
mod bench;

use bench::cli::Opts;
use bench::report::Report;
use bench::{findmax, restart, run, setup};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = Opts::parse();
    let code = match bench(&o).await {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("FAILED: messages lost, duplicated or out of order, or the backlog did not drain (see the table)");
            1
        }
        Err(e) => {
            eprintln!("s2-sink-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs the selected mode and prints its report; `Ok(false)` when delivery was not clean.
/// Everything it starts (s2-lite, the server) is stopped when it returns.
async fn bench(o: &Opts) -> Result<bool, String> {
    let bin = setup::choose_server_bin(o)?;
    eprintln!("server binary: {}", bin.display());
    eprintln!("options: {o:?}");
    let env = setup::start(o).await?;
    let mut rep = Report::default();
    let clean = if let Some(n) = o.restart_pending {
        restart::restart_with_pending(o, &env, n, &mut rep).await?
    } else if o.find_max {
        findmax::find_max(o, &env, &mut rep).await?
    } else {
        run::run(o, &env, &mut rep).await?
    };
    rep.set("clean", clean);
    rep.print(o.json);
    Ok(clean)
}
