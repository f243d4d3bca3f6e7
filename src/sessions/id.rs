//! Session identifiers: `ses_` and 26 base32 characters (128 random bits).
//! Random, so they are never reused and cannot be guessed.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SessionError;

const PREFIX: &str = "ses_";
const BODY_LEN: usize = 26;

/// A session id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SessionError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| SessionError::InvalidRequest(format!("no randomness from the OS: {e}")))?;
        let body = data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase();
        Ok(Self(format!("{PREFIX}{body}")))
    }

    /// Parses an id, refusing anything that is not `ses_` and 26 base32
    /// characters.
    pub fn parse(text: &str) -> Result<Self, SessionError> {
        let ok = text.len() == PREFIX.len() + BODY_LEN
            && text.starts_with(PREFIX)
            && text[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(SessionError::InvalidRequest(
                "a session id is `ses_` followed by 26 characters of a-z and 2-7".into(),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "ses_",
            "ses_AAAAAAAAAAAAAAAAAAAAAAAAAA",
            "ses_aaaaaaaaaaaaaaaaaaaaaaaaa1",
            "x".repeat(30).as_str(),
            "ses_../../etc/passwd_aaaaaa",
        ] {
            assert!(SessionId::parse(bad).is_err(), "{bad}");
        }
    }
}
