//! The pinned Python test tools (tests/python-requirements.txt): the
//! interpreter of the virtualenv `scripts/pytools` makes, and the scripts
//! under tests/python/.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The interpreter with the pinned tools: `LOCKSTEP_PYTHON` (set by
/// scripts/test), else `target/pytools/bin/python`. Panics with what to run
/// when neither exists: a test that needs the tools never skips silently.
pub fn interpreter() -> PathBuf {
    let path = match std::env::var_os("LOCKSTEP_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin/python"),
    };
    assert!(
        path.is_file(),
        "no Python test tools at {}: run scripts/pytools (or scripts/setup), \
         or point LOCKSTEP_PYTHON at an interpreter that has tests/python-requirements.txt",
        path.display()
    );
    path
}

/// Runs `tests/python/<script>` with `args` and `stdin`; returns its output.
pub fn run(script: &str, args: &[&str], stdin: &[u8]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(interpreter())
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().unwrap();
    // A script that stops reading early fails on its own account.
    let _ = writer.join();
    out
}

/// [`run`], asserting that the script succeeded; returns its stdout.
pub fn check(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = run(script, args, stdin);
    let text = super::output_text(&out);
    assert!(out.status.success(), "{script} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
