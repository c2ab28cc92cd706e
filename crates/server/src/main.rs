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
  s2-sink check [--config FILE]     (config, functions, and each sink's S2 side; exit 0 ok, 1 not)
  s2-sink send --sink NAME [--group G] [--batch N] [FILE|-]   (NDJSON or a JSON array)
  s2-sink sinks
  s2-sink reload                    (re-reads the server's config file, as SIGHUP does)
  s2-sink messages list --sink NAME [--state pending|backing_off|failed|all] [--group G] [--limit N]
  s2-sink messages list --sink NAME --state discarded [--limit N] [--before CURSOR]
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
    let rest = &args[1..];
    if matches!(cmd.as_str(), "-h" | "--help" | "help")
        || rest.iter().any(|a| a == "-h" || a == "--help")
    {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    const CLIENT: [&str; 2] = ["url", "token"];
    // (options, most positionals) per command.
    let (known, max_positional): (Vec<&str>, usize) = match cmd.as_str() {
        "serve" => (vec!["config", "log-format"], 0),
        "check" => (vec!["config"], 0),
        "send" => ([&["sink", "group", "batch"][..], &CLIENT].concat(), 1),
        "sinks" | "reload" => (CLIENT.to_vec(), 0),
        "messages" => (
            [
                &[
                    "sink", "state", "group", "limit", "after", "before", "order",
                ][..],
                &CLIENT,
            ]
            .concat(),
            2,
        ),
        other => return usage_error(&format!("unknown command `{other}`")),
    };
    let parsed = match cli::Args::parse(rest, &known) {
        Ok(a) => a,
        Err(e) => return usage_error(&format!("{cmd}: {e}")),
    };
    if parsed.positional.len() > max_positional {
        return usage_error(&format!(
            "{cmd}: unexpected argument `{}`",
            parsed.positional[max_positional]
        ));
    }
    match cmd.as_str() {
        "serve" => serve_cmd(parsed),
        "check" => check_cmd(parsed),
        _ => cli::run(&cmd, parsed),
    }
}

/// A command line that cannot be run: the message, a pointer to the usage, exit status 2.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

fn serve_cmd(args: cli::Args) -> ExitCode {
    let path = PathBuf::from(args.opt("config").unwrap_or("s2-sink.toml"));
    let json_logs = match args.opt("log-format") {
        None | Some("human") => false,
        Some("json") => true,
        Some(other) => {
            return usage_error(&format!(
                "serve: --log-format `{other}` is not human or json"
            ))
        }
    };
    init_logging(json_logs);
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = actix_rt::System::new().block_on(serve::run(config, Some(path)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The config at `path` with the environment's overrides; a config error is printed and
/// becomes exit status 2 (before anything listens or connects).
fn load_config(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    let env: HashMap<String, String> = std::env::vars().collect();
    config::load(path, &env).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `s2-sink check`: loads the config as `serve` does (exit 2 on an error), then checks each
/// sink's S2 side and prints a table; exit 1 when a check failed.
fn check_cmd(args: cli::Args) -> ExitCode {
    let path = PathBuf::from(args.opt("config").unwrap_or("s2-sink.toml"));
    let config = match load_config(&path) {
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
