//! Minting for open sessions: certificates from CSRs and session-bound
//! tokens. Both take a slot in the store (with their serial or `jti`)
//! before the device signs, re-check the policy's conditions, and are
//! withheld if the session closed while they were being signed.

use std::net::IpAddr;

use serde::Serialize;

use super::{IssuedCredential, Relation, Service, ServiceError};
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::sessions::{
    Actor, Profile, RevocationReason, Session, SessionError, SessionId, SessionOp, format_hash,
};
use crate::store::{CredentialKind, Finish, Finished, NewCredential, Reservation};
use crate::tokens::{Confirmation, TokenClaims, certificate_thumbprint, new_jti};
use crate::x509::csr::parse_and_verify;
use crate::x509::extension::ApprovalEvidence;
use crate::x509::{LeafSpec, San, SessionEvidence, SubjectName, random_serial};

/// The identity lockstep acts as when a policy condition revokes a session.
const POLICY_ACTOR: &str = "lockstep:policy";

/// What a token is asked for with.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// The audience (default: the session's resource).
    pub audience: Option<String>,
    /// A certificate of this session (PEM) to bind the token to.
    pub certificate: Option<String>,
    /// Or the certificate's RFC 8705 thumbprint (base64url SHA-256).
    pub x5t_s256: Option<String>,
}

/// A token handed out for a session. `Debug` leaves the token out.
#[derive(Clone, Serialize)]
pub struct IssuedToken {
    /// The session.
    pub session: SessionId,
    /// The JWT.
    pub token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Its `jti`.
    pub jti: String,
    /// Its audience.
    pub audience: String,
    /// `exp` (= the session's `closes_at`).
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("session", &self.session)
            .field("jti", &self.jti)
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// The requester's open session, for minting.
    async fn mintable(
        &self,
        caller: &Caller,
        id: &SessionId,
        action: &str,
    ) -> Result<Session, ServiceError> {
        let (session, relation) = self.visible(caller, id, action).await?;
        if relation != Relation::Requester {
            let err: ServiceError = SessionError::NotRequester("mint a credential for").into();
            return self.refuse(caller, Some(id), action, err).await;
        }
        Ok(session)
    }

    /// Checks the policy's conditions again; a failed one revokes the
    /// session (its credentials with it) and refuses the call.
    async fn check_conditions(
        &self,
        caller: &Caller,
        session: &Session,
        peer: Option<IpAddr>,
        action: &str,
    ) -> Result<(), ServiceError> {
        let c = &session.rules.conditions;
        let mut failed = None;
        if !c.source_networks.is_empty() {
            let inside = peer.is_some_and(|ip| {
                c.source_networks
                    .iter()
                    .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
                    .any(|n| n.contains(&ip))
            });
            if !inside {
                failed = Some(match peer {
                    Some(ip) => format!("caller address {ip} is outside the allowed networks"),
                    None => "the caller's address is unknown".to_owned(),
                });
            }
        }
        if c.requester_token_valid
            && let Some(exp) = session.requester_credential_expires
            && self.now() >= exp
        {
            failed = Some("the token the requester asked with has expired".to_owned());
        }
        let Some(why) = failed else {
            return Ok(());
        };
        let op = SessionOp::Revoke {
            by: POLICY_ACTOR.to_owned(),
            actor: Actor::Operator,
            note: format!("condition failed: {why}"),
            reason: Some(RevocationReason::PrivilegeWithdrawn),
        };
        if let Err(e) = self.store.apply(&session.id, op, self.now()).await {
            tracing::error!(session = %session.id, error = %e, "could not revoke after a failed condition");
        }
        tracing::warn!(session = %session.id, reason = %why, "policy condition failed: session revoked");
        self.refuse(
            caller,
            Some(&session.id),
            action,
            ServiceError::ConditionFailed(why),
        )
        .await
    }

    /// Takes a slot for a credential.
    async fn reserve(
        &self,
        caller: &Caller,
        id: &SessionId,
        action: &str,
        credential: NewCredential,
    ) -> Result<(Session, Reservation, Timestamp), ServiceError> {
        // One reading of the clock decides the slot and dates the
        // credential (notBefore, iat): a mint allowed one second before
        // closes_at is valid from then, never refused for the next second.
        let at = self.now();
        let (applied, reservation) = match self.store.reserve_credential(id, credential, at).await {
            Ok(r) => r,
            Err(e) => return self.refuse(caller, Some(id), action, e.into()).await,
        };
        match (applied.result, reservation) {
            (Ok(_), Some(r)) => Ok((applied.session, r, at)),
            (Err(e), _) => self.refuse(caller, Some(id), action, e.into()).await,
            (Ok(_), None) => Err(ServiceError::Internal("no reservation".into())),
        }
    }

    /// Records how signing went: the slot back on failure; the credential
    /// stored, or withheld if the session closed meanwhile.
    async fn finish<T>(
        &self,
        caller: &Caller,
        action: &str,
        reservation: &Reservation,
        signed: Result<(T, Finish), ServiceError>,
    ) -> Result<T, ServiceError> {
        let id = &reservation.session;
        let (value, finish) = match signed {
            Ok(v) => v,
            Err(e) => {
                self.store
                    .finish_credential(reservation, Finish::Failed, self.now())
                    .await?;
                return self.refuse(caller, Some(id), action, e).await;
            }
        };
        match self
            .store
            .finish_credential(reservation, finish, self.now())
            .await?
        {
            Finished::Withheld(reason) => {
                let err: ServiceError = SessionError::Closed(reason).into();
                self.refuse(caller, Some(id), action, err).await
            }
            Finished::Issued | Finished::Released => Ok(value),
        }
    }

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
        let Some(cert_profile) = session.request.profile.certificate() else {
            let err = ServiceError::Forbidden(
                "this session is for tokens; request a session with a certificate profile".into(),
            );
            return self.refuse(caller, Some(id), ACTION, err).await;
        };
        // Check the CSR before taking a slot: a bad CSR costs nothing.
        // One signature check on a size-limited body: tens of
        // microseconds, cheaper here than a hop to another thread.
        let csr = match parse_and_verify(&csr) {
            Ok(csr) => csr,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e.into()).await,
        };
        self.check_conditions(caller, &session, peer, ACTION)
            .await?;
        let serial = random_serial()?;
        let new = NewCredential {
            serial: hex::encode(serial.as_bytes()),
            kind: CredentialKind::Certificate,
            profile: session.request.profile,
            counted: true,
        };
        let (session, reservation, now) = self.reserve(caller, id, ACTION, new).await?;
        let spec = self.leaf_spec(&session, reservation.not_after, cert_profile);
        let issuer = self.issuer.clone();
        let signed = self
            .device
            .run(move || issuer.mint_with_serial(&csr, &spec, serial, now))
            .await
            .map_err(ServiceError::from)
            .and_then(|r| r.map_err(ServiceError::from))
            .map(|issued| {
                let finish = Finish::Issued {
                    der: Some(issued.der.clone()),
                    key_sha256: hex::encode(issued.key_fingerprint),
                };
                (issued, finish)
            });
        let issued = self.finish(caller, ACTION, &reservation, signed).await?;
        tracing::info!(session = %id, serial = %issued.serial, not_after = %issued.not_after, "certificate issued");
        Ok(IssuedCredential {
            session: id.clone(),
            certificate: issued.pem()?,
            chain: self.issuer.chain_pem().to_owned(),
            serial: issued.serial,
            not_after: issued.not_after,
        })
    }

    /// Mints a session-bound token (JWT) for the requester of an open
    /// session whose policy allows tokens; `exp` is the session's
    /// `closes_at`. Bound to one of the session's certificates when asked.
    pub async fn token(
        &self,
        caller: &Caller,
        id: &SessionId,
        request: TokenRequest,
        peer: Option<IpAddr>,
    ) -> Result<IssuedToken, ServiceError> {
        const ACTION: &str = "token";
        let session = self.mintable(caller, id, ACTION).await?;
        let Some(signer) = self.tokens.clone() else {
            let err = ServiceError::TokensNotConfigured;
            return self.refuse(caller, Some(id), ACTION, err).await;
        };
        if !(session.rules.tokens_allowed || session.request.profile == Profile::Token) {
            let err = ServiceError::Forbidden(
                "the policy of this session's resource does not allow tokens".into(),
            );
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        let resource = session.request.resource.clone();
        let audience = request.audience.clone().unwrap_or_else(|| resource.clone());
        if audience != resource && !session.rules.audiences.contains(&audience) {
            // The message names the audience, shortened and escaped.
            let shown: String = audience.chars().take(80).collect();
            let err = ServiceError::AudienceNotAllowed(shown.escape_debug().to_string());
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        let cnf = match self.binding(&session, &request).await {
            Ok(cnf) => cnf,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e).await,
        };
        self.check_conditions(caller, &session, peer, ACTION)
            .await?;
        let jti = new_jti()?;
        let new = NewCredential {
            serial: jti.clone(),
            kind: CredentialKind::Token,
            profile: session.request.profile,
            counted: session.rules.count_tokens,
        };
        let (session, reservation, now) = self.reserve(caller, id, ACTION, new).await?;
        let claims = TokenClaims {
            iss: self.public_url().unwrap_or_else(|| "lockstep".into()),
            sub: session.request.requester.clone(),
            aud: audience.clone(),
            iat: now.unix(),
            nbf: now.unix(),
            exp: reservation.not_after.unix(),
            jti: jti.clone(),
            sid: session.id.to_string(),
            request_hash: format_hash(&session.request_hash),
            approvers: session.approvals.iter().map(|v| v.by.clone()).collect(),
            resource,
            cnf: cnf.clone(),
        };
        let bound = cnf.map(|c| c.x5t_s256).unwrap_or_default();
        let signed = self
            .device
            .run(move || signer.sign(&claims))
            .await
            .map_err(ServiceError::from)
            .and_then(|r| r.map_err(ServiceError::from))
            .map(|token| {
                let finish = Finish::Issued {
                    der: None,
                    key_sha256: bound,
                };
                (token, finish)
            });
        let token = self.finish(caller, ACTION, &reservation, signed).await?;
        tracing::info!(session = %id, jti = %jti, "token issued");
        Ok(IssuedToken {
            session: id.clone(),
            token,
            token_type: "Bearer",
            jti,
            audience,
            expires_at: reservation.not_after,
        })
    }

    /// The certificate a token is to be bound to: it must be one this
    /// session minted.
    async fn binding(
        &self,
        session: &Session,
        request: &TokenRequest,
    ) -> Result<Option<Confirmation>, ServiceError> {
        let wanted = match (&request.certificate, &request.x5t_s256) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ServiceError::BadRequest(
                    "give either certificate or x5t#S256, not both".into(),
                ));
            }
            (Some(pem), None) => {
                let cert = <x509_cert::Certificate as der::DecodePem>::from_pem(pem.as_bytes())
                    .map_err(|e| {
                        ServiceError::BadRequest(format!("certificate is not PEM: {e}"))
                    })?;
                certificate_thumbprint(&der::Encode::to_der(&cert)?)
            }
            (None, Some(t)) => t.clone(),
        };
        let ours = self.store.certificates(&session.id).await?;
        if ours
            .iter()
            .any(|(_, der)| certificate_thumbprint(der) == wanted)
        {
            Ok(Some(Confirmation { x5t_s256: wanted }))
        } else {
            Err(ServiceError::BadRequest(
                "the certificate to bind to is not one this session issued".into(),
            ))
        }
    }

    /// What a session's certificate says: subject and SANs from the
    /// session, never from the CSR.
    ///
    /// - subject: `CN=<resource>` (or the session id when the resource is
    ///   longer than 64 characters), `OU=<tenant>` when there is one,
    ///   `O=<[server] organization>`;
    /// - SANs: `urn:lockstep:session:<id>`, `urn:lockstep:resource:<resource>`
    ///   and `urn:lockstep:requester:<identity>` (percent-encoded);
    /// - the session extension with the request hash and the approvers;
    /// - the CRL and OCSP locations once the public URL is known.
    fn leaf_spec(
        &self,
        session: &Session,
        not_after: Timestamp,
        profile: crate::x509::CertProfile,
    ) -> LeafSpec {
        let r = &session.request;
        let common_name = if r.resource.chars().count() <= 64 {
            r.resource.clone()
        } else {
            session.id.to_string()
        };
        LeafSpec {
            subject: SubjectName {
                common_name,
                organization: Some(self.organization.clone()),
                organizational_unit: r.tenant.clone(),
                country: None,
            },
            sans: vec![
                San::Uri(format!("urn:lockstep:session:{}", session.id)),
                San::Uri(format!("urn:lockstep:resource:{}", urn_encode(&r.resource))),
                San::Uri(format!(
                    "urn:lockstep:requester:{}",
                    urn_encode(&r.requester)
                )),
            ],
            profile,
            not_after,
            session: SessionEvidence {
                session_id: session.id.to_string(),
                approval: Some(ApprovalEvidence {
                    request_hash: session.request_hash,
                    approvers: session.approvals.iter().map(|v| v.by.clone()).collect(),
                    opened_at: session.opened_at.unwrap_or(session.created_at),
                }),
            },
            revocation: self.revocation_urls(),
        }
    }
}

/// Percent-encodes everything but unreserved characters and `:/@` for a
/// URN's specific part.
fn urn_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'/')
        .remove(b'@');
    utf8_percent_encode(s, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
