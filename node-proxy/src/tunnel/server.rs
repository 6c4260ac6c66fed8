//! The HBONE server (port 15008 in each pod): terminates mTLS with the pod's
//! certificate, then serves HTTP/2 CONNECT streams, asking an
//! [`HboneHandler`] for each whether to admit it and where it goes: bytes
//! relayed to an upstream connection, or the stream handed to a
//! [`ServeStream`] that answers on it itself (the inbound HTTP server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hawser_api::SpiffeId;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::H2Stream;

/// Why a CONNECT was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Authorization denied the stream.
    #[error("denied: {0}")]
    Denied(String),
    /// The target is not a workload of this pod.
    #[error("no such destination: {0}")]
    UnknownTarget(String),
    /// Connecting to the target failed.
    #[error("connecting to the destination failed: {0}")]
    Unreachable(String),
    /// The target is a port the node proxy itself serves in the pod: it
    /// would reach the proxy again (a loop), never an app.
    #[error("{0} is the node proxy's own port, not an app's")]
    SelfTarget(std::net::SocketAddr),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::UnknownTarget(_) | Self::SelfTarget(_) => StatusCode::BAD_REQUEST,
            Self::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Where an admitted stream goes.
pub enum Admitted<U> {
    /// Bytes are relayed between the stream and this connection.
    Relay(U),
    /// The stream is handed over, once the CONNECT is answered `200`.
    Serve(Box<dyn ServeStream>),
}

impl<U> std::fmt::Debug for Admitted<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Relay(_) => "Admitted::Relay",
            Self::Serve(_) => "Admitted::Serve",
        })
    }
}

/// Something that answers on an admitted stream itself.
#[async_trait]
pub trait ServeStream: Send + 'static {
    /// Serves `stream` until it closes (or the future is dropped).
    async fn serve(self: Box<Self>, stream: Box<dyn super::Io>);
}

/// What the server does with each admitted stream.
#[async_trait]
pub trait HboneHandler: Send + Sync + 'static {
    /// The upstream connection type.
    type Upstream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Decides on a CONNECT to `target` from the verified `peer`, and opens
    /// the upstream connection if admitted.
    async fn connect(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Self::Upstream, Refusal>;

    /// Decides on a CONNECT like [`Self::connect`], and may also hand the
    /// stream to a [`ServeStream`] instead of relaying it. The server calls
    /// this; by default it relays to what `connect` opens.
    async fn admit(
        &self,
        peer: &SpiffeId,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Admitted<Self::Upstream>, Refusal> {
        self.connect(peer, peer_addr, target)
            .await
            .map(Admitted::Relay)
    }

    /// Resolves (with a reason) when a relayed stream admitted earlier must
    /// be closed, e.g. because a new policy denies it. By default never.
    async fn revoked(&self, peer: &SpiffeId, peer_addr: SocketAddr, target: SocketAddr) -> String {
        let _ = (peer, peer_addr, target);
        std::future::pending().await
    }
}

/// Tuning of the HBONE server.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Streams one connection may carry at once.
    pub max_concurrent_streams: u32,
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub connection_window: u32,
    /// How long the HTTP/2 handshake may take.
    pub handshake_timeout: Duration,
    /// A stream with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that carries no stream for this long (from the
    /// handshake on, or since its last stream ended) is closed gracefully
    /// (GOAWAY); a client's pool opens a new one when it needs one.
    pub no_stream_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1000,
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: crate::relay::DEFAULT_IDLE_TIMEOUT,
            no_stream_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves one established mTLS connection from `peer` until it closes.
pub async fn serve_connection<IO, H>(
    io: IO,
    peer: SpiffeId,
    peer_addr: SocketAddr,
    handler: Arc<H>,
    config: ServerConfig,
) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: HboneHandler,
{
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(conn) => conn?,
        Err(_) => {
            tracing::info!(%peer, %peer_addr, "HTTP/2 handshake timed out");
            return Ok(());
        }
    };
    let peer = Arc::new(peer);
    let streams = Arc::new(StreamCount::default());
    let mut closing = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = streams.idle_for(config.no_stream_timeout), if !closing => {
                tracing::debug!(%peer, %peer_addr, "closing an HBONE connection that carries no stream");
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
        };
        let Some(next) = next else { break };
        let (request, mut respond) = next?;
        let (handler, peer) = (handler.clone(), peer.clone());
        let open = streams.open();
        tokio::spawn(async move {
            let _open = open;
            let reply = |status: StatusCode| {
                Response::builder()
                    .status(status)
                    .body(())
                    .unwrap_or_else(|_| Response::new(()))
            };
            if request.method() != Method::CONNECT {
                let _ = respond.send_response(reply(StatusCode::METHOD_NOT_ALLOWED), true);
                return;
            }
            let target = request
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
            let Some(target) = target else {
                tracing::info!(%peer, uri = %request.uri(), "CONNECT without an ip:port target");
                let _ = respond.send_response(reply(StatusCode::BAD_REQUEST), true);
                return;
            };
            let admitted = match handler.admit(&peer, peer_addr, target).await {
                Ok(u) => u,
                Err(refusal) => {
                    tracing::info!(%peer, %target, reason = %refusal, "HBONE stream refused");
                    let _ = respond.send_response(reply(refusal.status()), true);
                    return;
                }
            };
            let send = match respond.send_response(reply(StatusCode::OK), false) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, %target, error = %e, "client went away before the tunnel opened");
                    return;
                }
            };
            let mut tunnel = H2Stream::new(send, request.into_body());
            let mut upstream = match admitted {
                Admitted::Relay(upstream) => upstream,
                Admitted::Serve(service) => return service.serve(Box::new(tunnel)).await,
            };
            let relayed = tokio::select! {
                r = crate::relay::relay(&mut tunnel, &mut upstream, config.idle_timeout) => r,
                reason = handler.revoked(&peer, peer_addr, target) => {
                    tracing::info!(%peer, %target, %reason, "HBONE stream closed by policy");
                    return;
                }
            };
            match relayed {
                Ok(crate::relay::Moved {
                    a_to_b: from_client,
                    b_to_a: to_client,
                }) => {
                    tracing::debug!(%peer, %target, from_client, to_client, "HBONE stream closed")
                }
                Err(e) => {
                    tracing::debug!(%peer, %target, error = %e, "HBONE stream ended with an error")
                }
            }
        });
    }
    Ok(())
}

/// The streams of one HBONE connection in flight, and a way to wait until
/// there has been none for a while.
#[derive(Debug, Default)]
struct StreamCount {
    open: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl StreamCount {
    /// One more stream, until the guard is dropped.
    fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// Resolves once no stream has been open for `timeout` straight.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                () = changed => {}
            }
        }
    }
}

/// A stream's place in [`StreamCount`].
struct OpenStream(Arc<StreamCount>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}
