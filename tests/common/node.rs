//! Node.js test helpers of `tests/<name>` (an independent client or
//! verifier), installed with `npm ci` from their lock file once into the
//! test target directory.

use std::path::{Path, PathBuf};

/// `tests/<name>`'s `files` copied into the target directory and its
/// pinned packages installed there (again only when the lock file
/// changed or `marker` under `node_modules` is missing).
pub fn installed(name: &str, files: &[&str], marker: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-client"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::read(source.join("package-lock.json")).unwrap();
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    for file in ["package.json", "package-lock.json"].iter().chain(files) {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    if installed.as_ref() != Some(&lock) || !dir.join("node_modules").join(marker).exists() {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("npm runs (scripts/setup installs Node.js)");
        assert!(
            out.status.success(),
            "npm ci in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}
