//! The JSON bodies of the API and session ids, through the functions the
//! handlers and the service use (see `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::session_request(data));
