//! Model-based test: random operation sequences (including reopening the database) checked
//! against an in-memory model after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use s2sink_core::{now_millis, ErrorClass, GroupKey, LastError};
use s2sink_queue::{
    Counts, DeliveryId, DeliveryState, GroupRef, ListFilter, MessageId, NewMessage, Queue,
    QueueOptions, StateFilter,
};

const SINKS: [&str; 2] = ["a", "b/c"];
const DISCARD_CAP: usize = 2;
const HOUR: u64 = 3_600_000;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        sink: usize,
        msgs: Vec<(Option<u8>, u8)>,
    },
    Ack {
        sink: usize,
        picks: Vec<usize>,
    },
    /// Reconciliation found these (with the right epoch, or a wrong one).
    AckFound {
        sink: usize,
        picks: Vec<usize>,
        wrong_epoch: bool,
    },
    Fail {
        sink: usize,
        pick: usize,
        future: bool,
    },
    Redeliver {
        sink: usize,
        pick: usize,
    },
    RedeliverAll {
        sink: usize,
    },
    Acknowledge {
        sink: usize,
        pick: usize,
    },
    Discard {
        sink: usize,
        pick: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let sink = 0..SINKS.len();
    prop_oneof![
        4 => (sink.clone(), prop::collection::vec((prop::option::of(0u8..4), 0u8..20), 1..6))
            .prop_map(|(sink, msgs)| Op::Enqueue { sink, msgs }),
        2 => (sink.clone(), prop::collection::vec(0usize..100, 0..4))
            .prop_map(|(sink, picks)| Op::Ack { sink, picks }),
        1 => (sink.clone(), prop::collection::vec(0usize..100, 0..4), any::<bool>())
            .prop_map(|(sink, picks, wrong_epoch)| Op::AckFound { sink, picks, wrong_epoch }),
        2 => (sink.clone(), 0usize..100, any::<bool>())
            .prop_map(|(sink, pick, future)| Op::Fail { sink, pick, future }),
        1 => (sink.clone(), 0usize..100).prop_map(|(sink, pick)| Op::Redeliver { sink, pick }),
        1 => sink.clone().prop_map(|sink| Op::RedeliverAll { sink }),
        1 => (sink.clone(), 0usize..100).prop_map(|(sink, pick)| Op::Acknowledge { sink, pick }),
        2 => (sink, 0usize..100).prop_map(|(sink, pick)| Op::Discard { sink, pick }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Msg {
    group: GroupRef,
    payload: Vec<u8>,
    state: DeliveryState,
    /// The epoch of the queue that accepted it (changes with every reopen).
    epoch: u64,
}

/// Payload sizes: mostly tiny; 18 and 19 stand for values that fill a chunk on their own or
/// need several sled parts, so chunk boundaries and parted values are exercised too.
fn payload_len(code: u8) -> usize {
    match code {
        18 => 40_000,
        19 => 130_000,
        n => n as usize,
    }
}

#[derive(Default)]
struct SinkModel {
    msgs: BTreeMap<u64, Msg>,
    delivered: u64,
    discarded_total: u64,
    /// Oldest first.
    discarded: VecDeque<(u64, Msg)>,
    max_issued: u64,
}

impl SinkModel {
    /// An id of the queue chosen by `pick`, or one that was never issued.
    fn pick(&self, pick: usize) -> MessageId {
        if self.msgs.is_empty() || pick % 5 == 4 {
            return MessageId(self.max_issued + 1000 + pick as u64);
        }
        let ids: Vec<u64> = self.msgs.keys().copied().collect();
        MessageId(ids[pick % ids.len()])
    }

    fn remove(&mut self, id: MessageId, discard: bool) -> bool {
        match self.msgs.remove(&id.0) {
            Some(m) if discard => {
                self.discarded_total += 1;
                self.discarded.push_back((id.0, m));
                while self.discarded.len() > DISCARD_CAP {
                    self.discarded.pop_front();
                }
                true
            }
            Some(_) => {
                self.delivered += 1;
                true
            }
            None => false,
        }
    }
}

fn error_at(at_ms: u64) -> LastError {
    LastError {
        class: ErrorClass::Retryable,
        status: Some(503),
        code: Some("unavailable".into()),
        message: format!("attempt at {at_ms}"),
        body: Some("{}".into()),
        at_ms,
    }
}

fn open(dir: &std::path::Path) -> Queue {
    Queue::open_with(
        dir,
        QueueOptions {
            discarded_cap: DISCARD_CAP,
            // Spans of a few chunks: the model's messages cross, end and reopen many of them.
            span_bytes: 2048,
            ..QueueOptions::default()
        },
    )
    .unwrap()
}

fn check(q: &Queue, model: &[SinkModel]) -> Result<(), TestCaseError> {
    let now = now_millis();
    let mut total = 0;
    for (name, m) in SINKS.iter().zip(model) {
        total += m.msgs.len() as u64;
        let all = q
            .list(
                name,
                &ListFilter {
                    limit: usize::MAX,
                    ..Default::default()
                },
            )
            .unwrap();
        let got: Vec<(u64, Msg)> = all
            .iter()
            .map(|s| {
                (
                    s.id.0,
                    Msg {
                        group: s.group.clone(),
                        payload: s.payload.to_vec(),
                        state: s.state.clone(),
                        epoch: s.epoch,
                    },
                )
            })
            .collect();
        let want: Vec<(u64, Msg)> = m.msgs.iter().map(|(k, v)| (*k, v.clone())).collect();
        prop_assert_eq!(&got, &want, "sink {}", name);
        for s in &all {
            let one = q.get(name, s.id).unwrap();
            prop_assert_eq!(one.as_ref(), Some(s));
        }

        // Newest first, in pages of two through the cursor.
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let f = ListFilter {
                limit: 2,
                after,
                newest_first: true,
                ..Default::default()
            };
            let page = q.list(name, &f).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|s| s.id);
            pages.extend(page.into_iter().map(|s| s.id.0));
        }
        let mut rev: Vec<u64> = m.msgs.keys().copied().collect();
        rev.reverse();
        prop_assert_eq!(pages, rev);

        for state in [
            StateFilter::Pending,
            StateFilter::Failed,
            StateFilter::BackingOff,
        ] {
            let f = ListFilter {
                state,
                limit: usize::MAX,
                ..Default::default()
            };
            let got: Vec<u64> = q.list(name, &f).unwrap().iter().map(|s| s.id.0).collect();
            let want: Vec<u64> = m
                .msgs
                .iter()
                .filter(|(_, v)| state.matches(&v.state, now))
                .map(|(k, _)| *k)
                .collect();
            prop_assert_eq!(got, want, "{:?}", state);
        }

        let counts = q.counts(name);
        prop_assert_eq!(
            counts,
            Counts {
                pending: m.msgs.len() as u64,
                failing: m
                    .msgs
                    .values()
                    .filter(|v| v.state.deliver_count > 0)
                    .count() as u64,
                delivered: m.delivered,
                discarded: m.discarded_total,
            }
        );

        // Groups: the set, and each group's order (whole, paged, and its head).
        let mut groups: BTreeMap<GroupRef, Vec<u64>> = BTreeMap::new();
        for (id, v) in &m.msgs {
            groups.entry(v.group.clone()).or_default().push(*id);
        }
        let got: BTreeSet<GroupRef> = q.pending_groups(name).unwrap().into_iter().collect();
        prop_assert_eq!(&got, &groups.keys().cloned().collect::<BTreeSet<_>>());
        for (g, ids) in &groups {
            let run: Vec<u64> = q
                .head_run(name, g, usize::MAX, usize::MAX)
                .unwrap()
                .iter()
                .map(|s| s.id.0)
                .collect();
            prop_assert_eq!(&run, ids);
            let head = q.head_run(name, g, 1, 0).unwrap();
            prop_assert_eq!(head.len(), 1);
            prop_assert_eq!(head[0].id.0, ids[0]);
            let f = ListFilter {
                group: Some(g.clone()),
                after: Some(MessageId(ids[0])),
                limit: usize::MAX,
                ..Default::default()
            };
            let rest: Vec<u64> = q.list(name, &f).unwrap().iter().map(|s| s.id.0).collect();
            prop_assert_eq!(&rest[..], &ids[1..]);
        }

        let disc: Vec<(u64, Msg)> = q
            .discarded(name, 100)
            .unwrap()
            .into_iter()
            .map(|d| {
                let s = d.message;
                (
                    s.id.0,
                    Msg {
                        group: s.group,
                        payload: s.payload.to_vec(),
                        state: s.state,
                        epoch: s.epoch,
                    },
                )
            })
            .collect();
        let want: Vec<(u64, Msg)> = m.discarded.iter().rev().cloned().collect();
        prop_assert_eq!(disc, want);
    }
    prop_assert_eq!(q.total_pending(), total);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut q = open(dir.path());
    let mut model: Vec<SinkModel> = SINKS.iter().map(|_| SinkModel::default()).collect();
    let now = now_millis();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Enqueue { sink, msgs } => {
                let new: Vec<NewMessage> = msgs
                    .iter()
                    .map(|(g, len)| {
                        NewMessage::new(
                            g.map(|g| GroupKey(format!("g{g}"))),
                            vec![step as u8; payload_len(*len)],
                        )
                    })
                    .collect();
                let out = rt.block_on(q.enqueue(SINKS[sink], new.clone())).unwrap();
                let m = &mut model[sink];
                prop_assert_eq!(out.len(), new.len());
                for (e, n) in out.iter().zip(new) {
                    prop_assert!(
                        e.id.0 > m.max_issued,
                        "id {} reused (max {})",
                        e.id,
                        m.max_issued
                    );
                    m.max_issued = e.id.0;
                    prop_assert_eq!(e.group.key(), n.group.as_ref().map(|k| k.as_str()));
                    if n.group.is_none() {
                        prop_assert_eq!(e.group.solo(), Some(e.id));
                    }
                    m.msgs.insert(
                        e.id.0,
                        Msg {
                            group: e.group.clone(),
                            payload: n.payload.to_vec(),
                            state: DeliveryState::default(),
                            epoch: q.epoch(),
                        },
                    );
                }
            }
            Op::Ack { sink, picks } => {
                let m = &mut model[sink];
                let ids: Vec<MessageId> = picks.iter().map(|p| m.pick(*p)).collect();
                let removed = q.ack(SINKS[sink], &ids).unwrap();
                let want = ids
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|id| m.remove(**id, false))
                    .count();
                prop_assert_eq!(removed, want);
            }
            Op::AckFound {
                sink,
                picks,
                wrong_epoch,
            } => {
                let m = &mut model[sink];
                let found: Vec<DeliveryId> = picks
                    .iter()
                    .map(|p| {
                        let id = m.pick(*p);
                        let epoch = m.msgs.get(&id.0).map_or(7, |v| v.epoch);
                        DeliveryId {
                            epoch: if wrong_epoch { epoch ^ 1 } else { epoch },
                            id,
                        }
                    })
                    .collect();
                let mut removed = q.ack_delivered(SINKS[sink], &found).unwrap();
                removed.sort();
                let mut want: Vec<MessageId> = found
                    .iter()
                    .map(|d| d.id)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|id| !wrong_epoch && m.remove(*id, false))
                    .collect();
                want.sort();
                prop_assert_eq!(removed, want);
            }
            Op::Fail { sink, pick, future } => {
                let m = &mut model[sink];
                let id = m.pick(pick);
                let until = if future { now + HOUR } else { 1 + step as u64 };
                let got = q.fail(SINKS[sink], id, error_at(step as u64), until);
                match m.msgs.get_mut(&id.0) {
                    Some(msg) => {
                        msg.state.deliver_count += 1;
                        msg.state.last_error = Some(error_at(step as u64));
                        msg.state.not_visible_until = Some(until);
                        msg.state.last_attempt_at = Some(step as u64);
                        prop_assert_eq!(got.unwrap(), msg.state.clone());
                    }
                    None => {
                        let not_found =
                            matches!(got, Err(s2sink_queue::QueueError::NotFound { .. }));
                        prop_assert!(not_found, "fail of a missing id: {:?}", got);
                    }
                }
            }
            Op::Redeliver { sink, pick } => {
                let m = &mut model[sink];
                let id = m.pick(pick);
                let got = rt.block_on(q.redeliver(SINKS[sink], id)).unwrap();
                let want = match m.msgs.get_mut(&id.0) {
                    Some(msg) => {
                        msg.state.not_visible_until = None;
                        true
                    }
                    None => false,
                };
                prop_assert_eq!(got, want);
            }
            Op::RedeliverAll { sink } => {
                let m = &mut model[sink];
                let mut want = 0;
                for msg in m.msgs.values_mut() {
                    if msg.state.not_visible_until.take().is_some() {
                        want += 1;
                    }
                }
                prop_assert_eq!(rt.block_on(q.redeliver_all(SINKS[sink])).unwrap(), want);
            }
            Op::Acknowledge { sink, pick } => {
                let m = &mut model[sink];
                let id = m.pick(pick);
                let got = rt.block_on(q.acknowledge(SINKS[sink], id)).unwrap();
                prop_assert_eq!(got, m.remove(id, false));
            }
            Op::Discard { sink, pick } => {
                let m = &mut model[sink];
                let id = m.pick(pick);
                let got = rt.block_on(q.discard(SINKS[sink], id)).unwrap();
                prop_assert_eq!(got, m.remove(id, true));
            }
            Op::Reopen => {
                let before = q.epoch();
                drop(q);
                q = open(dir.path());
                prop_assert_ne!(q.epoch(), before, "every open takes a new epoch");
            }
        }
        check(&q, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
