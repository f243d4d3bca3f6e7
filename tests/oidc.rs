//! OIDC verification end to end: a test issuer over loopback HTTP, tokens
//! shaped like GitHub Actions' ID tokens, the verifier as lockstep builds it.

#[path = "common/oidc.rs"]
mod oidc;

use std::path::Path;

use lockstep::auth::AuthError;
use lockstep::auth::oidc::{OidcIssuerConfig, OidcVerifier};
use lockstep::clock::{Clock, SystemClock};
use oidc::{TestIssuer, http_client};
use serde_json::json;

const AUDIENCE: &str = "https://lockstep.example";
const SUB: &str = "repo:acme/app:ref:refs/heads/main";

fn verifier(issuers: &[&TestIssuer]) -> OidcVerifier {
    let configs: Vec<OidcIssuerConfig> = issuers
        .iter()
        .map(|i| OidcIssuerConfig {
            issuer: i.issuer(),
            audience: AUDIENCE.to_owned(),
            jwks: i.jwks_url(),
            jwks_cache: Some("5m".to_owned()),
            leeway: Some("30s".to_owned()),
        })
        .collect();
    OidcVerifier::new(&configs, Path::new("."), http_client()).unwrap()
}

/// The claims GitHub Actions puts in its ID tokens, besides the standard ones.
fn github_claims() -> serde_json::Value {
    json!({
        "jti": "6f4a0d5e-3c1b-4f5e-9b5e-1d2c3b4a5f60",
        "ref": "refs/heads/main",
        "sha": "d6c1a4b9e2f3a5c7b8d9e0f1a2b3c4d5e6f7a8b9",
        "repository": "acme/app",
        "repository_owner": "acme",
        "repository_visibility": "private",
        "run_id": "8812345678",
        "run_number": "42",
        "run_attempt": "1",
        "actor": "octocat",
        "workflow": "release",
        "event_name": "push",
        "ref_type": "branch",
        "job_workflow_ref": "acme/app/.github/workflows/release.yml@refs/heads/main",
        "runner_environment": "github-hosted",
    })
}

#[tokio::test]
async fn a_github_actions_shaped_token_is_accepted() {
    let idp = TestIssuer::start().await;
    let v = verifier(&[&idp]);
    let now = SystemClock.now();

    for token in [
        idp.token(SUB, AUDIENCE, github_claims(), 300),
        idp.token_rs256(SUB, AUDIENCE, github_claims(), 300),
    ] {
        assert!(OidcVerifier::looks_like_jwt(&token));
        let caller = v.verify(&token, now).await.unwrap();
        assert_eq!(caller.identity, format!("oidc:{}:{SUB}", idp.issuer()));
        assert_eq!(caller.claims["repository"], json!("acme/app"));
        assert_eq!(caller.claims["ref"], json!("refs/heads/main"));
        assert_eq!(caller.claims["workflow"], json!("release"));
        assert_eq!(caller.claims["sub"], json!(SUB));
        assert_eq!(caller.claims["aud"], json!(AUDIENCE));
    }
}

#[tokio::test]
async fn refusals() {
    let idp = TestIssuer::start().await;
    let other = TestIssuer::start().await;
    let v = verifier(&[&idp]);
    let now = SystemClock.now();
    let forged_claims = json!({
        "iss": idp.issuer(), "aud": AUDIENCE, "sub": SUB,
        "iat": now.unix(), "exp": now.unix() + 300,
    });

    let cases = [
        (
            "wrong audience",
            idp.token(SUB, "https://elsewhere.example", github_claims(), 300),
        ),
        ("expired", idp.token(SUB, AUDIENCE, github_claims(), -3600)),
        (
            "issuer not configured",
            other.token(SUB, AUDIENCE, github_claims(), 300),
        ),
        (
            "claims our issuer, signed by another's key",
            other.sign_claims("ES256", Some("es"), forged_claims.clone()),
        ),
        (
            "alg none",
            idp.sign_claims("none", Some("es"), forged_claims.clone()),
        ),
        (
            "HS256 keyed with the RSA public key",
            idp.sign_claims("HS256", Some("rs"), forged_claims.clone()),
        ),
        (
            "RS256 header naming the EC key",
            idp.sign_claims("RS256", Some("es"), forged_claims.clone()),
        ),
        (
            "unknown kid",
            idp.sign_claims("ES256", Some("rotated-away"), forged_claims.clone()),
        ),
    ];
    for (case, token) in cases {
        match v.verify(&token, now).await {
            Err(AuthError::Rejected(why)) => {
                assert!(!why.contains(&token), "{case}: message quotes the token")
            }
            other => panic!("{case}: expected Rejected, got {other:?}"),
        }
    }

    // The issuer's JWKS gone (server stopped, nothing cached): Unavailable.
    let gone = TestIssuer::start().await;
    let v = verifier(&[&gone]);
    let token = gone.token(SUB, AUDIENCE, github_claims(), 300);
    drop(gone);
    tokio::task::yield_now().await;
    match v.verify(&token, now).await {
        Err(AuthError::Unavailable(_)) => {}
        other => panic!("issuer down: expected Unavailable, got {other:?}"),
    }
}
