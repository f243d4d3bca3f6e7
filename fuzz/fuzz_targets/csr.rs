//! The CSR check the certificate endpoint runs: size cap, PEM or DER,
//! PKCS#10 structure, key kind and proof of possession (see `checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::csr(data));
