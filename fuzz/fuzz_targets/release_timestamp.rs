//! Any bytes as the RFC 3161 response of a release bundle, read and
//! verified as `lockstep sign` and `lockstep verify` do (see `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::release_timestamp(data));
