//! Supervisor: one per sink and engine thread (a shard). Owns the groups that hash to its
//! shard: starts a GroupActor on its thread for each of them with ready messages, keeps at
//! most `max_live_groups` alive (the rest wait in a FIFO ready queue), restarts a group whose
//! actor panicked, and wakes backing-off groups when their backoff ends or when someone asks
//! to redeliver.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use s2sink_core::UnixMillis;
use s2sink_queue::GroupRef;

use super::group::{GroupActor, GroupDone, GroupOutcome};
use super::pacing::FrontierWatch;
use super::sink::SinkLocal;
use super::threads::Homes;

/// The group sets below are looked up for every message published (`make_ready`): foldhash
/// instead of std's SipHash (~1% of the server's CPU in a 10k-group closed loop), seeded
/// per process like std's.
type HashMap<K, V> = foldhash::HashMap<K, V>;
type HashSet<K> = foldhash::HashSet<K>;

/// New messages arrived for these groups (or their backoff was cleared).
#[derive(Message)]
#[rtype(result = "()")]
pub struct GroupsReady(pub Vec<GroupRef>);

/// Make every pending group ready now (after a redeliver-all or a reload).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AllGroupsReady;

/// Number of live group actors (for shutdown).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct LiveGroups;

/// What one supervisor shard reports about itself (`Engine::shards`): which thread it runs
/// its group actors on and how many it started, so operators and tests can see the load
/// spread over the engine's threads.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// The shard's index.
    pub shard: usize,
    /// The thread its group actors run on.
    pub thread: std::thread::ThreadId,
    /// Group actors started since the engine started.
    pub groups_started: u64,
    /// Group actors alive now.
    pub live_groups: usize,
}

/// Asks a supervisor shard for its [`ShardInfo`].
#[derive(Message)]
#[rtype(result = "ShardInfo")]
pub struct GetShardInfo;

/// The supervisor actor of one sink on one engine thread.
pub struct Supervisor {
    local: Rc<SinkLocal>,
    /// Which shard this is, and how groups map to shards (recovery keeps only its own).
    shard: usize,
    homes: Homes,
    ready: VecDeque<GroupRef>,
    queued: HashSet<GroupRef>,
    /// Live groups; `true` when new work arrived while the actor was running.
    live: HashMap<GroupRef, bool>,
    timers: BinaryHeap<Reverse<(UnixMillis, GroupRef)>>,
    timer: Option<(UnixMillis, SpawnHandle)>,
    /// This shard's share of the sink's `live_groups` gauge.
    counted: u64,
    /// Group actors started (see [`ShardInfo`]).
    started: u64,
    /// A [`Supervisor::pump`] continuation is scheduled (more groups wait to start).
    pump_scheduled: bool,
    /// Pending groups of this shard still to be made ready by [`Supervisor::all_pending`],
    /// oldest first.
    recovering: VecDeque<GroupRef>,
    /// A [`RecoverMore`] step is scheduled.
    recover_scheduled: bool,
    /// Groups waiting for the queue's read-ahead: by the chunk their head is in, with when
    /// they started waiting.
    waiting: std::collections::BTreeMap<u64, Vec<(GroupRef, tokio::time::Instant)>>,
    /// The read-ahead's frontier as last seen: waiting groups are let go when it stalls.
    frontier: FrontierWatch,
    /// Groups to start unpaced (they waited long enough: see [`FrontierWatch::let_go`]).
    forced: HashSet<GroupRef>,
    /// A [`WAIT_TICK`] check is scheduled.
    wait_tick: bool,
}

/// How often groups waiting for the queue's read-ahead ([`GroupOutcome::WaitFor`]) are
/// checked against its frontier (one lookup per shard per tick, while any wait).
const WAIT_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// Group actors a supervisor starts per turn of its engine thread. Each new actor first
/// reads its head from disk; starting thousands at once (a restart with a large backlog)
/// would queue all those reads ahead of the stream writers on the same thread, so the
/// first append would wait for every one of them (1.5 s for 10k groups over 1M messages).
/// The rest start on the next turns, after whatever else is ready to run.
const START_PER_TURN: usize = 16;

impl Supervisor {
    /// The supervisor of one sink's groups that hash to `shard`.
    pub(crate) fn new(local: Rc<SinkLocal>, shard: usize, homes: Homes) -> Supervisor {
        Supervisor {
            local,
            shard,
            homes,
            ready: VecDeque::new(),
            queued: HashSet::default(),
            live: HashMap::default(),
            timers: BinaryHeap::new(),
            timer: None,
            counted: 0,
            started: 0,
            pump_scheduled: false,
            recovering: VecDeque::new(),
            recover_scheduled: false,
            waiting: std::collections::BTreeMap::new(),
            frontier: FrontierWatch::new(tokio::time::Instant::now()),
            forced: HashSet::default(),
            wait_tick: false,
        }
    }

    fn make_ready(&mut self, group: GroupRef) {
        if let Some(rearm) = self.live.get_mut(&group) {
            *rearm = true;
        } else if self.queued.insert(group.clone()) {
            self.ready.push_back(group);
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        // The limit is the sink's: each shard gets its part.
        let max = (self.local.shared.settings().max_live_groups / self.homes.count()).max(1);
        let mut this_turn = 0;
        while self.live.len() < max && !self.local.shared.is_stopping() {
            if this_turn == START_PER_TURN {
                // The rest after the thread ran what else is ready.
                if !self.pump_scheduled && !self.ready.is_empty() {
                    self.pump_scheduled = true;
                    after_a_turn(ctx, |act, ctx| {
                        act.pump_scheduled = false;
                        act.pump(ctx);
                    });
                }
                break;
            }
            let Some(group) = self.ready.pop_front() else {
                break;
            };
            this_turn += 1;
            self.queued.remove(&group);
            self.live.insert(group.clone(), false);
            self.started += 1;
            let pace = !self.forced.remove(&group);
            GroupActor {
                local: self.local.clone(),
                group,
                done: ctx.address().recipient(),
                pace,
            }
            .start();
        }
        // The gauge is the sink's: add this shard's change.
        let now = self.live.len() as u64;
        let stats = &self.local.shared.stats;
        if now >= self.counted {
            stats.live_groups.fetch_add(now - self.counted, Relaxed);
        } else {
            stats.live_groups.fetch_sub(self.counted - now, Relaxed);
        }
        self.counted = now;
    }

    fn wait_for(&mut self, chunk: u64, group: GroupRef, ctx: &mut Context<Self>) {
        self.waiting
            .entry(chunk)
            .or_default()
            .push((group, tokio::time::Instant::now()));
        self.arm_wait_tick(ctx);
    }

    fn arm_wait_tick(&mut self, ctx: &mut Context<Self>) {
        if self.wait_tick || self.waiting.is_empty() {
            return;
        }
        self.wait_tick = true;
        ctx.run_later(WAIT_TICK, |act, ctx| {
            act.wait_tick = false;
            act.check_waiting(ctx);
        });
    }

    fn check_waiting(&mut self, ctx: &mut Context<Self>) {
        let frontier = self
            .local
            .shared
            .queue
            .read_ahead_frontier(&self.local.shared.name);
        // Chunks below the frontier are cached now: their groups go on.
        let beyond = self.waiting.split_off(&frontier);
        let reached = std::mem::replace(&mut self.waiting, beyond);
        for (g, _) in reached.into_values().flatten() {
            self.make_ready(g);
        }
        // Waited long enough: started unpaced (see `FrontierWatch::let_go`). tokio's clock,
        // as the tick's timer: the same under paused time in tests.
        let now = tokio::time::Instant::now();
        self.frontier.observe(frontier, now);
        let watch = &self.frontier;
        let mut late = Vec::new();
        self.waiting.retain(|_, groups| {
            groups.retain(|(g, since)| {
                let keep = !watch.let_go(*since, now);
                if !keep {
                    late.push(g.clone());
                }
                keep
            });
            !groups.is_empty()
        });
        if !late.is_empty() {
            tracing::debug!(sink = %self.local.shared.name, groups = late.len(), frontier, "paced groups waited their limit; they read their heads themselves");
        }
        for g in late {
            self.forced.insert(g.clone());
            self.make_ready(g);
        }
        self.pump(ctx);
        self.arm_wait_tick(ctx);
    }

    fn schedule(&mut self, at: UnixMillis, group: GroupRef, ctx: &mut Context<Self>) {
        self.timers.push(Reverse((at, group)));
        self.arm_timer(ctx);
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(Reverse((next, _))) = self.timers.peek() else {
            return;
        };
        let next = *next;
        if let Some((at, handle)) = self.timer {
            if at <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(self.local.clock.until(next), |act, ctx| {
            act.timer = None;
            act.fire_timers(ctx);
        });
        self.timer = Some((next, handle));
    }

    fn fire_timers(&mut self, ctx: &mut Context<Self>) {
        let now = self.local.clock.now_millis();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, group)) = self.timers.pop().unwrap();
            self.make_ready(group);
        }
        self.pump(ctx);
        self.arm_timer(ctx);
    }

    /// Makes every pending group ready, the one holding the oldest message first (see
    /// [`s2sink_queue::Queue::pending_groups_oldest_first`]: reads then walk the backlog from
    /// its old end), a page per turn: the first groups start delivering while the rest are
    /// still being queued (a restart with a large backlog resumes fast).
    fn all_pending(&mut self, ctx: &mut Context<Self>) {
        let shared = &self.local.shared;
        match shared.queue.pending_groups_oldest_first(&shared.name) {
            Ok(groups) => {
                self.recovering = groups
                    .into_iter()
                    .filter(|g| self.homes.shard_of(g) == self.shard)
                    .collect();
                if !self.recover_scheduled {
                    self.recover_scheduled = true;
                    ctx.notify(RecoverMore);
                }
            }
            Err(e) => (self.local.on_fatal)(&e),
        }
    }
}

/// Runs `f` on the actor after its thread ran every other task that is ready now: the actor
/// yields (`tokio::task::yield_now` puts it at the back of the run queue). Not `notify`,
/// which the actor may handle in the same poll, and not a zero timer, which waits for the
/// timer wheel (a millisecond or more) and throttled group starts under load.
fn after_a_turn(
    ctx: &mut Context<Supervisor>,
    f: impl FnOnce(&mut Supervisor, &mut Context<Supervisor>) + 'static,
) {
    ctx.spawn(
        actix::fut::wrap_future::<_, Supervisor>(tokio::task::yield_now())
            .map(move |_, act, ctx| f(act, ctx)),
    );
}

/// How long recovery waits for the streams' reconciliation before it resumes groups anyway
/// (their runs then wait in the writers, as when S2 is down).
const PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Groups made ready per step of [`Supervisor::all_pending`]. Small, so that the stream
/// writers get their turn on the engine thread between steps (each new group actor first
/// reads its head from disk) and a restart with a large backlog appends within moments.
const RECOVERY_PAGE: usize = 100;

/// Make the next [`RECOVERY_PAGE`] groups of [`Supervisor::all_pending`] ready.
#[derive(Message)]
#[rtype(result = "()")]
struct RecoverMore;

impl Handler<RecoverMore> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: RecoverMore, ctx: &mut Self::Context) {
        let n = self.recovering.len().min(RECOVERY_PAGE);
        let page: Vec<GroupRef> = self.recovering.drain(..n).collect();
        for g in page {
            self.make_ready(g);
        }
        self.pump(ctx);
        if self.recovering.is_empty() {
            self.recover_scheduled = false;
        } else {
            // On a later turn: the groups just started read and send meanwhile.
            after_a_turn(ctx, |_, ctx| ctx.notify(RecoverMore));
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        // Recovery: every group with pending messages is ready after a restart — once the
        // streams this sink has marks on are reconciled (every shard waits for the same
        // writers; the first to ask starts them), or after `PREPARE_WAIT` if S2 is slow.
        let writers = self.local.prepare_marked_streams();
        if writers.is_empty() {
            self.all_pending(ctx);
            return;
        }
        let wait = async move {
            let all = futures_util::future::join_all(writers.iter().map(|w| w.prepared()));
            let _ = tokio::time::timeout(PREPARE_WAIT, all).await;
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, ctx| act.all_pending(ctx)));
    }
}

impl Handler<GroupsReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: GroupsReady, ctx: &mut Self::Context) {
        for g in msg.0 {
            self.make_ready(g);
        }
        self.pump(ctx);
    }
}

impl Handler<AllGroupsReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: AllGroupsReady, ctx: &mut Self::Context) {
        self.all_pending(ctx);
    }
}

impl Handler<GroupDone> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: GroupDone, ctx: &mut Self::Context) {
        let rearm = self.live.remove(&msg.group).unwrap_or(false);
        match msg.outcome {
            GroupOutcome::Empty if rearm => self.make_ready(msg.group),
            // A redeliver may have cleared the backoff while the actor was finishing.
            GroupOutcome::BackingOffUntil(_) if rearm => self.make_ready(msg.group),
            GroupOutcome::BackingOffUntil(at) => self.schedule(at, msg.group, ctx),
            GroupOutcome::Panicked => {
                let at = self.local.clock.now_millis() + 1_000;
                self.schedule(at, msg.group, ctx)
            }
            GroupOutcome::WaitFor(_) if rearm => self.make_ready(msg.group),
            GroupOutcome::WaitFor(chunk) => self.wait_for(chunk, msg.group, ctx),
            GroupOutcome::Empty | GroupOutcome::Stopped => {}
        }
        self.pump(ctx);
    }
}

impl Handler<LiveGroups> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: LiveGroups, _: &mut Self::Context) -> usize {
        self.live.len()
    }
}

impl Handler<GetShardInfo> for Supervisor {
    type Result = MessageResult<GetShardInfo>;

    fn handle(&mut self, _: GetShardInfo, _: &mut Self::Context) -> Self::Result {
        MessageResult(ShardInfo {
            shard: self.shard,
            thread: std::thread::current().id(),
            groups_started: self.started,
            live_groups: self.live.len(),
        })
    }
}
