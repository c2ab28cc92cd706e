//! The stored messages of one sink by id: a dense window of slots over the recent ids, and an
//! ordered map for the few old ids left behind it.
//!
//! Why: ids are handed out consecutively and mostly end (delivered) in roughly the order they
//! came, so a window indexed by `id - base` holds each message in 16 bytes and finds it
//! without a search. A `BTreeMap<u64, Msg>` took ~34 bytes per message (34 MB of a 1M-message
//! backlog's heap) and a tree walk with its cache misses per lookup, several lookups per
//! message. What the window must not do is grow with the ids a long-pending message has seen
//! go by (one group in backoff for an hour while the rest flow): once fewer than half of the
//! window's slots hold a message, its older half moves out, the messages in it into the
//! `sparse` map, so the window's length stays within twice its messages plus [`SLACK`].

use std::collections::{BTreeMap, VecDeque};

/// One stored message.
#[derive(Debug, Clone, Copy)]
pub struct Msg {
    /// Slot in the index's `Groups`, or `SOLO` (an ungrouped message).
    pub group: u32,
    /// Offset and length of the payload in its chunk's body.
    pub off: u32,
    pub len: u32,
    /// Visible to delivery: its batch is durable (see `Index::publish`).
    pub published: bool,
    /// Moved out of its chunk into its own keys (see the index's `Failed`).
    pub failed: bool,
}

impl Msg {
    /// A message of group `slot` at `off..off + len` of its chunk's body, not yet published.
    pub fn stored(group: u32, off: u32, len: u32) -> Msg {
        Msg {
            group,
            off,
            len,
            published: false,
            failed: false,
        }
    }
}

/// Vacant slots the window may carry beyond twice its messages before its older half moves
/// out: spares small windows the moves, and bounds the waste at 16 bytes per slot.
const SLACK: usize = 1024;

/// The stored messages by id (see the module notes).
#[derive(Default)]
pub struct Msgs {
    /// Id of `window[0]`. Every id in `sparse` is below it.
    base: u64,
    window: VecDeque<Option<Msg>>,
    /// Messages in `window`.
    dense: usize,
    sparse: BTreeMap<u64, Msg>,
}

impl Msgs {
    /// Builds the table from entries in ascending id order.
    pub fn from_sorted(entries: Vec<(u64, Msg)>) -> Msgs {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "ascending ids");
        let mut t = Msgs::default();
        for (id, m) in entries {
            t.insert(id, m);
        }
        t
    }

    /// Messages stored.
    pub fn len(&self) -> usize {
        self.dense + self.sparse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (i < self.window.len()).then_some(i)
    }

    pub fn get(&self, id: u64) -> Option<&Msg> {
        match self.slot(id) {
            Some(i) => self.window[i].as_ref(),
            None => self.sparse.get(&id),
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Msg> {
        match self.slot(id) {
            Some(i) => self.window[i].as_mut(),
            None => self.sparse.get_mut(&id),
        }
    }

    /// Stores message `id` (replacing one stored under it). Ids come mostly in ascending
    /// order; one below the window (an enqueue that took its ids before another but stored
    /// them after the window moved on) goes to the map.
    pub fn insert(&mut self, id: u64, m: Msg) {
        if self.window.is_empty() && self.sparse.last_key_value().is_none_or(|(&l, _)| l < id) {
            self.base = id;
        }
        if id < self.base {
            self.sparse.insert(id, m);
            return;
        }
        let len = self.window.len() as u64;
        // A jump far past the window (ids the queue skipped, or a table built from survivors
        // of a long history): the window moves there rather than filling the gap.
        if let Some(gap) = (id - self.base).checked_sub(len) {
            if gap > (2 * self.dense + SLACK) as u64 {
                self.spill(self.window.len());
                self.base = id;
            }
        }
        let i = (id - self.base) as usize;
        if i >= self.window.len() {
            self.window.resize(i + 1, None);
        }
        if self.window[i].replace(m).is_none() {
            self.dense += 1;
        }
        self.trim();
    }

    /// Takes message `id` out.
    pub fn remove(&mut self, id: u64) -> Option<Msg> {
        let Some(i) = self.slot(id) else {
            return self.sparse.remove(&id);
        };
        let m = self.window[i].take()?;
        self.dense -= 1;
        self.trim();
        Some(m)
    }

    /// Drops vacant slots at the window's front, and moves its older half out while fewer
    /// than half its slots hold a message; gives back room the window no longer uses.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
        while self.window.len() > 2 * self.dense + SLACK {
            self.spill(self.window.len() / 2);
        }
        if self.window.capacity() > 4 * self.window.len().max(SLACK) {
            self.window.shrink_to_fit();
        }
    }

    /// Moves the window's first `n` slots out (their messages into the map), then the vacant
    /// slots that follow them.
    fn spill(&mut self, n: usize) {
        for (k, slot) in self.window.drain(..n).enumerate() {
            if let Some(m) = slot {
                self.sparse.insert(self.base + k as u64, m);
                self.dense -= 1;
            }
        }
        self.base += n as u64;
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Every stored message in ascending id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &Msg)> + '_ {
        let base = self.base;
        self.sparse.iter().map(|(&id, m)| (id, m)).chain(
            self.window
                .iter()
                .enumerate()
                .filter_map(move |(k, s)| s.as_ref().map(|m| (base + k as u64, m))),
        )
    }

    /// The oldest stored message.
    pub fn first(&self) -> Option<(u64, &Msg)> {
        self.iter().next()
    }

    /// Slots in the window (for tests of its bound).
    #[cfg(test)]
    fn window_len(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(n: u32) -> Msg {
        Msg::stored(n, n, 1)
    }

    #[test]
    fn a_pinned_old_message_does_not_keep_the_ids_after_it_in_the_window() {
        let mut t = Msgs::default();
        // Message 0 stays (a group in backoff) while a million more come and go.
        for id in 0..1_000_000u64 {
            t.insert(id, msg(id as u32));
            if id > 0 {
                assert!(t.remove(id).is_some());
            }
            assert!(t.window_len() <= 2 * t.dense + SLACK, "window at id {id}");
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.first().map(|(id, m)| (id, m.group)), Some((0, 0)));
        assert!(t.window_len() <= SLACK);
    }

    #[test]
    fn ids_far_apart_do_not_fill_the_gap_between_them() {
        let t = Msgs::from_sorted(vec![
            (3, msg(3)),
            (1 << 40, msg(4)),
            ((1 << 40) + 2, msg(5)),
        ]);
        assert_eq!(t.len(), 3);
        assert!(t.window_len() <= 3);
        let ids: Vec<u64> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![3, 1 << 40, (1 << 40) + 2]);
        assert_eq!(t.get(1 << 40).map(|m| m.group), Some(4));
        assert!(t.get(4).is_none());
    }

    #[test]
    fn an_insert_below_the_window_is_kept_in_order() {
        let mut t = Msgs::default();
        for id in 100..110 {
            t.insert(id, msg(id as u32));
        }
        t.remove(100);
        t.remove(101);
        // An enqueue that took ids 101.. earlier stores them now, under the window's base.
        t.insert(101, msg(1));
        let ids: Vec<u64> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, (101..110).collect::<Vec<_>>());
        let back: Vec<u64> = t.iter().rev().map(|(id, _)| id).collect();
        assert_eq!(back, (101..110).rev().collect::<Vec<_>>());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert the next `n` ids after a gap of `gap`.
        Append {
            gap: u16,
            n: u8,
        },
        /// Insert an id somewhere below the newest (a late enqueue).
        Late(u32),
        /// Remove the `k`-th stored id (mod len).
        Remove(u32),
        Flip(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (prop_oneof![3 => Just(0u16), 1 => 0u16..3000], 1u8..20)
                .prop_map(|(gap, n)| Op::Append { gap, n }),
            1 => any::<u32>().prop_map(Op::Late),
            3 => any::<u32>().prop_map(Op::Remove),
            1 => any::<u32>().prop_map(Op::Flip),
        ]
    }

    proptest! {
        /// The table behaves as the ordered map it replaced, whatever the order of inserts
        /// and removals, and its window stays bounded by what it holds.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut t = Msgs::default();
            let mut model: BTreeMap<u64, Msg> = BTreeMap::new();
            let mut next = 0u64;
            for o in ops {
                match o {
                    Op::Append { gap, n } => {
                        next += gap as u64;
                        for _ in 0..n {
                            t.insert(next, msg(next as u32));
                            model.insert(next, msg(next as u32));
                            next += 1;
                        }
                    }
                    Op::Late(k) => {
                        let id = k as u64 % (next + 1);
                        t.insert(id, msg(7));
                        model.insert(id, msg(7));
                        next = next.max(id + 1);
                    }
                    Op::Remove(k) if !model.is_empty() => {
                        let id = *model.keys().nth(k as usize % model.len()).unwrap();
                        prop_assert_eq!(t.remove(id).map(|m| m.group), model.remove(&id).map(|m| m.group));
                        prop_assert!(t.remove(id).is_none());
                    }
                    Op::Remove(_) => {}
                    Op::Flip(k) => {
                        let id = k as u64 % (next + 1);
                        let a = t.get_mut(id).map(|m| { m.published = !m.published; m.published });
                        let b = model.get_mut(&id).map(|m| { m.published = !m.published; m.published });
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert!(t.window_len() <= 2 * t.dense + SLACK);
            }
            let got: Vec<(u64, u32, bool)> = t.iter().map(|(id, m)| (id, m.group, m.published)).collect();
            let want: Vec<(u64, u32, bool)> = model.iter().map(|(&id, m)| (id, m.group, m.published)).collect();
            prop_assert_eq!(&got, &want);
            let back: Vec<u64> = t.iter().rev().map(|(id, _)| id).collect();
            let want_back: Vec<u64> = model.keys().rev().copied().collect();
            prop_assert_eq!(back, want_back);
            prop_assert_eq!(t.first().map(|(id, _)| id), model.keys().next().copied());
            for id in 0..next + 2 {
                prop_assert_eq!(t.get(id).map(|m| m.group), model.get(&id).map(|m| m.group));
            }
        }
    }
}
