//! The one place where TPM and TSS return codes (`TSS2_RC`) become lockstep
//! errors, where they get their specification names, and where it is
//! decided which failures a reconnect can cure.
//!
//! A `TSS2_RC` is 32 bits: bits 16–23 name the layer that produced it (0:
//! the TPM itself, 7: ESAPI, 8: SAPI, 10: the TCTI, 11: a resource manager,
//! ...), the low 16 bits are the code within that layer. TPM codes follow
//! the TPM 2.0 "format zero" / "format one" layouts; the other layers share
//! the `TSS2_BASE_RC_*` numbers.

use tss_esapi::Error as TssError;
use tss_esapi::constants::response_code::{
    FormatOneResponseCode, FormatZeroResponseCode, Tss2ResponseCode, Tss2ResponseCodeKind,
};

use crate::keys::{DeviceCode, KeyError};

/// The TPM itself.
const LAYER_TPM: u32 = 0;
/// The ESAPI (`Esys_*`).
const LAYER_ESAPI: u32 = 7;
/// The SAPI (`Tss2_Sys_*`).
const LAYER_SYS: u32 = 8;
/// The TCTI: the transport to the TPM (device, socket, D-Bus).
const LAYER_TCTI: u32 = 10;
/// A resource manager (tpm2-abrmd) reporting its own errors.
const LAYER_RESMGR: u32 = 11;
/// A resource manager passing on a TPM error.
const LAYER_RESMGR_TPM: u32 = 12;

/// `TSS2_BASE_RC_*` values.
const BASE_GENERAL_FAILURE: u32 = 1;
const BASE_BAD_SEQUENCE: u32 = 7;
const BASE_NO_CONNECTION: u32 = 8;
const BASE_TRY_AGAIN: u32 = 9;
const BASE_IO_ERROR: u32 = 10;
const BASE_MALFORMED_RESPONSE: u32 = 17;
const BASE_INSUFFICIENT_RESPONSE: u32 = 19;

const BASE_NAMES: [&str; 28] = [
    "SUCCESS",
    "GENERAL_FAILURE",
    "NOT_IMPLEMENTED",
    "BAD_CONTEXT",
    "ABI_MISMATCH",
    "BAD_REFERENCE",
    "INSUFFICIENT_BUFFER",
    "BAD_SEQUENCE",
    "NO_CONNECTION",
    "TRY_AGAIN",
    "IO_ERROR",
    "BAD_VALUE",
    "NOT_PERMITTED",
    "INVALID_SESSIONS",
    "NO_DECRYPT_PARAM",
    "NO_ENCRYPT_PARAM",
    "BAD_SIZE",
    "MALFORMED_RESPONSE",
    "INSUFFICIENT_CONTEXT",
    "INSUFFICIENT_RESPONSE",
    "INCOMPATIBLE_TCTI",
    "NOT_SUPPORTED",
    "BAD_TCTI_STRUCTURE",
    "MEMORY",
    "BAD_TR",
    "MULTIPLE_DECRYPT_SESSIONS",
    "MULTIPLE_ENCRYPT_SESSIONS",
    "RSP_AUTH_FAILED",
];

fn layer(rc: u32) -> u32 {
    (rc >> 16) & 0xff
}

/// The TPM-layer meaning of the low 16 bits, as tss-esapi classifies it.
fn tpm_kind(rc: u32) -> Option<Tss2ResponseCodeKind> {
    let rc = rc & 0xffff;
    let code = if rc == 0 {
        Tss2ResponseCode::Success
    } else if rc & 0x80 != 0 {
        Tss2ResponseCode::FormatOne(FormatOneResponseCode(rc))
    } else {
        Tss2ResponseCode::FormatZero(FormatZeroResponseCode(rc))
    };
    code.kind()
}

/// `AuthFail` → `AUTH_FAIL`.
fn upper_snake(variant: &str) -> String {
    let mut out = String::new();
    for (i, ch) in variant.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// The specification name of a `TSS2_RC`, e.g. `TPM_RC_AUTH_FAIL` or
/// `TSS2_TCTI_RC_IO_ERROR`, with the handle, parameter or session a TPM
/// format-one code refers to. Used by [`DeviceCode`]'s `Display`.
pub(in crate::keys) fn name(rc: u32) -> String {
    let base = rc & 0xffff;
    match layer(rc) {
        LAYER_TPM | LAYER_RESMGR_TPM => {
            let prefix = if layer(rc) == LAYER_TPM {
                "TPM_RC_"
            } else {
                "TSS2_RESMGR_TPM_RC_"
            };
            let mut s = match tpm_kind(rc) {
                Some(kind) => format!("{prefix}{}", upper_snake(&format!("{kind:?}"))),
                None => format!("{prefix}UNKNOWN"),
            };
            if base & 0x80 != 0 {
                // Format one: bits 8–11 say what the error is about.
                let n = (base >> 8) & 0xf;
                if base & 0x40 != 0 {
                    s.push_str(&format!(" (parameter {n})"));
                } else if n >= 8 {
                    s.push_str(&format!(" (session {})", n - 8));
                } else if n > 0 {
                    s.push_str(&format!(" (handle {n})"));
                }
            }
            s
        }
        l => {
            let layer_name = match l {
                LAYER_ESAPI => "ESYS",
                LAYER_SYS => "SYS",
                9 => "MU",
                LAYER_TCTI => "TCTI",
                LAYER_RESMGR => "RESMGR",
                6 => "FEATURE",
                _ => "LAYER",
            };
            match BASE_NAMES.get(base as usize) {
                Some(b) => format!("TSS2_{layer_name}_RC_{b}"),
                None => format!("TSS2_{layer_name}_RC_{base}"),
            }
        }
    }
}

/// The raw `TSS2_RC` of a tss-esapi error, if it carries one.
pub(super) fn raw(err: &TssError) -> Option<u32> {
    match err {
        TssError::Tss2Error(Tss2ResponseCode::Success) => Some(0),
        TssError::Tss2Error(Tss2ResponseCode::FormatZero(c)) => Some(c.0),
        TssError::Tss2Error(Tss2ResponseCode::FormatOne(c)) => Some(c.0),
        TssError::WrapperError(_) => None,
    }
}

/// What the caller should do after a failed TPM call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// The transport failed (TPM gone, socket closed, device busy or
    /// reset): drop the context, make a new one and try again.
    Reconnect,
    /// The TPM was restarted without `TPM2_Startup`: send it, try again.
    Startup,
    /// A transient condition the TPM asks to retry (`TPM_RC_RETRY`,
    /// `TPM_RC_YIELDED`, `TPM_RC_TESTING`).
    Retry,
    /// A cached object handle no longer names an object: open it again.
    StaleHandle,
    /// Nothing to retry: report the error.
    Fail,
}

/// Classifies a failed call.
pub(super) fn recovery(err: &TssError) -> Recovery {
    let Some(rc) = raw(err) else {
        return Recovery::Fail;
    };
    match layer(rc) {
        LAYER_TPM | LAYER_RESMGR_TPM => match tpm_kind(rc) {
            Some(Tss2ResponseCodeKind::Initialize) => Recovery::Startup,
            Some(
                Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing,
            ) => Recovery::Retry,
            Some(
                Tss2ResponseCodeKind::ReferenceH0
                | Tss2ResponseCodeKind::ReferenceH1
                | Tss2ResponseCodeKind::ReferenceH2,
            ) => Recovery::StaleHandle,
            _ => Recovery::Fail,
        },
        LAYER_TCTI | LAYER_ESAPI | LAYER_SYS | LAYER_RESMGR => match rc & 0xffff {
            BASE_IO_ERROR
            | BASE_NO_CONNECTION
            | BASE_TRY_AGAIN
            | BASE_BAD_SEQUENCE
            | BASE_MALFORMED_RESPONSE
            | BASE_INSUFFICIENT_RESPONSE => Recovery::Reconnect,
            BASE_GENERAL_FAILURE if layer(rc) == LAYER_TCTI => Recovery::Reconnect,
            _ => Recovery::Fail,
        },
        _ => Recovery::Fail,
    }
}

/// Whether the TPM refused an authorisation value (wrong owner or key
/// auth) or is locked out after too many wrong ones.
fn is_auth_failure(rc: u32) -> bool {
    matches!(layer(rc), LAYER_TPM | LAYER_RESMGR_TPM)
        && matches!(
            tpm_kind(rc),
            Some(
                Tss2ResponseCodeKind::AuthFail
                    | Tss2ResponseCodeKind::BadAuth
                    | Tss2ResponseCodeKind::Lockout
                    | Tss2ResponseCodeKind::AuthMissing
            )
        )
}

/// Maps a failed call of `operation` on `device` to a [`KeyError`], keeping
/// the return code.
pub(super) fn to_key_error(device: &str, operation: &'static str, err: TssError) -> KeyError {
    let Some(rc) = raw(&err) else {
        // An error of the Rust wrapper (a value too large for its TPM2B,
        // an answer it could not decode): no device code to keep.
        return KeyError::Unsupported(format!("{device}: {operation}: {err}"));
    };
    let code = DeviceCode::Tpm(rc);
    if is_auth_failure(rc) {
        return KeyError::Login {
            device: device.to_owned(),
            code,
        };
    }
    let tpm_unusable = matches!(layer(rc), LAYER_TPM | LAYER_RESMGR_TPM)
        && matches!(
            tpm_kind(rc),
            Some(Tss2ResponseCodeKind::Failure | Tss2ResponseCodeKind::NvUnavailable)
        );
    if recovery(&err) != Recovery::Fail || tpm_unusable {
        return KeyError::Unavailable {
            device: device.to_owned(),
            reason: format!("{operation} returned {code}"),
            code: Some(code),
        };
    }
    KeyError::Device {
        device: device.to_owned(),
        operation,
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::WrapperErrorKind;

    fn tss(rc: u32) -> TssError {
        let code = if rc & 0x80 != 0 && layer(rc) == 0 {
            Tss2ResponseCode::FormatOne(FormatOneResponseCode(rc))
        } else {
            Tss2ResponseCode::FormatZero(FormatZeroResponseCode(rc))
        };
        TssError::Tss2Error(code)
    }

    #[test]
    fn codes_print_as_the_specifications_name_them() {
        assert_eq!(name(0x18b), "TPM_RC_HANDLE (handle 1)");
        assert_eq!(name(0x98e), "TPM_RC_AUTH_FAIL (session 1)");
        assert_eq!(name(0x2c4), "TPM_RC_VALUE (parameter 2)");
        assert_eq!(name(0x100), "TPM_RC_INITIALIZE");
        assert_eq!(name(0x921), "TPM_RC_LOCKOUT");
        assert_eq!(name(0x14c), "TPM_RC_NV_DEFINED");
        assert_eq!(name(0xa000a), "TSS2_TCTI_RC_IO_ERROR");
        assert_eq!(name(0x7000b), "TSS2_ESYS_RC_BAD_VALUE");
        assert_eq!(name(0xa00ff), "TSS2_TCTI_RC_255");
        assert_eq!(
            DeviceCode::Tpm(0x18b).to_string(),
            "TPM_RC_HANDLE (handle 1) (0x0000018b)"
        );
    }

    #[test]
    fn transport_failures_reconnect_and_are_unavailable() {
        for rc in [0xa000a, 0xa0008, 0x7000a, 0xa0001] {
            assert_eq!(recovery(&tss(rc)), Recovery::Reconnect, "{rc:#x}");
            let e = to_key_error("t", "TPM2_Sign", tss(rc));
            assert_eq!(e.code(), "key_backend_unavailable", "{rc:#x}");
            assert_eq!(e.device_code(), Some(DeviceCode::Tpm(rc)));
        }
        assert_eq!(recovery(&tss(0x100)), Recovery::Startup);
        assert_eq!(recovery(&tss(0x922)), Recovery::Retry);
        assert_eq!(
            to_key_error("t", "TPM2_Sign", tss(0x101)).code(),
            "key_backend_unavailable"
        );
    }

    #[test]
    fn auth_failures_are_login_errors_and_keep_their_code() {
        for rc in [0x98e, 0x9a2, 0x921] {
            let e = to_key_error("t", "TPM2_Sign", tss(rc));
            assert_eq!(e.code(), "key_backend_login_failed", "{rc:#x}");
            assert_eq!(recovery(&tss(rc)), Recovery::Fail);
        }
        let e = to_key_error("t", "TPM2_Sign", tss(0x98e));
        assert!(e.to_string().contains("TPM_RC_AUTH_FAIL"), "{e}");
    }

    #[test]
    fn other_codes_are_device_errors_and_wrapper_errors_unsupported() {
        let e = to_key_error("t", "TPM2_EvictControl", tss(0x14c));
        assert_eq!(e.code(), "key_backend_error");
        assert!(e.to_string().contains("TPM_RC_NV_DEFINED"), "{e}");
        let e = to_key_error(
            "t",
            "TPM2_Sign",
            TssError::WrapperError(WrapperErrorKind::WrongParamSize),
        );
        assert_eq!(e.code(), "unsupported_key");
        assert_eq!(e.device_code(), None);
    }
}
