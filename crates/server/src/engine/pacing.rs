//! When a group paced to the queue's read-ahead stops waiting and reads its head itself.
//!
//! Why: the read-ahead's frontier only moves as the oldest chunks end, so a group whose
//! message pins the oldest chunk (slow to deliver) could hold every waiting group back; a
//! waiting group is let go once the frontier has not moved for [`STALL`]. While the frontier
//! moves, the read-ahead will reach the group's chunk soon, and reading it then is one whole,
//! in-order read instead of the group pulling a sled leaf per message: on a 1M-message restart
//! over 10k groups, letting groups go after a fixed 200 ms made 13k–79k group starts read
//! their heads from sled themselves whenever the machine was slow. A moving frontier is still
//! bounded: after [`LONGEST`] a group reads its head whatever the frontier does.

use tokio::time::{Duration, Instant};

/// How long the frontier may stand still before waiting groups (that waited this long
/// themselves) read their heads.
const STALL: Duration = Duration::from_millis(200);
/// The longest a group waits for the read-ahead, even while its frontier moves.
const LONGEST: Duration = Duration::from_secs(2);

/// The read-ahead's frontier as last seen, and since when it stands there.
#[derive(Debug)]
pub(crate) struct FrontierWatch {
    seen: u64,
    since: Instant,
}

impl FrontierWatch {
    /// A watch that has seen nothing yet (the first observation counts as a move).
    pub fn new(now: Instant) -> FrontierWatch {
        FrontierWatch {
            seen: 0,
            since: now,
        }
    }

    /// Records the frontier observed at `now`.
    pub fn observe(&mut self, frontier: u64, now: Instant) {
        if frontier > self.seen {
            self.seen = frontier;
            self.since = now;
        }
    }

    /// Whether a group waiting since `waiting_since` should stop waiting at `now`.
    pub fn let_go(&self, waiting_since: Instant, now: Instant) -> bool {
        let waited = now.saturating_duration_since(waiting_since);
        let stalled = now.saturating_duration_since(self.since);
        waited >= LONGEST || (waited >= STALL && stalled >= STALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_frontier_lets_groups_go_after_the_stall_limit() {
        let t0 = Instant::now();
        let mut w = FrontierWatch::new(t0);
        w.observe(100, t0);
        // The frontier never moves again.
        assert!(!w.let_go(t0, t0 + STALL - Duration::from_millis(1)));
        assert!(w.let_go(t0, t0 + STALL));
        // A group that started waiting later waits its own STALL too.
        let late = t0 + Duration::from_secs(1);
        assert!(!w.let_go(late, late + Duration::from_millis(50)));
        assert!(w.let_go(late, late + STALL));
    }

    #[test]
    fn a_moving_frontier_keeps_groups_waiting_until_the_longest_wait() {
        let t0 = Instant::now();
        let mut w = FrontierWatch::new(t0);
        let step = Duration::from_millis(50);
        let mut now = t0;
        let mut frontier = 0;
        while now < t0 + LONGEST - step {
            frontier += 1_000;
            w.observe(frontier, now);
            assert!(
                !w.let_go(t0, now),
                "let go at {:?} while the frontier moved",
                now - t0
            );
            now += step;
        }
        w.observe(frontier + 1_000, t0 + LONGEST);
        assert!(
            w.let_go(t0, t0 + LONGEST),
            "the longest wait bounds a moving frontier"
        );
    }

    #[test]
    fn a_frontier_seen_again_at_the_same_place_is_not_a_move() {
        let t0 = Instant::now();
        let mut w = FrontierWatch::new(t0);
        w.observe(500, t0);
        w.observe(500, t0 + Duration::from_millis(150));
        w.observe(400, t0 + Duration::from_millis(190));
        assert!(w.let_go(t0, t0 + STALL));
    }
}
