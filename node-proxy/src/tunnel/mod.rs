//! HBONE: pod-to-pod tunnels as HTTP/2 CONNECT streams over mTLS (TLS 1.3,
//! ALPN h2) to port 15008 of the destination pod, as Istio ambient does.
//!
//! - [`client`]: the pooled client (source proxy side).
//! - [`server`]: the 15008 server (destination proxy side), asking an
//!   [`server::HboneHandler`] to authorize and connect each stream.
//! - [`log`]: the connections open (and recently closed), for the admin API.
//! - [`H2Stream`]: one stream as `AsyncRead + AsyncWrite` with flow control.

pub mod client;
pub mod log;
pub mod server;
mod stream;

#[cfg(test)]
mod tests;

pub use client::{Dialer, HbonePool, Io, PoolKey, TunnelError};
pub use log::{ConnectionLog, ConnectionRecord, Direction, Negotiated};
pub use server::{Admitted, HboneHandler, Refusal, ServeStream, serve_connection};
pub use stream::H2Stream;
