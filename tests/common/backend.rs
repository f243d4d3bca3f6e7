//! One suite, two key backends: the issuance and end-to-end tests take a
//! [`Backend`] and run once on the process's SoftHSM2 token and once on a
//! TPM 2.0 (swtpm), from the same test body.
//!
//! `on_both_backends!(name)` turns `fn name(backend: Backend)` (or
//! `async fn`) into the tests `name::softhsm` and `name::tpm`; the second
//! only when lockstep is built with its `tpm` feature.

#[cfg(feature = "tpm")]
use lockstep::keys::KeyBackend;
use lockstep::keys::KeyRef;
#[cfg(feature = "tpm")]
use lockstep::keys::tpm::{TpmBackend, TpmConfig};

#[cfg(feature = "tpm")]
use super::tpm::SwTpm;
use super::tpm::{tpm_key_ref, unique_handle};
use super::{ca_config_text, softhsm};

/// Where a test CA keeps its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The test process's SoftHSM2 token.
    SoftHsm,
    /// The swtpm of the test run (or of this test binary).
    #[cfg(feature = "tpm")]
    Tpm,
}

/// The TPM keys of a test CA, evicted when it is dropped: swtpm holds only
/// about 65 persistent objects, and test binaries share one swtpm.
pub struct Evict {
    tcti: String,
    keys: Vec<KeyRef>,
}

#[cfg(feature = "tpm")]
impl Drop for Evict {
    fn drop(&mut self) {
        if let Ok(b) = TpmBackend::new(&TpmConfig::new(self.tcti.clone())) {
            for key in &self.keys {
                let _ = b.destroy_key(key);
            }
        }
    }
}

impl Backend {
    /// Every backend of this build: the TPM only with the `tpm` feature.
    pub fn all() -> Vec<Backend> {
        #[cfg_attr(not(feature = "tpm"), allow(unused_mut))]
        let mut all = vec![Backend::SoftHsm];
        #[cfg(feature = "tpm")]
        all.push(Backend::Tpm);
        all
    }

    /// The configuration text (backend, the four keys, `[ca]`) for a CA
    /// called `name`, and what to clean up once it is no longer used.
    pub fn ca_config_text(
        self,
        name: &str,
        root_days: u32,
        issuing_days: u32,
    ) -> (String, Option<Evict>) {
        match self {
            Backend::SoftHsm => {
                let hsm = softhsm();
                let text = ca_config_text(hsm, &hsm.token, name, root_days, issuing_days);
                (text, None)
            }
            #[cfg(feature = "tpm")]
            Backend::Tpm => {
                let (text, evict) =
                    tpm_ca_config_at(&SwTpm::shared().tcti(), name, root_days, issuing_days);
                (text, Some(evict))
            }
        }
    }
}

/// The configuration text for a CA called `name` with its four keys in the
/// TPM at `tcti`, and the guard evicting them.
pub fn tpm_ca_config_at(
    tcti: &str,
    name: &str,
    root_days: u32,
    issuing_days: u32,
) -> (String, Evict) {
    let roles = ["root", "issuing", "token", "audit"];
    let keys: Vec<KeyRef> = roles
        .iter()
        .map(|role| tpm_key_ref(&format!("{name}-{role}"), unique_handle()))
        .collect();
    let mut text = format!("\n[backend]\ntype = \"tpm\"\ntcti = \"{tcti}\"\n");
    for (role, key) in roles.iter().zip(&keys) {
        let handle = key.handle.unwrap_or_default();
        text.push_str(&format!(
            "\n[keys.{role}]\nlabel = \"{}\"\nhandle = {handle:#010x}\n",
            key.label
        ));
    }
    text.push_str(&format!(
        r#"
[ca]
dir = "ca"
root_subject = {{ common_name = "{name} Root CA", organization = "lockstep tests" }}
issuing_subject = {{ common_name = "{name} Issuing CA", organization = "lockstep tests" }}
root_validity_days = {root_days}
issuing_validity_days = {issuing_days}
"#
    ));
    let evict = Evict {
        tcti: tcti.to_owned(),
        keys,
    };
    (text, evict)
}

/// Runs a test body taking a [`Backend`] on each backend (see the module
/// documentation).
#[macro_export]
macro_rules! on_both_backends {
    (async $name:ident) => {
        mod $name {
            use super::common::backend::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn softhsm() {
                super::$name(Backend::SoftHsm).await
            }

            #[cfg(feature = "tpm")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tpm() {
                super::$name(Backend::Tpm).await
            }
        }
    };
    ($name:ident) => {
        mod $name {
            use super::common::backend::Backend;

            #[test]
            fn softhsm() {
                super::$name(Backend::SoftHsm)
            }

            #[cfg(feature = "tpm")]
            #[test]
            fn tpm() {
                super::$name(Backend::Tpm)
            }
        }
    };
}
