//! The one owner of a TPM connection: a thread per TCTI that holds the
//! tss-esapi [`Context`] and runs every command sent to it, in order.
//!
//! Why a thread: a `Context` is `Send` but not `Sync`, every call takes
//! `&mut self`, and the ESAPI keeps per-connection state (loaded object
//! handles, their auth values, sessions). A TPM runs one command at a time
//! anyway, and swtpm serves one client connection at a time, so several
//! connections from one process would only queue up behind each other (or
//! deadlock, one waiting for the other to hang up). One thread owning the
//! context turns concurrent callers into an ordered queue without any lock
//! being held across a TPM command in caller threads.
//!
//! Why a registry: every [`super::TpmBackend`] for the same TCTI in one
//! process (the CLI's, the service's, a test's) must share that one owner.
//! The registry keeps it only while some backend uses it: when the last one
//! is dropped the thread ends and closes its connection; a later backend
//! starts a new thread, which first waits for the old one to hang up.
//!
//! Outages: a command that fails because the transport failed (TPM gone,
//! socket closed) drops the context; the next command makes a new one.
//! Callers wait at most the configured timeout for their answer.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use secrecy::ExposeSecret;
use tss_esapi::Context;
use tss_esapi::Error as TssError;
use tss_esapi::constants::StartupType;
use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::Auth;
use tss_esapi::tcti_ldr::TctiNameConf;
use zeroize::Zeroizing;

use super::rc::{self, Recovery};
use crate::keys::{DeviceCode, KeyError};
use crate::secret::SecretRef;

/// A failure inside a job: a TPM/TSS error of a named command (which may be
/// retried after a reconnect) or a finished lockstep error (which is not).
pub(super) enum Failure {
    Tss(&'static str, TssError),
    Key(KeyError),
}

impl From<KeyError> for Failure {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

/// `ctx.sign(..).map_err(tss("TPM2_Sign"))?`: names the failed command.
pub(super) fn tss(operation: &'static str) -> impl FnOnce(TssError) -> Failure {
    move |e| Failure::Tss(operation, e)
}

/// Whether a job may run again on a fresh connection after the transport
/// failed. Only for commands that change nothing in the TPM: a key
/// creation whose answer was lost may have happened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Idempotent {
    Yes,
    No,
}

/// A connection: the ESAPI context and the persistent keys opened in it.
pub(super) struct Conn {
    pub ctx: Context,
    /// Persistent handle → its ESYS_TR in this context, with the auth
    /// reference whose value was set on it.
    keys: HashMap<u32, (ObjectHandle, Option<SecretRef>)>,
    /// Set after an eviction: make a new context after this job.
    renew: bool,
}

impl Conn {
    /// The ESYS_TR of the persistent object at `handle`, its auth value set
    /// from `auth` (empty when `None`). Opened once per connection.
    pub fn persistent(
        &mut self,
        handle: u32,
        auth: Option<&SecretRef>,
    ) -> Result<ObjectHandle, Failure> {
        if let Some((object, set)) = self.keys.get(&handle)
            && set.as_ref() == auth
        {
            return Ok(*object);
        }
        let object = self.object(handle)?;
        set_auth(&mut self.ctx, object, auth)?;
        self.keys.insert(handle, (object, auth.cloned()));
        Ok(object)
    }

    /// The ESYS_TR of the persistent object at `handle`, whatever auth value
    /// is set on it (for commands that need none, or the owner's).
    pub fn object(&mut self, handle: u32) -> Result<ObjectHandle, Failure> {
        if let Some((object, _)) = self.keys.get(&handle) {
            return Ok(*object);
        }
        let tpm_handle = PersistentTpmHandle::new(handle)
            .map_err(tss("TPM2_ReadPublic"))
            .map(TpmHandle::Persistent)?;
        let object = self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
            .map_err(tss("TPM2_ReadPublic"))?;
        self.keys.insert(handle, (object, None));
        Ok(object)
    }

    /// Forgets the ESYS_TR of `handle` after the object there was evicted
    /// or replaced, and has the context made anew after this job: the ESAPI
    /// keeps an evicted persistent object in its object table, and
    /// `Esys_TR_FromTPMPublic` would compare a new key at the same handle
    /// against the old one's name and fail.
    pub fn forget(&mut self, handle: u32) {
        if self.keys.remove(&handle).is_some() {
            self.renew = true;
        }
    }
}

/// Sets the auth value of `object` from a secret reference (empty when
/// `None`). The value lives in zeroizing buffers only, and in the ESAPI's
/// object table, which needs it for every authorised command.
pub(super) fn set_auth(
    ctx: &mut Context,
    object: ObjectHandle,
    auth: Option<&SecretRef>,
) -> Result<(), Failure> {
    let value = match auth {
        Some(r) => auth_value(r)?,
        None => Auth::default(),
    };
    ctx.tr_set_auth(object, value)
        .map_err(tss("Esys_TR_SetAuth"))
}

/// Resolves an auth value now, into tss-esapi's zeroizing buffer.
pub(super) fn auth_value(r: &SecretRef) -> Result<Auth, Failure> {
    let secret = r.resolve().map_err(KeyError::from)?;
    let bytes = Zeroizing::new(secret.expose_secret().as_bytes().to_vec());
    Ok(Auth::try_from(bytes.as_slice()).map_err(|_| {
        KeyError::Config(format!(
            "the auth value {r} is longer than the TPM accepts (at most {} bytes)",
            Auth::MAX_SIZE
        ))
    })?)
}

/// Runs `f` with the password session (for commands that need
/// authorisation), or with no session (for those that must have none).
pub(super) fn with_password<T>(ctx: &mut Context, f: impl FnOnce(&mut Context) -> T) -> T {
    ctx.execute_with_session(Some(AuthSession::Password), f)
}

type Job = Box<dyn FnOnce(&mut Line) + Send>;

/// The owner thread's state: the TCTI and the connection, if any.
pub(super) struct Line {
    tcti: TctiNameConf,
    device: String,
    conn: Option<Conn>,
}

impl Line {
    fn connect(&mut self) -> Result<(&mut Conn, bool), KeyError> {
        let fresh = self.conn.is_none();
        if fresh {
            // Whatever the code, a failed connect means the TPM is not
            // reachable now.
            let ctx = Context::new(self.tcti.clone()).map_err(|e| {
                let code = rc::raw(&e).map(DeviceCode::Tpm);
                KeyError::Unavailable {
                    device: self.device.clone(),
                    reason: match code {
                        Some(code) => format!("cannot connect to the TPM ({code})"),
                        None => format!("cannot connect to the TPM: {e}"),
                    },
                    code,
                }
            })?;
            tracing::debug!(device = %self.device, "tpm connected");
            self.conn = Some(Conn {
                ctx,
                keys: HashMap::new(),
                renew: false,
            });
        }
        match self.conn.as_mut() {
            Some(c) => Ok((c, fresh)),
            None => Err(KeyError::Unavailable {
                device: self.device.clone(),
                reason: "no connection".into(),
                code: None,
            }),
        }
    }

    /// Runs `f` on the connection, reconnecting when the transport failed
    /// and trying once more (when `again` allows), sending `TPM2_Startup`
    /// when the TPM asks for it, and reopening stale handles.
    fn run<T>(
        &mut self,
        again: Idempotent,
        mut f: impl FnMut(&mut Conn) -> Result<T, Failure>,
    ) -> Result<T, KeyError> {
        let device = self.device.clone();
        let mut last = None;
        for attempt in 0..3 {
            let (result, fresh, renew) = {
                let (conn, fresh) = self.connect()?;
                let result = f(conn);
                (result, fresh, conn.renew)
            };
            if renew {
                self.conn = None;
            }
            let (operation, err) = match result {
                Ok(v) => return Ok(v),
                Err(Failure::Key(k)) => return Err(k),
                Err(Failure::Tss(operation, err)) => (operation, err),
            };
            let recovery = rc::recovery(&err);
            let key_error = rc::to_key_error(&device, operation, err);
            match recovery {
                Recovery::Reconnect => {
                    tracing::warn!(device = %device, error = %key_error, "tpm connection lost");
                    self.conn = None;
                    // A fresh connection that fails at once: the TPM is
                    // gone; say so now instead of trying again.
                    if fresh || again == Idempotent::No {
                        return Err(key_error);
                    }
                }
                Recovery::Startup => {
                    tracing::warn!(device = %device, "tpm needs TPM2_Startup; sending it");
                    if let Some(conn) = self.conn.as_mut() {
                        let _ = conn.ctx.startup(StartupType::Clear);
                    }
                }
                Recovery::Retry if attempt < 2 => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Open every object afresh, in a new context.
                Recovery::StaleHandle => self.conn = None,
                Recovery::Retry | Recovery::Fail => return Err(key_error),
            }
            last = Some(key_error);
        }
        Err(last.unwrap_or_else(|| KeyError::Unavailable {
            device,
            reason: "the TPM kept failing".into(),
            code: None,
        }))
    }
}

/// A handle on the owner thread of one TCTI. Cloned (as `Arc<Owner>`)
/// into every backend and key using that TCTI.
pub(super) struct Owner {
    device: String,
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

struct Entry {
    owner: Weak<Owner>,
    /// Held by the owner thread while it lives: a new owner for the same
    /// TCTI waits until the previous one has closed its connection.
    turn: Arc<Mutex<()>>,
}

static OWNERS: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();

/// Read-held by every owner thread while it runs a job (and so may have a
/// socket to its TPM open); write-held by [`with_tpm_idle`].
///
/// tpm2-tss opens its TCTI sockets (one per command for swtpm) without
/// `O_CLOEXEC`. A child process forked while one is open inherits it and
/// keeps the connection alive after lockstep closed its copy; swtpm, which
/// serves one connection at a time, then waits on that connection until the
/// child exits, and every later client (lockstep included) waits behind it.
static IDLE: RwLock<()> = RwLock::new(());

/// Runs `f` (typically spawning a child process) while no TPM command of
/// this process is in flight, so no TPM socket leaks into the child. `f`
/// must not use a TPM backend itself: the owner threads wait for it.
pub fn with_tpm_idle<T>(f: impl FnOnce() -> T) -> T {
    let _idle = IDLE.write().unwrap_or_else(|p| p.into_inner());
    f()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The registry map is only ever inserted into or read: a panic while
    // holding it cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Owner {
    /// The owner of `tcti` in this process, started if there is none.
    pub fn for_tcti(tcti: &str, device: &str, timeout: Duration) -> Result<Arc<Owner>, KeyError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|_| {
            KeyError::Config(format!(
                "tcti `{tcti}` is not understood: use e.g. `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `mssim:...` or `tabrmd`"
            ))
        })?;
        let registry = OWNERS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut owners = lock(registry);
        let entry = owners.entry(tcti.to_owned()).or_insert_with(|| Entry {
            owner: Weak::new(),
            turn: Arc::new(Mutex::new(())),
        });
        if let Some(owner) = entry.owner.upgrade() {
            return Ok(owner);
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let turn = entry.turn.clone();
        let mut line = Line {
            tcti: conf,
            device: device.to_owned(),
            conn: None,
        };
        std::thread::Builder::new()
            .name("lockstep-tpm".into())
            .spawn(move || {
                let _turn = lock(&turn);
                while let Ok(job) = queue.recv() {
                    let _busy = IDLE.read().unwrap_or_else(|p| p.into_inner());
                    // A panicking job must not take the TPM away from every
                    // later caller: drop its connection and carry on.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut line))).is_err() {
                        line.conn = None;
                    }
                }
                // Every backend is gone: close the connection (flushes what
                // the context still holds) before giving up the turn.
                let _busy = IDLE.read().unwrap_or_else(|p| p.into_inner());
                drop(line);
            })
            .map_err(|e| KeyError::Unavailable {
                device: device.to_owned(),
                reason: format!("cannot start the TPM thread: {e}"),
                code: None,
            })?;
        let owner = Arc::new(Owner {
            device: device.to_owned(),
            jobs,
            timeout,
        });
        entry.owner = Arc::downgrade(&owner);
        Ok(owner)
    }

    /// Runs `f` on the owner thread and waits for its answer (at most the
    /// timeout). See [`Line::run`] for retries.
    pub fn call<T: Send + 'static>(
        &self,
        again: Idempotent,
        f: impl FnMut(&mut Conn) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, KeyError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |line: &mut Line| {
            let _ = reply.send(line.run(again, f));
        });
        self.jobs.send(job).map_err(|_| self.gone())?;
        match answer.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(KeyError::Unavailable {
                device: self.device.clone(),
                reason: format!("the TPM did not answer within {:?}", self.timeout),
                code: None,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.gone()),
        }
    }

    fn gone(&self) -> KeyError {
        KeyError::Unavailable {
            device: self.device.clone(),
            reason: "the TPM command failed inside the TPM thread".into(),
            code: None,
        }
    }
}
