//! The metadata Raft group: the cluster's members, their addresses and whether each is active,
//! leaving (being decommissioned) or removed (placement is computed from the active ones, see
//! `placement.rs`), and the settings every node must share: the custom PII patterns, so that a
//! value is masked alike whichever node receives it. Every node runs it; three members are its
//! voters, later ones learners. Here: the state and the commands that change it, each checked
//! alike on every node as it applies; `meta_store.rs` keeps it on disk and runs the group's
//! state machine over it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use veil_node::pii::custom::{CustomPattern, PATTERNS_MAX};
use veil_raft::{GroupId, NodeId};

use super::placement::REPLICAS;

/// The metadata group's id: shard groups are numbered from 0, so it takes the last id.
pub const META_GROUP: GroupId = GroupId(u32::MAX);

/// A member's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// HTTP API.
    pub http_addr: String,
    /// gRPC API.
    pub grpc_addr: String,
    /// Node-to-node traffic (Raft and the cluster's own calls).
    pub peer_addr: String,
}

/// What the metadata group holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every member, by node id.
    pub members: BTreeMap<NodeId, Member>,
    /// The custom PII patterns, in the order they were added (at most `PATTERNS_MAX`).
    pub pii_patterns: Vec<CustomPattern>,
    /// Members being decommissioned: the placement names them for no shard, so their
    /// replicas move to the others; each is removed once no shard's group names it.
    pub leaving: BTreeSet<NodeId>,
    /// Former members, with the addresses they last had: their ids are never given again, and
    /// a removed node that comes back is refused.
    pub removed: BTreeMap<NodeId, Member>,
    /// Placement overrides, by shard: the shard's replicas as an operator moved them (`veil
    /// admin shards move`), in priority order, used instead of the ring's. An override lasts
    /// until a member it names leaves (decommissioned or removed): it is then dropped and the
    /// shard falls back to the ring over the members left. A member joining changes nothing
    /// here (the ring moves the other shards' replicas).
    pub placement_overrides: BTreeMap<u32, Vec<NodeId>>,
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipRefusal {
    /// No member has this id.
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
    /// The node was removed already.
    #[error("node {0} was removed from this cluster already")]
    Removed(NodeId),
    /// Too few active members would be left for every shard's replicas on distinct nodes.
    #[error(
        "removing node {id} would leave {active_after} active members for {replicas} replicas          per shard, so some shard would lose a replica; add a node first, or force it"
    )]
    TooFewMembers {
        id: NodeId,
        active_after: usize,
        replicas: usize,
    },
    /// The last active member cannot go, forced or not.
    #[error("node {0} is the last active member; a cluster cannot remove all of its nodes")]
    LastMember(NodeId),
}

/// Why a replica move (`MetaCommand::MoveReplica`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MoveRefusal {
    /// No shard has this number.
    #[error("the cluster has no shard {shard} (it has {shards}: 0 to {})", shards.saturating_sub(1))]
    UnknownShard { shard: u32, shards: u32 },
    /// No member has this id (now or ever).
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
    /// The node to move from holds no replica of the shard.
    #[error(
        "node {from} holds no replica of shard {shard} (its replicas are on nodes {placed:?})"
    )]
    NotAReplica {
        shard: u32,
        from: NodeId,
        placed: Vec<NodeId>,
    },
    /// The node to move to holds one already.
    #[error(
        "node {to} holds a replica of shard {shard} already (its replicas are on nodes {placed:?})"
    )]
    AlreadyAReplica {
        shard: u32,
        to: NodeId,
        placed: Vec<NodeId>,
    },
    /// The node to move to is leaving or removed: it would hold the replica for no time.
    #[error("node {to} is {} and takes no replicas; move to an active member", state.as_str())]
    NotActive { to: NodeId, state: MemberState },
}

/// What a member is, in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Placed, holding its share of the replicas.
    Active,
    /// Being decommissioned: its replicas move away, then it is removed.
    Leaving,
    /// No longer a member (its id is not reused; it is refused if it comes back).
    Removed,
}

impl MemberState {
    /// The lowercase word the HTTP API and `veil admin` use.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Removed => "removed",
        }
    }
}

/// Why a pattern change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternRefusal {
    /// The list is full.
    TooMany,
    /// No pattern has this id.
    NotFound(uuid::Uuid),
}

/// A change to the cluster's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a member (`id` None: the next free id). Adding a peer address already a member's
    /// answers that member's id (a join retried after its answer was lost); an id already
    /// taken by another address is refused.
    AddNode { id: Option<NodeId>, member: Member },
    /// A member's new addresses (it restarted elsewhere).
    SetAddrs { id: NodeId, member: Member },
    /// Adds a custom PII pattern (validated and compiled by the proposer).
    AddPiiPattern(CustomPattern),
    /// Turns a custom pattern on or off.
    SetPiiPatternActive { id: uuid::Uuid, active: bool },
    /// Deletes a custom pattern.
    DeletePiiPattern(uuid::Uuid),
    /// Adds the patterns a node kept in its own data directory before they were the
    /// cluster's (a directory from an older build): those whose id is not here yet, up to the
    /// bound.
    SeedPiiPatterns(Vec<CustomPattern>),
    /// Marks a member leaving: the placement drops it, so its replicas move to the others
    /// (learner, catch up, voter, then it is removed from the shard), and the metadata leader
    /// removes it once no shard's group names it. Refused when fewer active members than
    /// [`REPLICAS`] would be left, unless `force`.
    Decommission { id: NodeId, force: bool },
    /// Removes a member now (a dead one, or a leaving one whose replicas have all moved): it
    /// leaves the placement, its replicas are rebuilt from the live ones where the placement
    /// now puts them, and it is refused if it comes back. Refused like a decommission when it
    /// would leave too few active members, unless `force` (a leaving member was counted out
    /// already).
    RemoveNode { id: NodeId, force: bool },
    /// Moves shard `shard`'s replica from member `from` to member `to`: records the shard's
    /// placement with `to` in `from`'s place as an override (see
    /// [`ClusterState::placement_overrides`]), which reconcile then makes the group's
    /// membership (learner, caught up, voter, then `from` removed). `shards` is the cluster's
    /// shard count, for the check that the shard exists.
    MoveReplica {
        shard: u32,
        from: NodeId,
        to: NodeId,
        shards: u32,
    },
}

/// The answer to a [`MetaCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaReply {
    /// The member's id.
    Member(NodeId),
    /// Why the change was refused.
    Refused(String),
    /// A pattern change: the pattern as it now is (none for a delete or a seed), or why not.
    Pattern(Result<Option<CustomPattern>, PatternRefusal>),
    /// A decommission or removal: the member's state now, or why not.
    Membership(Result<MemberState, MembershipRefusal>),
    /// A replica move: the shard's placed replicas now, or why not.
    Move(Result<Vec<NodeId>, MoveRefusal>),
}

impl ClusterState {
    /// The members the placement puts replicas on: every member not leaving.
    pub fn placed_members(&self) -> Vec<NodeId> {
        self.members
            .keys()
            .filter(|id| !self.leaving.contains(id))
            .copied()
            .collect()
    }

    /// Every shard's replicas, in priority order: the ring's over [`Self::placed_members`], or
    /// the shard's override where it has one.
    pub fn placement(&self, shards: u32) -> Vec<Vec<NodeId>> {
        let mut placed = super::placement::place(&self.placed_members(), shards);
        for (shard, replicas) in &self.placement_overrides {
            // Overrides naming a member no longer placed are dropped when it leaves; one
            // that still did would put a replica nowhere, so the ring's placement stands.
            let all_placed = replicas
                .iter()
                .all(|id| self.member_state(*id) == Some(MemberState::Active));
            if let (Some(slot), true) = (placed.get_mut(*shard as usize), all_placed) {
                slot.clone_from(replicas);
            }
        }
        placed
    }

    /// What node `id` is, if it ever was a member.
    pub fn member_state(&self, id: NodeId) -> Option<MemberState> {
        if self.removed.contains_key(&id) {
            Some(MemberState::Removed)
        } else if self.leaving.contains(&id) {
            Some(MemberState::Leaving)
        } else {
            self.members
                .contains_key(&id)
                .then_some(MemberState::Active)
        }
    }

    /// Checks that member `id` may stop holding replicas: it is a member, and unless `force`,
    /// enough active members stay for every shard's replicas on distinct nodes.
    fn may_leave(&self, id: NodeId, force: bool) -> Result<(), MembershipRefusal> {
        match self.member_state(id) {
            None => return Err(MembershipRefusal::NotMember(id)),
            Some(MemberState::Removed) => return Err(MembershipRefusal::Removed(id)),
            // Counted out when it started leaving.
            Some(MemberState::Leaving) => return Ok(()),
            Some(MemberState::Active) => {}
        }
        let active_after = self.placed_members().len() - 1;
        if active_after == 0 {
            return Err(MembershipRefusal::LastMember(id));
        }
        if active_after < REPLICAS && !force {
            return Err(MembershipRefusal::TooFewMembers {
                id,
                active_after,
                replicas: REPLICAS,
            });
        }
        Ok(())
    }

    /// Checks a move of `shard`'s replica from `from` to `to` and answers the shard's
    /// placement after it.
    fn moved(
        &self,
        shard: u32,
        from: NodeId,
        to: NodeId,
        shards: u32,
    ) -> Result<Vec<NodeId>, MoveRefusal> {
        if shard >= shards {
            return Err(MoveRefusal::UnknownShard { shard, shards });
        }
        for id in [from, to] {
            if self.member_state(id).is_none() {
                return Err(MoveRefusal::NotMember(id));
            }
        }
        let placed = self.placement(shards)[shard as usize].clone();
        if !placed.contains(&from) {
            return Err(MoveRefusal::NotAReplica {
                shard,
                from,
                placed,
            });
        }
        if placed.contains(&to) {
            return Err(MoveRefusal::AlreadyAReplica { shard, to, placed });
        }
        match self.member_state(to) {
            Some(MemberState::Active) => {}
            Some(state) => return Err(MoveRefusal::NotActive { to, state }),
            None => return Err(MoveRefusal::NotMember(to)),
        }
        Ok(placed
            .into_iter()
            .map(|id| if id == from { to } else { id })
            .collect())
    }

    /// Drops the placement overrides naming `id` (it leaves): those shards fall back to the
    /// ring.
    fn drop_overrides_naming(&mut self, id: NodeId) {
        self.placement_overrides
            .retain(|_, replicas| !replicas.contains(&id));
    }

    /// Applies `command`; `in_group` are the metadata group's own members (voters and
    /// learners), whose ids a new node never gets even before they are on record here.
    pub(super) fn apply(&mut self, command: MetaCommand, in_group: &[NodeId]) -> MetaReply {
        match command {
            MetaCommand::AddNode { id, member } => {
                let holder = self
                    .members
                    .iter()
                    .find(|(_, m)| m.peer_addr == member.peer_addr)
                    .map(|(id, _)| *id);
                match (id, holder) {
                    (_, Some(holder)) if id.is_none_or(|id| id == holder) => {
                        self.members.insert(holder, member);
                        MetaReply::Member(holder)
                    }
                    (_, Some(holder)) => MetaReply::Refused(format!(
                        "peer address {} is node {holder}'s",
                        member.peer_addr
                    )),
                    (Some(id), None) if self.members.contains_key(&id) => MetaReply::Refused(
                        format!("node id {id} is taken by another node of this cluster"),
                    ),
                    (Some(id), None) if self.removed.contains_key(&id) => {
                        MetaReply::Refused(format!(
                            "node {id} was removed from this cluster and its id is not reused; \
                             join without --node-id (or with another) to get a new one"
                        ))
                    }
                    (id, None) => {
                        let id = id.unwrap_or_else(|| {
                            let highest = self
                                .members
                                .keys()
                                .chain(self.removed.keys())
                                .chain(in_group)
                                .max();
                            highest.copied().unwrap_or(0) + 1
                        });
                        self.members.insert(id, member);
                        MetaReply::Member(id)
                    }
                }
            }
            MetaCommand::SetAddrs { id, member } => match self.members.get_mut(&id) {
                Some(m) => {
                    *m = member;
                    MetaReply::Member(id)
                }
                None => MetaReply::Refused(format!("node {id} is not a member")),
            },
            MetaCommand::AddPiiPattern(p) => {
                MetaReply::Pattern(if self.pii_patterns.len() >= PATTERNS_MAX {
                    Err(PatternRefusal::TooMany)
                } else {
                    self.pii_patterns.push(p.clone());
                    Ok(Some(p))
                })
            }
            MetaCommand::SetPiiPatternActive { id, active } => MetaReply::Pattern(
                match self.pii_patterns.iter_mut().find(|p| p.pattern_id == id) {
                    Some(p) => {
                        p.is_active = active;
                        Ok(Some(p.clone()))
                    }
                    None => Err(PatternRefusal::NotFound(id)),
                },
            ),
            MetaCommand::DeletePiiPattern(id) => {
                let before = self.pii_patterns.len();
                self.pii_patterns.retain(|p| p.pattern_id != id);
                MetaReply::Pattern(if self.pii_patterns.len() < before {
                    Ok(None)
                } else {
                    Err(PatternRefusal::NotFound(id))
                })
            }
            MetaCommand::SeedPiiPatterns(patterns) => {
                for p in patterns {
                    let known = self
                        .pii_patterns
                        .iter()
                        .any(|q| q.pattern_id == p.pattern_id);
                    if !known && self.pii_patterns.len() < PATTERNS_MAX {
                        self.pii_patterns.push(p);
                    }
                }
                MetaReply::Pattern(Ok(None))
            }
            MetaCommand::Decommission { id, force } => {
                MetaReply::Membership(self.may_leave(id, force).map(|()| {
                    self.leaving.insert(id);
                    self.drop_overrides_naming(id);
                    MemberState::Leaving
                }))
            }
            MetaCommand::RemoveNode { id, force } => {
                MetaReply::Membership(self.may_leave(id, force).map(|()| {
                    self.leaving.remove(&id);
                    self.drop_overrides_naming(id);
                    if let Some(member) = self.members.remove(&id) {
                        self.removed.insert(id, member);
                    }
                    MemberState::Removed
                }))
            }
            MetaCommand::MoveReplica {
                shard,
                from,
                to,
                shards,
            } => MetaReply::Move(self.moved(shard, from, to, shards).inspect(|placed| {
                self.placement_overrides.insert(shard, placed.clone());
            })),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::cluster) fn member(port: u16) -> Member {
        Member {
            http_addr: format!("127.0.0.1:{port}"),
            grpc_addr: format!("127.0.0.1:{}", port + 1),
            peer_addr: format!("127.0.0.1:{}", port + 2),
        }
    }

    #[test]
    fn joins_get_the_next_id_and_a_retried_join_gets_the_same() {
        let mut s = ClusterState::default();
        let add = |id, m| MetaCommand::AddNode { id, member: m };
        // Before the founder is on record, a join still does not take the group's ids.
        assert_eq!(s.apply(add(None, member(7100)), &[1]), MetaReply::Member(2));
        assert_eq!(
            s.apply(add(Some(1), member(7000)), &[1]),
            MetaReply::Member(1)
        );
        assert_eq!(s.apply(add(None, member(7200)), &[1]), MetaReply::Member(3));
        // The same peer address again: the same member.
        assert_eq!(s.apply(add(None, member(7100)), &[1]), MetaReply::Member(2));
        // An id taken by another address, or an address taken by another id: refused.
        assert!(matches!(
            s.apply(add(Some(2), member(7300)), &[1]),
            MetaReply::Refused(_)
        ));
        assert!(matches!(
            s.apply(add(Some(4), member(7200)), &[1]),
            MetaReply::Refused(_)
        ));
        assert_eq!(s.members.len(), 3);
        assert_eq!(
            s.apply(
                MetaCommand::SetAddrs {
                    id: 3,
                    member: member(7400)
                },
                &[1]
            ),
            MetaReply::Member(3)
        );
        assert_eq!(s.members[&3], member(7400));
    }

    #[test]
    fn a_decommission_or_removal_keeps_three_active_members_unless_forced() {
        let mut s = ClusterState::default();
        for (id, port) in [(1, 7000), (2, 7100), (3, 7200), (4, 7300)] {
            s.apply(
                MetaCommand::AddNode {
                    id: Some(id),
                    member: member(port),
                },
                &[1],
            );
        }
        let decommission = |id, force| MetaCommand::Decommission { id, force };
        let remove = |id, force| MetaCommand::RemoveNode { id, force };
        let membership = |r: MetaReply| match r {
            MetaReply::Membership(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            membership(s.apply(decommission(4, false), &[1])),
            Ok(MemberState::Leaving)
        );
        assert_eq!(s.placed_members(), vec![1, 2, 3]);
        // Again: still leaving, nothing else changes.
        assert_eq!(
            membership(s.apply(decommission(4, false), &[1])),
            Ok(MemberState::Leaving)
        );
        // Three active members are left: a fourth could not go, nor be removed, unforced.
        assert_eq!(
            membership(s.apply(decommission(3, false), &[1])),
            Err(MembershipRefusal::TooFewMembers {
                id: 3,
                active_after: 2,
                replicas: 3
            })
        );
        assert!(membership(s.apply(remove(2, false), &[1])).is_err());
        // The leaving one is removed without a count (it was counted out).
        assert_eq!(
            membership(s.apply(remove(4, false), &[1])),
            Ok(MemberState::Removed)
        );
        assert_eq!(s.member_state(4), Some(MemberState::Removed));
        assert_eq!(s.members.len(), 3);
        assert_eq!(
            membership(s.apply(decommission(4, false), &[1])),
            Err(MembershipRefusal::Removed(4))
        );
        assert_eq!(
            membership(s.apply(remove(9, true), &[1])),
            Err(MembershipRefusal::NotMember(9))
        );
        // Forced: down to one member, never to none.
        assert!(membership(s.apply(remove(3, true), &[1])).is_ok());
        assert!(membership(s.apply(decommission(2, true), &[1])).is_ok());
        assert_eq!(
            membership(s.apply(remove(1, true), &[1])),
            Err(MembershipRefusal::LastMember(1))
        );
        // A removed id is never given again, asked for or not.
        assert!(matches!(
            s.apply(
                MetaCommand::AddNode {
                    id: Some(4),
                    member: member(7400)
                },
                &[1]
            ),
            MetaReply::Refused(_)
        ));
        assert_eq!(
            s.apply(
                MetaCommand::AddNode {
                    id: None,
                    member: member(7300)
                },
                &[1]
            ),
            MetaReply::Member(5),
            "a removed node's wiped directory joins again as a new node"
        );
    }

    #[test]
    fn a_move_overrides_the_ring_until_a_node_it_names_leaves() {
        let mut s = ClusterState::default();
        for (id, port) in [(1, 7000), (2, 7100), (3, 7200), (4, 7300), (5, 7400)] {
            s.apply(
                MetaCommand::AddNode {
                    id: Some(id),
                    member: member(port),
                },
                &[1],
            );
        }
        let shards = 4;
        let ring = s.placement(shards);
        let placed = ring[1].clone();
        let from = placed[0];
        let to = (1..=5).find(|id| !placed.contains(id)).unwrap();
        let elsewhere = (1..=5)
            .find(|id| *id != to && !placed.contains(id))
            .unwrap();
        let mv = |from, to, shard| MetaCommand::MoveReplica {
            shard,
            from,
            to,
            shards,
        };
        let moved = |r: MetaReply| match r {
            MetaReply::Move(m) => m,
            other => panic!("{other:?}"),
        };
        // Refusals first: nothing changes.
        assert_eq!(
            moved(s.apply(mv(from, to, 4), &[1])),
            Err(MoveRefusal::UnknownShard { shard: 4, shards })
        );
        assert_eq!(
            moved(s.apply(mv(9, to, 1), &[1])),
            Err(MoveRefusal::NotMember(9))
        );
        assert_eq!(
            moved(s.apply(mv(to, elsewhere, 1), &[1])),
            Err(MoveRefusal::NotAReplica {
                shard: 1,
                from: to,
                placed: placed.clone()
            })
        );
        assert_eq!(
            moved(s.apply(mv(from, placed[1], 1), &[1])),
            Err(MoveRefusal::AlreadyAReplica {
                shard: 1,
                to: placed[1],
                placed: placed.clone()
            })
        );
        assert!(s.placement_overrides.is_empty());
        // The move: `to` in `from`'s place, the other shards as the ring has them.
        let want: Vec<NodeId> = placed
            .iter()
            .map(|id| if *id == from { to } else { *id })
            .collect();
        assert_eq!(moved(s.apply(mv(from, to, 1), &[1])), Ok(want.clone()));
        let now = s.placement(shards);
        assert_eq!(now[1], want);
        for shard in [0, 2, 3] {
            assert_eq!(now[shard], ring[shard], "shard {shard}");
        }
        // A node joining leaves the override alone.
        s.apply(
            MetaCommand::AddNode {
                id: None,
                member: member(7500),
            },
            &[1],
        );
        assert_eq!(s.placement(shards)[1], want);
        // A leaving node cannot take a replica.
        s.apply(
            MetaCommand::Decommission {
                id: elsewhere,
                force: false,
            },
            &[1],
        );
        assert_eq!(
            moved(s.apply(mv(want[1], elsewhere, 1), &[1])),
            Err(MoveRefusal::NotActive {
                to: elsewhere,
                state: MemberState::Leaving
            })
        );
        assert_eq!(
            s.placement(shards)[1],
            want,
            "the leaving node is not named"
        );
        // The node the replica moved to leaves: the shard falls back to the ring.
        s.apply(
            MetaCommand::Decommission {
                id: to,
                force: false,
            },
            &[1],
        );
        assert!(s.placement_overrides.is_empty());
        let ring_now = super::super::placement::place(&s.placed_members(), shards);
        assert_eq!(s.placement(shards), ring_now);
        // Removal drops an override too.
        let placed = s.placement(shards)[0].clone();
        let free = s
            .placed_members()
            .into_iter()
            .find(|id| !placed.contains(id))
            .unwrap();
        assert!(moved(s.apply(mv(placed[2], free, 0), &[1])).is_ok());
        s.apply(
            MetaCommand::RemoveNode {
                id: free,
                force: false,
            },
            &[1],
        );
        assert!(s.placement_overrides.is_empty());
    }

    pub(in crate::cluster) fn pattern(n: u128) -> CustomPattern {
        CustomPattern {
            pattern_id: uuid::Uuid::from_u128(n),
            pattern_type: "badge".into(),
            regex_pattern: "BDG[0-9]{4}".into(),
            masking_strategy: veil_node::pii::Strategy::Redact,
            description: None,
            is_active: true,
            created_at: "2026-12-06T00:00:00Z".into(),
        }
    }

    #[test]
    fn pattern_changes_apply_in_order_and_refuse_what_cannot_be() {
        let mut s = ClusterState::default();
        let id = uuid::Uuid::from_u128(1);
        assert_eq!(
            s.apply(MetaCommand::AddPiiPattern(pattern(1)), &[1]),
            MetaReply::Pattern(Ok(Some(pattern(1))))
        );
        let off = MetaCommand::SetPiiPatternActive { id, active: false };
        let MetaReply::Pattern(Ok(Some(p))) = s.apply(off, &[1]) else {
            panic!("the pattern is there")
        };
        assert!(!p.is_active && !s.pii_patterns[0].is_active);
        // A seed adds only what is new: pattern 1 keeps its state, 2 joins.
        s.apply(
            MetaCommand::SeedPiiPatterns(vec![pattern(1), pattern(2)]),
            &[1],
        );
        assert_eq!(s.pii_patterns.len(), 2);
        assert!(!s.pii_patterns[0].is_active);
        assert_eq!(
            s.apply(MetaCommand::DeletePiiPattern(id), &[1]),
            MetaReply::Pattern(Ok(None))
        );
        assert_eq!(
            s.apply(MetaCommand::DeletePiiPattern(id), &[1]),
            MetaReply::Pattern(Err(PatternRefusal::NotFound(id)))
        );
        for n in 3..=(PATTERNS_MAX as u128 + 1) {
            s.apply(MetaCommand::AddPiiPattern(pattern(n)), &[1]);
        }
        assert_eq!(s.pii_patterns.len(), PATTERNS_MAX);
        assert_eq!(
            s.apply(MetaCommand::AddPiiPattern(pattern(1000)), &[1]),
            MetaReply::Pattern(Err(PatternRefusal::TooMany))
        );
    }
}
