//! The `lockstep` command line. The binary only parses arguments, sets up
//! logging and calls into here; each subcommand lives in its own module.

mod audit;
mod auth;
mod cert;
mod client_args;
mod connect;
mod gateway;
mod init;
mod keys;
mod output;
mod review;
mod serve;
mod session;
mod sign;
mod ssh;
mod token;
mod webhooks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::error::Error;
pub use output::Output;

/// lockstep: certificates that live exactly as long as an approved session,
/// signed by keys that never leave an HSM or TPM.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "LOCKSTEP_CONFIG",
        default_value = "lockstep.toml"
    )]
    pub config: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the CA: keys inside the HSM/TPM and the CA certificates.
    Init(init::InitArgs),
    /// Certify another replica's issuing key under this CA's root (for
    /// replicas whose issuing keys cannot be shared).
    CertifyIssuer(init::CertifyArgs),
    /// Inspect the keys held by the configured device.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Verify or export the audit trail (offline).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the issuer service (HTTPS).
    Serve(serve::ServeArgs),
    /// Show where webhook delivery stands (from the store).
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Ask for a session on one resource.
    Request(session::RequestArgs),
    /// Approve a session after seeing exactly what it asks.
    Approve(session::ApproveArgs),
    /// Deny a session.
    Deny(session::DenyArgs),
    /// Show a session, or list the sessions you may see.
    Status(session::StatusArgs),
    /// Wait until a session opens (exit 0) or closes without opening (exit 1).
    Wait(session::WaitArgs),
    /// Close your own session.
    Close(session::CloseArgs),
    /// End a session as an approver or operator.
    Revoke(session::RevokeArgs),
    /// Record a break-glass session's after-review (its reviewers only).
    Review(review::ReviewArgs),
    /// Get a certificate for an open session.
    Cert(cert::CertArgs),
    /// Get a session-bound token (JWT) for an open session.
    Token(token::TokenArgs),
    /// Get an SSH user certificate for an open `ssh-user` session.
    Ssh(ssh::SshArgs),
    /// Sign an artifact for an open `code-signing` session and write a
    /// Sigstore bundle with lockstep's timestamp.
    Sign(sign::SignArgs),
    /// Write a Sigstore trusted root naming lockstep's CA and TSA.
    TrustedRoot(sign::TrustedRootArgs),
    /// Verify a release bundle offline, with the session's approval.
    Verify(sign::VerifyArgs),
    /// Run a gateway (its own configuration file: `--config gateway.toml`)
    /// that admits connections for open sessions and cuts them when the
    /// session ends.
    Gateway,
    /// Tunnel stdin/stdout or a local port through a gateway with a
    /// session certificate.
    Connect(connect::ConnectArgs),
}

impl Cli {
    /// Runs the command, printing its result.
    pub fn run(self) -> Result<(), Error> {
        let out = Output { json: self.json };
        match self.command {
            Command::Init(args) => init::run(&load(&self.config)?, args, out),
            Command::CertifyIssuer(args) => init::certify(&load(&self.config)?, args, out),
            Command::Keys(cmd) => keys::run(&load(&self.config)?, cmd, out),
            Command::Serve(args) => serve::run(&load(&self.config)?, args),
            Command::Webhooks(cmd) => webhooks::run(&load(&self.config)?, cmd, out),
            Command::Audit(cmd) => audit::run(&self.config, cmd, out),
            Command::Auth(cmd) => auth::run(&load(&self.config)?, cmd, out),
            Command::Request(args) => session::request(args, out),
            Command::Approve(args) => session::approve(args, out),
            Command::Deny(args) => session::deny(args, out),
            Command::Status(args) => session::status(args, out),
            Command::Wait(args) => session::wait(args, out),
            Command::Close(args) => session::close(args, out),
            Command::Revoke(args) => session::revoke(args, out),
            Command::Review(args) => review::run(args, out),
            Command::Cert(args) => cert::run(args, out),
            Command::Token(args) => token::run(args, out),
            Command::Ssh(args) => ssh::run(args, out),
            Command::Sign(args) => sign::sign(args, out),
            Command::TrustedRoot(args) => sign::trusted_root(args, out),
            Command::Verify(args) => sign::run_verify(args, out),
            Command::Gateway => gateway::run(&self.config),
            Command::Connect(args) => connect::run(args),
        }
    }
}

/// The multi-threaded runtime of the commands that keep running (`serve`,
/// `gateway`, `connect`).
fn long_running_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))
}

fn load(path: &std::path::Path) -> Result<Config, Error> {
    Ok(Config::load(path)?)
}
