//! One enrolled pod's listeners and connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use hawser_api::SpiffeId;
use hawser_api::cni::PROXY_MARK;
use hawser_api::tls::{ClientAuth, SpiffeClientVerifier, Svid, peer_identity, server_config};
use parking_lot::Mutex;
use rustls::sign::SingleCertAndKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::limits::ConnectionLimits;
use super::{Shared, Stats, reset};
use crate::http::{ClientContext, UpstreamConnector, is_http};
use crate::inbound::PodInbound;
use crate::inpod::{
    DrainWatch, NetnsHandle, PodContext, PodSockets, dialed_by_proxy, original_dst,
};
use crate::outbound::Route;
use crate::relay::{Moved, relay};
use crate::tunnel::server::ServerConfig;
use crate::tunnel::{
    Admitted, ConnectionRecord, Dialer, Direction, HboneHandler, HbonePool, Io, Negotiated,
    PoolKey, Refusal, TunnelError, serve_connection,
};

/// Opens tunnel connections from inside the pod, with the bypass mark.
struct PodDialer {
    netns: NetnsHandle,
    timeout: std::time::Duration,
}

#[async_trait]
impl Dialer for PodDialer {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let tcp = connect(&self.netns, addr, self.timeout).await?;
        keepalive(&tcp);
        Ok(tcp)
    }
}

/// TCP keepalive on HBONE connections: a peer whose pod (and network
/// namespace) vanished cannot send a FIN, so probes find it gone: after
/// 30 s idle, every 10 s, 3 unanswered probes, about a minute.
fn keepalive(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = || -> nix::Result<()> {
        setsockopt(tcp, sockopt::KeepAlive, &true)?;
        setsockopt(tcp, sockopt::TcpKeepIdle, &30)?;
        setsockopt(tcp, sockopt::TcpKeepInterval, &10)?;
        setsockopt(tcp, sockopt::TcpKeepCount, &3)
    };
    if let Err(e) = set() {
        tracing::debug!(error = %e, "could not enable TCP keepalive");
    }
}

async fn connect(
    netns: &NetnsHandle,
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, netns.connect_tcp(addr, PROXY_MARK)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out after {timeout:?}"),
        )),
    }
}

/// The TLS server config of the pod's 15008, rebuilt when its certificate
/// is renewed.
type TlsCache = Mutex<Option<(Svid, Arc<rustls::ServerConfig>)>>;

/// Everything serving one pod.
pub(super) struct PodRuntime {
    shared: Arc<Shared>,
    pod: Arc<PodContext>,
    /// `namespace/name`, for logs and the connection log.
    name: String,
    pool: HbonePool,
    inbound: Arc<PodInbound>,
    tls: TlsCache,
    /// Opens the L7 engine's upstream connections for this pod (one per pod,
    /// so they are pooled across the pod's client connections).
    connector: Arc<dyn UpstreamConnector>,
}

impl PodRuntime {
    /// Starts the pod's three accept loops.
    pub(super) fn start(shared: Arc<Shared>, pod: Arc<PodContext>, sockets: PodSockets) {
        let name = format!("{}/{}", pod.workload.namespace, pod.workload.pod_name);
        let dialer = Arc::new(PodDialer {
            netns: pod.netns.clone(),
            timeout: shared.settings.connect_timeout,
        });
        let pool = HbonePool::new(
            shared.bundle.clone(),
            shared.trust_domain.clone(),
            dialer,
            shared.settings.hbone_client,
        )
        .with_log(shared.connections.clone(), name.clone());
        let inbound = Arc::new(
            PodInbound::new(
                pod.workload.pod_uid.clone(),
                pod.ips.clone(),
                pod.netns.clone(),
                shared.config.clone(),
            )
            .with_stats(shared.stats.inbound.clone())
            .with_idle_timeout(shared.settings.idle_timeout)
            .with_header_read_timeout(shared.settings.header_read_timeout)
            .with_allowed_upgrades(shared.settings.allowed_upgrades.clone())
            .with_path_normalization(shared.settings.path_normalization),
        );
        let this = Arc::new_cyclic(|weak| Self {
            shared,
            name,
            pool,
            inbound,
            tls: Mutex::new(None),
            connector: Arc::new(PodConnector(weak.clone())),
            pod,
        });
        tracing::info!(pod = %this.name, ips = ?this.pod.ips, "serving pod");
        let PodSockets {
            outbound,
            inbound_plain,
            hbone,
        } = sockets;
        let drain = this.pod.drain.clone();
        accept_loop(
            outbound,
            drain.clone(),
            this.shared.limits.clone(),
            "outbound",
            {
                let this = this.clone();
                move |s, a| this.clone().outbound(s, a)
            },
        );
        accept_loop(
            inbound_plain,
            drain.clone(),
            this.shared.limits.clone(),
            "inbound plaintext",
            {
                let this = this.clone();
                move |s, a| this.clone().plaintext(s, a)
            },
        );
        accept_loop(hbone, drain.clone(), this.shared.limits.clone(), "hbone", {
            let this = this.clone();
            move |s, a| this.clone().hbone(s, a)
        });
        // Once the pod has drained, its certificate is no longer renewed.
        tokio::spawn(async move {
            drain.forced().await;
            this.shared.certs.forget(&this.pod.workload);
            this.shared.http.forget_client(&this.connector);
            tracing::info!(pod = %this.name, "pod drained");
        });
    }

    /// A connection captured on 15001.
    async fn outbound(self: Arc<Self>, client: TcpStream, client_addr: SocketAddr) {
        if self.cut_loop(&client, client_addr) {
            return reset(client);
        }
        let original = match original_dst(&client) {
            Ok(addr) => addr,
            Err(e) => {
                tracing::info!(pod = %self.name, %client_addr, error = %e, "no original destination; resetting");
                Stats::bump(&self.shared.stats.outbound_failed);
                return reset(client);
            }
        };
        if self.is_own_port(original) {
            tracing::info!(pod = %self.name, %client_addr, %original, "outbound connection to the node proxy's own port; resetting");
            Stats::bump(&self.shared.stats.outbound_self_targets);
            return reset(client);
        }
        let destinations = self.shared.destinations.borrow().clone();
        if let Some(sp) = destinations.service(original)
            && is_http(&sp.app_protocol, &sp.name)
        {
            Stats::bump(&self.shared.stats.outbound_http);
            let context = ClientContext {
                namespace: self.pod.workload.namespace.clone(),
                destination: original,
                connector: self.connector.clone(),
                allowed_upgrades: sp.allowed_upgrades.clone(),
            };
            drop(destinations);
            return self.shared.http.serve(client, context).await;
        }
        let (route, _in_flight) = match destinations.resolve(original, &self.shared.balancer) {
            Ok(resolved) => resolved,
            Err(e) => {
                tracing::info!(pod = %self.name, %original, reason = %e, "outbound connection reset");
                Stats::bump(&self.shared.stats.outbound_no_endpoints);
                return reset(client);
            }
        };
        match route {
            Route::Plain(addr) => {
                let upstream = match connect(
                    &self.pod.netns,
                    addr,
                    self.shared.settings.connect_timeout,
                )
                .await
                {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::info!(pod = %self.name, %original, upstream = %addr, error = %e, "outbound connection reset");
                        Stats::bump(&self.shared.stats.outbound_failed);
                        return reset(client);
                    }
                };
                Stats::bump(&self.shared.stats.outbound_plain);
                self.relay_outbound(client, upstream, original).await;
            }
            Route::Hbone {
                target,
                proxy,
                identity,
            } => {
                let tunnel = match self.tunnel(target, proxy, identity).await {
                    Ok(t) => t,
                    Err(e) => {
                        let denied = matches!(&e, OpenError::Tunnel(t) if t.is_denied());
                        tracing::info!(pod = %self.name, %original, %target, error = %e, "outbound connection reset");
                        Stats::bump(if denied {
                            &self.shared.stats.outbound_denied
                        } else {
                            &self.shared.stats.outbound_failed
                        });
                        return reset(client);
                    }
                };
                Stats::bump(&self.shared.stats.outbound_hbone);
                self.relay_outbound(client, tunnel, original).await;
            }
        }
    }

    async fn tunnel(
        &self,
        target: SocketAddr,
        proxy: SocketAddr,
        identity: SpiffeId,
    ) -> Result<crate::tunnel::H2Stream, OpenError> {
        let svid = self.certificate().await?;
        let key = PoolKey {
            source: svid.id().clone(),
            destination: proxy,
            destination_identity: identity,
        };
        Ok(self.pool.connect(&key, &svid, target).await?)
    }

    /// The pod's certificate, bounded by the connect timeout (the first one
    /// of a pod waits for the CA).
    async fn certificate(&self) -> Result<Svid, OpenError> {
        let timeout = self.shared.settings.connect_timeout;
        match tokio::time::timeout(timeout, self.shared.certs.fetch(&self.pod.workload)).await {
            Ok(Ok(svid)) => Ok(svid),
            Ok(Err(e)) => Err(OpenError::Certificate(e.to_string())),
            Err(_) => Err(OpenError::Certificate(format!(
                "no certificate within {timeout:?}"
            ))),
        }
    }

    async fn relay_outbound<U>(&self, mut client: TcpStream, mut upstream: U, original: SocketAddr)
    where
        U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let result = relay(
            &mut client,
            &mut upstream,
            self.shared.settings.idle_timeout,
        )
        .await;
        self.account(&result);
        match result {
            Ok(moved) => {
                tracing::debug!(pod = %self.name, %original, sent = moved.a_to_b, received = moved.b_to_a, "outbound connection closed")
            }
            Err(e) => {
                tracing::debug!(pod = %self.name, %original, error = %e, "outbound connection ended")
            }
        }
    }

    fn account(&self, result: &Result<Moved, crate::relay::RelayError>) {
        if let Ok(moved) = result {
            let stats = &self.shared.stats;
            stats.bytes_out.fetch_add(moved.a_to_b, Ordering::Relaxed);
            stats.bytes_in.fetch_add(moved.b_to_a, Ordering::Relaxed);
        }
    }

    /// Whether `addr` is a port the node proxy serves in this pod, on the
    /// pod's address or loopback: a connection there would reach the proxy
    /// itself, never an app.
    fn is_own_port(&self, addr: SocketAddr) -> bool {
        hawser_api::cni::is_proxy_port(addr.port())
            && (addr.ip().is_loopback()
                || addr.ip().is_unspecified()
                || self.pod.ips.contains(&addr.ip()))
    }

    /// The hop marker: a connection on 15001 or 15006 that the proxy itself
    /// opened in this pod is a loop (counted and logged; the caller resets it).
    fn cut_loop(&self, client: &TcpStream, from: SocketAddr) -> bool {
        if !dialed_by_proxy(client) {
            return false;
        }
        let to = client.local_addr().ok();
        tracing::warn!(pod = %self.name, %from, to = ?to, "connection opened by the proxy itself reached its own listener: loop cut");
        Stats::bump(&self.shared.stats.loops_cut);
        true
    }

    /// A connection captured on 15006: plaintext from outside the mesh.
    async fn plaintext(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        if self.cut_loop(&client, peer) {
            return reset(client);
        }
        let target = match original_dst(&client) {
            Ok(addr) => addr,
            Err(e) => {
                tracing::info!(pod = %self.name, %peer, error = %e, "no original destination; resetting");
                return reset(client);
            }
        };
        match self.inbound.admit_plaintext(peer, target).await {
            // An HTTP port: requests are authorized and forwarded one by one.
            Ok(Admitted::Serve(service)) => service.serve(Box::new(client)).await,
            Ok(Admitted::Relay(mut upstream)) => {
                let mut client = client;
                let idle = self.shared.settings.idle_timeout;
                tokio::select! {
                    result = relay(&mut client, &mut upstream, idle) => {
                        if let Err(e) = result {
                            tracing::debug!(pod = %self.name, %peer, %target, error = %e, "plaintext connection ended");
                        }
                    }
                    // Logged and counted by the inbound handler.
                    _ = self.inbound.revoked(None, peer, target) => reset(client),
                }
            }
            // Denials are logged and counted by the inbound handler.
            Err(refusal) => {
                tracing::debug!(pod = %self.name, %peer, %target, reason = %refusal, "plaintext connection reset");
                reset(client)
            }
        }
    }

    /// A connection on 15008: mTLS, then HTTP/2 CONNECT streams.
    async fn hbone(self: Arc<Self>, tcp: TcpStream, peer_addr: SocketAddr) {
        let local = tcp.local_addr().unwrap_or(peer_addr);
        keepalive(&tcp);
        let svid = match self.certificate().await {
            Ok(svid) => svid,
            Err(e) => {
                tracing::warn!(pod = %self.name, %peer_addr, error = %e, "HBONE connection refused: no certificate");
                Stats::bump(&self.shared.stats.hbone_handshake_failed);
                return reset(tcp);
            }
        };
        let acceptor = TlsAcceptor::from(self.server_config(&svid));
        let timeout = self.shared.settings.tls_handshake_timeout;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(pod = %self.name, %peer_addr, error = %e, "HBONE handshake failed");
                Stats::bump(&self.shared.stats.hbone_handshake_failed);
                return;
            }
            Err(_) => {
                tracing::info!(pod = %self.name, %peer_addr, "HBONE handshake timed out");
                Stats::bump(&self.shared.stats.hbone_handshake_failed);
                return;
            }
        };
        let conn = tls.get_ref().1;
        // The verifier required a client certificate and checked it; a
        // missing identity here would be a verifier bug, refused all the same.
        let Some(peer) = peer_identity(conn) else {
            tracing::warn!(pod = %self.name, %peer_addr, "HBONE peer has no SPIFFE ID");
            return;
        };
        let record = self.shared.connections.record(ConnectionRecord::new(
            Direction::Inbound,
            self.name.clone(),
            local,
            peer_addr,
            (svid.id(), &peer),
            Negotiated::of(conn),
        ));
        // Marked closed however this ends (also when the pod's drain
        // deadline drops this future).
        let _closing = CloseOnDrop(record.clone());
        Stats::bump(&self.shared.stats.hbone_accepted);
        tracing::info!(pod = %self.name, peer = %peer, %peer_addr, tls = %record.tls.tls_version, cipher = %record.tls.cipher, "HBONE connection from a verified peer");
        let handler = Arc::new(Counted {
            inner: self.inbound.clone(),
            record: record.clone(),
        });
        if let Err(e) = serve_connection(
            tls,
            peer.clone(),
            peer_addr,
            handler,
            // One idle timeout for every relay the data plane runs.
            ServerConfig {
                idle_timeout: self.shared.settings.idle_timeout,
                ..self.shared.settings.hbone_server
            },
        )
        .await
        {
            tracing::debug!(pod = %self.name, %peer, error = %e, "HBONE connection ended with an error");
        }
    }

    /// The 15008 TLS config for `svid`, reused until the certificate changes.
    fn server_config(&self, svid: &Svid) -> Arc<rustls::ServerConfig> {
        let mut cached = self.tls.lock();
        if let Some((current, config)) = cached.as_ref()
            && current.chain().first() == svid.chain().first()
        {
            return config.clone();
        }
        // Pods are reached by pods: a node proxy's or the control plane's
        // identity is not a pod peer (policies are written for workloads).
        let verifier = Arc::new(
            SpiffeClientVerifier::new(
                self.shared.bundle.clone(),
                self.shared.trust_domain.clone(),
                None,
                ClientAuth::Required,
            )
            .workloads_only(),
        );
        let cert = Arc::new(SingleCertAndKey::from(svid.certified_key()));
        let config = Arc::new(server_config(cert, verifier, &[b"h2"]));
        *cached = Some((svid.clone(), config.clone()));
        config
    }
}

/// The L7 engine's upstream connections for one pod: HBONE to enrolled
/// endpoints, plain TCP from the pod otherwise (the same choice as L4).
struct PodConnector(std::sync::Weak<PodRuntime>);

#[async_trait]
impl UpstreamConnector for PodConnector {
    async fn connect(&self, endpoint: SocketAddr) -> io::Result<Box<dyn Io>> {
        let Some(pod) = self.0.upgrade() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the pod is no longer served",
            ));
        };
        let route = pod
            .shared
            .destinations
            .borrow()
            .route_to(endpoint)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match route {
            Route::Plain(addr) => {
                tracing::debug!(pod = %pod.name, upstream = %addr, "HTTP upstream outside the mesh: plain TCP");
                Ok(Box::new(
                    connect(&pod.pod.netns, addr, pod.shared.settings.connect_timeout).await?,
                ))
            }
            Route::Hbone {
                target,
                proxy,
                identity,
            } => match pod.tunnel(target, proxy, identity).await {
                Ok(stream) => Ok(Box::new(stream)),
                Err(OpenError::Tunnel(t)) if t.is_denied() => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{target}: denied by the destination's authorization policy"),
                )),
                Err(e) => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                )),
            },
        }
    }
}

/// Why an outbound tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("the pod has no certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

/// Marks a connection record closed when dropped.
struct CloseOnDrop(Arc<ConnectionRecord>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The pod's inbound handler, counting streams on one connection's record.
struct Counted {
    inner: Arc<PodInbound>,
    record: Arc<ConnectionRecord>,
}

#[async_trait]
impl HboneHandler for Counted {
    type Upstream = TcpStream;

    async fn connect(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        self.record.stream_opened();
        self.inner.connect(peer, peer_addr, target).await
    }

    async fn admit(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Admitted<TcpStream>, Refusal> {
        self.record.stream_opened();
        self.inner.admit(peer, peer_addr, target).await
    }

    async fn revoked(&self, peer: &SpiffeId, peer_addr: SocketAddr, target: SocketAddr) -> String {
        self.inner.revoked(Some(peer), peer_addr, target).await
    }
}

/// Accepts on `listener` until the pod drains; each connection runs as its
/// own task, closed at the drain's forced deadline if still open. A
/// connection over the proxy's caps ([`ConnectionLimits`]) is reset at once.
fn accept_loop<F, Fut>(
    listener: TcpListener,
    drain: DrainWatch,
    limits: Arc<ConnectionLimits>,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let permit = match limits.admit(addr.ip()) {
                        Ok(permit) => permit,
                        Err(exceeded) => {
                            tracing::debug!(listener = what, %addr, ?exceeded, "connection over the cap; reset");
                            reset(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let connection = handle(stream, addr);
                    let drain = drain.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = connection => {}
                            () = drain.forced() => {}
                        }
                        drop((drain, permit));
                    });
                }
                // The in-pod layer shuts the socket down when the pod goes.
                Err(_) if drain.is_draining() => break,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = what, "stopped accepting");
    });
}
