//! The issuer service, independent of transport: who may do what to which
//! session, and minting certificates for open sessions. The HTTP API is a
//! thin layer over this.
//!
//! Every refused call on a session is recorded as a `refused` event.

mod error;

use std::sync::Arc;

use serde::Serialize;

use crate::auth::Caller;
use crate::clock::{Clock, Timestamp};
use crate::keys::KeyBackend;
use crate::policy::Policy;
use crate::sessions::{Actor, Event, Request, Session, SessionError, SessionId, SessionOp, State};
use crate::store::{Applied, Finish, Finished, SessionFilter, Store};
use crate::x509::csr::{VerifiedCsr, parse_and_verify};
use crate::x509::extension::ApprovalEvidence;
use crate::x509::{
    CertProfile, Issuer, LeafSpec, San, SessionEvidence, SubjectName, random_serial,
};

pub use error::ServiceError;

/// What a requester asks for.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// The resource.
    pub resource: String,
    /// What for.
    pub task: String,
    /// Optional artifact digest.
    pub request_digest: Option<String>,
    /// Seconds the session stays open once approved.
    pub duration_secs: u32,
    /// Credential profile.
    pub profile: CertProfile,
}

/// A certificate handed out for a session.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedCredential {
    /// The session.
    pub session: SessionId,
    /// Serial, hex.
    pub serial: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The issuing CA and root, PEM.
    pub chain: String,
    /// `notAfter` (= the session's `closes_at`).
    pub not_after: Timestamp,
}

/// How a caller relates to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// Asked for it.
    Requester,
    /// In its approver set.
    Approver,
    /// Operates its tenant.
    Operator,
    /// Audits its tenant.
    Auditor,
}

/// The issuer service.
pub struct Service {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    issuer: Arc<Issuer>,
    backend: Arc<dyn KeyBackend>,
    clock: Arc<dyn Clock>,
    organization: String,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over its parts. `organization` is the `O` of session
    /// certificates' subjects.
    pub fn new(
        store: Arc<dyn Store>,
        policy: Arc<Policy>,
        issuer: Arc<Issuer>,
        backend: Arc<dyn KeyBackend>,
        clock: Arc<dyn Clock>,
        organization: String,
    ) -> Self {
        Self {
            store,
            policy,
            issuer,
            backend,
            clock,
            organization,
        }
    }

    /// Now, from the service's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Records a refused call. Failing to record is logged, not fatal:
    /// the refusal stands either way.
    pub async fn refused(
        &self,
        caller: Option<&Caller>,
        session: Option<&SessionId>,
        action: &str,
        code: &str,
    ) {
        let event = Event::Refused {
            caller: caller.map(|c| c.identity.clone()),
            action: action.to_owned(),
            code: code.to_owned(),
        };
        if let Err(e) = self.store.record(session, event, self.now()).await {
            tracing::error!(error = %e, action, code, "could not record a refused call");
        }
    }

    async fn refuse<T>(
        &self,
        caller: &Caller,
        session: Option<&SessionId>,
        action: &str,
        err: ServiceError,
    ) -> Result<T, ServiceError> {
        self.refused(Some(caller), session, action, err.code())
            .await;
        Err(err)
    }

    /// Creates a session for `caller` if the policy lets it request the
    /// resource.
    pub async fn request(&self, caller: &Caller, new: NewSession) -> Result<Session, ServiceError> {
        let rule = match self
            .policy
            .authorize_request(caller, &new.resource, new.profile)
        {
            Ok(rule) => rule.clone(),
            Err(refusal) => return self.refuse(caller, None, "request", refusal.into()).await,
        };
        let request = Request {
            tenant: rule.tenant.clone(),
            requester: caller.identity.clone(),
            resource: new.resource,
            task: new.task,
            request_digest: new.request_digest,
            duration_secs: new.duration_secs,
            profile: new.profile,
        };
        let now = self.now();
        let id = SessionId::generate()?;
        let (session, event) = match Session::new(id, request, rule.rules, now) {
            Ok(created) => created,
            Err(e) => return self.refuse(caller, None, "request", e.into()).await,
        };
        self.store
            .create_session(session.clone(), event, now)
            .await?;
        tracing::info!(session = %session.id, requester = %caller.identity, resource = %session.request.resource, "session requested");
        Ok(session)
    }

    /// How `caller` relates to `session`, if at all.
    pub fn relation(&self, caller: &Caller, session: &Session) -> Option<Relation> {
        let tenant = session.request.tenant.as_deref();
        if caller.identity == session.request.requester {
            Some(Relation::Requester)
        } else if session.is_approver(&caller.identity)
            && self.policy.in_tenant(tenant, &caller.identity)
        {
            Some(Relation::Approver)
        } else if self.policy.is_operator(tenant, &caller.identity) {
            Some(Relation::Operator)
        } else if self.policy.is_auditor(tenant, &caller.identity) {
            Some(Relation::Auditor)
        } else {
            None
        }
    }

    /// Loads a session `caller` may see. Others get "not found", so session
    /// ids reveal nothing to strangers.
    async fn visible(
        &self,
        caller: &Caller,
        id: &SessionId,
        action: &str,
    ) -> Result<(Session, Relation), ServiceError> {
        let session = match self.store.session(id, self.now()).await {
            Ok(s) => s,
            Err(e) => return self.refuse(caller, Some(id), action, e.into()).await,
        };
        match self.relation(caller, &session) {
            Some(r) => Ok((session, r)),
            None => {
                let err = ServiceError::NotFound(id.clone());
                self.refuse(caller, Some(id), action, err).await
            }
        }
    }

    /// A session, for its requester, approvers, operators and auditors.
    pub async fn session(
        &self,
        caller: &Caller,
        id: &SessionId,
    ) -> Result<(Session, Relation), ServiceError> {
        self.visible(caller, id, "read").await
    }

    /// Sessions `caller` may see, newest first.
    pub async fn sessions(
        &self,
        caller: &Caller,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<(Session, Relation)>, ServiceError> {
        self.store.sweep(self.now()).await?;
        let all = self
            .store
            .sessions(SessionFilter { state, limit: 1000 })
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|s| self.relation(caller, &s).map(|r| (s, r)))
            .take(limit.clamp(1, 1000))
            .collect())
    }

    async fn apply(
        &self,
        caller: &Caller,
        id: &SessionId,
        action: &str,
        op: SessionOp,
    ) -> Result<Session, ServiceError> {
        let Applied { session, result } = match self.store.apply(id, op, self.now()).await {
            Ok(a) => a,
            Err(e) => return self.refuse(caller, Some(id), action, e.into()).await,
        };
        match result {
            Ok(_) => Ok(session),
            Err(e) => self.refuse(caller, Some(id), action, e.into()).await,
        }
    }

    /// Approves the request whose hash the approver saw.
    pub async fn approve(
        &self,
        caller: &Caller,
        id: &SessionId,
        request_hash: [u8; 32],
    ) -> Result<Session, ServiceError> {
        self.vote_allowed(caller, id, "approve").await?;
        let s = self
            .apply(
                caller,
                id,
                "approve",
                SessionOp::Approve {
                    by: caller.identity.clone(),
                    request_hash,
                },
            )
            .await?;
        tracing::info!(session = %id, approver = %caller.identity, state = s.state.as_str(), "approved");
        Ok(s)
    }

    /// Denies the request whose hash the approver saw.
    pub async fn deny(
        &self,
        caller: &Caller,
        id: &SessionId,
        request_hash: [u8; 32],
        reason: Option<String>,
    ) -> Result<Session, ServiceError> {
        self.vote_allowed(caller, id, "deny").await?;
        let s = self
            .apply(
                caller,
                id,
                "deny",
                SessionOp::Deny {
                    by: caller.identity.clone(),
                    request_hash,
                    reason,
                },
            )
            .await?;
        tracing::info!(session = %id, approver = %caller.identity, state = s.state.as_str(), "denied");
        Ok(s)
    }

    /// Approvers must belong to the session's tenant; others are told the
    /// session does not exist unless they are related to it otherwise.
    async fn vote_allowed(
        &self,
        caller: &Caller,
        id: &SessionId,
        action: &str,
    ) -> Result<(), ServiceError> {
        let (session, relation) = self.visible(caller, id, action).await?;
        if relation == Relation::Requester || relation == Relation::Approver {
            // The core refuses self-approval and outsiders with precise codes.
            return Ok(());
        }
        let err = if session.is_approver(&caller.identity) {
            ServiceError::Forbidden("you are not a member of this session's tenant".into())
        } else {
            SessionError::NotAnApprover.into()
        };
        self.refuse(caller, Some(id), action, err).await
    }

    /// The requester closes its session (`completed`).
    pub async fn close(&self, caller: &Caller, id: &SessionId) -> Result<Session, ServiceError> {
        self.visible(caller, id, "close").await?;
        let s = self
            .apply(
                caller,
                id,
                "close",
                SessionOp::Close {
                    by: caller.identity.clone(),
                },
            )
            .await?;
        tracing::info!(session = %id, by = %caller.identity, "session closed by its requester");
        Ok(s)
    }

    /// An approver or operator ends a session (`revoked`), with a reason.
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: &SessionId,
        reason: String,
    ) -> Result<Session, ServiceError> {
        let (_, relation) = self.visible(caller, id, "revoke").await?;
        let actor = match relation {
            Relation::Approver => Actor::Approver,
            Relation::Operator => Actor::Operator,
            Relation::Requester | Relation::Auditor => {
                let err = ServiceError::Forbidden(
                    "only the session's approvers and operators may revoke it (the requester closes it)"
                        .into(),
                );
                return self.refuse(caller, Some(id), "revoke", err).await;
            }
        };
        let s = self
            .apply(
                caller,
                id,
                "revoke",
                SessionOp::Revoke {
                    by: caller.identity.clone(),
                    actor,
                    note: reason,
                },
            )
            .await?;
        tracing::info!(session = %id, by = %caller.identity, "session revoked");
        Ok(s)
    }

    /// Mints a certificate for the CSR's key, for the requester of an open
    /// session, under its credential limit.
    pub async fn certificate(
        &self,
        caller: &Caller,
        id: &SessionId,
        csr: Vec<u8>,
    ) -> Result<IssuedCredential, ServiceError> {
        let (session, relation) = self.visible(caller, id, "certificate").await?;
        if relation != Relation::Requester {
            let err: ServiceError = SessionError::NotRequester("mint a credential for").into();
            return self.refuse(caller, Some(id), "certificate", err).await;
        }
        // Check the CSR before taking a slot: a bad CSR costs nothing.
        let csr = match tokio::task::spawn_blocking(move || parse_and_verify(&csr)).await {
            Ok(Ok(csr)) => csr,
            Ok(Err(e)) => return self.refuse(caller, Some(id), "certificate", e.into()).await,
            Err(e) => return Err(ServiceError::Internal(format!("CSR task failed: {e}"))),
        };
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.as_bytes());
        let profile = session.request.profile;
        let (applied, reservation) = match self
            .store
            .reserve_credential(id, serial_hex, profile, self.now())
            .await
        {
            Ok(r) => r,
            Err(e) => return self.refuse(caller, Some(id), "certificate", e.into()).await,
        };
        let reservation = match (applied.result, reservation) {
            (Ok(_), Some(r)) => r,
            (Err(e), _) => return self.refuse(caller, Some(id), "certificate", e.into()).await,
            (Ok(_), None) => return Err(ServiceError::Internal("no reservation".into())),
        };
        let spec = self.leaf_spec(&applied.session, reservation.not_after);
        let issuer = self.issuer.clone();
        let now = self.now();
        let minted =
            tokio::task::spawn_blocking(move || issuer.mint_with_serial(&csr, &spec, serial, now))
                .await
                .map_err(|e| ServiceError::Internal(format!("signing task failed: {e}")))
                .and_then(|r| r.map_err(ServiceError::from));
        let issued = match minted {
            Ok(issued) => issued,
            Err(e) => {
                // Nothing was issued: give the slot back.
                self.store
                    .finish_credential(&reservation, Finish::Failed, self.now())
                    .await?;
                return self.refuse(caller, Some(id), "certificate", e).await;
            }
        };
        let finished = self
            .store
            .finish_credential(
                &reservation,
                Finish::Issued {
                    der: issued.der.clone(),
                    key_sha256: hex::encode(issued.key_fingerprint),
                },
                self.now(),
            )
            .await?;
        if let Finished::Withheld(reason) = finished {
            let err: ServiceError = SessionError::Closed(reason).into();
            return self.refuse(caller, Some(id), "certificate", err).await;
        }
        tracing::info!(session = %id, serial = %issued.serial, not_after = %issued.not_after, "certificate issued");
        Ok(IssuedCredential {
            session: id.clone(),
            certificate: issued.pem()?,
            chain: self.issuer.chain_pem().to_owned(),
            serial: issued.serial,
            not_after: issued.not_after,
        })
    }

    /// What a session's certificate says: subject and SANs from the
    /// session, never from the CSR.
    ///
    /// - subject: `CN=<resource>` (or the session id when the resource is
    ///   longer than 64 characters), `OU=<tenant>` when there is one,
    ///   `O=<[server] organization>`;
    /// - SANs: `urn:lockstep:session:<id>`, `urn:lockstep:resource:<resource>`
    ///   and `urn:lockstep:requester:<identity>` (percent-encoded);
    /// - the session extension with the request hash and the approvers.
    fn leaf_spec(&self, session: &Session, not_after: Timestamp) -> LeafSpec {
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
            profile: r.profile,
            not_after,
            session: SessionEvidence {
                session_id: session.id.to_string(),
                approval: Some(ApprovalEvidence {
                    request_hash: session.request_hash,
                    approvers: session.approvals.iter().map(|v| v.by.clone()).collect(),
                    opened_at: session.opened_at.unwrap_or(session.created_at),
                }),
            },
        }
    }

    /// Closes due sessions; run periodically.
    pub async fn sweep(&self) -> Result<usize, ServiceError> {
        Ok(self.store.sweep(self.now()).await?)
    }

    /// Whether the service can work: the store answers and the issuing key
    /// signs.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        self.store.check().await?;
        let key = self.issuer.key().clone();
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || {
            backend.check()?;
            let probe = [0x5au8; 32];
            let sig = key.sign_digest(&probe)?;
            if key.public_key().verify_digest(&probe, &sig) {
                Ok(())
            } else {
                Err(ServiceError::Internal(
                    "the issuing key returned a signature that does not verify".into(),
                ))
            }
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("readiness task failed: {e}")))?
    }

    /// Checks a CSR without minting (used by tests and tools).
    pub fn check_csr(csr: &[u8]) -> Result<VerifiedCsr, ServiceError> {
        Ok(parse_and_verify(csr)?)
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
