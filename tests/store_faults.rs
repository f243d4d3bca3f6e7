//! The store's filesystem fills up or turns read-only under a running
//! service: calls fail with `store_unavailable` and a message that says
//! why, nothing is half-applied, and the service carries on by itself once
//! the filesystem is writable again. The store lives on a small tmpfs
//! mounted for the test (needs root, or `sudo` without a password).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::server::TestServer;
use common::{audit_verify, lockstep_cli, output_text};

const POLICY: &str = r#"
[[resource]]
match = "api:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 1000
"#;

/// Runs `mount`/`umount` as root (directly, or through `sudo -n`).
fn as_root(program: &str, args: &[&str]) -> std::process::Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    };
    cmd.args(args).output().unwrap()
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = as_root(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "the store fault tests mount a tmpfs; run them as root: {}",
            output_text(&out)
        );
        Self {
            path: path.to_owned(),
        }
    }

    fn remount(&self, mode: &str) {
        let out = as_root(
            "mount",
            &[
                "-o",
                &format!("remount,{mode}"),
                self.path.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = as_root("umount", &["-l", self.path.to_str().unwrap()]);
    }
}

/// A service whose store lives on a tmpfs of `size` under its directory.
async fn start_on_tmpfs(name: &str, size: &str) -> (TestServer, Tmpfs) {
    let mut srv = TestServer::start(name, POLICY, &["svc", "bob"], "").await;
    srv.stop().await;
    let fs = Tmpfs::mount(&srv.dir.path().join("store"), size);
    for suffix in ["", "-wal", "-shm"] {
        let from = srv.dir.path().join(format!("lockstep.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, fs.path.join(format!("lockstep.db{suffix}"))).unwrap();
            std::fs::remove_file(&from).unwrap();
        }
    }
    let config = std::fs::read_to_string(&srv.config_path).unwrap();
    let config = config.replace("sqlite = \"lockstep.db\"", "sqlite = \"store/lockstep.db\"");
    std::fs::write(&srv.config_path, config).unwrap();
    (srv.restart().await, fs)
}

/// An open session of `svc` on `resource`.
async fn open_session(srv: &TestServer, resource: &str) -> String {
    let s = srv.request("svc", resource, 600).await;
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    s["id"].as_str().unwrap().to_owned()
}

/// What the store holds: sessions, and the session's minted credentials
/// as counted by the service and by its `minted` events.
async fn census(srv: &TestServer, id: &str) -> (usize, u64, usize) {
    let (status, list) = srv.call("GET", "/v1/sessions", Some("svc"), None).await;
    assert_eq!(status, 200, "{list}");
    let sessions = list["sessions"].as_array().map(Vec::len).unwrap_or(0);
    let minted = srv.session("svc", id).await["credentials_minted"]
        .as_u64()
        .unwrap();
    let events = srv.events(id).await;
    let minted_events = events.iter().filter(|e| *e == "minted").count();
    (sessions, minted, minted_events)
}

/// Requests and mints until `failures` of them were refused for the store;
/// checks every refusal and returns (sessions created, certificates
/// issued) among the attempts.
async fn drive_until_refused(
    srv: &TestServer,
    id: &str,
    pem: &str,
    failures: usize,
    says: &str,
) -> (usize, u64) {
    let (mut created, mut issued, mut refused) = (0, 0, 0);
    for attempt in 0..400 {
        let (status, body): (u16, Value) = if attempt % 2 == 0 {
            srv.certificate("svc", id, pem).await
        } else {
            srv.call(
                "POST",
                "/v1/sessions",
                Some("svc"),
                Some(serde_json::json!({"resource": "api:more", "task": "t", "duration_secs": 60, "profile": "mtls-client"})),
            )
            .await
        };
        match status {
            201 if attempt % 2 == 0 => issued += 1,
            201 => created += 1,
            503 => {
                assert_eq!(body["error"], "store_unavailable", "{body}");
                let message = body["message"].as_str().unwrap();
                assert!(message.contains(says), "{message}");
                refused += 1;
                if refused == failures {
                    return (created, issued);
                }
            }
            _ => panic!("unexpected answer {status}: {body}"),
        }
    }
    panic!("the store never refused a write ({refused} refusals)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers() {
    let (mut srv, fs) = start_on_tmpfs("store-full", "8m").await;
    let id = open_session(&srv, "api:full").await;
    let pem = srv.csr("full");
    assert_eq!(srv.certificate("svc", &id, &pem).await.0, 201);
    let before = census(&srv, &id).await;

    // Fill the filesystem.
    let filler = fs.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    let (created, issued) = drive_until_refused(&srv, &id, &pem, 6, "full").await;
    let during = census(&srv, &id).await;
    assert_eq!(
        during,
        (
            before.0 + created,
            before.1 + issued,
            before.2 + issued as usize
        ),
        "exactly the acknowledged writes are in the store"
    );

    // Space again: the same service goes on.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = srv.certificate("svc", &id, &pem).await;
    assert_eq!(status, 201, "{body}");
    let after = census(&srv, &id).await;
    assert_eq!(after.1, during.1 + 1, "nothing was left counted: {after:?}");
    open_session(&srv, "api:after").await;

    srv.stop().await;
    let (ok, out) = audit_verify(&fs.path.join("lockstep.db"), &srv.root_pem());
    assert!(ok, "{out}");
}

/// The bytes of every file in `dir`, by name (the owners' lock
/// directory beside the store holds no state).
fn store_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// A store on a read-only filesystem (a snapshot, a read-only mount after
/// disk errors): `lockstep serve` refuses to start and says why, the file
/// stays as it was, and the trail can still be verified from it.
/// (A filesystem cannot be remounted read-only under a process writing to
/// it — the kernel answers EBUSY — so the running case is the full disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_is_refused_at_start_and_still_verifies() {
    let (mut srv, fs) = start_on_tmpfs("store-ro", "16m").await;
    let id = open_session(&srv, "api:ro").await;
    let pem = srv.csr("ro");
    assert_eq!(srv.certificate("svc", &id, &pem).await.0, 201);
    srv.stop().await;
    let db = fs.path.join("lockstep.db");

    fs.remount("ro");
    let image = store_files(&fs.path);
    let config = srv.config_path.to_str().unwrap();
    let out = lockstep_cli(&["--config", config, "serve", "--listen", "127.0.0.1:0"]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("store_unavailable") && text.to_lowercase().contains("read-only"),
        "{text}"
    );
    assert!(store_files(&fs.path) == image, "the store is untouched");
    let (ok, out) = audit_verify(&db, &srv.root_pem());
    assert!(ok, "{out}");
    fs.remount("rw");
}
