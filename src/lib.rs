//! lockstep: a hardware-rooted credential issuer.
//!
//! Signing keys live in a PKCS#11 HSM or a TPM 2.0 and never leave it.
//! lockstep mints X.509 certificates whose `notAfter` is exactly the close
//! time of the approved session that asked for them.
//!
//! Modules, by domain:
//! - [`keys`]: the hardware-key boundary and its backends;
//! - [`x509`]: CSR checks, certificate minting, CA certificates;
//! - [`ca`]: setting up the CA and loading the issuer;
//! - [`events`]: the committed-event stream (in-process subscribers and
//!   `GET /v1/events`);
//! - [`config`], [`secret`], [`clock`]: configuration, secrets by
//!   reference, time;
//! - [`store`]: durable state, in the store `[store]` names;
//! - [`startup`]: the running service assembled from the configuration;
//! - [`api`]: the HTTPS router and server;
//! - [`cli`]: the `lockstep` command.
//!
//! Key backends and stores are Cargo features (`pkcs11`, `tpm`, `sqlite`;
//! all on by default), so a build for one kind of device needs only that
//! device's libraries.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Outside tests, every failure is an error path: no `unwrap`/`expect`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(any(feature = "pkcs11", feature = "tpm")))]
compile_error!(
    "lockstep needs a key backend: enable the Cargo feature `pkcs11`, `tpm` or both (the default)"
);

pub mod api;
pub mod audit;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod fsio;
pub mod gateway;
pub mod keys;
pub mod lane;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod revocation;
pub mod secret;
pub mod service;
pub mod signals;
pub mod sigstore;
pub mod ssh;
pub mod startup;
pub mod store;
pub mod tokens;
pub mod tsa;
pub mod webhooks;
pub mod x509;

pub use error::Error;
pub mod identity;
pub mod sessions;
