//! `hawser-node-proxy`: the one proxy per node.
//!
//! - [`identity`]: workload certificates: keys generated here, CSRs sent to the
//!   control plane's CA, renewal at half-life, the certificates currently held.
//! - [`authz`]: L4 authorization of inbound connections (AuthorizationPolicy).
//! - [`discovery`]: the mesh configuration streamed from the control plane,
//!   validated before use, ACKed or NACKed, kept while the control plane is away.
//! - [`inbound`]: the destination side of HBONE (target check, L4 policy, connect
//!   to the app inside the pod's namespace).
//! - [`outbound`]: where a captured connection goes (Service VIP → endpoint by
//!   power of two choices; HBONE to enrolled pods, plain TCP otherwise).
//! - [`http`]: the outbound L7 engine for HTTP Service ports: GAMMA route
//!   matching, filters, weighted backends, timeouts, retries, mirrors and
//!   per-request load balancing over pooled upstream connections.
//! - [`tunnel`]: HBONE, HTTP/2 CONNECT over mTLS between node proxies.
//! - [`app`]: the `hawser-node-proxy` process: flags, start-up, admin API.
//! - [`dataplane`]: each enrolled pod's listeners served: outbound capture
//!   to HBONE or plain TCP, the HBONE server, inbound plaintext.
//! - [`relay`]: bidirectional copying with bounded buffers, half-close and
//!   an idle timeout.
//! - [`idle`]: the idle timeout of a connection one task serves (the HTTP
//!   servers' client connections).
//! - [`inpod`]: the CNI plugin's requests and the listeners opened inside
//!   each enrolled pod's network namespace (15001, 15006, 15008).
//!
//! The data path (in-pod listeners, HBONE tunnel, routing, authorization) is
//! built on these in its own modules. This crate never links `kube`.

pub mod app;
pub mod authz;
pub mod dataplane;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod idle;
pub mod inbound;
pub mod inpod;
pub mod outbound;
pub mod relay;
pub mod tunnel;
