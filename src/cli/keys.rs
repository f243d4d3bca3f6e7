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
    /// List the objects on the device with labels, ids (TPM: persistent
    /// handles), key types and the sensitive / extractable /
    /// always-sensitive / never-extractable attributes (TPM: also the
    /// object attributes).
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

/// The ID column: the PKCS#11 id, or the TPM persistent handle.
fn id_of(o: &ObjectInfo) -> &str {
    match &o.handle {
        Some(h) if o.id.is_empty() => h,
        _ => &o.id,
    }
}

fn text(l: &Listing) -> String {
    let mut s = format!("{}\n", l.backend);
    let id_width = l
        .objects
        .iter()
        .map(|o| id_of(o).len())
        .max()
        .unwrap_or(0)
        .max(8);
    let with_attributes = l.objects.iter().any(|o| !o.attributes.is_empty());
    let _ = write!(
        s,
        "CLASS        LABEL                    {:<id_width$} TYPE       SENSITIVE EXTRACTABLE ALWAYS_SENSITIVE NEVER_EXTRACTABLE LOCAL",
        "ID"
    );
    s.push_str(if with_attributes {
        " ATTRIBUTES\n"
    } else {
        "\n"
    });
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
        let mut line = format!(
            "{:<12} {:<24} {:<id_width$} {:<10} {:<9} {:<11} {:<16} {:<17} {:<5}",
            o.class,
            o.label,
            id_of(o),
            o.key_type.as_deref().unwrap_or("-"),
            sens,
            extr,
            always,
            never,
            local
        );
        if with_attributes {
            line.push(' ');
            line.push_str(&o.attributes.join("|"));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    if l.objects.is_empty() {
        s.push_str("(no objects: run `lockstep init`)\n");
    }
    s
}
