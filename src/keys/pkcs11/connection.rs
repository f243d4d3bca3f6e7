//! A logged-in connection to one token: the module, the slot, an anchor
//! session that keeps the login alive, a pool of idle sessions and a cache
//! of object handles.
//!
//! PKCS#11 login belongs to the application, not to a session, and ends when
//! the application's last session on the token closes; the anchor session
//! is never used for work, only kept open. Worker sessions are `Send` but
//! not `Sync`, so each is used by one thread at a time: checked out of the
//! pool, used, checked back in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

/// The loaded PKCS#11 modules of this process, by path. A module is
/// initialised once per process; every backend using the same module shares
/// it.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

/// Shortest time between two restarts of one module, so that a token that
/// stays missing cannot make every call finalise the module again.
const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the protected
    // data half-updated (each critical section is a single push, pop or
    // insert), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One loaded PKCS#11 module.
pub(super) struct Module {
    pub ctx: Pkcs11,
    /// Read-held by every call into the module, write-held to finalise and
    /// initialise it again: PKCS#11 forbids `C_Finalize` while other threads
    /// are inside the library. Readers share it, so calls still run in
    /// parallel; only a restart waits for them.
    calls: RwLock<Epoch>,
}

/// Held while calling into a module.
pub(super) enum Entered<'a> {
    Shared(RwLockReadGuard<'a, Epoch>),
    Alone(RwLockWriteGuard<'a, Epoch>),
}

impl Entered<'_> {
    /// The module epoch seen on entering.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::Shared(g) => g.count,
            Self::Alone(g) => g.count,
        }
    }
}

/// How many times a module was restarted, and when last.
pub(super) struct Epoch {
    pub count: u64,
    at: Instant,
}

impl Module {
    /// Loads and initialises `path`, or returns the module already loaded.
    pub fn load(path: &Path) -> Result<Arc<Module>, CkError> {
        let registry = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut modules = lock(registry);
        if let Some(m) = modules.get(path) {
            return Ok(m.clone());
        }
        let ctx = Pkcs11::new(path)?;
        initialize(&ctx)?;
        let module = Arc::new(Module {
            ctx,
            calls: RwLock::new(Epoch {
                count: 0,
                at: Instant::now(),
            }),
        });
        modules.insert(path.to_owned(), module.clone());
        Ok(module)
    }

    /// Enters the module for a call (shared with other callers).
    pub fn enter(&self) -> Entered<'_> {
        Entered::Shared(self.calls.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Enters the module alone, for creating or destroying token objects.
    /// Those are rare (init, rollback), and some modules (SoftHSM2's file
    /// store among them) fail with CKR_GENERAL_ERROR or
    /// CKR_TEMPLATE_INCONSISTENT when objects are written while other
    /// threads search or sign.
    pub fn enter_alone(&self) -> Entered<'_> {
        Entered::Alone(self.calls.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Finalises and initialises the module again, so that it rescans its
    /// slots and tokens (a token re-inserted, a module restarted). Waits for
    /// every call in flight; every session of the process on this module is
    /// invalidated and its owner reconnects. Does nothing if another thread
    /// restarted the module since `seen` was read, or if the last restart was
    /// less than [`MIN_RESTART_INTERVAL`] ago.
    pub fn restart(&self, seen: u64) -> Result<(), CkError> {
        let mut epoch = self.calls.write().unwrap_or_else(|p| p.into_inner());
        if epoch.count != seen || epoch.at.elapsed() < MIN_RESTART_INTERVAL {
            return Ok(());
        }
        match self.ctx.clone().finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(e) => return Err(e),
        }
        initialize(&self.ctx)?;
        epoch.count += 1;
        epoch.at = Instant::now();
        Ok(())
    }

    /// Initialises the module again after someone else finalised it.
    pub fn initialize_again(&self) -> Result<(), CkError> {
        let mut epoch = self.calls.write().unwrap_or_else(|p| p.into_inner());
        initialize(&self.ctx)?;
        epoch.count += 1;
        Ok(())
    }
}

/// `C_Initialize` with OS locking; "already initialised" is success.
fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Which token to use: by label or by serial number, never by slot number
/// (slot numbers move when tokens are added or re-initialised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// `CK_TOKEN_INFO.label`, compared without the padding spaces.
    Label(String),
    /// `CK_TOKEN_INFO.serialNumber`, compared without the padding spaces.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Label(l) => write!(f, "token={l}"),
            Self::Serial(s) => write!(f, "serial={s}"),
        }
    }
}

/// Finds the slot holding the selected token, if present.
pub(super) fn find_slot(ctx: &Pkcs11, token: &TokenSelector) -> Result<Option<Slot>, CkError> {
    let mut found = None;
    for slot in ctx.get_slots_with_token()? {
        let info = match ctx.get_token_info(slot) {
            Ok(info) => info,
            // A slot whose token vanished between the two calls.
            Err(CkError::Pkcs11(RvError::TokenNotPresent, _)) => continue,
            Err(e) => return Err(e),
        };
        let matches = match token {
            TokenSelector::Label(l) => info.label().trim_end() == l,
            TokenSelector::Serial(s) => info.serial_number().trim_end() == s,
        };
        if matches {
            if found.is_some() {
                // Two tokens with one label: refuse to guess.
                return Err(CkError::Pkcs11(
                    RvError::TokenNotRecognized,
                    cryptoki::context::Function::GetTokenInfo,
                ));
            }
            found = Some(slot);
        }
    }
    Ok(found)
}

/// Which half of a key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum KeyClass {
    Private,
    Public,
}

/// Key for the object-handle cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ObjectKey {
    pub class: KeyClass,
    pub label: String,
    pub id: Vec<u8>,
}

impl ObjectKey {
    /// The search template for this object.
    pub fn template(&self) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(match self.class {
                KeyClass::Private => ObjectClass::PRIVATE_KEY,
                KeyClass::Public => ObjectClass::PUBLIC_KEY,
            }),
            Attribute::Label(self.label.as_bytes().to_vec()),
        ];
        if !self.id.is_empty() {
            t.push(Attribute::Id(self.id.clone()));
        }
        t
    }
}

/// A logged-in connection. Replaced as a whole when it goes bad.
pub(super) struct Connection {
    /// Counts connections of one backend; lets a thread tell whether the
    /// connection it saw fail is still the current one.
    pub generation: u64,
    /// The module epoch this connection was made in.
    pub epoch: u64,
    pub ctx: Pkcs11,
    pub slot: Slot,
    /// Keeps the login alive; never used for work.
    _anchor: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
    max_idle: usize,
    handles: Mutex<HashMap<ObjectKey, ObjectHandle>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("generation", &self.generation)
            .field("slot", &self.slot.id())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens the anchor session on `slot` and logs in with `pin`.
    pub fn open(
        generation: u64,
        epoch: u64,
        ctx: Pkcs11,
        slot: Slot,
        pin: &SecretString,
        max_idle: usize,
    ) -> Result<Self, CkError> {
        let anchor = ctx.open_ro_session(slot)?;
        match anchor.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            generation,
            epoch,
            ctx,
            slot,
            _anchor: Mutex::new(anchor),
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// Takes an idle read-only session, or opens one.
    pub fn checkout(&self) -> Result<Session, CkError> {
        if let Some(s) = lock(&self.idle).pop() {
            return Ok(s);
        }
        self.ctx.open_ro_session(self.slot)
    }

    /// Opens a read-write session for object management; not pooled.
    pub fn open_rw(&self) -> Result<Session, CkError> {
        self.ctx.open_rw_session(self.slot)
    }

    /// Returns a session that worked to the pool (or closes it when the pool
    /// is full).
    pub fn checkin(&self, session: Session) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(session);
        }
    }

    /// The handle of the one object matching `key`, cached.
    pub fn handle(&self, session: &Session, key: &ObjectKey) -> Result<Lookup, CkError> {
        if let Some(h) = lock(&self.handles).get(key) {
            return Ok(Lookup::Found(*h));
        }
        let found = session.find_objects(&key.template())?;
        match found.as_slice() {
            [] => Ok(Lookup::Missing),
            [one] => {
                lock(&self.handles).insert(key.clone(), *one);
                Ok(Lookup::Found(*one))
            }
            many => Ok(Lookup::Ambiguous(many.len())),
        }
    }

    /// Drops every cached handle (after one turned out stale, or after
    /// objects were created or destroyed).
    pub fn forget_handles(&self) {
        lock(&self.handles).clear();
    }
}

/// The result of looking up an object by label and id.
pub(super) enum Lookup {
    Found(ObjectHandle),
    Missing,
    Ambiguous(usize),
}

/// A counting gate: at most `limit` sessions in use at once, so a burst of
/// callers queues instead of opening hundreds of sessions on a device that
/// may allow only a few.
pub(super) struct Gate {
    limit: usize,
    in_use: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// How many sessions may be in use at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn enter(&self) -> GatePass<'_> {
        let mut n = lock(&self.in_use);
        while *n >= self.limit {
            n = self.freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        GatePass { gate: self }
    }
}

/// Held while a session is in use; leaving frees a place.
pub(super) struct GatePass<'a> {
    gate: &'a Gate,
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut n = lock(&self.gate.in_use);
        *n -= 1;
        self.gate.freed.notify_one();
    }
}
