//! The data plane: what runs on each enrolled pod's three listeners.
//!
//! [`DataPlane`] implements [`PodServer`]: the in-pod layer hands it each
//! pod's listeners, and it serves them until the pod drains.
//!
//! - **15001, outbound capture.** The original destination
//!   ([`original_dst`]) is resolved against the node's configuration
//!   ([`Destinations`]): a Service VIP picks a ready endpoint by power of two
//!   choices. An enrolled destination gets an HBONE stream through its
//!   node proxy, from this pod's pool ([`HbonePool`]: connections leave from
//!   the pod's namespace with the bypass mark, present the pod's
//!   certificate, require the destination's SPIFFE ID, and are shared per
//!   (source, destination)). Anything else gets plain TCP from the pod.
//!
//! [`original_dst`]: crate::inpod::original_dst
//! [`HbonePool`]: crate::tunnel::HbonePool
//! [`PodInbound`]: crate::inbound::PodInbound
//! [`PodInbound::admit_plaintext`]: crate::inbound::PodInbound::admit_plaintext
//!
//!   A Service port that speaks HTTP ([`crate::http::is_http`]) is served
//!   by the L7 engine instead ([`crate::http::HttpOutbound`]): every request
//!   is routed per the Service's routes, and its upstream connections are
//!   opened the same way (HBONE or plain, from the pod).
//! - **15008, HBONE.** mTLS with the pod's certificate, the client verified
//!   against the trust bundle; each CONNECT stream is admitted by
//!   [`PodInbound`] (target check, L4 authorization) and connected to the
//!   app inside the pod.
//! - **15006, inbound plaintext.** Admitted by [`PodInbound::admit_plaintext`]:
//!   allowed unless a policy needs an authenticated peer.
//!
//! A refused connection (denied, no endpoint, tunnel failure) is reset, as
//! the client would see from a firewall, and logged with its reason.
//! Established connections are relayed with bounded buffers, half-close and
//! an idle timeout ([`crate::relay`]). When the pod drains, accepting stops
//! at once and connections still open at the forced deadline are closed.

pub mod limits;
mod pod;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hawser_api::TrustDomain;
use hawser_api::tls::TrustBundle;
use tokio::sync::watch;

use crate::discovery::NodeConfig;
use crate::http::{HttpOutbound, HttpSettings};
use crate::identity::CertManager;
use crate::inbound::InboundStats;
use crate::inpod::{PodContext, PodServer, PodSockets};
use crate::outbound::{Balancer, Destinations};
use crate::tunnel::ConnectionLog;
use crate::tunnel::client::ClientConfig;
use crate::tunnel::server::ServerConfig;

/// Tuning of the data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneSettings {
    /// A relayed connection with no bytes moving either way for this long is
    /// closed; it is also the idle timeout of HTTP client connections (see
    /// [`crate::http::HttpSettings::client_idle_timeout`]).
    pub idle_timeout: Duration,
    /// How long an upstream TCP connect (plain, or under a tunnel) may take.
    pub connect_timeout: Duration,
    /// How long a client may take to complete the mTLS handshake on 15008.
    pub tls_handshake_timeout: Duration,
    /// The HBONE server's HTTP/2 tuning.
    pub hbone_server: ServerConfig,
    /// The HBONE client's HTTP/2 tuning.
    pub hbone_client: ClientConfig,
    /// How long a client's HTTP request head may take once its first byte
    /// came (inbound and outbound).
    pub header_read_timeout: Duration,
    /// The protocols clients may upgrade HTTP connections to (inbound and
    /// outbound); others are served as plain HTTP/1.1.
    pub allowed_upgrades: Arc<[Box<str>]>,
    /// How request paths are normalized before inbound authorization.
    pub path_normalization: crate::authz::PathNormalization,
    /// How many connections the proxy holds at once, in all and per source.
    pub connection_caps: limits::ConnectionCaps,
}

impl Default for DataPlaneSettings {
    fn default() -> Self {
        Self {
            idle_timeout: crate::relay::DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            hbone_server: ServerConfig::default(),
            hbone_client: ClientConfig::default(),
            header_read_timeout: crate::http::DEFAULT_HEADER_READ_TIMEOUT,
            allowed_upgrades: crate::http::default_allowed_upgrades(),
            path_normalization: crate::authz::PathNormalization::default(),
            connection_caps: limits::ConnectionCaps::for_file_limit(1024 * 1024),
        }
    }
}

/// Node-wide counters (served as Prometheus metrics by the admin API).
#[derive(Debug, Default)]
pub struct Stats {
    /// Outbound connections relayed over HBONE.
    pub outbound_hbone: AtomicU64,
    /// Outbound connections to HTTP Service ports, served request by
    /// request by the L7 engine.
    pub outbound_http: AtomicU64,
    /// Outbound connections relayed as plain TCP.
    pub outbound_plain: AtomicU64,
    /// Outbound connections reset because the Service had no ready endpoint.
    pub outbound_no_endpoints: AtomicU64,
    /// Outbound connections reset because the destination proxy denied them.
    pub outbound_denied: AtomicU64,
    /// Outbound connections reset because the upstream or tunnel failed.
    pub outbound_failed: AtomicU64,
    /// Outbound connections to a port of the proxy itself in the pod (on
    /// the pod's address or loopback), reset.
    pub outbound_self_targets: AtomicU64,
    /// Connections on 15001 or 15006 the proxy itself opened in the pod
    /// (the hop marker: a loop that got past the port checks), reset.
    pub loops_cut: AtomicU64,
    /// HBONE connections accepted (mTLS verified).
    pub hbone_accepted: AtomicU64,
    /// HBONE handshakes that failed (peer not verified, timeout, garbage).
    pub hbone_handshake_failed: AtomicU64,
    /// Inbound streams and plaintext connections admitted or denied by
    /// authorization.
    pub inbound: Arc<InboundStats>,
    /// Bytes relayed from local pods to their upstreams.
    pub bytes_out: AtomicU64,
    /// Bytes relayed back to local pods.
    pub bytes_in: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every pod's tasks share.
struct Shared {
    settings: DataPlaneSettings,
    certs: CertManager,
    bundle: Arc<TrustBundle>,
    trust_domain: TrustDomain,
    config: watch::Receiver<Arc<NodeConfig>>,
    destinations: watch::Receiver<Arc<Destinations>>,
    balancer: Arc<Balancer>,
    connections: Arc<ConnectionLog>,
    stats: Arc<Stats>,
    http: HttpOutbound,
    limits: Arc<limits::ConnectionLimits>,
}

/// The node's data plane; implements [`PodServer`]. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// A data plane serving pods with certificates from `certs`, verifying
    /// peers against `bundle` in `trust_domain`, routing per `config`. Must
    /// be called inside a tokio runtime: it starts the task that rebuilds the
    /// destination tables on every configuration version.
    pub fn new(
        settings: DataPlaneSettings,
        certs: CertManager,
        bundle: Arc<TrustBundle>,
        trust_domain: TrustDomain,
        config: watch::Receiver<Arc<NodeConfig>>,
    ) -> Self {
        let balancer = Arc::new(Balancer::default());
        let http_settings = HttpSettings {
            client_idle_timeout: settings.idle_timeout,
            header_read_timeout: settings.header_read_timeout,
            allowed_upgrades: settings.allowed_upgrades.clone(),
            ..HttpSettings::default()
        };
        let http = HttpOutbound::with_balancer(config.clone(), http_settings, balancer.clone());
        let destinations = spawn_destinations(config.clone(), balancer.clone());
        Self {
            shared: Arc::new(Shared {
                certs,
                bundle,
                trust_domain,
                config,
                destinations,
                balancer,
                connections: Arc::default(),
                stats: Arc::default(),
                http,
                limits: limits::ConnectionLimits::new(settings.connection_caps),
                settings,
            }),
        }
    }

    /// HBONE connections open and recently closed.
    pub fn connections(&self) -> Arc<ConnectionLog> {
        self.shared.connections.clone()
    }

    /// Node-wide counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The connection caps and their counts.
    pub fn limits(&self) -> Arc<limits::ConnectionLimits> {
        self.shared.limits.clone()
    }

    /// The L7 engine (its counters).
    pub fn http(&self) -> &HttpOutbound {
        &self.shared.http
    }
}

/// Keeps [`Destinations`] current: rebuilt once per configuration version
/// (never per connection), and the balancer's counters of endpoints that
/// are gone are dropped.
fn spawn_destinations(
    mut config: watch::Receiver<Arc<NodeConfig>>,
    balancer: Arc<Balancer>,
) -> watch::Receiver<Arc<Destinations>> {
    let first = Arc::new(Destinations::new(&config.borrow_and_update()));
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while config.changed().await.is_ok() {
            let current = config.borrow_and_update().clone();
            let destinations = Destinations::new(&current);
            let live: HashSet<SocketAddr> = destinations.endpoint_addrs().collect();
            balancer.retain(|addr| live.contains(addr));
            tracing::debug!(version = current.version(), "destinations rebuilt");
            if tx.send(Arc::new(destinations)).is_err() {
                return;
            }
        }
    });
    rx
}

impl PodServer for DataPlane {
    fn serve(&self, pod: Arc<PodContext>, sockets: PodSockets) {
        pod::PodRuntime::start(self.shared.clone(), pod, sockets);
    }
}

/// Resets `stream`: the peer sees a TCP RST instead of an orderly close.
fn reset(stream: tokio::net::TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "could not set SO_LINGER for a reset");
    }
    drop(stream);
}
