//! Session-bound tokens: JWTs whose `exp` is the session's `closes_at`,
//! optionally bound to one of the session's certificates (RFC 8705).

use std::net::IpAddr;

use serde::Serialize;

use super::super::{Service, ServiceError};
use super::Minter;
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::sessions::{CredentialFacts, CredentialKind, Profile, Session, SessionId, format_hash};
use crate::store::{Finish, NewCredential};
use crate::tokens::{Confirmation, TokenClaims, TokenSigner, certificate_thumbprint, new_jti};

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

/// A token about to be minted: audience and binding checked, `jti` drawn.
struct TokenMinter {
    signer: TokenSigner,
    issuer: String,
    audience: String,
    cnf: Option<Confirmation>,
    jti: String,
}

impl Minter for TokenMinter {
    /// The JWT and its `exp`.
    type Output = (String, Timestamp);

    fn credential(&self, session: &Session) -> NewCredential {
        NewCredential {
            serial: self.jti.clone(),
            kind: CredentialKind::Token,
            profile: Profile::Token,
            counted: session.rules.count_tokens,
            issuer: None,
        }
    }

    fn sign(
        self,
        session: &Session,
        not_after: Timestamp,
        now: Timestamp,
    ) -> Result<((String, Timestamp), Finish), ServiceError> {
        let claims = TokenClaims {
            iss: self.issuer,
            sub: session.request.requester.clone(),
            aud: self.audience.clone(),
            iat: now.unix(),
            nbf: now.unix(),
            exp: not_after.unix(),
            jti: self.jti,
            sid: session.id.to_string(),
            request_hash: format_hash(&session.request_hash),
            approvers: session.approvals.iter().map(|v| v.by.clone()).collect(),
            resource: session.request.resource.clone(),
            cnf: self.cnf.clone(),
            break_glass: session.request.break_glass,
        };
        let token = self.signer.sign(&claims)?;
        let finish = Finish::Issued {
            der: None,
            facts: CredentialFacts::Token {
                audience: self.audience,
                x5t_s256: self.cnf.map(|c| c.x5t_s256),
            },
        };
        Ok(((token, not_after), finish))
    }
}

impl Service {
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
        let resource = &session.request.resource;
        let audience = request.audience.clone().unwrap_or_else(|| resource.clone());
        if &audience != resource && !session.rules.audiences.contains(&audience) {
            // The message names the audience, shortened and escaped.
            let shown: String = audience.chars().take(80).collect();
            let err = ServiceError::AudienceNotAllowed(shown.escape_debug().to_string());
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        let cnf = match self.binding(&session, &request).await {
            Ok(cnf) => cnf,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e).await,
        };
        let jti = new_jti()?;
        let minter = TokenMinter {
            signer,
            issuer: self.public_url().unwrap_or_else(|| "lockstep".into()),
            audience: audience.clone(),
            cnf,
            jti: jti.clone(),
        };
        let (token, expires_at) = self.mint(caller, ACTION, session, peer, minter).await?;
        tracing::info!(session = %id, jti = %jti, "token issued");
        Ok(IssuedToken {
            session: id.clone(),
            token,
            token_type: "Bearer",
            jti,
            audience,
            expires_at,
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
}
