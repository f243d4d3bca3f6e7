//! Test fixtures for the TPM backend: a swtpm process of the test's own, or
//! one shared by the tests of a test binary, and a lockstep configuration
//! for a TPM-backed CA.
//!
//! swtpm serves one client connection at a time (tpm2-tss opens one per
//! command). Inside one process every lockstep user of a TPM goes through
//! the TPM backend's single owner per TCTI, so any number of tests can share
//! one swtpm, and other clients (tpm2-tools, a `lockstep` child process)
//! interleave with it command by command.
//!
//! One trap: tpm2-tss opens its sockets without close-on-exec, so a child
//! process spawned while a TPM command is in flight inherits that socket
//! and holds swtpm's one connection until the child exits (forever, if the
//! child then talks to the same swtpm, or is a long-lived `lockstep
//! serve`). Spawn child processes through [`spawn`] (or inside
//! `lockstep::keys::tpm::with_tpm_idle`), which waits until no TPM command
//! of this process is in flight.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The variable naming a swtpm started by `scripts/test` for the whole run.
pub const TCTI_ENV: &str = "LOCKSTEP_TEST_TPM_TCTI";

/// How long a fresh swtpm may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A swtpm process: TPM state in a temporary directory, listening on two
/// free loopback ports (commands on `port`, control on `port + 1`).
///
/// The process runs under a small `sh` guardian whose standard input is a
/// pipe from this process: when the pipe closes (the `SwTpm` is dropped, or
/// the test process exits or dies in any way) the guardian kills swtpm and
/// waits for it, so no swtpm outlives its test.
pub struct SwTpm {
    state: Option<tempfile::TempDir>,
    port: u16,
    running: Option<Running>,
    external: Option<String>,
}

struct Running {
    guardian: Child,
    stdin: Option<ChildStdin>,
    /// swtpm's own PID.
    pid: u32,
}

impl SwTpm {
    /// Starts a private swtpm with fresh state on free loopback ports, and
    /// waits until it answers `TPM2_GetRandom`.
    pub fn start() -> SwTpm {
        let state = tempfile::Builder::new()
            .prefix("lockstep-swtpm-")
            .tempdir()
            .expect("temp dir");
        // Another process may take the ports between choosing and binding
        // them: try a few pairs.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let mut tpm = SwTpm {
                state: None,
                port,
                running: None,
                external: None,
            };
            match tpm.spawn(state.path()) {
                Ok(()) => {
                    tpm.state = Some(state);
                    return tpm;
                }
                Err(e) => last = e,
            }
        }
        panic!("swtpm did not start: {last}");
    }

    /// The process-wide swtpm of this test binary: the one named by
    /// `LOCKSTEP_TEST_TPM_TCTI` (started by `scripts/test`), else a private
    /// one started on first use.
    pub fn shared() -> &'static SwTpm {
        static SHARED: OnceLock<SwTpm> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(TCTI_ENV) {
            Ok(tcti) if !tcti.is_empty() => SwTpm {
                state: None,
                port: 0,
                running: None,
                external: Some(tcti),
            },
            _ => SwTpm::start(),
        })
    }

    /// The TCTI string lockstep and tpm2-tools use to reach it.
    pub fn tcti(&self) -> String {
        match &self.external {
            Some(t) => t.clone(),
            None => format!("swtpm:host=127.0.0.1,port={}", self.port),
        }
    }

    /// swtpm's state directory (private instances only).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state.as_ref().map(|s| s.path())
    }

    /// Kills swtpm with SIGKILL, as when a TPM goes away without warning.
    pub fn kill(&mut self) {
        let running = self.running.as_mut().expect("a private, running swtpm");
        let status = spawn(Command::new("kill").args(["-KILL", &running.pid.to_string()]))
            .and_then(|mut c| c.wait())
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {}", running.pid);
        // The guardian reaps it; wait until it is really gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(running.pid) {
            assert!(
                Instant::now() < deadline,
                "swtpm {} did not die",
                running.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
    }

    /// Starts swtpm again on the same state directory and ports.
    pub fn restart(&mut self) {
        self.stop();
        let state = self.state_dir().expect("a private swtpm").to_owned();
        // The kernel may hold the ports for a moment after the old
        // process; a few tries cover it.
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn(&state) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("swtpm did not restart: {last}");
    }

    /// Stops swtpm (SIGTERM through its guardian) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            drop(running.stdin.take());
            let _ = running.guardian.wait();
        }
    }

    fn spawn(&mut self, state: &Path) -> Result<(), String> {
        let port = self.port;
        // The guardian: start swtpm, report its PID, then wait for our end
        // of the pipe to close and stop swtpm.
        let script = r#"swtpm socket --tpm2 \
  --server type=tcp,port="$1",bindaddr=127.0.0.1 \
  --ctrl type=tcp,port="$2",bindaddr=127.0.0.1 \
  --tpmstate dir="$3" --flags not-need-init,startup-clear \
  --log file="$3/swtpm.log" </dev/null &
pid=$!
echo "$pid"
read -r _ignored || true
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;
        let mut command = Command::new("sh");
        command
            .args(["-c", script, "swtpm-guardian"])
            .arg(port.to_string())
            .arg((port + 1).to_string())
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut guardian = spawn(&mut command)
            .map_err(|e| format!("cannot run sh/swtpm (scripts/setup installs swtpm): {e}"))?;
        let stdin = guardian.stdin.take();
        let mut line = String::new();
        BufReader::new(guardian.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("guardian said {line:?}"))?;
        self.running = Some(Running {
            guardian,
            stdin,
            pid,
        });
        let tcti = self.tcti();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if !alive(pid) {
                let log = std::fs::read_to_string(state.join("swtpm.log")).unwrap_or_default();
                self.stop();
                return Err(format!("swtpm exited at start: {log}"));
            }
            if answers(&tcti) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("swtpm on port {port} did not answer"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `command` while no TPM command of this process is in flight, so
/// that it inherits no TPM socket (see the module documentation).
#[cfg(feature = "tpm")]
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    lockstep::keys::tpm::with_tpm_idle(|| command.spawn())
}

/// Spawns `command`: without the `tpm` feature this process opens no TPM
/// socket for it to inherit.
#[cfg(not(feature = "tpm"))]
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    command.spawn()
}

/// Runs `command` to completion like [`Command::output`], spawned through
/// [`spawn`].
pub fn output(command: &mut Command) -> std::io::Result<std::process::Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(command)?.wait_with_output()
}

/// Whether the TPM at `tcti` answers `tpm2_getrandom`.
pub fn answers(tcti: &str) -> bool {
    let mut command = Command::new("tpm2_getrandom");
    command
        .args(["8", "--hex"])
        .env("TPM2TOOLS_TCTI", tcti)
        .env("TSS2_LOG", "all+none");
    output(&mut command)
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Two consecutive free loopback ports, `p` and `p + 1`.
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = a.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Runs a tpm2-tools command against `tcti`; returns (success, output).
pub fn tpm2(tcti: &str, tool: &str, args: &[&str]) -> (bool, String) {
    let out = output(
        Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", tcti)
            .env("TSS2_LOG", "all+none"),
    )
    .unwrap_or_else(|e| panic!("{tool} runs (install tpm2-tools: scripts/setup): {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

static HANDLES: AtomicU32 = AtomicU32::new(0);

/// A persistent handle no other caller in this process gets:
/// `0x81000100`, `0x81000101`, ... with the process id mixed in, so that
/// test binaries sharing one swtpm (`scripts/test`) do not collide either.
pub fn unique_handle() -> u32 {
    let n = HANDLES.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() & 0x7ff;
    // 0x81000000 + pid in bits 12..23, n in bits 0..11: stays in the owner
    // range 0x81000000–0x817FFFFF.
    0x8100_0000 | (pid << 12) | (n & 0xfff)
}

/// A key reference for the TPM backend.
pub fn tpm_key_ref(label: &str, handle: u32) -> lockstep::keys::KeyRef {
    lockstep::keys::KeyRef {
        label: label.to_owned(),
        id: Vec::new(),
        handle: Some(handle),
    }
}

/// The configuration text for a TPM-backed CA named `name` at `tcti`, with
/// root and issuing keys at handles no other call uses; `key_auth` is an
/// optional secret reference (`file:...`). Returns (text, root handle,
/// issuing handle).
pub fn tpm_ca_config_text(
    tcti: &str,
    name: &str,
    key_auth: Option<&str>,
    root_days: u32,
    issuing_days: u32,
) -> (String, u32, u32) {
    let root = unique_handle();
    let issuing = unique_handle();
    let auth = key_auth
        .map(|a| format!("key_auth = \"{a}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[backend]
type = "tpm"
tcti = "{tcti}"
{auth}
[keys.root]
label = "{name}-root"
handle = {root:#010x}

[keys.issuing]
label = "{name}-issuing"
handle = {issuing:#010x}

[ca]
dir = "ca"
root_subject = {{ common_name = "{name} Root CA", organization = "lockstep tests" }}
issuing_subject = {{ common_name = "{name} Issuing CA", organization = "lockstep tests" }}
root_validity_days = {root_days}
issuing_validity_days = {issuing_days}
"#
    );
    (text, root, issuing)
}

/// Writes a TPM-backed CA configuration into `dir` and loads it.
pub fn tpm_ca_config(dir: &Path, tcti: &str, name: &str) -> (PathBuf, lockstep::config::Config) {
    let (text, _, _) = tpm_ca_config_text(tcti, name, None, 3650, 1095);
    let path = dir.join("lockstep.toml");
    std::fs::write(&path, text).expect("write config");
    let config = lockstep::config::Config::load(&path).expect("config loads");
    (path, config)
}
