//! `hawser-api`: everything two Hawser components must agree on.
//!
//! - [`spiffe`]: the [`SpiffeId`](spiffe::SpiffeId) type, parsed strictly.
//! - [`tls`]: trust bundles, X.509-SVIDs and the rustls verifiers that check a
//!   peer's chain and SPIFFE ID; the one crypto provider (aws-lc-rs).
//! - [`cni`]: the CNI plugin ↔ node proxy protocol (framing, `SCM_RIGHTS`
//!   netns handoff, client and server) and the shared redirection constants.
//! - [`duration`]: the duration syntax of every command line.
//! - [`protocol`]: which Service ports carry HTTP.
//! - [`proto`]: the gRPC protocols (identity, …) generated from `proto/`.
//!
//! This crate never depends on `kube`: the data plane links it.

pub mod admin;
pub mod cni;
pub mod duration;
pub mod proto;
pub mod protocol;
pub mod secret;
pub mod spiffe;
pub mod tls;

#[cfg(feature = "testing")]
pub mod testing;

pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
