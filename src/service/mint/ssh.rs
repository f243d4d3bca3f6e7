//! SSH user certificates: a key the requester sends, certified by the SSH
//! CA for the session: `valid_before` = the session's `closes_at`,
//! principals and options from the policy.

use std::net::IpAddr;

use serde::Serialize;
use ssh_key::public::KeyData;

use super::super::{Service, ServiceError};
use super::Minter;
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::sessions::{CredentialFacts, CredentialKind, Profile, Session, SessionId, SshRules};
use crate::ssh::{SshCa, UserCertSpec, fingerprint, parse_public_key};
use crate::store::{Finish, NewCredential};

/// An SSH certificate handed out for a session.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedSshCertificate {
    /// The session.
    pub session: SessionId,
    /// The certificate, as a `…-cert-v01@openssh.com` line.
    pub certificate: String,
    /// Its serial (decimal, as `ssh-keygen -L` and sshd's log show it).
    pub serial: u64,
    /// Its key id.
    pub key_id: String,
    /// The principals it names.
    pub principals: Vec<String>,
    /// The certified key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// `valid_after` (the minting second).
    pub valid_after: Timestamp,
    /// `valid_before` (= the session's `closes_at`).
    pub valid_before: Timestamp,
}

/// A certificate about to be signed: the key checked, the serial drawn.
struct SshMinter {
    ca: SshCa,
    subject: KeyData,
    serial: u64,
}

impl Minter for SshMinter {
    type Output = IssuedSshCertificate;

    fn credential(&self, _session: &Session) -> NewCredential {
        NewCredential {
            serial: serial_text(self.serial),
            kind: CredentialKind::SshCertificate,
            profile: Profile::SshUser,
            counted: true,
            issuer: Some(self.ca.issuer_fingerprint()),
        }
    }

    fn sign(
        self,
        session: &Session,
        not_after: Timestamp,
        now: Timestamp,
    ) -> Result<(IssuedSshCertificate, Finish), ServiceError> {
        let rules = session.rules.ssh.clone().unwrap_or_default();
        let spec = spec(session, &rules, self.serial, now, not_after);
        let cert = self.ca.certify(&self.subject, &spec)?;
        let text = cert
            .to_openssh()
            .map_err(|e| ServiceError::Internal(format!("SSH certificate: {e}")))?;
        let wire = cert
            .to_bytes()
            .map_err(|e| ServiceError::Internal(format!("SSH certificate: {e}")))?;
        let key_wire = ssh_key::PublicKey::from(self.subject.clone())
            .to_bytes()
            .map_err(|e| ServiceError::Internal(format!("SSH key: {e}")))?;
        let fingerprint = fingerprint(&self.subject);
        let finish = Finish::Issued {
            der: Some(wire),
            facts: CredentialFacts::SshCertificate {
                key_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&key_wire)),
                fingerprint: fingerprint.clone(),
                principals: spec.principals.clone(),
            },
        };
        let issued = IssuedSshCertificate {
            session: session.id.clone(),
            certificate: text,
            serial: self.serial,
            key_id: spec.key_id,
            principals: spec.principals,
            fingerprint,
            valid_after: now,
            valid_before: not_after,
        };
        Ok((issued, finish))
    }
}

/// How the store and the trail name an SSH certificate: its serial as 16
/// hex digits (X.509 serials are longer, so the two never meet).
pub fn serial_text(serial: u64) -> String {
    format!("{serial:016x}")
}

/// What the session's certificate says. `source-address` comes from the
/// policy's `source_networks` condition, `force-command` and the
/// extensions from its `ssh` rules; `key_id` names the session and the
/// requester, so sshd's log says whose session logged in.
fn spec(
    session: &Session,
    rules: &SshRules,
    serial: u64,
    now: Timestamp,
    not_after: Timestamp,
) -> UserCertSpec {
    let mut critical_options = Vec::new();
    if let Some(command) = &rules.force_command {
        critical_options.push(("force-command".to_owned(), command.clone()));
    }
    let networks = &session.rules.conditions.source_networks;
    if !networks.is_empty() {
        critical_options.push(("source-address".to_owned(), networks.join(",")));
    }
    UserCertSpec {
        serial,
        key_id: format!(
            "lockstep session {} requester {}",
            session.id, session.request.requester
        ),
        principals: rules.principals.clone(),
        valid_after: now.unix().max(0) as u64,
        valid_before: not_after.unix().max(0) as u64,
        critical_options,
        extensions: rules.extensions.clone(),
    }
}

/// A random serial, never 0 (a KRL cannot revoke serial 0).
fn random_ssh_serial() -> Result<u64, ServiceError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
        let serial = u64::from_be_bytes(bytes);
        if serial != 0 {
            return Ok(serial);
        }
    }
}

impl Service {
    /// Mints an OpenSSH user certificate for `public_key` (one OpenSSH
    /// public key line) for the requester of an open `ssh-user` session,
    /// under its credential limit.
    pub async fn ssh_certificate(
        &self,
        caller: &Caller,
        id: &SessionId,
        public_key: &str,
        peer: Option<IpAddr>,
    ) -> Result<IssuedSshCertificate, ServiceError> {
        const ACTION: &str = "ssh_certificate";
        let session = self.mintable(caller, id, ACTION).await?;
        let Some(ca) = self.ssh.clone() else {
            return self
                .refuse(caller, Some(id), ACTION, ServiceError::SshNotConfigured)
                .await;
        };
        if session.request.profile != Profile::SshUser {
            let err = ServiceError::Forbidden(format!(
                "this session's profile is {}; request a session with profile ssh-user",
                session.request.profile
            ));
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        if session.rules.ssh.is_none() {
            let err =
                ServiceError::Forbidden("the policy grants this session no SSH principals".into());
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        let subject = match parse_public_key(public_key) {
            Ok(k) => k,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e.into()).await,
        };
        let minter = SshMinter {
            ca,
            subject,
            serial: random_ssh_serial()?,
        };
        let issued = self.mint(caller, ACTION, session, peer, minter).await?;
        tracing::info!(session = %id, serial = issued.serial, valid_before = %issued.valid_before, "SSH certificate issued");
        Ok(issued)
    }
}
