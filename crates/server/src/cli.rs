//! CLI commands that talk to a running server over its HTTP API.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use serde_json::Value;

/// Parsed `--key value` options and positional arguments.
#[derive(Debug, Default)]
pub struct Args {
    pub opts: HashMap<String, String>,
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `--key value`, `--key=value` and positionals (`-` is positional, everything after
    /// `--` too). Only the options in `known` are accepted: an unknown option, one without a
    /// value, or one given twice is an error naming it (a typo must never be taken as data).
    pub fn parse(args: &[String], known: &[&str]) -> Result<Args, String> {
        let mut out = Args::default();
        let list = || {
            if known.is_empty() {
                "no options".to_string()
            } else {
                known
                    .iter()
                    .map(|k| format!("--{k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                out.positional.extend(args[i + 1..].iter().cloned());
                break;
            }
            if let Some(k) = a.strip_prefix("--") {
                let (k, v) = match k.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (k, None),
                };
                if !known.contains(&k) {
                    return Err(format!(
                        "unknown option `--{k}` (this command takes {})",
                        list()
                    ));
                }
                let v = match v {
                    Some(v) => v,
                    None => match args.get(i + 1) {
                        Some(v) if !v.starts_with("--") => {
                            i += 1;
                            v.clone()
                        }
                        _ => return Err(format!("option `--{k}` needs a value")),
                    },
                };
                if out.opts.insert(k.to_string(), v).is_some() {
                    return Err(format!("option `--{k}` is given more than once"));
                }
            } else if a.len() > 1 && a.starts_with('-') {
                return Err(format!(
                    "unknown option `{a}` (this command takes {})",
                    list()
                ));
            } else {
                out.positional.push(a.clone());
            }
            i += 1;
        }
        Ok(out)
    }

    /// An option's value.
    pub fn opt(&self, key: &str) -> Option<&str> {
        self.opts.get(key).map(String::as_str)
    }
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    fn new(args: &Args) -> Api {
        let url = args
            .opt("url")
            .map(str::to_string)
            .or_else(|| std::env::var("S2SINK_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:7376".into());
        let token = args
            .opt("token")
            .map(str::to_string)
            .or_else(|| std::env::var("S2SINK_API_TOKEN").ok());
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

/// Runs `send`, `sinks`, `reload` or `messages`.
pub fn run(cmd: &str, args: Args) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let api = Api::new(&args);
        match cmd {
            "sinks" => {
                let v = api.call(reqwest::Method::GET, "/api/sinks", None).await?;
                print_json(&v);
                Ok(())
            }
            "send" => send(&api, &args).await,
            "reload" => {
                let v = api.call(reqwest::Method::POST, "/api/reload", None).await?;
                print_json(&v);
                Ok(())
            }
            "messages" => messages(&api, &args).await,
            _ => Err(format!("unknown command `{cmd}`")),
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

fn need<'a>(args: &'a Args, key: &str) -> Result<&'a str, String> {
    args.opt(key).ok_or_else(|| format!("missing --{key}"))
}

async fn send(api: &Api, args: &Args) -> Result<(), String> {
    let sink = need(args, "sink")?;
    let batch: usize = args
        .opt("batch")
        .map(|b| {
            b.parse()
                .map_err(|_| format!("--batch `{b}` is not a number"))
        })
        .transpose()?
        .unwrap_or(500)
        .max(1);
    let input = match args.positional.first().map(String::as_str) {
        None | Some("-") => {
            let mut s = Vec::new();
            std::io::stdin()
                .read_to_end(&mut s)
                .map_err(|e| format!("reading stdin: {e}"))?;
            s
        }
        Some(path) => std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?,
    };
    let is_array = input.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let messages = crate::http::parse_messages(&input, !is_array).map_err(|e| e.message)?;
    let total = messages.len();
    let mut path = format!("/api/sinks/{sink}/messages");
    if let Some(g) = args.opt("group") {
        path.push_str(&format!("?group={}", urlencode(g)));
    }
    let tty = std::io::stderr().is_terminal();
    let (mut sent, mut first_id, mut last_id) = (0usize, None, None);
    for chunk in messages.chunks(batch) {
        let body: String = chunk.iter().map(|(raw, _)| format!("{raw}\n")).collect();
        let v = api
            .call(
                reqwest::Method::POST,
                &path,
                Some((body.into_bytes(), "application/x-ndjson")),
            )
            .await
            .map_err(|e| format!("after {sent} of {total} accepted: {e}"))?;
        if let Some(ids) = v["ids"].as_array() {
            first_id = first_id.or_else(|| ids.first().and_then(Value::as_u64));
            last_id = ids.last().and_then(Value::as_u64).or(last_id);
        }
        sent += chunk.len();
        if tty {
            eprint!(
                "\r[{:<30}] {sent}/{total}",
                "#".repeat(30 * sent / total.max(1))
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
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

async fn messages(api: &Api, args: &Args) -> Result<(), String> {
    let sub = args
        .positional
        .first()
        .map(String::as_str)
        .unwrap_or("list");
    let sink = need(args, "sink")?;
    let id = || {
        args.positional
            .get(1)
            .ok_or_else(|| format!("`messages {sub}` needs a message ID"))
    };
    let v = match sub {
        // Discarded messages have their own route, paged backwards with `before`.
        "list" if args.opt("state") == Some("discarded") => {
            let mut q = vec![];
            for k in ["limit", "before"] {
                if let Some(v) = args.opt(k) {
                    q.push(format!("{k}={}", urlencode(v)));
                }
            }
            let path = format!("/api/sinks/{sink}/discarded?{}", q.join("&"));
            api.call(reqwest::Method::GET, &path, None).await?
        }
        "list" => {
            let mut q = vec![];
            for k in ["state", "group", "limit", "after", "order"] {
                if let Some(v) = args.opt(k) {
                    q.push(format!("{k}={}", urlencode(v)));
                }
            }
            let path = format!("/api/sinks/{sink}/messages?{}", q.join("&"));
            api.call(reqwest::Method::GET, &path, None).await?
        }
        "show" => {
            let path = format!("/api/sinks/{sink}/messages/{}", id()?);
            api.call(reqwest::Method::GET, &path, None).await?
        }
        "ack" | "acknowledge" | "redeliver" | "discard" => {
            let action = if sub == "ack" { "acknowledge" } else { sub };
            let path = format!("/api/sinks/{sink}/messages/{}/{action}", id()?);
            api.call(reqwest::Method::POST, &path, None).await?
        }
        "redeliver-all" => {
            let path = format!("/api/sinks/{sink}/redeliver");
            api.call(reqwest::Method::POST, &path, None).await?
        }
        other => return Err(format!("unknown `messages {other}`")),
    };
    print_json(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_options_and_positionals() {
        let a = Args::parse(
            &args(&["--sink", "orders", "-", "--batch=10"]),
            &["sink", "batch"],
        )
        .unwrap();
        assert_eq!(a.opt("sink"), Some("orders"));
        assert_eq!(a.opt("batch"), Some("10"));
        assert_eq!(a.positional, vec!["-".to_string()]);
    }

    #[test]
    fn unknown_missing_and_repeated_options_are_errors() {
        let known = &["sink", "group"];
        let e = Args::parse(&args(&["--grup", "g1", "f"]), known).unwrap_err();
        assert!(e.contains("`--grup`") && e.contains("--group"), "{e}");
        let e = Args::parse(&args(&["--frobnicate", "f"]), known).unwrap_err();
        assert!(e.contains("`--frobnicate`"), "{e}");
        let e = Args::parse(&args(&["-x"]), known).unwrap_err();
        assert!(e.contains("`-x`"), "{e}");
        let e = Args::parse(&args(&["--sink"]), known).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = Args::parse(&args(&["--sink", "--group", "g"]), known).unwrap_err();
        assert!(e.contains("`--sink` needs a value"), "{e}");
        let e = Args::parse(&args(&["--sink=a", "--sink=b"]), known).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        let a = Args::parse(&args(&["--", "--not-an-option"]), known).unwrap();
        assert_eq!(a.positional, ["--not-an-option"]);
    }
}
