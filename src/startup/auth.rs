//! Step 3: who callers are: static API tokens (inline and from the tokens
//! file) and trusted OIDC issuers.

use crate::auth::Authenticator;
use crate::auth::oidc::OidcVerifier;
use crate::auth::tokens::StaticTokens;
use crate::config::Config;
use crate::error::Error;

/// The authenticator `[auth]` describes. Nobody can call the API when it
/// names neither tokens nor issuers; that is allowed, with a warning.
pub fn authenticator(config: &Config) -> Result<Authenticator, Error> {
    let tokens = static_tokens(config)?;
    let oidc = oidc(config)?;
    if tokens.is_empty() && oidc.is_none() {
        tracing::warn!("no API tokens and no OIDC issuers are configured: nobody can call the API");
    }
    Ok(Authenticator::new(tokens, oidc))
}

/// `[[auth.token]]` entries and those of `[auth] tokens_file`.
fn static_tokens(config: &Config) -> Result<StaticTokens, Error> {
    let mut entries = config.auth.token.clone();
    if let Some(file) = &config.auth.tokens_file {
        entries.extend(
            StaticTokens::read_file(file).map_err(|e| Error::InvalidArgument(e.to_string()))?,
        );
    }
    StaticTokens::new(&entries).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The `[[auth.oidc]]` issuers, if any; relative JWKS files are relative to
/// the configuration file.
fn oidc(config: &Config) -> Result<Option<OidcVerifier>, Error> {
    if config.auth.oidc.is_empty() {
        return Ok(None);
    }
    let base = config
        .source
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let http = crate::net::client(crate::net::Trust::PublicRoots)?;
    OidcVerifier::new(&config.auth.oidc, &base, http)
        .map(Some)
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The Shared Signals receiver for the `[[transmitter]]`s, if any;
/// relative JWKS files are relative to the configuration file.
pub fn signal_receiver(config: &Config) -> Result<Option<crate::signals::Receiver>, Error> {
    if config.transmitters.is_empty() {
        return Ok(None);
    }
    let base = config
        .source
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let http = crate::net::client(crate::net::Trust::PublicRoots)?;
    crate::signals::Receiver::new(&config.transmitters, &base, http)
}
