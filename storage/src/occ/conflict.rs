//! The conflict index: key ranges and the sorted write sets of committed
//! transactions that a later commit's reads are checked against.

use bytes::Bytes;

/// A key range `[begin, end)`; `end: None` is the single key `begin`.
#[derive(Clone, Debug)]
pub(super) struct KeyRange {
    pub(super) begin: Bytes,
    pub(super) end: Option<Bytes>,
}

impl KeyRange {
    pub(super) fn point(key: Bytes) -> Self {
        Self {
            begin: key,
            end: None,
        }
    }

    pub(super) fn span(begin: &[u8], end: &[u8]) -> Self {
        Self {
            begin: Bytes::copy_from_slice(begin),
            end: Some(Bytes::copy_from_slice(end)),
        }
    }

    /// Whether the range ends past `key` (a point `k` ends at `k+0x00`).
    fn ends_after(&self, key: &[u8]) -> bool {
        match &self.end {
            None => self.begin.as_ref() >= key,
            Some(end) => end.as_ref() > key,
        }
    }

    pub(super) fn intersects(&self, other: &KeyRange) -> bool {
        // [a, b) ∩ [c, d) ≠ ∅  ⇔  a < d ∧ c < b, with points as [k, k+0x00).
        let begins_before_end = |r: &KeyRange, o: &KeyRange| match &o.end {
            None => r.begin.as_ref() <= o.begin.as_ref(),
            Some(end) => r.begin.as_ref() < end.as_ref(),
        };
        begins_before_end(self, other) && begins_before_end(other, self)
    }

    pub(super) fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => self.begin.as_ref() == key,
            Some(end) => self.begin.as_ref() <= key && key < end.as_ref(),
        }
    }
}

/// The write ranges of one committed transaction, sorted for lookup.
#[derive(Debug)]
pub(super) struct WriteSet {
    pub(super) version: u64,
    /// Sorted by `begin`.
    ranges: Vec<KeyRange>,
    /// `max_end[i]`: index of the range with the greatest end among
    /// `ranges[..=i]`, so "does any range begin below b and end above a" is
    /// one binary search.
    max_end: Vec<usize>,
}

impl WriteSet {
    pub(super) fn new(version: u64, mut ranges: Vec<KeyRange>) -> Self {
        ranges.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut max_end = Vec::with_capacity(ranges.len());
        let mut best = 0usize;
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 && end_greater(r, &ranges[best]) {
                best = i;
            }
            max_end.push(best);
        }
        Self {
            version,
            ranges,
            max_end,
        }
    }

    pub(super) fn intersects(&self, read: &KeyRange) -> bool {
        // Ranges beginning at or past the read's end cannot touch it.
        let n = self.ranges.partition_point(|w| match &read.end {
            None => w.begin.as_ref() <= read.begin.as_ref(),
            Some(end) => w.begin.as_ref() < end.as_ref(),
        });
        if n == 0 {
            return false;
        }
        // Every range here begins before the read ends, so one of them
        // meets the read exactly when the one reaching furthest ends past
        // the read's first key.
        self.ranges[self.max_end[n - 1]].ends_after(&read.begin)
    }
}

fn end_greater(a: &KeyRange, b: &KeyRange) -> bool {
    // Compare ends, a point key k ending at k+0x00.
    fn end_key(r: &KeyRange) -> (&[u8], bool) {
        match &r.end {
            None => (r.begin.as_ref(), true),
            Some(e) => (e.as_ref(), false),
        }
    }
    let (ea, pa) = end_key(a);
    let (eb, pb) = end_key(b);
    // k+0x00 sorts right after k: compare (key, is_point).
    (ea, pa) > (eb, pb)
}

/// A committed member's write ranges, sorted on first use.
#[derive(Debug)]
pub(super) enum LazyWriteSet {
    Raw(Vec<KeyRange>),
    Sorted(WriteSet),
}

impl LazyWriteSet {
    pub(super) fn sorted(&mut self, version: u64) -> &WriteSet {
        if let LazyWriteSet::Raw(ranges) = self {
            *self = LazyWriteSet::Sorted(WriteSet::new(version, std::mem::take(ranges)));
        }
        match self {
            LazyWriteSet::Sorted(w) => w,
            LazyWriteSet::Raw(_) => unreachable!("sorted just above"),
        }
    }

    pub(super) fn into_sorted(self, version: u64) -> WriteSet {
        match self {
            LazyWriteSet::Raw(ranges) => WriteSet::new(version, ranges),
            LazyWriteSet::Sorted(w) => w,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn write_set_finds_intersections() {
        let ws = WriteSet::new(
            1,
            vec![
                KeyRange::point(b("b")),
                KeyRange::span(b"d", b"f"),
                KeyRange::point(b("x")),
            ],
        );
        assert!(ws.intersects(&KeyRange::point(b("b"))));
        assert!(!ws.intersects(&KeyRange::point(b("c"))));
        assert!(ws.intersects(&KeyRange::point(b("e"))));
        assert!(!ws.intersects(&KeyRange::point(b("f"))));
        assert!(ws.intersects(&KeyRange::span(b"a", b"c")));
        assert!(!ws.intersects(&KeyRange::span(b"c", b"d")));
        assert!(ws.intersects(&KeyRange::span(b"c", b"d\x00")));
        assert!(ws.intersects(&KeyRange::span(b"e0", b"e1")));
        assert!(!ws.intersects(&KeyRange::span(b"f", b"x")));
        assert!(ws.intersects(&KeyRange::span(b"f", b"x\x00")));
        assert!(!ws.intersects(&KeyRange::span(b"y", b"z")));
    }
}
