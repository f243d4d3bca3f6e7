//! The load harness behind `scripts/bench`: the service (`lockstep serve`,
//! SoftHSM2 key, durable SQLite store) on loopback, driven over HTTPS with
//! keep-alive by 1, 8 and 64 concurrent clients, compared with the
//! in-process minting rate measured in the same run.
//!
//! `cargo bench --bench load -- [--quick] [--json PATH]`

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::server::TestServer;
use lockstep::clock::{Clock, SystemClock};
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::{CertProfile, LeafSpec, San, SessionEvidence, SubjectName};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[resource]]
match = "bench:*"
requesters = ["token:load"]
approvers = ["token:a1", "token:a2"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 1000
pending_timeout = "1h"

[[resource]]
match = "life:*"
requesters = ["token:load"]
approvers = ["token:a1", "token:a2"]
quorum = 2
max_duration = "1h"
profiles = ["mtls-client"]
"#;

struct Options {
    quick: bool,
    json: Option<String>,
    /// An older `lockstep` binary to compare with (`--baseline PATH`).
    baseline: Option<String>,
    /// Only the comparison with the baseline (`--compare-only`).
    compare_only: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    Options {
        quick: args.iter().any(|a| a == "--quick"),
        json: value("--json"),
        baseline: value("--baseline"),
        compare_only: args.iter().any(|a| a == "--compare-only"),
    }
}

/// Runs `f` on `threads` threads for `secs`; returns operations per second.
fn rate(threads: usize, secs: f64, f: impl Fn() + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, stop, count) = (f.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    f();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn client(srv: &TestServer) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(srv.root_pem())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(lockstep::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    // HTTP/1.1 with keep-alive: each client holds one connection.
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.post(format!("{url}{path}")).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The load generator's hot call: a prepared body, the response drained
/// (for keep-alive) but not parsed; returns the status.
async fn mint(http: &reqwest::Client, url: &str, token: &str, body: &bytes::Bytes) -> u16 {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

async fn open_session(http: &reqwest::Client, srv: &TestServer, resource: &str) -> String {
    let (status, s) = call(http, &srv.url, srv.token("load"), "/v1/sessions",
        Some(json!({"resource": resource, "task": "bench", "duration_secs": 3000, "profile": "mtls-client"}))).await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let (status, s) = call(
        http,
        &srv.url,
        srv.token("a1"),
        &format!("/v1/sessions/{id}/approve"),
        Some(json!({"request_hash": s["request_hash"]})),
    )
    .await;
    assert_eq!(status, 200, "{s}");
    id
}

struct Level {
    clients: usize,
    certs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `clients` concurrent clients, each on its own open session, minting for
/// `secs` seconds.
async fn certificate_load(
    srv: &Arc<TestServer>,
    csr: &Arc<String>,
    clients: usize,
    secs: f64,
) -> Level {
    let mut sessions = Vec::new();
    let setup = client(srv);
    for i in 0..clients {
        sessions.push((i, open_session(&setup, srv, &format!("bench:{i}")).await));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(i, id)| {
            let (srv, csr, stop, errors) = (srv.clone(), csr.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let http = client(&srv);
                let mut url = format!("{}/v1/sessions/{id}/certificate", srv.url);
                let body = bytes::Bytes::from(json!({ "csr": csr.as_str() }).to_string());
                let mut latencies = Vec::new();
                let mut minted = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if minted == 1000 {
                        // The session's credentials are used up: the next one.
                        let id = open_session(&http, &srv, &format!("bench:{i}")).await;
                        url = format!("{}/v1/sessions/{id}/certificate", srv.url);
                        minted = 0;
                    }
                    let t = Instant::now();
                    let status = mint(&http, &url, srv.token("load"), &body).await;
                    latencies.push(t.elapsed());
                    minted += 1;
                    if status != 201 {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Level {
        clients,
        certs_per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// The service's own minting path without HTTP: session check, CSR check,
/// slot in the store, device signature, durable record, on `clients`
/// concurrent tasks.
async fn in_process_service(
    config: &lockstep::config::Config,
    csr: &[u8],
    clients: usize,
    secs: f64,
) -> f64 {
    use lockstep::auth::Caller;
    use lockstep::service::NewSession;
    use lockstep::sessions::Profile;
    let prepared = lockstep::startup::prepare(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let service = prepared.state.service.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (service, stop, done, csr) =
                (service.clone(), stop.clone(), done.clone(), csr.to_vec());
            tokio::spawn(async move {
                let requester = Caller::new("token:load");
                let approver = Caller::new("token:a1");
                while !stop.load(Ordering::Relaxed) {
                    let new = NewSession {
                        resource: format!("bench:in-process-{i}"),
                        task: "bench".into(),
                        request_digest: None,
                        duration_secs: 3000,
                        profile: Profile::MtlsClient,
                        break_glass: false,
                    };
                    let s = service.request(&requester, new).await.unwrap();
                    service
                        .approve(&approver, &s.id, s.request_hash)
                        .await
                        .unwrap();
                    // Up to the session's credential limit (1000).
                    for _ in 0..1000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        service
                            .certificate(&requester, &s.id, csr.clone(), None)
                            .await
                            .unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Full sessions per second: request, two approvals, certificate, close.
async fn lifecycle(srv: &Arc<TestServer>, csr: &Arc<String>, clients: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (srv, csr, stop, done) = (srv.clone(), csr.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let http = client(&srv);
                let url = srv.url.clone();
                while !stop.load(Ordering::Relaxed) {
                    let (_, s) = call(&http, &url, srv.token("load"), "/v1/sessions",
                        Some(json!({"resource": format!("life:{i}"), "task": "bench", "duration_secs": 300, "profile": "mtls-client"}))).await;
                    let id = s["id"].as_str().unwrap().to_owned();
                    for approver in ["a1", "a2"] {
                        call(&http, &url, srv.token(approver), &format!("/v1/sessions/{id}/approve"),
                            Some(json!({"request_hash": s["request_hash"]}))).await;
                    }
                    let (status, _) = call(&http, &url, srv.token("load"), &format!("/v1/sessions/{id}/certificate"),
                        Some(json!({"csr": csr.as_str()}))).await;
                    assert_eq!(status, 201);
                    call(&http, &url, srv.token("load"), &format!("/v1/sessions/{id}/close"), None).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Starts `lockstep serve` (the binary `bin`) on configuration `cfg`;
/// returns it and its URL, its log drained so it never blocks on a full
/// pipe.
fn spawn_server(bin: &str, cfg: &str) -> (std::process::Child, String) {
    let (child, stderr, url) = common::server::spawn_serve(bin, std::path::Path::new(cfg), "warn");
    std::thread::spawn(move || for _ in std::io::BufRead::lines(stderr) {});
    (child, url)
}

fn stop_server(child: &mut std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// This build against `old` (another `lockstep` binary), alternating
/// between them round after round on the same machine, each with a store
/// of its own: certificates/s at 8 and 64 clients and full lifecycles/s
/// at 8, the median of the rounds, and new ÷ old.
async fn compare(
    srv: &mut Arc<TestServer>,
    csr: &Arc<String>,
    old: &str,
    quick: bool,
    secs: f64,
) -> Value {
    let dir = srv.dir.path().to_owned();
    let text = std::fs::read_to_string(&srv.config_path).unwrap();
    let mut configs = Vec::new();
    // LOCKSTEP_BENCH_NEW_CONFIG: TOML added to the new build's
    // configuration only (e.g. a `[metrics]` section, to measure its cost).
    let added = std::env::var("LOCKSTEP_BENCH_NEW_CONFIG").unwrap_or_default();
    for name in ["old", "new"] {
        let path = dir.join(format!("compare-{name}.toml"));
        let store = format!("sqlite = \"compare-{name}.db\"");
        let mut config = text.replace("sqlite = \"lockstep.db\"", &store);
        if name == "new" {
            config = format!("{config}\n{added}\n");
        }
        std::fs::write(&path, config).unwrap();
        configs.push(path.to_str().unwrap().to_owned());
    }
    let binaries = [old.to_owned(), env!("CARGO_BIN_EXE_lockstep").to_owned()];
    let rounds = if quick { 1 } else { 3 };
    let mut figures: [Vec<[f64; 3]>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate which goes first, so drift over the run falls on both.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (mut child, url) = spawn_server(&binaries[which], &configs[which]);
            Arc::get_mut(srv)
                .expect("no load task holds the server")
                .url = url;
            let c8 = certificate_load(srv, csr, 8, secs).await.certs_per_sec;
            let c64 = certificate_load(srv, csr, 64, secs).await.certs_per_sec;
            let life = lifecycle(srv, csr, 8, secs).await;
            stop_server(&mut child);
            figures[which].push([c8, c64, life]);
        }
    }
    let median = |runs: &Vec<[f64; 3]>, k: usize| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\nthis build against {old}, {rounds} alternating rounds (median):");
    println!("{:>30} {:>10} {:>10} {:>10}", "", "old", "new", "new ÷ old");
    let mut out = Vec::new();
    for (k, label) in [
        "certs/s, 8 clients",
        "certs/s, 64 clients",
        "lifecycles/s, 8 clients",
    ]
    .iter()
    .enumerate()
    {
        let (o, n) = (median(&figures[0], k), median(&figures[1], k));
        println!("{label:>30} {o:>10.0} {n:>10.0} {:>10.2}", n / o);
        out.push(json!({ "figure": label, "old": o, "new": n, "ratio": n / o }));
    }
    json!(out)
}

/// Issues certificates at `clients` concurrency until the service has
/// minted `total` in this phase; samples the server's RSS along the way.
async fn soak(
    srv: &Arc<TestServer>,
    csr: &Arc<String>,
    pid: u32,
    clients: usize,
    total: u64,
) -> Vec<(u64, u64)> {
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (srv, csr, issued) = (srv.clone(), csr.clone(), issued.clone());
            tokio::spawn(async move {
                let http = client(&srv);
                let body = bytes::Bytes::from(json!({ "csr": csr.as_str() }).to_string());
                'sessions: loop {
                    let id = open_session(&http, &srv, &format!("bench:soak-{i}")).await;
                    let url = format!("{}/v1/sessions/{id}/certificate", srv.url);
                    for _ in 0..1000 {
                        if issued.load(Ordering::Relaxed) >= total {
                            break 'sessions;
                        }
                        assert_eq!(mint(&http, &url, srv.token("load"), &body).await, 201);
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut next = total / 10;
    while samples.len() < 10 {
        let n = issued.load(Ordering::Relaxed);
        if n >= next {
            samples.push((n, rss_kib(pid)));
            next += total / 10;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    samples
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not,
    // and the suite checks this harness through `scripts/bench --quick`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load harness: run it with `scripts/bench` (or `cargo bench --bench load`)");
        return;
    }
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        if let (true, Some(old)) = (opts.compare_only, &opts.baseline) {
            let mut srv =
                TestServer::start_on(Backend::SoftHsm, "bench", POLICY, &["load", "a1", "a2"], "")
                    .await;
            srv.stop().await;
            let (_, csr) = common::openssl_csr(srv.dir.path(), "bench", "ec:P-256");
            let csr = Arc::new(String::from_utf8(csr).unwrap());
            compare(&mut Arc::new(srv), &csr, old, opts.quick, 5.0).await;
            return;
        }
        let mut reports = Vec::new();
        for backend in Backend::all() {
            reports.push(run(&opts, backend, threads).await);
        }
        let report = json!({ "threads": threads, "quick": opts.quick, "backends": reports });
        if let Some(path) = &opts.json {
            std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
            println!("JSON: {path}");
        }
    });
}

async fn run(opts: &Options, backend: Backend, threads: usize) -> Value {
    let secs = if opts.quick { 0.5 } else { 5.0 };
    let device = match backend {
        Backend::SoftHsm => "SoftHSM2",
        #[cfg(feature = "tpm")]
        Backend::Tpm => "swtpm",
    };
    let mut srv = TestServer::start_on(backend, "bench", POLICY, &["load", "a1", "a2"], "").await;
    srv.stop().await;

    // In-process figures, same machine, same run.
    let config = lockstep::config::Config::load(&srv.config_path).unwrap();
    let keys = config.backend.open().unwrap();
    let issuer =
        Arc::new(lockstep::ca::load_issuer(&config, keys.as_ref(), SystemClock.now()).unwrap());
    let (_, csr_pem) = common::openssl_csr(srv.dir.path(), "bench", "ec:P-256");
    let key = issuer.key().clone();
    let raw_sign = rate(threads, secs, move || {
        key.sign_digest(&[7u8; 32]).unwrap();
    });
    let (i2, c2) = (issuer.clone(), csr_pem.clone());
    let not_after = SystemClock.now().plus_secs(3600);
    let mint = rate(threads, secs, move || {
        let csr = parse_and_verify(&c2).unwrap();
        let spec = LeafSpec {
            subject: SubjectName::cn("bench:x"),
            sans: vec![San::Uri("urn:lockstep:requester:token:load".into())],
            profile: CertProfile::MtlsClient,
            not_after,
            session: SessionEvidence::session("ses_bench"),
            revocation: None,
            build: None,
        };
        i2.mint(&csr, &spec, SystemClock.now()).unwrap();
    });
    drop(issuer);
    let service_clients = if opts.quick { 8 } else { 64 };
    let service = in_process_service(&config, &csr_pem, service_clients, secs).await;

    // The service in its own process (spawned while this process has no
    // TPM command in flight, so it inherits no TPM socket).
    let cfg = srv.config_path.to_str().unwrap().to_owned();
    let (mut child, url) = spawn_server(env!("CARGO_BIN_EXE_lockstep"), &cfg);
    srv.url = url;
    let pid = child.id();
    eprintln!("{device}: server pid {pid}");
    let mut srv = Arc::new(srv);
    let csr = Arc::new(String::from_utf8(csr_pem).unwrap());
    let rss_start = rss_kib(pid);

    let levels: &[usize] = if opts.quick { &[1, 8] } else { &[1, 8, 64] };
    let mut results = Vec::new();
    for &c in levels {
        results.push(certificate_load(&srv, &csr, c, secs).await);
    }
    let life = lifecycle(&srv, &csr, 8, secs).await;
    let rss_end = rss_kib(pid);
    // Memory over 100 000 more certificates (full runs, SoftHSM2 only:
    // on swtpm it would take minutes and measure the same code).
    let rss_soak = if opts.quick || backend != Backend::SoftHsm {
        Vec::new()
    } else {
        soak(&srv, &csr, pid, 64, 100_000).await
    };
    stop_server(&mut child);
    let comparison = match (&opts.baseline, backend) {
        (Some(old), Backend::SoftHsm) => compare(&mut srv, &csr, old, opts.quick, secs).await,
        _ => Value::Null,
    };

    println!(
        "\nlockstep bench — {device} key, SQLite store (synchronous=FULL), HTTPS keep-alive on loopback, {threads} cores{}",
        if opts.quick { " (quick)" } else { "" }
    );
    println!(
        "in-process: raw {device} sign {raw_sign:.0}/s and CSR verify + build + sign {mint:.0}/s on {threads} threads;"
    );
    println!(
        "            service mint (no HTTP, durable store) {service:.0}/s with {service_clients} tasks"
    );
    println!(
        "{:>8} {:>10} {:>8} {:>8} {:>14} {:>12} {:>7}",
        "clients", "certs/s", "p50 ms", "p99 ms", "÷ in-process", "÷ raw sign", "errors"
    );
    for l in &results {
        println!(
            "{:>8} {:>10.0} {:>8.2} {:>8.2} {:>14.2} {:>12.2} {:>7}",
            l.clients,
            l.certs_per_sec,
            l.p50_ms,
            l.p99_ms,
            l.certs_per_sec / service,
            l.certs_per_sec / raw_sign,
            l.errors
        );
    }
    println!(
        "full lifecycle (request, 2 approvals, certificate, close), 8 clients: {life:.0} sessions/s"
    );
    println!(
        "server RSS: {} MiB at start, {} MiB after the run",
        rss_start / 1024,
        rss_end / 1024
    );
    if let (Some(first), Some(last)) = (rss_soak.first(), rss_soak.last()) {
        println!(
            "server RSS over 100 000 more certificates: {} MiB after {}, {} MiB after {}",
            first.1 / 1024,
            first.0,
            last.1 / 1024,
            last.0
        );
    }
    json!({
        "backend": device,
        "in_process": { "raw_sign_per_sec": raw_sign, "crypto_mint_per_sec": mint, "service_mint_per_sec": service, "service_tasks": service_clients },
        "https": results.iter().map(|l| json!({
            "clients": l.clients, "certs_per_sec": l.certs_per_sec, "p50_ms": l.p50_ms,
            "p99_ms": l.p99_ms, "ratio_to_in_process": l.certs_per_sec / service,
            "ratio_to_raw_sign": l.certs_per_sec / raw_sign, "errors": l.errors,
        })).collect::<Vec<_>>(),
        "lifecycle_sessions_per_sec": life,
        "server_rss_kib": { "start": rss_start, "end": rss_end },
        "against_baseline": comparison,
        "soak_rss_kib": rss_soak.iter().map(|(n, kib)| json!({ "certificates": n, "rss_kib": kib })).collect::<Vec<_>>(),
    })
}
