//! The outbound L7 engine: what happens to each HTTP request a pod sends to
//! a Service port that speaks HTTP (see [`is_http`]).
//!
//! A captured client connection is served by [`HttpOutbound::serve`]
//! (HTTP/1.1 or HTTP/2 with prior knowledge, detected; plain HTTP/1.1
//! requests without a body are read and answered in the connection's own
//! task, everything else by hyper's server). Every request, also
//! on kept-alive connections, is routed on its own: the destination
//! Service port and the client's namespace select a route table (consumer
//! routes of that namespace, else producer routes, else none: straight to
//! the Service's endpoints); the table's first matching entry selects a
//! rule; the rule's filters edit, redirect or mirror the request; a backend
//! is chosen by weight; an endpoint by power of two choices over requests in
//! flight; and the request is sent over a pooled upstream connection opened
//! by the client's [`UpstreamConnector`], within the rule's timeouts and
//! retried per its policy and the retry budget.
//!
//! - [`routes`]: the route tables of one config version, compiled.
//! - `matching`: request → rule, `filters`: header, path and redirect edits.
//! - `proxy`: [`HttpOutbound`], the per-request flow and connection serving.
//! - `pool`: upstream HTTP connections per (connector, endpoint); `h1`: the
//!   HTTP/1.1 exchange of a request without a body, in the caller's task.
//! - `retry`: retry budget and backoff, `body`: replayable and mirrored bodies.
//! - `respond`: the one place errors become responses ([`HttpError`]).
//! - `serve`: a client connection: plain HTTP/1.1 requests served in its
//!   task, the rest of the connection handed to hyper's server.

mod body;
mod filters;
pub(crate) mod h1;
mod matching;
mod metrics;
mod pool;
mod proxy;
mod respond;
mod retry;
pub mod routes;
mod serve;

#[cfg(test)]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use body::{BoxError, HttpBody};
pub(crate) use body::{boxed, empty, full};
pub(crate) use matching::is_grpc;
pub use metrics::{HttpMetrics, MetricsSnapshot};
pub use pool::UpstreamError;
pub use proxy::HttpOutbound;
pub use proxy::{DEFAULT_ALLOWED_UPGRADES, default_allowed_upgrades};
pub(crate) use proxy::{HOP_BY_HOP, strip_hop_by_hop};
pub(crate) use proxy::{is_upgrade, strip_upgrade, upgrade_allowed};
pub use respond::HttpError;
pub use retry::BudgetSettings;
pub use routes::{Routes, ServiceKey, UpstreamProtocol};
pub use serve::{DEFAULT_HEADER_READ_TIMEOUT, ServeTimeouts};
pub(crate) use serve::{RawRequest, serve_verbatim};

/// Set by the destination node proxy on its own reply when the app refused
/// or dropped the connection (`connect` or `reset`) while it served the
/// stream as HTTP: the client's node proxy retries it as a connection error
/// and removes the header. A relayed stream needs no header: the refusal
/// fails the CONNECT and a drop ends the stream, which the client's proxy
/// sees as connection errors itself. Where the destination parses, apps
/// cannot set it (it is stripped from their responses); on a relayed stream
/// an app that sets it only gets its own request retried, within the retry
/// policy and budget.
pub const UPSTREAM_ERROR_HEADER: &str = "hawser-upstream-error";

/// Opens byte streams to endpoints on behalf of one client pod.
#[async_trait]
pub trait UpstreamConnector: Send + Sync + 'static {
    /// Opens a byte stream to `endpoint` (pod IP:target port) on behalf of the client pod.
    /// In production: HBONE through the destination pod's node proxy, or plain TCP from the pod's netns.
    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> std::io::Result<Box<dyn crate::tunnel::client::Io>>;
}

/// Who sent a captured connection and where it was going.
#[derive(Clone)]
pub struct ClientContext {
    /// The client pod's namespace (selects consumer routes).
    pub namespace: String,
    /// The connection's original destination: a Service VIP and port (any
    /// other address is passed through to itself, without routes).
    pub destination: SocketAddr,
    /// Opens upstream connections for this client. Upstream connections are
    /// pooled per connector: share one connector per client pod to reuse
    /// connections across that pod's client connections.
    pub connector: Arc<dyn UpstreamConnector>,
    /// The protocols this destination lets clients upgrade to (its Service's
    /// allow-list); `None`: [`HttpSettings::allowed_upgrades`].
    pub allowed_upgrades: Option<Arc<[Box<str>]>>,
}

impl std::fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientContext")
            .field("namespace", &self.namespace)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

/// Engine settings (defaults suit production).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Request bodies up to this size are kept so the request can be retried.
    pub max_replay_body: usize,
    /// Request bytes queued for a mirror before the mirrored copy is abandoned.
    pub max_mirror_body: usize,
    /// Retries after the first attempt when a rule's retry sets no `attempts`.
    pub default_retry_attempts: u32,
    /// Wait before the first retry when a rule's retry sets no `backoff`.
    pub default_retry_backoff: Duration,
    /// Longest wait between attempts (never below the rule's backoff).
    pub max_retry_backoff: Duration,
    /// Retry budget per destination Service.
    pub retry_budget: BudgetSettings,
    /// Idle HTTP/1.1 connections kept per endpoint and connector.
    pub max_idle_per_endpoint: usize,
    /// How long an idle HTTP/1.1 connection is kept.
    pub idle_timeout: Duration,
    /// The idle timeout of client connections, and of connections upgraded
    /// from them (`http/serve.rs` says what it cuts).
    pub client_idle_timeout: Duration,
    /// How long a client's request head may take once its first byte came.
    pub header_read_timeout: Duration,
    /// The protocols a client may upgrade a connection to (`Upgrade`);
    /// requests asking for another are served as plain HTTP/1.1.
    pub allowed_upgrades: Arc<[Box<str>]>,
    /// How long a mirrored request may take before it is abandoned.
    pub mirror_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_replay_body: 64 * 1024,
            max_mirror_body: 64 * 1024,
            default_retry_attempts: 2,
            default_retry_backoff: Duration::from_millis(25),
            max_retry_backoff: Duration::from_secs(1),
            retry_budget: BudgetSettings::default(),
            max_idle_per_endpoint: 32,
            idle_timeout: Duration::from_secs(90),
            client_idle_timeout: crate::relay::DEFAULT_IDLE_TIMEOUT,
            header_read_timeout: serve::DEFAULT_HEADER_READ_TIMEOUT,
            allowed_upgrades: proxy::default_allowed_upgrades(),
            mirror_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether a Service port carries HTTP and is parsed per request (see
/// [`hawser_api::protocol::is_http`]; `appProtocol` empty means unset).
pub fn is_http(app_protocol: &str, port_name: &str) -> bool {
    hawser_api::protocol::is_http(Some(app_protocol), port_name)
}
