//! `lockstep serve`.

use std::sync::Arc;

use clap::Args;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::error::Error;
use crate::startup::{prepare, shutdown_signal};

/// Run the issuer service (HTTPS) until SIGTERM or SIGINT.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen here instead of `[server] listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// Runs `serve`.
pub fn run(config: &Config, args: ServeArgs) -> Result<(), Error> {
    let runtime = super::long_running_runtime()?;
    runtime.block_on(async {
        let prepared = prepare(config, Arc::new(SystemClock)).await?;
        let addr = args.listen.unwrap_or(prepared.listen);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(addr.to_string(), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io(addr.to_string(), e))?;
        tracing::info!(address = %local, "lockstep is serving");
        eprintln!("lockstep serving on https://{local}");
        prepared
            .run(listener, shutdown_signal())
            .await
            .map_err(|e| Error::io(local.to_string(), e))?;
        eprintln!("lockstep stopped");
        Ok(())
    })
}
