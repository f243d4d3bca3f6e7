//! The fuzz targets' checks (`fuzz/checks.rs`) in the normal test suite:
//! every input under `fuzz/regressions/<target>/` (what a fuzzer once
//! crashed on, see `fuzz/README.md`) and every seed under
//! `fuzz/corpus/<target>/` must be answered cleanly, without the fuzzing
//! toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// The files of `fuzz/<kind>/<target>/`, with their names.
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

fn run(target: &str, check: fn(&[u8])) {
    let seeds = inputs("corpus", target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} has seeds");
    for (name, data) in seeds.iter().chain(&inputs("regressions", target)) {
        let outcome = std::panic::catch_unwind(|| check(data));
        assert!(outcome.is_ok(), "{target}: {name} is not answered cleanly");
    }
}

#[test]
fn csr() {
    run("csr", checks::csr);
}

#[test]
fn session_request() {
    run("session_request", checks::session_request);
}

#[test]
fn ocsp_request() {
    run("ocsp_request", checks::ocsp_request);
}

#[test]
fn bearer() {
    run("bearer", checks::bearer);
}

#[test]
fn modbus_frames() {
    run("modbus_frames", checks::modbus_frames);
}

#[test]
fn release_timestamp() {
    run("release_timestamp", checks::release_timestamp);
}
