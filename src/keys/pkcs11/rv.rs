//! The one place where PKCS#11 return codes become lockstep errors, and
//! where it is decided which failures a reconnect can cure.

use cryptoki::error::{Error as CkError, RvError};

use crate::keys::{DeviceCode, KeyError};

/// What the caller should do after a failed PKCS#11 call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// The session, login or module state is gone (session handle invalid,
    /// token removed or re-inserted, module finalized): open a new
    /// connection and try again.
    Reconnect,
    /// A cached object handle no longer names the object: look it up again.
    StaleHandle,
    /// Nothing to retry: report the error.
    Fail,
}

/// Classifies a failed call.
pub(super) fn recovery(err: &CkError) -> Recovery {
    match err {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn => Recovery::Reconnect,
            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => Recovery::StaleHandle,
            _ => Recovery::Fail,
        },
        CkError::LibraryLoading(_) | CkError::NullFunctionPointer => Recovery::Reconnect,
        _ => Recovery::Fail,
    }
}

/// Maps a failed call of `operation` on `device` to a [`KeyError`], keeping
/// the return code.
pub(super) fn to_key_error(device: &str, operation: &'static str, err: CkError) -> KeyError {
    match err {
        CkError::Pkcs11(rv, _) => {
            let code = DeviceCode::Pkcs11(rv);
            match rv {
                RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::UserPinNotInitialized => KeyError::Login {
                    device: device.to_owned(),
                    code,
                },
                _ if recovery(&err) == Recovery::Reconnect => KeyError::Unavailable {
                    device: device.to_owned(),
                    reason: format!("{operation} returned {code}"),
                    code: Some(code),
                },
                _ => KeyError::Device {
                    device: device.to_owned(),
                    operation,
                    code,
                },
            }
        }
        CkError::LibraryLoading(e) => KeyError::Unavailable {
            device: device.to_owned(),
            reason: format!("cannot load the PKCS#11 module: {e}"),
            code: None,
        },
        other => KeyError::Unavailable {
            device: device.to_owned(),
            reason: format!("{operation}: {other}"),
            code: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn ck(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Sign)
    }

    #[test]
    fn lost_sessions_and_tokens_reconnect() {
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::CryptokiNotInitialized,
            RvError::UserNotLoggedIn,
        ] {
            assert_eq!(recovery(&ck(rv)), Recovery::Reconnect, "{rv:?}");
            let e = to_key_error("t", "C_Sign", ck(rv));
            assert_eq!(e.code(), "key_backend_unavailable");
            assert_eq!(e.device_code(), Some(DeviceCode::Pkcs11(rv)));
        }
    }

    #[test]
    fn pin_failures_are_login_errors_and_keep_their_code() {
        let e = to_key_error("t", "C_Login", ck(RvError::PinIncorrect));
        assert_eq!(e.code(), "key_backend_login_failed");
        assert!(e.to_string().contains("CKR_PIN_INCORRECT"));
        assert_eq!(recovery(&ck(RvError::PinIncorrect)), Recovery::Fail);
    }

    #[test]
    fn stale_handles_are_looked_up_again() {
        assert_eq!(
            recovery(&ck(RvError::KeyHandleInvalid)),
            Recovery::StaleHandle
        );
        assert_eq!(
            recovery(&ck(RvError::ObjectHandleInvalid)),
            Recovery::StaleHandle
        );
    }

    #[test]
    fn other_codes_are_device_errors() {
        let e = to_key_error("t", "C_Sign", ck(RvError::MechanismInvalid));
        assert_eq!(e.code(), "key_backend_error");
        assert!(e.to_string().contains("CKR_MECHANISM_INVALID"));
    }
}
