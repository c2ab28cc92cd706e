//! The CLI commands that talk to a running server over its HTTP API: `send`, `sinks`,
//! `reload` and `messages …`. Each prints the server's JSON answer (`send` a summary) and fails
//! with the server's error message and exit status 1.

use std::io::Read;
use std::process::ExitCode;

use serde_json::Value;

use super::progress::{Progress, EVERY};
use super::{ApiArgs, Command, ListArgs, MessagesCommand, SendArgs, StateArg};

struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    /// The URL and token come from the flags or, through clap, `S2SINK_URL` and
    /// `S2SINK_API_TOKEN`.
    fn new(args: &ApiArgs) -> Api {
        let (url, token) = (&args.url, args.token.clone());
        Api {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
            url: url.trim_end_matches('/').to_string(),
            token,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((bytes, ct)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e}", self.url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let msg = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Err(format!("HTTP {}: {msg}", status.as_u16()))
        }
    }
}

/// A single-threaded runtime for a CLI command; failing to build one is exit status 1.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
}

/// Runs `send`, `sinks`, `reload` or `messages` (any other command is a bug: exit 1).
pub fn run(cmd: Command) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        match cmd {
            Command::Sinks(api) => {
                let v = Api::new(&api)
                    .call(reqwest::Method::GET, "/api/sinks", None)
                    .await?;
                print_json(&v);
                Ok(())
            }
            Command::Send(args) => send(&args).await,
            Command::Reload(api) => {
                let v = Api::new(&api)
                    .call(reqwest::Method::POST, "/api/reload", None)
                    .await?;
                print_json(&v);
                Ok(())
            }
            Command::Messages(m) => messages(m.command).await,
            _ => Err("not a command for a running server".to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Reads the messages (whole, so a malformed one is refused before anything is sent), then
/// posts them `--batch` at a time; the progress line shows on a terminal only.
async fn send(args: &SendArgs) -> Result<(), String> {
    let api = Api::new(&args.api);
    let sink = &args.sink;
    let input = match args.file.as_str() {
        "-" => {
            let mut s = Vec::new();
            std::io::stdin()
                .read_to_end(&mut s)
                .map_err(|e| format!("reading stdin: {e}"))?;
            s
        }
        path => std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?,
    };
    let is_array = input.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let messages = crate::http::parse_messages(&input, !is_array).map_err(|e| e.message)?;
    let total = messages.len();
    let mut path = format!("/api/sinks/{sink}/messages");
    if let Some(g) = &args.group {
        path.push_str(&format!("?group={}", urlencode(g)));
    }
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX).max(1);
    let mut progress = Progress::stderr(total);
    let (mut sent, mut bytes, mut first_id, mut last_id) = (0usize, 0u64, None, None);
    for chunk in messages.chunks(batch) {
        let body: String = chunk.iter().map(|(raw, _)| format!("{raw}\n")).collect();
        let len = body.len() as u64;
        let call = api.call(
            reqwest::Method::POST,
            &path,
            Some((body.into_bytes(), "application/x-ndjson")),
        );
        let v = if progress.is_shown() {
            // Redraw while a slow request is out, so the rate shows a stall.
            tokio::pin!(call);
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = tick.tick() => progress.update(sent, bytes),
                }
            }
        } else {
            call.await
        }
        .map_err(|e| {
            progress.finish(sent, bytes);
            format!("after {sent} of {total} accepted: {e}")
        })?;
        if let Some(ids) = v["ids"].as_array() {
            first_id = first_id.or_else(|| ids.first().and_then(Value::as_u64));
            last_id = ids.last().and_then(Value::as_u64).or(last_id);
        }
        sent += chunk.len();
        bytes += len;
        progress.update(sent, bytes);
    }
    progress.finish(sent, bytes);
    println!(
        "accepted {sent} messages into sink `{sink}` (ids {}..{})",
        first_id.map_or("-".into(), |i| i.to_string()),
        last_id.map_or("-".into(), |i| i.to_string())
    );
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn messages(cmd: MessagesCommand) -> Result<(), String> {
    use reqwest::Method;
    let (method, path, sink) = match &cmd {
        MessagesCommand::List(l) => (Method::GET, list_path(l), &l.sink),
        MessagesCommand::Show(m) => (
            Method::GET,
            format!("/api/sinks/{}/messages/{}", m.sink.sink, m.id),
            &m.sink,
        ),
        MessagesCommand::Ack(m) | MessagesCommand::Redeliver(m) | MessagesCommand::Discard(m) => {
            let action = match cmd {
                MessagesCommand::Ack(_) => "acknowledge",
                MessagesCommand::Redeliver(_) => "redeliver",
                _ => "discard",
            };
            (
                Method::POST,
                format!("/api/sinks/{}/messages/{}/{action}", m.sink.sink, m.id),
                &m.sink,
            )
        }
        MessagesCommand::RedeliverAll(s) => {
            (Method::POST, format!("/api/sinks/{}/redeliver", s.sink), s)
        }
    };
    let v = Api::new(&sink.api).call(method, &path, None).await?;
    print_json(&v);
    Ok(())
}

/// The list route and query of `messages list`: discarded messages have their own route, paged
/// backwards with `before`; the others are filtered by state, group and paged with `after`.
fn list_path(l: &ListArgs) -> String {
    let sink = &l.sink.sink;
    let mut q: Vec<String> = vec![];
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(&v)));
        }
    };
    if l.state == Some(StateArg::Discarded) {
        add("limit", l.limit.map(|n| n.to_string()));
        add("before", l.before.clone());
        return format!("/api/sinks/{sink}/discarded?{}", q.join("&"));
    }
    add("state", l.state.map(|s| s.as_query().to_string()));
    add("group", l.group.clone());
    add("limit", l.limit.map(|n| n.to_string()));
    add("after", l.after.map(|n| n.to_string()));
    add("order", l.order.map(|o| o.as_query().to_string()));
    format!("/api/sinks/{sink}/messages?{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn list(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(["s2-sink", "messages", "list"].iter().chain(args)).unwrap();
        let Command::Messages(m) = cli.command else {
            panic!("{cli:?}")
        };
        let MessagesCommand::List(l) = m.command else {
            panic!("not list")
        };
        list_path(&l)
    }

    #[test]
    fn list_queries() {
        assert_eq!(list(&["--sink", "s"]), "/api/sinks/s/messages?");
        assert_eq!(
            list(&[
                "--sink",
                "s",
                "--state",
                "backing-off",
                "--group",
                "a/b",
                "--order",
                "newest"
            ]),
            "/api/sinks/s/messages?state=backing_off&group=a%2Fb&order=newest"
        );
        assert_eq!(
            list(&[
                "--sink",
                "s",
                "--state",
                "discarded",
                "--limit",
                "5",
                "--before",
                "9"
            ]),
            "/api/sinks/s/discarded?limit=5&before=9"
        );
    }
}
