//! The HBONE client: opens HTTP/2 CONNECT streams to `<pod-ip>:15008` over
//! mTLS, presenting the source workload's certificate and requiring the
//! destination's SPIFFE ID. Connections are pooled per (source identity,
//! destination address, destination identity), so many streams share one
//! TLS connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use h2::client::SendRequest;
use hawser_api::tls::{PeerVerifyError, SpiffeServerVerifier, Svid, TrustBundle, client_config};
use hawser_api::{SpiffeId, TrustDomain};
use http::{Method, Request, StatusCode, Version};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::H2Stream;
use super::log::{ConnectionLog, ConnectionRecord, Direction, Negotiated};

/// Any byte stream a dialer can return.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens the TCP connection under a tunnel (in the source pod's netns, with
/// the bypass mark, in production).
#[async_trait]
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `addr`.
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// Which pooled connection a stream may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity presented.
    pub source: SpiffeId,
    /// `<pod-ip>:15008` of the destination.
    pub destination: SocketAddr,
    /// The identity the destination must prove.
    pub destination_identity: SpiffeId,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TCP to the destination failed.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// The destination.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// The TLS handshake failed (including peer verification).
    #[error("mTLS with {addr} failed: {source}")]
    Tls {
        /// The destination.
        addr: SocketAddr,
        /// The handshake error.
        source: io::Error,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    Http2 {
        /// The destination.
        addr: SocketAddr,
        /// The h2 error.
        source: h2::Error,
    },
    /// The destination proxy refused the stream.
    #[error("{addr} refused the tunnel to {target}: {status}")]
    Refused {
        /// The destination proxy.
        addr: SocketAddr,
        /// The CONNECT target.
        target: SocketAddr,
        /// Its answer (403 when authorization denied it).
        status: StatusCode,
    },
}

impl TunnelError {
    /// Whether the destination's authorization policy refused the stream.
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == StatusCode::FORBIDDEN)
    }

    /// The peer-verification failure behind a TLS error, if that was the cause.
    pub fn verify_error(&self) -> Option<&PeerVerifyError> {
        match self {
            Self::Tls { source, .. } => source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .and_then(PeerVerifyError::from_rustls),
            _ => None,
        }
    }
}

/// A pooled connection: its request handle and its record in the log.
type Pooled = (SendRequest<Bytes>, Option<Arc<ConnectionRecord>>);
type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// Tuning of the client.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub connection_window: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
        }
    }
}

/// Pooled HBONE connections.
pub struct HbonePool {
    bundle: Arc<TrustBundle>,
    trust_domain: TrustDomain,
    dialer: Arc<dyn Dialer>,
    config: ClientConfig,
    slots: Mutex<HashMap<PoolKey, Slot>>,
    log: Option<(Arc<ConnectionLog>, String)>,
}

impl HbonePool {
    /// A pool verifying destinations against `bundle`.
    pub fn new(
        bundle: Arc<TrustBundle>,
        trust_domain: TrustDomain,
        dialer: Arc<dyn Dialer>,
        config: ClientConfig,
    ) -> Self {
        Self {
            bundle,
            trust_domain,
            dialer,
            config,
            slots: Mutex::new(HashMap::new()),
            log: None,
        }
    }

    /// Records every connection this pool opens in `log`, on behalf of
    /// `pod` (`namespace/name`).
    pub fn with_log(mut self, log: Arc<ConnectionLog>, pod: String) -> Self {
        self.log = Some((log, pod));
        self
    }

    /// Number of pooled connections (live or not yet found dead).
    pub fn connections(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Opens a stream to `target` through the destination proxy in `key`,
    /// presenting `source` (whose identity must be `key.source`).
    pub async fn connect(
        &self,
        key: &PoolKey,
        source: &Svid,
        target: SocketAddr,
    ) -> Result<H2Stream, TunnelError> {
        // A pooled connection may have died since its last use: then one retry
        // on a fresh connection.
        match self.try_connect(key, source, target, false).await {
            Err(TunnelError::Http2 { .. }) => self.try_connect(key, source, target, true).await,
            other => other,
        }
    }

    async fn try_connect(
        &self,
        key: &PoolKey,
        source: &Svid,
        target: SocketAddr,
        fresh: bool,
    ) -> Result<H2Stream, TunnelError> {
        let addr = key.destination;
        let h2_err = |source| TunnelError::Http2 { addr, source };
        let (sender, record) = self.sender(key, source, fresh).await?;
        let mut sender = sender.ready().await.map_err(h2_err)?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.version_mut() = Version::HTTP_2;
        // A SocketAddr always forms a valid authority-form URI.
        *request.uri_mut() = http::Uri::try_from(target.to_string())
            .unwrap_or_else(|e| unreachable!("{target} is a valid authority: {e}"));
        let (response, send) = sender.send_request(request, false).map_err(h2_err)?;
        let response = response.await.map_err(h2_err)?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr,
                target,
                status: response.status(),
            });
        }
        if let Some(record) = record {
            record.stream_opened();
        }
        Ok(H2Stream::new(send, response.into_body()))
    }

    /// The pooled sender for `key`, connecting if there is none (or `fresh`).
    async fn sender(
        &self,
        key: &PoolKey,
        source: &Svid,
        fresh: bool,
    ) -> Result<Pooled, TunnelError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // The key is only copied the first time (this runs per stream).
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => slots.entry(key.clone()).or_default().clone(),
            }
        };
        // Concurrent first uses of a key wait for one handshake, not one each.
        let mut guard = slot.lock().await;
        if !fresh && let Some(pooled) = guard.as_ref() {
            return Ok(pooled.clone());
        }
        let pooled = self.handshake(key, source).await?;
        *guard = Some(pooled.clone());
        Ok(pooled)
    }

    async fn handshake(&self, key: &PoolKey, source: &Svid) -> Result<Pooled, TunnelError> {
        let addr = key.destination;
        let tcp = self
            .dialer
            .dial(addr)
            .await
            .map_err(|source| TunnelError::Connect { addr, source })?;
        let local = tcp.local_addr().ok();
        let verifier = Arc::new(SpiffeServerVerifier::new(
            self.bundle.clone(),
            self.trust_domain.clone(),
            Some(key.destination_identity.clone()),
        ));
        let cert = Arc::new(SingleCertAndKey::from(source.certified_key()));
        let tls = TlsConnector::from(Arc::new(client_config(Some(cert), verifier, &[b"h2"])));
        // The name only fills SNI; the verifier checks the SPIFFE ID.
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|source| TunnelError::Tls { addr, source })?;
        let record = match (&self.log, local) {
            (Some((log, pod)), Some(local)) => Some(log.record(ConnectionRecord::new(
                Direction::Outbound,
                pod.clone(),
                local,
                addr,
                (&key.source, &key.destination_identity),
                Negotiated::of(stream.get_ref().1),
            ))),
            _ => None,
        };
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(self.config.stream_window)
            .initial_connection_window_size(self.config.connection_window)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|source| TunnelError::Http2 { addr, source })?;
        let peer = key.destination_identity.clone();
        let closing = record.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, %peer, error = %e, "HBONE connection closed");
            }
            if let Some(record) = closing {
                record.close();
            }
        });
        tracing::debug!(%addr, source = %key.source, destination = %key.destination_identity, "HBONE connection established");
        Ok((sender, record))
    }
}
