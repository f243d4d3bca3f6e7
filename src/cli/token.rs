//! `lockstep token`: fetch a session-bound JWT.

use std::path::PathBuf;

use clap::Args;

use super::Output;
use super::client_args::ClientArgs;
use crate::api::views::TokenBody;
use crate::error::Error;
use crate::fsio::write_atomic;

/// Get a session-bound token (JWT) for an open session: its `exp` is the
/// session's close time.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// The audience (`aud`), if not the session's resource.
    #[arg(long)]
    audience: Option<String>,
    /// Bind the token to this certificate of the session (PEM): the token
    /// is then only good with that certificate (RFC 8705 `cnf`).
    #[arg(long)]
    bind_cert: Option<PathBuf>,
    /// Write the token here (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `token`.
pub fn run(args: TokenArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let certificate = match &args.bind_cert {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?),
        None => None,
    };
    let body = TokenBody {
        audience: args.audience,
        certificate,
        x5t_s256: None,
    };
    let runtime = super::session::runtime()?;
    let issued = runtime.block_on(client.token(&args.id, &body))?;
    match &args.out {
        Some(path) => {
            write_atomic(path, format!("{}\n", issued.token).as_bytes(), 0o600)?;
            out.print(
                &serde_json::json!({
                    "session": issued.session, "jti": issued.jti, "audience": issued.audience,
                    "expires_at": issued.expires_at, "token_file": path,
                }),
                || {
                    format!(
                        "token {} for {} until {} written to {} (0600)\n",
                        issued.jti,
                        issued.audience,
                        issued.expires_at,
                        path.display()
                    )
                },
            );
        }
        None => out.print(&issued, || format!("{}\n", issued.token)),
    }
    Ok(())
}
