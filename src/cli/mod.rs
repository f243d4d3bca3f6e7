//! The `lockstep` command line. The binary only parses arguments, sets up
//! logging and calls into here; each subcommand lives in its own module.

mod init;
mod keys;
mod output;

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
    /// Inspect the keys held by the configured device.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

impl Cli {
    /// Runs the command, printing its result.
    pub fn run(self) -> Result<(), Error> {
        let out = Output { json: self.json };
        match self.command {
            Command::Init(args) => init::run(&load(&self.config)?, args, out),
            Command::Keys(cmd) => keys::run(&load(&self.config)?, cmd, out),
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, Error> {
    Ok(Config::load(path)?)
}
