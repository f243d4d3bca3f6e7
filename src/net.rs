//! Outgoing HTTPS: the clients lockstep uses to fetch OIDC keys and to talk
//! to a lockstep server, both on rustls with the ring provider.

use rustls_pki_types::CertificateDer;

use crate::error::Error;

/// Which certificate authorities an HTTPS client trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The Mozilla root program (public IdPs such as GitHub's OIDC issuer).
    PublicRoots,
    /// Only these roots (a lockstep server's own CA).
    Only(Vec<CertificateDer<'static>>),
}

/// An HTTPS client trusting `trust`, whose calls time out after a minute.
pub fn client(trust: Trust) -> Result<reqwest::Client, Error> {
    client_with(trust, Some(std::time::Duration::from_secs(60)))
}

/// An HTTPS client trusting `trust`, whose calls time out after `timeout`
/// (none: a stream that lasts as long as the server sends).
pub fn client_with(
    trust: Trust,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, Error> {
    let mut builder = builder(trust)?;
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    builder
        .build()
        .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))
}

/// A client for webhook receivers: trusting `trust`, each call ending
/// after `timeout`, and never following a redirect (a receiver that
/// answers 3xx has not taken the event, and the signed body goes nowhere
/// else).
pub fn webhook_client(
    trust: Trust,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, Error> {
    builder(trust)?
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))
}

/// A client builder on rustls trusting `trust`, with lockstep's user agent
/// and a 10 s connect timeout.
fn builder(trust: Trust) -> Result<reqwest::ClientBuilder, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::PublicRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Trust::Only(certs) => {
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::InvalidArgument(format!("CA certificate: {e}")))?;
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!("lockstep/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10)))
}
