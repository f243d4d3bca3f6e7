//! Secrets by reference: PINs and auth values are written in configuration as
//! `env:NAME` or `file:PATH`, never inline, and resolved into a zeroizing
//! [`SecretString`] only at the moment they are needed.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// Where a secret comes from. `Debug` and `Display` show the reference,
/// never the value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable, written `env:NAME`.
    Env(String),
    /// A file whose contents (one trailing newline removed) are the secret,
    /// written `file:PATH`.
    File(PathBuf),
}

/// Why a secret reference could not be parsed or resolved. The message
/// names the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The text is not `env:NAME` or `file:PATH`.
    #[error(
        "a secret (PIN or auth value) must be given by reference, `env:NAME` or `file:PATH` (inline values are refused)"
    )]
    NotAReference,
    /// The environment variable is not set or is not valid UTF-8.
    #[error("environment variable {0} is not set (or not UTF-8); export it before starting")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file named by the reference.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret resolved to an empty string.
    #[error("secret {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:PATH`. Anything else is refused, so that a
    /// PIN pasted inline into a configuration file is never accepted.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(SecretError::NotAReference);
            }
            return Ok(Self::Env(name.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SecretError::NotAReference);
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        Err(SecretError::NotAReference)
    }

    /// Makes a relative `file:` path relative to `base` (the directory of the
    /// configuration file that named it).
    pub fn relative_to(self, base: &Path) -> Self {
        match self {
            Self::File(p) if p.is_relative() => Self::File(base.join(p)),
            other => other,
        }
    }

    /// Reads the secret now. The value lives in a [`SecretString`], which
    /// zeroizes its memory on drop and elides itself in `Debug`.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        let value: Zeroizing<String> = match self {
            Self::Env(name) => Zeroizing::new(
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?,
            ),
            Self::File(path) => {
                let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    SecretError::File {
                        path: path.clone(),
                        source,
                    }
                })?);
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(SecretString::from(value.as_str()))
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The raw text may be a pasted secret: wipe it once parsed, and never
        // echo it back in the error.
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        SecretRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn parses_references_and_refuses_inline_values() {
        assert_eq!(
            SecretRef::parse("env:PIN").unwrap(),
            SecretRef::Env("PIN".into())
        );
        assert_eq!(
            SecretRef::parse("file:/run/pin").unwrap(),
            SecretRef::File("/run/pin".into())
        );
        for bad in ["1234", "", "env:", "file:", "env:A=B", "literal:1234"] {
            let err = SecretRef::parse(bad).unwrap_err();
            assert!(!err.to_string().contains("1234") || bad != "1234");
        }
    }

    #[test]
    fn file_secret_strips_one_newline_and_debug_elides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = SecretRef::File(path).resolve().unwrap();
        assert_eq!(secret.expose_secret(), "s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_env_names_the_variable_only() {
        let err = SecretRef::Env("LOCKSTEP_TEST_SURELY_UNSET".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("LOCKSTEP_TEST_SURELY_UNSET"));
    }

    #[test]
    fn relative_file_is_resolved_against_the_config_dir() {
        let r = SecretRef::File("pin.txt".into()).relative_to(Path::new("/etc/lockstep"));
        assert_eq!(r, SecretRef::File("/etc/lockstep/pin.txt".into()));
    }
}
