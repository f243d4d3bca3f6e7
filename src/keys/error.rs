//! Errors of the key boundary. Device return codes stay inside the error as
//! typed values ([`DeviceCode`]); they are never flattened into strings.

use std::fmt;

use crate::secret::SecretError;

/// A return code exactly as the device gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceCode {
    /// A PKCS#11 `CKR_*` return value.
    #[cfg(feature = "pkcs11")]
    Pkcs11(cryptoki::error::RvError),
    /// A TPM or TSS return code (`TSS2_RC`): the TPM's own `TPM_RC_*` in
    /// layer 0, or a TSS layer's (`TSS2_TCTI_RC_*`, `TSS2_ESYS_RC_*`, ...).
    #[cfg(feature = "tpm")]
    Tpm(u32),
}

impl fmt::Display for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `RvError`'s Debug is the variant name (`SessionHandleInvalid`);
            // print it the way the specification spells it.
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(rv) => f.write_str(&ckr_name(&format!("{rv:?}"))),
            // `TPM_RC_AUTH_FAIL (session 1) (0x0000098e)`.
            #[cfg(feature = "tpm")]
            Self::Tpm(rc) => write!(f, "{} ({rc:#010x})", super::tpm::rc::name(*rc)),
        }
    }
}

/// `SessionHandleInvalid` → `CKR_SESSION_HANDLE_INVALID`.
#[cfg(feature = "pkcs11")]
fn ckr_name(variant: &str) -> String {
    let mut out = String::from("CKR_");
    for (i, ch) in variant.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// What can go wrong at the key boundary.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The device cannot be reached now (module, token or TPM gone, session
    /// lost). Retrying later may work; lockstep reconnects by itself.
    #[error("key backend unavailable ({device}): {reason}")]
    Unavailable {
        /// Which device.
        device: String,
        /// What failed, for the operator.
        reason: String,
        /// The device's return code, when it gave one.
        code: Option<DeviceCode>,
    },
    /// Logging in to the device failed (wrong or locked PIN, wrong TPM auth
    /// value or TPM lockout).
    #[error(
        "login to {device} failed ({code}): check the PIN or auth value reference and the device's PIN or lockout state"
    )]
    Login {
        /// Which device.
        device: String,
        /// The device's return code.
        code: DeviceCode,
    },
    /// No key with this reference exists on the device.
    #[error("key {key} not found on {device}: run `lockstep init` or check the key label/id")]
    KeyNotFound {
        /// Which device.
        device: String,
        /// The key reference.
        key: String,
    },
    /// A key with this reference already exists and replacing it was not
    /// asked for.
    #[error(
        "key {key} already exists on {device}: refusing to overwrite it (pass --force to destroy and replace it)"
    )]
    KeyExists {
        /// Which device.
        device: String,
        /// The key reference.
        key: String,
    },
    /// More than one object matches a key reference.
    #[error(
        "key reference {key} matches {count} objects on {device}: give each key a unique label and id"
    )]
    Ambiguous {
        /// Which device.
        device: String,
        /// The key reference.
        key: String,
        /// How many objects match.
        count: usize,
    },
    /// The device refused an operation with an unexpected return code.
    #[error("{device}: {operation} failed with {code}")]
    Device {
        /// Which device.
        device: String,
        /// The operation, e.g. `C_Sign`.
        operation: &'static str,
        /// The device's return code.
        code: DeviceCode,
    },
    /// The backend's configuration is unusable.
    #[error("key backend configuration: {0}")]
    Config(String),
    /// A PIN or auth value could not be resolved.
    #[error("key backend secret: {0}")]
    Secret(#[from] SecretError),
    /// The key or the device's answer is of a kind lockstep does not use.
    #[error("unsupported key: {0}")]
    Unsupported(String),
}

impl KeyError {
    /// For a key that was found when it was opened: its absence now means
    /// the device lost it (token removed, token store unreadable), which the
    /// service treats as an outage it recovers from, not as a set-up error.
    pub fn vanished(self) -> Self {
        match self {
            Self::KeyNotFound { device, key } => Self::Unavailable {
                device,
                reason: format!(
                    "key {key} is no longer visible (token removed or its store unreadable); signing resumes when it is back"
                ),
                code: None,
            },
            other => other,
        }
    }

    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "key_backend_unavailable",
            Self::Login { .. } => "key_backend_login_failed",
            Self::KeyNotFound { .. } => "key_not_found",
            Self::KeyExists { .. } => "key_exists",
            Self::Ambiguous { .. } => "key_ambiguous",
            Self::Device { .. } => "key_backend_error",
            Self::Config(_) | Self::Secret(_) => "key_backend_config",
            Self::Unsupported(_) => "unsupported_key",
        }
    }

    /// The device return code carried by this error, if any.
    pub fn device_code(&self) -> Option<DeviceCode> {
        match self {
            Self::Unavailable { code, .. } => *code,
            Self::Login { code, .. } | Self::Device { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(all(test, feature = "pkcs11"))]
mod tests {
    use super::*;
    use cryptoki::error::RvError;

    #[test]
    fn return_codes_print_as_the_specification_names_them() {
        assert_eq!(
            DeviceCode::Pkcs11(RvError::SessionHandleInvalid).to_string(),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(
            DeviceCode::Pkcs11(RvError::PinIncorrect).to_string(),
            "CKR_PIN_INCORRECT"
        );
    }
}
