//! `s2-sink check`: the S2 side of every sink, checked before traffic arrives, without
//! appending anything.
//!
//! A wrong basin, a missing stream or a refused token otherwise shows only as failing messages
//! once producers send. Per sink (and its dead-letter stream): the endpoint answers and the
//! token is accepted and the basin exists (one `GET /v1/basins/{basin}`), the stream exists or
//! the basin creates streams on append (`GET …/records/tail`). Whether the token may append
//! cannot be learnt without appending; the report says so. With append sessions on (the
//! default), a session is opened on the first existing stream and closed without an append:
//! an HTTP/1.1-only proxy in between shows here, not as failing deliveries. `serve` runs the
//! same checks once at start and logs what fails as warnings (it never refuses to start
//! because S2 is down).

use s2sink_client::{S2Client, S2Error};
use s2sink_core::Route;

use crate::engine::SinkSettings;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Could not be checked this way; not a failure.
    Note,
    Fail,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Note => "note",
            Outcome::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub sink: String,
    /// What was checked (`endpoint`, `basin x`, `stream x/y`, `append`).
    pub what: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// Checks every sink; rows in config order.
pub async fn check_sinks(sinks: &[SinkSettings]) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for s in sinks {
        check_sink(s, &mut rows).await;
    }
    rows
}

async fn check_sink(s: &SinkSettings, rows: &mut Vec<CheckRow>) {
    let mut row = |what: String, outcome: Outcome, detail: String| {
        rows.push(CheckRow {
            sink: s.name.clone(),
            what,
            outcome,
            detail,
        })
    };
    let client = match S2Client::new(s.s2.clone()) {
        Ok(c) => c,
        Err(e) => return row("endpoint".into(), Outcome::Fail, e.to_string()),
    };
    let endpoint = match &s.s2.endpoint {
        s2sink_client::Endpoint::Cloud => "S2 cloud".to_string(),
        s2sink_client::Endpoint::Direct(url) => url.clone(),
    };
    let Some(route) = &s.route else {
        row(
            "route".into(),
            Outcome::Note,
            "a routing function picks basin and stream per message: they are checked at delivery"
                .into(),
        );
        return;
    };
    let config = match client.basin_config(&route.basin).await {
        Ok(c) => {
            row(
                "endpoint and token".into(),
                Outcome::Ok,
                format!("{endpoint} answers and accepts the token"),
            );
            row(
                format!("basin {}", route.basin),
                Outcome::Ok,
                "exists".into(),
            );
            c
        }
        Err(e) => {
            let (what, detail) = explain(&e, &endpoint, &route.basin);
            return row(what, Outcome::Fail, detail);
        }
    };
    let creates = config["create_stream_on_append"].as_bool() == Some(true);
    let mut streams = vec![route.clone()];
    if let Some(dlq) = &s.dead_letter_stream {
        if let Ok(r) = Route::new(route.basin.clone(), dlq.clone()) {
            streams.push(r);
        }
    }
    let mut existing = None;
    for r in &streams {
        let what = format!("stream {r}");
        match client.check_tail(&r.basin, &r.stream).await {
            Ok(t) => {
                existing.get_or_insert(r);
                row(what, Outcome::Ok, format!("exists (tail {})", t.seq_num))
            }
            Err(e) if e.code() == Some("stream_not_found") && creates => row(
                what,
                Outcome::Ok,
                "missing; the basin creates it on the first append".into(),
            ),
            Err(e) if e.code() == Some("stream_not_found") => row(
                what,
                Outcome::Fail,
                "does not exist, and the basin does not create streams on append: create it, \
                 or set the basin's create_stream_on_append"
                    .into(),
            ),
            Err(e) => row(what, Outcome::Fail, e.to_string()),
        }
    }
    row(
        "append".into(),
        Outcome::Note,
        "whether the token may append is known only by appending; not checked".into(),
    );
    // Appends travel on sessions (HTTP/2 all the way): open one and close it, empty.
    if let (true, Some(r)) = (s.s2.append_session, existing) {
        match client.probe_session(&r.basin, &r.stream).await {
            Ok(()) => row(
                "append session".into(),
                Outcome::Ok,
                format!("opens on {r} (HTTP/2)"),
            ),
            Err(e) => row(
                "append session".into(),
                Outcome::Fail,
                format!(
                    "{e}; if something between s2-sink and S2 carries only HTTP/1.1, set \
                     append_session = false for this sink"
                ),
            ),
        }
    }
}

/// What a failed basin lookup means for the user.
fn explain(e: &S2Error, endpoint: &str, basin: &str) -> (String, String) {
    match (e.status(), e.code()) {
        (None, _) => (
            "endpoint".into(),
            format!("{endpoint} does not answer: {e}"),
        ),
        (Some(401 | 403), _) => (
            "token".into(),
            format!(
                "S2 refused the access token (HTTP {}): {e}",
                e.status().unwrap_or(0)
            ),
        ),
        (_, Some("basin_not_found")) | (Some(404), _) => (
            format!("basin {basin}"),
            "does not exist (create it, or fix the sink's basin)".into(),
        ),
        _ => ("basin".into(), e.to_string()),
    }
}

/// The report as a table.
pub fn render(rows: &[CheckRow]) -> String {
    let w_sink = rows.iter().map(|r| r.sink.len()).max().unwrap_or(4).max(4);
    let w_what = rows.iter().map(|r| r.what.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:w_sink$}  {:w_what$}  {:6}  DETAIL\n",
        "SINK", "CHECK", "RESULT"
    );
    for r in rows {
        out.push_str(&format!(
            "{:w_sink$}  {:w_what$}  {:6}  {}\n",
            r.sink,
            r.what,
            r.outcome.as_str(),
            r.detail
        ));
    }
    out
}

/// Whether every check passed (notes do not fail).
pub fn all_ok(rows: &[CheckRow]) -> bool {
    rows.iter().all(|r| r.outcome != Outcome::Fail)
}
