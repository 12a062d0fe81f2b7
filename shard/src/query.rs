//! A query as one shard answers it: plain data, planned by the node's coordinator. Both the
//! question and the answer serialize (serde, for bincode), so a replica on another node can
//! answer it; the aggregation request travels as JSON (tantivy's request types use serde
//! attributes only a self-describing format reads) and the deadline as the time left, set by
//! whoever runs the search.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;

use crate::entry::{Level, StoredEntry};
use crate::query_lang::Expr;

/// The direction of a sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    /// Smallest first.
    Asc,
    /// Largest (newest) first.
    #[default]
    Desc,
}

/// What hits are sorted by; ties are always broken by `log_id` in the same direction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortField {
    /// The entry's timestamp.
    #[default]
    Timestamp,
    /// A numeric free field (`fields.<path>`); entries without a number there come last in
    /// either direction.
    Numeric(String),
}

/// The position of a hit in the sort order, comparable across shards: a larger key comes first.
/// It is what a `search_after` cursor carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SortKey {
    /// 1 when the sort value is present, 0 when missing (missing sorts last).
    pub present: u8,
    /// The sort value, mapped so that the wanted order is descending.
    pub value: u64,
    /// The log_id's high half, mapped the same way.
    pub id_hi: u64,
    /// The log_id's low half, mapped the same way.
    pub id_lo: u64,
}

impl SortKey {
    /// The key of a hit whose sort value (order-mapped to u64 ascending) is `value`.
    pub fn new(value: Option<u64>, log_id: u128, order: SortOrder) -> Self {
        let (hi, lo) = ((log_id >> 64) as u64, log_id as u64);
        let flip = |v: u64| match order {
            SortOrder::Desc => v,
            SortOrder::Asc => !v,
        };
        SortKey {
            present: value.is_some() as u8,
            value: value.map(flip).unwrap_or(0),
            id_hi: flip(hi),
            id_lo: flip(lo),
        }
    }

    /// 25 bytes: the key, big-endian.
    pub fn to_bytes(self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[0] = self.present;
        b[1..9].copy_from_slice(&self.value.to_be_bytes());
        b[9..17].copy_from_slice(&self.id_hi.to_be_bytes());
        b[17..25].copy_from_slice(&self.id_lo.to_be_bytes());
        b
    }

    /// Reads [`SortKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 25 || b[0] > 1 {
            return None;
        }
        let u = |r: std::ops::Range<usize>| b.get(r)?.try_into().ok().map(u64::from_be_bytes);
        Some(SortKey {
            present: b[0],
            value: u(1..9)?,
            id_hi: u(9..17)?,
            id_lo: u(17..25)?,
        })
    }
}

/// Maps a timestamp to u64 preserving order.
pub fn order_i64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// Maps an f64 to u64 preserving order (NaN sorts above everything).
pub fn order_f64(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// A scalar given in a field filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// Matches a stored string equal to it, or a stored number equal to its numeric reading.
    Str(String),
    /// Matches a stored number equal to it, or a stored string equal to its JSON spelling.
    Num(f64, String),
    /// Matches a stored boolean.
    Bool(bool),
}

/// A condition on one free field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FieldCondition {
    /// The value equals one of these.
    AnyOf(Vec<Scalar>),
    /// The field is present (true) or absent (false).
    Exists(bool),
    /// The value is a number within these bounds.
    Range {
        /// `>=`
        gte: Option<f64>,
        /// `>`
        gt: Option<f64>,
        /// `<=`
        lte: Option<f64>,
        /// `<`
        lt: Option<f64>,
    },
}

/// What one shard is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardQuery {
    /// Full-text query, parsed (its values already masked).
    pub text: Option<Expr>,
    /// Inclusive lower bound on the timestamp, in microseconds.
    pub start_us: Option<i64>,
    /// Inclusive upper bound on the timestamp, in microseconds.
    pub end_us: Option<i64>,
    /// Any of these services (none: all).
    pub services: Vec<String>,
    /// Any of these levels (none: all).
    pub levels: Vec<Level>,
    /// Any of these environments (none: all).
    pub environments: Vec<String>,
    /// Any of these regions (none: all).
    pub regions: Vec<String>,
    /// Any of these hosts (none: all).
    pub hosts: Vec<String>,
    /// Any of these exception types (none: all).
    pub exception_types: Vec<String>,
    /// Conditions on free fields: (key path, condition); all must hold.
    pub fields: Vec<(String, FieldCondition)>,
    /// The sort field.
    pub sort: SortField,
    /// The sort direction.
    pub order: SortOrder,
    /// Only hits after this key (a `search_after` cursor).
    pub after: Option<SortKey>,
    /// How many of the best hits to return: the coordinator's `offset + limit`.
    pub top_n: usize,
    /// Aggregations to compute over every match (tantivy's Elasticsearch-style request).
    #[serde(with = "aggs_as_json")]
    pub aggs: Option<Aggregations>,
    /// Memory (bytes) and bucket bounds for the aggregations.
    pub agg_memory_bytes: u64,
    /// Most buckets an aggregation may build.
    pub agg_buckets: u32,
    /// Give up when this passes (checked between index segments). Not sent: an instant means
    /// nothing on another node, where the search runs under the time the asker has left.
    #[serde(skip)]
    pub deadline: Option<Instant>,
}

/// One shard's answer. Its partial aggregations are tantivy's intermediate results, whose
/// serde form is made for non-self-describing formats (quickwit sends them with postcard).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardHits {
    /// How many entries of the shard match.
    pub total: u64,
    /// The best `top_n` matches after the cursor, best first, with their sort keys.
    pub entries: Vec<(SortKey, StoredEntry)>,
    /// The aggregations' mergeable partial results.
    pub aggs: Option<IntermediateAggregationResults>,
}

/// The aggregation request as JSON text: tantivy's request types are read from JSON (they use
/// `flatten` and `untagged`, which bincode cannot read back), and JSON is what quickwit's root
/// sends its leaves too.
mod aggs_as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tantivy::aggregation::agg_req::Aggregations;

    pub fn serialize<S: Serializer>(aggs: &Option<Aggregations>, s: S) -> Result<S::Ok, S::Error> {
        let text = aggs
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(serde::ser::Error::custom)?;
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Aggregations>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}
