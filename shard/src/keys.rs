//! Key encodings of the shard column families.
//!
//! All integers are big-endian so that RocksDB's byte order is numeric order; timestamps have
//! their sign bit flipped so that negative ones sort before positive ones.
//! - `entries`: `shard u32 | timestamp_us (sign-flipped) u64 | log_id [16]` → the entry. Entries
//!   of a shard sort by time, so an hour of a shard is one contiguous key range.
//! - `entry_ids`: `shard u32 | log_id [16]` → `raft_index u64 | entries key`: the idempotency
//!   set, which also tells in which Raft entry the log_id was first stored. Entries whose
//!   UUIDv7 log_id carries their own millisecond (`findable_by_time`: every entry the node
//!   minted an id for since format 5) have no row: their key is found by seeking that
//!   millisecond in `entries`.
//! - `index_queue`: `shard u32 | raft_index u64 | seq u32` → `entries key`…: the entries of a
//!   Raft entry applied but perhaps not yet in a tantivy commit; trimmed after each commit,
//!   replayed at open. One record per Raft entry (seq 0, the value every new entry's key one
//!   after another); directories written before held one record per entry (seq = position,
//!   one key), which reads the same way.
//! - `shard_meta`: `shard u32 | tag u8` → applied state and snapshot records.

use uuid::Uuid;

use crate::ShardId;

/// Length of an `entries` key.
pub const ENTRY_KEY_LEN: usize = 4 + 8 + 16;

/// Returns the `entries` key of an entry.
pub fn entry_key(shard: ShardId, timestamp_us: i64, log_id: Uuid) -> [u8; ENTRY_KEY_LEN] {
    let mut key = [0u8; ENTRY_KEY_LEN];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key[4..12].copy_from_slice(&flip(timestamp_us).to_be_bytes());
    key[12..].copy_from_slice(log_id.as_bytes());
    key
}

/// Splits an `entries` key into its shard, timestamp and log_id.
pub fn decode_entry_key(key: &[u8]) -> Option<(ShardId, i64, Uuid)> {
    if key.len() != ENTRY_KEY_LEN {
        return None;
    }
    let shard = u32::from_be_bytes(key[..4].try_into().ok()?);
    let ts = unflip(u64::from_be_bytes(key[4..12].try_into().ok()?));
    let log_id = Uuid::from_slice(&key[12..]).ok()?;
    Some((ShardId(shard), ts, log_id))
}

/// Returns the first `entries` key of the hour starting at `timestamp_us` (inclusive bound).
pub fn entry_key_at(shard: ShardId, timestamp_us: i64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key[4..].copy_from_slice(&flip(timestamp_us).to_be_bytes());
    key
}

/// The millisecond a UUIDv7 log_id carries (its first 48 bits), or None for other versions.
pub fn minted_ms(log_id: Uuid) -> Option<i64> {
    if log_id.get_version_num() != 7 {
        return None;
    }
    let b = log_id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    Some(u64::from_be_bytes(ms) as i64)
}

/// True when an entry's `entries` key can be found from its log_id alone: a UUIDv7 minted from
/// the entry's own time, so a look-up seeks that millisecond's keys. Such entries get no
/// `entry_ids` row; keyed (name-based) log_ids always do.
pub fn findable_by_time(log_id: Uuid, timestamp_us: i64) -> bool {
    minted_ms(log_id) == Some(timestamp_us.div_euclid(1000))
}

/// Mints the log_id of an entry that came without one: a UUIDv7 of the entry's own
/// millisecond (so the shard finds it by time, [`findable_by_time`]) whose other 74 bits are not
/// fresh random bits per id but a per-process random constant (12 bits, `rand_a`) and a counter
/// (62 bits, `rand_b`) started at a random value — RFC 9562 §6.2's "monotonic random" method.
///
/// Unique within the process (the counter never repeats in 2^61 ids), and across processes
/// unless two random starts land within each other's ids *and* their constants agree (chance
/// per pair of processes at most about ids minted / 2^73; a collision also needs the same
/// millisecond). Ids are predictable now; they were never secrets (every query answer lists
/// them), so nothing may rest on their being unguessable. Ids minted one after another differ in
/// their last bits only, so the index's log_id fast fields and RocksDB's keys compress: 74
/// random bits per entry were ~9 bytes of each that no compression could take away.
/// Entries before 1970 get millisecond 0 (and so an idempotency row, as before).
pub fn mint_log_id(timestamp_us: i64) -> Uuid {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<(u64, AtomicU64)> = OnceLock::new();
    let (rand_a, counter) = START.get_or_init(|| {
        let seed = Uuid::new_v4().as_u128();
        // 12 bits of constant; the counter starts below 2^61 so it never reaches 2^62.
        (
            (seed >> 64) as u64 & 0xfff,
            AtomicU64::new(seed as u64 & ((1 << 61) - 1)),
        )
    });
    let ms = (timestamp_us.div_euclid(1000).max(0) as u64) & ((1 << 48) - 1);
    let n = counter.fetch_add(1, Ordering::Relaxed) & ((1 << 62) - 1);
    Uuid::from_u64_pair((ms << 16) | 0x7000 | rand_a, (0b10 << 62) | n)
}

/// Returns the `entry_ids` key of a log_id.
pub fn id_key(shard: ShardId, log_id: Uuid) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key[4..].copy_from_slice(log_id.as_bytes());
    key
}

/// Returns the `index_queue` key of Raft entry `raft_index` (`seq` 0; older directories also
/// hold records with `seq` > 0, one per entry).
pub fn queue_key(shard: ShardId, raft_index: u64, seq: u32) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key[4..12].copy_from_slice(&raft_index.to_be_bytes());
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Returns the Raft index of an `index_queue` key.
pub fn queue_key_raft_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(4..12)?.try_into().ok()?))
}

/// Returns the `shard_meta` key of a tag.
pub fn meta_key(shard: ShardId, tag: u8) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key[4] = tag;
    key
}

/// Returns the key prefix of everything of `shard` in a column family.
pub fn shard_prefix(shard: ShardId) -> [u8; 4] {
    shard.0.to_be_bytes()
}

/// Returns a key greater than every key of `shard` and smaller than the next shard's.
pub fn shard_end(shard: ShardId) -> [u8; 41] {
    let mut key = [0xffu8; 41];
    key[..4].copy_from_slice(&shard.0.to_be_bytes());
    key
}

fn flip(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

fn unflip(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_log_ids_are_v7_of_their_millisecond_unique_and_increasing() {
        for ts in [
            0,
            999,
            1_700_000_000_000_000,
            1_700_000_000_000_999,
            (1 << 47) * 1000 - 1,
        ] {
            let id = mint_log_id(ts);
            assert_eq!(id.get_version_num(), 7, "{ts}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{ts}");
            assert_eq!(minted_ms(id), Some(ts.div_euclid(1000)), "{ts}");
            assert!(findable_by_time(id, ts), "{ts}");
        }
        // Before 1970: millisecond 0, so not findable by its time (it gets an idempotency row).
        assert!(!findable_by_time(mint_log_id(-1), -1));
        let ids: Vec<Uuid> = (0..10_000)
            .map(|_| mint_log_id(1_700_000_000_000_000))
            .collect();
        // One thread mints in order; the low halves step by one (other tests may mint in
        // between, so by at least one).
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert_eq!(w[0].as_u64_pair().0, w[1].as_u64_pair().0);
        }
        // Across threads, no id twice.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..20_000)
                        .map(|_| mint_log_id(1_700_000_000_000_000))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Uuid> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .chain(ids)
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn entry_keys_sort_by_time_and_round_trip() {
        let id = Uuid::from_u128(7);
        let times = [
            i64::MIN,
            -3_600_000_000,
            -1,
            0,
            1,
            1_700_000_000_000_000,
            i64::MAX,
        ];
        let keys: Vec<_> = times
            .iter()
            .map(|t| entry_key(ShardId(3), *t, id))
            .collect();
        for pair in keys.windows(2) {
            assert!(
                pair[0] < pair[1],
                "keys out of order: {:?} >= {:?}",
                pair[0],
                pair[1]
            );
        }
        for (t, k) in times.iter().zip(&keys) {
            assert_eq!(decode_entry_key(k), Some((ShardId(3), *t, id)));
        }
    }

    #[test]
    fn shard_end_bounds_every_key_of_the_shard() {
        let k = entry_key(ShardId(5), i64::MAX, Uuid::max());
        assert!(k.as_slice() < shard_end(ShardId(5)).as_slice());
        assert!(shard_end(ShardId(5)).as_slice() < shard_prefix(ShardId(6)).as_slice());
    }
}
