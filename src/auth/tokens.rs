//! Static API tokens: random bearer tokens (`lst_…`) that lockstep knows
//! only by their SHA-256. The caller is `token:<name>`.
//!
//! The hashes live in the configuration (`[[auth.token]]`) or in a tokens
//! file (`[auth] tokens_file`) that `lockstep auth add-token` maintains:
//!
//! ```toml
//! [[token]]
//! name = "alice"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{AuthError, Caller};

/// Every static token starts with this.
pub const TOKEN_PREFIX: &str = "lst_";

/// One configured token: a name and the SHA-256 of the token, hex.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The name; the caller is `token:<name>`.
    pub name: String,
    /// SHA-256 of the whole token text, lower-case hex.
    pub sha256: String,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

/// The accepted static tokens, by hash.
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    by_hash: HashMap<[u8; 32], String>,
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "token name `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
            name.escape_debug()
        ));
    }
    Ok(())
}

impl StaticTokens {
    /// Builds the table, checking names and hashes; a name or hash used
    /// twice is refused.
    pub fn new(entries: &[TokenEntry]) -> Result<Self, AuthError> {
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for e in entries {
            check_name(&e.name).map_err(AuthError::Config)?;
            let hash: [u8; 32] = hex::decode(&e.sha256)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    AuthError::Config(format!("token `{}`: sha256 must be 64 hex digits", e.name))
                })?;
            if !names.insert(e.name.clone()) {
                return Err(AuthError::Config(format!(
                    "token `{}` is listed twice",
                    e.name
                )));
            }
            if by_hash.insert(hash, e.name.clone()).is_some() {
                return Err(AuthError::Config(format!(
                    "token `{}` has the same hash as another token",
                    e.name
                )));
            }
        }
        Ok(Self { by_hash })
    }

    /// Reads the entries of a tokens file (missing file: no entries).
    pub fn read_file(path: &Path) -> Result<Vec<TokenEntry>, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(AuthError::Config(format!(
                    "cannot read tokens file {}: {e}",
                    path.display()
                )));
            }
        };
        let file: TokensFile = toml::from_str(&text).map_err(|e| {
            AuthError::Config(format!("tokens file {}: {}", path.display(), e.message()))
        })?;
        Ok(file.tokens)
    }

    /// The caller a token belongs to, if it is one of ours.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash
            .get(&hash)
            .map(|name| Caller::new(format!("token:{name}")))
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A new random token (`lst_` + 32 random bytes, base64url) and its hash.
pub fn generate() -> Result<(SecretString, String), AuthError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())
        .map_err(|e| AuthError::Config(format!("no randomness from the OS: {e}")))?;
    let token = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((SecretString::from(token.as_str()), hash))
}

/// Adds a token called `name` to the tokens file (creating it), replacing
/// an existing one of that name only if `replace` is set. Returns the new
/// token; only its hash is written.
pub fn add_to_file(path: &Path, name: &str, replace: bool) -> Result<SecretString, AuthError> {
    check_name(name).map_err(AuthError::Config)?;
    let mut entries = StaticTokens::read_file(path)?;
    if let Some(i) = entries.iter().position(|e| e.name == name) {
        if !replace {
            return Err(AuthError::Config(format!(
                "token `{name}` already exists in {} (pass --replace to issue a new one)",
                path.display()
            )));
        }
        entries.remove(i);
    }
    let (token, sha256) = generate()?;
    entries.push(TokenEntry {
        name: name.to_owned(),
        sha256,
    });
    let text = toml::to_string(&TokensFile { tokens: entries })
        .map_err(|e| AuthError::Config(format!("cannot encode tokens file: {e}")))?;
    let header = "# lockstep API tokens: names and SHA-256 hashes only. Managed by `lockstep auth add-token`.\n";
    crate::fsio::write_atomic(path, format!("{header}{text}").as_bytes(), 0o600)
        .map_err(|e| AuthError::Config(e.to_string()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_tokens_verify_by_hash_only() {
        let (token, hash) = generate().unwrap();
        assert!(token.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(token.expose_secret().len(), 4 + 43);
        let tokens = StaticTokens::new(&[TokenEntry {
            name: "ci".into(),
            sha256: hash,
        }])
        .unwrap();
        assert_eq!(
            tokens.verify(token.expose_secret()).unwrap().identity,
            "token:ci"
        );
        assert!(tokens.verify("lst_wrong").is_none());
        assert!(!format!("{token:?}").contains(token.expose_secret()));
    }

    #[test]
    fn bad_entries_are_refused() {
        let h = "ab".repeat(32);
        for entries in [
            vec![TokenEntry {
                name: "".into(),
                sha256: h.clone(),
            }],
            vec![TokenEntry {
                name: "a b".into(),
                sha256: h.clone(),
            }],
            vec![TokenEntry {
                name: "a".into(),
                sha256: "abc".into(),
            }],
            vec![
                TokenEntry {
                    name: "a".into(),
                    sha256: h.clone(),
                },
                TokenEntry {
                    name: "a".into(),
                    sha256: "cd".repeat(32),
                },
            ],
            vec![
                TokenEntry {
                    name: "a".into(),
                    sha256: h.clone(),
                },
                TokenEntry {
                    name: "b".into(),
                    sha256: h.clone(),
                },
            ],
        ] {
            assert!(StaticTokens::new(&entries).is_err());
        }
    }

    #[test]
    fn tokens_file_is_maintained_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let alice = add_to_file(&path, "alice", false).unwrap();
        let bob = add_to_file(&path, "bob", false).unwrap();
        assert!(add_to_file(&path, "alice", false).is_err());
        let alice2 = add_to_file(&path, "alice", true).unwrap();
        let tokens = StaticTokens::new(&StaticTokens::read_file(&path).unwrap()).unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(
            tokens.verify(alice.expose_secret()).is_none(),
            "replaced token still valid"
        );
        assert_eq!(
            tokens.verify(alice2.expose_secret()).unwrap().identity,
            "token:alice"
        );
        assert_eq!(
            tokens.verify(bob.expose_secret()).unwrap().identity,
            "token:bob"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(bob.expose_secret()));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
