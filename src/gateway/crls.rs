//! The signed revocation data the gateway holds: the issuer's CRL, one per
//! issuing CA, fetched every `[issuer] crl_refresh` and verified under an
//! issuing CA certificate that chains to the lockstep root.
//!
//! It serves two ends. While the link works it is the fallback behind the
//! event stream: a connection whose serial appears on a CRL is cut, and a
//! listed certificate is refused at the handshake. While the link is lost
//! it is what routes with `offline = "crl"` decide by (see
//! [`Offline`](super::config::Offline)). The CRLs and CA certificates are
//! kept in the spool directory (`crl/`), so a gateway restarted during an
//! outage still holds them; they are verified again when read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use der::EncodePem;
use x509_cert::Certificate;

use super::sessions::Sessions;
use crate::client::Client;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::Error;
use crate::sessions::ConnectionEnd;
use crate::x509::crl::{VerifiedCrl, verify_crl};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// CRLs held at most (one per issuing CA; a deployment has a few).
const MAX_HELD: usize = 64;

/// Where a certificate stands by the CRL the gateway holds for its CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not listed, on a CRL current until the given time (its
    /// `nextUpdate` plus the grace).
    Clear(Timestamp),
    /// Listed: its session closed (or was revoked).
    Listed(ConnectionEnd),
    /// The CRL held for its CA is past its `nextUpdate` plus the grace.
    Stale(Timestamp),
    /// No CRL is held for its CA.
    NotHeld,
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Clear(until) => write!(f, "not on the CRL, current until {until}"),
            Self::Listed(end) => write!(f, "on the CRL ({end})"),
            Self::Stale(since) => write!(f, "the CRL held is not current since {since}"),
            Self::NotHeld => write!(f, "no CRL is held for its CA"),
        }
    }
}

struct Held {
    crl: VerifiedCrl,
    revoked: HashMap<String, ConnectionEnd>,
}

#[derive(Default)]
struct Inner {
    /// Issuing CA certificates, each checked to chain to a root.
    cas: Vec<Certificate>,
    /// By issuing CA key identifier.
    held: HashMap<Vec<u8>, Held>,
}

/// The CRLs held, and the CA certificates they verify under.
pub struct Crls {
    roots: Vec<Certificate>,
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Crls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crls")
            .field("held", &self.lock().held.len())
            .finish()
    }
}

/// How a CRL reason code ends a listed certificate's connections:
/// cessationOfOperation is what a close records, anything else a
/// revocation.
fn end_of(reason: u8) -> ConnectionEnd {
    match reason {
        5 => ConnectionEnd::Closed,
        _ => ConnectionEnd::Revoked,
    }
}

impl Crls {
    /// Holds what `dir` kept from an earlier run (verified again under
    /// `roots`, the lockstep root certificates as DER); creates `dir`.
    pub fn open(roots: Vec<Certificate>, dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        let crls = Self {
            roots,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        };
        crls.reload();
        Ok(crls)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads back the kept CA certificates and CRLs; what no longer
    /// verifies is ignored (and logged).
    fn reload(&self) {
        if let Ok(pem) = std::fs::read(self.dir.join("ca.pem"))
            && let Err(e) = self.add_cas(&pem)
        {
            tracing::warn!(error = %e, "kept CA certificates not used");
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "crl") {
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|der| self.hold(&der, SystemClock.now()))
                {
                    Ok(_) => tracing::info!(file = %path.display(), "holding a kept CRL"),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "kept CRL not used")
                    }
                }
            }
        }
    }

    /// Adds the CA certificates of a PEM chain that chain to a root (the
    /// roots themselves are skipped); says how many are new.
    fn add_cas(&self, pem: &[u8]) -> Result<usize, String> {
        let certs = Certificate::load_pem_chain(pem).map_err(|e| format!("CA chain: {e}"))?;
        let mut inner = self.lock();
        let mut added = 0;
        for cert in &certs {
            if self.roots.contains(cert) || inner.cas.contains(cert) {
                continue;
            }
            crate::x509::verify_path(cert, &certs, &self.roots)
                .map_err(|e| format!("CA certificate {}: {e}", cert.tbs_certificate().subject()))?;
            inner.cas.push(cert.clone());
            added += 1;
        }
        if added > 0 {
            let mut out = String::new();
            for c in &inner.cas {
                out.push_str(
                    &c.to_pem(der::pem::LineEnding::LF)
                        .map_err(|e| e.to_string())?,
                );
            }
            crate::fsio::write_atomic(&self.dir.join("ca.pem"), out.as_bytes(), 0o600)
                .map_err(|e| e.to_string())?;
        }
        Ok(added)
    }

    /// Verifies a DER CRL and holds it unless an equal or newer one (by
    /// CRL number) is held for its CA; says whether it is held now. The
    /// root may sign CRLs too.
    fn hold(&self, der: &[u8], now: Timestamp) -> Result<bool, String> {
        let mut inner = self.lock();
        let signers: Vec<Certificate> = inner.cas.iter().chain(&self.roots).cloned().collect();
        let crl = verify_crl(der, &signers).map_err(|e| e.to_string())?;
        if crl.this_update > now.plus_secs(300) {
            return Err(format!(
                "the CRL's thisUpdate ({}) is ahead of this clock ({now}); check the clocks",
                crl.this_update
            ));
        }
        if let Some(h) = inner.held.get(&crl.issuer_key)
            && (h.crl.number, h.crl.this_update) >= (crl.number, crl.this_update)
        {
            return Ok(false);
        }
        if !inner.held.contains_key(&crl.issuer_key) && inner.held.len() >= MAX_HELD {
            return Err(format!("already holding the CRLs of {MAX_HELD} CAs"));
        }
        let file = self
            .dir
            .join(format!("{}.crl", hex::encode(&crl.issuer_key)));
        crate::fsio::write_atomic(&file, der, 0o600).map_err(|e| e.to_string())?;
        let revoked = crl
            .revoked
            .iter()
            .map(|(serial, reason)| (serial.clone(), end_of(*reason)))
            .collect();
        inner
            .held
            .insert(crl.issuer_key.clone(), Held { crl, revoked });
        Ok(true)
    }

    /// Whether the serial is on the CRL held for its CA, and how its
    /// connections end.
    pub fn listed(&self, issuer_key: &[u8], serial: &str) -> Option<ConnectionEnd> {
        self.lock()
            .held
            .get(issuer_key)
            .and_then(|h| h.revoked.get(serial).copied())
    }

    /// Where a certificate stands at `now` by the CRL held for its CA,
    /// taken as current until `nextUpdate + grace`.
    pub fn standing(
        &self,
        issuer_key: &[u8],
        serial: &str,
        now: Timestamp,
        grace: Duration,
    ) -> Standing {
        let inner = self.lock();
        let Some(h) = inner.held.get(issuer_key) else {
            return Standing::NotHeld;
        };
        if let Some(end) = h.revoked.get(serial) {
            return Standing::Listed(*end);
        }
        let until = h.crl.next_update.plus_secs(grace.as_secs() as i64);
        if now < until {
            Standing::Clear(until)
        } else {
            Standing::Stale(until)
        }
    }

    /// Fetches the issuer's CA chain and CRL once and holds what verifies;
    /// says whether a new CRL is held.
    async fn fetch(&self, client: &Client) -> Result<bool, String> {
        let chain = tokio::time::timeout(FETCH_TIMEOUT, client.ca_chain())
            .await
            .map_err(|_| "the issuer did not send its CA chain in time".to_owned())?
            .map_err(|e| format!("CA chain: {e}"))?;
        self.add_cas(chain.as_bytes())?;
        let der = tokio::time::timeout(FETCH_TIMEOUT, client.crl())
            .await
            .map_err(|_| "the issuer did not send its CRL in time".to_owned())?
            .map_err(|e| format!("CRL: {e}"))?;
        self.hold(&der, SystemClock.now())
    }
}

/// Fetches the CRL every `every` until the task is dropped; each new one
/// cuts the connections whose serials it lists.
pub async fn refresh(
    client: Arc<Client>,
    crls: Arc<Crls>,
    sessions: Arc<Sessions>,
    every: Duration,
) {
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crls.fetch(&client).await {
            Ok(new) => {
                if failing {
                    tracing::info!("the issuer's CRL is fetched again");
                    failing = false;
                }
                if new {
                    let cut = sessions.cut_where(|_, t| crls.listed(&t.issuer_key, &t.serial));
                    if cut > 0 {
                        tracing::info!(
                            connections = cut,
                            "connections cut: their certificates are on the CRL"
                        );
                    }
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "the issuer's CRL could not be fetched");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
