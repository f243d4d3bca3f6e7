//! The tamper-evident audit trail.
//!
//! Every event is appended in the store transaction of the state change it
//! describes, and carries the hash of the entry before it:
//!
//! ```text
//! hash(n) = SHA-256("lockstep-audit-v1" 0x00 ‖ hash(n-1) ‖ u64be(seq) ‖ i64be(at)
//!                   ‖ s(session id or "") ‖ s(kind) ‖ s(body JSON))
//! ```
//!
//! with `hash(0)` = 32 zero bytes and `s(x)` = u32be(len) ‖ UTF-8 bytes.
//! Sequence numbers are contiguous from 1. Every N entries, every T seconds
//! and at shutdown a *checkpoint* is signed by the audit key (held in the
//! HSM/TPM, certified by the issuing CA):
//!
//! ```text
//! SHA-256 ECDSA over "lockstep-audit-checkpoint-v1" 0x00 ‖ u64be(number)
//!                   ‖ u64be(upto seq) ‖ hash(upto) ‖ i64be(at) ‖ SHA-256(signer cert)
//! ```
//!
//! `lockstep audit verify` recomputes the chain and checks every checkpoint
//! with only the CA root: an edited, deleted, inserted or reordered entry,
//! a trail cut short of a checkpoint, or a forged checkpoint is found and
//! named. Entries after the last checkpoint are chained but not yet signed;
//! verify reports how many.

mod reader;
mod signer;
mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use reader::Trail;
pub use signer::{AuditSigner, certificate_for};
pub use verify::{Problem, Report, verify};

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position, from 1, contiguous.
    pub seq: u64,
    /// When (seconds since the epoch).
    pub at: i64,
    /// The session it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The event kind (`requested`, `approved`, …).
    pub kind: String,
    /// The event, JSON text exactly as hashed.
    pub body: String,
    /// Hash of the entry before, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Checkpoint number, from 1.
    pub number: u64,
    /// The last entry it covers.
    pub upto: u64,
    /// That entry's hash, hex.
    pub head: String,
    /// When it was signed.
    pub at: i64,
    /// SHA-256 of the signing certificate's DER, hex.
    pub signer: String,
    /// DER ECDSA signature, hex.
    pub signature: String,
}

/// The body of a trail entry: the event as JSON, with `"break_glass":
/// true` added to every entry of a break-glass session, so each one says
/// so wherever it is read. (Readers of [`crate::sessions::Event`] ignore
/// the extra field.)
pub fn entry_body(
    event: &crate::sessions::Event,
    break_glass: bool,
) -> Result<String, serde_json::Error> {
    if !break_glass {
        return serde_json::to_string(event);
    }
    let mut value = serde_json::to_value(event)?;
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("break_glass".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_string(&value)
}

/// Whether an entry's body carries the break-glass mark
/// ([`entry_body`]).
pub fn is_break_glass(body: &str) -> bool {
    #[derive(Deserialize)]
    struct Mark {
        #[serde(default)]
        break_glass: bool,
    }
    serde_json::from_str::<Mark>(body).is_ok_and(|m| m.break_glass)
}

/// The hash of the entry before the first one.
pub const GENESIS: [u8; 32] = [0; 32];

fn field(h: &mut Sha256, s: &str) {
    h.update((s.len() as u32).to_be_bytes());
    h.update(s.as_bytes());
}

/// The hash of an entry given the hash before it.
pub fn entry_hash(
    prev: &[u8; 32],
    seq: u64,
    at: i64,
    session: Option<&str>,
    kind: &str,
    body: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"lockstep-audit-v1\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    field(&mut h, session.unwrap_or(""));
    field(&mut h, kind);
    field(&mut h, body);
    h.finalize().into()
}

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_message(
    number: u64,
    upto: u64,
    head: &[u8; 32],
    at: i64,
    signer: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"lockstep-audit-checkpoint-v1\0");
    m.extend_from_slice(&number.to_be_bytes());
    m.extend_from_slice(&upto.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&at.to_be_bytes());
    m.extend_from_slice(signer);
    m
}

/// SHA-256 of a certificate's DER: how checkpoints name their signer.
pub fn signer_id(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// A line of an export (JSON lines): the certificates first, then entries
/// and checkpoints in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportLine {
    /// A certificate of the audit signer or its chain, PEM.
    Certificate(String),
    /// An entry.
    Entry(Entry),
    /// A checkpoint.
    Checkpoint(Checkpoint),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Event;

    #[test]
    fn break_glass_entries_carry_the_mark_and_still_read_as_events() {
        let event = Event::Closed {
            reason: crate::sessions::CloseReason::Completed,
            by: Some("token:bob".into()),
            note: None,
        };
        let plain = entry_body(&event, false).unwrap();
        let marked = entry_body(&event, true).unwrap();
        assert!(!is_break_glass(&plain));
        assert!(is_break_glass(&marked));
        assert_eq!(serde_json::from_str::<Event>(&marked).unwrap(), event);
        assert!(!is_break_glass("not json"));
    }

    #[test]
    fn every_field_is_bound_into_the_hash() {
        let base = entry_hash(&GENESIS, 1, 100, Some("ses_x"), "approved", "{}");
        assert_ne!(
            base,
            entry_hash(&[1; 32], 1, 100, Some("ses_x"), "approved", "{}")
        );
        assert_ne!(
            base,
            entry_hash(&GENESIS, 2, 100, Some("ses_x"), "approved", "{}")
        );
        assert_ne!(
            base,
            entry_hash(&GENESIS, 1, 101, Some("ses_x"), "approved", "{}")
        );
        assert_ne!(base, entry_hash(&GENESIS, 1, 100, None, "approved", "{}"));
        assert_ne!(
            base,
            entry_hash(&GENESIS, 1, 100, Some("ses_x"), "denied", "{}")
        );
        assert_ne!(
            base,
            entry_hash(&GENESIS, 1, 100, Some("ses_x"), "approved", "{ }")
        );
        // Length prefixes keep fields apart.
        assert_ne!(
            entry_hash(&GENESIS, 1, 1, Some("ab"), "c", "{}"),
            entry_hash(&GENESIS, 1, 1, Some("a"), "bc", "{}")
        );
    }
}
