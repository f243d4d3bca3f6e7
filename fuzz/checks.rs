//! What each fuzz target checks for one input. Shared by the fuzz targets
//! (`fuzz_targets/*.rs`) and by `tests/fuzz_regressions.rs`, which runs the
//! inputs under `fuzz/regressions/` through the same checks in the normal
//! test suite. Every check panics on what must not happen.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use der::{Decode, Encode};
use lockstep::api::ApiError;
use lockstep::api::input;
use lockstep::api::views::{CsrBody, NewSessionBody, RevokeBody, TokenBody, VoteBody};
use lockstep::auth::oidc::{OidcIssuerConfig, OidcVerifier};
use lockstep::auth::tokens::{StaticTokens, TokenEntry};
use lockstep::auth::{AuthError, Authenticator};
use lockstep::clock::Timestamp;
use lockstep::gateway::modbus::{
    Allowed, Framer, HEADER as MODBUS_HEADER, Header, ILLEGAL_FUNCTION, MAX_FRAME, exception,
};
use lockstep::revocation::ocsp::{MAX_REQUESTS, OcspError, Responder};
use lockstep::sessions::{MAX_RESOURCE_LEN, Request, SessionId};
use lockstep::sigstore::verify::{Expected, verify};
use lockstep::sigstore::{Bundle, TrustedRoot};
use lockstep::tsa::read_response;
use lockstep::x509::X509Error;
use lockstep::x509::csr::{MAX_CSR_BYTES, parse_and_verify};

// --- csr ---------------------------------------------------------------------

fn csr_pem(der: &[u8]) -> Vec<u8> {
    let b64 = STANDARD.encode(der);
    let mut out = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE REQUEST-----\n");
    out
}

fn csr_once(input: &[u8]) {
    match parse_and_verify(input) {
        Ok(csr) => {
            // A CSR that verified has a key lockstep accepts and a
            // fingerprint; nothing else is read from it.
            csr.key_fingerprint()
                .expect("the key of a verified CSR encodes");
        }
        Err(X509Error::CsrTooLarge { size, max }) => {
            assert_eq!(max, MAX_CSR_BYTES);
            assert!(size > max);
        }
        Err(e) => {
            // Every refusal of a caller's CSR is a 400 with its own code,
            // never an internal error.
            assert!(
                matches!(
                    e.code(),
                    "csr_malformed"
                        | "csr_signature_invalid"
                        | "unsupported_key_type"
                        | "unsupported_signature_algorithm"
                ),
                "unexpected refusal {}: {e}",
                e.code()
            );
        }
    }
}

/// The CSR check of the certificate endpoint, on the input as sent (DER,
/// or PEM when it starts like PEM) and wrapped in a PEM (the JSON form).
pub fn csr(data: &[u8]) {
    csr_once(data);
    csr_once(&csr_pem(data));
}

// --- session_request -----------------------------------------------------------

/// Every body refusal is a 400 with one of the two documented codes and a
/// bounded message.
fn refused(e: &ApiError) {
    assert_eq!(e.status(), 400, "{}: {}", e.code(), e.message());
    assert!(
        matches!(e.code(), "invalid_json" | "invalid_request"),
        "{}",
        e.code()
    );
    assert!(e.message().chars().count() < 600, "{}", e.message());
}

/// A parsed body serialises to JSON that parses to the same body.
fn round_trips<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let text = serde_json::to_vec(value).expect("serialises");
    let again: T = input::json(&text).expect("its own JSON parses");
    assert_eq!(serde_json::to_vec(&again).expect("serialises"), text);
}

fn body<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    match input::json::<T>(data) {
        Ok(v) => {
            assert_eq!(data.trim_ascii_start().first(), Some(&b'{'));
            round_trips(&v);
            Some(v)
        }
        Err(e) => {
            refused(&e);
            None
        }
    }
}

/// The JSON bodies of the API through the functions the handlers use:
/// `POST /v1/sessions` (parsed, profile resolved, syntax checked as the
/// service does before asking policy), approvals and denials, revocations,
/// certificate and token requests; and the input as a session id.
pub fn session_request(data: &[u8]) {
    if let Some(b) = body::<NewSessionBody>(data) {
        match input::new_session(b) {
            Ok(new) => match new.validate() {
                Ok(()) => {
                    // What passes is a safe name, and hashes.
                    assert!(!new.resource.is_empty() && new.resource.len() <= MAX_RESOURCE_LEN);
                    assert!(new.resource.bytes().all(|b| b.is_ascii_graphic()));
                    assert!(new.duration_secs > 0);
                    let request = Request {
                        tenant: None,
                        requester: "token:fuzz".into(),
                        resource: new.resource,
                        task: new.task,
                        request_digest: new.request_digest,
                        duration_secs: new.duration_secs,
                        profile: new.profile,
                        break_glass: new.break_glass,
                    };
                    request.validate().expect("the same checks");
                    let id = SessionId::parse("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa").expect("id");
                    let _ = request.hash(&id);
                }
                Err(e) => assert!(matches!(e.code(), "invalid_request" | "invalid_duration")),
            },
            Err(e) => refused(&e),
        }
    }
    if let Some(vote) = body::<VoteBody>(data) {
        if let Err(e) = input::request_hash(&vote.request_hash) {
            refused(&e);
        }
        if let Err(e) = input::reason(vote.reason) {
            refused(&e);
        }
    }
    if let Some(revoke) = body::<RevokeBody>(data) {
        match input::reason(Some(revoke.reason)) {
            Ok(r) => assert!(r.is_some_and(|r| !r.chars().any(char::is_control))),
            Err(e) => refused(&e),
        }
    }
    let _ = body::<CsrBody>(data);
    match input::token_body(data) {
        Ok(b) => round_trips::<TokenBody>(&b),
        Err(e) => refused(&e),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match input::session_id(text) {
            Ok(id) => assert_eq!(id.as_str(), text),
            Err(e) => assert_eq!((e.status(), e.code()), (404, "session_not_found")),
        }
    }
}

// --- ocsp_request --------------------------------------------------------------

fn responder() -> &'static Responder {
    static RESPONDER: OnceLock<Responder> = OnceLock::new();
    RESPONDER.get_or_init(|| {
        let cert = x509_cert::Certificate::from_der(include_bytes!("fixtures/issuer.der"))
            .expect("fixture certificate");
        let tbs = cert.tbs_certificate();
        let name = tbs.subject().to_der().expect("name");
        let spki = tbs.subject_public_key_info().to_der().expect("key");
        Responder::new(&name, &spki).expect("responder")
    })
}

fn ocsp_once(der: &[u8]) {
    match responder().parse(der) {
        Ok(parsed) => {
            let serials = parsed.serials();
            assert!((1..=MAX_REQUESTS).contains(&serials.len()));
        }
        Err(OcspError::Malformed(_)) => {}
        Err(e) => panic!("a request is malformed or answered, not {e}"),
    }
}

/// OCSP request parsing for a fixed issuing CA, as `POST /v1/ocsp` (DER)
/// and `GET /v1/ocsp/{base64}` hand requests to the responder.
pub fn ocsp_request(data: &[u8]) {
    ocsp_once(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let decoded = STANDARD
            .decode(text.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim()));
        if let Ok(der) = decoded {
            ocsp_once(&der);
        }
    }
}

// --- bearer ----------------------------------------------------------------------

/// Inside the validity of the seed token (`corpus/bearer/es256`).
pub const BEARER_NOW: i64 = 1_800_000_300;

struct BearerFixture {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
}

fn bearer_fixture() -> &'static BearerFixture {
    static FIXTURE: OnceLock<BearerFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lockstep-fuzz-bearer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("jwks.json"), include_bytes!("fixtures/jwks.json"))
            .expect("JWKS file");
        let issuers = [OidcIssuerConfig {
            issuer: "https://idp.fuzz.example".into(),
            audience: "https://lockstep.fuzz.example".into(),
            jwks: "file:jwks.json".into(),
            jwks_cache: Some("1h".into()),
            leeway: Some("60s".into()),
        }];
        let http = lockstep::net::client(lockstep::net::Trust::Only(Vec::new())).expect("client");
        let oidc = OidcVerifier::new(&issuers, &dir, http).expect("verifier");
        // SHA-256 of `lst_fuzz-seed-token-0123456789abcdef` (corpus/bearer/api-token).
        let tokens = StaticTokens::new(&[TokenEntry {
            name: "fuzz".into(),
            sha256: "270d8308a27d5500fd7152ac406f56c1445087b8d2037ec7cca0938156b83d54".into(),
        }])
        .expect("tokens");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        BearerFixture {
            runtime,
            auth: Authenticator::new(tokens, Some(oidc)),
        }
    })
}

/// An `Authorization` header through the authenticator the service uses:
/// scheme, static API tokens, and OIDC JWTs (header and payload parsing,
/// key choice, signature, claims) against the fixture JWKS.
pub fn bearer(data: &[u8]) {
    // The HTTP layer passes only headers that are text.
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let f = bearer_fixture();
    let now = Timestamp::from_unix(BEARER_NOW);
    match f.runtime.block_on(f.auth.authenticate(Some(header), now)) {
        Ok(caller) => assert!(
            caller.identity == "token:fuzz"
                || caller
                    .identity
                    .starts_with("oidc:https://idp.fuzz.example:"),
            "{}",
            caller.identity
        ),
        Err(AuthError::Rejected(why)) => {
            // Messages never quote the token (one shaped like a token: a
            // word of ordinary English could be in a message by chance).
            if let Some(token) = header
                .split_whitespace()
                .nth(1)
                .filter(|t| t.len() > 12 && (t.contains('.') || t.starts_with("lst_")))
            {
                assert!(!why.contains(token), "{why}");
            }
        }
        Err(AuthError::Missing) => {}
        Err(e) => panic!("a header is accepted or rejected, not {e}"),
    }
}

// --- modbus_frames -------------------------------------------------------------

/// The frames a fresh framer cuts from `stream` pushed in `chunks`-sized
/// pieces, and whether it stopped on a malformed frame.
fn modbus_split(stream: &[u8], chunk: usize, requests: bool) -> (Vec<Vec<u8>>, bool) {
    let mut framer = Framer::default();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        framer.push(piece);
        loop {
            match framer.next_frame(requests) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    let consumed: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(
        consumed + framer.pending(),
        stream.len(),
        "bytes lost or made up"
    );
    (frames, false)
}

/// A client's byte stream through the gateway's Modbus/TCP framer (the
/// first byte picks how the stream is cut into reads): every frame is a
/// well-formed request whose bytes are the stream's, in order; the frames
/// do not depend on how the bytes arrived; the exception answer to each
/// is a frame the target side reads back as itself; and function sets
/// keep exactly their codes.
pub fn modbus_frames(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (frames, malformed) = modbus_split(stream, usize::from(cut % 17) + 1, true);
    let (whole, whole_malformed) = modbus_split(stream, stream.len(), true);
    assert_eq!(frames, whole, "frames depend on how the bytes arrived");
    assert_eq!(malformed, whole_malformed);
    let mut at = 0;
    for frame in &frames {
        assert!(
            (MODBUS_HEADER + 1..=MAX_FRAME).contains(&frame.len()),
            "{frame:?}"
        );
        assert_eq!(&stream[at..at + frame.len()], frame.as_slice());
        at += frame.len();
        assert_eq!(&frame[2..4], &[0, 0], "protocol id");
        let length = usize::from(u16::from_be_bytes([frame[4], frame[5]]));
        assert_eq!(length + MODBUS_HEADER - 1, frame.len(), "length field");
        let header = Header::of(frame);
        assert!((1..=127).contains(&header.function), "{header:?}");
        let answer = exception(&header, ILLEGAL_FUNCTION);
        let (back, bad) = modbus_split(&answer, answer.len(), false);
        assert!(!bad && back == [answer.clone()], "{answer:?}");
    }
    let codes: Vec<u8> = stream.iter().map(|b| b % 127 + 1).take(16).collect();
    let set = Allowed::of(&codes);
    let mut want = codes.clone();
    want.sort_unstable();
    want.dedup();
    assert_eq!(set.codes(), want);
    assert!(codes.iter().all(|c| set.allows(*c)));
    assert!(!set.allows(0) && !set.allows(128));
}

// --- release_timestamp -----------------------------------------------------------

/// A bundle `lockstep sign` wrote (`fixtures/release/`): its artifact, its
/// trusted root and the serial of its own timestamp.
struct ReleaseFixture {
    bundle: Bundle,
    artifact: &'static [u8],
    root: TrustedRoot,
    serial: String,
}

fn release_fixture() -> &'static ReleaseFixture {
    static FIXTURE: OnceLock<ReleaseFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let bundle: Bundle =
            serde_json::from_slice(include_bytes!("fixtures/release/bundle.json")).unwrap();
        let root: TrustedRoot =
            serde_json::from_slice(include_bytes!("fixtures/release/trusted_root.json")).unwrap();
        let artifact = include_bytes!("fixtures/release/artifact");
        let verified = verify(&bundle, artifact, &root, &Expected::default())
            .expect("the fixture bundle verifies");
        ReleaseFixture {
            bundle,
            artifact,
            root,
            serial: verified.timestamp_serial,
        }
    })
}

/// Any bytes as the RFC 3161 response of a real bundle: read back as
/// `lockstep sign` does, and verified as `lockstep verify` does. Only the
/// TSA's own token verifies; everything else is refused with a timestamp
/// code.
pub fn release_timestamp(data: &[u8]) {
    let f = release_fixture();
    if let Ok(facts) = read_response(data) {
        assert!(!facts.serial.is_empty() || data.len() < 4096);
    }
    let mut bundle = f.bundle.clone();
    bundle
        .verification_material
        .timestamp_verification_data
        .rfc3161_timestamps[0]
        .signed_timestamp = STANDARD.encode(data);
    match verify(&bundle, f.artifact, &f.root, &Expected::default()) {
        Ok(v) => assert_eq!(
            v.timestamp_serial, f.serial,
            "a token lockstep's TSA did not sign verified"
        ),
        Err(r) => assert!(
            matches!(
                r.code,
                "timestamp_invalid" | "timestamp_mismatch" | "timestamp_untrusted"
            ),
            "{}: {}",
            r.code,
            r.message
        ),
    }
}
