//! `hawser-node-proxy`: the one proxy per node.
//!
//! - [`authz`]: L4 authorization of inbound connections (AuthorizationPolicy).
//! - [`discovery`]: the mesh configuration streamed from the control plane,
//!   validated before use, ACKed or NACKed, kept while the control plane is away.
//! - [`identity`]: workload certificates: keys generated here, CSRs sent to the
//!   control plane's CA, renewal at half-life, the certificates currently held.
//! - [`tunnel`]: HBONE, HTTP/2 CONNECT over mTLS between node proxies.
//!
//! The data path (in-pod listeners, HBONE tunnel, routing, authorization) is
//! built on these in its own modules. This crate never links `kube`.

pub mod authz;
pub mod discovery;
pub mod identity;
pub mod tunnel;
