//! Verifying a trail: the hash chain, the checkpoints and their signer,
//! with only the CA root as trust.

use std::collections::{BTreeSet, HashMap};

use der::Decode;
use serde::Serialize;
use x509_cert::Certificate;

use super::{Checkpoint, Entry, GENESIS, checkpoint_message, entry_hash, signer_id};
use crate::x509::oids;

/// Most problems listed in one report.
const MAX_PROBLEMS: usize = 50;

/// Something wrong with the trail, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where: `entry 57`, `entries 40..41`, `checkpoint 3`, `signer …`.
    pub place: String,
    /// What is wrong.
    pub what: String,
}

/// The result of verifying a trail.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Entries read.
    pub entries: u64,
    /// Checkpoints read.
    pub checkpoints: u64,
    /// The last entry covered by a valid checkpoint.
    pub signed_upto: u64,
    /// Entries after the last checkpoint: chained, not yet signed.
    pub unsigned_tail: u64,
    /// What is wrong; empty for an intact trail.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether the trail verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, place: impl Into<String>, what: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                place: place.into(),
                what: what.into(),
            });
        }
    }
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// The audit signers whose certificates chain to `roots` (through the
/// certificates in `certs`) and carry the lockstep audit EKU, by id.
fn trusted_signers(
    certs: &[Vec<u8>],
    roots: &[Certificate],
    report: &mut Report,
) -> HashMap<[u8; 32], crate::keys::PublicKey> {
    let parsed: Vec<(Vec<u8>, Certificate)> = certs
        .iter()
        .filter_map(|d| Certificate::from_der(d).ok().map(|c| (d.clone(), c)))
        .collect();
    let mut pool: Vec<Certificate> = parsed.iter().map(|(_, c)| c.clone()).collect();
    pool.extend(roots.iter().cloned());
    let mut signers = HashMap::new();
    for (der, cert) in &parsed {
        let tbs = cert.tbs_certificate();
        let is_signer = matches!(
            tbs.get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>(),
            Ok(Some((_, eku))) if eku.0.contains(&oids::KP_LOCKSTEP_AUDIT)
        );
        if !is_signer {
            continue;
        }
        let place = format!("signer {}", hex::encode(&signer_id(der)[..8]));
        match crate::x509::verify_path(cert, &pool, roots) {
            Ok(()) => {}
            Err(e) => {
                report.problem(
                    place,
                    format!("the audit signer certificate does not chain to the given root: {e}"),
                );
                continue;
            }
        }
        let key = tbs
            .subject_public_key_info()
            .subject_public_key
            .as_bytes()
            .and_then(|point| crate::keys::PublicKey::from_p256_sec1(point).ok());
        match key {
            Some(k) => {
                signers.insert(signer_id(der), k);
            }
            None => report.problem(place, "the audit signer key is not EC P-256"),
        }
    }
    signers
}

/// Verifies a trail: `entries` in stored order, `checkpoints` in stored
/// order, `certs` the audit signer certificates and their chain, `roots`
/// the trusted CA roots.
pub fn verify(
    entries: impl IntoIterator<Item = Entry>,
    checkpoints: &[Checkpoint],
    certs: &[Vec<u8>],
    roots: &[Certificate],
) -> Report {
    let mut report = Report::default();
    let signers = trusted_signers(certs, roots, &mut report);
    let wanted: BTreeSet<u64> = checkpoints.iter().map(|c| c.upto).collect();
    let mut computed_at: HashMap<u64, [u8; 32]> = HashMap::new();

    let mut expected = 1u64;
    let mut prev = GENESIS;
    let mut computed = GENESIS;
    let mut last_seq = 0u64;
    for e in entries {
        report.entries += 1;
        let place = format!("entry {}", e.seq);
        if e.seq > expected {
            let missing = if e.seq - 1 == expected {
                format!("entry {expected}")
            } else {
                format!("entries {expected}..{}", e.seq - 1)
            };
            report.problem(missing, "missing: deleted from the trail");
        } else if e.seq < expected {
            report.problem(
                &place,
                "out of order or duplicated: the trail was reordered or an entry inserted",
            );
        }
        let stored_prev = hex32(&e.prev_hash);
        let stored_hash = hex32(&e.hash);
        if stored_prev != Some(prev) {
            report.problem(
                &place,
                "does not link to the entry before it: an entry was inserted, deleted or reordered here",
            );
        }
        let recomputed = entry_hash(&prev, e.seq, e.at, e.session.as_deref(), &e.kind, &e.body);
        if stored_hash != Some(recomputed) {
            report.problem(
                &place,
                "content does not match its hash: the entry was edited",
            );
        }
        // The chain as it should be, from the genesis, whatever is stored:
        // rewriting entries and their hashes still breaks the checkpoints.
        computed = entry_hash(
            &computed,
            e.seq,
            e.at,
            e.session.as_deref(),
            &e.kind,
            &e.body,
        );
        if wanted.contains(&e.seq) {
            computed_at.insert(e.seq, computed);
        }
        // Continue from what is stored, to report independent problems.
        prev = stored_hash.unwrap_or(recomputed);
        expected = expected.max(e.seq + 1);
        last_seq = last_seq.max(e.seq);
    }

    let mut expected_number = 1u64;
    let mut last_upto = 0u64;
    for c in checkpoints {
        report.checkpoints += 1;
        let place = format!("checkpoint {}", c.number);
        if c.number != expected_number {
            report.problem(
                &place,
                format!(
                    "checkpoint {expected_number} is missing or the checkpoints were reordered"
                ),
            );
        }
        expected_number = c.number + 1;
        if c.upto < last_upto {
            report.problem(&place, "covers less than the checkpoint before it");
        }
        let (Some(head), Some(signer)) = (hex32(&c.head), hex32(&c.signer)) else {
            report.problem(&place, "malformed");
            continue;
        };
        let Some(key) = signers.get(&signer) else {
            report.problem(
                &place,
                "signed by a key that is not a certified lockstep audit signer",
            );
            continue;
        };
        let message = checkpoint_message(c.number, c.upto, &head, c.at, &signer);
        let signature = hex::decode(&c.signature)
            .ok()
            .and_then(|d| p256::ecdsa::Signature::from_der(&d).ok())
            .and_then(|s| crate::keys::Signature::from_raw(&s.to_bytes()).ok());
        if !signature.is_some_and(|s| key.verify(&message, &s)) {
            report.problem(
                &place,
                "signature does not verify: the checkpoint was forged or altered",
            );
            continue;
        }
        match computed_at.get(&c.upto) {
            None => report.problem(
                &place,
                format!(
                    "covers entry {} but the trail ends at entry {last_seq}: the trail was truncated",
                    c.upto
                ),
            ),
            Some(h) if *h != head => report.problem(
                &place,
                format!(
                    "signed a different trail up to entry {}: entries up to it were rewritten",
                    c.upto
                ),
            ),
            Some(_) => {
                report.signed_upto = report.signed_upto.max(c.upto);
            }
        }
        last_upto = c.upto;
    }
    report.unsigned_tail = last_seq.saturating_sub(report.signed_upto);
    if certs.is_empty() && !checkpoints.is_empty() {
        report.problem("signers", "no audit signer certificate was given");
    }
    report
}
