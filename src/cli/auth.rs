//! `lockstep auth add-token`.

use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::json;

use super::Output;
use crate::auth::tokens::add_to_file;
use crate::config::Config;
use crate::error::Error;

/// Manage API tokens.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create an API token for NAME (the caller `token:NAME`), store its
    /// SHA-256 in `[auth] tokens_file` and print the token once.
    AddToken {
        /// The token's name.
        name: String,
        /// Replace an existing token of that name (the old one stops working).
        #[arg(long)]
        replace: bool,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// Runs an `auth` subcommand.
pub fn run(config: &Config, cmd: AuthCommand, out: Output) -> Result<(), Error> {
    match cmd {
        AuthCommand::AddToken {
            name,
            replace,
            out: token_out,
        } => {
            let file = config.auth.tokens_file.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "the configuration has no `[auth] tokens_file` to add tokens to".into(),
                )
            })?;
            let token = add_to_file(file, &name, replace)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            if let Some(path) = token_out {
                crate::fsio::write_atomic(
                    &path,
                    format!("{}\n", token.expose_secret()).as_bytes(),
                    0o600,
                )?;
                let value = json!({
                    "identity": format!("token:{name}"),
                    "token_file": path,
                    "tokens_file": file,
                });
                out.print(&value, || {
                    format!(
                        "token for token:{name} written to {} (mode 0600)\n",
                        path.display()
                    )
                });
                return Ok(());
            }
            let value = json!({
                "identity": format!("token:{name}"),
                "token": token.expose_secret(),
                "tokens_file": file,
            });
            out.print(&value, || {
                format!(
                    "{}\n# identity token:{name}; only its hash is stored in {}. It is shown once: keep it secret.\n",
                    token.expose_secret(),
                    file.display()
                )
            });
            Ok(())
        }
    }
}
