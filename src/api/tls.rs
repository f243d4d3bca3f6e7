//! The service's own TLS identity.
//!
//! Unless `[server] certificate` is configured, lockstep mints its server
//! certificate with its issuing CA at start (EKU serverAuth, the configured
//! host names and addresses, a key generated in memory), so clients need
//! only the lockstep root. The certificate is renewed in the background
//! when two thirds of its life have passed.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use der::Decode;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::x509::{Issuer, San, SubjectName};

const DAY_SECS: i64 = 86_400;

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("server TLS: {e}"))
}

/// The crypto provider lockstep uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration presenting `identity`'s certificate.
pub fn server_config(
    identity: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server certificate minted by lockstep's own issuing CA, renewed as it
/// ages.
#[derive(Debug)]
pub struct MintedIdentity {
    issuer: Arc<Issuer>,
    hostnames: Vec<String>,
    days: u32,
    current: RwLock<(Arc<CertifiedKey>, Timestamp, Timestamp)>,
}

impl MintedIdentity {
    /// Mints the first certificate.
    pub fn new(
        issuer: Arc<Issuer>,
        hostnames: Vec<String>,
        days: u32,
        now: Timestamp,
    ) -> Result<Arc<Self>, Error> {
        let minted = mint(&issuer, &hostnames, days, now)?;
        Ok(Arc::new(Self {
            issuer,
            hostnames,
            days,
            current: RwLock::new(minted),
        }))
    }

    /// Renews the certificate if two thirds of its life have passed.
    /// Blocks on the key device: call from a blocking context.
    pub fn renew_if_due(&self, now: Timestamp) -> Result<bool, Error> {
        let (not_before, not_after) = {
            let c = self.current.read().unwrap_or_else(|p| p.into_inner());
            (c.1, c.2)
        };
        let life = not_after.secs_since(not_before);
        if now.secs_since(not_before) < life * 2 / 3 {
            return Ok(false);
        }
        let fresh = mint(&self.issuer, &self.hostnames, self.days, now)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!("server certificate renewed");
        Ok(true)
    }
}

impl ResolvesServerCert for MintedIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// Mints a server certificate for a new in-memory P-256 key.
fn mint(
    issuer: &Issuer,
    hostnames: &[String],
    days: u32,
    now: Timestamp,
) -> Result<(Arc<CertifiedKey>, Timestamp, Timestamp), Error> {
    let secret = new_p256_key()?;
    let spki_der = secret.public_key().to_public_key_der().map_err(tls_error)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(tls_error)?;
    let sans: Vec<San> = hostnames
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(h.clone()),
        })
        .collect();
    let cn = hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "lockstep".into());
    let subject = SubjectName::cn(cn).with_organization("lockstep service");
    let not_after = now
        .plus_secs(i64::from(days.max(1)) * DAY_SECS)
        .min(issuer.not_after());
    let issued = issuer.mint_service(
        &spki,
        &subject,
        &sans,
        crate::x509::oids::KP_SERVER_AUTH,
        not_after,
        now,
    )?;
    let pkcs8 = secret.to_pkcs8_der().map_err(tls_error)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()));
    let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key).map_err(tls_error)?;
    let mut chain = vec![CertificateDer::from(issued.der)];
    if let Some(issuing) = issuer.chain().first() {
        chain.push(CertificateDer::from(
            der::Encode::to_der(issuing).map_err(tls_error)?,
        ));
    }
    Ok((Arc::new(CertifiedKey::new(chain, signing)), now, not_after))
}

/// A P-256 key from 32 bytes of OS randomness (retried in the negligible
/// case the bytes are not a valid scalar); the bytes are wiped.
fn new_p256_key() -> Result<p256::SecretKey, Error> {
    for _ in 0..8 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(tls_error)?;
        if let Ok(k) = p256::SecretKey::from_slice(bytes.as_ref()) {
            return Ok(k);
        }
    }
    Err(tls_error("could not generate a key"))
}

/// A configured certificate chain and key, read from files.
pub fn from_files(
    certificate: &std::path::Path,
    key: &crate::secret::SecretRef,
) -> Result<Arc<dyn ResolvesServerCert>, Error> {
    use rustls_pki_types::pem::PemObject;
    use secrecy::ExposeSecret;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(tls_error)?
        .collect::<Result<_, _>>()
        .map_err(tls_error)?;
    let key_pem = key
        .resolve()
        .map_err(|e| tls_error(format!("private key: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose_secret().as_bytes())
        .map_err(|_| tls_error("private key is not a PEM private key"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(tls_error)?;
    let certified = Arc::new(CertifiedKey::new(chain, signing));
    Ok(Arc::new(Fixed(certified)))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
