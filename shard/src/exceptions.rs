//! Exception counters, kept on apply: per shard, per minute, per exception and per
//! (environment, region, level), a count with first and last seen and a few sample log_ids.
//! Because they are written in the apply write batch, every replica holds the same counts and
//! a replayed or retried batch (whose entries are already in the idempotency set) is not
//! counted twice; a snapshot install recounts from the installed entries.
//!
//! Column family `exceptions`: `shard u32 | minute (sign-flipped) u64 | exception_id u64 |
//! dims u64` → [`Counter`] (bincode).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::entry::StoredEntry;
use crate::ShardId;

/// Column family of the exception counters.
pub const CF_EXCEPTIONS: &str = "exceptions";

/// Column family of the same counts by exception first, over all dimensions:
/// `shard u32 | exception_id u64 | minute (sign-flipped) u64` → [`Counter`]. One exception's
/// history (details, trend, first ever seen) is one short range here.
pub const CF_EXCEPTION_HISTORY: &str = "exception_history";

/// Sample log_ids kept per counter row (and per answer item).
pub const SAMPLES_MAX: usize = 3;

/// The seed's exception id as a number: xxh3-64 of `service ‖ 0 ‖ type`.
pub fn exception_id(exception_type: &str, service: &str) -> u64 {
    let mut buf = Vec::with_capacity(service.len() + 1 + exception_type.len());
    buf.extend_from_slice(service.as_bytes());
    buf.push(0);
    buf.extend_from_slice(exception_type.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// The seed's exception id as the API writes it: 16 hex digits.
pub fn exception_id_string(exception_type: &str, service: &str) -> String {
    format!("{:016x}", exception_id(exception_type, service))
}

/// One counter row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// The exception's type.
    pub exception_type: String,
    /// The service.
    pub service: String,
    /// The environment of the counted entries.
    pub environment: Option<String>,
    /// The region of the counted entries.
    pub region: Option<String>,
    /// The level of the counted entries (`ERROR`…).
    pub level: String,
    /// How many.
    pub count: u64,
    /// Earliest entry timestamp counted, µs.
    pub first_seen_us: i64,
    /// Latest entry timestamp counted, µs.
    pub last_seen_us: i64,
    /// Up to [`SAMPLES_MAX`] log_ids (the latest ones).
    pub samples: Vec<Uuid>,
    /// Distinct hosts seen, sorted, at most [`METADATA_VALUES_MAX`].
    pub hosts: Vec<String>,
    /// Distinct regions seen, sorted, at most [`METADATA_VALUES_MAX`].
    pub regions: Vec<String>,
    /// Distinct `user_id`s seen, sorted, at most [`USERS_MAX`].
    pub users: Vec<String>,
    /// True when more distinct hosts, regions or users were seen than are kept.
    pub metadata_capped: bool,
}

/// Distinct hosts and regions kept per counter.
pub const METADATA_VALUES_MAX: usize = 8;
/// Distinct affected users counted exactly per counter; past it the count is a lower bound.
pub const USERS_MAX: usize = 256;

/// Adds `from` into the sorted distinct list `into`, keeping at most `max`; true when values
/// had to be left out.
fn merge_distinct(into: &mut Vec<String>, from: &[String], max: usize) -> bool {
    let mut capped = false;
    for v in from {
        // Both lists are sorted: once `into` is full, a value past its last one (and every value
        // after it in `from`) would be cut off again, so stop without inserting.
        if into.len() >= max && into.last().is_some_and(|last| v > last) {
            return true;
        }
        if let Err(at) = into.binary_search(v) {
            into.insert(at, v.clone());
            if into.len() > max {
                into.pop();
                capped = true;
            }
        }
    }
    capped
}

/// The `user_id` of an entry's free fields (a string, or a number as its text): the fields are
/// parsed into just that one value, the others skipped without building them.
fn user_of(fields_json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct UserField {
        user_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<UserField>(fields_json)
        .ok()?
        .user_id?
    {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Counter {
    /// The counter's count, first and last seen.
    pub fn numbers(&self) -> Numbers {
        Numbers {
            count: self.count,
            first_seen_us: self.first_seen_us,
            last_seen_us: self.last_seen_us,
        }
    }

    fn of(e: &StoredEntry, exception_type: &str) -> Counter {
        let user = user_of(&e.fields_json);
        Counter {
            hosts: e.host.iter().cloned().collect(),
            regions: e.region.iter().cloned().collect(),
            users: user.into_iter().collect(),
            metadata_capped: false,
            exception_type: exception_type.to_string(),
            service: e.service.clone(),
            environment: e.environment.clone(),
            region: e.region.clone(),
            level: e.level.as_str().to_string(),
            count: 1,
            first_seen_us: e.timestamp_us,
            last_seen_us: e.timestamp_us,
            samples: vec![e.log_id],
        }
    }

    /// Adds another counter of the same row (or the same exception) into this one.
    pub fn merge(&mut self, other: &Counter) {
        self.count += other.count;
        self.first_seen_us = self.first_seen_us.min(other.first_seen_us);
        if other.last_seen_us >= self.last_seen_us {
            self.last_seen_us = other.last_seen_us;
        }
        merge_samples(&mut self.samples, &other.samples);
        let capped = merge_distinct(&mut self.hosts, &other.hosts, METADATA_VALUES_MAX)
            | merge_distinct(&mut self.regions, &other.regions, METADATA_VALUES_MAX)
            | merge_distinct(&mut self.users, &other.users, USERS_MAX);
        self.metadata_capped |= capped || other.metadata_capped;
    }
}

/// Something that adds up: counters and their numbers.
pub trait Mergeable {
    /// Adds `other` into `self`.
    fn merge_from(&mut self, other: &Self);
}

impl Mergeable for Counter {
    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }
}

impl Mergeable for Numbers {
    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }
}

/// Adds `value` into `map[key]`, or inserts it.
pub fn merge_into<K: std::hash::Hash + Eq, V: Mergeable, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
    key: K,
    value: V,
) {
    match map.get_mut(&key) {
        Some(existing) => existing.merge_from(&value),
        None => {
            map.insert(key, value);
        }
    }
}

/// Keeps the [`SAMPLES_MAX`] greatest log_ids (UUIDv7: the latest) of both lists.
pub fn merge_samples(into: &mut Vec<Uuid>, from: &[Uuid]) {
    into.extend_from_slice(from);
    into.sort_unstable_by(|a, b| b.cmp(a));
    into.dedup();
    into.truncate(SAMPLES_MAX);
}

/// A map keyed by exception id. Ids are already xxh3 hashes, uniformly spread, so the map uses
/// them as their own hash instead of hashing them again (SipHash was a third of a 24 h ranking).
pub type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`]: the id itself.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed through `write_u64`; anything else still gets a spread.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The minute (since the epoch) of a timestamp in µs.
pub fn minute_of(timestamp_us: i64) -> i64 {
    timestamp_us.div_euclid(60_000_000)
}

fn flip(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// `shard | parts…`, all big-endian: the layout of every exception family's keys (`N` is
/// 4 + 8 × `P`, checked at compile time).
fn shard_key<const P: usize, const N: usize>(shard: ShardId, parts: [u64; P]) -> [u8; N] {
    const { assert!(N == 4 + 8 * P) };
    let mut k = [0u8; N];
    k[..4].copy_from_slice(&shard.0.to_be_bytes());
    for (i, part) in parts.into_iter().enumerate() {
        k[4 + 8 * i..12 + 8 * i].copy_from_slice(&part.to_be_bytes());
    }
    k
}

/// The counter key of an entry's row.
pub fn counter_key(shard: ShardId, minute: i64, exception_id: u64, dims: u64) -> [u8; 28] {
    shard_key(shard, [flip(minute), exception_id, dims])
}

/// The first key of `minute` in a shard (a range bound).
pub fn minute_key(shard: ShardId, minute: i64) -> [u8; 12] {
    shard_key(shard, [flip(minute)])
}

/// The history key of an exception's minute.
pub fn history_key(shard: ShardId, exception_id: u64, minute: i64) -> [u8; 20] {
    shard_key(shard, [exception_id, flip(minute)])
}

/// The column family of hourly rollups for unfiltered rankings: `shard | hour | exception_id →
/// Numbers` (the count, first and last seen of the hour, summed over the dimensions).
pub const CF_EXCEPTION_HOURLY: &str = "exception_hourly";

/// The hourly rollup key of an exception's hour.
pub fn hourly_key(shard: ShardId, hour: i64, exception_id: u64) -> [u8; 20] {
    shard_key(shard, [flip(hour), exception_id])
}

/// The first key of `hour` in a shard's rollups (a range bound).
pub fn hour_key(shard: ShardId, hour: i64) -> [u8; 12] {
    minute_key(shard, hour)
}

/// The hourly rollup rows that counter rows add.
pub fn hourly_of(shard: ShardId, rows: &HashMap<[u8; 28], Counter>) -> HashMap<[u8; 20], Numbers> {
    let mut out: HashMap<[u8; 20], Numbers> = HashMap::new();
    for (key, c) in rows {
        let (Some(id), Some(minute)) = (key_exception_id(key), key_minute(key)) else {
            continue;
        };
        merge_into(
            &mut out,
            hourly_key(shard, minute.div_euclid(60), id),
            c.numbers(),
        );
    }
    out
}

/// Encodes a rollup's numbers (24 bytes, little-endian, as a counter row begins).
pub fn encode_numbers(n: &Numbers) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&n.count.to_le_bytes());
    v[8..16].copy_from_slice(&n.first_seen_us.to_le_bytes());
    v[16..].copy_from_slice(&n.last_seen_us.to_le_bytes());
    v
}

/// The history rows that counter rows add: the same counts summed over the dimensions.
pub fn history_of(shard: ShardId, rows: &HashMap<[u8; 28], Counter>) -> HashMap<[u8; 20], Counter> {
    let mut out: HashMap<[u8; 20], Counter> = HashMap::new();
    for (key, c) in rows {
        let (Some(id), Some(minute)) = (key_exception_id(key), key_minute(key)) else {
            continue;
        };
        let k = history_key(shard, id, minute);
        match out.get_mut(&k) {
            Some(existing) => existing.merge(c),
            None => {
                let mut c = c.clone();
                // Summed over dimensions: the row names none.
                c.environment = None;
                c.region = None;
                out.insert(k, c);
            }
        }
    }
    out
}

/// The column family of hourly history rollups: `shard | exception_id | hour → Counter` (the
/// history rows of the hour merged), so a few exceptions' whole counters over a long window are
/// a few rows each.
pub const CF_EXCEPTION_HISTORY_HOURLY: &str = "exception_history_hourly";

/// The hourly history rows that history rows add (their keys end with the minute; these end
/// with the hour).
pub fn history_hourly_of(
    shard: ShardId,
    history: &HashMap<[u8; 20], Counter>,
) -> HashMap<[u8; 20], Counter> {
    let mut out: HashMap<[u8; 20], Counter> = HashMap::new();
    for (key, c) in history {
        let (Some(id), Some(minute)) = (history_exception_id(key), history_minute(key)) else {
            continue;
        };
        merge_into(
            &mut out,
            history_key(shard, id, minute.div_euclid(60)),
            c.clone(),
        );
    }
    out
}

/// The column family of hourly numbers per dimensions, for rankings filtered by environment,
/// region or level: `shard u32 | hour (sign-flipped) u64 | dims u64` → [`DimsRow`], every
/// exception's count, first and last seen in that hour under one (environment, region,
/// level), packed in one value. A week filtered by level reads a few thousand such rows per
/// shard instead of every minute row (issue 7's directory: 9.3 M minute rows, most holding
/// one entry).
pub const CF_EXCEPTION_DIMS_HOURLY: &str = "exception_dims_hourly";

/// The [`CF_EXCEPTION_DIMS_HOURLY`] key of an hour's row under one dims hash (the hash the
/// minute rows' keys end with).
pub fn dims_hourly_key(shard: ShardId, hour: i64, dims: u64) -> [u8; 20] {
    shard_key(shard, [flip(hour), dims])
}

/// Reads the dims hash out of a counter key.
pub fn key_dims(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(20..28)?.try_into().ok()?))
}

/// One hour of one shard under one (environment, region, level): the numbers of every
/// exception counted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimsRow {
    /// The environment of the counted entries.
    pub environment: Option<String>,
    /// The region of the counted entries.
    pub region: Option<String>,
    /// The level of the counted entries.
    pub level: String,
    /// (exception id, numbers), sorted by id, each id once.
    pub items: Vec<(u64, Numbers)>,
}

/// The bytes of one item of an encoded [`DimsRow`]: id, count, first and last seen.
const DIMS_ITEM_BYTES: usize = 32;

impl DimsRow {
    /// Encodes the row: the names' length (u32, little-endian), the names (bincode), then each
    /// item as four little-endian 8-byte numbers, so a reader checks the names and skips a row
    /// that does not pass without decoding its items.
    pub fn encode(&self) -> Vec<u8> {
        let names = (
            self.environment.as_deref(),
            self.region.as_deref(),
            self.level.as_str(),
        );
        // Serialising strings into a Vec cannot fail.
        let names = bincode::serialize(&names).unwrap_or_default();
        let mut v = Vec::with_capacity(4 + names.len() + self.items.len() * DIMS_ITEM_BYTES);
        v.extend_from_slice(&(names.len() as u32).to_le_bytes());
        v.extend_from_slice(&names);
        for (id, n) in &self.items {
            v.extend_from_slice(&id.to_le_bytes());
            v.extend_from_slice(&n.count.to_le_bytes());
            v.extend_from_slice(&n.first_seen_us.to_le_bytes());
            v.extend_from_slice(&n.last_seen_us.to_le_bytes());
        }
        v
    }

    /// Decodes what [`Self::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<DimsRow> {
        let (names, items) = dims_row_parts(bytes)?;
        Some(DimsRow {
            environment: names.environment.map(str::to_string),
            region: names.region.map(str::to_string),
            level: names.level.to_string(),
            items: dims_items(items)?.collect(),
        })
    }

    /// Adds items: the union, numbers of the same id merged, sorted by id.
    pub fn add_items(&mut self, items: impl IntoIterator<Item = (u64, Numbers)>) {
        self.items.extend(items);
        coalesce(&mut self.items);
    }
}

/// Sorts items by id and merges the numbers of equal ids.
fn coalesce(items: &mut Vec<(u64, Numbers)>) {
    items.sort_unstable_by_key(|(id, _)| *id);
    items.dedup_by(|(id, n), (kept_id, kept)| {
        let same = id == kept_id;
        if same {
            kept.merge(n);
        }
        same
    });
}

/// The names of an encoded [`DimsRow`] (read in place; the service is left empty: a row
/// holds every service's exceptions) and its encoded items (checked by [`dims_items`]).
pub fn dims_row_parts(bytes: &[u8]) -> Option<(CounterNames<'_>, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let names = bytes.get(4..4usize.checked_add(len)?)?;
    let items = &bytes[4 + len..];
    let (environment, region, level): (Option<&str>, Option<&str>, &str) =
        bincode::deserialize(names).ok()?;
    Some((
        CounterNames {
            service: "",
            environment,
            region,
            level,
        },
        items,
    ))
}

/// The items of an encoded [`DimsRow`] (the second part [`dims_row_parts`] returns); None when
/// its length is not a whole number of items.
pub fn dims_items(items: &[u8]) -> Option<impl Iterator<Item = (u64, Numbers)> + '_> {
    if !items.len().is_multiple_of(DIMS_ITEM_BYTES) {
        return None;
    }
    Some(items.chunks_exact(DIMS_ITEM_BYTES).map(|c| {
        let n = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[at..at + 8]);
            b
        };
        (
            u64::from_le_bytes(n(0)),
            Numbers {
                count: u64::from_le_bytes(n(8)),
                first_seen_us: i64::from_le_bytes(n(16)),
                last_seen_us: i64::from_le_bytes(n(24)),
            },
        )
    }))
}

/// The exception id, hour and dims hash of a counter key (what both hourly families per
/// dimensions are keyed by).
fn id_hour_dims(key: &[u8]) -> Option<(u64, i64, u64)> {
    Some((
        key_exception_id(key)?,
        key_minute(key)?.div_euclid(60),
        key_dims(key)?,
    ))
}

/// The [`CF_EXCEPTION_DIMS_HOURLY`] rows that counter rows add.
pub fn dims_hourly_of(
    shard: ShardId,
    rows: &HashMap<[u8; 28], Counter>,
) -> HashMap<[u8; 20], DimsRow> {
    let mut out: HashMap<[u8; 20], DimsRow> = HashMap::new();
    for (key, c) in rows {
        let Some((id, hour, dims)) = id_hour_dims(key) else {
            continue;
        };
        out.entry(dims_hourly_key(shard, hour, dims))
            .or_insert_with(|| DimsRow {
                environment: c.environment.clone(),
                region: c.region.clone(),
                level: c.level.clone(),
                items: Vec::new(),
            })
            .items
            .push((id, c.numbers()));
    }
    for row in out.values_mut() {
        coalesce(&mut row.items);
    }
    out
}

/// The column family of hourly counters per exception and dimensions:
/// `shard u32 | exception_id u64 | hour (sign-flipped) u64 | dims u64` → [`Counter`], the
/// minute rows of the hour merged per (environment, region, level). One exception's whole
/// counters under a filter of those over a long window are a few rows per hour, one range,
/// where the minute rows would take a seek and a block per minute it occurred in (the winners
/// of a filtered top-K are the exceptions with the most minutes).
pub const CF_EXCEPTION_DIMS_HISTORY_HOURLY: &str = "exception_dims_history_hourly";

/// The [`CF_EXCEPTION_DIMS_HISTORY_HOURLY`] key of an exception's hour under one dims hash.
pub fn dims_history_key(shard: ShardId, exception_id: u64, hour: i64, dims: u64) -> [u8; 28] {
    shard_key(shard, [exception_id, flip(hour), dims])
}

/// Reads the hour out of a [`CF_EXCEPTION_DIMS_HISTORY_HOURLY`] key.
pub fn dims_history_hour(key: &[u8]) -> Option<i64> {
    history_minute(key)
}

/// The [`CF_EXCEPTION_DIMS_HISTORY_HOURLY`] rows that counter rows add.
pub fn dims_history_hourly_of(
    shard: ShardId,
    rows: &HashMap<[u8; 28], Counter>,
) -> HashMap<[u8; 28], Counter> {
    let mut out: HashMap<[u8; 28], Counter> = HashMap::new();
    for (key, c) in rows {
        let Some((id, hour, dims)) = id_hour_dims(key) else {
            continue;
        };
        merge_into(&mut out, dims_history_key(shard, id, hour, dims), c.clone());
    }
    out
}

/// Reads the exception id out of a history key.
pub fn history_exception_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(4..12)?.try_into().ok()?))
}

/// Reads the minute out of a history key.
pub fn history_minute(key: &[u8]) -> Option<i64> {
    let v = u64::from_be_bytes(key.get(12..20)?.try_into().ok()?);
    Some((v ^ (1 << 63)) as i64)
}

/// Reads the exception id out of a counter key.
pub fn key_exception_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(12..20)?.try_into().ok()?))
}

/// Reads the minute out of a counter key.
pub fn key_minute(key: &[u8]) -> Option<i64> {
    let v = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    Some((v ^ (1 << 63)) as i64)
}

/// The rows a set of new entries adds, aggregated by key.
pub fn rows_of<'a>(
    shard: ShardId,
    entries: impl Iterator<Item = &'a StoredEntry>,
) -> HashMap<[u8; 28], Counter> {
    let mut rows: HashMap<[u8; 28], Counter> = HashMap::new();
    for e in entries {
        let Some(t) = e.exception_type.as_deref() else {
            continue;
        };
        let mut dims = Vec::new();
        for part in [
            e.environment.as_deref().unwrap_or(""),
            e.region.as_deref().unwrap_or(""),
            e.level.as_str(),
        ] {
            dims.extend_from_slice(part.as_bytes());
            dims.push(0);
        }
        let key = counter_key(
            shard,
            minute_of(e.timestamp_us),
            exception_id(t, &e.service),
            xxhash_rust::xxh3::xxh3_64(&dims),
        );
        merge_into(&mut rows, key, Counter::of(e, t));
    }
    rows
}

/// The (minute, exception id, numbers) of counter rows: what the block cache takes when they
/// are written.
pub fn numbers_of(rows: &HashMap<[u8; 28], Counter>) -> Vec<(i64, u64, Numbers)> {
    rows.iter()
        .filter_map(|(k, c)| Some((key_minute(k)?, key_exception_id(k)?, c.numbers())))
        .collect()
}

/// Encodes a counter row: its count, first and last seen first (24 bytes, little-endian), so a
/// ranking pass reads them without decoding the rest; then the whole counter (bincode).
pub fn encode_counter(c: &Counter) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.extend_from_slice(&c.count.to_le_bytes());
    v.extend_from_slice(&c.first_seen_us.to_le_bytes());
    v.extend_from_slice(&c.last_seen_us.to_le_bytes());
    // Serialising into a Vec cannot fail.
    let _ = bincode::serialize_into(&mut v, c);
    v
}

/// The service of what [`encode_counter`] wrote, read in place (see [`counter_names`]).
pub fn counter_service(bytes: &[u8]) -> Option<&str> {
    counter_names(bytes).map(|n| n.service)
}

/// The names of a counter row: what a [`CounterFilter`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterNames<'a> {
    /// The service.
    pub service: &'a str,
    /// The environment of the counted entries.
    pub environment: Option<&'a str>,
    /// The region of the counted entries.
    pub region: Option<&'a str>,
    /// The level of the counted entries.
    pub level: &'a str,
}

/// The names of what [`encode_counter`] wrote, read in place: they lead the counter's
/// encoding (after its numbers), so the lists after them (samples, hosts, up to 256 users) are
/// not decoded — a filtered ranking that decoded whole counters spent most of its time there.
pub fn counter_names(bytes: &[u8]) -> Option<CounterNames<'_>> {
    type Names<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, &'a str);
    let (_exception_type, service, environment, region, level): Names<'_> =
        bincode::deserialize(bytes.get(24..)?).ok()?;
    Some(CounterNames {
        service,
        environment,
        region,
        level,
    })
}

/// Decodes what [`encode_counter`] wrote.
pub fn decode_counter(bytes: &[u8]) -> Option<Counter> {
    bincode::deserialize(bytes.get(24..)?).ok()
}

/// The count, first and last seen of an encoded counter, without decoding the rest.
pub fn decode_numbers(bytes: &[u8]) -> Option<Numbers> {
    let n = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { bytes.get(r)?.try_into().ok() };
    Some(Numbers {
        count: u64::from_le_bytes(n(0..8)?),
        first_seen_us: i64::from_le_bytes(n(8..16)?),
        last_seen_us: i64::from_le_bytes(n(16..24)?),
    })
}

/// The numbers a ranking needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbers {
    /// Occurrences.
    pub count: u64,
    /// Earliest, µs.
    pub first_seen_us: i64,
    /// Latest, µs.
    pub last_seen_us: i64,
}

impl Numbers {
    /// Adds another row's numbers.
    pub fn merge(&mut self, o: &Numbers) {
        self.count += o.count;
        self.first_seen_us = self.first_seen_us.min(o.first_seen_us);
        self.last_seen_us = self.last_seen_us.max(o.last_seen_us);
    }
}

/// Which counter rows a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterFilter {
    /// Only this exception.
    pub exception_id: Option<u64>,
    /// Only these exceptions (empty: all).
    pub exception_ids: std::collections::HashSet<u64>,
    /// Only these services (empty: all).
    pub services: Vec<String>,
    /// Only these environments (empty: all).
    pub environments: Vec<String>,
    /// Only these regions (empty: all).
    pub regions: Vec<String>,
    /// Only these levels (empty: all).
    pub levels: Vec<String>,
}

impl CounterFilter {
    /// True when the filter names environments, regions or levels (what only the rows' names,
    /// not the exception id, tell).
    pub fn has_dimensions(&self) -> bool {
        !(self.environments.is_empty() && self.regions.is_empty() && self.levels.is_empty())
    }

    /// True when rows of this exception can pass (checked before a row is decoded).
    pub fn admits_id(&self, id: u64) -> bool {
        self.exception_id.is_none_or(|x| x == id)
            && (self.exception_ids.is_empty() || self.exception_ids.contains(&id))
    }

    /// A 128-bit hash naming what the filter admits (the lists in any order, repeats
    /// ignored): the block cache's key for its rankings.
    pub fn key(&self) -> u128 {
        let mut ids: Vec<u64> = self.exception_ids.iter().copied().collect();
        ids.sort_unstable();
        fn list(l: &[String]) -> Vec<&str> {
            let mut l: Vec<&str> = l.iter().map(String::as_str).collect();
            l.sort_unstable();
            l.dedup();
            l
        }
        // Serialising strings and numbers cannot fail.
        let bytes = bincode::serialize(&(
            self.exception_id,
            ids,
            list(&self.services),
            list(&self.environments),
            list(&self.regions),
            list(&self.levels),
        ))
        .unwrap_or_default();
        xxhash_rust::xxh3::xxh3_128(&bytes)
    }

    /// True when a row passes.
    pub fn admits(&self, id: u64, c: &Counter) -> bool {
        self.admits_names(
            id,
            CounterNames {
                service: &c.service,
                environment: c.environment.as_deref(),
                region: c.region.as_deref(),
                level: &c.level,
            },
        )
    }

    /// True when a row with these names passes.
    pub fn admits_names(&self, id: u64, n: CounterNames<'_>) -> bool {
        self.admits_id(id) && self.admits_service(n.service) && self.admits_dimensions(n)
    }

    /// True when rows of this service can pass.
    pub fn admits_service(&self, service: &str) -> bool {
        any_of(&self.services, Some(service))
    }

    /// True when rows with these names' environment, region and level can pass (their service
    /// is not looked at).
    pub fn admits_dimensions(&self, n: CounterNames<'_>) -> bool {
        any_of(&self.environments, n.environment)
            && any_of(&self.regions, n.region)
            && any_of(&self.levels, Some(n.level))
    }
}

/// True when `list` is empty (no condition) or holds `v`.
fn any_of(list: &[String], v: Option<&str>) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
}

/// What a shard answers for a window: per exception, its merged counter and, when asked,
/// counts per bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExceptionCounts {
    /// exception id → merged counter.
    pub totals: HashMap<u64, Counter>,
    /// (exception id, bucket start minute) → count, when buckets were asked for.
    pub buckets: HashMap<(u64, i64), u64>,
}

impl ExceptionCounts {
    /// Adds one row of exception `id` (at `minute`, counted in its bucket when buckets are
    /// asked for).
    pub fn add_row(&mut self, id: u64, minute: i64, bucket_minutes: Option<i64>, c: Counter) {
        if let Some(b) = bucket_minutes {
            *self
                .buckets
                .entry((id, minute.div_euclid(b) * b))
                .or_default() += c.count;
        }
        merge_into(&mut self.totals, id, c);
    }

    /// Adds another answer (another shard's) into this one.
    pub fn absorb(&mut self, other: ExceptionCounts) {
        for (id, c) in other.totals {
            merge_into(&mut self.totals, id, c);
        }
        for (k, n) in other.buckets {
            *self.buckets.entry(k).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: the `max` smallest distinct values of the union, and whether any was
    /// left out.
    fn reference(into: &[String], from: &[String], max: usize) -> (Vec<String>, bool) {
        let mut all: Vec<String> = into.iter().chain(from).cloned().collect();
        all.sort();
        all.dedup();
        let capped = all.len() > max;
        all.truncate(max);
        (all, capped)
    }

    #[test]
    fn a_filters_key_names_what_it_admits_in_any_order() {
        let f = |levels: &[&str], envs: &[&str]| CounterFilter {
            levels: levels.iter().map(|s| s.to_string()).collect(),
            environments: envs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            f(&["ERROR", "WARN"], &[]).key(),
            f(&["WARN", "ERROR", "WARN"], &[]).key()
        );
        // The same values under another dimension, or one value fewer, are other filters.
        assert_ne!(f(&["prod"], &[]).key(), f(&[], &["prod"]).key());
        assert_ne!(f(&["ERROR", "WARN"], &[]).key(), f(&["ERROR"], &[]).key());
        assert_ne!(f(&[], &[]).key(), f(&["ERROR"], &[]).key());
    }

    #[test]
    fn the_user_id_is_read_as_a_whole_parse_reads_it() {
        let whole = |json: &str| {
            serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|f| match f.get("user_id") {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
        };
        for json in [
            r#"{"user_id":"u1"}"#,
            r#"{"a":{"user_id":"inner"},"user_id":42,"b":[1,{"c":null}]}"#,
            r#"{"user_id":-1.5e3}"#,
            r#"{"user_id":18446744073709551615}"#,
            r#"{"user_id":null}"#,
            r#"{"user_id":{"id":"u"}}"#,
            r#"{"user_id":["u"]}"#,
            r#"{"user_id":true}"#,
            r#"{"other":"x"}"#,
            r#"{}"#,
            r#"[]"#,
            r#"null"#,
            r#""user_id""#,
            r#"{"user_id":"caf\u00e9 \"q\""}"#,
            "not json",
            "",
        ] {
            assert_eq!(user_of(json), whole(json), "{json}");
        }
    }

    #[test]
    fn a_counters_service_reads_in_place() {
        let mut c = Counter {
            exception_type: "java.lang.IllegalStateException".into(),
            service: "payments".into(),
            environment: Some("prod".into()),
            region: None,
            level: "ERROR".into(),
            count: 7,
            first_seen_us: 1,
            last_seen_us: 2,
            samples: vec![Uuid::from_u128(9)],
            hosts: vec!["h1".into()],
            regions: vec![],
            users: vec!["u1".into(), "u2".into()],
            metadata_capped: false,
        };
        assert_eq!(counter_service(&encode_counter(&c)), Some("payments"));
        let names = CounterNames {
            service: "payments",
            environment: Some("prod"),
            region: None,
            level: "ERROR",
        };
        assert_eq!(counter_names(&encode_counter(&c)), Some(names));
        c.service = "search".into();
        c.exception_type = String::new();
        assert_eq!(counter_service(&encode_counter(&c)), Some("search"));
        assert_eq!(
            counter_service(&encode_counter(&c)[..30]),
            None,
            "cut short"
        );
    }

    #[test]
    fn a_dims_row_reads_back_and_a_damaged_one_does_not() {
        let n = |count: u64, first: i64| Numbers {
            count,
            first_seen_us: first,
            last_seen_us: first + 5,
        };
        let mut row = DimsRow {
            environment: None,
            region: Some("eu-west-1".into()),
            level: "FATAL".into(),
            items: Vec::new(),
        };
        row.add_items([(9, n(1, -3)), (u64::MAX, n(2, 7)), (9, n(4, 1))]);
        assert_eq!(
            row.items,
            vec![
                (
                    9,
                    Numbers {
                        count: 5,
                        first_seen_us: -3,
                        last_seen_us: 6
                    }
                ),
                (u64::MAX, n(2, 7))
            ],
            "sorted, the same id merged"
        );
        let bytes = row.encode();
        assert_eq!(DimsRow::decode(&bytes), Some(row.clone()));
        let (names, _) = dims_row_parts(&bytes).unwrap();
        let want = CounterNames {
            service: "",
            environment: None,
            region: Some("eu-west-1"),
            level: "FATAL",
        };
        assert_eq!(names, want);
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert_eq!(DimsRow::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(DimsRow::decode(&long), None, "a partial item");
    }

    #[test]
    fn merge_distinct_keeps_the_smallest_distinct_values() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..2000 {
            let max = 1 + next(12) as usize;
            let mut list = |len: u64| {
                let mut v: Vec<String> = (0..next(len)).map(|_| format!("u{}", next(30))).collect();
                v.sort();
                v.dedup();
                v
            };
            let mut into = list(max as u64 + 1);
            into.truncate(max);
            let from = list(20);
            let want = reference(&into, &from, max);
            let capped = merge_distinct(&mut into, &from, max);
            assert_eq!((into, capped), want);
        }
    }
}
