//! A small first-in-first-out cache keyed by piece, bounded by the bytes
//! its values weigh. Holds what verify-on-read has checked: whole pieces
//! (so their blocks are served from memory, hashed once) and, for pieces
//! too large for that, their leaf hashes.

use std::collections::{HashMap, VecDeque};

use crate::layout::PieceIndex;

#[derive(Debug)]
pub(crate) struct PieceCache<V> {
    capacity: usize,
    used: usize,
    order: VecDeque<PieceIndex>,
    entries: HashMap<PieceIndex, (V, usize)>,
}

impl<V: Clone> PieceCache<V> {
    /// A cache holding at most `capacity` bytes of values.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            used: 0,
            order: VecDeque::new(),
            entries: HashMap::new(),
        }
    }

    pub(crate) fn contains(&self, piece: PieceIndex) -> bool {
        self.entries.contains_key(&piece)
    }

    pub(crate) fn get(&self, piece: PieceIndex) -> Option<V> {
        self.entries.get(&piece).map(|(v, _)| v.clone())
    }

    /// Keeps `value` (weighing `bytes`), dropping the oldest entries to
    /// make room; a value heavier than the whole cache is not kept.
    pub(crate) fn insert(&mut self, piece: PieceIndex, value: V, bytes: usize) {
        if bytes > self.capacity {
            return;
        }
        self.remove(piece);
        while self.used + bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.entries.remove(&old) {
                self.used -= w;
            }
        }
        self.order.push_back(piece);
        self.entries.insert(piece, (value, bytes));
        self.used += bytes;
    }

    pub(crate) fn remove(&mut self, piece: PieceIndex) {
        if let Some((_, w)) = self.entries.remove(&piece) {
            self.used -= w;
            self.order.retain(|p| *p != piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    #[test]
    fn the_oldest_go_first_and_the_bound_holds() {
        let l = Layout::from_lengths(16384, [10 * 16384]);
        let p = |i| l.piece(i).unwrap();
        let mut c = PieceCache::new(100);
        c.insert(p(0), 'a', 40);
        c.insert(p(1), 'b', 40);
        c.insert(p(2), 'c', 40);
        assert_eq!(
            (c.get(p(0)), c.get(p(1)), c.get(p(2))),
            (None, Some('b'), Some('c'))
        );
        c.insert(p(3), 'd', 101);
        assert_eq!(c.get(p(3)), None, "heavier than the cache");
        c.remove(p(1));
        c.insert(p(4), 'e', 60);
        assert_eq!((c.get(p(2)), c.get(p(4))), (Some('c'), Some('e')));
        assert!(c.used <= 100);
    }
}
