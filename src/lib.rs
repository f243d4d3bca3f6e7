//! lockstep: a hardware-rooted credential issuer.
//!
//! Signing keys live in a PKCS#11 HSM or a TPM 2.0 and never leave it.
//! lockstep mints X.509 certificates whose `notAfter` is exactly the close
//! time of the approved session that asked for them.

#![forbid(unsafe_code)]

pub mod keys;
pub mod secret;
