//! The stored form of a log entry and the commands a shard applies.
//!
//! Everything here is already masked: the node's ingest stage masks personal data before it
//! builds a [`StoredEntry`], so no type in this crate ever holds unmasked text.

use serde::{Deserialize, Serialize};
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
    /// Stores a batch of entries; entries whose log_id the shard already holds are skipped.
    Append(Vec<StoredEntry>),
    /// Stores a batch of entries whose log_ids the proposing node minted (UUIDv7: the time and
    /// 74 random bits), so none can already be stored: apply skips the idempotency look-up
    /// that `Append` does for every entry. Entries with idempotency keys never travel here.
    AppendMinted(Vec<StoredEntry>),
}

impl ShardCommand {
    /// Encodes the command for a Raft entry.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("serializing a ShardCommand into memory cannot fail")
    }

    /// Decodes a command read from a Raft entry.
    pub fn decode(shard_id: ShardId, bytes: &[u8]) -> Result<Self> {
        bincode::deserialize(bytes).map_err(|e| Error::Corrupt {
            shard_id,
            reason: format!("shard command: {e}"),
        })
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

pub(crate) fn encode_entry(entry: &StoredEntry) -> Vec<u8> {
    bincode::serialize(entry).expect("serializing a StoredEntry into memory cannot fail")
}

pub(crate) fn decode_entry(shard_id: ShardId, bytes: &[u8]) -> Result<StoredEntry> {
    bincode::deserialize(bytes).map_err(|e| Error::Corrupt {
        shard_id,
        reason: format!("entry: {e}"),
    })
}
