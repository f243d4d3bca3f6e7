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
//! - [`cli`]: the `lockstep` command.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Outside tests, every failure is an error path: no `unwrap`/`expect`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

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
pub mod keys;
pub mod lane;
pub mod net;
pub mod policy;
pub mod revocation;
pub mod secret;
pub mod service;
pub mod store;
pub mod tokens;
pub mod x509;

pub use error::Error;
pub mod identity;
pub mod sessions;
