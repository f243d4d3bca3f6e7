//! The CI identity of a code-signing certificate in the extensions
//! Sigstore verifiers read: Fulcio's arc `1.3.6.1.4.1.57264.1`, each value
//! a DER UTF8String as Fulcio documents (`docs/oid-info.md`), formed from
//! the GitHub Actions claims of the requester's OIDC token the way Fulcio
//! forms them for github.com. Only claims the token had are written.

use der::Encode;
use der::asn1::{ObjectIdentifier, OctetString, Utf8StringRef};
use x509_cert::ext::Extension;

use super::X509Error;
use crate::sessions::CiIdentity;

/// Where GitHub's repository, workflow and run URIs live.
const GITHUB: &str = "https://github.com";

/// The claims a session keeps of a CI requester's token: what the
/// extensions below are made of (and `environment`, which policies pin).
pub const CI_CLAIMS: [&str; 16] = [
    "job_workflow_ref",
    "job_workflow_sha",
    "runner_environment",
    "repository",
    "sha",
    "ref",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "workflow_ref",
    "workflow_sha",
    "event_name",
    "run_id",
    "run_attempt",
    "repository_visibility",
    "environment",
];

/// `1.3.6.1.4.1.57264.1.<n>`.
fn fulcio(n: u32) -> Result<ObjectIdentifier, X509Error> {
    ObjectIdentifier::new(&format!("1.3.6.1.4.1.57264.1.{n}"))
        .map_err(|e| X509Error::Encoding(e.to_string()))
}

/// The build signer URI (`https://github.com/<job_workflow_ref>`): the
/// identity Sigstore verifiers match, written as the certificate's first
/// URI SAN.
pub fn signer_uri(ci: &CiIdentity) -> Option<String> {
    ci.claims
        .get("job_workflow_ref")
        .map(|r| format!("{GITHUB}/{r}"))
}

/// The Fulcio extensions for `ci`, in OID order.
pub fn extensions(ci: &CiIdentity) -> Result<Vec<Extension>, X509Error> {
    let claim = |name: &str| ci.claims.get(name).cloned();
    let uri = |name: &str| claim(name).map(|v| format!("{GITHUB}/{v}"));
    let run = match (claim("repository"), claim("run_id"), claim("run_attempt")) {
        (Some(repo), Some(id), Some(attempt)) => Some(format!(
            "{GITHUB}/{repo}/actions/runs/{id}/attempts/{attempt}"
        )),
        _ => None,
    };
    let values = [
        (8, Some(ci.issuer.clone())),
        (9, signer_uri(ci)),
        (10, claim("job_workflow_sha")),
        (11, claim("runner_environment")),
        (12, uri("repository")),
        (13, claim("sha")),
        (14, claim("ref")),
        (15, claim("repository_id")),
        (16, uri("repository_owner")),
        (17, claim("repository_owner_id")),
        (18, uri("workflow_ref")),
        (19, claim("workflow_sha")),
        (20, claim("event_name")),
        (21, run),
        (22, claim("repository_visibility")),
    ];
    let mut out = Vec::new();
    for (n, value) in values {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        let text = Utf8StringRef::new(&value)?;
        out.push(Extension {
            extn_id: fulcio(n)?,
            critical: false,
            extn_value: OctetString::new(text.to_der()?)?,
        });
    }
    Ok(out)
}

/// The issuer a certificate's Fulcio extension `.8` names, if it has one.
pub fn issuer_of(cert: &x509_cert::Certificate) -> Option<String> {
    use der::Decode;
    let oid = fulcio(8).ok()?;
    let ext = cert
        .tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == oid)?;
    der::asn1::Utf8StringRef::from_der(ext.extn_value.as_bytes())
        .ok()
        .map(|s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_claims_become_fulcio_uris_and_strings() {
        let mut ci = CiIdentity {
            issuer: "https://token.actions.githubusercontent.com".into(),
            ..Default::default()
        };
        for (k, v) in [
            ("repository", "acme/app"),
            (
                "job_workflow_ref",
                "acme/app/.github/workflows/release.yml@refs/tags/v1",
            ),
            ("run_id", "42"),
            ("run_attempt", "1"),
            ("sha", "abc"),
        ] {
            ci.claims.insert(k.into(), v.into());
        }
        let exts = extensions(&ci).unwrap();
        let ids: Vec<String> = exts.iter().map(|e| e.extn_id.to_string()).collect();
        assert_eq!(
            ids,
            ["8", "9", "12", "13", "21"].map(|n| format!("1.3.6.1.4.1.57264.1.{n}"))
        );
        let run = Utf8StringRef::from_der(exts[4].extn_value.as_bytes()).unwrap();
        assert_eq!(
            run.as_str(),
            "https://github.com/acme/app/actions/runs/42/attempts/1"
        );
        assert_eq!(
            signer_uri(&ci).unwrap(),
            "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1"
        );
    }

    use der::Decode;
}
