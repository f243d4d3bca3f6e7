//! Micro-benchmarks of what issuance is made of, each in isolation:
//!
//! - `device`: raw ECDSA P-256 signing on SoftHSM2 and on swtpm;
//! - `x509`: CSR parse + signature check, certificate build + sign, CRL
//!   build + sign with 10 000 and 100 000 entries;
//! - `tokens`: a session-bound JWT (claims, encoding, device signature);
//! - `timestamps`: an RFC 3161 token of lockstep's TSA, and a release
//!   bundle verified offline;
//! - `sessions`: the pure session core, request to close;
//! - `service`: in-process end-to-end minting (no HTTP): session check,
//!   CSR check, slot in the store, signature, durable record; 64 at once;
//! - `observability`: counting one committed entry into the metrics, a
//!   whole scrape's encoding, and the Standard Webhooks signature of one
//!   delivery.
//!
//! `cargo bench --bench issuance` (or `scripts/bench`). Compare figures of
//! one run as ratios (e.g. build + sign ÷ raw sign); absolute numbers vary
//! with the machine.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockstep::auth::Caller;
use lockstep::clock::{Clock, SystemClock, Timestamp};
use lockstep::service::{NewSession, Service};
use lockstep::sessions::{Conditions, Profile, Request, Rules, Session, SessionId, SessionOp};
use lockstep::tokens::{TokenClaims, TokenSigner};
use lockstep::x509::crl::CrlEntry;
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::{CertProfile, LeafSpec, San, SessionEvidence, SubjectName, random_serial};

use common::backend::Backend;

fn leaf_spec(now: Timestamp) -> LeafSpec {
    LeafSpec {
        subject: SubjectName::cn("db:payroll"),
        sans: vec![San::Uri("urn:lockstep:requester:token:bench".into())],
        profile: CertProfile::MtlsClient,
        not_after: now.plus_secs(3600),
        session: SessionEvidence::session("ses_bench"),
        revocation: None,
        build: None,
    }
}

fn device(c: &mut Criterion) {
    let mut g = c.benchmark_group("device");
    g.throughput(Throughput::Elements(1));
    for backend in Backend::all() {
        let ca = common::test_ca_on(backend, &format!("bench-raw-{backend:?}"), 3650, 1095);
        let key = ca.issuer.key().clone();
        let digest = [7u8; 32];
        let name = match backend {
            Backend::SoftHsm => "softhsm_sign_p256",
            #[cfg(feature = "tpm")]
            Backend::Tpm => "swtpm_sign_p256",
        };
        g.bench_function(name, |b| {
            b.iter(|| key.sign_digest(black_box(&digest)).unwrap())
        });
    }
    g.finish();
}

fn x509(c: &mut Criterion) {
    let ca = common::test_ca("bench-x509");
    let (_, csr_pem) = common::openssl_csr(ca.dir.path(), "bench", "ec:P-256");
    let csr = parse_and_verify(&csr_pem).unwrap();
    let now = SystemClock.now();
    let spec = leaf_spec(now);

    let mut g = c.benchmark_group("x509");
    g.throughput(Throughput::Elements(1));
    g.bench_function("csr_parse_verify_p256", |b| {
        b.iter(|| parse_and_verify(black_box(&csr_pem)).unwrap())
    });
    g.bench_function("certificate_build_sign", |b| {
        b.iter(|| ca.issuer.mint(&csr, &spec, now).unwrap())
    });
    g.sample_size(10);
    for n in [10_000usize, 100_000] {
        let entries: Vec<CrlEntry> = (0..n)
            .map(|_| CrlEntry {
                serial: hex::encode(random_serial().unwrap().as_bytes()),
                revoked_at: now,
                reason: 5,
            })
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("crl_build_sign_{n}"), |b| {
            b.iter(|| ca.issuer.crl(&entries, 7, now, now.plus_secs(300)).unwrap())
        });
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let ca = common::test_ca("bench-tokens");
    let signer = TokenSigner::new(ca.issuer.key().clone());
    let now = SystemClock.now();
    let claims = TokenClaims {
        iss: "https://lockstep.example".into(),
        sub: "token:ci".into(),
        aud: "payroll-api".into(),
        iat: now.unix(),
        nbf: now.unix(),
        exp: now.unix() + 600,
        jti: "tok_bench".into(),
        sid: "ses_bench".into(),
        request_hash: format!("sha256:{}", "ab".repeat(32)),
        approvers: vec!["token:alice".into(), "token:bob".into()],
        resource: "db:payroll".into(),
        cnf: None,
        break_glass: false,
    };
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jwt_mint_es256", |b| {
        b.iter(|| signer.sign(black_box(&claims)).unwrap())
    });
    g.finish();
}

/// Release signing: an RFC 3161 token (TSTInfo, signed attributes, the
/// device's signature, DER), and `lockstep verify` of a bundle offline
/// (the fixture `lockstep sign` wrote for the fuzz target).
fn timestamps(c: &mut Criterion) {
    let ca = common::test_ca("bench-tsa");
    let now = SystemClock.now();
    let path = ca.dir.path().join("tsa.pem");
    let tsa = lockstep::tsa::open(ca.issuer.key().clone(), &ca.issuer, &path, now).unwrap();
    let stamp = lockstep::tsa::Stamp {
        imprint: [9; 32],
        serial: random_serial().unwrap(),
        nonce: Some(vec![1, 2, 3, 4, 5, 6, 7, 8]),
    };
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/fuzz/fixtures/release/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let bundle: lockstep::sigstore::Bundle =
        serde_json::from_slice(&fixture("bundle.json")).unwrap();
    let root: lockstep::sigstore::TrustedRoot =
        serde_json::from_slice(&fixture("trusted_root.json")).unwrap();
    let artifact = fixture("artifact");
    let mut g = c.benchmark_group("timestamps");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rfc3161_stamp", |b| {
        b.iter(|| tsa.stamp(black_box(&stamp), now).unwrap())
    });
    g.bench_function("bundle_verify_offline", |b| {
        b.iter(|| {
            lockstep::sigstore::verify::verify(&bundle, &artifact, &root, &Default::default())
                .unwrap()
        })
    });
    g.finish();
}

fn sessions(c: &mut Criterion) {
    let rules = bench_rules();
    let request = bench_request("token:ci");
    let id = SessionId::generate().unwrap();
    let now = SystemClock.now();
    let mut g = c.benchmark_group("sessions");
    g.throughput(Throughput::Elements(1));
    // request, two approvals, a credential slot, close: the whole life.
    g.bench_function("core_lifecycle", |b| {
        b.iter(|| {
            let (mut s, _) = Session::new(id.clone(), request.clone(), rules.clone(), now).unwrap();
            for by in ["token:alice", "token:bob"] {
                let op = SessionOp::Approve {
                    by: by.into(),
                    request_hash: s.request_hash,
                };
                s.apply(&op, now).1.unwrap();
            }
            s.apply(
                &SessionOp::ReserveMint {
                    counted: true,
                    kind: lockstep::sessions::CredentialKind::Certificate,
                },
                now,
            )
            .1
            .unwrap();
            let close = SessionOp::Close {
                by: "token:ci".into(),
            };
            s.apply(&close, now).1.unwrap();
            black_box(s)
        })
    });
    g.finish();
}

const POLICY: &str = r#"
[[resource]]
match = "bench:*"
requesters = ["token:load"]
approvers = ["token:a1", "token:a2"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 1000
"#;

/// Concurrent mints per iteration of the service benchmark.
const AT_ONCE: usize = 64;

fn service(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_srv, service) = rt.block_on(async {
        let mut srv =
            common::server::TestServer::start("bench-service", POLICY, &["load"], "").await;
        srv.stop().await;
        let config = lockstep::config::Config::load(&srv.config_path).unwrap();
        let prepared = lockstep::startup::prepare(&config, Arc::new(SystemClock))
            .await
            .unwrap();
        (srv, prepared.state.service.clone())
    });
    let (_, csr_pem) = common::openssl_csr(_srv.dir.path(), "bench", "ec:P-256");
    let requester = Caller::new("token:load");
    let open = |i: usize| {
        let service = service.clone();
        let requester = requester.clone();
        async move {
            let new = NewSession {
                resource: format!("bench:{i}"),
                task: "bench".into(),
                request_digest: None,
                duration_secs: 3000,
                profile: Profile::MtlsClient,
                break_glass: false,
            };
            let s = service.request(&requester, new).await.unwrap();
            let approver = Caller::new("token:a1");
            service
                .approve(&approver, &s.id, s.request_hash)
                .await
                .unwrap();
            s.id
        }
    };
    let mut slots: Vec<(SessionId, u32)> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..AT_ONCE {
            v.push((open(i).await, 0));
        }
        v
    });
    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(AT_ONCE as u64));
    g.bench_function("mint_in_process_64_at_once", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // A fresh session where one is used up (untimed).
                for (i, slot) in slots.iter_mut().enumerate() {
                    if slot.1 >= 1000 {
                        *slot = (rt.block_on(open(i)), 0);
                    }
                    slot.1 += 1;
                }
                let start = Instant::now();
                rt.block_on(mint_all(&service, &requester, &slots, &csr_pem));
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
}

async fn mint_all(
    service: &Arc<Service>,
    requester: &Caller,
    slots: &[(SessionId, u32)],
    csr: &[u8],
) {
    let tasks: Vec<_> = slots
        .iter()
        .map(|(id, _)| {
            let (service, requester, id, csr) =
                (service.clone(), requester.clone(), id.clone(), csr.to_vec());
            tokio::spawn(async move { service.certificate(&requester, &id, csr, None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

fn observability(c: &mut Criterion) {
    use lockstep::metrics::{Metrics, ledger};
    let metrics = Metrics::new("pkcs11", &["pkcs11", "sqlite"]);
    let minted = lockstep::sessions::Event::Minted {
        kind: lockstep::store::CredentialKind::Certificate,
        serial: "0a1b2c".into(),
        profile: "mtls-client".into(),
        key_sha256: Some("00".repeat(32)),
        jti: None,
        audience: None,
        x5t_s256: None,
        fingerprint: None,
        principals: None,
        not_after: Timestamp::from_unix(1_900_000_000),
        handed_out: true,
    };
    let entry = lockstep::audit::Entry {
        seq: 1,
        at: 1_900_000_000,
        session: Some("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
        kind: "minted".into(),
        body: serde_json::to_string(&minted).unwrap(),
        prev_hash: "00".repeat(32),
        hash: "11".repeat(32),
    };
    for code in [
        "self_approval",
        "not_an_approver",
        "session_closed",
        "unauthenticated",
    ] {
        metrics.refusals.inc(&["approve", code]);
    }
    let signer = lockstep::webhooks::signature::Signer::new(&secrecy::SecretString::from(
        "whsec_dGVzdC1zZWNyZXQtb2YtbG9ja3N0ZXAtd2ViaG9va3M=".to_owned(),
    ))
    .unwrap();
    let body = vec![b'x'; 600];
    let mut g = c.benchmark_group("observability");
    g.throughput(Throughput::Elements(1));
    g.bench_function("metrics_count_committed_entry", |b| {
        b.iter(|| ledger::count(&metrics, black_box(&entry)))
    });
    g.bench_function("metrics_encode_scrape", |b| b.iter(|| metrics.encode()));
    g.bench_function("webhook_sign_delivery", |b| {
        b.iter(|| signer.sign("msg_1_0011", 1_900_000_000, black_box(&body)))
    });
    g.finish();
}

/// Live sessions in the store while signals are received (the receiver
/// looks at each).
const LIVE: usize = 200;

/// A Shared Signals SET acted on by the SQLite store with [`LIVE`] live
/// sessions (none of them its subject's: the scan is the cost), against
/// creating one session in the same store.
fn signals(c: &mut Criterion) {
    use lockstep::signals::{Signal, SignalEvent, Subject};
    use lockstep::store::{SqliteStore, Store};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let (session, events) = bench_session();
    let now = SystemClock.now();
    let create = |store: &SqliteStore| {
        let (mut s, ev) = (session.clone(), events.clone());
        s.id = SessionId::generate().unwrap();
        rt.block_on(store.create_session(s, ev, now))
            .unwrap()
            .unwrap();
    };
    for _ in 0..LIVE {
        create(&store);
    }
    let mut n = 0u64;
    let mut g = c.benchmark_group("signals");
    g.throughput(Throughput::Elements(1));
    g.bench_function("receive_set_200_live_sessions", |b| {
        b.iter(|| {
            n += 1;
            let signal = Signal {
                issuer: "https://idp.example/ssf".into(),
                jti: format!("bench-{n}"),
                iat: now,
                events: vec![SignalEvent {
                    name: "session-revoked".into(),
                    ends_sessions: true,
                }],
                subject: Subject::IssSub {
                    iss: "https://idp.example".into(),
                    sub: "nobody".into(),
                },
                approvers: true,
            };
            rt.block_on(store.receive_signal(signal, now))
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("create_session", |b| b.iter(|| create(&store)));
    g.finish();
}

/// Rules of a two-approver session that stays pending for an hour.
fn bench_rules() -> Rules {
    Rules {
        approvers: vec!["token:alice".into(), "token:bob".into()],
        quorum: 2,
        max_duration_secs: 3600,
        pending_timeout_secs: 3600,
        credentials: 1,
        denials_to_close: 1,
        tokens_allowed: false,
        count_tokens: true,
        audiences: Vec::new(),
        conditions: Conditions::default(),
        connections: None,
        ssh: None,
        gateway_certificates: false,
        modbus_functions: None,
        signing: Default::default(),
        break_glass: None,
    }
}

fn bench_request(requester: &str) -> Request {
    Request {
        tenant: None,
        requester: requester.into(),
        resource: "db:payroll".into(),
        task: "rotate the payroll DB password".into(),
        request_digest: None,
        duration_secs: 600,
        profile: Profile::MtlsClient,
        break_glass: false,
    }
}

/// A pending session of the bench's rules, and its creation events.
fn bench_session() -> (Session, Vec<lockstep::sessions::Event>) {
    let request = bench_request("oidc:https://idp.example:someone");
    Session::new(
        SessionId::generate().unwrap(),
        request,
        bench_rules(),
        SystemClock.now(),
    )
    .unwrap()
}

criterion_group!(
    benches,
    device,
    x509,
    tokens,
    timestamps,
    sessions,
    service,
    observability,
    signals
);
criterion_main!(benches);
