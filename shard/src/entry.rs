//! The stored form of a log entry and the commands a shard applies.
//!
//! Everything here is already masked: the node's ingest stage masks personal data before it
//! builds a [`StoredEntry`], so no type in this crate ever holds unmasked text.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use uuid::Uuid;

use crate::{Error, Result, ShardId};

/// A log entry's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the service survived.
    Warn,
    /// A failed operation.
    Error,
    /// The service cannot go on.
    Fatal,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    /// Returns the canonical upper-case name (`"ERROR"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }

    /// Parses a canonical upper-case name; synonyms are the ingest parser's business.
    pub fn from_canonical(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

/// One masked log entry as a shard stores and indexes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The entry's id: a UUIDv7 from its timestamp, or a name-based UUID from an idempotency key.
    pub log_id: Uuid,
    /// When the event happened, in microseconds since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// When Veil received the entry, in microseconds since the Unix epoch (UTC).
    pub received_at_us: i64,
    /// The service that sent the entry.
    pub service: String,
    /// The entry's severity.
    pub level: Level,
    /// The masked message.
    pub message: String,
    /// The masked free fields, as the text of a JSON object.
    pub fields_json: String,
    /// The exception's type, when the entry carries one.
    pub exception_type: Option<String>,
    /// The masked exception message.
    pub exception_message: Option<String>,
    /// The masked stack trace.
    pub stack_trace: Option<String>,
    /// The fault's fingerprint (type and top in-app frames, normalised), when the entry carries
    /// an exception.
    pub fingerprint: Option<String>,
    /// The host that produced the entry.
    pub host: Option<String>,
    /// The deployment environment (prod, staging, …).
    pub environment: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// The unmasked original, sealed with AES-256-GCM under a key kept outside the data
    /// directory (only for services configured to keep originals). Never indexed or returned.
    pub sealed_original: Option<Vec<u8>>,
}

impl StoredEntry {
    /// Returns the hour the entry belongs to, in hours since the Unix epoch.
    pub fn hour(&self) -> i64 {
        hour_of(self.timestamp_us)
    }
}

/// Returns the hour (since the Unix epoch) that a timestamp in microseconds falls into.
pub fn hour_of(timestamp_us: i64) -> i64 {
    timestamp_us.div_euclid(3_600_000_000)
}

/// A command applied by a shard's state machine, carried in a Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Stores a batch of entries; entries whose log_id the shard already holds are skipped
    /// (keyed log_ids by the idempotency set, minted ones by their exact `entries` key): keyed
    /// batches, and any batch retried after its first try's outcome was unknown.
    Append(Vec<StoredEntry>),
    /// Stores a batch of entries whose log_ids the proposing node minted (UUIDv7: the time and
    /// a per-process counter from a random start, `keys::mint_log_id`), so none can already be
    /// stored: apply skips the idempotency look-up that `Append` does for every entry. Entries
    /// with idempotency keys never travel here.
    AppendMinted(Vec<StoredEntry>),
}

/// First byte of a command encoded since data format 6: bincode's variable-width encoding
/// follows (string lengths in one byte instead of eight: 7 bytes less per text field of each
/// entry in the Raft log and the WAL). Commands encoded before begin with their variant's index as a fixed-width
/// u32, so with 0 or 1, and still decode.
const COMMAND_V2: u8 = 0xC6;

impl ShardCommand {
    /// Encodes the command for a Raft entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 320 * self.entries().len());
        out.push(COMMAND_V2);
        bincode::Options::serialize_into(value_encoding(), &mut out, self)
            .expect("serializing a ShardCommand into memory cannot fail");
        out
    }

    /// Decodes a command read from a Raft entry (either encoding, see [`COMMAND_V2`]).
    pub fn decode(shard_id: ShardId, bytes: &[u8]) -> Result<Self> {
        let decoded = match bytes.split_first() {
            Some((&COMMAND_V2, rest)) => bincode::Options::deserialize(value_encoding(), rest),
            _ => bincode::deserialize(bytes),
        };
        decoded.map_err(|e| Error::Corrupt {
            shard_id,
            reason: format!("shard command: {e}"),
        })
    }

    /// The entries the command carries, taken out of it.
    pub fn into_entries(self) -> Vec<StoredEntry> {
        match self {
            ShardCommand::Append(entries) | ShardCommand::AppendMinted(entries) => entries,
        }
    }

    /// The entries the command carries.
    pub fn entries(&self) -> &[StoredEntry] {
        match self {
            ShardCommand::Append(entries) | ShardCommand::AppendMinted(entries) => entries,
        }
    }
}

/// What applying an entry of an [`ShardCommand::Append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryOutcome {
    /// The entry was stored.
    Accepted,
    /// The shard already held an entry with this log_id; nothing was stored.
    Duplicate,
}

/// Encodes the outcomes of an applied command into a Raft response.
pub fn encode_outcomes(outcomes: &[EntryOutcome]) -> Vec<u8> {
    bincode::serialize(outcomes).expect("serializing outcomes into memory cannot fail")
}

/// Decodes the outcomes carried by a Raft response.
pub fn decode_outcomes(shard_id: ShardId, bytes: &[u8]) -> Result<Vec<EntryOutcome>> {
    bincode::deserialize(bytes).map_err(|e| Error::Corrupt {
        shard_id,
        reason: format!("outcomes: {e}"),
    })
}

/// First byte of an `entries` value written since data format 6: the value after it is
/// [`Value`] in bincode's variable-width encoding. Values written before are a whole
/// [`StoredEntry`] in bincode's fixed-width encoding, whose first byte is the log_id's length
/// (16), so the two never mix up.
const VALUE_V2: u8 = 2;

/// An entry as its `entries` value holds it: without the log_id and timestamp, which the key
/// already holds (a keyed log_id's bits are random, the part of a value that does not compress),
/// and with the receive time as an offset from the timestamp (a few bytes instead of eight).
#[derive(Serialize, Deserialize)]
struct Value<'a> {
    received_after_us: i64,
    service: Cow<'a, str>,
    level: Level,
    message: Cow<'a, str>,
    fields_json: Cow<'a, str>,
    exception_type: Option<Cow<'a, str>>,
    exception_message: Option<Cow<'a, str>>,
    stack_trace: Option<Cow<'a, str>>,
    fingerprint: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    environment: Option<Cow<'a, str>>,
    region: Option<Cow<'a, str>>,
    sealed_original: Option<Cow<'a, [u8]>>,
}

fn value_encoding() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

/// Encodes an entry as its `entries` value (the key holds its log_id and timestamp).
pub(crate) fn encode_entry(entry: &StoredEntry) -> Vec<u8> {
    let value = Value {
        received_after_us: entry.received_at_us.wrapping_sub(entry.timestamp_us),
        service: Cow::Borrowed(&entry.service),
        level: entry.level,
        message: Cow::Borrowed(&entry.message),
        fields_json: Cow::Borrowed(&entry.fields_json),
        exception_type: borrowed(&entry.exception_type),
        exception_message: borrowed(&entry.exception_message),
        stack_trace: borrowed(&entry.stack_trace),
        fingerprint: borrowed(&entry.fingerprint),
        host: borrowed(&entry.host),
        environment: borrowed(&entry.environment),
        region: borrowed(&entry.region),
        sealed_original: entry.sealed_original.as_deref().map(Cow::Borrowed),
    };
    let mut out = Vec::with_capacity(
        32 + entry.message.len() + entry.fields_json.len() + entry.service.len(),
    );
    out.push(VALUE_V2);
    bincode::Options::serialize_into(value_encoding(), &mut out, &value)
        .expect("serializing an entry into memory cannot fail");
    out
}

/// Decodes the `entries` value stored under `key`: either format (see [`VALUE_V2`]).
pub(crate) fn decode_entry(shard_id: ShardId, key: &[u8], bytes: &[u8]) -> Result<StoredEntry> {
    let corrupt = |reason: String| Error::Corrupt { shard_id, reason };
    let Some(rest) = bytes.strip_prefix(&[VALUE_V2]) else {
        return bincode::deserialize(bytes).map_err(|e| corrupt(format!("entry: {e}")));
    };
    let (_, timestamp_us, log_id) = crate::keys::decode_entry_key(key)
        .ok_or_else(|| corrupt(format!("entries key of {} bytes", key.len())))?;
    let v: Value<'_> = bincode::Options::deserialize(value_encoding(), rest)
        .map_err(|e| corrupt(format!("entry: {e}")))?;
    let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
    Ok(StoredEntry {
        log_id,
        timestamp_us,
        received_at_us: timestamp_us.wrapping_add(v.received_after_us),
        service: v.service.into_owned(),
        level: v.level,
        message: v.message.into_owned(),
        fields_json: v.fields_json.into_owned(),
        exception_type: owned(v.exception_type),
        exception_message: owned(v.exception_message),
        stack_trace: owned(v.stack_trace),
        fingerprint: owned(v.fingerprint),
        host: owned(v.host),
        environment: owned(v.environment),
        region: owned(v.region),
        sealed_original: v.sealed_original.map(Cow::into_owned),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::keys;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{0,40}", "[a-z0-9 ]{0,20}"]
    }

    fn maybe() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    prop_compose! {
        fn entries()(
            log_id in any::<u128>(),
            timestamp_us in prop_oneof![any::<i64>(), -10i64.pow(15)..10i64.pow(16)],
            received_at_us in any::<i64>(),
            service in text(),
            level in 0usize..Level::ALL.len(),
            message in text(),
            fields_json in text(),
            texts in proptest::collection::vec(maybe(), 7),
            sealed_original in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        ) -> StoredEntry {
            StoredEntry {
                log_id: Uuid::from_u128(log_id),
                timestamp_us,
                received_at_us,
                service,
                level: Level::ALL[level],
                message,
                fields_json,
                exception_type: texts[0].clone(),
                exception_message: texts[1].clone(),
                stack_trace: texts[2].clone(),
                fingerprint: texts[3].clone(),
                host: texts[4].clone(),
                environment: texts[5].clone(),
                region: texts[6].clone(),
                sealed_original,
            }
        }
    }

    proptest! {
        /// Whatever an entry holds (extreme times included: the receive offset wraps both ways),
        /// its value and key give it back; and a value written before format 6 (the whole
        /// entry, fixed-width bincode) still reads, whatever the key.
        #[test]
        fn values_give_back_the_entry_with_its_key(entry in entries()) {
            let key = keys::entry_key(ShardId(3), entry.timestamp_us, entry.log_id);
            let value = encode_entry(&entry);
            prop_assert_eq!(value[0], VALUE_V2);
            let back = decode_entry(ShardId(3), &key, &value).unwrap();
            prop_assert_eq!(&back, &entry);
            let legacy = bincode::serialize(&entry).unwrap();
            prop_assert_eq!(legacy[0], 16);
            let back = decode_entry(ShardId(3), &key, &legacy).unwrap();
            prop_assert_eq!(&back, &entry);
        }
    }

    proptest! {
        /// Commands give back their entries in either variant, and a command encoded before
        /// format 6 (fixed-width, starting with the variant index) still decodes.
        #[test]
        fn commands_round_trip_and_old_ones_decode(batch in proptest::collection::vec(entries(), 0..4), minted in any::<bool>()) {
            let command = if minted {
                ShardCommand::AppendMinted(batch)
            } else {
                ShardCommand::Append(batch)
            };
            let new = command.encode();
            prop_assert_eq!(new[0], COMMAND_V2);
            let old = bincode::serialize(&command).unwrap();
            prop_assert!(old[0] <= 1);
            for bytes in [new, old] {
                let back = ShardCommand::decode(ShardId(1), &bytes).unwrap();
                prop_assert_eq!(
                    std::mem::discriminant(&back),
                    std::mem::discriminant(&command)
                );
                prop_assert_eq!(back.entries(), command.entries());
            }
        }
    }

    /// The log_id and timestamp come from the key, so a value under a key of the wrong length
    /// is an error, not an entry with made-up identity.
    #[test]
    fn a_value_needs_its_whole_key() {
        let entry = StoredEntry {
            log_id: Uuid::from_u128(7),
            timestamp_us: 1_700_000_000_000_000,
            received_at_us: 1_700_000_000_250_000,
            service: "api".into(),
            level: Level::Error,
            message: "boom".into(),
            fields_json: "{}".into(),
            exception_type: None,
            exception_message: None,
            stack_trace: None,
            fingerprint: None,
            host: None,
            environment: None,
            region: None,
            sealed_original: None,
        };
        let value = encode_entry(&entry);
        let key = keys::entry_key(ShardId(0), entry.timestamp_us, entry.log_id);
        assert!(decode_entry(ShardId(0), &key[..20], &value).is_err());
        // Shorter by the log_id and timestamp, the receive time's width and the fixed-width lengths.
        assert!(value.len() + 50 < bincode::serialize(&entry).unwrap().len());
        // A Raft command of ten such entries (four texts each) is 29 bytes per entry shorter
        // (85 → 56: seven bytes per length prefix, three for the level, less two for the
        // times), and 9 bytes shorter around them (variant and vector length, plus the marker).
        let command = ShardCommand::AppendMinted(vec![entry; 10]);
        let (old, new) = (bincode::serialize(&command).unwrap(), command.encode());
        assert_eq!((old.len(), new.len()), (12 + 10 * 85, 3 + 10 * 56));
    }
}
