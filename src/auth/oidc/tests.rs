//! Tests of OIDC verification.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::json;

use std::sync::Arc;

use super::jwks::parse_jwks;
use super::*;

const ISS: &str = "https://ci.example";
const AUD: &str = "lockstep";
const SUB: &str = "repo:acme/app:ref:refs/heads/main";
const T0: i64 = 1_900_000_000;

fn now() -> Timestamp {
    Timestamp::from_unix(T0)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 key pair: PKCS#8 DER for signing, JWK coordinates.
struct EsKey {
    pkcs8: Vec<u8>,
    point: Vec<u8>,
}

impl EsKey {
    fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&secret).unwrap();
        let pkcs8 = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let point = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        Self { pkcs8, point }
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_ec_der(&self.pkcs8)
    }

    fn jwk(&self, kid: &str) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&self.point[1..33]), "y": b64(&self.point[33..65]),
        })
    }
}

/// An RSA key pair made by the `openssl` CLI (ring cannot generate RSA
/// keys): PKCS#1 DER for signing, modulus and exponent for the JWK.
struct RsaKey {
    pkcs1: Vec<u8>,
    public_pem: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    n: der::asn1::UintRef<'a>,
    e: der::asn1::UintRef<'a>,
}

impl RsaKey {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let key = path("key.pem");
        let key = key.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key,
        ]);
        let pkcs1 = path("key.der");
        openssl(&[
            "rsa",
            "-in",
            key,
            "-traditional",
            "-outform",
            "DER",
            "-out",
            pkcs1.to_str().unwrap(),
        ]);
        let public = path("pub.der");
        openssl(&[
            "rsa",
            "-in",
            key,
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            public.to_str().unwrap(),
        ]);
        let public_pem = path("pub.pem");
        openssl(&[
            "rsa",
            "-in",
            key,
            "-pubout",
            "-out",
            public_pem.to_str().unwrap(),
        ]);
        let public = std::fs::read(public).unwrap();
        let parsed: RsaPublicKey<'_> = der::Decode::from_der(&public).unwrap();
        Self {
            pkcs1: std::fs::read(pkcs1).unwrap(),
            public_pem: std::fs::read(public_pem).unwrap(),
            n: parsed.n.as_bytes().to_vec(),
            e: parsed.e.as_bytes().to_vec(),
        }
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_rsa_der(&self.pkcs1)
    }

    fn jwk(&self, kid: &str) -> Value {
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(&self.n), "e": b64(&self.e),
        })
    }
}

struct Keys {
    es: EsKey,
    es_other: EsKey,
    rs: RsaKey,
    rs_other: RsaKey,
}

/// Keys shared by the tests of this process (RSA generation is slow).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        es: EsKey::generate(),
        es_other: EsKey::generate(),
        rs: RsaKey::generate(),
        rs_other: RsaKey::generate(),
    })
}

fn jwks() -> Value {
    json!({ "keys": [keys().es.jwk("es"), keys().rs.jwk("rs")] })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": SUB,
        "iat": T0, "nbf": T0, "exp": T0 + 300,
        "repository": "acme/app", "ref": "refs/heads/main",
    })
}

fn claims_with(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut claims = claims();
    change(claims.as_object_mut().unwrap());
    claims
}

fn es256(claims: &Value) -> String {
    sign(Algorithm::ES256, Some("es"), &keys().es.encoding(), claims)
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rs"), &keys().rs.encoding(), claims)
}

/// A token with any header, signature `sig`.
fn raw_token(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A JWKS server on 127.0.0.1 that counts its requests.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

struct ServerState {
    body: Mutex<String>,
    status: AtomicU16,
    fetches: AtomicUsize,
    delay_ms: AtomicUsize,
}

async fn jwks_handler(State(state): State<Arc<ServerState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst) as u64;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    let body = state.body.lock().unwrap().clone();
    (status, [("content-type", "application/json")], body).into_response()
}

impl JwksServer {
    async fn start(jwks: &Value) -> Self {
        let state = Arc::new(ServerState {
            body: Mutex::new(jwks.to_string()),
            status: AtomicU16::new(200),
            fetches: AtomicUsize::new(0),
            delay_ms: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks.json", get(jwks_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set_body(&self, body: String) {
        *self.state.body.lock().unwrap() = body;
    }

    fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client without TLS roots: the tests only speak plain HTTP.
fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

fn config(jwks: &str) -> OidcIssuerConfig {
    OidcIssuerConfig {
        issuer: ISS.to_owned(),
        audience: AUD.to_owned(),
        jwks: jwks.to_owned(),
        jwks_cache: None,
        leeway: None,
    }
}

fn verifier(configs: &[OidcIssuerConfig]) -> OidcVerifier {
    OidcVerifier::new(configs, Path::new("/nonexistent"), http_client()).unwrap()
}

fn assert_rejected(result: Result<Caller, AuthError>, case: &str) -> String {
    match result {
        Err(AuthError::Rejected(why)) => why,
        other => panic!("{case}: expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_es256_and_rs256_tokens_are_accepted() {
    let server = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&server.url())]);
    for (name, token) in [("ES256", es256(&claims())), ("RS256", rs256(&claims()))] {
        let caller = v
            .verify(&token, now())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(caller.identity, format!("oidc:{ISS}:{SUB}"), "{name}");
        let expected: BTreeMapOf = claims().as_object().unwrap().clone().into_iter().collect();
        assert_eq!(caller.claims, expected, "{name}");
        assert_eq!(caller.claims["repository"], json!("acme/app"));
    }
    assert_eq!(server.fetches(), 1, "one fetch serves both keys");
}

type BTreeMapOf = std::collections::BTreeMap<String, Value>;

#[tokio::test]
async fn accepted_variants() {
    let server = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&server.url())]);
    let cases: Vec<(&str, String, Timestamp)> = vec![
        (
            "aud array containing ours",
            es256(&claims_with(|c| {
                c.insert("aud".into(), json!(["other", AUD]));
            })),
            now(),
        ),
        (
            "expired 30 s ago, within the 60 s leeway",
            es256(&claims()),
            now().plus_secs(330),
        ),
        (
            "nbf 30 s ahead, within leeway",
            es256(&claims()),
            now().plus_secs(-30),
        ),
        (
            "no nbf, no iat",
            es256(&claims_with(|c| {
                c.remove("nbf");
                c.remove("iat");
            })),
            now(),
        ),
        (
            "fractional exp",
            es256(&claims_with(|c| {
                c.insert("exp".into(), json!(T0 as f64 + 10.5));
            })),
            now(),
        ),
        (
            "sub of 256 characters",
            es256(&claims_with(|c| {
                c.insert("sub".into(), json!("é".repeat(256)));
            })),
            now(),
        ),
    ];
    for (case, token, at) in cases {
        if let Err(e) = v.verify(&token, at).await {
            panic!("{case}: {e}");
        }
    }
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_key() {
    let one = JwksServer::start(&json!({ "keys": [keys().es.jwk("es")] })).await;
    let v = verifier(&[config(&one.url())]);
    let token = sign(Algorithm::ES256, None, &keys().es.encoding(), &claims());
    v.verify(&token, now()).await.unwrap();

    let two = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&two.url())]);
    assert_rejected(v.verify(&token, now()).await, "no kid, two keys");
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let server = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&server.url())]);
    let k = keys();
    let es_header = json!({"alg": "ES256", "kid": "es", "typ": "JWT"});
    let good_es_sig = es256(&claims()).rsplit('.').next().unwrap().to_owned();
    let big = "x".repeat(MAX_TOKEN_BYTES);

    let cases: Vec<(&str, &str, String, Timestamp)> = vec![
        (
            "alg none",
            "alg: none",
            raw_token(&json!({"alg": "none", "kid": "es"}), &claims(), ""),
            now(),
        ),
        (
            "alg None, with the signature of a real token",
            "alg: none",
            raw_token(&json!({"alg": "None"}), &claims(), &good_es_sig),
            now(),
        ),
        (
            "HS256 keyed with the RSA public key PEM",
            "HMAC",
            sign(
                Algorithm::HS256,
                Some("rs"),
                &EncodingKey::from_secret(&k.rs.public_pem),
                &claims(),
            ),
            now(),
        ),
        (
            "HS256 keyed with the EC public point",
            "HMAC",
            sign(
                Algorithm::HS256,
                Some("es"),
                &EncodingKey::from_secret(&k.es.point),
                &claims(),
            ),
            now(),
        ),
        (
            "ES384",
            "only ES256 and RS256",
            raw_token(
                &json!({"alg": "ES384", "kid": "es"}),
                &claims(),
                &good_es_sig,
            ),
            now(),
        ),
        (
            "PS256 with the RSA key",
            "only ES256 and RS256",
            sign(Algorithm::PS256, Some("rs"), &k.rs.encoding(), &claims()),
            now(),
        ),
        (
            "ES256 signed by another key with the same kid",
            "signature does not verify",
            sign(
                Algorithm::ES256,
                Some("es"),
                &k.es_other.encoding(),
                &claims(),
            ),
            now(),
        ),
        (
            "RS256 signed by another key with the same kid",
            "signature does not verify",
            sign(
                Algorithm::RS256,
                Some("rs"),
                &k.rs_other.encoding(),
                &claims(),
            ),
            now(),
        ),
        (
            "header RS256 with an EC key's kid",
            "does not match the type of its key",
            sign(Algorithm::RS256, Some("es"), &k.rs.encoding(), &claims()),
            now(),
        ),
        (
            "header ES256 with an RSA key's kid",
            "does not match the type of its key",
            sign(Algorithm::ES256, Some("rs"), &k.es.encoding(), &claims()),
            now(),
        ),
        (
            "tampered payload",
            "signature does not verify",
            raw_token(
                &es_header,
                &claims_with(|c| {
                    c.insert("sub".into(), json!("repo:evil/app"));
                }),
                &good_es_sig,
            ),
            now(),
        ),
        (
            "wrong audience",
            "audience",
            es256(&claims_with(|c| {
                c.insert("aud".into(), json!("someone-else"));
            })),
            now(),
        ),
        (
            "audience array without ours",
            "audience",
            es256(&claims_with(|c| {
                c.insert("aud".into(), json!(["a", "b"]));
            })),
            now(),
        ),
        (
            "no audience",
            "audience",
            es256(&claims_with(|c| {
                c.remove("aud");
            })),
            now(),
        ),
        (
            "unknown issuer",
            "not trusted",
            es256(&claims_with(|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            })),
            now(),
        ),
        (
            "issuer differing in case",
            "not trusted",
            es256(&claims_with(|c| {
                c.insert("iss".into(), json!(ISS.to_uppercase()));
            })),
            now(),
        ),
        (
            "no issuer",
            "no issuer",
            es256(&claims_with(|c| {
                c.remove("iss");
            })),
            now(),
        ),
        (
            "expired (past the leeway)",
            "expired",
            es256(&claims()),
            now().plus_secs(360),
        ),
        (
            "no exp",
            "no expiry",
            es256(&claims_with(|c| {
                c.remove("exp");
            })),
            now(),
        ),
        (
            "exp as a string",
            "`exp` claim is not a number",
            es256(&claims_with(|c| {
                c.insert("exp".into(), json!((T0 + 300).to_string()));
            })),
            now(),
        ),
        (
            "nbf in the future",
            "not valid yet",
            es256(&claims_with(|c| {
                c.insert("nbf".into(), json!(T0 + 120));
            })),
            now(),
        ),
        (
            "iat far in the future",
            "issued in the future",
            es256(&claims_with(|c| {
                c.insert("iat".into(), json!(T0 + 3600));
                c.insert("exp".into(), json!(T0 + 7200));
            })),
            now(),
        ),
        (
            "no sub",
            "no subject",
            es256(&claims_with(|c| {
                c.remove("sub");
            })),
            now(),
        ),
        (
            "empty sub",
            "1 to 256 characters",
            es256(&claims_with(|c| {
                c.insert("sub".into(), json!(""));
            })),
            now(),
        ),
        (
            "sub of 257 characters",
            "1 to 256 characters",
            es256(&claims_with(|c| {
                c.insert("sub".into(), json!("a".repeat(257)));
            })),
            now(),
        ),
        (
            "sub with a newline",
            "control characters",
            es256(&claims_with(|c| {
                c.insert("sub".into(), json!("repo:acme/app\nadmin"));
            })),
            now(),
        ),
        (
            "sub not a string",
            "no subject",
            es256(&claims_with(|c| {
                c.insert("sub".into(), json!(42));
            })),
            now(),
        ),
        (
            "oversized token",
            "larger than 16 KiB",
            es256(&claims_with(|c| {
                c.insert("padding".into(), json!(big));
            })),
            now(),
        ),
        ("garbage", "not a JWT", "garbage".to_owned(), now()),
        (
            "three dots of garbage",
            "not base64url",
            "a.b.c".to_owned(),
            now(),
        ),
        ("empty", "not a JWT", String::new(), now()),
        ("non-base64url", "not a JWT", "e30.e30.!!".to_owned(), now()),
        (
            "header not JSON",
            "header is not a JSON object",
            format!(
                "{}.{}.x",
                b64(b"nope"),
                b64(claims().to_string().as_bytes())
            ),
            now(),
        ),
        (
            "payload not an object",
            "payload is not a JSON object",
            raw_token(&es_header, &json!(["iss", ISS]), &good_es_sig),
            now(),
        ),
        (
            "unknown kid",
            "not among the issuer's keys",
            sign(Algorithm::ES256, Some("nope"), &k.es.encoding(), &claims()),
            now(),
        ),
        (
            "crit header",
            "crit",
            raw_token(
                &json!({"alg": "ES256", "kid": "es", "crit": ["exp"]}),
                &claims(),
                &good_es_sig,
            ),
            now(),
        ),
    ];
    for (case, reason, token, at) in cases {
        let why = assert_rejected(v.verify(&token, at).await, case);
        assert!(why.contains(reason), "{case}: {why}");
        // No part of the token leaks into the message.
        for part in token.split('.').filter(|p| p.len() >= 4) {
            assert!(!why.contains(part), "{case}: message quotes the token");
        }
        assert!(
            !why.contains("repo:"),
            "{case}: message quotes a claim: {why}"
        );
    }
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_30s() {
    let server = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&server.url())]);
    v.verify(&es256(&claims()), now()).await.unwrap();
    assert_eq!(server.fetches(), 1);

    let new_key = EsKey::generate();
    let with_new_kid = |lifetime: i64| {
        let claims = claims_with(|c| {
            c.insert("exp".into(), json!(T0 + lifetime));
        });
        sign(Algorithm::ES256, Some("new"), &new_key.encoding(), &claims)
    };
    let token = with_new_kid(3600);

    // Unknown kid, keys fetched just now: no refetch within 30 s.
    assert_rejected(v.verify(&token, now().plus_secs(10)).await, "unknown kid");
    assert_rejected(v.verify(&token, now().plus_secs(29)).await, "unknown kid");
    assert_eq!(server.fetches(), 1);

    // 30 s on, one refetch; then none again for 30 s.
    assert_rejected(v.verify(&token, now().plus_secs(30)).await, "unknown kid");
    assert_eq!(server.fetches(), 2);
    for dt in [31, 40, 59] {
        assert_rejected(v.verify(&token, now().plus_secs(dt)).await, "unknown kid");
    }
    assert_eq!(server.fetches(), 2);

    // The IdP rotates in the new key: found on the next allowed refetch.
    server.set_body(json!({ "keys": [keys().es.jwk("es"), new_key.jwk("new")] }).to_string());
    assert_rejected(
        v.verify(&token, now().plus_secs(50)).await,
        "not yet refetched",
    );
    v.verify(&token, now().plus_secs(60)).await.unwrap();
    assert_eq!(server.fetches(), 3);
    // Known kids never trigger fetches while the cache is fresh.
    v.verify(&es256(&claims()), now().plus_secs(61))
        .await
        .unwrap();
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn keys_are_cached_for_jwks_cache() {
    let server = JwksServer::start(&jwks()).await;
    let mut cfg = config(&server.url());
    cfg.jwks_cache = Some("2m".to_owned());
    cfg.leeway = Some("0s".to_owned());
    let v = verifier(&[cfg]);
    let long = es256(&claims_with(|c| {
        c.insert("exp".into(), json!(T0 + 3600));
        c.remove("nbf");
        c.remove("iat");
    }));
    v.verify(&long, now()).await.unwrap();
    v.verify(&long, now().plus_secs(119)).await.unwrap();
    assert_eq!(server.fetches(), 1);
    v.verify(&long, now().plus_secs(120)).await.unwrap();
    assert_eq!(server.fetches(), 2);
    // The clock going back does not make the cache fresh forever.
    v.verify(&long, now().plus_secs(-10)).await.unwrap();
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn concurrent_verifications_fetch_once() {
    let server = JwksServer::start(&jwks()).await;
    server.state.delay_ms.store(200, Ordering::SeqCst);
    let v = Arc::new(verifier(&[config(&server.url())]));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let v = v.clone();
        let token = if i % 2 == 0 {
            es256(&claims())
        } else {
            rs256(&claims())
        };
        tasks.spawn(async move { v.verify(&token, now()).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(server.fetches(), 1);

    // Likewise for a burst of unknown kids once the 30 s have passed.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let v = v.clone();
        let token = sign(
            Algorithm::ES256,
            Some("nope"),
            &keys().es.encoding(),
            &claims_with(|c| {
                c.insert("exp".into(), json!(T0 + 3600));
            }),
        );
        tasks.spawn(async move { v.verify(&token, now().plus_secs(45)).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert!(matches!(result.unwrap(), Err(AuthError::Rejected(_))));
    }
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn unreachable_or_broken_jwks_is_unavailable() {
    // Nothing listens on a port just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let v = verifier(&[config(&format!("http://{closed}/jwks.json"))]);
    match v.verify(&es256(&claims()), now()).await {
        Err(AuthError::Unavailable(why)) => assert!(why.contains(ISS), "{why}"),
        other => panic!("server down: {other:?}"),
    }

    let oversized = json!({ "keys": [], "padding": "x".repeat(MAX_JWKS_BYTES) }).to_string();
    let cases: Vec<(&str, u16, String)> = vec![
        ("HTTP 500", 500, jwks().to_string()),
        ("HTTP 404", 404, jwks().to_string()),
        ("not JSON", 200, "<html>hello</html>".to_owned()),
        ("JSON without keys", 200, "{}".to_owned()),
        ("keys not an array", 200, r#"{"keys": {}}"#.to_owned()),
        ("larger than 256 KiB", 200, oversized),
    ];
    for (case, status, body) in cases {
        let server = JwksServer::start(&jwks()).await;
        server.set_status(status);
        server.set_body(body);
        let v = verifier(&[config(&server.url())]);
        let result = v.verify(&es256(&claims()), now()).await;
        assert!(
            matches!(result, Err(AuthError::Unavailable(_))),
            "{case}: {result:?}"
        );
        // Failing again at once does not hit the server again…
        let result = v.verify(&es256(&claims()), now().plus_secs(1)).await;
        assert!(matches!(result, Err(AuthError::Unavailable(_))), "{case}");
        assert_eq!(server.fetches(), 1, "{case}");
        // …but a few seconds later it is tried again, and recovers.
        server.set_status(200);
        server.set_body(jwks().to_string());
        v.verify(&es256(&claims()), now().plus_secs(5))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 2, "{case}");
    }
}

#[tokio::test]
async fn stale_keys_are_used_when_a_refresh_fails() {
    let server = JwksServer::start(&jwks()).await;
    let v = verifier(&[config(&server.url())]);
    let long = es256(&claims_with(|c| {
        c.insert("exp".into(), json!(T0 + 3600));
    }));
    v.verify(&long, now()).await.unwrap();
    server.set_status(503);
    // The 5 minutes are up: a refresh is tried, fails, old keys serve.
    v.verify(&long, now().plus_secs(301)).await.unwrap();
    assert_eq!(server.fetches(), 2);
    // Not retried on every request.
    v.verify(&long, now().plus_secs(302)).await.unwrap();
    v.verify(&long, now().plus_secs(330)).await.unwrap();
    assert_eq!(server.fetches(), 2);
    // Retried after 30 s; still failing, still served.
    v.verify(&long, now().plus_secs(331)).await.unwrap();
    assert_eq!(server.fetches(), 3);
    // Back up: fresh keys.
    server.set_status(200);
    v.verify(&long, now().plus_secs(361)).await.unwrap();
    assert_eq!(server.fetches(), 4);
    v.verify(&long, now().plus_secs(362)).await.unwrap();
    assert_eq!(server.fetches(), 4);
}

#[tokio::test]
async fn file_jwks_relative_to_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks().to_string()).unwrap();
    let v = OidcVerifier::new(&[config("file:jwks.json")], dir.path(), http_client()).unwrap();
    v.verify(&rs256(&claims()), now()).await.unwrap();
    // Cached: removing the file changes nothing within the TTL…
    std::fs::remove_file(dir.path().join("jwks.json")).unwrap();
    v.verify(&es256(&claims()), now().plus_secs(10))
        .await
        .unwrap();

    // …and a missing file with nothing cached is Unavailable.
    let v = OidcVerifier::new(&[config("file:jwks.json")], dir.path(), http_client()).unwrap();
    let result = v.verify(&es256(&claims()), now()).await;
    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}

#[test]
fn unusable_jwks_keys_are_skipped() {
    let k = keys();
    let mut small_rsa = k.rs.jwk("small");
    small_rsa["n"] = json!(b64(&k.rs.n[..128]));
    let mut off_curve = k.es.jwk("off");
    off_curve["y"] = json!(b64(&[7u8; 32]));
    let body = json!({ "keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "p384"},
        "not an object",
        k.rs.jwk("rs"),
        json!({"kty": "RSA", "alg": "PS256", "kid": "ps", "n": b64(&k.rs.n), "e": b64(&k.rs.e)}),
        json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": b64(&k.rs.n), "e": b64(&k.rs.e)}),
        json!({"kty": "EC", "alg": "ES384", "crv": "P-256", "kid": "es384",
               "x": b64(&k.es.point[1..33]), "y": b64(&k.es.point[33..])}),
        json!({"kty": "EC", "crv": "P-256", "key_ops": ["encrypt"], "kid": "ops",
               "x": b64(&k.es.point[1..33]), "y": b64(&k.es.point[33..])}),
        json!({"kty": "RSA", "kid": "padded", "n": format!("{}==", b64(&k.rs.n)), "e": b64(&k.rs.e)}),
        json!({"kty": "RSA", "kid": "even-e", "n": b64(&k.rs.n), "e": b64(&[2])}),
        small_rsa,
        off_curve,
        {"kty": "EC", "crv": "P-256", "kid": 5},
        k.es.jwk("es"),
    ]})
    .to_string();
    let keys = parse_jwks(body.as_bytes()).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, [Some("rs"), Some("es")]);
    assert_eq!(keys[0].alg, Algorithm::RS256);
    assert_eq!(keys[1].alg, Algorithm::ES256);
    // Keys without `alg`/`use` are fine, and a leading zero in `n` is
    // tolerated.
    let mut n = vec![0u8];
    n.extend_from_slice(&k.rs.n);
    let plain = json!({"keys": [
        {"kty": "RSA", "n": b64(&n), "e": b64(&k.rs.e)},
        {"kty": "EC", "crv": "P-256", "x": b64(&k.es.point[1..33]), "y": b64(&k.es.point[33..])},
    ]});
    assert_eq!(parse_jwks(plain.to_string().as_bytes()).unwrap().len(), 2);
    assert!(parse_jwks(b"[]").is_err());
}

#[tokio::test]
async fn a_jwk_alg_restricts_the_key() {
    // The RSA key is published for PS256 only: an RS256 token naming it
    // finds no usable key.
    let k = keys();
    let server = JwksServer::start(&json!({ "keys": [
        {"kty": "RSA", "alg": "PS256", "kid": "rs", "n": b64(&k.rs.n), "e": b64(&k.rs.e)},
    ]}))
    .await;
    let v = verifier(&[config(&server.url())]);
    assert_rejected(v.verify(&rs256(&claims()), now()).await, "PS256-only key");
}

#[test]
fn configuration_is_checked() {
    let ok = |jwks: &str| OidcVerifier::new(&[config(jwks)], Path::new("/etc"), http_client());
    for jwks in [
        "https://token.actions.githubusercontent.com/.well-known/jwks",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://LOCALHOST/jwks.json",
        "http://[::1]:9000/jwks",
        "file:jwks.json",
        "file:/etc/lockstep/jwks.json",
    ] {
        ok(jwks).unwrap_or_else(|e| panic!("{jwks}: {e}"));
    }
    let v = ok("file:keys/jwks.json").unwrap();
    match &v.issuers[ISS].source {
        JwksSource::File(path) => assert_eq!(path, Path::new("/etc/keys/jwks.json")),
        other => panic!("{other:?}"),
    }

    let with = |change: fn(&mut OidcIssuerConfig)| {
        let mut c = config("https://ci.example/jwks");
        change(&mut c);
        vec![c]
    };
    let cases: Vec<(&str, Vec<OidcIssuerConfig>)> = vec![
        ("empty issuer", with(|c| c.issuer = String::new())),
        ("empty audience", with(|c| c.audience = " ".into())),
        (
            "http to a remote host",
            with(|c| c.jwks = "http://ci.example/jwks".into()),
        ),
        (
            "http to a LAN address",
            with(|c| c.jwks = "http://10.0.0.1/jwks".into()),
        ),
        ("ftp", with(|c| c.jwks = "ftp://ci.example/jwks".into())),
        ("not a URL", with(|c| c.jwks = "jwks.json".into())),
        ("empty file", with(|c| c.jwks = "file:".into())),
        (
            "credentials in URL",
            with(|c| c.jwks = "https://u:p@ci.example/jwks".into()),
        ),
        (
            "bad jwks_cache",
            with(|c| c.jwks_cache = Some("five minutes".into())),
        ),
        (
            "zero jwks_cache",
            with(|c| c.jwks_cache = Some("0s".into())),
        ),
        ("bad leeway", with(|c| c.leeway = Some("60".into()))),
        ("huge leeway", with(|c| c.leeway = Some("1h".into()))),
        (
            "issuer twice",
            vec![
                config("https://a.example/jwks"),
                config("https://b.example/jwks"),
            ],
        ),
    ];
    for (case, configs) in cases {
        match OidcVerifier::new(&configs, Path::new("/etc"), http_client()) {
            Err(AuthError::Config(why)) => {
                if case != "empty issuer" {
                    assert!(why.contains(ISS), "{case}: message names the issuer: {why}");
                }
            }
            other => panic!("{case}: expected Config, got {other:?}"),
        }
    }
}

#[test]
fn config_parses_from_toml_and_refuses_unknown_fields() {
    #[derive(serde::Deserialize)]
    struct File {
        auth: Auth,
    }
    #[derive(serde::Deserialize)]
    struct Auth {
        oidc: Vec<OidcIssuerConfig>,
    }
    let file: File = toml::from_str(
        r#"
        [[auth.oidc]]
        issuer = "https://token.actions.githubusercontent.com"
        audience = "lockstep"
        jwks = "https://token.actions.githubusercontent.com/.well-known/jwks"
        jwks_cache = "10m"
        leeway = "30s"
        "#,
    )
    .unwrap();
    assert_eq!(file.auth.oidc[0].jwks_cache.as_deref(), Some("10m"));
    let unknown = toml::from_str::<File>(
        r#"
        [[auth.oidc]]
        issuer = "x"
        audience = "y"
        jwks = "file:z"
        algorithms = ["HS256"]
        "#,
    );
    assert!(unknown.is_err());
}

#[test]
fn looks_like_jwt_is_syntactic() {
    for (token, expected) in [
        ("eyJh.eyJz.c2ln", true),
        ("eyJh.eyJz.", true),
        ("a-_b.C9d.e_-f", true),
        ("lst_abcdef", false),
        ("a.b", false),
        ("a.b.c.d", false),
        (".b.c", false),
        ("a..c", false),
        ("a.b.c=", false),
        ("a+b.c.d", false),
        ("a b.c.d", false),
        ("", false),
    ] {
        assert_eq!(OidcVerifier::looks_like_jwt(token), expected, "{token:?}");
    }
}
