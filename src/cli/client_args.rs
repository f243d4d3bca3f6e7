//! Flags shared by the client subcommands: which server, which CA, which
//! token.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use crate::client::Client;
use crate::error::Error;
use crate::secret::SecretRef;

/// How to reach the lockstep server. `Debug` shows whether a token was
/// given, never the token.
#[derive(Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "LOCKSTEP_URL", default_value = "https://127.0.0.1:8443")]
    pub url: String,
    /// PEM file with the CA certificate(s) to trust for the server (the
    /// lockstep root: var/ca/root.pem in the quickstart).
    #[arg(long, env = "LOCKSTEP_CA")]
    pub ca: Option<PathBuf>,
    /// Bearer token (an API token lst_… or an OIDC JWT). Prefer the
    /// environment or --token-file: command lines are visible to others.
    #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// Connects.
    pub fn client(&self) -> Result<Client, Error> {
        let token: SecretString = match (&self.token, &self.token_file) {
            (Some(t), _) => SecretString::from(t.trim()),
            (None, Some(path)) => SecretRef::File(path.clone())
                .resolve()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "no token: set LOCKSTEP_TOKEN or pass --token-file".into(),
                ));
            }
        };
        Client::new(&self.url, self.ca.as_deref(), token)
    }

    /// Connects to read what the server publishes to anyone (the CA and
    /// TSA chains): no token needed, none sent.
    pub fn published_client(&self) -> Result<Client, Error> {
        Client::new(&self.url, self.ca.as_deref(), SecretString::from(""))
    }
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl std::fmt::Display for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}
