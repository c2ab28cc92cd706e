//! GroupActor: owns the head of one message group and delivers it strictly in order.
//!
//! At most one run of a group is in flight; on failure the head stays at the front with its
//! error and backoff, and the whole group waits (the actor stops and the supervisor wakes the
//! group when the backoff ends). Nothing behind a failing head is ever sent.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use s2sink_core::UnixMillis;
use s2sink_queue::{GroupRef, StoredMessage};

use super::plan::{plan_run, Next};
use super::sink::SinkLocal;
use super::supervisor::{GroupDone, Supervisor};
use super::writer::Failure;

/// How a group actor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// No pending messages left.
    Empty,
    /// The head is backing off until this time.
    BackingOffUntil(UnixMillis),
    /// The engine is stopping (or the queue failed).
    Stopped,
}

/// The actor delivering one group.
pub struct GroupActor {
    pub local: Rc<SinkLocal>,
    pub group: GroupRef,
    pub supervisor: Addr<Supervisor>,
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let local = self.local.clone();
        let group = self.group.clone();
        let supervisor = self.supervisor.clone();
        let work = async move {
            let outcome = deliver_group(&local, &group).await;
            let _ = supervisor.send(GroupDone { group, outcome }).await;
        };
        ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

/// Delivers a group's visible messages until it is empty, backing off, or stopped.
pub async fn deliver_group(local: &SinkLocal, group: &GroupRef) -> GroupOutcome {
    let shared = &local.shared;
    loop {
        if shared.is_stopping() {
            return GroupOutcome::Stopped;
        }
        let settings = shared.settings();
        let functions = shared.functions();
        let limits = &settings.batch.limits;
        // Before reading: see `Run::read_epoch`.
        let read_epoch = shared.stats.reconciles.load(Relaxed);
        let msgs = match shared.queue.head_run(
            &shared.name,
            group,
            settings.batch.max_run_records,
            limits.max_metered_bytes as usize,
        ) {
            Ok(m) => m,
            Err(e) => {
                (local.on_fatal)(&e);
                return GroupOutcome::Stopped;
            }
        };
        let Some(head) = msgs.first() else {
            return GroupOutcome::Empty;
        };
        let now = local.clock.now_millis();
        if let Some(t) = head.state.not_visible_until.filter(|t| *t > now) {
            return GroupOutcome::BackingOffUntil(t);
        }
        let plan = plan_run(
            &shared.name,
            settings.route.as_ref(),
            &functions,
            limits,
            &msgs,
            now,
            read_epoch,
        );
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
        let (failed, failure) = match plan.next {
            Next::Nothing => continue,
            Next::Fail { index, failure } => {
                shared
                    .stats
                    .count_failure(failure.error.class, failure.error.status);
                (&msgs[index], failure)
            }
            Next::Send { index, route, run } => match local.submit(&route, &settings, run).await {
                Ok(()) => continue,
                Err(failure) => (&msgs[index], failure),
            },
        };
        match local.fail_message(&settings, failed, failure).await {
            Ok(Some(until)) => return GroupOutcome::BackingOffUntil(until),
            Ok(None) => continue,
            Err(()) => return GroupOutcome::Stopped,
        }
    }
}

/// Log line for a failed message, without payload (it may hold personal data).
pub(crate) fn log_failure(sink: &str, msg: &StoredMessage, f: &Failure, attempts: u32) {
    tracing::warn!(
        sink, id = %msg.id, attempts, class = f.error.class.as_str(),
        status = ?f.error.status, code = ?f.error.code, error = %f.error.message,
        "delivery failed"
    );
}
