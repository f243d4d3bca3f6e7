//! OCSP requests, DER and base64, as the responder parses them (see
//! `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ocsp_request(data));
