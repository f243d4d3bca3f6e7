//! The `lockstep` binary: parses the command line, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser;
use lockstep::cli::{Cli, Output};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; LOCKSTEP_LOG sets the filter (default: info for
    // `serve`, warn otherwise), LOCKSTEP_LOG_FORMAT=json makes them JSON lines.
    let default = if matches!(cli.command, lockstep::cli::Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    // tss-esapi logs every error it returns; lockstep reports those itself,
    // with their return codes, so its own log lines are off by default.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},tss_esapi=off")));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if std::env::var("LOCKSTEP_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
    let out = Output { json: cli.json };
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}
