//! Issuance benchmarks on a SoftHSM2 token: the raw device signing rate and
//! what lockstep adds on top (CSR checks, certificate building); and the
//! raw signing rate of a key in swtpm.
//!
//! `cargo bench --bench issuance`. Compare the figures of one run as ratios
//! (minting rate ÷ raw signing rate); absolute numbers vary by machine.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockstep::clock::{Clock, SystemClock};
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::{CertProfile, LeafSpec, San, SessionEvidence, SubjectName};

fn issuance(c: &mut Criterion) {
    let ca = common::test_ca("bench");
    let key = ca.issuer.key().clone();
    let (_, csr_pem) = common::openssl_csr(ca.dir.path(), "bench", "ec:P-256");
    let now = SystemClock.now();
    let spec = LeafSpec {
        subject: SubjectName::cn("db:payroll"),
        sans: vec![San::Uri("urn:lockstep:requester:token:bench".into())],
        profile: CertProfile::MtlsClient,
        not_after: now.plus_secs(3600),
        session: SessionEvidence::session("ses_bench"),
        revocation: None,
    };

    let mut g = c.benchmark_group("issuance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("softhsm_sign_p256", |b| {
        let digest = [7u8; 32];
        b.iter(|| key.sign_digest(black_box(&digest)).unwrap())
    });
    g.bench_function("csr_parse_verify_p256", |b| {
        b.iter(|| parse_and_verify(black_box(&csr_pem)).unwrap())
    });
    g.bench_function("mint_in_process", |b| {
        b.iter(|| {
            let csr = parse_and_verify(black_box(&csr_pem)).unwrap();
            ca.issuer.mint(&csr, &spec, now).unwrap()
        })
    });
    g.finish();
}

/// TPM2_Sign (ECDSA P-256) on swtpm: `LOCKSTEP_TEST_TPM_TCTI` if set, else
/// a swtpm of the benchmark's own.
fn tpm(c: &mut Criterion) {
    use lockstep::keys::KeyBackend;
    let tpm = common::tpm::SwTpm::shared();
    let backend =
        lockstep::keys::tpm::TpmBackend::new(&lockstep::keys::tpm::TpmConfig::new(tpm.tcti()))
            .unwrap();
    let key_ref = common::tpm::tpm_key_ref("bench", common::tpm::unique_handle());
    let key = backend.generate_key(&key_ref, true).unwrap();
    let mut g = c.benchmark_group("tpm");
    g.throughput(Throughput::Elements(1));
    g.bench_function("swtpm_sign_p256", |b| {
        let digest = [7u8; 32];
        b.iter(|| key.sign_digest(black_box(&digest)).unwrap())
    });
    g.finish();
    backend.destroy_key(&key_ref).unwrap();
}

criterion_group!(benches, issuance, tpm);
criterion_main!(benches);
