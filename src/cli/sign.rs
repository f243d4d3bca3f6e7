//! Release signing: `lockstep sign` (a key in memory, the session's
//! code-signing certificate, the signature, lockstep's timestamp, a
//! Sigstore bundle), `lockstep trusted-root` (the Sigstore trust root
//! naming lockstep's CA and TSA) and `lockstep verify` (a bundle checked
//! offline, with the session's approval).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use der::{DecodePem, Encode};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::Output;
use super::client_args::ClientArgs;
use crate::api::views::SignatureBody;
use crate::error::Error;
use crate::fsio::write_atomic;
use crate::sigstore::verify::{Expected, verify};
use crate::sigstore::{Bundle, TrustedRoot};

/// Sign an artifact for an open `code-signing` session: a P-256 key made
/// in memory and forgotten, the session's certificate for it, the
/// signature, lockstep's RFC 3161 timestamp of it, written as a Sigstore
/// bundle v0.3.
#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// The file to sign.
    #[arg(long)]
    artifact: PathBuf,
    /// Where the bundle goes (`….sigstore.json`).
    #[arg(long)]
    bundle_out: PathBuf,
}

/// Write a Sigstore `trusted_root.json` naming lockstep's CA chain as the
/// certificate authority and its TSA chain as the timestamp authority.
#[derive(Debug, Args)]
pub struct TrustedRootArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where it goes.
    #[arg(long)]
    out: PathBuf,
}

/// Verify a bundle offline: signature, timestamp, certificate chain at
/// the timestamp's time, identity, and the session's approval of the
/// artifact. Prints who approved it.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (`lockstep sign --bundle-out`).
    #[arg(long)]
    bundle: PathBuf,
    /// The artifact it signs.
    #[arg(long)]
    artifact: PathBuf,
    /// The trusted root (`lockstep trusted-root`).
    #[arg(long)]
    trusted_root: PathBuf,
    /// The identity the certificate must name (its first URI SAN).
    #[arg(long)]
    identity: Option<String>,
    /// The OIDC issuer the certificate must name (Fulcio extension .8).
    #[arg(long)]
    issuer: Option<String>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Runs `sign`.
pub fn sign(args: SignArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let artifact = read(&args.artifact)?;
    let digest: [u8; 32] = Sha256::digest(&artifact).into();
    let runtime = super::session::runtime()?;
    // A server without a TSA would refuse the signature after the
    // certificate took the session's slot: ask first.
    runtime.block_on(client.tsa_chain())?;
    let (key, csr) = super::cert::signing_key_and_csr()?;
    let issued = runtime.block_on(client.certificate(&args.id, csr))?;
    let signature: p256::ecdsa::Signature = key
        .sign_prehash(&digest)
        .map_err(|e| Error::InvalidArgument(format!("signing: {e}")))?;
    drop(key);
    let signature = signature.to_der().as_bytes().to_vec();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
    nonce[0] &= 0x7f;
    let body = SignatureBody {
        artifact_digest: format!("sha256:{}", hex::encode(digest)),
        signature: B64.encode(&signature),
        certificate: issued.certificate.clone(),
        nonce: Some(hex::encode(nonce)),
    };
    let stamped = runtime.block_on(client.signature(&args.id, &body))?;
    let response = B64
        .decode(&stamped.timestamp)
        .map_err(|_| Error::Connection("the timestamp is not base64".into()))?;
    let facts = crate::tsa::read_response(&response)?;
    if facts.imprint != Sha256::digest(&signature).as_slice() {
        return Err(Error::Connection(
            "the timestamp is not over this signature".into(),
        ));
    }
    let cert = Certificate::from_pem(&issued.certificate)
        .and_then(|c| c.to_der())
        .map_err(|e| Error::Connection(format!("the certificate: {e}")))?;
    let bundle = Bundle::new(&cert, &digest, &signature, &response);
    let json = serde_json::to_string_pretty(&bundle)
        .map_err(|e| Error::InvalidArgument(format!("bundle: {e}")))?;
    write_atomic(&args.bundle_out, format!("{json}\n").as_bytes(), 0o644)?;
    out.print(
        &serde_json::json!({
            "session": stamped.session, "artifact_digest": stamped.artifact_digest,
            "certificate_serial": stamped.certificate_serial, "timestamp_serial": stamped.serial,
            "signed_at": stamped.gen_time, "session_closed": stamped.session_closed,
            "bundle": args.bundle_out,
        }),
        || {
            format!(
                "signed {} ({}) in session {}, timestamped {}\n  wrote {}\n",
                args.artifact.display(),
                stamped.artifact_digest,
                stamped.session,
                stamped.gen_time,
                args.bundle_out.display()
            )
        },
    );
    Ok(())
}

/// Runs `trusted-root`.
pub fn trusted_root(args: TrustedRootArgs, out: Output) -> Result<(), Error> {
    let client = args.client.published_client()?;
    let runtime = super::session::runtime()?;
    let chain = runtime.block_on(client.ca_chain())?;
    let tsa = runtime.block_on(client.tsa_chain())?;
    let parse = |pem: &str, what: &str| {
        Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|e| Error::Connection(format!("the {what} chain: {e}")))
    };
    let root = TrustedRoot::new(
        &parse(&chain, "CA")?,
        &parse(&tsa, "TSA")?,
        client.base_url(),
    )?;
    let json = serde_json::to_string_pretty(&root)
        .map_err(|e| Error::InvalidArgument(format!("trusted root: {e}")))?;
    write_atomic(&args.out, format!("{json}\n").as_bytes(), 0o644)?;
    out.print(&serde_json::json!({ "trusted_root": args.out }), || {
        format!("wrote {}\n", args.out.display())
    });
    Ok(())
}

/// Runs `verify`.
pub fn run_verify(args: VerifyArgs, out: Output) -> Result<(), Error> {
    let parse = |path: &PathBuf| -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&read(path)?)
            .map_err(|e| Error::InvalidArgument(format!("{}: not JSON: {e}", path.display())))
    };
    let bundle: Bundle = serde_json::from_value(parse(&args.bundle)?).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: not a Sigstore bundle: {e}",
            args.bundle.display()
        ))
    })?;
    let root: TrustedRoot = serde_json::from_value(parse(&args.trusted_root)?).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: not a Sigstore trusted root: {e}",
            args.trusted_root.display()
        ))
    })?;
    let artifact = read(&args.artifact)?;
    let expected = Expected {
        identity: args.identity.as_deref(),
        issuer: args.issuer.as_deref(),
    };
    let verified = verify(&bundle, &artifact, &root, &expected)?;
    out.print(&verified, || {
        format!(
            "verified: {} signed at {} in session {}\n  identity {}\n  approved by {}\n  approved artifact {}\n",
            verified.artifact_digest,
            verified.signed_at,
            verified.session,
            verified.identity.as_deref().unwrap_or("(none)"),
            if verified.approvers.is_empty() {
                "(no one)".to_owned()
            } else {
                verified.approvers.join(", ")
            },
            verified.approved_digest.as_deref().unwrap_or("(none named)"),
        )
    });
    Ok(())
}
