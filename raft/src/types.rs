//! The openraft type configuration shared by every Veil Raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a node of the cluster.
pub type NodeId = u64;

/// Identifies a Raft group on a node: shard groups are numbered from 0, so a group id is the
/// shard id. It prefixes every key the group writes into the shared Raft log column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An opaque state-machine command proposed to a Raft group.
///
/// The bytes are already PII-masked: only the ingest stage of the node ever holds unmasked text,
/// and it masks before it builds a command.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

/// Prints only the size: a command's bytes are entry contents, which Veil's own logs never show.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The state machine's opaque answer to one applied [`Command`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandResponse({} bytes)", self.0.len())
    }
}

impl fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every Veil Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::impls::BasicNode,
);
