//! Debian's sshd on a loopback port, started by the test with a
//! configuration of its own, and the ssh client's invocation for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::gateway::{Killed, free_port, wait_listening};
use super::server::TestServer;

/// `ssh-keygen -q -t ed25519 -N '' -f path`.
pub fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen");
}

/// A running sshd: its address and its log.
pub struct Sshd {
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
    _child: Killed,
}

impl Sshd {
    /// sshd in `dir` with `auth` (the authentication lines of its
    /// configuration: `AuthorizedKeysFile …`, `TrustedUserCAKeys …`).
    pub fn start(dir: &Path, auth: &str) -> Self {
        let host_key = dir.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            keygen(&host_key);
        }
        // sshd wants its privilege-separation directory (made by systemd
        // on a host; here by the test).
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nLogLevel VERBOSE\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n{auth}\n",
                host_key.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-p", &port.to_string(), "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sshd (scripts/setup installs openssh-server)");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr);
        Self {
            addr,
            log,
            _child: Killed(child),
        }
    }

    /// sshd trusting `srv`'s SSH CA (`GET /v1/ssh/ca.pub`) and reading
    /// its KRL (`GET /v1/ssh/krl`, fetched now and by [`Sshd::fetch_krl`]),
    /// letting in certificates of `principals` (its
    /// `AuthorizedPrincipalsFile`), and no plain keys.
    pub async fn trusting(srv: &TestServer, principals: &str) -> Self {
        let dir = srv.dir.path();
        let (ca, principals_file) = (dir.join("ca.pub"), dir.join("principals"));
        fetch(srv, "/v1/ssh/ca.pub", &ca).await;
        fetch(srv, "/v1/ssh/krl", &Self::krl_path(srv)).await;
        std::fs::write(&principals_file, format!("{principals}\n")).unwrap();
        Self::start(
            dir,
            &format!(
                "AuthorizedKeysFile none\nTrustedUserCAKeys {}\nRevokedKeys {}\nAuthorizedPrincipalsFile {}",
                ca.display(),
                Self::krl_path(srv).display(),
                principals_file.display()
            ),
        )
    }

    /// Where [`Sshd::trusting`] keeps the KRL.
    pub fn krl_path(srv: &TestServer) -> PathBuf {
        srv.dir.path().join("krl")
    }

    /// Fetches the issuer's current KRL into sshd's `RevokedKeys` file, as
    /// a host's timer would.
    pub async fn fetch_krl(srv: &TestServer) {
        fetch(srv, "/v1/ssh/krl", &Self::krl_path(srv)).await;
    }

    /// What sshd logged so far.
    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The login name the tests log in as.
pub fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

/// An ssh client for a test: no user configuration, no agent, no host
/// key checks (the host key is the test's own), batch mode.
pub fn ssh() -> Command {
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
    ])
    .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
    .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
    .stdin(Stdio::null());
    c
}

/// Logs in to `sshd` with `key` and its certificate `cert` and runs
/// `echo logged-in`.
pub fn login_with_certificate(sshd: &Sshd, key: &Path, cert: &Path) -> Output {
    ssh()
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args(["-p", &sshd.addr.port().to_string()])
        .arg(format!("{}@127.0.0.1", user()))
        .arg("echo logged-in")
        .output()
        .unwrap()
}

/// A published document of `srv` (no credentials), written to `path`.
pub async fn fetch(srv: &TestServer, url_path: &str, path: &Path) {
    let resp = srv
        .http
        .get(format!("{}{url_path}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url_path}");
    std::fs::write(path, resp.bytes().await.unwrap()).unwrap();
}
