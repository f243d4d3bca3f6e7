//! `lockstep init`.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use super::Output;
use crate::ca::{self, InitOptions, InitReport};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::error::Error;
use crate::sessions::Event;

/// Create the CA's keys inside the configured device and its certificates.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Destroy and replace keys that already exist on the device.
    #[arg(long)]
    pub force: bool,
    /// Do not create a root: create the issuing key and write a CSR for an
    /// external root CA to sign (then run `init --install-chain`).
    #[arg(long, conflicts_with = "install_chain")]
    pub external_root: bool,
    /// Install the chain an external root returned for the CSR (a PEM file
    /// with the issuing CA certificate, intermediates and the root).
    #[arg(long, value_name = "PEM")]
    pub install_chain: Option<PathBuf>,
}

/// Runs `init`.
pub fn run(config: &Config, args: InitArgs, out: Output) -> Result<(), Error> {
    let backend = config.backend.open()?;
    let now = SystemClock.now();
    let report = match &args.install_chain {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let chain = ca::read_pem_chain(&pem, path)?;
            ca::install_chain(config, backend.as_ref(), chain, now)?
        }
        None => ca::init(
            config,
            backend.as_ref(),
            InitOptions {
                force: args.force,
                external_root: args.external_root,
            },
            now,
        )?,
    };
    record(config, &report, now)?;
    out.print(&report, || text(&report));
    Ok(())
}

/// Puts the keys generated on the record, when the configuration has a
/// store.
fn record(config: &Config, report: &InitReport, now: Timestamp) -> Result<(), Error> {
    let events = report
        .generated
        .iter()
        .map(|k| Event::KeyInitialised {
            role: k.role.clone(),
            key: k.key.clone(),
            key_sha256: k.key_sha256.clone(),
        })
        .collect();
    record_events(config, events, now, "the keys were created")
}

/// Appends `events` to the audit trail, when the configuration has a
/// store; `done` says what already happened if that fails.
fn record_events(
    config: &Config,
    events: Vec<Event>,
    now: Timestamp,
    done: &str,
) -> Result<(), Error> {
    let Some(store) = &config.store else {
        return Ok(());
    };
    if events.is_empty() {
        return Ok(());
    }
    let fail = |e: crate::store::StoreError| {
        Error::InvalidArgument(format!("{done} but could not be recorded: {e}"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    runtime.block_on(async {
        let store = crate::store::open(store).await.map_err(fail)?;
        for event in events {
            store.record(None, event, now).await.map_err(fail)?;
        }
        Ok(())
    })
}

/// Certify another replica's issuing key under this CA's root.
#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The replica's CSR (`issuing.csr.pem`, written there by
    /// `lockstep init --external-root`).
    #[arg(long, value_name = "PEM")]
    pub csr: PathBuf,
    /// Where to write the chain for the replica's
    /// `lockstep init --install-chain`.
    #[arg(long, value_name = "PEM")]
    pub out: PathBuf,
}

/// Runs `certify-issuer`.
pub fn certify(config: &Config, args: CertifyArgs, out: Output) -> Result<(), Error> {
    let backend = config.backend.open()?;
    let now = SystemClock.now();
    let csr = std::fs::read(&args.csr).map_err(|e| Error::io(&args.csr, e))?;
    let report = ca::certify_issuer(config, backend.as_ref(), &csr, &args.out, now)?;
    let c = &report.issuing;
    let event = Event::IssuingCaCertified {
        subject: c.subject.clone(),
        serial: c.serial.clone(),
        key_sha256: c.key_sha256.clone(),
        not_after: c.not_after,
    };
    record_events(config, vec![event], now, "the issuing CA was certified")?;
    out.print(&report, || {
        format!(
            "Certified the issuing CA {}
  serial {}  valid {} .. {}
  key sha256 {}
  wrote  {}
On the replica, run: lockstep init --install-chain {}\n",
            c.subject,
            c.serial,
            c.not_before,
            c.not_after,
            c.key_sha256,
            report.chain.display(),
            report.chain.display()
        )
    });
    Ok(())
}

fn text(r: &InitReport) -> String {
    let mut s = String::new();
    let _ = match r.mode {
        "external-root-csr" => writeln!(
            s,
            "Issuing key created on {}.\nHave your root CA sign the request below as a CA certificate (path length 0),\nthen run: lockstep init --install-chain <chain.pem>",
            r.backend
        ),
        "installed-chain" => writeln!(
            s,
            "Installed the external chain for the key on {}.",
            r.backend
        ),
        "added-service-keys" => writeln!(
            s,
            "The CA was already initialised on {}; created the missing service keys: {}.",
            r.backend,
            r.service_keys.join(", ")
        ),
        _ => writeln!(s, "CA initialised; keys generated on {}.", r.backend),
    };
    for (role, c) in [("root", &r.root), ("issuing", &r.issuing)] {
        if let Some(c) = c {
            let _ = writeln!(
                s,
                "  {role:<8} {}\n           serial {}  valid {} .. {}\n           key sha256 {}",
                c.subject, c.serial, c.not_before, c.not_after, c.key_sha256
            );
        }
    }
    if let Some(csr) = &r.csr {
        let _ = writeln!(s, "  csr      {}", csr.display());
    }
    for f in &r.files {
        let _ = writeln!(s, "  wrote    {}", f.display());
    }
    if r.mode != "added-service-keys" && !r.service_keys.is_empty() {
        let _ = writeln!(
            s,
            "  keys     {} (generated on the device)",
            r.service_keys.join(", ")
        );
    }
    s
}
