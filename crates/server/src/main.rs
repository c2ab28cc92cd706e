//! The `s2-sink` binary: `serve`, and CLI commands that talk to a running server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use s2sink_server::{cli, config, serve};

/// glibc malloc's arena locks dominated profiles under load (sled clones nodes, JSON
/// allocates per message); mimalloc removes that contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
s2-sink: delivers JSON change messages to S2 streams, exactly once, in order per group.

USAGE:
  s2-sink serve [--config FILE] [--log-format human|json]
  s2-sink send --sink NAME [--group G] [--batch N] [FILE|-]   (NDJSON or a JSON array)
  s2-sink sinks
  s2-sink messages list --sink NAME [--state pending|backing_off|failed|all] [--group G] [--limit N]
  s2-sink messages show|ack|redeliver|discard --sink NAME ID
  s2-sink messages redeliver-all --sink NAME

CLI commands talk to a running server: --url (env S2SINK_URL, default http://127.0.0.1:7376)
and --token (env S2SINK_API_TOKEN). The config file defaults to ./s2-sink.toml.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = cli::Args::parse(&args[1..]);
    match cmd.as_str() {
        "serve" => serve_cmd(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "send" | "sinks" | "messages" => cli::run(&cmd, rest),
        other => {
            eprintln!("error: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve_cmd(args: cli::Args) -> ExitCode {
    let path = PathBuf::from(args.opt("config").unwrap_or("s2-sink.toml"));
    let json_logs = args.opt("log-format") == Some("json");
    init_logging(json_logs);
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match config::load(&path, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = actix_rt::System::new().block_on(serve::run(config, Some(path)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_fatal() { 74 } else { 1 })
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
