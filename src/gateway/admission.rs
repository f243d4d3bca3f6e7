//! Who may connect through a route: the checks on a client certificate.
//!
//! The TLS handshake itself refuses, with an alert the client sees, a
//! certificate that does not chain to the lockstep root, is outside its
//! validity, lacks clientAuth, names another resource, carries no session
//! extension, or belongs to a session known to be closed (or whose serial
//! is on the CRL the gateway holds). A session whose
//! status is not known yet is settled right after the handshake
//! ([`super::sessions`]).

use std::sync::Arc;

use der::Decode;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, ExtendedKeyUsage};

use super::carry::Protocol;
use super::crls::Crls;
use super::modbus::Allowed;
use super::sessions::Sessions;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::sessions::SessionId;
use crate::x509::extension::SessionEvidence;
use crate::x509::oids;

/// What an admitted certificate says: whose session, which certificate,
/// until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The session it was minted for.
    pub session: SessionId,
    /// Its serial, hex.
    pub serial: String,
    /// Its `notAfter`: the session's close time.
    pub not_after: Timestamp,
    /// Its issuing CA's key identifier (the certificate's AKI; empty when
    /// it has none): which CRL speaks for it.
    pub issuer_key: Vec<u8>,
    /// The policy's limit on the session's connections at once, from the
    /// session extension.
    pub connections: Option<u32>,
    /// The only Modbus functions the policy lets the session use, from
    /// the session extension.
    pub modbus: Option<Allowed>,
}

impl Ticket {
    /// How a connection of this session is carried on a route of
    /// `protocol`: a session limited to some Modbus functions gets only
    /// those the route allows too, and is refused by a route that does
    /// not read Modbus (it could not be held to them there).
    pub fn protocol_on(&self, protocol: Protocol) -> Result<Protocol, String> {
        match (protocol, self.modbus) {
            (p, None) => Ok(p),
            (Protocol::Modbus { allowed, on_refused }, Some(mine)) => Ok(Protocol::Modbus {
                allowed: allowed.and(mine),
                on_refused,
            }),
            (Protocol::Opaque, Some(_)) => Err(
                "the session's policy allows only some Modbus functions, and this route does not read Modbus (protocol = \"modbus-tcp\")".into(),
            ),
        }
    }
}

/// Reads the lockstep facts of a client certificate that chains to the
/// root, and checks it is for `resource_uri` and for client
/// authentication. The message says what is wrong.
pub fn ticket(der: &[u8], resource_uri: &str) -> Result<Ticket, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("malformed certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let ext = |oid| {
        tbs.extensions()
            .and_then(|exts| exts.iter().find(|e| e.extn_id == oid))
    };
    let eku = ext(const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
        .ok_or("the certificate has no extended key usage; use a session certificate")?;
    let eku = ExtendedKeyUsage::from_der(eku.extn_value.as_bytes())
        .map_err(|e| format!("malformed extended key usage: {e}"))?;
    if !eku.0.contains(&oids::KP_CLIENT_AUTH) {
        return Err("the certificate is not for client authentication (no clientAuth); use an mtls-client session certificate".into());
    }
    let san = ext(const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .ok_or("the certificate names no resource")?;
    let san = SubjectAltName::from_der(san.extn_value.as_bytes())
        .map_err(|e| format!("malformed subject alternative names: {e}"))?;
    let names_resource = san.0.iter().any(
        |n| matches!(n, GeneralName::UniformResourceIdentifier(u) if u.as_str() == resource_uri),
    );
    if !names_resource {
        return Err(format!(
            "the certificate is not for this route's resource ({resource_uri})"
        ));
    }
    let evidence = SessionEvidence::from_certificate(&cert)
        .map_err(|e| e.to_string())?
        .ok_or("the certificate carries no lockstep session extension")?;
    let session = SessionId::parse(&evidence.session_id)
        .map_err(|_| "the session extension names no lockstep session id".to_owned())?;
    let not_after = tbs.validity().not_after.to_unix_duration().as_secs() as i64;
    let issuer_key = match ext(const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER) {
        Some(e) => AuthorityKeyIdentifier::from_der(e.extn_value.as_bytes())
            .map_err(|e| format!("malformed authority key identifier: {e}"))?
            .key_identifier
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(Ticket {
        session,
        serial: hex::encode(tbs.serial_number().as_bytes()),
        not_after: Timestamp::from_unix(not_after),
        issuer_key,
        connections: evidence.connections,
        modbus: evidence.modbus_functions.as_deref().map(Allowed::of),
    })
}

/// A route's client certificate verifier: the WebPKI checks against the
/// lockstep root, then [`ticket`], then the session's known status.
#[derive(Debug)]
pub struct RouteVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    route: String,
    resource_uri: String,
    sessions: Arc<Sessions>,
    crls: Arc<Crls>,
}

impl RouteVerifier {
    /// A verifier for `route` admitting sessions of `resource`, trusting
    /// `roots`.
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        route: &str,
        resource: &str,
        sessions: Arc<Sessions>,
        crls: Arc<Crls>,
    ) -> Result<Arc<Self>, Error> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(roots, crate::api::tls::provider())
                .build()
                .map_err(|e| Error::InvalidArgument(format!("client certificate roots: {e}")))?;
        Ok(Arc::new(Self {
            webpki,
            route: route.to_owned(),
            resource_uri: crate::x509::names::resource_uri(resource),
            sessions,
            crls,
        }))
    }
}

impl ClientCertVerifier for RouteVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(
                |e| tracing::info!(route = %self.route, error = %e, "refused: client certificate"),
            )?;
        let ticket = ticket(end_entity, &self.resource_uri).map_err(|why| {
            tracing::info!(route = %self.route, reason = %why, "refused: client certificate");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        let closed = self.sessions.known_closed(&ticket.session);
        if let Some(end) = closed.or_else(|| self.crls.listed(&ticket.issuer_key, &ticket.serial)) {
            tracing::info!(route = %self.route, session = %ticket.session, serial = %ticket.serial,
                ended = %end, "refused: the session is closed");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
