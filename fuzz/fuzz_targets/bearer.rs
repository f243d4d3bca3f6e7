//! `Authorization` headers through the authenticator the service uses
//! (see `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bearer(data));
