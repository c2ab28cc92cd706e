//! The `s2-sink` command line, declared with clap (derive) so that every command gets `--help`,
//! typos get suggestions and a bad command line exits with status 2 before anything runs.
//!
//! `serve` and `check` run in-process (see `main.rs`); the other commands talk to a running
//! server over its HTTP API ([`remote`]); `completions` prints a shell completion script.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum, ValueHint};

pub mod progress;
pub mod remote;

pub use remote::{run, runtime};

/// Exit statuses of every command, shown after `--help` and in the README: scripts and
/// systemd (`RestartPreventExitStatus`) tell a usage or config error from a failure by them.
pub const EXIT_STATUS: &str = "\
Exit status:
  0   success (check: every check passed)
  1   failure: the server answered with an error or cannot be reached; check: a check failed
  2   usage error (a bad command line) or an invalid config
  69  serve: the listen address cannot be taken (e.g. the port is in use)
  74  serve: a fatal storage error";

/// The exit statuses of the commands that talk to a running server.
const REMOTE_EXIT_STATUS: &str = "\
Exit status: 0 success; 1 the server answered with an error or cannot be reached; 2 usage error.";

/// s2-sink: delivers JSON change messages to S2 streams, exactly once, in order per group.
///
/// `serve` runs the server; `check` checks a config and each sink's S2 side. `send`, `sinks`,
/// `reload` and `messages` talk to a running server over its HTTP API.
#[derive(Parser, Debug)]
#[command(
    name = "s2-sink",
    version,
    after_help = EXIT_STATUS,
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `s2-sink`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: the delivery engine, the HTTP API and the web console.
    #[command(after_help = EXIT_STATUS)]
    Serve(ServeArgs),
    /// Check the config, its functions and each sink's S2 side (endpoint, token, basin,
    /// streams) without appending; prints one line per check.
    #[command(after_help = EXIT_STATUS)]
    Check(ConfigArg),
    /// Send messages (NDJSON or a JSON array) to a sink of a running server, in batches.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Send(SendArgs),
    /// List the sinks of a running server: counts, health, last error (tokens redacted).
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Sinks(ApiArgs),
    /// Make a running server re-read its config file, as SIGHUP does.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Reload(ApiArgs),
    /// Inspect and act on a sink's messages: list, show, ack, redeliver, discard.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Messages(MessagesArgs),
    /// Print a shell completion script to stdout (e.g. `s2-sink completions bash >
    /// /etc/bash_completion.d/s2-sink`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The config file option of `serve` and `check`.
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// The config file (TOML); `S2SINK_SERVER__<KEY>` variables override its `[server]` keys.
    #[arg(long, value_name = "FILE", default_value = "s2-sink.toml", value_hint = ValueHint::FilePath)]
    pub config: PathBuf,
}

/// `s2-sink serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Log format on stderr (`RUST_LOG` filters; colours only on a terminal, never with
    /// `NO_COLOR`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How `serve` writes its logs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Where a running server is and how to authenticate to it.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "S2SINK_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:7376",
        value_hint = ValueHint::Url
    )]
    pub url: String,
    /// The API token (the server's `api_token`), sent as `Authorization: Bearer`.
    #[arg(
        long,
        env = "S2SINK_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// The token is a secret: Debug shows only whether one is set.
impl std::fmt::Debug for ApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// `s2-sink send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// The sink to send to.
    #[arg(long, value_name = "NAME")]
    pub sink: String,
    /// The group of every message sent (`?group=` on the ingest request); without it the
    /// server takes each message's group from the message.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Messages per ingest request.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// The messages: NDJSON, or one JSON array; `-` (the default) reads stdin.
    #[arg(value_name = "FILE", default_value = "-", value_hint = ValueHint::FilePath)]
    pub file: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `s2-sink messages`: a subcommand, or the options of `list` alone (`messages --sink S` lists,
/// as it did before clap). Written by hand because the derive cannot flatten `list`'s options
/// beside the subcommands: it would demand `--sink` of the parent when a subcommand is named.
#[derive(Debug, Clone)]
pub struct MessagesArgs {
    /// The subcommand to run (`list` when none was named).
    pub command: MessagesCommand,
}

impl FromArgMatches for MessagesArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let command = if m.subcommand_name().is_some() {
            MessagesCommand::from_arg_matches(m)?
        } else {
            MessagesCommand::List(ListArgs::from_arg_matches(m)?)
        };
        Ok(MessagesArgs { command })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for MessagesArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        MessagesCommand::augment_subcommands(ListArgs::augment_args(cmd))
            .args_conflicts_with_subcommands(true)
            .subcommand_negates_reqs(true)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The subcommands of `s2-sink messages`.
#[derive(Subcommand, Debug, Clone)]
pub enum MessagesCommand {
    /// List a sink's messages by state (pending, backing off, failed, discarded), a page at a
    /// time.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    List(ListArgs),
    /// Show one message: envelope, transformed body, route, deliver count, last S2 error.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Show(MessageRef),
    /// Remove a message as delivered, without appending it (unblocks its group).
    #[command(visible_alias = "acknowledge", after_help = REMOTE_EXIT_STATUS)]
    Ack(MessageRef),
    /// Retry a message now instead of after its backoff.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Redeliver(MessageRef),
    /// Give up on a message: it moves to the sink's discarded list (unblocks its group).
    #[command(after_help = REMOTE_EXIT_STATUS)]
    Discard(MessageRef),
    /// Retry every backing-off message of a sink now.
    #[command(after_help = REMOTE_EXIT_STATUS)]
    RedeliverAll(SinkArg),
}

/// The sink a `messages` subcommand acts on, and the server.
#[derive(Args, Debug, Clone)]
pub struct SinkArg {
    /// The sink.
    #[arg(long, value_name = "NAME")]
    pub sink: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// One message of a sink.
#[derive(Args, Debug, Clone)]
pub struct MessageRef {
    #[command(flatten)]
    pub sink: SinkArg,
    /// The message ID (as `send` and `messages list` print it).
    #[arg(value_name = "ID")]
    pub id: u64,
}

/// `s2-sink messages list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub sink: SinkArg,
    /// Which messages; `discarded` pages the discarded list (newest first, with `--before`).
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    /// Only this group's messages (not with `--state discarded`).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Messages per page (the server's default when not given).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// The next page: the previous page's `next_after` (not with `--state discarded`).
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
    /// The next page of `--state discarded`: the previous page's `next_before`.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
    /// Oldest or newest first (not with `--state discarded`, which is newest first).
    #[arg(long, value_enum, value_name = "ORDER")]
    pub order: Option<OrderArg>,
}

/// The `--state` values of `messages list` (the server's `state` query, plus `discarded`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateArg {
    /// Every pending message (the default).
    All,
    /// Never failed yet.
    Pending,
    /// Alias of pending: an append in flight shows as pending until answered.
    Delivering,
    /// Waiting for its next attempt after a failure.
    #[value(name = "backing_off", alias = "backing-off")]
    BackingOff,
    /// Failed at least once.
    #[value(alias = "failing")]
    Failed,
    /// Given up on (discarded or dead-lettered), newest first.
    Discarded,
}

impl StateArg {
    /// The value the server's `state` query takes.
    pub fn as_query(self) -> &'static str {
        match self {
            StateArg::All => "all",
            StateArg::Pending => "pending",
            StateArg::Delivering => "delivering",
            StateArg::BackingOff => "backing_off",
            StateArg::Failed => "failed",
            StateArg::Discarded => "discarded",
        }
    }
}

/// The `--order` values of `messages list`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderArg {
    /// Oldest first (the default).
    Oldest,
    /// Newest first.
    Newest,
}

impl OrderArg {
    /// The value the server's `order` query takes.
    pub fn as_query(self) -> &'static str {
        match self {
            OrderArg::Oldest => "oldest",
            OrderArg::Newest => "newest",
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "s2-sink", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("s2-sink").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn messages_without_a_subcommand_lists() {
        let cli = parse(&["messages", "--sink", "orders", "--state", "failing"]).unwrap();
        let Command::Messages(m) = cli.command else {
            panic!("{cli:?}")
        };
        let MessagesCommand::List(l) = m.command else {
            panic!("not list")
        };
        assert_eq!(l.sink.sink, "orders");
        assert_eq!(l.state, Some(StateArg::Failed));
    }

    #[test]
    fn subcommands_take_their_own_options() {
        let cli = parse(&["messages", "acknowledge", "--sink", "s", "42"]).unwrap();
        let Command::Messages(m) = cli.command else {
            panic!("{cli:?}")
        };
        assert!(matches!(m.command, MessagesCommand::Ack(r) if r.id == 42));
        // A list option on `show`, a missing ID, a bad state: usage errors.
        for bad in [
            &["messages", "show", "--sink", "s", "--state", "failed", "1"][..],
            &["messages", "show", "--sink", "s"],
            &["messages", "list", "--sink", "s", "--state", "faild"],
            &["messages", "list"],
            &["send", "-"],
            &["send", "--sink", "s", "--batch", "0"],
            &["serve", "--log-format", "xml"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn debug_redacts_the_token() {
        let cli = parse(&["sinks", "--token", "sekrit-1"]).unwrap();
        let dbg = format!("{cli:?}");
        assert!(
            !dbg.contains("sekrit-1") && dbg.contains("[redacted]"),
            "{dbg}"
        );
    }

    #[test]
    fn typos_get_suggestions() {
        let e = parse(&["sned"]).unwrap_err().to_string();
        assert!(e.contains("'send'"), "{e}");
        let e = parse(&["send", "--sink", "s", "--grup", "g"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--group"), "{e}");
    }
}
