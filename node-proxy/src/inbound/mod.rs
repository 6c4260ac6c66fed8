//! Inbound: the destination side of HBONE (and the 15006 plaintext path).
//! For each CONNECT arriving on a pod's 15008 (after mTLS verified the
//! peer), and each plaintext connection captured on 15006, check that the
//! target is this pod, then:
//!
//! - on a TCP port, evaluate the pod's AuthorizationPolicies at L4 and
//!   connect to the app inside the pod's network namespace with the bypass
//!   mark; the bytes are relayed;
//! - on an HTTP port (see [`crate::http::is_http`]) that a policy with
//!   methods or paths applies to, serve the stream as HTTP ([`http`]): every
//!   request is authorized on its own, with its method and path, and
//!   forwarded to the app, or answered `403`. Where no such policy applies,
//!   every request would get the stream's L4 decision, so an allowed stream
//!   is relayed like a TCP one, without parsing (a denied one is still
//!   served, so its requests get `403`s). When a policy changes, a relayed
//!   stream it could deny is closed (see [`PodInbound::revoked`]) and the
//!   client's next stream is served as the new policy needs.
//!
//! Denials are logged with their reason and counted in [`InboundStats`].

pub mod http;

#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hawser_api::SpiffeId;
use hawser_api::cni::PROXY_MARK;
use hawser_api::proto::discovery::{AuthorizationPolicy, Resource, ResourceType, resource::Kind};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::authz::{self, Connection, Decision};
use crate::discovery::NodeConfig;
use crate::inpod::NetnsHandle;
use crate::tunnel::{Admitted, HboneHandler, Refusal};

use self::http::HttpStream;

/// Counters of one pod's inbound side.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Streams admitted (on TCP ports, by L4 policy; on HTTP ports, every
    /// stream to this pod: its requests are authorized one by one).
    pub allowed: AtomicU64,
    /// Streams refused by authorization (TCP ports).
    pub denied: AtomicU64,
    /// HTTP requests authorized and forwarded to the app.
    pub requests_allowed: AtomicU64,
    /// HTTP requests refused by authorization (answered `403`).
    pub requests_denied: AtomicU64,
    /// Connections and CONNECTs to a port the proxy itself serves in the
    /// pod (15001, 15006, 15008, 15000), refused.
    pub self_targets: AtomicU64,
}

/// The HBONE handler of one pod.
pub struct PodInbound {
    ips: Vec<IpAddr>,
    netns: NetnsHandle,
    stats: Arc<InboundStats>,
    /// The pod's uid, the config, and the pod's share of the version in
    /// force (also its HTTP streams').
    view: Arc<PodViews>,
    /// The idle timeout of its HTTP streams.
    idle_timeout: Duration,
    /// The header read timeout of its HTTP streams.
    header_read_timeout: Duration,
    /// The protocols its HTTP streams may upgrade to.
    allowed_upgrades: Arc<[Box<str>]>,
    /// How paths on its HTTP streams are normalized.
    path_normalization: crate::authz::PathNormalization,
}

/// The pod's share of one config version: how its ports are served and
/// the policies that apply to it, found once per version instead of for
/// every connection and request.
#[derive(Debug)]
struct PodView {
    ports: PodPorts,
    policies: Vec<PolicyRef>,
    /// The upgrade allow-lists the Services mapping a port set (their
    /// intersection when several do); ports without one use the node's.
    upgrades: PortUpgrades,
}

/// An AuthorizationPolicy of the config, shared with it (not copied).
#[derive(Debug, Clone)]
struct PolicyRef(Arc<Resource>);

impl PolicyRef {
    /// `resource` if it is an AuthorizationPolicy.
    fn new(resource: Arc<Resource>) -> Option<Self> {
        matches!(resource.kind, Some(Kind::AuthorizationPolicy(_))).then_some(Self(resource))
    }
}

impl Borrow<AuthorizationPolicy> for PolicyRef {
    fn borrow(&self) -> &AuthorizationPolicy {
        match &self.0.kind {
            Some(Kind::AuthorizationPolicy(p)) => p,
            // `new` admits AuthorizationPolicies only.
            _ => unreachable!("a PolicyRef holds an AuthorizationPolicy"),
        }
    }
}

impl PodView {
    /// How `port` is served (TCP when no Service maps it).
    fn port_mode(&self, port: u16) -> PortMode {
        self.ports.get(&port).copied().unwrap_or_default()
    }

    /// The L4 decision for a connection under this view's policies.
    fn evaluate_l4(
        &self,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> authz::Evaluation {
        authz::evaluate(
            &self.policies,
            &Connection {
                peer,
                peer_ip: peer_addr.ip(),
                port: target.port(),
                request: None,
            },
        )
    }
}

/// The [`PodView`] of the config in force, computed on first use after
/// each new version.
#[derive(Debug)]
pub(crate) struct PodViews {
    uid: Arc<str>,
    config: watch::Receiver<Arc<NodeConfig>>,
    cached: Mutex<Option<(Arc<NodeConfig>, Arc<PodView>)>>,
}

impl PodViews {
    fn current(&self) -> Arc<PodView> {
        {
            let cached = self.cached.lock();
            if let Some((of, view)) = cached.as_ref()
                && Arc::ptr_eq(of, &self.config.borrow())
            {
                return view.clone();
            }
        }
        // A new version: the view is found with neither the pod's lock nor
        // the config's held (the config's publisher is not kept waiting).
        let config = self.config.borrow().clone();
        let view = Arc::new(pod_view(&config, &self.uid));
        let mut cached = self.cached.lock();
        // Kept only while its version is the latest: a caller that read an
        // older one does not overwrite a newer view.
        if Arc::ptr_eq(&config, &self.config.borrow()) {
            *cached = Some((config, view.clone()));
        }
        view
    }
}

/// How a port that Services map is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PortMode {
    /// Every Service mapping it declares it HTTP.
    http: bool,
    /// A policy of the pod with methods or paths applies to it.
    needs_requests: bool,
}

impl PortMode {
    /// Served as HTTP request by request: an HTTP port whose requests a
    /// policy looks at.
    fn serves_requests(self) -> bool {
        self.http && self.needs_requests
    }
}

/// A pod's ports that Services map.
type PodPorts = BTreeMap<u16, PortMode>;

/// The upgrade allow-lists a pod's ports got from their Services.
type PortUpgrades = BTreeMap<u16, Arc<[Box<str>]>>;

impl PodInbound {
    /// The handler for pod `uid` with addresses `ips` in `netns`.
    pub fn new(
        uid: impl Into<String>,
        ips: Vec<IpAddr>,
        netns: NetnsHandle,
        config: watch::Receiver<Arc<NodeConfig>>,
    ) -> Self {
        Self {
            view: Arc::new(PodViews {
                uid: Arc::from(uid.into()),
                config,
                cached: Mutex::new(None),
            }),
            ips,
            netns,
            stats: Arc::default(),
            idle_timeout: crate::relay::DEFAULT_IDLE_TIMEOUT,
            header_read_timeout: crate::http::DEFAULT_HEADER_READ_TIMEOUT,
            allowed_upgrades: crate::http::default_allowed_upgrades(),
            path_normalization: crate::authz::PathNormalization::default(),
        }
    }

    /// Sets how paths on its HTTP streams are normalized before they are
    /// authorized (by default Istio's `BASE`).
    pub fn with_path_normalization(mut self, how: crate::authz::PathNormalization) -> Self {
        self.path_normalization = how;
        self
    }

    /// Sets the protocols clients may upgrade its HTTP streams to (by
    /// default WebSocket only).
    pub fn with_allowed_upgrades(mut self, allowed: Arc<[Box<str>]>) -> Self {
        self.allowed_upgrades = allowed;
        self
    }

    /// Sets how long a request head on its HTTP streams may take once its
    /// first byte came (by default 10 s).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets the idle timeout of its HTTP streams (by default
    /// [`crate::relay::DEFAULT_IDLE_TIMEOUT`]; `http/serve.rs` says what it
    /// cuts).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Counts into `stats` (shared, e.g. node-wide) instead of its own.
    pub fn with_stats(mut self, stats: Arc<InboundStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<InboundStats> {
        self.stats.clone()
    }

    /// Whether `port` of this pod carries HTTP: every Service of the
    /// current config that has this pod as an endpoint and maps a port to
    /// `port` declares that port HTTP (`appProtocol`, else the port name; see
    /// [`crate::http::is_http`]). A port no Service maps, or one Services
    /// disagree on, is TCP: its bytes are relayed.
    #[cfg(test)]
    pub(crate) fn is_http_port(&self, port: u16) -> bool {
        self.port_mode(port).http
    }

    /// Whether streams to `port` are served as HTTP, request by request: an
    /// HTTP port that a policy with methods or paths applies to.
    #[cfg(test)]
    pub(crate) fn serves_requests(&self, port: u16) -> bool {
        self.port_mode(port).serves_requests()
    }

    #[cfg(test)]
    fn port_mode(&self, port: u16) -> PortMode {
        self.view.current().port_mode(port)
    }

    /// A plaintext connection captured on 15006 (from outside the mesh): no
    /// peer identity, so it is allowed unless a policy requires one (or
    /// otherwise denies it), then connected like an HBONE stream (relayed,
    /// or served as HTTP on an HTTP port).
    pub async fn admit_plaintext(
        &self,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Admitted<TcpStream>, Refusal> {
        self.admit_stream(None, peer_addr, target).await
    }

    /// Admits a stream: on an HTTP port with policies on methods or paths,
    /// or from a peer the policy denies, hands it to the HTTP server (each
    /// request is authorized and answered); otherwise decides at L4 and
    /// connects.
    async fn admit_stream(
        &self,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Admitted<TcpStream>, Refusal> {
        self.check_target(target)?;
        // One view for the whole decision: port mode and policy of the
        // same config version.
        let view = self.view.current();
        let mode = view.port_mode(target.port());
        if !mode.serves_requests() {
            let eval = view.evaluate_l4(peer, peer_addr, target);
            // A peer the policy denies still gets its `403`s (with the
            // policy's name) on an HTTP port, not a reset.
            if !(mode.http && matches!(eval.decision, Decision::Deny { .. })) {
                return self
                    .connect_decided(eval, peer, peer_addr, target)
                    .await
                    .map(Admitted::Relay);
            }
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pod = %self.view.uid, %target, "serving the stream as HTTP");
        Ok(Admitted::Serve(Box::new(HttpStream::new(
            http::PodAccess {
                uid: self.view.uid.clone(),
                netns: self.netns.clone(),
                view: self.view.clone(),
                stats: self.stats.clone(),
                idle_timeout: self.idle_timeout,
                header_read_timeout: self.header_read_timeout,
                allowed_upgrades: view
                    .upgrades
                    .get(&target.port())
                    .cloned()
                    .unwrap_or_else(|| self.allowed_upgrades.clone()),
                path_normalization: self.path_normalization,
            },
            peer.cloned(),
            peer_addr,
            target,
        ))))
    }

    fn check_target(&self, target: SocketAddr) -> Result<(), Refusal> {
        if hawser_api::cni::is_proxy_port(target.port()) {
            self.stats.self_targets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pod = %self.view.uid, %target, "refused: the target is the node proxy's own port");
            Err(Refusal::SelfTarget(target))
        } else if self.ips.contains(&target.ip()) {
            Ok(())
        } else {
            Err(Refusal::UnknownTarget(format!(
                "{target} is not an address of pod {}",
                self.view.uid
            )))
        }
    }

    /// Resolves when a configuration change makes the policy deny a
    /// connection it admitted (as ztunnel does, a policy applies to open
    /// connections too, not only to new ones), with the reason.
    pub async fn revoked(
        &self,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> String {
        let mut config = self.view.config.clone();
        config.mark_unchanged();
        loop {
            if config.changed().await.is_err() {
                // No more configuration: what was admitted stays admitted.
                return std::future::pending().await;
            }
            if let Decision::Deny { reason } = self
                .view
                .current()
                .evaluate_l4(peer, peer_addr, target)
                .decision
            {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                let who = peer.map_or_else(|| "plaintext".to_owned(), ToString::to_string);
                tracing::info!(pod = %self.view.uid, peer = %who, %peer_addr, %target, %reason, "open connection closed: the policy now denies it");
                return reason;
            }
        }
    }

    /// Decides at L4 and connects (bytes will be relayed); the caller has
    /// checked the target.
    async fn admit(
        &self,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        let eval = self.view.current().evaluate_l4(peer, peer_addr, target);
        self.connect_decided(eval, peer, peer_addr, target).await
    }

    /// Carries out the L4 decision `eval`: logs and counts it, and connects
    /// when it allows.
    async fn connect_decided(
        &self,
        eval: authz::Evaluation,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        // Only formatted when something is logged.
        let who = || peer.map_or_else(|| "plaintext".to_owned(), ToString::to_string);
        for audit in &eval.audit_denials {
            tracing::info!(pod = %self.view.uid, peer = %who(), %target, reason = %audit, "audit: would deny");
        }
        if let Decision::Deny { reason } = eval.decision {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pod = %self.view.uid, peer = %who(), %peer_addr, %target, %reason, "connection denied");
            return Err(Refusal::Denied(reason));
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        self.netns
            .connect_tcp(target, PROXY_MARK)
            .await
            .map_err(|e| Refusal::Unreachable(format!("{target}: {e}")))
    }
}

#[async_trait]
impl HboneHandler for PodInbound {
    type Upstream = TcpStream;

    async fn connect(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        self.check_target(target)?;
        self.admit(Some(peer), peer_addr, target).await
    }

    async fn admit(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Admitted<TcpStream>, Refusal> {
        self.admit_stream(Some(peer), peer_addr, target).await
    }

    async fn revoked(&self, peer: &SpiffeId, peer_addr: SocketAddr, target: SocketAddr) -> String {
        PodInbound::revoked(self, Some(peer), peer_addr, target).await
    }
}

/// What of `config` concerns workload `uid`.
fn pod_view(config: &NodeConfig, uid: &str) -> PodView {
    let policies = policies(config, uid);
    let (ports, upgrades) = pod_ports(config, uid, &policies);
    PodView {
        ports,
        policies,
        upgrades,
    }
}

/// The policies that apply to workload `uid` in `config`, shared with it.
fn policies(config: &NodeConfig, uid: &str) -> Vec<PolicyRef> {
    let Some(Kind::Workload(w)) = config
        .get(ResourceType::Workload, uid)
        .and_then(|r| r.kind.as_ref())
    else {
        return Vec::new();
    };
    w.authorization_policies
        .iter()
        .filter_map(|name| {
            PolicyRef::new(config.get_shared(ResourceType::AuthorizationPolicy, name)?)
        })
        .collect()
}

/// Every port of workload `uid` that a Service of `config` maps, with
/// whether all of them declare it HTTP and whether the pod's `policies`
/// look at its requests; and the upgrade allow-list of the ports whose
/// Services set one (what every such Service allows).
fn pod_ports(config: &NodeConfig, uid: &str, policies: &[PolicyRef]) -> (PodPorts, PortUpgrades) {
    let mut http_ports = BTreeMap::new();
    let mut upgrades: BTreeMap<u16, Vec<Box<str>>> = BTreeMap::new();
    for svc in config.services() {
        let allowed = crate::outbound::allowed_upgrades(svc);
        for ep in svc.endpoints.iter().filter(|e| e.workload_uid == uid) {
            for (svc_port, target) in &ep.ports {
                let (Some(sp), Ok(target)) = (
                    svc.ports.iter().find(|p| p.port == *svc_port),
                    u16::try_from(*target),
                ) else {
                    continue;
                };
                let http = crate::http::is_http(&sp.app_protocol, &sp.name);
                *http_ports.entry(target).or_insert(http) &= http;
                if let Some(allowed) = &allowed {
                    upgrades
                        .entry(target)
                        .and_modify(|list| list.retain(|p| allowed.contains(p)))
                        .or_insert_with(|| allowed.to_vec());
                }
            }
        }
    }
    let ports = http_ports
        .into_iter()
        .map(|(port, http)| {
            let needs_requests = authz::needs_requests(policies, port);
            (
                port,
                PortMode {
                    http,
                    needs_requests,
                },
            )
        })
        .collect();
    let upgrades = upgrades
        .into_iter()
        .map(|(port, list)| (port, Arc::from(list)))
        .collect();
    (ports, upgrades)
}
