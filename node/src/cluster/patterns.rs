//! Custom PII patterns as the cluster's: changes are proposals to the metadata group, and every
//! node rebuilds its masking engine when the patterns it has applied change, so that a value is
//! masked alike whichever node receives it. A change answers once this node applies it, so the
//! next entry it takes is masked with it (other nodes follow as they apply, within their
//! replication lag of the metadata group).
//!
//! A data directory of an older build kept its own `pii-patterns.json`: its patterns stay in
//! force, and before the node says ready it proposes them to the cluster (`SeedPiiPatterns`,
//! which adds those whose id is new) and removes the file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use veil_node::pii::custom::{CustomPattern, NewPattern, PatternError, PatternStore};

use super::meta::{ClusterState, MetaCommand, MetaReply, PatternRefusal};
use crate::node::Node;

/// How long a change waits for this node to apply what the metadata group committed.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// A node's view of the patterns.
pub struct Patterns {
    /// Serialises the changes proposed through this node.
    changes: tokio::sync::Mutex<()>,
    /// What the engine in force was built from.
    in_force: std::sync::Mutex<Vec<CustomPattern>>,
    /// The metadata version the engine was last checked against (`u64::MAX`: never).
    checked_at: AtomicU64,
    /// An older directory's own patterns, until the cluster has them.
    legacy: std::sync::Mutex<Option<PatternStore>>,
}

impl Patterns {
    /// The patterns of a directory that kept its own (`legacy`), in force from the start.
    pub fn new(legacy: PatternStore) -> Patterns {
        Patterns {
            changes: tokio::sync::Mutex::new(()),
            in_force: std::sync::Mutex::new(legacy.patterns().to_vec()),
            checked_at: AtomicU64::new(u64::MAX),
            legacy: std::sync::Mutex::new((!legacy.patterns().is_empty()).then_some(legacy)),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> PatternError {
    PatternError::Unavailable(e.to_string())
}

impl Node {
    /// The custom patterns in force: the cluster's, then an older directory's not yet moved.
    pub fn pii_patterns(&self) -> Vec<CustomPattern> {
        let mut all = self.cluster.meta_store.state().pii_patterns;
        if let Some(legacy) = lock(&self.patterns.legacy).as_ref() {
            for p in legacy.patterns() {
                if !all.iter().any(|q| q.pattern_id == p.pattern_id) {
                    all.push(p.clone());
                }
            }
        }
        all
    }

    /// Rebuilds the masking engine if the patterns changed since it was built. A list that
    /// does not compile here (which validation on the proposing node rules out) keeps the
    /// engine in force, and says so in the log.
    pub fn refresh_masker(&self) {
        let mut in_force = lock(&self.patterns.in_force);
        // Read before the patterns: a change meanwhile leaves the engine "not yet checked".
        let version = self.cluster.meta_store.version();
        let next = self.pii_patterns();
        if *in_force != next {
            match self.build_masker(&next) {
                Ok(masker) => {
                    self.swap_masker(masker);
                    tracing::info!(patterns = next.len(), "PII patterns in force changed");
                    *in_force = next;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's PII patterns do not compile here; keeping the engine in force")
                }
            }
        }
        // Only once the engine in force is the one for `version`: published earlier, an entry
        // arriving while the new engine was being built skipped the check and was masked with
        // the old one (the wiped-node test saw a deleted pattern still applied).
        self.patterns.checked_at.store(version, Ordering::Release);
    }

    /// Rebuilds the engine first if the metadata changed since it was last checked, so that no
    /// entry is masked with patterns older than those this node lists.
    pub fn masker_current(&self) {
        if self.patterns.checked_at.load(Ordering::Acquire) != self.cluster.meta_store.version() {
            self.refresh_masker();
        }
    }

    /// Keeps the engine equal to the patterns this node has applied (without waiting for the
    /// next entry to notice).
    pub fn spawn_pattern_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let node = Arc::downgrade(self);
        let mut changes = self.cluster.meta_store.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                match node.upgrade() {
                    Some(node) => node.refresh_masker(),
                    None => return,
                }
            }
        })
    }

    /// Proposes a pattern change and waits until this node has applied it (`done` holds on
    /// its metadata), with the engine rebuilt.
    async fn change_patterns(
        &self,
        command: MetaCommand,
        done: impl Fn(&ClusterState) -> bool,
    ) -> Result<Option<CustomPattern>, PatternError> {
        let reply = self.propose_meta(command).await.map_err(unavailable)?;
        let pattern = match reply {
            MetaReply::Pattern(Ok(p)) => p,
            MetaReply::Pattern(Err(PatternRefusal::TooMany)) => return Err(PatternError::TooMany),
            MetaReply::Pattern(Err(PatternRefusal::NotFound(id))) => {
                return Err(PatternError::NotFound(id))
            }
            other => return Err(unavailable(format!("unexpected answer {other:?}"))),
        };
        let mut changes = self.cluster.meta_store.subscribe();
        let applied = tokio::time::timeout(APPLY_WAIT, async {
            while !done(&self.cluster.meta_store.state()) {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        if applied != Ok(true) {
            return Err(unavailable(
                "the cluster took the change, and this node has not applied it yet; it will",
            ));
        }
        self.refresh_masker();
        Ok(pattern)
    }

    /// Adds a custom pattern: validated and compiled with the others here, then the cluster's.
    pub async fn add_pii_pattern(&self, p: NewPattern) -> Result<CustomPattern, PatternError> {
        let p = p.validate()?;
        let _one_at_a_time = self.patterns.changes.lock().await;
        let mut next = self.pii_patterns();
        if next.len() >= veil_node::pii::custom::PATTERNS_MAX {
            return Err(PatternError::TooMany);
        }
        next.push(p.clone());
        self.build_masker(&next)?;
        let id = p.pattern_id;
        self.change_patterns(MetaCommand::AddPiiPattern(p.clone()), |s| {
            s.pii_patterns.iter().any(|q| q.pattern_id == id)
        })
        .await?;
        Ok(p)
    }

    /// Sets a custom pattern's active flag.
    pub async fn set_pii_pattern_active(
        &self,
        id: uuid::Uuid,
        active: bool,
    ) -> Result<CustomPattern, PatternError> {
        let _one_at_a_time = self.patterns.changes.lock().await;
        self.change_patterns(MetaCommand::SetPiiPatternActive { id, active }, |s| {
            s.pii_patterns
                .iter()
                .any(|q| q.pattern_id == id && q.is_active == active)
        })
        .await?
        .ok_or_else(|| unavailable("the cluster answered no pattern"))
    }

    /// Deletes a custom pattern.
    pub async fn delete_pii_pattern(&self, id: uuid::Uuid) -> Result<(), PatternError> {
        let _one_at_a_time = self.patterns.changes.lock().await;
        self.change_patterns(MetaCommand::DeletePiiPattern(id), |s| {
            !s.pii_patterns.iter().any(|q| q.pattern_id == id)
        })
        .await
        .map(|_| ())
    }

    /// Moves an older directory's own patterns into the cluster, then removes its file.
    pub async fn seed_legacy_patterns(&self) -> Result<(), PatternError> {
        let Some(patterns) = lock(&self.patterns.legacy)
            .as_ref()
            .map(|l| l.patterns().to_vec())
        else {
            return Ok(());
        };
        let _one_at_a_time = self.patterns.changes.lock().await;
        let ids: Vec<uuid::Uuid> = patterns.iter().map(|p| p.pattern_id).collect();
        let full = veil_node::pii::custom::PATTERNS_MAX;
        self.change_patterns(MetaCommand::SeedPiiPatterns(patterns), |s| {
            s.pii_patterns.len() >= full
                || ids
                    .iter()
                    .all(|id| s.pii_patterns.iter().any(|q| q.pattern_id == *id))
        })
        .await?;
        if let Some(legacy) = lock(&self.patterns.legacy).take() {
            legacy.remove_file()?;
            tracing::info!(
                patterns = ids.len(),
                "this directory's own PII patterns are now the cluster's"
            );
        }
        self.refresh_masker();
        Ok(())
    }
}
