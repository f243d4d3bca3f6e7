//! The committed-event stream, measured over HTTPS against the service on
//! loopback (SoftHSM2 key, durable SQLite store):
//!
//! - latency: from a close call returning to the `closed` event of that
//!   session reaching a subscriber of `GET /v1/events`, p50/p99 over at
//!   least 1000 closes, one at a time (negative: the event arrived before
//!   the close call's answer, as it may: it is published at commit, the
//!   answer is written after);
//! - following: events per second one subscriber receives while 8 clients
//!   run sessions (request, approve, certificate, close) as fast as they
//!   can, against the rate the trail grows, and how far behind it is when
//!   issuance stops;
//! - replay: events per second a new subscriber reads from the start of the
//!   trail.
//!
//! `cargo bench --bench events -- [--quick] [--json PATH]`

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::server::TestServer;
use common::sse::{self, EventStream};
use serde_json::{Value, json};

const POLICY: &str = r#"
auditors = ["token:auditor"]

[[resource]]
match = "bench:*"
requesters = ["token:load"]
approvers = ["token:a1"]
quorum = 1
max_duration = "1h"
pending_timeout = "1h"
profiles = ["mtls-client"]
"#;

const CLIENTS: usize = 8;

struct Options {
    quick: bool,
    json: Option<String>,
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

async fn post(srv: &TestServer, who: &str, path: &str, body: Value) -> Value {
    let resp = srv
        .http
        .post(format!("{}{path}", srv.url))
        .bearer_auth(srv.token(who))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

async fn open(srv: &TestServer, resource: &str) -> String {
    let s = post(srv, "load", "/v1/sessions",
        json!({"resource": resource, "task": "bench", "duration_secs": 3000, "profile": "mtls-client"})).await;
    let id = s["id"].as_str().unwrap().to_owned();
    post(
        srv,
        "a1",
        &format!("/v1/sessions/{id}/approve"),
        json!({"request_hash": s["request_hash"]}),
    )
    .await;
    id
}

async fn close(srv: &TestServer, id: &str) {
    post(srv, "load", &format!("/v1/sessions/{id}/close"), json!({})).await;
}

async fn follow(srv: &TestServer, query: &str) -> EventStream {
    sse::connect(&srv.http, &srv.url, srv.token("auditor"), query, None).await
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Latency {
    closes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    before_answer: usize,
}

/// Closes `n` open sessions one at a time; a subscriber task notes when
/// each `closed` event arrives.
async fn close_latency(srv: &Arc<TestServer>, n: usize) -> Latency {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(open(srv, &format!("bench:lat{i}")).await);
    }
    let mut stream = follow(srv, "?resource=bench:lat*").await;
    let arrivals = tokio::spawn(async move {
        let mut seen = HashMap::new();
        while seen.len() < n {
            let e = stream.event().await;
            if e["kind"] == "closed" {
                seen.insert(e["session"].as_str().unwrap().to_owned(), Instant::now());
            }
        }
        seen
    });
    let mut answered = Vec::with_capacity(n);
    for id in &ids {
        close(srv, id).await;
        answered.push(Instant::now());
    }
    let arrived = arrivals.await.unwrap();
    let mut before_answer = 0;
    let mut ms: Vec<f64> = ids
        .iter()
        .zip(&answered)
        .map(|(id, answered)| {
            // Negative: the event arrived before the close answer did.
            let at = arrived[id];
            if at < *answered {
                before_answer += 1;
                -(answered.duration_since(at).as_secs_f64() * 1000.0)
            } else {
                at.duration_since(*answered).as_secs_f64() * 1000.0
            }
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Latency {
        closes: n,
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: *ms.last().unwrap(),
        before_answer,
    }
}

struct Following {
    secs: f64,
    committed_per_sec: f64,
    received_per_sec: f64,
    behind_at_stop: u64,
    drained_ms: f64,
}

/// The last sequence number of the trail, read from the store file.
async fn head(srv: &TestServer) -> u64 {
    let c = rusqlite::Connection::open(srv.dir.path().join("lockstep.db")).unwrap();
    c.query_row("SELECT MAX(seq) FROM events", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

/// One subscriber from now while `CLIENTS` clients run whole sessions
/// with a certificate each for `secs` seconds.
async fn following(srv: &Arc<TestServer>, secs: f64) -> Following {
    let csr = Arc::new(srv.csr("bench"));
    let mut stream = follow(srv, "").await;
    let start_head = head(srv).await;
    let received = Arc::new(AtomicU64::new(start_head));
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                let e = stream.event().await;
                received.store(e["seq"].as_u64().unwrap(), Ordering::Relaxed);
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (srv, csr, stop) = (srv.clone(), csr.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = open(&srv, &format!("bench:f{c}-{n}")).await;
                    post(
                        &srv,
                        "load",
                        &format!("/v1/sessions/{id}/certificate"),
                        json!({"csr": *csr}),
                    )
                    .await;
                    close(&srv, &id).await;
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end_head = head(srv).await;
    let at_stop = received.load(Ordering::Relaxed);
    let drain = Instant::now();
    while received.load(Ordering::Relaxed) < end_head {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            drain.elapsed() < Duration::from_secs(60),
            "the subscriber catches up"
        );
    }
    let drained_ms = drain.elapsed().as_secs_f64() * 1000.0;
    counter.abort();
    let committed = (end_head - start_head) as f64;
    Following {
        secs: elapsed,
        committed_per_sec: committed / elapsed,
        received_per_sec: (at_stop - start_head) as f64 / elapsed,
        behind_at_stop: end_head - at_stop,
        drained_ms,
    }
}

/// A new subscriber reading the whole trail from its start.
async fn replay(srv: &TestServer) -> (u64, f64) {
    let end = head(srv).await;
    let mut stream = follow(srv, "?after=0").await;
    let started = Instant::now();
    loop {
        let e = stream.event().await;
        if e["seq"].as_u64().unwrap() >= end {
            return (end, end as f64 / started.elapsed().as_secs_f64());
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "event stream benchmark: run it with `scripts/bench` (or `cargo bench --bench events`)"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(options()));
}

async fn run(opts: Options) {
    let closes = if opts.quick { 100 } else { 1000 };
    let secs = if opts.quick { 2.0 } else { 10.0 };
    let srv =
        Arc::new(TestServer::start("bench-events", POLICY, &["load", "a1", "auditor"], "").await);

    let lat = close_latency(&srv, closes).await;
    let fol = following(&srv, secs).await;
    let (replayed, replay_rate) = replay(&srv).await;

    println!(
        "event stream over HTTPS (loopback, SoftHSM2, SQLite){}",
        if opts.quick {
            ", quick run: not the figures"
        } else {
            ""
        }
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| close returned → `closed` event, p50 | {:.2} ms |",
        lat.p50_ms
    );
    println!(
        "| close returned → `closed` event, p99 | {:.2} ms |",
        lat.p99_ms
    );
    println!(
        "| close returned → `closed` event, max | {:.2} ms |",
        lat.max_ms
    );
    println!(
        "| closes measured (event before the answer) | {} ({}) |",
        lat.closes, lat.before_answer
    );
    println!(
        "| trail growth under {CLIENTS} issuing clients | {:.0} events/s |",
        fol.committed_per_sec
    );
    println!(
        "| followed by one subscriber | {:.0} events/s |",
        fol.received_per_sec
    );
    println!(
        "| behind when issuance stopped | {} events, caught up in {:.1} ms |",
        fol.behind_at_stop, fol.drained_ms
    );
    println!("| replay from the start ({replayed} events) | {replay_rate:.0} events/s |");

    if let Some(path) = opts.json {
        let report = json!({
            "quick": opts.quick,
            "close_to_event_ms": {"closes": lat.closes, "p50": lat.p50_ms, "p99": lat.p99_ms, "max": lat.max_ms, "before_answer": lat.before_answer},
            "following": {"secs": fol.secs, "committed_per_sec": fol.committed_per_sec, "received_per_sec": fol.received_per_sec,
                "behind_at_stop": fol.behind_at_stop, "drained_ms": fol.drained_ms},
            "replay": {"events": replayed, "per_sec": replay_rate},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
}
