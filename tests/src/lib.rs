//! Shared harness for end-to-end tests: s2-lite, engine settings, reading streams back and
//! checking exactly-once delivery and per-group order.

use std::collections::HashMap;
use std::time::Duration;

use s2sink_client::{S2Config, SequencedRecord};
use s2sink_core::{BackoffPolicy, Route};
use s2sink_server::engine::{our_id, SinkSettings};

pub use s2sink_client::testing::{read_all, unique_name, LiteServer};

pub mod client;
pub mod cutter;
pub mod process;
pub mod proxy;
pub mod rig;

/// Settings for a test sink on s2-lite with a fast backoff (tens of ms instead of seconds).
pub fn sink_settings(name: &str, endpoint: &str, basin: &str, stream: &str) -> SinkSettings {
    let s2 = S2Config::direct(endpoint).with_request_timeout(Duration::from_secs(5));
    let mut s = SinkSettings::new(name, Some(Route::new(basin, stream).unwrap()), s2);
    s.backoff = BackoffPolicy {
        base_ms: 20,
        max_ms: 500,
        jitter: 0.15,
    };
    s
}

/// [`sink_settings`] for a sink writing through the fault proxy ([`proxy::Proxy`]), which
/// reads HTTP/1.1 requests one by one to fault them: appends go unary, not on S2's append
/// session (HTTP/2). Sessions are tested against s2-lite directly and through
/// [`cutter::TcpCutter`].
pub fn proxied_sink_settings(
    name: &str,
    proxy: &proxy::Proxy,
    basin: &str,
    stream: &str,
) -> SinkSettings {
    let mut s = sink_settings(name, &proxy.endpoint(), basin, stream);
    s.s2 = s.s2.with_append_session(false);
    s
}

/// The message ids of `sink` in a stream, in stream order.
pub fn ids_in(records: &[SequencedRecord], sink: &str) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| our_id(sink, &r.headers))
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a delivery check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub missing: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub order_violations: Vec<(String, u64, u64)>,
    pub unexpected: Vec<u64>,
}

impl Verdict {
    /// True when nothing was lost, duplicated, reordered or invented.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.order_violations.is_empty()
            && self.unexpected.is_empty()
    }
}

/// Checks that every expected id appears exactly once and that, per group, ids appear in
/// increasing order (ids are assigned in acceptance order). `expected` maps id → group.
pub fn verify(delivered: &[u64], expected: &HashMap<u64, String>) -> Verdict {
    let mut v = Verdict::default();
    let mut count: HashMap<u64, usize> = HashMap::new();
    let mut last_in_group: HashMap<&str, u64> = HashMap::new();
    for id in delivered {
        *count.entry(*id).or_default() += 1;
        match expected.get(id) {
            None => v.unexpected.push(*id),
            Some(group) => {
                if let Some(prev) = last_in_group.insert(group.as_str(), *id) {
                    if prev > *id {
                        v.order_violations.push((group.clone(), prev, *id));
                    }
                }
            }
        }
    }
    for (id, n) in &count {
        if *n > 1 {
            v.duplicated.push(*id);
        }
    }
    for id in expected.keys() {
        if !count.contains_key(id) {
            v.missing.push(*id);
        }
    }
    v.missing.sort();
    v.duplicated.sort();
    v
}

/// A Sequin-style change message for table `public.t`, primary key `pk`, with a padding
/// field of `pad` bytes. Its `idempotency_key` is `<commit_lsn>:<commit_idx>` as Sequin's, with
/// `commit_lsn = seq` and `commit_idx = pk`, so it is unique per (pk, seq) — the server
/// stores a repeated key only once.
pub fn change(pk: u64, seq: u64, pad: usize) -> serde_json::Value {
    serde_json::json!({
        "action": "update",
        "record": {"id": pk, "seq": seq, "pad": "x".repeat(pad)},
        "changes": {"seq": seq.saturating_sub(1)},
        "metadata": {
            "table_schema": "public", "table_name": "t",
            "commit_timestamp": "2026-11-27T00:00:00Z",
            "commit_lsn": seq, "commit_idx": pk,
            "record_pks": [pk.to_string()],
            "idempotency_key": format!("{seq}:{pk}"),
        }
    })
}

/// The group of a delivered record, from its body (`public.t/<pk>` for [`change`] messages).
pub fn group_of_body(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    format!("public.t/{}", v["record"]["id"])
}

/// The producer's sequence number of a delivered [`change`] message (`record.seq`).
pub fn seq_of_body(body: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["record"]["seq"].as_u64()
}

/// Checks a stream's records of `sink` against the ids the producer got a 2xx for, when the
/// producer saw an answer to every request: every accepted id present once, no id twice, ids
/// increasing within each group, and no id that was never accepted (`unexpected`).
pub fn verify_stream(
    records: &[SequencedRecord],
    sink: &str,
    accepted: &std::collections::HashSet<u64>,
) -> Verdict {
    verify_stream_lost_acks(records, sink, accepted, &Default::default())
}

/// [`verify_stream`] for producers that may have lost answers (the server was killed while a
/// request was in flight): `unanswered_seqs` holds the [`change`] sequence numbers
/// ([`seq_of_body`]) of every message sent in a request that got no answer. Such a message may
/// be in the stream although its id was never seen; any other id not in `accepted` is
/// `unexpected`. Groups come from the bodies, so messages whose 2xx was lost are checked for
/// order too.
pub fn verify_stream_lost_acks(
    records: &[SequencedRecord],
    sink: &str,
    accepted: &std::collections::HashSet<u64>,
    unanswered_seqs: &std::collections::HashSet<u64>,
) -> Verdict {
    let mut expected: HashMap<u64, String> = HashMap::new();
    let mut delivered = Vec::new();
    let mut unexpected = Vec::new();
    for r in records {
        if let Some(id) = our_id(sink, &r.headers) {
            let maybe_lost_ack = seq_of_body(&r.body).is_some_and(|s| unanswered_seqs.contains(&s));
            if !accepted.contains(&id) && !maybe_lost_ack {
                unexpected.push(id);
            }
            expected.insert(id, group_of_body(&r.body));
            delivered.push(id);
        }
    }
    let mut v = verify(&delivered, &expected);
    v.missing = accepted
        .iter()
        .filter(|id| !expected.contains_key(id))
        .copied()
        .collect();
    v.missing.sort();
    unexpected.sort();
    unexpected.dedup();
    v.unexpected = unexpected;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_server::engine::{HEADER_ID, HEADER_SINK};
    use std::collections::HashSet;

    fn record(sink: &str, id: u64, pk: u64, seq: u64) -> SequencedRecord {
        SequencedRecord {
            seq_num: id,
            timestamp: 0,
            headers: vec![
                (HEADER_SINK.to_string(), sink.to_string()),
                (HEADER_ID.to_string(), format!("{:016x}-{id}", 1)),
            ],
            body: change(pk, seq, 0).to_string(),
        }
    }

    #[test]
    fn verify_stream_reports_ids_never_accepted() {
        let records = vec![
            record("s", 1, 7, 11),
            record("s", 2, 7, 12),
            record("s", 3, 8, 13),
        ];
        let accepted: HashSet<u64> = [1, 2, 3].into();
        assert!(verify_stream(&records, "s", &accepted).is_clean());

        // Id 3 never got a 202 and its request was answered: invented.
        let accepted: HashSet<u64> = [1, 2].into();
        let v = verify_stream(&records, "s", &accepted);
        assert_eq!(v.unexpected, vec![3], "{v:?}");
        assert!(!v.is_clean());

        // Its request got no answer (server killed): it may be there.
        let v = verify_stream_lost_acks(&records, "s", &accepted, &[13].into());
        assert!(v.is_clean(), "{v:?}");
        let v = verify_stream_lost_acks(&records, "s", &accepted, &[12].into());
        assert_eq!(v.unexpected, vec![3], "{v:?}");

        // Missing, duplicated and reordered are still reported.
        let dup = vec![
            record("s", 2, 7, 12),
            record("s", 1, 7, 11),
            record("s", 2, 7, 12),
        ];
        let v = verify_stream(&dup, "s", &[1, 2, 3].into());
        assert_eq!(v.missing, vec![3]);
        assert_eq!(v.duplicated, vec![2]);
        assert_eq!(
            v.order_violations,
            vec![("public.t/7".to_string(), 2, 1)],
            "{v:?}"
        );
    }
}
