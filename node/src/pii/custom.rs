//! Custom PII patterns (the seed's PIIPattern): an operator adds a regex for an in-house id
//! format at run time, without a release. Patterns are validated when added and kept in the
//! cluster's replicated metadata (the node's `cluster/meta.rs`), so every node masks with the
//! same ones. Data directories of builds before that kept them in `pii-patterns.json`; the
//! [`PatternStore`] here reads such a file once, when a node moves its patterns into the cluster.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Strategy;

/// Bounds on custom patterns.
pub const PATTERNS_MAX: usize = 64;
/// The longest regex accepted, in bytes.
pub const REGEX_LEN_MAX: usize = 1024;
const TYPE_LEN_MAX: usize = 40;
const DESCRIPTION_LEN_MAX: usize = 1024;
/// The most memory one pattern's compiled automaton may take.
const PATTERN_NFA_MAX: usize = 1 << 20;

/// One custom pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomPattern {
    /// Its id.
    pub pattern_id: Uuid,
    /// The type reported in `pii_detected` (lowercase; a built-in name such as `email` is
    /// allowed and uses that type's masked forms).
    pub pattern_type: String,
    /// The regex (Rust `regex` syntax).
    pub regex_pattern: String,
    /// How matches are replaced.
    pub masking_strategy: Strategy,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Inactive patterns are kept but not applied.
    pub is_active: bool,
    /// When it was added (RFC 3339).
    pub created_at: String,
}

/// A request to add a pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPattern {
    /// See [`CustomPattern::pattern_type`].
    pub pattern_type: String,
    /// See [`CustomPattern::regex_pattern`].
    pub regex_pattern: String,
    /// See [`CustomPattern::masking_strategy`]; default REDACT.
    #[serde(default)]
    pub masking_strategy: Option<String>,
    /// See [`CustomPattern::description`].
    #[serde(default)]
    pub description: Option<String>,
    /// See [`CustomPattern::is_active`]; default true.
    #[serde(default)]
    pub is_active: Option<bool>,
}

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The request is malformed; the field and the reason.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// There are already [`PATTERNS_MAX`] patterns.
    #[error("at most {PATTERNS_MAX} custom patterns; delete one first")]
    TooMany,
    /// No pattern has this id.
    #[error("no custom pattern with id {0}")]
    NotFound(Uuid),
    /// The store could not be read or written.
    #[error("pattern store {path}: {source}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store file is not valid.
    #[error("pattern store {0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
    /// The change could not be made now (the cluster's metadata group has no leader, or did
    /// not apply it in time); a retry can succeed.
    #[error("the change cannot be made now: {0}")]
    Unavailable(String),
}

impl NewPattern {
    /// Validates the request and makes the pattern.
    pub fn validate(self) -> Result<CustomPattern, PatternError> {
        let invalid = |field, reason: String| PatternError::Invalid { field, reason };
        let pattern_type = self.pattern_type.trim().to_ascii_lowercase();
        let type_ok = !pattern_type.is_empty()
            && pattern_type.len() <= TYPE_LEN_MAX
            && pattern_type.starts_with(|c: char| c.is_ascii_lowercase())
            && pattern_type
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !type_ok {
            return Err(invalid(
                "pattern_type",
                format!("must be 1 to {TYPE_LEN_MAX} of a-z, 0-9 and _, starting with a letter"),
            ));
        }
        if self.regex_pattern.is_empty() || self.regex_pattern.len() > REGEX_LEN_MAX {
            return Err(invalid(
                "regex_pattern",
                format!("must be 1 to {REGEX_LEN_MAX} bytes"),
            ));
        }
        let re = regex::RegexBuilder::new(&self.regex_pattern)
            .size_limit(PATTERN_NFA_MAX)
            .build()
            .map_err(|e| invalid("regex_pattern", e.to_string()))?;
        if re.is_match("") {
            return Err(invalid(
                "regex_pattern",
                "matches the empty string; it must match at least one character".into(),
            ));
        }
        let masking_strategy = match self.masking_strategy.as_deref() {
            None => Strategy::Redact,
            Some(s) => Strategy::parse(s).ok_or_else(|| {
                invalid(
                    "masking_strategy",
                    format!("{s:?} is not REDACT, HASH or PARTIAL_MASK"),
                )
            })?,
        };
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > DESCRIPTION_LEN_MAX)
        {
            return Err(invalid(
                "description",
                format!("at most {DESCRIPTION_LEN_MAX} bytes"),
            ));
        }
        Ok(CustomPattern {
            pattern_id: Uuid::now_v7(),
            pattern_type,
            regex_pattern: self.regex_pattern,
            masking_strategy,
            description: self.description,
            is_active: self.is_active.unwrap_or(true),
            created_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }
}

/// The list of custom patterns a data directory of an older build kept itself
/// (`pii-patterns.json`), read when its node moves them into the cluster's metadata.
#[derive(Debug)]
pub struct PatternStore {
    path: PathBuf,
    patterns: Vec<CustomPattern>,
}

impl PatternStore {
    /// The store's file inside a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("pii-patterns.json")
    }

    /// Opens the store (empty when its file does not exist).
    pub fn open(path: PathBuf) -> Result<PatternStore, PatternError> {
        let patterns = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| PatternError::Corrupt(path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(PatternError::Io { path, source }),
        };
        Ok(PatternStore { path, patterns })
    }

    /// Every pattern, in the order they were added.
    pub fn patterns(&self) -> &[CustomPattern] {
        &self.patterns
    }

    /// Removes the file, once the cluster holds its patterns (so a deletion made in the
    /// cluster later cannot be undone by this copy).
    pub fn remove_file(&self) -> Result<(), PatternError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PatternError::Io {
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(t: &str, re: &str) -> NewPattern {
        NewPattern {
            pattern_type: t.into(),
            regex_pattern: re.into(),
            masking_strategy: None,
            description: None,
            is_active: None,
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_the_field_named() {
        for (p, field) in [
            (new("employee_id", "EMP-[0-9"), "regex_pattern"),
            (new("employee_id", "a*"), "regex_pattern"),
            (new("Employee Id", "EMP-[0-9]{6}"), "pattern_type"),
            (new("", "EMP"), "pattern_type"),
            (new("x", &"a".repeat(REGEX_LEN_MAX + 1)), "regex_pattern"),
            (
                NewPattern {
                    masking_strategy: Some("SHRED".into()),
                    ..new("x", "EMP")
                },
                "masking_strategy",
            ),
        ] {
            match p.validate() {
                Err(PatternError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a refusal on {field}, got {other:?}"),
            }
        }
        // A regex that compiles to a huge automaton is refused, not built.
        assert!(new("x", r"\w{1000}\w{1000}\w{1000}").validate().is_err());
    }

    #[test]
    fn an_older_directory_s_patterns_are_read_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = PatternStore::path_in(dir.path());
        assert!(PatternStore::open(path.clone())
            .unwrap()
            .patterns()
            .is_empty());
        let p = new("employee_id", r"\bEMP-[0-9]{6}\b").validate().unwrap();
        std::fs::write(&path, serde_json::to_vec(&vec![p.clone()]).unwrap()).unwrap();
        let store = PatternStore::open(path.clone()).unwrap();
        assert_eq!(store.patterns(), &[p]);
        store.remove_file().unwrap();
        store.remove_file().unwrap();
        assert!(PatternStore::open(path.clone())
            .unwrap()
            .patterns()
            .is_empty());
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            PatternStore::open(path),
            Err(PatternError::Corrupt(..))
        ));
    }
}
