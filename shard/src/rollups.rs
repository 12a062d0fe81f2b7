//! An in-memory cache of exception numbers per block of time (ten minutes, one hour, six
//! hours, and a window's whole hours together), for the ranking pass of unfiltered top-K
//! questions.
//!
//! A window is cut into whole hours, whole ten-minute blocks at its edges, and single minutes
//! at the very ends. Each whole block's per-exception numbers are read once from RocksDB (the
//! hourly rollups, or the minute rows of ten minutes) and kept here, so a dashboard asking for
//! the last 24 hours every few seconds reads a few thousand cached numbers per shard instead of
//! a few hundred thousand rows. The sum of a window's whole hours is kept too, as one
//! [`Block::Hours`] span: a sliding window keeps the same whole hours for up to an hour, so a
//! repeated question adds up its edges only.
//!
//! Exactness: every write of counter rows (an apply's, or the shard's pending sums: see
//! `Shard::flush_counters`), *after* its write batch is in RocksDB, adds the rows' numbers into
//! the cached blocks they fall in (so blocks stay cached, and exact, under live ingest), and
//! marks the blocks some reader is reading. A reader registers a block
//! before reading it and caches what it read only when no counter write touched that block in between;
//! otherwise it uses what it read for its own answer (a consistent view as of its read) and
//! leaves the block uncached. So a cached block always equals what RocksDB holds for it.
//!
//! Versions: a cached block carries a version, drawn from a counter of the cache that only
//! grows, and renewed whenever a counter write changes the block. Equal versions of one block mean
//! equal numbers, so a coordinator can keep a sum of several shards' spans and reuse it while
//! every shard reports the versions it was summed from.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::exceptions::{merge_into, IdMap, Numbers};

/// A block of time: its level and its index (minutes / 10, or hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// Ten minutes: minutes `10 t .. 10 t + 10`.
    Ten(i64),
    /// An hour: minutes `60 h .. 60 h + 60`.
    Hour(i64),
    /// Six hours (UTC-aligned): minutes `360 s .. 360 s + 360`.
    Six(i64),
    /// Whole hours `start..end`: the sum of the hour and six-hour blocks that cover them.
    Hours(i64, i64),
    /// An hour of the minute rows that pass a filter (environment, region, level…), named by a
    /// 128-bit hash of the filter: the ranking pass of a filtered top-K. A counter write into
    /// the hour drops it (which of the written rows pass is not known here).
    Filtered(u128, i64),
}

impl Block {
    /// The minutes the block covers.
    pub fn minutes(self) -> Range<i64> {
        match self {
            Block::Ten(t) => t * 10..t * 10 + 10,
            Block::Hour(h) => h * 60..h * 60 + 60,
            Block::Six(x) => x * 360..x * 360 + 360,
            Block::Hours(a, b) => a * 60..b * 60,
            Block::Filtered(_, h) => h * 60..h * 60 + 60,
        }
    }
}

/// Spans ([`Block::Hours`]) a shard keeps at once; the oldest goes first. A few windows
/// (1 h, 24 h, 7 d) asked over and over each keep one.
pub const SPANS_MAX: usize = 4;

/// Per-exception numbers of one block.
pub type BlockNumbers = Arc<IdMap<Numbers>>;

/// A cached block's numbers and their version.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Per-exception numbers.
    pub numbers: BlockNumbers,
    /// Renewed by every counter write that changes them (see the module's doc).
    pub version: u64,
}

/// The numbers of a window's whole hours, from one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoursNumbers {
    /// The hours (since the epoch) they cover.
    pub hours: Range<i64>,
    /// Per-exception numbers.
    #[serde(with = "shared_numbers")]
    pub numbers: BlockNumbers,
    /// The version they are cached under in the shard (None: read for one question only).
    pub version: Option<u64>,
}

/// One shard's per-exception numbers over a window, in two parts that add up to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WindowNumbers {
    /// The window's whole hours, when it has any.
    pub hours: Option<HoursNumbers>,
    /// The rest: whole ten-minute blocks and single minutes at the ends.
    pub edges: IdMap<Numbers>,
}

/// [`BlockNumbers`] sent as the numbers they share (serde's `rc` feature would do the same).
mod shared_numbers {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::BlockNumbers;
    use crate::exceptions::{IdMap, Numbers};

    pub fn serialize<S: Serializer>(numbers: &BlockNumbers, s: S) -> Result<S::Ok, S::Error> {
        numbers.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlockNumbers, D::Error> {
        IdMap::<Numbers>::deserialize(d).map(Arc::new)
    }
}

#[derive(Default)]
struct Slot {
    /// Bumped by every counter write that touches the block.
    generation: u64,
    /// Readers between registering and finishing.
    readers: usize,
    cached: Option<Cached>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Block, Slot>,
    /// The [`Block::Hours`] slots present, oldest first.
    spans: Vec<Block>,
    /// Numbers held in `cached` over all slots.
    entries: usize,
    /// The last version handed out.
    version: u64,
}

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn remove(&mut self, block: Block) {
        if let Some(slot) = self.slots.remove(&block) {
            if let Some(c) = slot.cached {
                self.entries -= c.numbers.len();
            }
        }
        self.spans.retain(|b| *b != block);
    }

    /// Drops every cached block (readers in flight keep their slots, uncached).
    fn drop_all(&mut self) {
        self.slots.retain(|_, s| s.readers > 0);
        for s in self.slots.values_mut() {
            s.generation += 1;
            s.cached = None;
        }
        let slots = &self.slots;
        self.spans.retain(|b| slots.contains_key(b));
        self.entries = 0;
    }
}

/// The cache of one shard, bounded by the numbers it holds.
pub struct RollupCache {
    inner: Mutex<Inner>,
    max_entries: usize,
}

/// A reader's registration of a block (see [`RollupCache::begin`]).
#[derive(Debug)]
pub struct Reading {
    block: Block,
    generation: u64,
}

impl RollupCache {
    /// A cache holding at most `max_entries` per-exception numbers (0 disables it).
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is counters and immutable maps; a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached numbers of `block`, or a registration to read them and hand them back.
    pub fn begin(&self, block: Block) -> Result<Cached, Reading> {
        let mut inner = self.lock();
        if matches!(block, Block::Hours(..)) && !inner.slots.contains_key(&block) {
            inner.spans.push(block);
        }
        let slot = inner.slots.entry(block).or_default();
        if let Some(cached) = &slot.cached {
            return Ok(cached.clone());
        }
        slot.readers += 1;
        Err(Reading {
            block,
            generation: slot.generation,
        })
    }

    /// Ends a read: caches `numbers` when no counter write touched the block since [`Self::begin`], and
    /// returns the version they are cached under (None: not cached).
    pub fn finish(&self, reading: Reading, numbers: BlockNumbers) -> Option<u64> {
        let mut inner = self.lock();
        let len = numbers.len();
        let slot = inner.slots.get_mut(&reading.block)?;
        slot.readers = slot.readers.saturating_sub(1);
        let fresh = slot.generation == reading.generation && slot.cached.is_none();
        let idle = slot.readers == 0 && slot.cached.is_none();
        if !fresh || self.max_entries == 0 {
            if idle {
                inner.remove(reading.block);
            }
            return None;
        }
        if inner.entries + len > self.max_entries {
            // Over the bound: start again (cheap, and a block is re-read at most once per use).
            inner.drop_all();
        }
        if matches!(reading.block, Block::Hours(..)) {
            if !inner.spans.contains(&reading.block) {
                inner.spans.push(reading.block);
            }
            // The oldest idle spans past the bound go.
            while inner.spans.len() > SPANS_MAX {
                let slots = &inner.slots;
                let Some(old) = inner
                    .spans
                    .iter()
                    .find(|b| **b != reading.block && slots.get(b).is_none_or(|s| s.readers == 0))
                    .copied()
                else {
                    break;
                };
                inner.remove(old);
            }
        }
        let version = inner.next_version();
        let slot = inner.slots.entry(reading.block).or_default();
        slot.cached = Some(Cached { numbers, version });
        inner.entries += len;
        Some(version)
    }

    /// Ends a read that failed: nothing is cached.
    pub fn abandon(&self, reading: Reading) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(&reading.block) {
            slot.readers = slot.readers.saturating_sub(1);
            if slot.readers == 0 && slot.cached.is_none() {
                inner.remove(reading.block);
            }
        }
    }

    /// Called after a counter write's batch is in RocksDB with the numbers it added, per
    /// (minute, exception): adds them into the cached blocks holding those minutes, and keeps
    /// readers in flight on those blocks from caching what they read.
    pub fn applied(&self, rows: &[(i64, u64, Numbers)]) {
        let mut guard = self.lock();
        if guard.slots.is_empty() {
            return;
        }
        let inner = &mut *guard;
        let mut added = 0;
        for &(minute, id, numbers) in rows {
            let fixed = [
                Block::Ten(minute.div_euclid(10)),
                Block::Hour(minute.div_euclid(60)),
                Block::Six(minute.div_euclid(360)),
            ];
            let spans = inner.spans.iter().filter(|b| b.minutes().contains(&minute));
            for block in fixed.iter().chain(spans) {
                let Some(slot) = inner.slots.get_mut(block) else {
                    continue;
                };
                if slot.readers > 0 {
                    slot.generation += 1;
                }
                if let Some(cached) = &mut slot.cached {
                    let map = Arc::make_mut(&mut cached.numbers);
                    added += usize::from(!map.contains_key(&id));
                    merge_into(map, id, numbers);
                    inner.version += 1;
                    cached.version = inner.version;
                }
            }
        }
        inner.entries += added;
        // Filtered hours the rows fall in: dropped (or, while read, kept from being cached). A
        // look over the slots' keys, a few thousand at most, once per counter write.
        let mut hours: Vec<i64> = rows.iter().map(|r| r.0.div_euclid(60)).collect();
        hours.sort_unstable();
        hours.dedup();
        let touched: Vec<Block> = inner
            .slots
            .keys()
            .filter(|b| matches!(b, Block::Filtered(_, h) if hours.binary_search(h).is_ok()))
            .copied()
            .collect();
        for block in touched {
            let Some(slot) = inner.slots.get_mut(&block) else {
                continue;
            };
            if slot.readers > 0 {
                slot.generation += 1;
                if let Some(c) = slot.cached.take() {
                    inner.entries -= c.numbers.len();
                }
            } else {
                inner.remove(block);
            }
        }
    }

    /// Forgets everything (after a snapshot is installed).
    pub fn clear(&self) {
        self.lock().drop_all();
    }
}

/// Splits `start..end` (in some unit) at multiples of `n`: the part before the first whole
/// group, the whole groups (as group indices), the part after the last. None when no whole
/// group fits.
pub fn split(start: i64, end: i64, n: i64) -> Option<(Range<i64>, Range<i64>, Range<i64>)> {
    let first = start.div_euclid(n) + i64::from(start.rem_euclid(n) != 0);
    let last = end.div_euclid(n);
    (first < last).then(|| (start..first * n, first..last, last * n..end))
}

/// How a minute range `start..end` is read: single minutes, whole ten-minute blocks, whole
/// hours and whole six-hour blocks, covering it exactly once.
pub fn plan(start: i64, end: i64) -> (Vec<Range<i64>>, Vec<Block>) {
    let mut minutes = Vec::new();
    let mut blocks = Vec::new();
    let mut tens = |r: Range<i64>, minutes: &mut Vec<Range<i64>>| match split(r.start, r.end, 10) {
        Some((head, whole, tail)) => {
            minutes.extend([head, tail]);
            blocks.extend(whole.map(Block::Ten));
        }
        None => minutes.push(r),
    };
    match split(start, end, 60) {
        Some((head, hours, tail)) => {
            tens(head, &mut minutes);
            tens(tail, &mut minutes);
            match split(hours.start, hours.end, 6) {
                Some((before, sixes, after)) => {
                    blocks.extend(before.chain(after).map(Block::Hour));
                    blocks.extend(sixes.map(Block::Six));
                }
                None => blocks.extend(hours.map(Block::Hour)),
            }
        }
        None => tens(start..end, &mut minutes),
    }
    minutes.retain(|r| !r.is_empty());
    (minutes, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_covers_the_range_exactly_once() {
        for start in -130..130 {
            for len in [
                0, 1, 9, 10, 11, 59, 60, 61, 119, 120, 200, 359, 360, 361, 721, 1440, 10080,
            ] {
                let end = start + len;
                let (minutes, blocks) = plan(start, end);
                let mut covered: Vec<i64> = minutes.into_iter().flatten().collect();
                covered.extend(blocks.iter().flat_map(|b| b.minutes()));
                covered.sort();
                assert_eq!(covered, (start..end).collect::<Vec<_>>(), "{start}..{end}");
            }
        }
        // A day reads at most 2 × 9 single minutes and 2 × 5 ten-minute blocks besides hours.
        let (minutes, blocks) = plan(7, 7 + 1440);
        assert!(minutes.iter().map(|r| r.end - r.start).sum::<i64>() <= 18);
        assert!(blocks.iter().filter(|b| matches!(b, Block::Ten(_))).count() <= 10);
        assert!(
            blocks
                .iter()
                .filter(|b| matches!(b, Block::Hour(_)))
                .count()
                <= 10
        );
    }

    #[test]
    fn a_block_written_during_a_read_is_not_cached_and_cached_blocks_take_writes() {
        let cache = RollupCache::new(1000);
        let one = count(1);
        let numbers: BlockNumbers = Arc::new([(1, one)].into_iter().collect());
        let reading = cache.begin(Block::Hour(5)).expect_err("empty cache");
        cache.applied(&[(5 * 60 + 3, 1, one)]);
        cache.finish(reading, numbers.clone());
        assert!(
            cache.begin(Block::Hour(5)).is_err(),
            "a stale read was cached"
        );
        // A quiet read is cached, and a later write is added into it.
        let reading = cache.begin(Block::Hour(6)).expect_err("empty cache");
        cache.finish(reading, numbers.clone());
        cache.applied(&[(6 * 60, 1, one), (6 * 60 + 1, 2, one)]);
        let cached = cache.begin(Block::Hour(6)).expect("cached");
        assert_eq!(cached.numbers.get(&1).map(|n| n.count), Some(2));
        assert_eq!(cached.numbers.get(&2).map(|n| n.count), Some(1));
    }

    /// Numbers of `n` occurrences at time 0.
    fn count(n: u64) -> Numbers {
        Numbers {
            count: n,
            first_seen_us: 0,
            last_seen_us: 0,
        }
    }

    fn numbers_of(pairs: &[(u64, u64)]) -> BlockNumbers {
        Arc::new(pairs.iter().map(|&(id, n)| (id, count(n))).collect())
    }

    #[test]
    fn spans_take_writes_inside_them_and_renew_their_version() {
        let cache = RollupCache::new(1000);
        let one = count(1);
        let span = Block::Hours(10, 34);
        let reading = cache.begin(span).expect_err("empty cache");
        // A write inside the span while it is read: not cached.
        cache.applied(&[(20 * 60, 7, one)]);
        assert_eq!(cache.finish(reading, numbers_of(&[(7, 1)])), None);
        let reading = cache.begin(span).expect_err("a stale read was cached");
        let v1 = cache
            .finish(reading, numbers_of(&[(7, 2)]))
            .expect("a quiet read is cached");
        let cached = cache.begin(span).expect("cached");
        assert_eq!(cached.version, v1);
        // A write outside the span changes neither its numbers nor its version.
        cache.applied(&[(34 * 60, 7, one), (10 * 60 - 1, 7, one)]);
        let same = cache.begin(span).expect("cached");
        assert_eq!(
            (same.version, same.numbers.get(&7).map(|n| n.count)),
            (v1, Some(2))
        );
        // A write inside: added in place, new version.
        cache.applied(&[(33 * 60 + 59, 7, one), (10 * 60, 8, one)]);
        let after = cache.begin(span).expect("cached");
        assert!(after.version > v1);
        assert_eq!(after.numbers.get(&7).map(|n| n.count), Some(3));
        assert_eq!(after.numbers.get(&8).map(|n| n.count), Some(1));
        // The version handed out before still names the numbers of then.
        assert_eq!(cached.numbers.get(&7).map(|n| n.count), Some(2));
    }

    #[test]
    fn spans_past_the_bound_go_oldest_first_and_versions_never_repeat() {
        let cache = RollupCache::new(1000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..(SPANS_MAX as i64 + 3) {
            let span = Block::Hours(i, i + 24);
            let reading = cache.begin(span).expect_err("new span");
            let v = cache
                .finish(reading, numbers_of(&[(1, 1)]))
                .expect("cached");
            assert!(seen.insert(v), "version {v} handed out twice");
        }
        let mut cached = Vec::new();
        for i in 0..(SPANS_MAX as i64 + 3) {
            match cache.begin(Block::Hours(i, i + 24)) {
                Ok(_) => cached.push(i),
                Err(reading) => cache.abandon(reading),
            }
        }
        assert_eq!(cached, (3..(SPANS_MAX as i64 + 3)).collect::<Vec<_>>());
        // Re-reading an evicted span gives a version never seen before.
        let reading = cache.begin(Block::Hours(0, 24)).expect_err("evicted");
        let v = cache
            .finish(reading, numbers_of(&[(1, 1)]))
            .expect("cached");
        assert!(seen.insert(v));
    }
}
