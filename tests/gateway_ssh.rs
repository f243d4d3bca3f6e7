//! An SSH session through `lockstep connect` and a gateway route to a real
//! sshd (Debian's openssh-server on loopback): `ssh -o ProxyCommand=…`
//! logs in while the session is open, and closing the session ends the
//! SSH session, which sshd itself would not do.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{Killed, close, credential, free_port, start_gateway, wait_listening};
use common::server::TestServer;

const POLICY: &str = r#"
[[resource]]
match = "ssh:plc7"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[gateway]]
identities = ["token:gw"]
resources = ["ssh:plc7"]
"#;

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen");
}

/// sshd on a loopback port, accepting `user_key` for the current user.
fn sshd(dir: &Path, user_key: &Path) -> (Killed, std::net::SocketAddr) {
    let host_key = dir.join("ssh_host_ed25519_key");
    keygen(&host_key);
    let authorized = dir.join("authorized_keys");
    std::fs::copy(user_key.with_extension("pub"), &authorized).unwrap();
    // sshd wants its privilege-separation directory (made by systemd on a
    // host; here by the test).
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            authorized.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-p", &port.to_string(), "-f"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .expect("sshd (scripts/setup installs openssh-server)");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    (Killed(child), addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_session_ends_an_ssh_session_through_the_gateway() {
    let srv = TestServer::start("gateway-ssh", POLICY, &["alice", "bob", "gw"], "").await;
    let dir = srv.dir.path();
    let user_key = dir.join("id_ed25519");
    keygen(&user_key);
    let (_sshd, sshd_addr) = sshd(dir, &user_key);
    let gw = start_gateway(&srv, sshd_addr, "ssh:plc7", "per_session = 2");
    let c = credential(&srv, "ssh:plc7", 600, "mtls-client").await;
    let proxy = format!(
        "{} connect {} --cert {} --key {} --chain {} --gateway-ca {}",
        env!("CARGO_BIN_EXE_lockstep"),
        gw.addr,
        c.cert.display(),
        c.key.display(),
        c.chain.display(),
        gw.ca.display()
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut ssh = Killed(
        Command::new("ssh")
            .args([
                "-F",
                "none",
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(&user_key)
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg(format!("{user}@plc7"))
            .arg("echo logged-in; sleep 120")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(ssh.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "logged-in",
        "sshd log: {}",
        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    );

    close(&srv, &c, "close").await;
    let until = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = ssh.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < until,
            "the SSH session outlived its lockstep session"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !code.success(),
        "ssh ended as if the remote command had finished"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(ssh.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("lockstep connect: the tunnel ended"),
        "ssh stderr: {err}"
    );
}
