//! `lockstep keys list`.

use std::fmt::Write;

use clap::Subcommand;
use serde::Serialize;

use super::Output;
use crate::config::Config;
use crate::error::Error;
use crate::keys::ObjectInfo;

/// Inspect the device's keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the objects on the device with labels, ids, key types and the
    /// sensitive / extractable / always-sensitive / never-extractable
    /// attributes.
    List,
}

#[derive(Serialize)]
struct Listing {
    backend: String,
    objects: Vec<ObjectInfo>,
}

/// Runs a `keys` subcommand.
pub fn run(config: &Config, cmd: KeysCommand, out: Output) -> Result<(), Error> {
    match cmd {
        KeysCommand::List => {
            let backend = config.backend.open()?;
            let listing = Listing {
                backend: backend.describe(),
                objects: backend.list()?,
            };
            out.print(&listing, || text(&listing));
            Ok(())
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn text(l: &Listing) -> String {
    let mut s = format!("{}\n", l.backend);
    s.push_str(
        "CLASS        LABEL                    ID       TYPE       SENSITIVE EXTRACTABLE ALWAYS_SENSITIVE NEVER_EXTRACTABLE LOCAL\n",
    );
    for o in &l.objects {
        let (sens, extr, always, never, local) = match o.protection {
            Some(p) => (
                yes(p.sensitive),
                yes(p.extractable),
                yes(p.always_sensitive),
                yes(p.never_extractable),
                yes(p.local),
            ),
            None => ("-", "-", "-", "-", "-"),
        };
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:<8} {:<10} {:<9} {:<11} {:<16} {:<17} {}",
            o.class,
            o.label,
            o.id,
            o.key_type.as_deref().unwrap_or("-"),
            sens,
            extr,
            always,
            never,
            local
        );
    }
    if l.objects.is_empty() {
        s.push_str("(no objects: run `lockstep init`)\n");
    }
    s
}
