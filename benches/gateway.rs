//! `lockstep gateway`, measured on loopback against the issuer (SoftHSM2
//! key, SQLite store) and an in-process target:
//!
//! - close → cut: from a close call returning to both legs of that
//!   session's connection closed (the client saw EOF, the target saw EOF),
//!   p50/p99 over at least 200 connections held open at once, closed one
//!   at a time;
//! - notAfter → cut: from a certificate's `notAfter` to its connection's
//!   client leg closed;
//! - throughput: MB/s of one connection sending to a discarding target,
//!   through the gateway and directly, and their ratio;
//! - added latency: round trips of one byte to an echoing target, through
//!   the gateway and directly;
//! - admission: connections per second admitted (handshake, admission,
//!   first byte echoed) by 8 clients at once.
//!
//! `cargo bench --bench gateway -- [--quick] [--json PATH]`

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use common::gateway::{Credential, Gateway, ISSUER, close, credential, policy, start_gateway};
use common::server::TestServer;

/// A target that echoes, or discards and counts, and tells when each of
/// its connections ended (seen from its side).
async fn target(echo: bool) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(Instant::now());
            });
        }
    });
    (addr, rx)
}

/// A TLS client of the gateway with one session certificate.
fn connector(gw: &Gateway, c: &Credential) -> TlsConnector {
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    chain.extend(
        CertificateDer::pem_file_iter(&c.chain)
            .unwrap()
            .map(Result::unwrap),
    );
    let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&gw.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(lockstep::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects through the gateway and checks a byte comes back (admitted).
async fn admitted(addr: SocketAddr, tls: &TlsConnector) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls.connect(name, tcp).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("admitted and echoed");
    s
}

/// Waits for EOF on a client leg; when it came.
async fn eof(mut s: Tls) -> Instant {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn close_to_cut(
    srv: &TestServer,
    gw: &Gateway,
    targets: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
    n: usize,
) -> Vec<f64> {
    let mut open = Vec::new();
    for _ in 0..n {
        let c = credential(srv, "plc:line1", 3000, "mtls-client").await;
        let s = admitted(gw.addr, &connector(gw, &c)).await;
        open.push((c, s));
    }
    let mut took = Vec::new();
    for (c, s) in open {
        let client = tokio::spawn(eof(s));
        let closed = close(srv, &c, "close").await;
        let client = client.await.unwrap();
        let target = targets.recv().await.unwrap();
        took.push(ms(client.max(target).saturating_duration_since(closed)));
    }
    took.sort_by(f64::total_cmp);
    took
}

async fn not_after_to_cut(srv: &TestServer, gw: &Gateway, n: usize) -> Vec<f64> {
    let mut waits = Vec::new();
    for _ in 0..n {
        let c = credential(srv, "plc:line1", 2, "mtls-client").await;
        let (_, s) = srv
            .call(
                "GET",
                &format!("/v1/sessions/{}", c.session),
                Some("alice"),
                None,
            )
            .await;
        let closes_at = lockstep::clock::Timestamp::parse_rfc3339(s["closes_at"].as_str().unwrap())
            .unwrap()
            .to_system_time()
            .unwrap();
        let conn = admitted(gw.addr, &connector(gw, &c)).await;
        waits.push(tokio::spawn(async move {
            eof(conn).await;
            let late = SystemTime::now()
                .duration_since(closes_at)
                .unwrap_or_default();
            ms(late)
        }));
    }
    let mut took = Vec::new();
    for w in waits {
        took.push(w.await.unwrap());
    }
    took.sort_by(f64::total_cmp);
    took
}

/// MB/s of `bytes` sent on `s` to a discarding target.
async fn send_rate<S: tokio::io::AsyncWrite + Unpin>(mut s: S, bytes: usize) -> f64 {
    let chunk = vec![7u8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.flush().await.unwrap();
    s.shutdown().await.unwrap();
    sent as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// p50 of one-byte round trips, µs.
async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    n: usize,
) -> f64 {
    let mut took = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"y").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    took.sort_by(f64::total_cmp);
    quantile(&took, 0.5)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    let (conns, expiring, mbytes, trips, admissions) = if quick {
        (20, 4, 16, 200, 40)
    } else {
        (200, 20, 256, 2000, 400)
    };
    let srv = TestServer::start(
        "bench-gateway",
        &policy(""),
        &["alice", "bob", "gw"],
        ISSUER,
    )
    .await;

    // close → cut, with every connection held open at once.
    let (echo, mut ends) = target(true).await;
    let limits = "per_session = 1000\nmax_connections = 4096\nidle_timeout = \"1h\"";
    let gw = start_gateway(&srv, echo, "plc:line1", limits);
    let cut = close_to_cut(&srv, &gw, &mut ends, conns).await;
    let expiry = not_after_to_cut(&srv, &gw, expiring).await;

    // Admission rate: 8 clients, one session.
    let c = credential(&srv, "plc:line1", 3000, "mtls-client").await;
    let tls = connector(&gw, &c);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let tls = tls.clone();
        let addr = gw.addr;
        let per = admissions / 8;
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                drop(admitted(addr, &tls).await);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_sec = admissions as f64 / start.elapsed().as_secs_f64();

    // Round trips: through the gateway, and straight to the target.
    let through = round_trip(admitted(gw.addr, &tls).await, trips).await;
    let direct_s = TcpStream::connect(echo).await.unwrap();
    direct_s.set_nodelay(true).unwrap();
    let direct = round_trip(direct_s, trips).await;
    drop(gw);

    // Throughput to a discarding target.
    let (sink, _) = target(false).await;
    let gw = start_gateway(&srv, sink, "plc:line1", limits);
    let tls = connector(&gw, &c);
    let proxied = send_rate(admitted_sink(&gw, &tls).await, mbytes << 20).await;
    let plain = send_rate(TcpStream::connect(sink).await.unwrap(), mbytes << 20).await;

    println!(
        "\ngateway ({} build, one run; ratios are what to compare)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("| measure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| close returned → both legs closed, ms ({conns} connections open) | {:.1} | {:.1} | {:.1} |",
        quantile(&cut, 0.5),
        quantile(&cut, 0.99),
        cut[cut.len() - 1]
    );
    println!(
        "| notAfter → client leg closed, ms ({expiring}) | {:.1} | {:.1} | {:.1} |",
        quantile(&expiry, 0.5),
        quantile(&expiry, 0.99),
        expiry[expiry.len() - 1]
    );
    println!("\n| measure | through the gateway | direct | gateway ÷ direct |");
    println!("|---|---|---|---|");
    println!(
        "| throughput, MB/s ({mbytes} MiB) | {proxied:.0} | {plain:.0} | {:.2} |",
        proxied / plain
    );
    println!(
        "| one-byte round trip p50, µs | {through:.0} | {direct:.0} | {:.2} |",
        through / direct
    );
    println!("| connections admitted per second (8 clients) | {per_sec:.0} | | |");
    if let Some(path) = json_out {
        let doc = json!({
            "close_to_cut_ms": {"p50": quantile(&cut, 0.5), "p99": quantile(&cut, 0.99), "n": conns},
            "not_after_to_cut_ms": {"p50": quantile(&expiry, 0.5), "p99": quantile(&expiry, 0.99), "n": expiring},
            "throughput_mb_s": {"gateway": proxied, "direct": plain},
            "round_trip_us": {"gateway": through, "direct": direct},
            "admitted_per_s": per_sec,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
}

/// A connection to a discarding target: admitted once the handshake is
/// done and the gateway has settled the session (a short pause: the sink
/// echoes nothing to prove it).
async fn admitted_sink(gw: &Gateway, tls: &TlsConnector) -> Tls {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let s = tls.connect(name, tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s
}
