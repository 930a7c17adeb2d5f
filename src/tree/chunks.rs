//! Which chunks of a file's contents a replica misses: the unit of range-granular repair.
//!
//! A file is cut into [`CHUNK`]-sized chunks; a write a replica misses marks the chunks it
//! touched, and repair copies only those (plus the size and attributes, always). Ranges
//! are kept sorted and disjoint. A write that continues a marked run (a file written
//! sequentially) marks ahead of itself, doubling the run up to [`MAX_AHEAD`] chunks, so
//! that a long sequential write makes a handful of records instead of one per chunk, at
//! the cost of copying at most one extra run.

/// The unit content is marked, copied and compared in.
pub const CHUNK: u64 = 1 << 20;

/// The most chunks one write marks beyond what it touched.
const MAX_AHEAD: u64 = 64;

/// The chunk range `[first, end)` that bytes `[offset, offset + len)` touch; a length of
/// `u64::MAX` means "to the end of the file, whatever its size".
pub fn chunks_of(offset: u64, len: u64) -> (u64, u64) {
    let first = offset / CHUNK;
    if len == u64::MAX {
        return (first, u64::MAX);
    }
    if len == 0 {
        return (first, first);
    }
    let last = offset.saturating_add(len - 1) / CHUNK;
    (first, last + 1)
}

/// A set of chunk indexes, as sorted disjoint half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunks {
    ranges: Vec<(u64, u64)>,
}

impl Chunks {
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether every chunk of `[first, end)` is in the set.
    fn covers(&self, first: u64, end: u64) -> bool {
        first >= end || self.ranges.iter().any(|&(a, b)| a <= first && end <= b)
    }

    /// Adds `[first, end)` exactly.
    pub fn add(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let (mut a, mut b) = (first, end);
        self.ranges.retain(|&(x, y)| {
            if y < a || x > b {
                true
            } else {
                a = a.min(x);
                b = b.max(y);
                false
            }
        });
        let at = self.ranges.partition_point(|&(x, _)| x < a);
        self.ranges.insert(at, (a, b));
    }

    /// Marks `[first, end)` for a write, marking ahead when it continues a run. Returns the
    /// range added, or `None` when the set covered it already.
    pub fn mark(&mut self, first: u64, end: u64) -> Option<(u64, u64)> {
        if self.covers(first, end) {
            return None;
        }
        let run = self
            .ranges
            .iter()
            .find(|&&(_, b)| b == first)
            .map_or(0, |&(a, b)| b - a);
        let end = end.max(first.saturating_add(run.min(MAX_AHEAD)));
        self.add(first, end);
        Some((first, end))
    }

    /// The byte ranges to copy from a source `size` bytes long.
    pub fn byte_ranges(&self, size: u64) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .filter_map(|&(a, b)| {
                let start = a.saturating_mul(CHUNK);
                let end = b.saturating_mul(CHUNK).min(size);
                (start < end).then_some((start, end - start))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_map_to_chunks() {
        assert_eq!(chunks_of(0, 1), (0, 1));
        assert_eq!(chunks_of(CHUNK - 1, 2), (0, 2));
        assert_eq!(chunks_of(3 * CHUNK, CHUNK), (3, 4));
        assert_eq!(chunks_of(5 * CHUNK + 7, 0), (5, 5));
        assert_eq!(chunks_of(2 * CHUNK, u64::MAX), (2, u64::MAX));
    }

    #[test]
    fn ranges_merge_and_stay_sorted() {
        let mut c = Chunks::default();
        c.add(10, 12);
        c.add(2, 3);
        c.add(11, 15);
        c.add(3, 4);
        assert_eq!(c.ranges(), &[(2, 4), (10, 15)]);
        c.add(0, 100);
        assert_eq!(c.ranges(), &[(0, 100)]);
    }

    #[test]
    fn a_sequential_write_marks_ahead_in_doubling_runs() {
        let mut c = Chunks::default();
        let mut records = 0;
        for chunk in 0..1024 {
            if c.mark(chunk, chunk + 1).is_some() {
                records += 1;
            }
        }
        assert!(records < 30, "{records} records for one sequential write");
        // Never more than one run ahead of the last chunk written.
        assert!(c.ranges()[0].1 <= 1024 + MAX_AHEAD);
        // A scattered write marks only what it touched.
        let mut s = Chunks::default();
        assert_eq!(s.mark(500, 503), Some((500, 503)));
        assert_eq!(s.mark(501, 502), None);
        assert_eq!(s.byte_ranges(u64::MAX), vec![(500 * CHUNK, 3 * CHUNK)]);
        // Past the end of the source there is nothing to copy.
        assert_eq!(
            s.byte_ranges(501 * CHUNK + 10),
            vec![(500 * CHUNK, CHUNK + 10)]
        );
    }
}
