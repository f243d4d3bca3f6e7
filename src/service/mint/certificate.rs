//! Certificates: a CSR's key certified for the session, subject and SANs
//! from the session.

use std::net::IpAddr;
use std::sync::Arc;

use x509_cert::serial_number::SerialNumber;

use super::super::{IssuedCredential, Service, ServiceError};
use super::Minter;
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::sessions::{CredentialFacts, CredentialKind, Profile, Session, SessionId};
use crate::store::{Finish, NewCredential};
use crate::x509::csr::{VerifiedCsr, parse_and_verify};
use crate::x509::extension::ApprovalEvidence;
use crate::x509::{
    CertProfile, IssuedCertificate, Issuer, LeafSpec, RevocationUrls, San, SessionEvidence,
    SubjectName, random_serial,
};

/// A certificate about to be minted: the CSR checked, the serial drawn.
struct CertificateMinter {
    issuer: Arc<Issuer>,
    csr: VerifiedCsr,
    serial: SerialNumber,
    profile: CertProfile,
    organization: String,
    revocation: Option<RevocationUrls>,
}

impl Minter for CertificateMinter {
    type Output = IssuedCertificate;

    fn credential(&self, _session: &Session) -> NewCredential {
        NewCredential {
            serial: hex::encode(self.serial.as_bytes()),
            kind: CredentialKind::Certificate,
            // The certificate's own profile: an ssh-user session's
            // gateway certificate is recorded as mtls-client.
            profile: match self.profile {
                CertProfile::MtlsClient => Profile::MtlsClient,
                CertProfile::CodeSigning => Profile::CodeSigning,
            },
            counted: true,
            issuer: Some(self.issuer.fingerprint()),
        }
    }

    fn sign(
        self,
        session: &Session,
        not_after: Timestamp,
        now: Timestamp,
    ) -> Result<(IssuedCertificate, Finish), ServiceError> {
        let spec = self.leaf_spec(session, not_after);
        let issued = self
            .issuer
            .mint_with_serial(&self.csr, &spec, self.serial.clone(), now)?;
        let finish = Finish::Issued {
            der: Some(issued.der.clone()),
            facts: CredentialFacts::Certificate {
                key_sha256: hex::encode(issued.key_fingerprint),
            },
        };
        Ok((issued, finish))
    }
}

impl CertificateMinter {
    /// What a session's certificate says: subject and SANs from the
    /// session, never from the CSR.
    ///
    /// - subject: `CN=<resource>` (or the session id when the resource is
    ///   longer than 64 characters), `OU=<tenant>` when there is one,
    ///   `O=<[server] organization>`;
    /// - SANs: `urn:lockstep:session:<id>`, `urn:lockstep:resource:<resource>`
    ///   and `urn:lockstep:requester:<identity>` (percent-encoded), after
    ///   the build signer URI of a CI requester's code-signing certificate;
    /// - Fulcio's CI extensions on such a certificate;
    /// - the session extension with the request hash and the approvers;
    /// - the CRL and OCSP locations once the public URL is known.
    fn leaf_spec(&self, session: &Session, not_after: Timestamp) -> LeafSpec {
        let profile = self.profile;
        let r = &session.request;
        let common_name = if r.resource.chars().count() <= 64 {
            r.resource.clone()
        } else {
            session.id.to_string()
        };
        // A CI requester's code-signing certificate names its build first
        // (the identity Sigstore verifiers match) and carries Fulcio's
        // extensions.
        let build = session
            .ci
            .clone()
            .filter(|_| profile == CertProfile::CodeSigning);
        let mut sans = Vec::with_capacity(4);
        if let Some(uri) = build.as_ref().and_then(crate::x509::fulcio::signer_uri) {
            sans.push(San::Uri(uri));
        }
        sans.extend([
            San::Uri(format!("urn:lockstep:session:{}", session.id)),
            San::Uri(crate::x509::names::resource_uri(&r.resource)),
            San::Uri(format!(
                "urn:lockstep:requester:{}",
                crate::x509::names::urn_encode(&r.requester)
            )),
        ]);
        LeafSpec {
            subject: SubjectName {
                common_name,
                organization: Some(self.organization.clone()),
                organizational_unit: r.tenant.clone(),
                country: None,
            },
            sans,
            profile,
            not_after,
            session: SessionEvidence {
                session_id: session.id.to_string(),
                approval: Some(ApprovalEvidence {
                    request_hash: session.request_hash,
                    approvers: session.approvals.iter().map(|v| v.by.clone()).collect(),
                    opened_at: session.opened_at.unwrap_or(session.created_at),
                }),
                connections: session.rules.connections,
                modbus_functions: session.rules.modbus_functions.clone(),
                artifact_digest: r.request_digest.clone(),
                break_glass: r.break_glass,
            },
            revocation: self.revocation.clone(),
            build,
        }
    }
}

impl Service {
    /// Mints a certificate for the CSR's key, for the requester of an open
    /// session, under its credential limit.
    pub async fn certificate(
        &self,
        caller: &Caller,
        id: &SessionId,
        csr: Vec<u8>,
        peer: Option<IpAddr>,
    ) -> Result<IssuedCredential, ServiceError> {
        const ACTION: &str = "certificate";
        let session = self.mintable(caller, id, ACTION).await?;
        let profile = match session.request.profile {
            Profile::SshUser if session.rules.gateway_certificates => Some(CertProfile::MtlsClient),
            p => p.certificate(),
        };
        let Some(profile) = profile else {
            let err = ServiceError::Forbidden(format!(
                "this session's profile is {}; request a session with a certificate profile",
                session.request.profile
            ));
            return self.refuse(caller, Some(id), ACTION, err).await;
        };
        // Check the CSR before taking a slot: a bad CSR costs nothing.
        // One signature check on a size-limited body: tens of
        // microseconds, cheaper here than a hop to another thread.
        let csr = match parse_and_verify(&csr) {
            Ok(csr) => csr,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e.into()).await,
        };
        let minter = CertificateMinter {
            issuer: self.issuer.clone(),
            csr,
            serial: random_serial()?,
            profile,
            organization: self.organization.clone(),
            revocation: self.revocation_urls(),
        };
        let issued = self.mint(caller, ACTION, session, peer, minter).await?;
        tracing::info!(session = %id, serial = %issued.serial, not_after = %issued.not_after, "certificate issued");
        Ok(IssuedCredential {
            session: id.clone(),
            certificate: issued.pem()?,
            chain: self.issuer.chain_pem().to_owned(),
            serial: issued.serial,
            not_after: issued.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::x509::names::urn_encode;

    #[test]
    fn urns_keep_identities_readable_and_valid() {
        assert_eq!(urn_encode("token:alice"), "token:alice");
        assert_eq!(
            urn_encode("oidc:https://idp.example:repo:acme/app ref"),
            "oidc:https://idp.example:repo:acme/app%20ref"
        );
        assert_eq!(urn_encode("ü"), "%C3%BC");
    }
}
