//! The `s2-sink` binary: `serve`, and CLI commands that talk to a running server.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use s2sink_server::cli::{self, Cli, Command, LogFormat};
use s2sink_server::{config, serve};

/// glibc malloc's arena locks dominated profiles under load (sled clones nodes, JSON
/// allocates per message); mimalloc removes that contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    s2sink_queue::tune_mimalloc();
    // Help and version exit 0, a bad command line exits 2 with clap's message and usage.
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve_cmd(args),
        Command::Check(args) => check_cmd(&args.config),
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        remote => cli::run(remote),
    }
}

fn serve_cmd(args: cli::ServeArgs) -> ExitCode {
    init_logging(args.log_format == LogFormat::Json);
    let path = args.config.config;
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    apply_memory_mode(config.server.memory);
    let result = actix_rt::System::new().block_on(serve::run(config, Some(path)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `server.memory` for this binary's allocator, before the queue opens and load arrives
/// (`main` has already set `fast`'s settings). `MIMALLOC_*` variables an operator set win.
fn apply_memory_mode(mode: config::MemoryMode) {
    if mode != config::MemoryMode::Lean {
        return;
    }
    let purge_delay_from_env =
        !s2sink_queue::return_freed_memory_after(config::LEAN_PURGE_DELAY_MS);
    if let Err(e) = s2sink_queue::disable_huge_pages() {
        tracing::warn!(error = %e, "memory = \"lean\": could not turn transparent huge pages off");
    }
    // What is in effect, whoever set it (this call or an operator's MIMALLOC_* variables).
    tracing::info!(
        freed_memory_returned_after_ms = s2sink_queue::purge_delay_ms(),
        purge_delay_from_env,
        huge_pages_off = s2sink_queue::huge_pages_disabled(),
        "memory = \"lean\""
    );
}

/// The config at `path` with the environment's overrides; a config error is printed and
/// becomes exit status 2 (before anything listens or connects).
fn load_config(path: &Path) -> Result<config::Config, ExitCode> {
    let env: HashMap<String, String> = std::env::vars().collect();
    config::load(path, &env).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `s2-sink check`: loads the config as `serve` does (exit 2 on an error), then checks each
/// sink's S2 side and prints a table; exit 1 when a check failed.
fn check_cmd(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let rows = rt.block_on(s2sink_server::check::check_sinks(&config.sinks));
    print!(
        "config {}: ok\n{}",
        path.display(),
        s2sink_server::check::render(&rows)
    );
    if s2sink_server::check::all_ok(&rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Exit status of a server that stopped on an error: 69 (EX_UNAVAILABLE) when the listen
/// address cannot be taken (e.g. the port is in use), 74 (EX_IOERR) on a fatal storage error,
/// 2 for config errors (found before listening), 1 otherwise.
fn exit_code(e: &s2sink_server::ServerError) -> u8 {
    use s2sink_server::ServerError;
    match e {
        ServerError::Listen { .. } => 69,
        e if e.is_fatal() => 74,
        ServerError::Config { .. } => 2,
        _ => 1,
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal (files and pipes get plain text), and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
