//! A PostgreSQL server of a test's own (`scripts/postgres start`), for
//! tests that stop it or that need it configured differently from the
//! test run's (TLS over loopback). Stopped and removed when dropped, also
//! when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server.
pub struct Server {
    dir: tempfile::TempDir,
    /// libpq parameters for its Unix socket (superuser, no dbname).
    pub params: String,
    /// Its port (TLS over 127.0.0.1 listens there too).
    pub port: u16,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres")
}

impl Server {
    /// Starts one; with `tls` (a directory with `server.crt` and
    /// `server.key`) it also listens on 127.0.0.1, TLS and passwords only.
    pub fn start(tls: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(script());
        cmd.args(["start", dir.path().to_str().unwrap()]);
        if let Some(tls) = tls {
            cmd.env("PG_TLS_DIR", tls);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/postgres start: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let params = stdout
            .trim()
            .strip_prefix("export LOCKSTEP_TEST_POSTGRES='")
            .and_then(|s| s.strip_suffix('\''))
            .unwrap_or_else(|| panic!("unexpected output: {stdout}"))
            .to_owned();
        let port = params
            .split_whitespace()
            .find_map(|p| p.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {params}"));
        Self { dir, params, port }
    }

    /// `scripts/postgres CMD` on it (`pause`, `resume`).
    pub fn script(&self, cmd: &str) {
        let out = Command::new(script())
            .args([cmd, self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}
