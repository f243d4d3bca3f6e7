//! A `lockstep gateway` process for tests and benchmarks: its TLS
//! identity, its configuration in front of one target, and session
//! certificates to connect with.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::openssl_csr;
use super::server::TestServer;

/// The gateway tests' policy: alice requests `plc:*`, bob approves (one
/// approval), `extra` lines added to that resource; the gateway `token:gw`
/// follows `plc:line1`; `token:auditor` reads the trail.
pub fn policy(extra: &str) -> String {
    format!(
        r#"
auditors = ["token:auditor"]

[[resource]]
match = "plc:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client", "code-signing"]
credentials = 5
{extra}

[[gateway]]
identities = ["token:gw"]
resources = ["plc:line1"]
"#
    )
}

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
    /// Where its first route listens.
    pub addr: SocketAddr,
    /// Where each route listens, in the order given.
    pub addrs: Vec<SocketAddr>,
    /// The CA of its TLS certificate.
    pub ca: PathBuf,
    /// Its spool directory.
    pub spool: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

/// One route of a test gateway.
pub struct RouteSpec {
    /// Its name.
    pub name: String,
    /// What it connects to.
    pub target: SocketAddr,
    /// The resource it admits.
    pub resource: String,
    /// More lines of the route (its `offline` rule at least).
    pub extra: String,
}

/// What a test gateway is started with (identity `token:gw`).
#[derive(Default)]
pub struct Setup {
    /// The issuer's URL, when not the test server's own.
    pub issuer_url: Option<String>,
    /// More lines of `[issuer]`.
    pub issuer: String,
    /// The `[limits]` lines.
    pub limits: String,
    /// The routes.
    pub routes: Vec<RouteSpec>,
    /// Added to the process's environment.
    pub env: Vec<(String, String)>,
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

/// The issuer's side of every gateway test: a heartbeat every second on
/// the event stream, well inside the gateways' 4-second `silence` (with
/// the default 15 s, a test slower than 4 s would see its link lost and
/// its `offline = "cut"` connections cut).
pub const ISSUER: &str = "[events]\nheartbeat = \"1s\"\n";

/// [`start_gateway`] with `env` added to its environment (e.g.
/// libfaketime's, to run it with its clock an hour behind).
pub fn start_gateway_under(
    srv: &TestServer,
    target: SocketAddr,
    resource: &str,
    limits: &str,
    env: &[(&str, &str)],
) -> Gateway {
    launch(
        srv,
        Setup {
            issuer: "silence = \"4s\"".into(),
            limits: limits.into(),
            routes: vec![RouteSpec {
                name: "plc".into(),
                target,
                resource: resource.into(),
                extra: "offline = \"cut\"".into(),
            }],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Setup::default()
        },
    )
}

/// Starts a gateway as `setup` says.
pub fn launch(srv: &TestServer, setup: Setup) -> Gateway {
    let dir = srv.dir.path();
    let (cert, key, ca) = gateway_identity(dir);
    std::fs::write(dir.join("gw.token"), srv.token("gw")).unwrap();
    let spool = dir.join("gw-spool");
    let mut config = format!(
        r#"
[issuer]
url = "{url}"
ca = "{root}"
token = "file:{dir}/gw.token"
{issuer}
[tls]
certificate = "{cert}"
private_key = "file:{key}"
[spool]
dir = "{spool}"
[limits]
{limits}
"#,
        url = setup.issuer_url.as_deref().unwrap_or(&srv.url),
        root = srv.root_pem().display(),
        dir = dir.display(),
        issuer = setup.issuer,
        cert = cert.display(),
        key = key.display(),
        spool = spool.display(),
        limits = setup.limits,
    );
    let mut addrs = Vec::new();
    for r in &setup.routes {
        let port = free_port();
        config.push_str(&format!(
            "[[route]]\nname = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ntarget = \"{}\"\nresource = \"{}\"\n{}\n",
            r.name, r.target, r.resource, r.extra
        ));
        addrs.push(format!("127.0.0.1:{port}").parse().unwrap());
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut gw = Gateway {
        child: Killed(Command::new("true").spawn().unwrap()),
        addr: addrs[0],
        addrs,
        ca,
        spool,
        config: path,
        log: dir.join("gateway.log"),
        env: setup.env,
    };
    gw.child = gw.spawn();
    gw
}

impl Gateway {
    fn spawn(&self) -> Killed {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(["gateway", "--config", self.config.to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LOCKSTEP_LOG", "info")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for a in &self.addrs {
            wait_listening(*a);
        }
        Killed(child)
    }

    /// Waits until the gateway follows the issuer's events and holds (and
    /// keeps) a CRL.
    pub fn wait_following_with_crl(&self, srv: &TestServer) {
        wait_for(
            "the gateway following, with a CRL",
            Duration::from_secs(10),
            || {
                gateway_log(srv).contains("following the issuer's events")
                    && std::fs::read_dir(self.spool.join("crl")).is_ok_and(|d| {
                        d.flatten()
                            .any(|e| e.path().extension().is_some_and(|x| x == "crl"))
                    })
            },
        );
    }

    /// Stops the gateway (SIGTERM, waited for) and starts it again on the
    /// same configuration and spool.
    pub fn restart(&mut self) {
        let pid = self.child.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.0.wait();
        self.child = self.spawn();
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
    certificate_for(srv, s["id"].as_str().unwrap()).await
}

/// A client certificate (key by openssl) for open session `id` of alice.
pub async fn certificate_for(srv: &TestServer, id: &str) -> Credential {
    let id = id.to_owned();
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
/// The target: a socat echo server that appends a line to `ends` each
/// time its side of a connection ends.
pub fn echo_target(dir: &Path) -> (Killed, SocketAddr, PathBuf) {
    let port = free_port();
    let ends = dir.join("target-ends");
    std::fs::write(&ends, "").unwrap();
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("SYSTEM:cat; echo ended >> {}", ends.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("socat (scripts/setup installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    // The probe's own connection is not one of the test's.
    wait_for("the probe connection ended", Duration::from_secs(5), || {
        target_ends(&ends) == 1
    });
    std::fs::write(&ends, "").unwrap();
    (Killed(child), addr, ends)
}

/// An `openssl s_client` connected through the gateway: its output lines
/// arrive on a channel that disconnects when the connection ends.
pub struct Client {
    child: Killed,
    lines: std::sync::mpsc::Receiver<String>,
}

pub fn s_client(gw: &Gateway, cert: &Path, key: &Path, chain: Option<&Path>) -> Client {
    s_client_at(gw.addr, &gw.ca, cert, key, chain)
}

/// [`s_client`] to the route listening on `addr`, trusting `ca`.
pub fn s_client_at(
    addr: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
    chain: Option<&Path>,
) -> Client {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key);
    if let Some(c) = chain {
        cmd.arg("-cert_chain").arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Client {
        child: Killed(child),
        lines,
    }
}

impl Client {
    pub fn of(gw: &Gateway, c: &Credential) -> Self {
        s_client(gw, &c.cert, &c.key, Some(&c.chain))
    }

    /// A client of `c` to the gateway's route number `route`.
    pub fn on(gw: &Gateway, route: usize, c: &Credential) -> Self {
        s_client_at(gw.addrs[route], &gw.ca, &c.cert, &c.key, Some(&c.chain))
    }

    /// Sends a line and reads what comes back (None: the connection ended).
    pub fn echo(&mut self, line: &str) -> Option<String> {
        let stdin = self.child.0.stdin.as_mut().unwrap();
        if stdin.write_all(format!("{line}\n").as_bytes()).is_err() || stdin.flush().is_err() {
            return None;
        }
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => Some(l),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(e) => panic!("no answer to `{line}`: {e}"),
        }
    }

    /// Waits (up to `within`) for the connection to end; how long it took.
    pub fn ended_within(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return start.elapsed(),
                Err(_) => panic!("the connection was not ended within {within:?}"),
            }
        }
    }
}

/// How many connections the target saw end.
pub fn target_ends(ends: &Path) -> usize {
    std::fs::read_to_string(ends).unwrap().lines().count()
}

pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `connection` entries of a session's trail.
pub async fn connection_entries(srv: &TestServer, session: &str) -> Vec<Value> {
    let (status, page) = srv
        .call(
            "GET",
            &format!("/v1/audit?session={session}&limit=1000"),
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "connection")
        .map(|e| serde_json::from_str(e["body"].as_str().unwrap()).unwrap())
        .collect()
}

pub async fn wait_reports(srv: &TestServer, session: &str, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let found = connection_entries(srv, session).await;
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < until,
            "{n} connection report(s) of {session} not in the trail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's log, without colour codes.
pub fn gateway_log(srv: &TestServer) -> String {
    let raw = std::fs::read_to_string(srv.dir.path().join("gateway.log")).unwrap_or_default();
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A TCP relay standing for the plant's link to the issuer. [`cut`] makes
/// it a black hole, as a failed WAN link is: bytes on open connections go
/// nowhere and new connections are accepted but reach nothing, so the
/// gateway only notices by silence. [`heal`] restores it: connections from
/// before or during the outage are closed, new ones reach the issuer.
///
/// [`cut`]: LinkRelay::cut
/// [`heal`]: LinkRelay::heal
pub struct LinkRelay {
    /// Where the gateway reaches the issuer through it.
    pub addr: SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<(bool, u64)>>,
}

impl LinkRelay {
    /// A relay to `target`, up.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new((true, 0u64)));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (up, epoch) = *shared.lock().unwrap();
                let upstream = if up {
                    std::net::TcpStream::connect(target).ok()
                } else {
                    None
                };
                let born = (upstream.is_some(), epoch);
                let pairs = match upstream {
                    Some(up) => vec![
                        (client.try_clone().unwrap(), Some(up.try_clone().unwrap())),
                        (up, Some(client)),
                    ],
                    None => vec![(client, None)],
                };
                for (from, to) in pairs {
                    let state = shared.clone();
                    std::thread::spawn(move || relay(from, to, born, &state));
                }
            }
        });
        Self { addr, state }
    }

    /// The link fails: a black hole.
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        *s = (false, s.1 + 1);
    }

    /// The link is back.
    pub fn heal(&self) {
        self.state.lock().unwrap().0 = true;
    }
}

/// Carries bytes `from` → `to` while the link is up and the connection
/// is of the current epoch; drops them while it is down; closes both
/// once the link is back for a connection of an older epoch.
fn relay(
    mut from: std::net::TcpStream,
    mut to: Option<std::net::TcpStream>,
    born: (bool, u64),
    state: &std::sync::Mutex<(bool, u64)>,
) {
    use std::io::Read;
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16384];
    loop {
        let (up, epoch) = *state.lock().unwrap();
        let live = born.0 && born.1 == epoch;
        if up && !live {
            let _ = from.shutdown(std::net::Shutdown::Both);
            if let Some(t) = &to {
                let _ = t.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                if let Some(t) = &to {
                    let _ = t.shutdown(std::net::Shutdown::Write);
                }
                return;
            }
            Ok(n) if up && live => {
                if to.as_mut().unwrap().write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Ok(_) => {} // the black hole
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// `lockstep connect GATEWAY --listen 127.0.0.1:PORT` with `c`'s
/// certificate: the process, and where tools connect to tunnel.
pub fn connect_listener(gw: &Gateway, c: &Credential) -> (Killed, SocketAddr) {
    connect_listener_to(gw, 0, c)
}

/// [`connect_listener`] to the gateway's route number `route`.
pub fn connect_listener_to(gw: &Gateway, route: usize, c: &Credential) -> (Killed, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "connect",
            &gw.addrs[route].to_string(),
            "--listen",
            &addr.to_string(),
        ])
        .arg("--cert")
        .arg(&c.cert)
        .arg("--key")
        .arg(&c.key)
        .arg("--chain")
        .arg(&c.chain)
        .arg("--gateway-ca")
        .arg(&gw.ca)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_listening(addr);
    (child, addr)
}
