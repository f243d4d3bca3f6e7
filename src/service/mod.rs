//! The issuer service, independent of transport: who may do what to which
//! session, minting credentials for open sessions, and publishing their
//! revocation. The HTTP API is a thin layer over this.
//!
//! Every refused call on a session is recorded as a `refused` event.

mod connections;
mod error;
mod events;
mod listing;
mod mint;
mod published;
mod refusals;

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::audit::AuditSigner;
use crate::auth::Caller;
use crate::clock::{Clock, Timestamp};
use crate::keys::KeyBackend;
use crate::lane::Lane;
use crate::policy::Policy;
use crate::revocation::CrlPublisher;
use crate::revocation::ocsp::Responder;
use crate::sessions::{
    Actor, Event, Profile, Request, RevocationReason, Session, SessionError, SessionId, SessionOp,
};
use crate::store::{Applied, Store};
use crate::tokens::TokenSigner;
use crate::x509::csr::{VerifiedCsr, parse_and_verify};
use crate::x509::{Issuer, RevocationUrls};

pub use error::ServiceError;
pub use events::{Follow, FollowedEvents};
pub use listing::{LIST_SCAN_BUDGET, SessionPage};
pub use mint::{
    IssuedSshCertificate, IssuedTimestamp, IssuedToken, SignatureRequest, TokenRequest,
    ssh_serial_text,
};
pub use published::{AuditPage, Introspection};

/// What a requester asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub profile: Profile,
    /// Asked as break-glass (the resource's break-glass path).
    pub break_glass: bool,
}

impl NewSession {
    /// Checks the syntax of the request (resource name, task, digest, a
    /// duration of at least a second); policy is asked only afterwards.
    pub fn validate(&self) -> Result<(), crate::sessions::SessionError> {
        crate::sessions::validate_fields(
            &self.resource,
            &self.task,
            self.request_digest.as_deref(),
            self.duration_secs,
        )
    }
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
    /// Enforces the session at a gateway (a `[[gateway]]` following its
    /// resource): reads it, changes nothing.
    Gateway,
}

/// What a service is made of.
pub struct ServiceParts {
    /// Where state is kept.
    pub store: Arc<dyn Store>,
    /// Who may do what.
    pub policy: Arc<Policy>,
    /// The issuing CA.
    pub issuer: Arc<Issuer>,
    /// The key device (for readiness).
    pub backend: Arc<dyn KeyBackend>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// `O` of session certificates' subjects.
    pub organization: String,
    /// The token signer, if tokens are configured.
    pub tokens: Option<TokenSigner>,
    /// The SSH CA, if SSH certificates are configured.
    pub ssh: Option<crate::ssh::SshCa>,
    /// The timestamp authority, if release signatures are timestamped.
    pub tsa: Option<crate::tsa::TimestampAuthority>,
    /// CRL lifetime, seconds.
    pub crl_validity_secs: i64,
    /// OCSP response lifetime, seconds.
    pub ocsp_validity_secs: i64,
    /// The audit signer, if checkpoints are signed.
    pub audit: Option<AuditSigner>,
    /// Sign a checkpoint after this many entries...
    pub checkpoint_every: u64,
    /// ...or after this many seconds.
    pub checkpoint_interval_secs: i64,
    /// Refusals of callers without a valid credential recorded one by one
    /// per second on average (0: every one); the rest are counted.
    pub anonymous_refusals_per_sec: u32,
    /// ...and at most this many at once.
    pub anonymous_refusals_burst: u32,
    /// How committed events are published.
    pub events: crate::events::Settings,
    /// Where the service's metrics are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The issuer service.
pub struct Service {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    issuer: Arc<Issuer>,
    backend: Arc<dyn KeyBackend>,
    clock: Arc<dyn Clock>,
    organization: String,
    tokens: Option<TokenSigner>,
    ssh: Option<crate::ssh::SshCa>,
    tsa: Option<crate::tsa::TimestampAuthority>,
    krl: Option<crate::revocation::krl::KrlPublisher>,
    crl: CrlPublisher,
    ocsp: Responder,
    ocsp_validity_secs: i64,
    public_url: RwLock<Option<String>>,
    audit: Option<AuditSigner>,
    checkpoint_every: u64,
    checkpoint_interval_secs: i64,
    checkpointing: tokio::sync::Mutex<()>,
    anonymous: refusals::RefusalGate,
    events: crate::events::Hub,
    /// The way to the signing device, about as wide as its session limit.
    device: Lane,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over its parts.
    pub fn new(parts: ServiceParts) -> Result<Self, ServiceError> {
        let issuing = parts
            .issuer
            .chain()
            .first()
            .ok_or_else(|| ServiceError::Internal("empty chain".into()))?;
        let tbs = issuing.tbs_certificate();
        let name = der::Encode::to_der(tbs.subject())?;
        let spki = der::Encode::to_der(tbs.subject_public_key_info())?;
        let ocsp =
            Responder::new(&name, &spki).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Self {
            // One more than the device works on at once: the next call is
            // already waiting when one finishes, so the device never idles
            // for a thread hand-over.
            device: Lane::new(parts.issuer.key().concurrency() + 1),
            crl: CrlPublisher::new(
                parts.issuer.clone(),
                parts.store.clone(),
                parts.crl_validity_secs,
            ),
            ocsp,
            krl: parts
                .ssh
                .clone()
                .map(|ca| crate::revocation::krl::KrlPublisher::new(ca, parts.store.clone())),
            events: crate::events::Hub::new(parts.store.clone(), parts.clock.clone(), parts.events),
            ocsp_validity_secs: parts.ocsp_validity_secs,
            store: parts.store,
            policy: parts.policy,
            issuer: parts.issuer,
            backend: parts.backend,
            clock: parts.clock,
            organization: parts.organization,
            tokens: parts.tokens,
            ssh: parts.ssh,
            tsa: parts.tsa,
            public_url: RwLock::new(None),
            audit: parts.audit,
            checkpoint_every: parts.checkpoint_every.max(1),
            checkpoint_interval_secs: parts.checkpoint_interval_secs.max(1),
            checkpointing: tokio::sync::Mutex::new(()),
            metrics: parts.metrics,
            anonymous: refusals::RefusalGate::new(
                parts.anonymous_refusals_per_sec,
                parts.anonymous_refusals_burst,
            ),
        })
    }

    /// Sets the URL relying parties reach the service at; certificates
    /// minted from now on name its CRL and OCSP locations, and tokens use it
    /// as `iss`.
    pub fn set_public_url(&self, url: &str) {
        *self.public_url.write().unwrap_or_else(|p| p.into_inner()) =
            Some(url.trim_end_matches('/').to_owned());
    }

    /// The public URL, once set.
    pub fn public_url(&self) -> Option<String> {
        self.public_url
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The CRL and OCSP locations, once the public URL is known.
    pub fn revocation_urls(&self) -> Option<RevocationUrls> {
        self.public_url().map(|u| RevocationUrls {
            crl: format!("{u}/v1/crl"),
            ocsp: format!("{u}/v1/ocsp"),
        })
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
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
    /// the refusal stands either way. Refusals without a caller beyond
    /// their rate are counted instead (see [`Service::record_counted_refusals`]).
    pub async fn refused(
        &self,
        caller: Option<&Caller>,
        session: Option<&SessionId>,
        action: &str,
        code: &str,
    ) {
        if caller.is_none() && !self.anonymous.admit(code, self.now()) {
            tracing::debug!(action, code, "refused call counted, not recorded");
            return;
        }
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
        self.refused(Some(caller), session, action, err.recorded_code())
            .await;
        Err(err)
    }

    /// Creates a session for `caller` if the policy lets it request the
    /// resource.
    pub async fn request(&self, caller: &Caller, new: NewSession) -> Result<Session, ServiceError> {
        // Syntax first: a malformed name is refused as such, whatever the
        // policy says about it, and never reaches policy matching.
        if let Err(e) = new.validate() {
            return self.refuse(caller, None, "request", e.into()).await;
        }
        let (tenant, rules) = match self.authorize(caller, &new) {
            Ok(granted) => granted,
            Err(refusal) => return self.refuse(caller, None, "request", refusal.into()).await,
        };
        let requester_expires = caller
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .map(Timestamp::from_unix);
        let request = Request {
            tenant,
            requester: caller.identity.clone(),
            resource: new.resource,
            task: new.task,
            request_digest: new.request_digest,
            duration_secs: new.duration_secs,
            profile: new.profile,
            break_glass: new.break_glass,
        };
        let now = self.now();
        let id = SessionId::generate()?;
        let (mut session, events) = match Session::new(id, request, rules, now) {
            Ok(created) => created,
            Err(e) => return self.refuse(caller, None, "request", e.into()).await,
        };
        session.requester_credential_expires = requester_expires;
        session.requester_email = verified_email(caller);
        session.ci = ci_identity(caller);
        let created = self
            .store
            .create_session(session.clone(), events, now)
            .await?;
        if let Err(e) = created {
            return self.refuse(caller, None, "request", e.into()).await;
        }
        if session.break_glass.is_some() {
            tracing::warn!(session = %session.id, requester = %caller.identity, resource = %session.request.resource, state = session.state.as_str(), "break-glass session requested");
        } else {
            tracing::info!(session = %session.id, requester = %caller.identity, resource = %session.request.resource, "session requested");
        }
        Ok(session)
    }

    /// The tenant and rules a request gets: the resource's, or its
    /// break-glass path's when asked as break-glass.
    fn authorize(
        &self,
        caller: &Caller,
        new: &NewSession,
    ) -> Result<(Option<String>, crate::sessions::Rules), crate::policy::Refusal> {
        let (resource, profile) = (new.resource.as_str(), new.profile);
        if new.break_glass {
            let (rule, path) = self
                .policy
                .authorize_break_glass(caller, resource, profile)?;
            return Ok((rule.tenant.clone(), path.rules.clone()));
        }
        let rule = self.policy.authorize_request(caller, resource, profile)?;
        Ok((rule.tenant.clone(), rule.rules.clone()))
    }

    /// Acts on a verified Shared Signals SET: the sessions it ends are
    /// revoked, and it is recorded, in one transaction. A SET whose `jti`
    /// was received before is refused (`invalid_request`) and changes
    /// nothing.
    pub async fn act_on_signal(
        &self,
        signal: crate::signals::Signal,
    ) -> Result<Result<Vec<SessionId>, crate::signals::SetError>, ServiceError> {
        let (issuer, jti) = (signal.issuer.clone(), signal.jti.clone());
        let events = signal.ending_events().join(",");
        match self.store.receive_signal(signal, self.now()).await? {
            Ok(ended) => {
                for id in &ended {
                    tracing::warn!(session = %id, transmitter = %issuer, %jti, events = %events, "session revoked by a signal");
                }
                tracing::info!(transmitter = %issuer, %jti, ended = ended.len(), "signal received");
                Ok(Ok(ended))
            }
            Err(crate::store::Replayed) => {
                self.refused(None, None, "signal", "invalid_request").await;
                Ok(Err(crate::signals::SetError::InvalidRequest(
                    "this SET's jti was received already: each SET is acted on once".into(),
                )))
            }
        }
    }

    /// A reviewer records a break-glass session's after-review (an
    /// unjustified one still open is revoked with it).
    pub async fn review(
        &self,
        caller: &Caller,
        id: &SessionId,
        outcome: crate::sessions::Outcome,
        note: String,
    ) -> Result<Session, ServiceError> {
        let (session, relation) = self.visible(caller, id, "review").await?;
        // Reviewers relate as approvers (within the tenant); the core
        // refuses the requester and non-reviewers with precise codes.
        if !matches!(relation, Relation::Approver | Relation::Requester) {
            let err = match session.break_glass {
                None => SessionError::NotBreakGlass,
                Some(_) => SessionError::NotAReviewer,
            };
            return self.refuse(caller, Some(id), "review", err.into()).await;
        }
        let op = SessionOp::Review {
            by: caller.identity.clone(),
            outcome,
            note,
        };
        let s = self.apply(caller, id, "review", op).await?;
        tracing::warn!(session = %id, reviewer = %caller.identity, outcome = outcome.as_str(), "break-glass session reviewed");
        Ok(s)
    }

    /// How `caller` relates to `session`, if at all.
    pub fn relation(&self, caller: &Caller, session: &Session) -> Option<Relation> {
        let tenant = session.request.tenant.as_deref();
        if caller.identity == session.request.requester {
            Some(Relation::Requester)
        } else if (session.is_approver(&caller.identity) || session.is_reviewer(&caller.identity))
            && self.policy.in_tenant(tenant, &caller.identity)
        {
            Some(Relation::Approver)
        } else if self.policy.is_operator(tenant, &caller.identity) {
            Some(Relation::Operator)
        } else if self.policy.is_auditor(tenant, &caller.identity) {
            Some(Relation::Auditor)
        } else if self
            .policy
            .gateway_follows(&caller.identity, tenant, &session.request.resource)
        {
            Some(Relation::Gateway)
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
            // The same answer as for a session the caller may not see.
            Err(crate::store::StoreError::NotFound(_)) => {
                let err = ServiceError::NotFound(id.clone());
                return self.refuse(caller, Some(id), action, err).await;
            }
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

    /// An approver or operator ends a session (`revoked`), with a reason
    /// and optionally the reason code relying parties see (default
    /// privilegeWithdrawn).
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: &SessionId,
        reason: String,
        code: Option<RevocationReason>,
    ) -> Result<Session, ServiceError> {
        let (_, relation) = self.visible(caller, id, "revoke").await?;
        let actor = match relation {
            Relation::Approver => Actor::Approver,
            Relation::Operator => Actor::Operator,
            Relation::Requester | Relation::Auditor | Relation::Gateway => {
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
                    reason: code,
                },
            )
            .await?;
        tracing::info!(session = %id, by = %caller.identity, "session revoked");
        Ok(s)
    }

    /// Signs a checkpoint of the audit trail if one is due (`force`: if
    /// there is anything unsigned). Returns the checkpoint number signed.
    pub async fn checkpoint(&self, force: bool) -> Result<Option<u64>, ServiceError> {
        let Some(signer) = self.audit.clone() else {
            return Ok(None);
        };
        let _one_at_a_time = self.checkpointing.lock().await;
        let Some((upto, head)) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let last = self.store.last_checkpoint().await?;
        let (last_upto, last_at, number) = match &last {
            Some(c) => (c.upto, c.at, c.number + 1),
            None => (0, i64::MIN, 1),
        };
        if upto <= last_upto {
            return Ok(None);
        }
        let now = self.now();
        let due = force
            || last.is_none()
            || upto - last_upto >= self.checkpoint_every
            || now.unix().saturating_sub(last_at) >= self.checkpoint_interval_secs;
        if !due {
            return Ok(None);
        }
        let checkpoint = self
            .device
            .run(move || signer.sign(number, upto, &head, now))
            .await??;
        if !self.store.add_checkpoint(checkpoint).await? {
            // Another process sharing the store signed this number first.
            tracing::debug!(number, "audit checkpoint taken by another process");
            return Ok(None);
        }
        tracing::debug!(number, upto, "audit checkpoint signed");
        Ok(Some(number))
    }

    /// Records the start of the service, with the policy's hash.
    pub async fn started(&self) -> Result<(), ServiceError> {
        use sha2::Digest;
        if let Some(signer) = &self.audit {
            self.store
                .add_audit_certificate(signer.certificate().to_vec(), self.now())
                .await?;
            for cert in self.issuer.chain() {
                self.store
                    .add_audit_certificate(der::Encode::to_der(cert)?, self.now())
                    .await?;
            }
        }
        let event = Event::ServiceStarted {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_sha256: hex::encode(self.policy.sha256()),
            issuer_key_sha256: hex::encode(sha2::Sha256::digest(
                self.issuer.key().public_key().spki_der(),
            )),
        };
        self.store.record(None, event, self.now()).await?;
        Ok(())
    }

    /// Records a graceful stop and signs a last checkpoint.
    pub async fn stopped(&self) -> Result<(), ServiceError> {
        self.record_counted_refusals().await;
        self.store
            .record(None, Event::ServiceStopped, self.now())
            .await?;
        self.checkpoint(true).await?;
        Ok(())
    }

    /// Records the anonymous refusals counted since the last call as one
    /// `refusals_counted` entry; run periodically and at shutdown. Counts
    /// that cannot be recorded are kept for the next call.
    pub async fn record_counted_refusals(&self) {
        let Some(event) = self.anonymous.take() else {
            return;
        };
        if let Err(e) = self.store.record(None, event.clone(), self.now()).await {
            tracing::warn!(error = %e, "could not record counted refusals; kept for later");
            self.anonymous.restore(event);
        }
    }

    /// Closes due sessions and voids abandoned reservations; run
    /// periodically. Returns how many sessions it closed.
    pub async fn sweep(&self) -> Result<usize, ServiceError> {
        let closed = self.store.sweep(self.now()).await?;
        let voided = self.store.recover(self.now()).await?;
        if voided > 0 {
            tracing::warn!(voided, "abandoned credential reservations voided");
        }
        Ok(closed)
    }

    /// Whether the service can work: the store answers and the issuing key
    /// signs.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        self.store.check().await?;
        self.key_ready().await
    }

    /// Whether the key backend answers and the issuing key signs a probe
    /// that verifies.
    pub async fn key_ready(&self) -> Result<(), ServiceError> {
        let key = self.issuer.key().clone();
        let backend = self.backend.clone();
        self.device
            .run(move || {
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
            .await?
    }

    /// Checks a CSR without minting (used by tests and tools).
    pub fn check_csr(csr: &[u8]) -> Result<VerifiedCsr, ServiceError> {
        Ok(parse_and_verify(csr)?)
    }
}

/// The CI identity of an OIDC requester: its token's issuer and the CI
/// claims it carries (strings and numbers, as text); none for other
/// callers.
fn ci_identity(caller: &Caller) -> Option<crate::sessions::CiIdentity> {
    if !caller.identity.starts_with("oidc:") {
        return None;
    }
    let issuer = caller.claims.get("iss")?.as_str()?.to_owned();
    let claims = crate::x509::fulcio::CI_CLAIMS
        .iter()
        .filter_map(|name| {
            let value = match caller.claims.get(*name)? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(((*name).to_owned(), value))
        })
        .collect();
    Some(crate::sessions::CiIdentity { issuer, claims })
}

/// The requester's email, when its OIDC token says it is verified
/// (`email_verified: true`): what Shared Signals `email` subjects match.
fn verified_email(caller: &Caller) -> Option<String> {
    let verified = caller.claims.get("email_verified")?.as_bool()?;
    let email = caller.claims.get("email")?.as_str()?;
    (verified && caller.identity.starts_with("oidc:") && email.contains('@'))
        .then(|| email.to_lowercase())
}
