//! The PKCS#11 backend, over `cryptoki`: SoftHSM2 in tests, any PKCS#11
//! HSM in production.
//!
//! One [`Pkcs11Backend`] per token. It logs in once, keeps a pool of
//! sessions (at most `sessions` in use at a time) with cached object
//! handles, and when a session, the login or the token goes away (session
//! handle invalid, device removed, token re-inserted, module finalised) it
//! reconnects on the next call instead of needing a restart.

mod connection;
mod objects;
mod rv;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;
use serde::Deserialize;

pub use self::connection::TokenSelector;
use self::connection::{Connection, Gate, KeyClass, Lookup, Module, ObjectKey};
use self::rv::{Recovery, to_key_error};
use super::{DeviceKey, KeyBackend, KeyError, KeyRef, ObjectInfo, PublicKey, Signature};
use crate::secret::SecretRef;

/// Configuration of a PKCS#11 token (`[backend]` with `type = "pkcs11"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Select the token by its label...
    #[serde(default)]
    pub token_label: Option<String>,
    /// ...or by its serial number (exactly one of the two).
    #[serde(default)]
    pub token_serial: Option<String>,
    /// The user PIN, by reference: `env:NAME` or `file:PATH`.
    pub user_pin: SecretRef,
    /// Sessions in use at most at once; default: the number of CPU cores.
    #[serde(default)]
    pub sessions: Option<usize>,
}

impl Pkcs11Config {
    /// The token selector, checking exactly one of label/serial is given.
    pub fn token(&self) -> Result<TokenSelector, KeyError> {
        match (&self.token_label, &self.token_serial) {
            (Some(l), None) if !l.is_empty() => Ok(TokenSelector::Label(l.clone())),
            (None, Some(s)) if !s.is_empty() => Ok(TokenSelector::Serial(s.clone())),
            _ => Err(KeyError::Config(
                "give exactly one of `token_label` or `token_serial` (slot numbers are not accepted: they change when tokens are added)".into(),
            )),
        }
    }
}

/// A PKCS#11 token holding lockstep's keys.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
}

struct Shared {
    module_path: PathBuf,
    module: Mutex<Option<Arc<Module>>>,
    token: TokenSelector,
    pin: SecretRef,
    name: String,
    gate: Gate,
    max_idle: usize,
    current: Mutex<Option<Arc<Connection>>>,
    generations: AtomicU64,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("device", &self.shared.name)
            .field("pin", &self.shared.pin)
            .finish_non_exhaustive()
    }
}

/// Which kind of session an operation needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A pooled read-only session (signing, lookups).
    Pooled,
    /// A fresh read-write session (creating and destroying objects).
    ReadWrite,
}

impl Pkcs11Backend {
    /// Prepares the backend. Nothing is loaded or logged in until the first
    /// call; use [`KeyBackend::check`] to connect eagerly.
    pub fn new(config: &Pkcs11Config) -> Result<Self, KeyError> {
        let token = config.token()?;
        let sessions = config
            .sessions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, 256);
        let name = format!("pkcs11:{token}");
        Ok(Self {
            shared: Arc::new(Shared {
                module_path: config.module.clone(),
                module: Mutex::new(None),
                token,
                pin: config.user_pin.clone(),
                name,
                gate: Gate::new(sessions),
                max_idle: sessions,
                current: Mutex::new(None),
                generations: AtomicU64::new(0),
            }),
        })
    }
}

/// Why no connection could be made.
enum Connect {
    /// The module must be restarted (token missing) or initialised again
    /// (finalised under us) before trying again.
    Restart {
        initialize_only: bool,
        cause: KeyError,
    },
    /// A final error.
    Failed(KeyError),
}

impl Shared {
    fn module(&self) -> Result<Arc<Module>, KeyError> {
        let mut module = self.module.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = module.as_ref() {
            return Ok(m.clone());
        }
        let m = Module::load(&self.module_path)
            .map_err(|e| to_key_error(&self.name, "C_Initialize", e))?;
        *module = Some(m.clone());
        Ok(m)
    }

    /// The current connection, made now if there is none or if the module
    /// was restarted since it was made.
    fn connection(&self, module: &Module, epoch: u64) -> Result<Arc<Connection>, Connect> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = current.as_ref().filter(|c| c.epoch == epoch) {
            return Ok(c.clone());
        }
        *current = None;
        let conn = Arc::new(self.connect(module, epoch)?);
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Finds the token and logs in.
    fn connect(&self, module: &Module, epoch: u64) -> Result<Connection, Connect> {
        let slot = match connection::find_slot(&module.ctx, &self.token) {
            Ok(Some(slot)) => slot,
            // The token may have been re-inserted or re-created since the
            // module was initialised; modules often rescan only then.
            Ok(None) => {
                return Err(Connect::Restart {
                    initialize_only: false,
                    cause: KeyError::Unavailable {
                        device: self.name.clone(),
                        reason: format!("no token with {} is present", self.token),
                        code: None,
                    },
                });
            }
            // A module that cannot list its slots (SoftHSM2 answers
            // CKR_GENERAL_ERROR when its token directory is gone) is in no
            // state to sign: report an outage and restart it (at most once
            // a second) until it recovers.
            Err(e) => {
                return Err(match self.connect_error("C_GetSlotList", e) {
                    Connect::Failed(KeyError::Device { code, .. }) => Connect::Restart {
                        initialize_only: false,
                        cause: KeyError::Unavailable {
                            device: self.name.clone(),
                            reason: format!(
                                "C_GetSlotList returned {code}: the module cannot list its tokens"
                            ),
                            code: Some(code),
                        },
                    },
                    other => other,
                });
            }
        };
        let pin = self.pin.resolve().map_err(|e| Connect::Failed(e.into()))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Connection::open(
            generation,
            epoch,
            module.ctx.clone(),
            slot,
            &pin,
            self.max_idle,
        )
        .map_err(|e| self.connect_error("C_Login", e))?;
        tracing::debug!(device = %self.name, generation, "pkcs11 connected");
        Ok(conn)
    }

    fn connect_error(&self, operation: &'static str, e: CkError) -> Connect {
        let not_initialized = matches!(
            e,
            CkError::Pkcs11(cryptoki::error::RvError::CryptokiNotInitialized, _)
        );
        let cause = to_key_error(&self.name, operation, e);
        if not_initialized {
            Connect::Restart {
                initialize_only: true,
                cause,
            }
        } else {
            Connect::Failed(cause)
        }
    }

    /// Forgets `conn` if it is still the current connection.
    fn invalidate(&self, conn: &Connection) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|c| c.generation) == Some(conn.generation) {
            *current = None;
        }
    }

    /// Runs `op` on a session. If the session, login or token was lost it
    /// reconnects (restarting the module when the token is missing) and
    /// tries again; if a cached handle was stale it looks it up again.
    fn with_session<T>(
        &self,
        operation: &'static str,
        access: Access,
        op: impl Fn(&Connection, &Session) -> Result<T, OpError>,
    ) -> Result<T, KeyError> {
        let _pass = self.gate.enter();
        let module = self.module()?;
        let mut last: Option<KeyError> = None;
        for _attempt in 0..3 {
            let calls = match access {
                Access::Pooled => module.enter(),
                Access::ReadWrite => module.enter_alone(),
            };
            let epoch = calls.epoch();
            let conn = match self.connection(&module, epoch) {
                Ok(c) => c,
                Err(Connect::Failed(e)) => return Err(e),
                Err(Connect::Restart {
                    initialize_only,
                    cause,
                }) => {
                    drop(calls);
                    let restarted = if initialize_only {
                        module.initialize_again()
                    } else {
                        module.restart(epoch)
                    };
                    restarted.map_err(|e| to_key_error(&self.name, "C_Initialize", e))?;
                    last = Some(cause);
                    continue;
                }
            };
            let opened = match access {
                Access::Pooled => conn.checkout(),
                Access::ReadWrite => conn.open_rw(),
            };
            let outcome = opened.map_err(OpError::Ck).and_then(|s| {
                let outcome = op(&conn, &s);
                let session_ok = !matches!(&outcome, Err(OpError::Ck(e)) if rv::recovery(e) == Recovery::Reconnect);
                if access == Access::Pooled && session_ok {
                    conn.checkin(s);
                }
                outcome
            });
            match outcome {
                Ok(v) => return Ok(v),
                Err(OpError::Key(k)) => return Err(k),
                Err(OpError::Gone(k)) => {
                    tracing::warn!(device = %self.name, error = %k, "pkcs11 key gone; restarting the module");
                    self.invalidate(&conn);
                    drop(conn);
                    drop(calls);
                    module
                        .restart(epoch)
                        .map_err(|e| to_key_error(&self.name, "C_Initialize", e))?;
                    last = Some(k);
                }
                Err(OpError::Ck(e)) => match rv::recovery(&e) {
                    Recovery::Reconnect => {
                        tracing::warn!(device = %self.name, error = %e, "pkcs11 connection lost; reconnecting");
                        self.invalidate(&conn);
                        last = Some(to_key_error(&self.name, operation, e));
                    }
                    Recovery::StaleHandle => {
                        conn.forget_handles();
                        last = Some(to_key_error(&self.name, operation, e));
                    }
                    Recovery::Fail => return Err(to_key_error(&self.name, operation, e)),
                },
            }
        }
        Err(last.unwrap_or_else(|| KeyError::Unavailable {
            device: self.name.clone(),
            reason: format!("{operation} failed after reconnecting"),
            code: None,
        }))
    }

    fn find(
        &self,
        conn: &Connection,
        session: &Session,
        key: &KeyRef,
        class: KeyClass,
    ) -> Result<cryptoki::object::ObjectHandle, OpError> {
        let object = ObjectKey {
            class,
            label: key.label.clone(),
            id: key.id.clone(),
        };
        match conn.handle(session, &object)? {
            Lookup::Found(h) => Ok(h),
            Lookup::Missing => Err(OpError::Key(KeyError::KeyNotFound {
                device: self.name.clone(),
                key: key.to_string(),
            })),
            Lookup::Ambiguous(count) => Err(OpError::Key(KeyError::Ambiguous {
                device: self.name.clone(),
                key: key.to_string(),
                count,
            })),
        }
    }

    fn read_public(&self, key: &KeyRef) -> Result<PublicKey, KeyError> {
        let name = self.name.clone();
        self.with_session("C_GetAttributeValue", Access::Pooled, |conn, s| {
            // The private key must exist too: a public key alone is useless.
            self.find(conn, s, key, KeyClass::Private)?;
            let public = self.find(conn, s, key, KeyClass::Public)?;
            let attrs =
                s.get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])?;
            let mut params = None;
            let mut point = None;
            for a in attrs {
                match a {
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::EcPoint(p) => point = Some(p),
                    _ => {}
                }
            }
            if params.as_deref() != Some(objects::p256_params().as_slice()) {
                return Err(OpError::Key(KeyError::Unsupported(format!(
                    "{key} on {name} is not an EC P-256 key"
                ))));
            }
            let point = point
                .as_deref()
                .and_then(objects::ec_point)
                .ok_or_else(|| {
                    OpError::Key(KeyError::Unsupported(format!(
                        "{key} on {name} has no readable EC point"
                    )))
                })?;
            PublicKey::from_p256_sec1(&point).map_err(OpError::Key)
        })
    }
}

/// Failure inside an operation: a PKCS#11 error (which may be retried) or a
/// finished lockstep error (which is not).
enum OpError {
    Ck(CkError),
    Key(KeyError),
    /// An opened key's object is no longer visible: the token was removed
    /// or its store became unreadable. The module is restarted (at most
    /// once a second) so it rescans the token once it is back.
    Gone(KeyError),
}

impl OpError {
    /// Marks "not found" as "gone" for a key that was found when opened.
    fn gone(self) -> Self {
        match self {
            Self::Key(k @ KeyError::KeyNotFound { .. }) => Self::Gone(k.vanished()),
            other => other,
        }
    }
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

impl KeyBackend for Pkcs11Backend {
    fn describe(&self) -> String {
        format!(
            "{} via {}",
            self.shared.name,
            self.shared.module_path.display()
        )
    }

    fn open_key(&self, key: &KeyRef) -> Result<Arc<dyn DeviceKey>, KeyError> {
        let public = self.shared.read_public(key)?;
        Ok(Arc::new(Pkcs11Key {
            shared: self.shared.clone(),
            name: format!("{};object={}", self.shared.name, key.label),
            key: key.clone(),
            public,
        }))
    }

    fn generate_key(&self, key: &KeyRef, replace: bool) -> Result<Arc<dyn DeviceKey>, KeyError> {
        if key.label.is_empty() || key.id.is_empty() {
            return Err(KeyError::Config(format!(
                "key {key}: a PKCS#11 key needs both a label and an id"
            )));
        }
        let shared = &self.shared;
        shared.with_session("C_GenerateKeyPair", Access::ReadWrite, |conn, s| {
            let existing = conflicting_objects(s, key)?;
            if !existing.is_empty() {
                if !replace {
                    return Err(OpError::Key(KeyError::KeyExists {
                        device: shared.name.clone(),
                        key: key.to_string(),
                    }));
                }
                for handle in existing {
                    s.destroy_object(handle)?;
                }
                conn.forget_handles();
                tracing::warn!(device = %shared.name, key = %key, "destroyed existing key objects (--force)");
            }
            let (public, private) = objects::signing_key_templates(key);
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
            conn.forget_handles();
            Ok(())
        })?;
        tracing::info!(device = %shared.name, key = %key, "generated EC P-256 signing key on the token");
        self.open_key(key)
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), KeyError> {
        self.shared
            .with_session("C_DestroyObject", Access::ReadWrite, |conn, s| {
                for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                    let mut template = vec![
                        Attribute::Class(class),
                        Attribute::Label(key.label.as_bytes().to_vec()),
                    ];
                    if !key.id.is_empty() {
                        template.push(Attribute::Id(key.id.clone()));
                    }
                    for handle in s.find_objects(&template)? {
                        s.destroy_object(handle)?;
                    }
                }
                conn.forget_handles();
                Ok(())
            })
    }

    fn key_exists(&self, key: &KeyRef) -> Result<bool, KeyError> {
        self.shared
            .with_session("C_FindObjects", Access::Pooled, |_, s| {
                Ok(!conflicting_objects(s, key)?.is_empty())
            })
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, KeyError> {
        self.shared
            .with_session("C_FindObjects", Access::Pooled, |_, s| {
                let mut out = Vec::new();
                for handle in s.find_objects(&[])? {
                    out.push(objects::describe(s, handle)?);
                }
                out.sort_by(|a, b| (&a.label, &a.id, &a.class).cmp(&(&b.label, &b.id, &b.class)));
                Ok(out)
            })
    }

    fn check(&self) -> Result<(), KeyError> {
        self.shared
            .with_session("C_GetSessionInfo", Access::Pooled, |_, s| {
                s.get_session_info()?;
                Ok(())
            })
    }
}

/// Key objects that share the label or the id of `key`: any of them would
/// make the reference ambiguous.
fn conflicting_objects(
    s: &Session,
    key: &KeyRef,
) -> Result<Vec<cryptoki::object::ObjectHandle>, CkError> {
    let mut found = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let by_label = s.find_objects(&[
            Attribute::Class(class),
            Attribute::Label(key.label.as_bytes().to_vec()),
        ])?;
        found.extend(by_label);
        if !key.id.is_empty() {
            for h in s.find_objects(&[Attribute::Class(class), Attribute::Id(key.id.clone())])? {
                if !found.contains(&h) {
                    found.push(h);
                }
            }
        }
    }
    Ok(found)
}

/// A private key on a PKCS#11 token.
pub struct Pkcs11Key {
    shared: Arc<Shared>,
    name: String,
    key: KeyRef,
    public: PublicKey,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("name", &self.name)
            .field("public", &self.public)
            .finish()
    }
}

impl DeviceKey for Pkcs11Key {
    fn name(&self) -> &str {
        &self.name
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn concurrency(&self) -> usize {
        self.shared.gate.limit()
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, KeyError> {
        let raw = self
            .shared
            .with_session("C_Sign", Access::Pooled, |conn, s| {
                let handle = self
                    .shared
                    .find(conn, s, &self.key, KeyClass::Private)
                    .map_err(OpError::gone)?;
                // CKM_ECDSA signs the digest as given and returns raw r || s.
                Ok(s.sign(&Mechanism::Ecdsa, handle, digest)?)
            })?;
        Signature::from_raw(&raw)
    }
}
