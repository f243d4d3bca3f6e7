//! A client's bytes through the gateway's Modbus/TCP framer (see
//! `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::modbus_frames(data));
