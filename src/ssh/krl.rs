//! The OpenSSH key revocation list (KRL) sshd reads through `RevokedKeys`.
//!
//! Written here because no maintained crate encodes KRLs; the format is
//! OpenSSH's `PROTOCOL.krl`, and its primitives (uint32, uint64, string,
//! the CA key blob) are `ssh-key`'s encoders. lockstep writes one
//! certificates section for its CA with one serial list, and leaves the
//! KRL unsigned: sshd ignores KRL signatures, and it is fetched from the
//! issuer over TLS.

use ssh_key::encoding::Encode;

use super::{SshCa, SshError};

/// `SSHKRL\n\0`.
const MAGIC: u64 = 0x5353_484b_524c_0a00;
const FORMAT_VERSION: u32 = 1;
const SECTION_CERTIFICATES: u8 = 1;
const CERT_SERIAL_LIST: u8 = 0x20;

/// A KRL revoking `serials` (certificates of `ca`), numbered `version`
/// (increasing with every revocation) and dated `generated` (Unix seconds).
pub fn krl(ca: &SshCa, serials: &[u64], version: u64, generated: u64) -> Result<Vec<u8>, SshError> {
    let bad = |e: ssh_key::encoding::Error| SshError::Encoding(format!("KRL: {e}"));
    let mut out = Vec::new();
    MAGIC.encode(&mut out).map_err(bad)?;
    FORMAT_VERSION.encode(&mut out).map_err(bad)?;
    version.encode(&mut out).map_err(bad)?;
    generated.encode(&mut out).map_err(bad)?;
    0u64.encode(&mut out).map_err(bad)?; // flags
    "".encode(&mut out).map_err(bad)?; // reserved
    "lockstep".encode(&mut out).map_err(bad)?; // comment
    if serials.is_empty() {
        return Ok(out);
    }
    let mut list = Vec::with_capacity(serials.len() * 8);
    let mut sorted = serials.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for s in sorted {
        s.encode(&mut list).map_err(bad)?;
    }
    let mut section = Vec::new();
    ca.key_data().encode_prefixed(&mut section).map_err(bad)?;
    "".encode(&mut section).map_err(bad)?; // reserved
    section.push(CERT_SERIAL_LIST);
    list.as_slice().encode(&mut section).map_err(bad)?;
    out.push(SECTION_CERTIFICATES);
    section.as_slice().encode(&mut out).map_err(bad)?;
    Ok(out)
}
