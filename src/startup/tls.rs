//! Step 5: the server's TLS identity: the configured certificate and key,
//! or one minted by the issuing CA (renewed in the background).

use std::sync::Arc;

use rustls::server::ResolvesServerCert;

use super::blocking;
use crate::api::tls::{self, MintedIdentity};
use crate::clock::Timestamp;
use crate::config::ServerConfig;
use crate::error::Error;
use crate::x509::Issuer;

/// The rustls configuration to serve with, and the minted identity to
/// renew (none when `[server] certificate` is configured).
pub async fn identity(
    server: &ServerConfig,
    issuer: &Arc<Issuer>,
    now: Timestamp,
) -> Result<(Arc<rustls::ServerConfig>, Option<Arc<MintedIdentity>>), Error> {
    let (resolver, minted): (Arc<dyn ResolvesServerCert>, _) =
        match (&server.certificate, &server.private_key) {
            (Some(cert), Some(key)) => (tls::from_files(cert, key)?, None),
            _ => {
                let issuer = issuer.clone();
                let hostnames = server.hostnames.clone();
                let days = server.certificate_days;
                let minted =
                    blocking(move || MintedIdentity::new(issuer, hostnames, days, now)).await?;
                (minted.clone() as _, Some(minted))
            }
        };
    Ok((tls::server_config(resolver)?, minted))
}
