//! Minting for open sessions: one pipeline for every kind of credential.
//!
//! Each kind ([`certificate`], [`token`], [`ssh`], [`timestamp`]) says what it checks before a slot
//! is taken and how the device makes it; the pipeline does the rest the
//! same way for all: the requester's open session, the policy's
//! conditions again, a slot taken in the store (with the credential's
//! serial) before the device signs, and the credential handed out, or
//! withheld if the session closed while it was being signed.

mod certificate;
mod ssh;
mod timestamp;
mod token;

use std::net::IpAddr;

use super::{Relation, Service, ServiceError};
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::sessions::{Actor, RevocationReason, Session, SessionError, SessionId, SessionOp};
use crate::store::{Finish, Finished, NewCredential, Reservation};

pub use ssh::{IssuedSshCertificate, serial_text as ssh_serial_text};
pub use timestamp::{IssuedTimestamp, SignatureRequest};
pub use token::{IssuedToken, TokenRequest};

use crate::sessions::POLICY_ACTOR;

/// A kind of credential, ready to be minted: its own checks are done.
trait Minter: Send + 'static {
    /// What the caller is handed.
    type Output: Send + 'static;

    /// The credential about to be signed: its serial, kind, profile and
    /// whether it counts against the session's limit.
    fn credential(&self, session: &Session) -> NewCredential;

    /// Makes the credential on the device (on the device lane), for the
    /// session as it was when the slot was taken, valid until `not_after`
    /// and dated `now`; returns it and what the trail records of it.
    fn sign(
        self,
        session: &Session,
        not_after: Timestamp,
        now: Timestamp,
    ) -> Result<(Self::Output, Finish), ServiceError>;
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
            failed = Some(crate::sessions::REQUESTER_TOKEN_EXPIRED.to_owned());
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

    /// The pipeline: conditions, slot, device, finish.
    async fn mint<M: Minter>(
        &self,
        caller: &Caller,
        action: &str,
        session: Session,
        peer: Option<IpAddr>,
        minter: M,
    ) -> Result<M::Output, ServiceError> {
        let started = std::time::Instant::now();
        self.check_conditions(caller, &session, peer, action)
            .await?;
        let new = minter.credential(&session);
        let kind = new.kind;
        let (session, reservation, now) = self.reserve(caller, &session.id, action, new).await?;
        let not_after = reservation.not_after;
        let signed = self
            .device
            .run(move || minter.sign(&session, not_after, now))
            .await
            .map_err(ServiceError::from)
            .and_then(|signed| signed);
        let issued = self.finish(caller, action, &reservation, signed).await?;
        self.metrics
            .minted_in(kind.as_str(), started.elapsed().as_secs_f64());
        Ok(issued)
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
            Finished::Lapsed => {
                self.refuse(caller, Some(id), action, ServiceError::ReservationLapsed)
                    .await
            }
            Finished::Issued | Finished::Released => Ok(value),
        }
    }
}
