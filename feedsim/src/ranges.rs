//! A compact set of `u64` ids kept as sorted, disjoint, non-adjacent inclusive ranges.

/// Ids as merged inclusive ranges: consecutive ids cost one range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: Vec<(u64, u64)>,
    count: u64,
}

impl RangeSet {
    /// Adds one id; returns false if it was already present.
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        // Fast path: streams are emitted in order, so most ids extend the last range.
        if let Some(last) = self.ranges.last_mut() {
            if id == last.1.wrapping_add(1) && last.1 != u64::MAX {
                last.1 = id;
                self.count += 1;
                return true;
            }
            if id > last.1 {
                self.ranges.push((id, id));
                self.count += 1;
                return true;
            }
        }
        // First range whose end is >= id - 1 (could absorb or follow id).
        let i = self
            .ranges
            .partition_point(|&(_, end)| end.saturating_add(1) < id);
        if let Some(&(start, end)) = self.ranges.get(i)
            && start <= id
            && id <= end
        {
            return false;
        }
        let joins_left = i < self.ranges.len() && self.ranges[i].1.saturating_add(1) == id;
        let right = if joins_left { i + 1 } else { i };
        let joins_right = right < self.ranges.len() && self.ranges[right].0 == id.saturating_add(1);
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[i].1 = self.ranges[right].1;
                self.ranges.remove(right);
            }
            (true, false) => self.ranges[i].1 = id,
            (false, true) => self.ranges[right].0 = id,
            (false, false) => self.ranges.insert(i, (id, id)),
        }
        self.count += 1;
        true
    }

    /// Number of ids in the set.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// The ranges, sorted and merged.
    pub(crate) fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> RangeSet {
        let mut s = RangeSet::default();
        for &id in ids {
            s.insert(id);
        }
        s
    }

    #[test]
    fn contiguous_ids_merge_into_one_range() {
        let s = set(&[1, 2, 3, 4, 5]);
        assert_eq!(s.ranges(), &[(1, 5)]);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn gaps_make_ranges_and_filling_a_gap_merges_them() {
        let mut s = set(&[1, 2, 5, 6, 9]);
        assert_eq!(s.ranges(), &[(1, 2), (5, 6), (9, 9)]);
        s.insert(4);
        assert_eq!(s.ranges(), &[(1, 2), (4, 6), (9, 9)]);
        s.insert(3);
        assert_eq!(s.ranges(), &[(1, 6), (9, 9)]);
        s.insert(7);
        s.insert(8);
        assert_eq!(s.ranges(), &[(1, 9)]);
        assert_eq!(s.len(), 9);
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut s = set(&[10, 3, 7, 3, 10, 0]);
        assert_eq!(s.ranges(), &[(0, 0), (3, 3), (7, 7), (10, 10)]);
        assert_eq!(s.len(), 4);
        assert!(!s.insert(7));
        assert!(s.insert(1));
        assert!(s.insert(11));
        assert_eq!(s.ranges(), &[(0, 1), (3, 3), (7, 7), (10, 11)]);
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let s = set(&[u64::MAX, u64::MAX - 1, 0]);
        assert_eq!(s.ranges(), &[(0, 0), (u64::MAX - 1, u64::MAX)]);
    }
}
