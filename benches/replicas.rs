//! The replica benchmark behind `scripts/bench`: certificates/s over HTTPS
//! from 1, 2 and 3 `lockstep serve` processes sharing one PostgreSQL
//! database, and from one process on SQLite against one on PostgreSQL, all
//! in one run, and where the CPU goes: the lockstep processes, the
//! PostgreSQL server's processes, the load generator (this process) and
//! everything else on the machine.
//!
//! The setups take turns round after round (each round in a different
//! order), so drift in the machine's load falls on all of them; the ratios
//! are the medians of the ratios within each round.
//!
//! `cargo bench --bench replicas -- [--quick] [--json PATH] [--server BIN]`
//! (`--server`: the `lockstep` binary the replicas run, e.g. an earlier
//! build, to compare with this one's figures), with
//! `LOCKSTEP_TEST_POSTGRES` naming a PostgreSQL server (`scripts/bench`
//! starts one with `scripts/postgres`).

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::server::TestServer;
use common::store::StoreKind;
use serde_json::{Value, json};

const POLICY: &str = r#"
[[resource]]
match = "bench:*"
requesters = ["token:load"]
approvers = ["token:a1"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 1000
pending_timeout = "1h"
"#;

/// Concurrent keep-alive clients, spread round-robin over the replicas.
const CLIENTS: usize = 16;

struct Options {
    quick: bool,
    json: Option<String>,
}

/// The `lockstep` binary the replicas run.
fn server_binary() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--server")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lockstep").to_owned())
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    Options {
        quick: args.iter().any(|a| a == "--quick"),
        json: args
            .iter()
            .position(|a| a == "--json")
            .and_then(|i| args.get(i + 1).cloned()),
    }
}

/// What one measurement runs: `replicas` processes on one store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Postgres { replicas: usize },
    Sqlite,
}

const SETUPS: [Setup; 4] = [
    Setup::Postgres { replicas: 1 },
    Setup::Postgres { replicas: 2 },
    Setup::Postgres { replicas: 3 },
    Setup::Sqlite,
];

impl Setup {
    fn replicas(self) -> usize {
        match self {
            Self::Postgres { replicas } => replicas,
            Self::Sqlite => 1,
        }
    }

    fn label(self) -> String {
        match self {
            Self::Postgres { replicas: 1 } => "PostgreSQL, 1 replica".to_owned(),
            Self::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
            Self::Sqlite => "SQLite, 1 replica".to_owned(),
        }
    }

    fn key(self) -> String {
        match self {
            Self::Postgres { replicas } => format!("postgres_{replicas}"),
            Self::Sqlite => "sqlite_1".to_owned(),
        }
    }
}

// ---------------------------------------------------------------- CPU time

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The numeric fields of `/proc/PID/stat` after the command name and the
/// state: index 0 is the parent's pid (field 4 in proc(5)), so field `n`
/// is at `n - 4`.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

// Positions in `stat_fields` of proc(5)'s fields 4 (ppid), 14 (utime),
// 15 (stime), 16 (cutime) and 17 (cstime).
const PPID: usize = 0;
const UTIME: usize = 10;
const STIME: usize = 11;
const CUTIME: usize = 12;
const CSTIME: usize = 13;

/// utime + stime of process `pid` (0 once it is gone).
fn process_ticks(pid: &str) -> u64 {
    stat_fields(pid).map_or(0, |f| f[UTIME] + f[STIME])
}

/// The PostgreSQL server's CPU: the postmaster's own and that of the
/// children it has reaped (backends of closed connections), plus every
/// live child (backends, checkpointer, WAL writer, ...). The children
/// are read first: one reaped in between counts twice rather than not at
/// all, so the sum never goes backwards.
fn postgres_ticks(postmaster: u32) -> u64 {
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| stat_fields(&pid))
        .filter(|f| f[PPID] == u64::from(postmaster))
        .map(|f| f[UTIME] + f[STIME])
        .sum();
    let own = stat_fields(&postmaster.to_string())
        .map_or(0, |f| f[UTIME] + f[STIME] + f[CUTIME] + f[CSTIME]);
    own + children
}

/// The postmaster of the server `LOCKSTEP_TEST_POSTGRES` names, when it
/// runs on this machine on a Unix socket: the first line of its socket's
/// lock file (`HOST/.s.PGSQL.PORT.lock`), or of `HOST/data/postmaster.pid`
/// (the layout `scripts/postgres` makes).
fn postmaster() -> Option<u32> {
    let params = std::env::var("LOCKSTEP_TEST_POSTGRES").ok()?;
    let param = |key: &str| {
        params
            .split_whitespace()
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let host = param("host")?;
    let port = param("port").unwrap_or_else(|| "5432".to_owned());
    [
        format!("{host}/.s.PGSQL.{port}.lock"),
        format!("{host}/data/postmaster.pid"),
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.lines().next()?.trim().parse::<u32>().ok())
    .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The machine's busy and total ticks over all cores (`/proc/stat`; idle
/// and iowait count as not busy).
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU ticks spent so far, by whom.
#[derive(Clone, Copy, Default)]
struct Cpu {
    replicas: u64,
    postgres: u64,
    load: u64,
    busy: u64,
    total: u64,
}

impl Cpu {
    fn sample(replicas: &[u32], postmaster: Option<u32>) -> Self {
        let (busy, total) = machine_ticks();
        Self {
            replicas: replicas.iter().map(|p| process_ticks(&p.to_string())).sum(),
            postgres: postmaster.map_or(0, postgres_ticks),
            load: process_ticks("self"),
            busy,
            total,
        }
    }

    /// The ticks from `before` to this sample (none for a process gone
    /// in between).
    fn since(self, before: Self) -> Self {
        Self {
            replicas: self.replicas.saturating_sub(before.replicas),
            postgres: self.postgres.saturating_sub(before.postgres),
            load: self.load.saturating_sub(before.load),
            busy: self.busy.saturating_sub(before.busy),
            total: self.total.saturating_sub(before.total),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            replicas: self.replicas + other.replicas,
            postgres: self.postgres + other.postgres,
            load: self.load + other.load,
            busy: self.busy + other.busy,
            total: self.total + other.total,
        }
    }

    /// The busy ticks of processes other than the three measured ones
    /// (another user's work on a shared machine); may dip below 0 by a
    /// tick or two of sampling skew.
    fn other(self) -> i64 {
        self.busy as i64 - (self.replicas + self.postgres + self.load) as i64
    }
}

// ------------------------------------------------------ database counters

/// The benchmark database's counters in `pg_stat_database`, read through
/// a connection to the server's `postgres` database (so it counts in none
/// of them).
struct DatabaseStats {
    admin: tokio_postgres::Client,
    name: String,
}

/// Transactions committed and rolled back (one lost to another and run
/// again is a rollback), rows written, and rows read (returned by scans:
/// a figure growing with the tables would mean a scan that an index
/// should spare).
#[derive(Clone, Copy, Default)]
struct Counters {
    commits: i64,
    rollbacks: i64,
    rows: i64,
    read: i64,
}

impl Counters {
    fn since(self, before: Self) -> Self {
        Self {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            rows: self.rows - before.rows,
            read: self.read - before.read,
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            commits: self.commits + other.commits,
            rollbacks: self.rollbacks + other.rollbacks,
            rows: self.rows + other.rows,
            read: self.read + other.read,
        }
    }
}

/// What the database's client backends were doing, summed over samples
/// (divided by `samples`: how many were, on average): running a
/// statement (or waiting on something other than a lock), waiting for a
/// lock another transaction holds, or inside a transaction waiting for
/// lockstep's next statement.
#[derive(Clone, Copy, Default)]
struct Backends {
    samples: u64,
    running: u64,
    lock_waits: u64,
    in_transaction: u64,
}

impl Backends {
    fn add(self, other: Self) -> Self {
        Self {
            samples: self.samples + other.samples,
            running: self.running + other.running,
            lock_waits: self.lock_waits + other.lock_waits,
            in_transaction: self.in_transaction + other.in_transaction,
        }
    }

    /// On average over the samples.
    fn mean(&self, count: u64) -> f64 {
        count as f64 / self.samples.max(1) as f64
    }
}

impl DatabaseStats {
    /// For the database configuration `config` names.
    async fn connect(config: &Path) -> Self {
        let text = std::fs::read_to_string(config).unwrap();
        let name = text
            .split(|c: char| c.is_whitespace() || c == '"')
            .find_map(|w| w.strip_prefix("dbname="))
            .expect("a PostgreSQL store")
            .to_owned();
        let server = std::env::var("LOCKSTEP_TEST_POSTGRES").unwrap();
        let (admin, conn) =
            tokio_postgres::connect(&format!("{server} dbname=postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        Self { admin, name }
    }

    /// Samples every 50 ms for `secs` seconds what the database's
    /// client backends are doing (the queries cost the server a few ms of
    /// CPU a second, which count in its CPU: well under 1 % of it).
    async fn sample_backends(&self, secs: f64) -> Backends {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut seen = Backends::default();
        while Instant::now() < end {
            let row = self
                .admin
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'),
                            count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'),
                            count(*) FILTER (WHERE state = 'idle in transaction')
                     FROM pg_stat_activity
                     WHERE datname = $1 AND backend_type = 'client backend'",
                    &[&self.name],
                )
                .await
                .unwrap();
            seen.samples += 1;
            seen.running += row.get::<_, i64>(0) as u64;
            seen.lock_waits += row.get::<_, i64>(1) as u64;
            seen.in_transaction += row.get::<_, i64>(2) as u64;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    }

    /// The counters once no connection to the database is left: a
    /// backend hands its counts in when its connection ends, so these
    /// cover everything the replicas stopped before did.
    async fn settled(&self) -> Counters {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = self
                .admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND backend_type = 'client backend'",
                    &[&self.name],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let row = self
            .admin
            .query_one(
                "SELECT xact_commit, xact_rollback, tup_inserted + tup_updated + tup_deleted,
                        tup_returned
                 FROM pg_stat_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .unwrap();
        Counters {
            commits: row.get(0),
            rollbacks: row.get(1),
            rows: row.get(2),
            read: row.get(3),
        }
    }
}

// ------------------------------------------------------------ the service

/// `n` `lockstep serve` processes on configuration `config`, their logs
/// drained so they never block on a full pipe.
struct Replicas {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Replicas {
    fn start(config: &Path, n: usize) -> Self {
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..n {
            let (child, stderr, url) =
                common::server::spawn_serve(&server_binary(), config, "warn");
            std::thread::spawn(move || for _ in std::io::BufRead::lines(stderr) {});
            children.push(child);
            urls.push(url);
        }
        Self { children, urls }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// SIGTERM to each, then waits for all.
    fn stop(mut self) {
        for child in &self.children {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
        }
        for child in &mut self.children {
            child.wait().unwrap();
        }
    }
}

/// The configurations the setups run: the test server's `config` (on
/// its PostgreSQL database) with the background sweep at its default
/// interval instead of the tests' 200 ms, and the same service (keys,
/// tokens, policy) on a SQLite file of its own instead of the database.
/// Returns their paths, PostgreSQL first.
fn bench_configs(config: &Path) -> [PathBuf; 2] {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("sweep_interval = \"200ms\"", "sweep_interval = \"1s\"");
    let start = text.find("[store]").expect("a [store] table");
    let end = start + text[start..].find("[policy]").expect("a [policy] table");
    let db = config.with_file_name("replicas-sqlite.db");
    let store = format!(
        "[store]\ntype = \"sqlite\"\npath = {:?}\n\n",
        db.to_str().unwrap()
    );
    let postgres = config.with_file_name("replicas-postgres.toml");
    let sqlite = config.with_file_name("replicas-sqlite.toml");
    std::fs::write(&postgres, &text).unwrap();
    std::fs::write(
        &sqlite,
        format!("{}{store}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    [postgres, sqlite]
}

// ------------------------------------------------------------ the clients

/// An HTTP/1.1 keep-alive client (one connection) trusting `root`.
fn client(root: &Path) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(lockstep::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn call(http: &reqwest::Client, url: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Requests and approves a session on `resource` through the replica at
/// `base`; returns its certificate URL there.
async fn open_session(
    http: &reqwest::Client,
    srv: &TestServer,
    base: &str,
    resource: &str,
) -> String {
    let body = json!({"resource": resource, "task": "bench", "duration_secs": 3000, "profile": "mtls-client"});
    let (status, s) = call(
        http,
        &format!("{base}/v1/sessions"),
        srv.token("load"),
        body,
    )
    .await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let approve = format!("{base}/v1/sessions/{id}/approve");
    let vote = json!({"request_hash": s["request_hash"]});
    let (status, s) = call(http, &approve, srv.token("a1"), vote).await;
    assert_eq!(status, 200, "{s}");
    format!("{base}/v1/sessions/{id}/certificate")
}

/// One certificate request with a prepared body; returns the status and,
/// when it is not 201, the body (parsed only then).
async fn mint(http: &reqwest::Client, url: &str, token: &str, body: &bytes::Bytes) -> (u16, Value) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    if status == 201 {
        return (status, Value::Null);
    }
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A certificate a client received: when the answer arrived, and how long
/// it took.
type Sample = (Instant, Duration);

/// One client minting through the replica at `base` until `stop`: a
/// session of its own, a new one when its 1000 credentials are used up.
/// Returns its certificates; any other answer counts in `errors`.
async fn client_loop(
    srv: Arc<TestServer>,
    base: String,
    resource: String,
    csr: Arc<String>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> Vec<Sample> {
    let http = client(&srv.root_pem());
    let body = bytes::Bytes::from(json!({ "csr": csr.as_str() }).to_string());
    let mut url = open_session(&http, &srv, &base, &resource).await;
    let mut minted = 0u32;
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if minted == 1000 {
            url = open_session(&http, &srv, &base, &resource).await;
            minted = 0;
        }
        let start = Instant::now();
        let (status, answer) = mint(&http, &url, srv.token("load"), &body).await;
        match status {
            201 => {
                let done = Instant::now();
                samples.push((done, done - start));
                minted += 1;
            }
            409 if answer["error"] == "credential_limit_reached" => minted = 1000,
            _ => {
                eprintln!("replicas bench: mint answered {status}: {answer}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    samples
}

/// One setup measured once.
struct Round {
    certs_per_sec: f64,
    /// Certificates in the measured window.
    certs: u64,
    /// Certificates from the replicas' start to their stop.
    all_certs: u64,
    latencies: Vec<Duration>,
    errors: u64,
    cpu: Cpu,
    /// The database's counters from the replicas' start to their stop
    /// (PostgreSQL setups).
    database: Counters,
    /// The database's backends over the measured window (PostgreSQL
    /// setups).
    backends: Backends,
}

/// Drives `CLIENTS` clients over the replicas at `urls` (client `i` on
/// replica `i mod n`): `warmup` seconds to open sessions and connections,
/// then `secs` measured, CPU sampled at both ends of the window and, on
/// PostgreSQL, the database's backends (`stats`) through it.
async fn drive(
    srv: &Arc<TestServer>,
    csr: &Arc<String>,
    replicas: &Replicas,
    postmaster: Option<u32>,
    stats: Option<&DatabaseStats>,
    (warmup, secs): (f64, f64),
) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let base = replicas.urls[i % replicas.urls.len()].clone();
            tokio::spawn(client_loop(
                srv.clone(),
                base,
                format!("bench:{i}"),
                csr.clone(),
                stop.clone(),
                errors.clone(),
            ))
        })
        .collect();
    let pids = replicas.pids();
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let (from, before) = (Instant::now(), Cpu::sample(&pids, postmaster));
    let backends = match stats {
        Some(stats) => stats.sample_backends(secs).await,
        None => {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Backends::default()
        }
    };
    let (to, after) = (Instant::now(), Cpu::sample(&pids, postmaster));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut all_certs = 0;
    for task in tasks {
        let samples = task.await.unwrap();
        all_certs += samples.len() as u64;
        latencies.extend(
            samples
                .into_iter()
                .filter(|(done, _)| (from..=to).contains(done))
                .map(|(_, took)| took),
        );
    }
    Round {
        certs_per_sec: latencies.len() as f64 / (to - from).as_secs_f64(),
        certs: latencies.len() as u64,
        all_certs,
        latencies,
        errors: errors.load(Ordering::Relaxed),
        cpu: after.since(before),
        database: Counters::default(),
        backends,
    }
}

// ------------------------------------------------------------ the figures

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `p` quantile of sorted `latencies`, in milliseconds.
fn quantile_ms(latencies: &[Duration], p: f64) -> f64 {
    let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
    latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One setup over all rounds.
struct Summary {
    setup: Setup,
    /// Median over the rounds.
    certs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// In the measured windows, and from start to stop.
    certs: u64,
    all_certs: u64,
    cpu: Cpu,
    database: Counters,
    backends: Backends,
}

impl Summary {
    fn of(setup: Setup, rounds: &[&Round]) -> Self {
        let mut latencies: Vec<Duration> = rounds
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        latencies.sort();
        Self {
            setup,
            certs_per_sec: median(rounds.iter().map(|r| r.certs_per_sec).collect()),
            p50_ms: quantile_ms(&latencies, 0.50),
            p99_ms: quantile_ms(&latencies, 0.99),
            errors: rounds.iter().map(|r| r.errors).sum(),
            certs: rounds.iter().map(|r| r.certs).sum(),
            all_certs: rounds.iter().map(|r| r.all_certs).sum(),
            cpu: rounds.iter().fold(Cpu::default(), |acc, r| acc.add(r.cpu)),
            database: rounds
                .iter()
                .fold(Counters::default(), |acc, r| acc.add(r.database)),
            backends: rounds
                .iter()
                .fold(Backends::default(), |acc, r| acc.add(r.backends)),
        }
    }

    /// CPU seconds per 1000 certificates for `ticks` in the windows.
    fn per_1000(&self, ticks: i64, hz: f64) -> f64 {
        ticks as f64 / hz / self.certs.max(1) as f64 * 1000.0
    }

    /// A database counter per certificate.
    fn per_cert(&self, count: i64) -> f64 {
        count as f64 / self.all_certs.max(1) as f64
    }

    /// The machine's idle share over the measured windows.
    fn idle(&self) -> f64 {
        1.0 - self.cpu.busy as f64 / self.cpu.total.max(1) as f64
    }

    /// What the CPU split implies for each component on hosts of its own
    /// with `cores` cores: the rate at which the replicas (one host
    /// each) or the database would use all of their cores (CPU alone; no
    /// latency, no network).
    fn ceilings(&self, hz: f64, cores: f64) -> (f64, f64) {
        let per_cert = |ticks: u64| ticks as f64 / hz / self.certs.max(1) as f64;
        let replicas = self.setup.replicas() as f64 * cores / per_cert(self.cpu.replicas);
        let database = cores / per_cert(self.cpu.postgres);
        (replicas, database)
    }

    fn json(&self, hz: f64, cores: f64, postgres_seen: bool) -> Value {
        let on_postgres = self.setup != Setup::Sqlite;
        let (replicas, database) = self.ceilings(hz, cores);
        json!({
            "setup": self.setup.key(),
            "replicas": self.setup.replicas(),
            "certs_per_sec": self.certs_per_sec,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "cpu_seconds_per_1000_certs": {
                "lockstep": self.per_1000(self.cpu.replicas as i64, hz),
                "postgres": postgres_seen.then(|| self.per_1000(self.cpu.postgres as i64, hz)),
                "load_generator": self.per_1000(self.cpu.load as i64, hz),
                "other": self.per_1000(self.cpu.other(), hz),
            },
            "machine_idle_share": self.idle(),
            "database": on_postgres.then(|| json!({
                "transactions_per_cert": self.per_cert(self.database.commits + self.database.rollbacks),
                "rollbacks_per_1000_certs": self.per_cert(self.database.rollbacks) * 1000.0,
                "rows_written_per_cert": self.per_cert(self.database.rows),
                "rows_read_per_cert": self.per_cert(self.database.read),
                "backends_on_average": {
                    "running": self.backends.mean(self.backends.running),
                    "waiting_for_a_lock": self.backends.mean(self.backends.lock_waits),
                    "in_transaction_waiting_for_lockstep": self.backends.mean(self.backends.in_transaction),
                },
            })),
            "ceilings_certs_per_sec": (on_postgres && postgres_seen).then(|| json!({
                "cores_per_host": cores,
                "replicas": replicas,
                "database": database,
            })),
        })
    }
}

/// The median over the rounds of `a`'s rate ÷ `b`'s rate in the same
/// round.
fn ratio(rounds: &[Vec<(Setup, Round)>], a: Setup, b: Setup) -> f64 {
    let rate = |round: &Vec<(Setup, Round)>, s: Setup| {
        round
            .iter()
            .find(|(setup, _)| *setup == s)
            .map_or(f64::NAN, |(_, r)| r.certs_per_sec)
    };
    median(rounds.iter().map(|r| rate(r, a) / rate(r, b)).collect())
}

/// Rates, latencies, errors and the CPU split of every setup.
fn print_table(summaries: &[Summary], hz: f64, postgres_seen: bool) {
    // Over the four CPU columns (8 + 8 + 6 + 6 and their gaps).
    println!("{:59}{:^31}", "", "CPU s per 1000 certificates");
    println!(
        "{:>24} {:>8} {:>7} {:>7} {:>6}   {:>8} {:>8} {:>6} {:>6} {:>6}",
        "",
        "certs/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "lockstep",
        "postgres",
        "load",
        "other",
        "idle"
    );
    for s in summaries {
        let pg = if postgres_seen {
            format!("{:.3}", s.per_1000(s.cpu.postgres as i64, hz))
        } else {
            "n/a".to_owned()
        };
        println!(
            "{:>24} {:>8.0} {:>7.2} {:>7.2} {:>6}   {:>8.3} {:>8} {:>6.3} {:>6.3} {:>5.0}%",
            s.setup.label(),
            s.certs_per_sec,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            s.per_1000(s.cpu.replicas as i64, hz),
            pg,
            s.per_1000(s.cpu.load as i64, hz),
            s.per_1000(s.cpu.other(), hz),
            s.idle() * 100.0
        );
    }
    println!(
        "(lockstep: the serve processes; postgres: the server's processes; load: the clients, this \
         process; other: the rest of the machine; idle: the machine's idle share)"
    );
}

/// The database's work per certificate and the ceilings its CPU and the
/// replicas' imply, for the PostgreSQL setups.
fn print_database(summaries: &[Summary], hz: f64, cores: f64, postgres_seen: bool) {
    println!(
        "{:>24} {:>12} {:>10} {:>8} {:>8}   {:>9} {:>9}",
        "per certificate:", "transactions", "rollbacks", "rows", "rows", "ceiling:", "ceiling:"
    );
    println!(
        "{:>24} {:>12} {:>10} {:>8} {:>8}   {:>9} {:>9}",
        "", "", "per 1000", "written", "read", "replicas", "database"
    );
    for s in summaries.iter().filter(|s| s.setup != Setup::Sqlite) {
        let (replicas, database) = s.ceilings(hz, cores);
        let ceilings = if postgres_seen {
            format!("{replicas:>9.0} {database:>9.0}")
        } else {
            format!("{:>9} {:>9}", "n/a", "n/a")
        };
        println!(
            "{:>24} {:>12.1} {:>10.1} {:>8.1} {:>8.1}   {ceilings}",
            s.setup.label(),
            s.per_cert(s.database.commits + s.database.rollbacks),
            s.per_cert(s.database.rollbacks) * 1000.0,
            s.per_cert(s.database.rows),
            s.per_cert(s.database.read),
        );
    }
    println!(
        "(ceilings in certs/s from the CPU per certificate measured here, the replicas each alone \
         on a host of {cores} cores, the database alone on one: what CPU would allow, not what a \
         lock queue does)"
    );
}

/// What the database's connections were doing on average, for the
/// PostgreSQL setups. A transaction waiting for a lock waits for another
/// that holds it (every append to the trail locks the audit head's one
/// row); one in a transaction but idle holds its locks while lockstep
/// works on its side.
fn print_backends(summaries: &[Summary]) {
    println!(
        "{:>24} {:>9} {:>9} {:>15}",
        "database connections:", "running", "waiting", "in transaction,"
    );
    println!(
        "{:>24} {:>9} {:>9} {:>15}",
        "(on average)", "", "for lock", "for lockstep"
    );
    for s in summaries.iter().filter(|s| s.setup != Setup::Sqlite) {
        let b = &s.backends;
        println!(
            "{:>24} {:>9.2} {:>9.2} {:>15.2}",
            s.setup.label(),
            b.mean(b.running),
            b.mean(b.lock_waits),
            b.mean(b.in_transaction)
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("replica bench: run it with `scripts/bench` (or `cargo bench --bench replicas`)");
        return;
    }
    if std::env::var_os("LOCKSTEP_TEST_POSTGRES").is_none() {
        eprintln!(
            "replica bench: LOCKSTEP_TEST_POSTGRES is not set; `scripts/bench` starts a PostgreSQL server for it, \
             or run `eval \"$(scripts/postgres start DIR)\"` first"
        );
        std::process::exit(2);
    }
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&opts));
}

/// `rounds` rounds, each measuring every setup once for `secs` seconds
/// after `warmup`, one setup further on in each round.
async fn measure(
    srv: &Arc<TestServer>,
    csr: &Arc<String>,
    postmaster: Option<u32>,
    hz: f64,
    rounds: usize,
    warmup: f64,
    secs: f64,
) -> Vec<Vec<(Setup, Round)>> {
    let configs = bench_configs(&srv.config_path);
    let stats = DatabaseStats::connect(&srv.config_path).await;
    let mut measured = Vec::new();
    for round in 0..rounds {
        let mut this = Vec::new();
        for k in 0..SETUPS.len() {
            let setup = SETUPS[(k + round) % SETUPS.len()];
            let on_postgres = setup != Setup::Sqlite;
            let before = if on_postgres {
                stats.settled().await
            } else {
                Counters::default()
            };
            let replicas = Replicas::start(&configs[usize::from(!on_postgres)], setup.replicas());
            let sampled = on_postgres.then_some(&stats);
            let mut r = drive(srv, csr, &replicas, postmaster, sampled, (warmup, secs)).await;
            replicas.stop();
            if on_postgres {
                r.database = stats.settled().await.since(before);
            }
            let per_1000 = |ticks: u64| ticks as f64 / hz / r.certs.max(1) as f64 * 1000.0;
            eprintln!(
                "round {}: {:<24} {:>6.0} certs/s, CPU s per 1000: lockstep {:.3}, postgres {:.3}",
                round + 1,
                setup.label(),
                r.certs_per_sec,
                per_1000(r.cpu.replicas),
                per_1000(r.cpu.postgres),
            );
            this.push((setup, r));
        }
        measured.push(this);
    }
    measured
}

async fn run(opts: &Options) {
    let (rounds, warmup, secs) = if opts.quick {
        (1, 0.3, 1.0)
    } else {
        (5, 1.0, 5.0)
    };
    let hz = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let postmaster = postmaster();
    if postmaster.is_none() {
        eprintln!(
            "replica bench: the PostgreSQL server is not a local process; its CPU is not counted"
        );
    }
    let mut srv =
        TestServer::start_in(StoreKind::Postgres, "replicas", POLICY, &["load", "a1"], "").await;
    srv.stop().await;
    let csr = Arc::new(srv.csr("replicas"));
    let srv = Arc::new(srv);

    let measured = measure(&srv, &csr, postmaster, hz, rounds, warmup, secs).await;
    let summaries: Vec<Summary> = SETUPS
        .iter()
        .map(|&s| {
            let rounds: Vec<&Round> = measured
                .iter()
                .flatten()
                .filter(|(setup, _)| *setup == s)
                .map(|(_, r)| r)
                .collect();
            Summary::of(s, &rounds)
        })
        .collect();
    let pg = |n| Setup::Postgres { replicas: n };
    let ratios = [
        ("2 replicas ÷ 1", ratio(&measured, pg(2), pg(1))),
        ("3 replicas ÷ 1", ratio(&measured, pg(3), pg(1))),
        (
            "PostgreSQL ÷ SQLite, 1 replica",
            ratio(&measured, pg(1), Setup::Sqlite),
        ),
    ];

    println!(
        "\nlockstep replicas — SoftHSM2 key, {CLIENTS} HTTPS keep-alive clients round-robin over \
         the replicas, all on {cores} shared cores, {rounds} round(s) of {secs} s{}",
        if opts.quick { " (quick)" } else { "" }
    );
    print_table(&summaries, hz, postmaster.is_some());
    println!("ratios of certs/s within a round, median of {rounds}:");
    for (label, value) in &ratios {
        println!("{label:>32} {value:>6.2}");
    }
    print_database(&summaries, hz, cores, postmaster.is_some());
    print_backends(&summaries);

    if let Some(path) = &opts.json {
        let report = json!({
            "quick": opts.quick,
            "cores": cores,
            "clients": CLIENTS,
            "rounds": rounds,
            "seconds_per_round": secs,
            "setups": summaries.iter().map(|s| s.json(hz, cores, postmaster.is_some())).collect::<Vec<_>>(),
            "ratios": {
                "postgres_2_over_1": ratios[0].1,
                "postgres_3_over_1": ratios[1].1,
                "postgres_over_sqlite": ratios[2].1,
            },
            "rounds_certs_per_sec": measured.iter().map(|round| round.iter()
                .map(|(s, r)| (s.key(), json!(r.certs_per_sec)))
                .collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!("JSON: {path}");
    }
    let errors: u64 = summaries.iter().map(|s| s.errors).sum();
    assert_eq!(errors, 0, "certificate requests answered with errors");
}
