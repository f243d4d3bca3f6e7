//! The TPM 2.0 backend, over `tss-esapi`: swtpm in tests, `/dev/tpmrm0` (or
//! tpm2-abrmd) on hardware.
//!
//! Keys are persistent objects at configured handles in the owner
//! hierarchy (`[keys.*] handle = 0x81000010`). [`KeyBackend::generate_key`]
//! creates the primary key of [`objects::primary_template`] (the TCG ECC
//! P-256 SRK), creates an ECC P-256 signing key under it
//! ([`objects::signing_template`]), loads it, makes it persistent with
//! `TPM2_EvictControl` and flushes both transient objects. Signing is
//! `TPM2_Sign` with the persistent key, authorised by the key auth value in
//! a password session.
//!
//! All commands for one TCTI go through one thread that owns the
//! connection (see [`owner`]); when the TPM goes away calls fail at once
//! with [`KeyError::Unavailable`], and the next call after it is back
//! reconnects.

mod objects;
mod owner;
pub(super) mod rc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::{CapabilityData, Digest, HashScheme, HashcheckTicket, SignatureScheme};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

pub use self::owner::with_tpm_idle;
use self::owner::{Conn, Failure, Idempotent, Owner, set_auth, tss, with_password};
use super::{DeviceKey, KeyBackend, KeyError, KeyRef, ObjectInfo, PublicKey, Signature};
use crate::secret::SecretRef;

/// First handle of the TPM's persistent range.
pub const PERSISTENT_FIRST: u32 = 0x8100_0000;
/// Last handle of the TPM's persistent range.
pub const PERSISTENT_LAST: u32 = 0x81FF_FFFF;
/// Last persistent handle the owner hierarchy may use (the rest of the
/// range, from `0x81800000`, belongs to the platform hierarchy).
pub const OWNER_PERSISTENT_LAST: u32 = 0x817F_FFFF;

/// How long a caller waits for the TPM by default.
const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Configuration of a TPM 2.0 (`[backend]` with `type = "tpm"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// The TCTI: how to reach the TPM, e.g. `device:/dev/tpmrm0` (the
    /// kernel's resource manager), `tabrmd` (tpm2-abrmd), or
    /// `swtpm:host=127.0.0.1,port=2321` (the swtpm simulator).
    pub tcti: String,
    /// The owner hierarchy's auth value, by reference (`env:NAME` or
    /// `file:PATH`); absent means empty, the default of a cleared TPM.
    /// Needed to create and evict keys (`lockstep init`), not to sign.
    #[serde(default)]
    pub owner_auth: Option<SecretRef>,
    /// The auth value given to the keys lockstep creates, and used to sign
    /// with them, by reference; absent means empty.
    #[serde(default)]
    pub key_auth: Option<SecretRef>,
    /// How long a call waits for the TPM before giving up with
    /// `key_backend_unavailable`, in seconds (default 30). A TPM that is
    /// gone fails at once; this bounds a TPM that stops answering.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Display names of persistent handles for `keys list`; filled by
    /// [`crate::config::Config::parse`] from the `[keys]` labels.
    #[serde(skip)]
    pub key_names: BTreeMap<u32, String>,
}

impl TpmConfig {
    /// A configuration for `tcti` with empty auth values.
    pub fn new(tcti: impl Into<String>) -> Self {
        Self {
            tcti: tcti.into(),
            owner_auth: None,
            key_auth: None,
            timeout_secs: None,
            key_names: BTreeMap::new(),
        }
    }
}

/// The persistent handle of a key for the TPM backend: present and in the
/// persistent range `0x81000000`–`0x81FFFFFF`.
pub fn persistent_handle(key: &KeyRef) -> Result<u32, KeyError> {
    match key.handle {
        Some(h) if (PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&h) => Ok(h),
        Some(h) => Err(KeyError::Config(format!(
            "key {}: handle {h:#x} is not a TPM persistent handle (0x81000000–0x81FFFFFF; lockstep creates keys in the owner range 0x81000000–0x817FFFFF)",
            key.label
        ))),
        None => Err(KeyError::Config(format!(
            "key {}: the TPM backend needs `handle`, a persistent handle such as 0x81000010",
            key.label
        ))),
    }
}

/// A TPM holding lockstep's keys.
pub struct TpmBackend {
    owner: Arc<Owner>,
    name: String,
    owner_auth: Option<SecretRef>,
    key_auth: Option<SecretRef>,
    key_names: BTreeMap<u32, String>,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("device", &self.name)
            .field("owner_auth", &self.owner_auth)
            .field("key_auth", &self.key_auth)
            .finish_non_exhaustive()
    }
}

impl TpmBackend {
    /// Prepares the backend. Nothing is sent to the TPM until the first
    /// call; use [`KeyBackend::check`] to connect eagerly. Backends for the
    /// same TCTI share one connection (see the module documentation).
    pub fn new(config: &TpmConfig) -> Result<Self, KeyError> {
        let tcti = config.tcti.trim();
        let name = format!("tpm:{tcti}");
        let timeout = Duration::from_secs(
            config
                .timeout_secs
                .unwrap_or(DEFAULT_TIMEOUT_SECS)
                .clamp(1, 3600),
        );
        Ok(Self {
            owner: Owner::for_tcti(tcti, &name, timeout)?,
            name,
            owner_auth: config.owner_auth.clone(),
            key_auth: config.key_auth.clone(),
            key_names: config.key_names.clone(),
        })
    }

    fn key_name(&self, handle: u32) -> String {
        format!("{};handle={handle:#010x}", self.name)
    }

    /// Reads the public part of the persistent key at `handle` and checks
    /// it is a lockstep signing key.
    fn read_public(&self, key: &KeyRef, handle: u32) -> Result<PublicKey, KeyError> {
        let device = self.name.clone();
        let what = format!("{key} on {}", self.name);
        let key_text = key.to_string();
        let public = self.owner.call(Idempotent::Yes, move |conn| {
            if !occupied(conn, handle)? {
                return Err(Failure::Key(KeyError::KeyNotFound {
                    device: device.clone(),
                    key: key_text.clone(),
                }));
            }
            let object = conn.object(handle)?;
            let (public, _, _) = conn
                .ctx
                .execute_without_session(|c| c.read_public(KeyHandle::from(object)))
                .map_err(tss("TPM2_ReadPublic"))?;
            Ok(public)
        })?;
        objects::signing_public_key(&public, &what)
    }
}

/// Whether a persistent object exists at `handle`.
fn occupied(conn: &mut Conn, handle: u32) -> Result<bool, Failure> {
    let (data, _) = conn
        .ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, handle, 1))
        .map_err(tss("TPM2_GetCapability"))?;
    Ok(match data {
        CapabilityData::Handles(list) => list
            .iter()
            .any(|h| matches!(h, TpmHandle::Persistent(p) if u32::from(*p) == handle)),
        _ => false,
    })
}

/// Every persistent handle in the TPM.
fn persistent_handles(conn: &mut Conn) -> Result<Vec<u32>, Failure> {
    let mut out = Vec::new();
    let mut next = PERSISTENT_FIRST;
    loop {
        let (data, more) = conn
            .ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 64))
            .map_err(tss("TPM2_GetCapability"))?;
        let CapabilityData::Handles(list) = data else {
            break;
        };
        let before = out.len();
        for h in list.iter() {
            if let TpmHandle::Persistent(p) = h {
                let h = u32::from(*p);
                if (PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&h) && !out.contains(&h) {
                    out.push(h);
                }
            }
        }
        match out.last() {
            Some(last) if more && out.len() > before && *last < PERSISTENT_LAST => next = last + 1,
            _ => break,
        }
    }
    Ok(out)
}

/// Evicts the persistent object at `handle` (owner authorisation).
fn evict(conn: &mut Conn, handle: u32, owner_auth: Option<&SecretRef>) -> Result<(), Failure> {
    let object = conn.object(handle)?;
    set_auth(&mut conn.ctx, ObjectHandle::Owner, owner_auth)?;
    let persistent = persistent_of(handle)?;
    with_password(&mut conn.ctx, |c| {
        c.evict_control(Provision::Owner, object, persistent)
    })
    .map_err(tss("TPM2_EvictControl"))?;
    conn.forget(handle);
    Ok(())
}

fn persistent_of(handle: u32) -> Result<Persistent, Failure> {
    PersistentTpmHandle::new(handle)
        .map(Persistent::Persistent)
        .map_err(tss("TPM2_EvictControl"))
}

/// Creates the signing key under a fresh primary and persists it at
/// `handle`. The transient objects are flushed whatever happens.
fn create_persistent(
    conn: &mut Conn,
    handle: u32,
    owner_auth: Option<&SecretRef>,
    key_auth: Option<&SecretRef>,
) -> Result<(), Failure> {
    set_auth(&mut conn.ctx, ObjectHandle::Owner, owner_auth)?;
    let primary_template = objects::primary_template().map_err(tss("TPM2_CreatePrimary"))?;
    let primary = with_password(&mut conn.ctx, |c| {
        c.create_primary(Hierarchy::Owner, primary_template, None, None, None, None)
    })
    .map_err(tss("TPM2_CreatePrimary"))?
    .key_handle;
    let result = create_under(conn, primary, handle, owner_auth, key_auth);
    let flushed = conn.ctx.flush_context(primary.into());
    result?;
    flushed.map_err(tss("TPM2_FlushContext"))
}

fn create_under(
    conn: &mut Conn,
    primary: KeyHandle,
    handle: u32,
    owner_auth: Option<&SecretRef>,
    key_auth: Option<&SecretRef>,
) -> Result<(), Failure> {
    let template = objects::signing_template().map_err(tss("TPM2_Create"))?;
    let auth = match key_auth {
        Some(r) => Some(owner::auth_value(r)?),
        None => None,
    };
    let created = with_password(&mut conn.ctx, |c| {
        c.create(primary, template, auth, None, None, None)
    })
    .map_err(tss("TPM2_Create"))?;
    let loaded = with_password(&mut conn.ctx, |c| {
        c.load(primary, created.out_private, created.out_public)
    })
    .map_err(tss("TPM2_Load"))?;
    let persisted = persistent_of(handle).and_then(|persistent| {
        set_auth(&mut conn.ctx, ObjectHandle::Owner, owner_auth)?;
        with_password(&mut conn.ctx, |c| {
            c.evict_control(Provision::Owner, loaded.into(), persistent)
        })
        .map_err(tss("TPM2_EvictControl"))
    });
    let flushed = conn.ctx.flush_context(loaded.into());
    let mut object = persisted?;
    // The ESYS_TR of the new persistent object; lockstep opens it again
    // (with the key auth) when it is used.
    let _ = conn.ctx.tr_close(&mut object);
    flushed.map_err(tss("TPM2_FlushContext"))
}

impl KeyBackend for TpmBackend {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn open_key(&self, key: &KeyRef) -> Result<Arc<dyn DeviceKey>, KeyError> {
        let handle = persistent_handle(key)?;
        let public = self.read_public(key, handle)?;
        Ok(Arc::new(TpmKey {
            owner: self.owner.clone(),
            name: self.key_name(handle),
            handle,
            auth: self.key_auth.clone(),
            public,
        }))
    }

    fn generate_key(&self, key: &KeyRef, replace: bool) -> Result<Arc<dyn DeviceKey>, KeyError> {
        let handle = persistent_handle(key)?;
        if handle > OWNER_PERSISTENT_LAST {
            return Err(KeyError::Config(format!(
                "key {key}: lockstep creates keys with owner authorisation, in 0x81000000–0x817FFFFF"
            )));
        }
        let device = self.name.clone();
        let key_text = key.to_string();
        let owner_auth = self.owner_auth.clone();
        let key_auth = self.key_auth.clone();
        self.owner.call(Idempotent::No, move |conn| {
            if occupied(conn, handle)? {
                if !replace {
                    return Err(Failure::Key(KeyError::KeyExists {
                        device: device.clone(),
                        key: key_text.clone(),
                    }));
                }
                evict(conn, handle, owner_auth.as_ref())?;
                tracing::warn!(device = %device, key = %key_text, "evicted the existing key (--force)");
            }
            conn.forget(handle);
            create_persistent(conn, handle, owner_auth.as_ref(), key_auth.as_ref())
        })?;
        tracing::info!(device = %self.name, key = %key, "generated EC P-256 signing key in the TPM");
        self.open_key(key)
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), KeyError> {
        let handle = persistent_handle(key)?;
        let owner_auth = self.owner_auth.clone();
        self.owner.call(Idempotent::No, move |conn| {
            if occupied(conn, handle)? {
                evict(conn, handle, owner_auth.as_ref())?;
            }
            conn.forget(handle);
            Ok(())
        })
    }

    fn key_exists(&self, key: &KeyRef) -> Result<bool, KeyError> {
        let handle = persistent_handle(key)?;
        self.owner
            .call(Idempotent::Yes, move |conn| occupied(conn, handle))
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, KeyError> {
        let names = self.key_names.clone();
        self.owner.call(Idempotent::Yes, move |conn| {
            let mut out = Vec::new();
            for handle in persistent_handles(conn)? {
                let object = conn.object(handle)?;
                let (public, _, _) = conn
                    .ctx
                    .execute_without_session(|c| c.read_public(KeyHandle::from(object)))
                    .map_err(tss("TPM2_ReadPublic"))?;
                out.push(objects::describe(
                    handle,
                    &public,
                    names.get(&handle).map(String::as_str),
                ));
            }
            Ok(out)
        })
    }

    fn check(&self) -> Result<(), KeyError> {
        self.owner.call(Idempotent::Yes, |conn| {
            conn.ctx
                .execute_without_session(|c| c.get_random(8))
                .map_err(tss("TPM2_GetRandom"))?;
            Ok(())
        })
    }
}

/// A signing key persistent in a TPM.
pub struct TpmKey {
    owner: Arc<Owner>,
    name: String,
    handle: u32,
    auth: Option<SecretRef>,
    public: PublicKey,
}

impl std::fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKey")
            .field("name", &self.name)
            .field("public", &self.public)
            .finish()
    }
}

/// The "no ticket" of `TPM2_Sign` for digests computed outside the TPM
/// (allowed because the key is not restricted).
fn null_ticket() -> Result<HashcheckTicket, tss_esapi::Error> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

impl DeviceKey for TpmKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, KeyError> {
        let handle = self.handle;
        let auth = self.auth.clone();
        let digest = *digest;
        let signature = self.owner.call(Idempotent::Yes, move |conn| {
            let object = conn.persistent(handle, auth.as_ref())?;
            let digest = Digest::try_from(digest.as_slice()).map_err(tss("TPM2_Sign"))?;
            let ticket = null_ticket().map_err(tss("TPM2_Sign"))?;
            let scheme = SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            };
            with_password(&mut conn.ctx, |c| {
                c.sign(KeyHandle::from(object), digest, scheme, ticket)
            })
            .map_err(tss("TPM2_Sign"))
        })?;
        match signature {
            tss_esapi::structures::Signature::EcDsa(sig) => {
                Signature::from_scalars(sig.signature_r().value(), sig.signature_s().value())
            }
            other => Err(KeyError::Unsupported(format!(
                "{}: TPM2_Sign returned a {:?} signature, not ECDSA",
                self.name,
                other.algorithm()
            ))),
        }
    }
}
