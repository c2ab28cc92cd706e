//! GroupActor: owns the head of one message group and delivers it strictly in order.
//!
//! With `max_appends_in_flight` = 1 one run of a group is in flight; above that, the runs
//! right behind it (to the same stream) go to the same writer behind it, sharing its chain
//! flag: a window of up to `max_appends_in_flight + 1` runs that moves on as each is acked,
//! so a hot group's pipeline never empties. On failure
//! the head stays at the front with its error and backoff, and the whole group waits (the
//! actor stops and the supervisor wakes the group when the backoff ends). Nothing behind a
//! failing head is ever sent: the writer never sends a group's later run after its earlier
//! one failed, and an append behind a failed one cannot land (`match_seq_num`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use actix::prelude::*;
use s2sink_core::UnixMillis;
use s2sink_queue::{GroupRef, StoredMessage};

use s2sink_core::Route;
use s2sink_transform::Functions;

use super::budget::Held;
use super::plan::{plan_run, Next};
use super::sink::SinkLocal;
use super::writer::{Failure, Pending, Run, RunError, WriterGone};
use super::SinkSettings;

/// How a group actor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// No pending messages left.
    Empty,
    /// The head is backing off until this time.
    BackingOffUntil(UnixMillis),
    /// The engine is stopping (or the queue failed).
    Stopped,
    /// The actor panicked (a bug); the supervisor restarts the group after a pause.
    Panicked,
    /// The head lies in the chunk with this first id, which the queue's read-ahead has not
    /// cached yet: the supervisor starts the group again once it has (or, when the read-ahead
    /// stalls or the wait grows too long, unpaced: the group reads its head itself; see
    /// `pacing::FrontierWatch`).
    WaitFor(u64),
}

/// A group actor finished (sent to whoever started it: the supervisor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct GroupDone {
    pub group: GroupRef,
    pub outcome: GroupOutcome,
}

/// The actor delivering one group.
pub struct GroupActor {
    pub local: Rc<SinkLocal>,
    pub group: GroupRef,
    pub done: Recipient<GroupDone>,
    /// Wait for the read-ahead instead of reading an uncached head
    /// ([`GroupOutcome::WaitFor`]); false for a group that waited long enough.
    pub pace: bool,
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let local = self.local.clone();
        let group = self.group.clone();
        let done = self.done.clone();
        let pace = self.pace;
        let work = async move {
            // A panic (a bug) ends this actor, not the engine thread: the supervisor is told
            // and starts the group again after a pause.
            let run = std::panic::AssertUnwindSafe(deliver_group(&local, &group, pace));
            let outcome = match futures_util::FutureExt::catch_unwind(run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::error!(sink = %local.shared.name, %group, "group actor panicked; restarting the group in 1 s");
                    GroupOutcome::Panicked
                }
            };
            let _ = done.send(GroupDone { group, outcome }).await;
        };
        ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

/// Delivers a group's visible messages until it is empty, backing off, or stopped.
pub async fn deliver_group(local: &SinkLocal, group: &GroupRef, pace: bool) -> GroupOutcome {
    let shared = &local.shared;
    let mut first = true;
    loop {
        // An unpaced start reads its first run whatever the read-ahead holds.
        let pace_now = pace || !first;
        first = false;
        if shared.is_stopping() {
            return GroupOutcome::Stopped;
        }
        let settings = shared.settings();
        let functions = shared.functions();
        let limits = &settings.batch.limits;
        // Before reading: see `Run::read_epoch`.
        let read_epoch = shared.stats.reconciles.load(Relaxed);
        // With pipelining, read enough for a second run behind the first.
        let lookahead = settings.batch.max_appends_in_flight > 1;
        let reads = if lookahead { 2 } else { 1 };
        // Room in the engine-wide budget of held payload bytes first, for as much as the read
        // may return (at most a quarter of the budget, so several groups read at once even
        // with a small one); then only what it did return stays taken, until this run is
        // settled (dropped at the end of the iteration, with the messages and the writer's
        // copy). A head larger than that is still read whole: a group always moves.
        let budget = local.held_budget();
        let want = (limits.max_metered_bytes as usize * reads).min(budget.capacity() / 4);
        let mut held = budget.take(want).await;
        if shared.is_stopping() {
            return GroupOutcome::Stopped;
        }
        let all = match shared.queue.head_run_paced(
            &shared.name,
            group,
            settings.batch.max_run_records * reads,
            held.bytes(),
            pace_now,
        ) {
            Ok(s2sink_queue::Paced::Run(m)) => m,
            Ok(s2sink_queue::Paced::Wait(chunk)) => return GroupOutcome::WaitFor(chunk),
            Err(e) => {
                (local.on_fatal)(&e);
                return GroupOutcome::Stopped;
            }
        };
        held.keep(all.iter().map(|m| m.payload.len()).sum());
        // `msgs`: what the first run is planned from; `all`: also what lies behind it.
        let (msgs, all) = if lookahead && all.len() > settings.batch.max_run_records {
            (all[..settings.batch.max_run_records].to_vec(), all)
        } else {
            (all, Vec::new())
        };
        let Some(head) = msgs.first() else {
            return GroupOutcome::Empty;
        };
        let now = local.clock.now_millis();
        if let Some(t) = head.state.not_visible_until.filter(|t| *t > now) {
            return GroupOutcome::BackingOffUntil(t);
        }
        let (plan, msgs) =
            plan_off_thread(local, &settings, functions.clone(), msgs, now, read_epoch).await;
        if !plan.filtered.is_empty() {
            if let Err(e) = shared.queue.ack(&shared.name, &plan.filtered) {
                (local.on_fatal)(&e);
                return GroupOutcome::Stopped;
            }
            shared
                .stats
                .filtered
                .fetch_add(plan.filtered.len() as u64, Relaxed);
        }
        // A head that used up its attempts goes to the dead-letter step, never to its stream.
        // (Only when the plan is about the head: a filtered head was acked above.)
        let head_route = match &plan.next {
            Next::Send {
                index: 0, route, ..
            } => Some(Some(route)),
            Next::Fail {
                index: 0, route, ..
            } => Some(route.as_ref()),
            _ => None,
        };
        if let (Some(error), Some(route)) = (SinkLocal::used_up(&settings, &msgs[0]), head_route) {
            match Box::pin(local.dead_letter_and_discard(&settings, &msgs[0], &error, route)).await
            {
                Ok(Some(until)) => return GroupOutcome::BackingOffUntil(until),
                Ok(None) => continue,
                Err(()) => return GroupOutcome::Stopped,
            }
        }
        let (failed, failure, route) = match plan.next {
            Next::Nothing => continue,
            Next::Fail {
                index,
                failure,
                route,
            } => {
                shared
                    .stats
                    .count_failure(failure.error.class, failure.error.status);
                (Cow::Borrowed(&msgs[index]), failure, route)
            }
            Next::Send { index, route, run } => {
                if index == 0 {
                    match Box::pin(local.check_uncertain(&msgs[0], &route)).await {
                        Ok(false) => {}
                        // Found and acked elsewhere: read the group again.
                        Ok(true) => continue,
                        Err(f) => {
                            // Not charged: nothing was sent. The head keeps its unknown outcome
                            // and is checked again after the wait.
                            let now = local.clock.now_millis();
                            let delay = settings
                                .backoff
                                .delay(msgs[0].state.deliver_count.max(1), f.retry_after);
                            tracing::warn!(sink = %shared.name, id = %msgs[0].id, error = %f.error.message, "cannot re-read a stream an uncertain append went to; waiting before sending elsewhere");
                            return GroupOutcome::BackingOffUntil(now + delay.as_millis() as u64);
                        }
                    }
                }
                let first = msgs[index].id;
                if lookahead {
                    let ahead = if all.is_empty() { msgs } else { all };
                    // Boxed, like this loop's other sends and checks: their states
                    // (send_window's ~1.9 KB) would otherwise be part of every group actor's
                    // future from the start, also of the thousands that wait for read budget
                    // after a restart (2.8 KB each, 28 MB for 10k groups).
                    match Box::pin(send_window(
                        local,
                        &settings,
                        functions,
                        group,
                        ahead,
                        index,
                        held,
                        route.clone(),
                        run,
                        read_epoch,
                    ))
                    .await
                    {
                        Ok(()) => {
                            local.delivered(first);
                            continue;
                        }
                        // Kept out of the stream because an earlier append failed: read the
                        // head again, uncharged.
                        Err(None) => continue,
                        Err(Some((m, failure))) => (Cow::Owned(m), failure, Some(route)),
                    }
                } else {
                    match Box::pin(local.submit(&route, &settings, run)).await {
                        Ok(()) => {
                            local.delivered(first);
                            continue;
                        }
                        Err(RunError::Requeued) => continue,
                        Err(RunError::Failed(failure)) => {
                            (Cow::Borrowed(&msgs[index]), failure, Some(route))
                        }
                    }
                }
            }
        };
        match Box::pin(local.fail_message(&settings, &failed, failure, route.as_ref())).await {
            Ok(Some(until)) => return GroupOutcome::BackingOffUntil(until),
            Ok(None) => continue,
            Err(()) => return GroupOutcome::Stopped,
        }
    }
}

/// One run of a group in a writer, not yet settled.
struct InFlight {
    /// The run's first message: charged if the run fails.
    head: StoredMessage,
    pending: Pending,
    /// The budget of the read this run was the last of (given back when it settles).
    _held: Option<Held>,
}

/// Sends `run` and keeps the group's next runs behind it on the same writer, up to one more
/// than the stream's `max_appends_in_flight` at once (so the writer already holds the next
/// run when an append is acked). Each time the oldest run is acked the next one is planned
/// from what was read behind it, or read after the last message sent: a hot group's
/// pipeline stays full instead of emptying after every pair of runs. All share a chain
/// flag: once one is not delivered, the writer sends none after it (see `Run::chain`).
/// `ahead`: the messages read with `run` (its own among them, from `index`), `held` their
/// budget. Returns when nothing more goes out this way and what went out has settled.
/// `Err(None)`: requeued, read the head again uncharged; `Err(Some((m, f)))`: charge `m`,
/// the head of the run that failed first.
#[allow(clippy::too_many_arguments)]
async fn send_window(
    local: &SinkLocal,
    settings: &Arc<SinkSettings>,
    functions: Arc<Functions>,
    group: &GroupRef,
    ahead: Vec<StoredMessage>,
    index: usize,
    held: Held,
    route: Route,
    mut run: Run,
    mut read_epoch: u64,
) -> Result<(), Option<(StoredMessage, Failure)>> {
    let shared = &local.shared;
    let Some(mut last) = run.ids.last().map(|d| d.id) else {
        return Ok(());
    };
    let first_msg = ahead[index].clone();
    let chain = Arc::new(AtomicBool::new(false));
    run.chain = Some(chain.clone());
    let writer = local.writer(&route, settings);
    let first = match writer.enqueue(run).await {
        Ok(p) => p,
        // The writer ended (idle or reloaded): send this run alone on a new one.
        Err(WriterGone(run)) => {
            return match local.submit(&route, settings, run).await {
                Ok(()) => Ok(()),
                Err(RunError::Requeued) => Err(None),
                Err(RunError::Failed(f)) => Err(Some((first_msg, f))),
            };
        }
    };
    let mut ahead: VecDeque<StoredMessage> = ahead.into_iter().filter(|m| m.id > last).collect();
    // The budget of what `ahead` holds (see `last_of_read`).
    let mut ahead_held = Some(held);
    let mut window = VecDeque::with_capacity(4);
    window.push_back(InFlight {
        head: first_msg,
        pending: first,
        _held: last_of_read(&ahead, &mut ahead_held),
    });
    let depth = settings.batch.max_appends_in_flight.max(1) + 1;
    let mut more = true;
    // Reads behind the first read wait for the first ack: until then the writer (on this
    // thread) has what the first read gave, and a restart's many groups each read once
    // before any of them reads again.
    let mut acked = false;
    loop {
        while more && window.len() < depth && !shared.is_stopping() {
            if ahead.is_empty() && !acked {
                break;
            }
            if ahead.is_empty() {
                let limits = &settings.batch.limits;
                // Never wait for budget here: what this group holds comes back only as its
                // runs settle, so without room now it waits for the oldest one first.
                let Some(mut h) = local
                    .held_budget()
                    .try_take(limits.max_metered_bytes as usize)
                else {
                    break;
                };
                let epoch = shared.stats.reconciles.load(Relaxed);
                let read = shared.queue.run_after(
                    &shared.name,
                    group,
                    last,
                    settings.batch.max_run_records,
                    h.bytes(),
                );
                match read {
                    Ok(m) if !m.is_empty() => {
                        h.keep(m.iter().map(|m| m.payload.len()).sum());
                        ahead = m.into();
                        ahead_held = Some(h);
                        read_epoch = epoch;
                    }
                    Ok(_) => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        (local.on_fatal)(&e);
                        more = false;
                        break;
                    }
                }
            }
            let now = local.clock.now_millis();
            let visible = ahead
                .front()
                .is_some_and(|m| m.state.not_visible_until.is_none_or(|t| t <= now));
            if !visible {
                more = false;
                break;
            }
            let n = ahead.len().min(settings.batch.max_run_records);
            let rest: Vec<StoredMessage> = ahead.drain(..n).collect();
            let (plan, rest) =
                plan_off_thread(local, settings, functions.clone(), rest, now, read_epoch).await;
            // Only a plain run to the same stream goes behind (filtered messages and local
            // failures wait until they are the head).
            let next = match plan.next {
                Next::Send {
                    index: 0,
                    route: r,
                    run,
                } if plan.filtered.is_empty() && r == route => run,
                _ => {
                    more = false;
                    break;
                }
            };
            let Some(next_last) = next.ids.last().map(|d| d.id) else {
                more = false;
                break;
            };
            let mut rest = rest.into_iter();
            let head = rest.next().expect("a planned run has messages");
            // The plan may take fewer than it was given (size limits): the rest is next.
            for m in rest.rev().filter(|m| m.id > next_last) {
                ahead.push_front(m);
            }
            let mut next = next;
            next.chain = Some(chain.clone());
            // Only on the same writer: a new writer could send it before the others.
            let Ok(pending) = writer.enqueue(next).await else {
                more = false;
                break;
            };
            last = next_last;
            window.push_back(InFlight {
                head,
                pending,
                _held: last_of_read(&ahead, &mut ahead_held),
            });
        }
        let Some(oldest) = window.pop_front() else {
            return Ok(());
        };
        match oldest.pending.outcome().await {
            Ok(()) => {
                local.delivered(oldest.head.id);
                acked = true;
            }
            Err(RunError::Requeued) => return Err(None),
            Err(RunError::Failed(f)) => return Err(Some((oldest.head, f))),
        }
    }
}

/// The budget of a read goes with the run that takes its last message: once `ahead` (what
/// is left of the read) is empty.
fn last_of_read(ahead: &VecDeque<StoredMessage>, held: &mut Option<Held>) -> Option<Held> {
    if ahead.is_empty() {
        held.take()
    } else {
        None
    }
}

/// Plans the next run. With functions configured (up to 1 s of Rhai each) the planning runs on
/// the blocking pool, at most one per core at a time, so a slow or runaway function delays
/// only its own group, never the actor thread; without functions it is cheap and runs here.
async fn plan_off_thread(
    local: &SinkLocal,
    settings: &std::sync::Arc<super::SinkSettings>,
    functions: std::sync::Arc<s2sink_transform::Functions>,
    msgs: Vec<StoredMessage>,
    now: UnixMillis,
    read_epoch: u64,
) -> (super::plan::Plan, Vec<StoredMessage>) {
    // One copy of the name per run; each record's header shares it.
    let name = s2sink_client::Text::from(local.shared.name.as_str());
    let settings = settings.clone();
    let noop = functions.is_noop();
    let work = move || {
        let plan = plan_run(
            &name,
            settings.route.as_ref(),
            &functions,
            &settings.batch.limits,
            &msgs,
            now,
            read_epoch,
        );
        (plan, msgs)
    };
    if noop {
        return work();
    }
    let _slot = local.function_slots.acquire().await;
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
