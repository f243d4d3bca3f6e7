//! Mints one demo certificate on the configured CA, the way the issuer
//! service does for an open session: the quickstart runs it.
//!
//! ```text
//! cargo run --example mint_demo -- CONFIG CSR_PEM SECONDS OUT_PEM
//! ```

use std::process::ExitCode;

use lockstep::clock::{Clock, SystemClock};
use lockstep::config::Config;
use lockstep::x509::csr::parse_and_verify;
use lockstep::x509::{CertProfile, LeafSpec, San, SessionEvidence, SubjectName};

fn run() -> Result<String, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, csr, seconds, out] = args.as_slice() else {
        return Err("usage: mint_demo CONFIG CSR_PEM SECONDS OUT_PEM".into());
    };
    let config = Config::load(config.as_ref())?;
    let backend = config.backend.open()?;
    let now = SystemClock.now();
    let issuer = lockstep::ca::load_issuer(&config, backend.as_ref(), now)?;
    let csr = parse_and_verify(&std::fs::read(csr)?)?;
    let spec = LeafSpec {
        subject: SubjectName::cn("demo:quickstart").with_organization("lockstep session"),
        sans: vec![San::Uri("urn:lockstep:requester:token:quickstart".into())],
        profile: CertProfile::MtlsClient,
        not_after: now.plus_secs(seconds.parse()?),
        session: SessionEvidence::session(format!("demo-{}", now.unix())),
    };
    let issued = issuer.mint(&csr, &spec, now)?;
    std::fs::write(out, format!("{}{}", issued.pem()?, issuer.chain_pem()))?;
    Ok(format!(
        "minted serial {} for session {}, notAfter {}",
        issued.serial, spec.session.session_id, issued.not_after
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
