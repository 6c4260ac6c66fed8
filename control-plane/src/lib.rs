//! `hawser-control-plane`: the mesh's brain.
//!
//! - [`ca`]: the certificate authority (root or operator intermediate, SVID issuance, trust bundle, rotation).
//! - [`identity`]: the gRPC identity service node proxies call (node authentication,
//!   the impersonation check, per-node rate limits), served over TLS.
//! - [`args`] and [`run`]: the binary's configuration and startup.

pub mod args;
pub mod ca;
pub mod identity;
mod run;

pub use run::{run, serve};
