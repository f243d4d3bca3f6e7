//! What relying parties consult: the CRL, OCSP, the token keys and token
//! introspection (RFC 7662).

use serde::Serialize;

use super::{Service, ServiceError};
use crate::auth::Caller;
use crate::events::Visibility;
use crate::revocation::ocsp::{OcspError, Status};
use crate::sessions::{SessionId, State};
use crate::store::CredentialKind;
use crate::tokens::TokenClaims;

/// An RFC 7662 introspection answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Introspection {
    /// Whether the token is valid now: signed by lockstep, within its
    /// times, and its session still open.
    pub active: bool,
    /// The token's claims, when active.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub claims: Option<TokenClaims>,
    /// `Bearer`, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
}

impl Introspection {
    fn inactive() -> Self {
        Self {
            active: false,
            claims: None,
            token_type: None,
        }
    }
}

/// A page of the audit trail.
#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    /// Entries the caller may read, oldest first.
    pub entries: Vec<crate::audit::Entry>,
    /// Pass as `after` for the next page; none at the end.
    pub next_after: Option<u64>,
}

impl Service {
    /// Audit entries for an auditor: of one session, or of every session it
    /// audits (top-level auditors also see entries of no session). Tenants
    /// stay apart: an auditor of one tenant never sees another's (see
    /// [`Visibility`]).
    ///
    /// Which entries are visible depends on each session's tenant; when
    /// that cannot be looked up, the listing is refused, never answered as
    /// if the session had no tenant.
    pub async fn audit(
        &self,
        caller: &Caller,
        session: Option<&SessionId>,
        after: u64,
        limit: usize,
    ) -> Result<AuditPage, ServiceError> {
        let visibility = Visibility::auditor(self.policy.clone(), &caller.identity);
        let only_auditors = || {
            ServiceError::Forbidden("only auditors named by the policy read the audit trail".into())
        };
        if let Some(id) = session {
            let (_, relation) = self.visible(caller, id, "audit").await?;
            if relation != super::Relation::Auditor {
                return self
                    .refuse(caller, Some(id), "audit", only_auditors())
                    .await;
            }
        } else if !visibility.sees_anything() {
            return self.refuse(caller, None, "audit", only_auditors()).await;
        }
        let limit = limit.clamp(1, 1000);
        let mut entries = Vec::new();
        let mut cursor = after;
        let mut exhausted = false;
        while entries.len() < limit && !exhausted {
            let batch = self.store.audit_entries(cursor, limit, session).await?;
            exhausted = batch.len() < limit;
            for e in batch {
                cursor = e.seq;
                let about = match &e.session {
                    None => None,
                    Some(sid) => match self.events.directory().info(sid).await {
                        Ok(about) => about,
                        Err(err) => return self.refuse(caller, session, "audit", err.into()).await,
                    },
                };
                if visibility.sees(&e.kind, about.as_deref()) {
                    entries.push(e);
                    if entries.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(AuditPage {
            next_after: (!exhausted || entries.len() == limit).then_some(cursor),
            entries,
        })
    }

    /// The current CRL (DER).
    pub async fn crl(&self) -> Result<std::sync::Arc<Vec<u8>>, ServiceError> {
        Ok(self.crl.current(self.now()).await?)
    }

    /// The current CRL (DER) and how many entries it lists.
    pub async fn crl_with_entries(&self) -> Result<(std::sync::Arc<Vec<u8>>, usize), ServiceError> {
        Ok(self.crl.current_with_entries(self.now()).await?)
    }

    /// The timestamp authority's chain as PEM (its certificate, the issuing
    /// CA, the root), for verifiers of its tokens.
    pub fn tsa_chain_pem(&self) -> Result<String, ServiceError> {
        let tsa = self.tsa.as_ref().ok_or(ServiceError::TsaNotConfigured)?;
        Ok(tsa.chain_pem()?)
    }

    /// The SSH CA's current KRL (what sshd's `RevokedKeys` reads), if SSH
    /// certificates are configured.
    pub async fn ssh_krl(&self) -> Result<std::sync::Arc<Vec<u8>>, ServiceError> {
        let Some(krl) = &self.krl else {
            return Err(ServiceError::SshNotConfigured);
        };
        Ok(krl.current(self.now()).await?)
    }

    /// The SSH CA's public key as a `TrustedUserCAKeys` line.
    pub fn ssh_ca_line(&self) -> Result<String, ServiceError> {
        let ca = self.ssh.as_ref().ok_or(ServiceError::SshNotConfigured)?;
        Ok(ca.public_line())
    }

    /// Answers a DER OCSP request with a DER OCSP response (errors are
    /// OCSP error responses, as RFC 6960 wants).
    pub async fn ocsp(&self, request: &[u8]) -> Vec<u8> {
        match self.ocsp_inner(request).await {
            Ok(der) => der,
            Err(e) => {
                tracing::debug!(error = %e, "OCSP request not answered");
                e.response()
            }
        }
    }

    async fn ocsp_inner(&self, request: &[u8]) -> Result<Vec<u8>, OcspError> {
        let parsed = self.ocsp.parse(request)?;
        let issuer = self.issuer.fingerprint();
        let mut statuses = Vec::new();
        for serial in parsed.serials() {
            let status = match serial {
                None => Status::Unknown,
                Some(serial) => match self.store.credential(&serial).await {
                    Err(e) => return Err(OcspError::TryLater(e.to_string())),
                    Ok(None) => Status::Unknown,
                    Ok(Some(c)) if c.kind != CredentialKind::Certificate => Status::Unknown,
                    // Another replica's issuing CA signed it: only a
                    // responder that may sign for that CA answers.
                    Ok(Some(c)) if c.issuer.as_ref().is_some_and(|i| *i != issuer) => {
                        Status::Unknown
                    }
                    Ok(Some(c)) => match (c.revoked, c.state.as_str()) {
                        (Some((at, reason)), _) => Status::Revoked(at, reason),
                        (None, "issued") => Status::Good,
                        (None, _) => Status::Unknown,
                    },
                },
            };
            statuses.push(status);
        }
        let now = self.now();
        let next = now.plus_secs(self.ocsp_validity_secs);
        let key = self.issuer.key().clone();
        let responder = self.ocsp.clone();
        self.device
            .run(move || responder.respond(&parsed, &statuses, now, next, key.as_ref()))
            .await
            .map_err(|e| OcspError::Internal(e.to_string()))?
    }

    /// The JWK Set of the token key, if tokens are configured.
    pub fn jwks(&self) -> Option<serde_json::Value> {
        self.tokens.as_ref().map(|t| t.jwks())
    }

    /// RFC 7662 introspection for an authenticated caller: active only if
    /// the token is lockstep's, within its times, recorded as issued, and
    /// its session is still open.
    pub async fn introspect(
        &self,
        caller: &Caller,
        token: &str,
    ) -> Result<Introspection, ServiceError> {
        let Some(signer) = &self.tokens else {
            return Ok(Introspection::inactive());
        };
        let Some(claims) = signer.verify(token) else {
            return Ok(Introspection::inactive());
        };
        let now = self.now().unix();
        if now >= claims.exp || now < claims.nbf {
            return Ok(Introspection::inactive());
        }
        let recorded = self.store.credential(&claims.jti).await?;
        let issued = recorded.is_some_and(|c| {
            c.kind == CredentialKind::Token
                && c.state == "issued"
                && c.session.as_str() == claims.sid
        });
        if !issued {
            return Ok(Introspection::inactive());
        }
        let Ok(sid) = SessionId::parse(&claims.sid) else {
            return Ok(Introspection::inactive());
        };
        let session = self.store.session(&sid, self.now()).await?;
        if session.state != State::Open {
            return Ok(Introspection::inactive());
        }
        tracing::debug!(caller = %caller.identity, jti = %claims.jti, "token introspected: active");
        Ok(Introspection {
            active: true,
            claims: Some(claims),
            token_type: Some("Bearer"),
        })
    }
}
