//! The PII keys: the HMAC secret behind HASH tokens and the AES-256-GCM key that seals kept
//! originals. They live outside the data directory, so a leaked data directory cannot be used to
//! brute-force a hash (an SSN has about 10⁹ values; an unkeyed hash of one is reversible) or to
//! open an original.
//!
//! Keys come from the environment (`VEIL_PII_HMAC_KEY`, `VEIL_PII_AES_KEY`, hex, 32 bytes each;
//! `VEIL_PII_KEY_ID`) or from a key file, created with fresh random keys and mode 0600 on first
//! start. The file holds a list of keys with ids and names the active one: to rotate, add a key
//! and make it active; sealed originals name the key that sealed them and stay readable while
//! their key is in the file.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

/// Why keys could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file or a key variable is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The key file may be read by others than its owner.
    #[error("key file {0} is readable by group or others; run chmod 600 on it")]
    Permissions(PathBuf),
    /// No randomness for a new key.
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
    /// A sealed original names a key that is not loaded, or does not open with it.
    #[error("cannot open the sealed original: {0}")]
    Open(String),
}

/// One key pair with its id.
#[derive(Clone)]
pub struct Key {
    id: String,
    hmac: [u8; 32],
    aes: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The HMAC secret.
    pub fn hmac_key(&self) -> &[u8] {
        &self.hmac
    }

    fn generate(id: String) -> Result<Key, KeyError> {
        let mut hmac = [0u8; 32];
        let mut aes = [0u8; 32];
        getrandom::fill(&mut hmac).map_err(|e| KeyError::Random(e.to_string()))?;
        getrandom::fill(&mut aes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Key { id, hmac, aes })
    }
}

/// The loaded keys: the active one hashes and seals; the others still open what they sealed.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
    active: usize,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    active: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    hmac_key: String,
    aes_key: String,
    created_at: String,
}

const FILE_HEADER: &str =
    "# Veil's PII keys: the HMAC secret behind hash tokens and the key that seals kept\n\
# originals. Keep this file outside the data directory, readable by its owner only, and the\n\
# same on every node of a cluster. To rotate, add a key and make it active.\n";

impl KeyRing {
    /// A fingerprint of every key (ids, HMAC and AES secrets) that reveals none of them: an
    /// HMAC-SHA256 under each key's own secrets of a fixed text, hex. Nodes of a cluster compare
    /// fingerprints when one joins, so a node with other keys (which would hash the same value
    /// to another token, or fail to open another node's sealed originals) is refused.
    pub fn fingerprint(&self) -> String {
        use hmac::{Hmac, Mac};
        let mut out = Vec::new();
        for key in &self.keys {
            for secret in [&key.hmac, &key.aes] {
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
                    .expect("HMAC takes a key of any length");
                mac.update(b"veil cluster key check");
                mac.update(key.id.as_bytes());
                out.extend_from_slice(&mac.finalize().into_bytes()[..8]);
            }
        }
        out.extend_from_slice(self.active().id.as_bytes());
        hex::encode(out)
    }

    /// The active key.
    pub fn active(&self) -> &Key {
        &self.keys[self.active]
    }

    /// Fresh random keys that live only in memory (`veil pii mask` without a key).
    pub fn throwaway() -> Result<KeyRing, KeyError> {
        Ok(KeyRing {
            keys: vec![Key::generate("throwaway".into())?],
            active: 0,
        })
    }

    /// Keys from `VEIL_PII_HMAC_KEY` / `VEIL_PII_AES_KEY` (and `VEIL_PII_KEY_ID`), if set.
    pub fn from_env() -> Result<Option<KeyRing>, KeyError> {
        let Ok(hmac) = std::env::var("VEIL_PII_HMAC_KEY") else {
            return Ok(None);
        };
        let aes = std::env::var("VEIL_PII_AES_KEY").map_err(|_| {
            KeyError::Invalid("VEIL_PII_HMAC_KEY is set but VEIL_PII_AES_KEY is not".into())
        })?;
        let id = std::env::var("VEIL_PII_KEY_ID").unwrap_or_else(|_| "env".into());
        Ok(Some(KeyRing {
            keys: vec![Key {
                hmac: parse_key("VEIL_PII_HMAC_KEY", &hmac)?,
                aes: parse_key("VEIL_PII_AES_KEY", &aes)?,
                id,
            }],
            active: 0,
        }))
    }

    /// Loads the key file, or creates it with fresh keys (mode 0600, its directory 0700) when
    /// it does not exist. Two processes racing to create it end up with the same keys.
    pub fn load_or_create(path: &Path) -> Result<KeyRing, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions(path.to_path_buf()));
                }
                return Self::parse(&text, path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let created = time::OffsetDateTime::now_utc();
        let id = format!(
            "k{}-{}",
            created.unix_timestamp(),
            hex::encode(random_bytes::<3>()?)
        );
        let key = Key::generate(id.clone())?;
        let file = KeyFile {
            active: id,
            keys: vec![KeyEntry {
                id: key.id.clone(),
                hmac_key: hex::encode(key.hmac),
                aes_key: hex::encode(key.aes),
                created_at: created
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }],
        };
        let text = format!(
            "{FILE_HEADER}{}",
            toml::to_string(&file).map_err(|e| KeyError::Invalid(e.to_string()))?
        );
        // Write a private temporary file, then link it into place: the link fails if another
        // process created the file meanwhile, and then its keys win.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, path);
        // The temporary name is ours alone; failing to remove it leaves a private file behind.
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(KeyRing {
                keys: vec![key],
                active: 0,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
            Err(e) => Err(io(e)),
        }
    }

    fn parse(text: &str, path: &Path) -> Result<KeyRing, KeyError> {
        let file: KeyFile = toml::from_str(text)
            .map_err(|e| KeyError::Invalid(format!("key file {}: {e}", path.display())))?;
        let mut keys = Vec::new();
        for k in &file.keys {
            keys.push(Key {
                id: k.id.clone(),
                hmac: parse_key(&format!("hmac_key of key {}", k.id), &k.hmac_key)?,
                aes: parse_key(&format!("aes_key of key {}", k.id), &k.aes_key)?,
            });
        }
        let active = keys
            .iter()
            .position(|k| k.id == file.active)
            .ok_or_else(|| {
                KeyError::Invalid(format!(
                    "key file {}: the active key {:?} is not in the file",
                    path.display(),
                    file.active
                ))
            })?;
        Ok(KeyRing { keys, active })
    }

    /// Encrypts `plaintext` with the active key (AES-256-GCM, random nonce), bound to `aad`
    /// (the entry's log_id), into `version | id length | id | nonce | ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self.active();
        let cipher = Aes256Gcm::new_from_slice(&key.aes).expect("AES-256 takes a 32-byte key");
        let nonce = random_bytes::<12>()?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|e| KeyError::Invalid(format!("encryption failed: {e}")))?;
        let id = key.id.as_bytes();
        let id_len = u8::try_from(id.len())
            .map_err(|_| KeyError::Invalid("key id longer than 255 bytes".into()))?;
        let mut out = Vec::with_capacity(2 + id.len() + 12 + ct.len());
        out.push(1);
        out.push(id_len);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`KeyRing::seal`] produced, with the key it names.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let bad = |why: &str| KeyError::Open(why.to_string());
        let [1, id_len, rest @ ..] = sealed else {
            return Err(bad("unknown format"));
        };
        let id_len = usize::from(*id_len);
        if rest.len() < id_len + 12 + 16 {
            return Err(bad("truncated"));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ct) = rest.split_at(12);
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .ok_or_else(|| bad("sealed with a key that is not loaded"))?;
        let cipher = Aes256Gcm::new_from_slice(&key.aes).expect("AES-256 takes a 32-byte key");
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| bad("authentication failed"))
    }
}

fn parse_key(what: &str, hex_text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|_| KeyError::Invalid(format!("{what} is not hex")))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::Invalid(format!("{what} must be 32 bytes (64 hex digits)")))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_file_is_private_and_reloads_to_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/keys.toml");
        let first = KeyRing::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(first.active().id(), again.active().id());
        assert_eq!(first.active().hmac_key(), again.active().hmac_key());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyRing::load_or_create(&path),
            Err(KeyError::Permissions(_))
        ));
    }

    #[test]
    fn sealed_originals_open_with_their_key_only() {
        let keys = KeyRing::throwaway().unwrap();
        let plaintext = b"{\"message\":\"user john@example.com\"}";
        let sealed = keys.seal(plaintext, b"log-1").unwrap();
        assert!(
            !sealed.windows(8).any(|w| w == b"john@exa"),
            "ciphertext holds the plaintext"
        );
        assert_eq!(keys.open(&sealed, b"log-1").unwrap(), plaintext);
        // Bound to its entry: moved to another log_id it does not open.
        assert!(keys.open(&sealed, b"log-2").is_err());
        // Another key (same id, as after losing the key file) cannot open it.
        let mut other = KeyRing::throwaway().unwrap();
        other.keys[0].id = keys.active().id().to_string();
        assert!(other.open(&sealed, b"log-1").is_err());
        // Tampering is detected.
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(keys.open(&tampered, b"log-1").is_err());
    }
}
