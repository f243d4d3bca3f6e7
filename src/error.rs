//! The crate's top-level error: every failure a command or request can end
//! in, each with a machine-readable code.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::keys::KeyError;
use crate::x509::X509Error;

/// Any lockstep failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key backend failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A CSR or certificate was refused, or minting failed.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// The store cannot be used.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The CA has not been set up (no chain on disk).
    #[error("{0}")]
    CaNotInitialized(String),
    /// An argument is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// A lockstep server refused a call.
    #[error("{message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// The server's machine code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The audit trail failed verification.
    #[error("{0}")]
    AuditFailed(String),
    /// A release bundle did not verify.
    #[error("{0}")]
    NotVerified(#[from] crate::sigstore::verify::Refused),
    /// The session being waited for closed without opening.
    #[error("{0}")]
    SessionEnded(String),
    /// A lockstep server could not be reached.
    #[error("cannot reach the lockstep server: {0}")]
    Connection(String),
    /// A tunnel through a gateway was refused or broke.
    #[error("{0}")]
    Tunnel(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// The machine-readable code of this error (a remote error keeps the
    /// server's code).
    pub fn code(&self) -> &str {
        match self {
            Self::Config(e) => e.code(),
            Self::Key(e) => e.code(),
            Self::X509(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::CaNotInitialized(_) => "ca_not_initialized",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Io { .. } => "io_error",
            Self::Remote { code, .. } => code,
            Self::Connection(_) => "connection_failed",
            Self::Tunnel(_) => "tunnel_failed",
            Self::SessionEnded(_) => "session_closed",
            Self::AuditFailed(_) => "audit_verification_failed",
            Self::NotVerified(r) => r.code,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
