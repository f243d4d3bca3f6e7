//! A `lockstep gateway` process for tests and benchmarks: its TLS
//! identity, its configuration in front of one target, and session
//! certificates to connect with.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::openssl_csr;
use super::server::TestServer;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a child process when dropped (also when a test fails).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_listening(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway's own TLS identity (scripts/gateway-cert): its
/// certificate, key and the CA clients trust it by.
pub fn gateway_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gateway-cert");
    let out = Command::new(script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("gateway.pem"),
        dir.join("gateway.key"),
        dir.join("gateway-ca.pem"),
    )
}

/// A running gateway process and what a client needs to reach it.
pub struct Gateway {
    /// The process (killed when dropped).
    pub child: Killed,
    /// Where its route listens.
    pub addr: SocketAddr,
    /// The CA of its TLS certificate.
    pub ca: PathBuf,
}

/// Starts `lockstep gateway` (identity `token:gw`) in front of `target`
/// for `resource`, with `limits` added to its configuration.
pub fn start_gateway(
    srv: &TestServer,
    target: SocketAddr,
    resource: &str,
    limits: &str,
) -> Gateway {
    start_gateway_under(srv, target, resource, limits, &[])
}

/// [`start_gateway`] with `env` added to its environment (e.g.
/// libfaketime's, to run it with its clock an hour behind).
pub fn start_gateway_under(
    srv: &TestServer,
    target: SocketAddr,
    resource: &str,
    limits: &str,
    env: &[(&str, &str)],
) -> Gateway {
    let dir = srv.dir.path();
    let (cert, key, ca) = gateway_identity(dir);
    std::fs::write(dir.join("gw.token"), srv.token("gw")).unwrap();
    let port = free_port();
    let spool = dir.join("gw-spool");
    let config = format!(
        r#"
[issuer]
url = "{url}"
ca = "{root}"
token = "file:{dir}/gw.token"
silence = "4s"
[tls]
certificate = "{cert}"
private_key = "file:{key}"
[spool]
dir = "{spool}"
[limits]
{limits}
[[route]]
name = "plc"
listen = "127.0.0.1:{port}"
target = "{target}"
resource = "{resource}"
offline = "cut"
"#,
        url = srv.url,
        root = srv.root_pem().display(),
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
        spool = spool.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["gateway", "--config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .env("LOCKSTEP_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    Gateway {
        child: Killed(child),
        addr,
        ca,
    }
}

/// A session certificate: key, certificate, chain files.
pub struct Credential {
    /// The session id.
    pub session: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The issuing CA and root (PEM).
    pub chain: PathBuf,
}

/// alice's open session of `resource` for `secs`, and a certificate of
/// `profile` for it.
pub async fn credential(srv: &TestServer, resource: &str, secs: u32, profile: &str) -> Credential {
    let (status, s) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("alice"),
            Some(json!({"resource": resource, "task": "gateway test",
                "duration_secs": secs, "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let id = s["id"].as_str().unwrap().to_owned();
    let name = format!("c-{}", &id[4..12]);
    let (key, csr) = openssl_csr(srv.dir.path(), &name, "ec:P-256");
    let (status, c) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": String::from_utf8(csr).unwrap()})),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let cert = super::write(
        srv.dir.path(),
        &format!("{name}.pem"),
        c["certificate"].as_str().unwrap(),
    );
    let chain = super::write(
        srv.dir.path(),
        &format!("{name}-chain.pem"),
        c["chain"].as_str().unwrap(),
    );
    Credential {
        session: id,
        serial: c["serial"].as_str().unwrap().to_owned(),
        key,
        cert,
        chain,
    }
}

/// Ends `c`'s session: `close` as alice (its requester) or `revoke` as bob
/// (its approver); when the call returned.
pub async fn close(srv: &TestServer, c: &Credential, verb: &str) -> Instant {
    let (who, body) = match verb {
        "close" => ("alice", None),
        _ => ("bob", Some(json!({"reason": "gateway test"}))),
    };
    let (status, s) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/{verb}", c.session),
            Some(who),
            body,
        )
        .await;
    assert_eq!(status, 200, "{s}");
    Instant::now()
}
