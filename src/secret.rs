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
        deserializer.deserialize_any(RefVisitor)
    }
}

/// Takes a reference from a string and refuses anything else without
/// quoting it: the value may be a pasted secret (a numeric PIN is read as an
/// integer, and serde's own "invalid type" message would show it).
struct RefVisitor;

impl RefVisitor {
    fn refuse<E: serde::de::Error>() -> E {
        E::custom(SecretError::NotAReference)
    }
}

impl<'de> serde::de::Visitor<'de> for RefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret reference, `env:NAME` or `file:PATH`")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SecretRef, E> {
        SecretRef::parse(text).map_err(E::custom)
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<SecretRef, E> {
        // Wipe the raw text once parsed: it may be a pasted secret.
        let text = Zeroizing::new(text);
        SecretRef::parse(&text).map_err(E::custom)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_char<E: serde::de::Error>(self, _: char) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretRef, E> {
        Err(Self::refuse())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(Self::refuse())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(Self::refuse())
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
    fn values_of_other_types_are_refused_without_quoting_them() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            pin: SecretRef,
        }
        for text in [
            "pin = 80417263",
            "pin = -80417263",
            "pin = 80417263.5",
            "pin = 0x80417263",
            "pin = true",
            "pin = [80417263]",
            "pin = { v = 80417263 }",
            "pin = 2024-08-04T17:26:30Z",
        ] {
            let err = toml::from_str::<T>(text).unwrap_err().message().to_owned();
            assert!(err.contains("by reference"), "{text}: {err}");
            for secret in ["80417263", "417263", "2024-08-04"] {
                assert!(!err.contains(secret), "{text}: {err}");
            }
        }
        let t: T = toml::from_str("pin = \"file:/run/pin\"").unwrap();
        assert_eq!(t.pin, SecretRef::File("/run/pin".into()));
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
