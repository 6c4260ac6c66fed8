//! `hawser-control-plane`: the mesh's brain.
//!
//! - [`ca`]: the certificate authority (root or operator intermediate, SVID issuance, trust bundle, rotation).
//! - [`identity`]: the gRPC identity service node proxies call (node authentication,
//!   the impersonation check, per-node rate limits), served over TLS.
//! - [`admin`]: the admin API (route status, manifest errors, node streams).
//! - [`args`] and [`run`]: the binary's configuration and startup.
//! - [`model`]: the mesh as data (no kube, no tonic); [`index`]: objects in,
//!   per-node resources with versions and deltas out; [`gamma`]: route
//!   attachment, precedence, filters and [`status`]; [`authz`]: the
//!   AuthorizationPolicy CRD and its validation; [`convert`]: Kubernetes types
//!   into the model; [`sources`]: the manifest directory; [`translate`]: the
//!   per-node config as `hawser.discovery.v1` messages.

pub mod admin;
pub mod args;
pub mod authz;
pub mod ca;
pub mod convert;
pub mod discovery;
pub mod gamma;
pub mod identity;
pub mod index;
pub mod model;
mod run;
pub mod sources;
pub mod status;
pub mod translate;

pub use run::{run, serve};
