//! Upstream HTTP connections, pooled per (connector, endpoint, protocol).
//!
//! HTTP/2 endpoints share one multiplexed connection, reopened when it
//! closes. HTTP/1.1 connections carry one request at a time: a connection
//! goes back to the idle list once its response body has been read to the
//! end (or dropped) and the connection is ready again. A request without a
//! body is exchanged by the caller's task itself ([`super::h1`]); one with
//! a body goes through hyper's client connection, which takes over an idle
//! connection of the first kind when it needs one. Connections are
//! keyed by the [`UpstreamConnector`] that opened them, so a connection
//! opened on behalf of one client pod never carries another pod's
//! requests. Upgrades (WebSocket) use a dedicated connection. Idle
//! connections past the idle timeout are closed by a sweep, also when no
//! request comes for their endpoint any more.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::UpstreamConnector;
use super::body::{BoxError, HttpBody, boxed};
use super::h1;
use super::routes::UpstreamProtocol;
use crate::tunnel::client::Io;

/// An HTTP/1.1 connection the caller's task drives.
type LeanConnection = h1::Connection<Box<dyn Io>>;

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection could not be opened (connect or handshake).
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The connection failed while the request was in flight.
    #[error("request to {addr} failed: {source}")]
    Request {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The connection failed, or the upstream's answer was not HTTP/1.1,
    /// during an exchange of a request without a body.
    #[error("request to {addr} failed: {source}")]
    Exchange {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: h1::Error,
    },
}

impl UpstreamError {
    /// Whether the failure is a connection error worth a retry (not a
    /// failure of the client's own request body).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Request { source, .. } => !source.is_user(),
            // Not an answer the upstream chose (a malformed one would come
            // again): only a connection that failed.
            Self::Exchange { source, .. } => source.is_connection_error(),
        }
    }

    /// Whether the connection failed before a response came (refused,
    /// reset, closed): the upstream is unavailable, a `503` as Envoy answers
    /// it, not a bad answer (`502`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Request { source, .. } => {
                !source.is_user() && !source.is_parse() && !source.is_parse_status()
            }
            Self::Exchange { source, .. } => source.is_connection_error(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The connector's address: connections are never shared between
    /// connectors. Each entry holds the connector alive, so the address
    /// cannot be reused by another connector while the entry exists.
    connector: usize,
    addr: SocketAddr,
    protocol: UpstreamProtocol,
}

struct Idle {
    conn: H1,
    since: Instant,
}

/// An idle HTTP/1.1 connection, of either kind.
enum H1 {
    Hyper(http1::SendRequest<HttpBody>),
    Lean(LeanConnection),
}

impl H1 {
    /// Whether it can carry the next request now.
    fn is_usable(&mut self) -> bool {
        match self {
            Self::Hyper(sender) => sender.is_ready(),
            Self::Lean(conn) => conn.is_usable(),
        }
    }
}

impl Idle {
    fn is_live(&mut self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) < timeout && self.conn.is_usable()
    }
}

struct Entry {
    _connector: Arc<dyn UpstreamConnector>,
    h2: Option<http2::SendRequest<HttpBody>>,
    idle: Vec<Idle>,
}

/// Pooled upstream connections.
pub struct Pool {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Connectors forgotten (their pod is gone) that may still have
    /// requests under way: a connection such a request gives back is closed,
    /// not pooled again under the connector's key. Weak, so an address is
    /// free for a new connector once the old one is gone.
    forgotten: Mutex<Vec<Weak<dyn UpstreamConnector>>>,
    max_idle: usize,
    idle_timeout: Duration,
    connects: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connects", &self.connects.load(Ordering::Relaxed))
            .finish()
    }
}

enum Sender {
    H1(http1::SendRequest<HttpBody>),
    H2(http2::SendRequest<HttpBody>),
    Lean(LeanConnection),
}

impl Pool {
    /// A pool keeping at most `max_idle` idle HTTP/1.1 connections per
    /// endpoint, each for at most `idle_timeout`. Within a runtime, a task
    /// sweeps out expired idle connections; it ends with the pool.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            connects: AtomicU64::new(0),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            let period = (idle_timeout / 2).max(Duration::from_millis(50));
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.sweep();
                }
            });
        }
        pool
    }

    /// Idle HTTP/1.1 connections held now.
    pub fn idle(&self) -> usize {
        self.entries.lock().values().map(|e| e.idle.len()).sum()
    }

    /// Drops idle connections that expired or closed (their connection
    /// tasks end), closed HTTP/2 connections, and keys left with nothing.
    fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.idle_timeout;
        let mut expired = Vec::new();
        let mut entries = self.entries.lock();
        entries.retain(|_, entry| {
            for mut idle in std::mem::take(&mut entry.idle) {
                if idle.is_live(now, timeout) {
                    entry.idle.push(idle);
                } else {
                    expired.push(idle);
                }
            }
            if entry.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                entry.h2 = None;
            }
            entry.h2.is_some() || !entry.idle.is_empty()
        });
        drop(entries);
        // Connections are dropped outside the lock.
        drop(expired);
    }

    /// Upstream connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Drops every pooled connection opened by `connector` (its pod is
    /// gone): idle HTTP/1.1 connections close, HTTP/2 ones once their
    /// last request finishes; a connection that a request still under way
    /// gives back later is closed too.
    pub fn forget(&self, connector: &Arc<dyn UpstreamConnector>) {
        let id = Arc::as_ptr(connector).cast::<()>() as usize;
        {
            let mut forgotten = self.forgotten.lock();
            forgotten.retain(|w| w.strong_count() > 0);
            forgotten.push(Arc::downgrade(connector));
        }
        let dropped: Vec<(Key, Entry)> = self
            .entries
            .lock()
            .extract_if(|key, _| key.connector == id)
            .collect();
        // Connections are dropped outside the lock.
        drop(dropped);
    }

    /// Whether `connector` was forgotten (and is not gone yet).
    fn is_forgotten(&self, connector: &Arc<dyn UpstreamConnector>) -> bool {
        let mut forgotten = self.forgotten.lock();
        forgotten.retain(|w| w.strong_count() > 0);
        forgotten
            .iter()
            .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(connector)))
    }

    fn key(connector: &Arc<dyn UpstreamConnector>, addr: SocketAddr, p: UpstreamProtocol) -> Key {
        Key {
            connector: Arc::as_ptr(connector).cast::<()>() as usize,
            addr,
            protocol: p,
        }
    }

    /// A pooled sender for the key, if one is usable.
    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(key)?;
        match key.protocol {
            UpstreamProtocol::Http2 => match &entry.h2 {
                Some(h2) if !h2.is_closed() => Some(Sender::H2(h2.clone())),
                _ => {
                    entry.h2 = None;
                    None
                }
            },
            UpstreamProtocol::Http1 => {
                let now = Instant::now();
                while let Some(mut idle) = entry.idle.pop() {
                    if idle.is_live(now, self.idle_timeout) {
                        return Some(match idle.conn {
                            H1::Hyper(sender) => Sender::H1(sender),
                            H1::Lean(conn) => Sender::Lean(conn),
                        });
                    }
                }
                None
            }
        }
    }

    fn checkin(&self, key: Key, connector: &Arc<dyn UpstreamConnector>, sender: Sender) {
        let mut entries = self.entries.lock();
        let addr = key.addr;
        let entry = match entries.entry(key) {
            Slot::Occupied(entry) => entry.into_mut(),
            // Only a key with nothing pooled can be a forgotten client's.
            Slot::Vacant(slot) if !self.is_forgotten(connector) => slot.insert(Entry {
                _connector: connector.clone(),
                h2: None,
                idle: Vec::new(),
            }),
            Slot::Vacant(_) => {
                drop(entries);
                tracing::debug!(%addr, "not pooling a connection of a forgotten client");
                // Closed outside the lock.
                drop(sender);
                return;
            }
        };
        let conn = match sender {
            Sender::H2(h2) => {
                entry.h2 = Some(h2);
                return;
            }
            Sender::H1(sender) => H1::Hyper(sender),
            Sender::Lean(conn) => H1::Lean(conn),
        };
        // Only by age: whether the others still work is checked when one is
        // taken (and by the sweep), not for every request that ends.
        let now = Instant::now();
        let timeout = self.idle_timeout;
        entry.idle.retain(|i| now.duration_since(i.since) < timeout);
        if entry.idle.len() < self.max_idle {
            entry.idle.push(Idle { conn, since: now });
        }
    }

    /// Forgets every connection whose key has nothing pooled any more.
    fn prune(&self, key: &Key) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get(key)
            && entry.h2.is_none()
            && entry.idle.is_empty()
        {
            entries.remove(key);
        }
    }

    async fn open(
        &self,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
    ) -> Result<TokioIo<Box<dyn Io>>, UpstreamError> {
        let io = connector
            .connect(addr)
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                source: e.into(),
            })?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(io))
    }

    async fn connect_h2(
        &self,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<HttpBody>, UpstreamError> {
        let io = self.open(connector, addr).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                source: e.into(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h1(
        &self,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
        upgrades: bool,
    ) -> Result<http1::SendRequest<HttpBody>, UpstreamError> {
        let io = self.open(connector, addr).await?;
        Self::handshake_h1(io, addr, upgrades).await
    }

    /// Starts hyper's HTTP/1.1 client on an open connection.
    async fn handshake_h1(
        io: TokioIo<Box<dyn Io>>,
        addr: SocketAddr,
        upgrades: bool,
    ) -> Result<http1::SendRequest<HttpBody>, UpstreamError> {
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                source: e.into(),
            })?;
        tokio::spawn(async move {
            let result = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` over a pooled (or new) connection opened by
    /// `connector`. The request must already be in the form the protocol
    /// needs (origin-form URI for HTTP/1.1, absolute URI for HTTP/2).
    /// `verbatim`: an answer exchanged by this task's own HTTP/1.1 exchange
    /// may come back as the upstream wrote it ([`h1::Answer::Verbatim`]);
    /// every other is parsed.
    pub(crate) async fn send(
        self: &Arc<Self>,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        req: Request<HttpBody>,
        verbatim: bool,
    ) -> Result<h1::Answer, UpstreamError> {
        let key = Self::key(connector, addr, protocol);
        let lean = h1::fits(&req);
        let sender = match self.checkout(&key) {
            Some(Sender::Lean(conn)) if !lean => {
                // hyper takes the idle connection over: it can write a body
                // while the response arrives.
                let io = TokioIo::new(conn.into_io());
                Sender::H1(Box::pin(Self::handshake_h1(io, addr, false)).await?)
            }
            Some(sender) => sender,
            // Opening is boxed: its futures (TLS, HTTP/2 handshakes) would
            // otherwise make every request's future larger.
            None => Box::pin(self.connect(connector, addr, protocol, &key, lean)).await?,
        };
        let request_err = |source| UpstreamError::Request { addr, source };
        match sender {
            Sender::H2(mut h2) => {
                let resp = h2.send_request(req).await.map_err(request_err)?;
                Ok(h1::Answer::Parsed(resp.map(boxed)))
            }
            Sender::H1(mut h1) => {
                let resp = h1.send_request(req).await.map_err(|e| {
                    self.prune(&key);
                    request_err(e)
                })?;
                let giveback = GiveBack {
                    pool: Arc::downgrade(self),
                    key,
                    connector: connector.clone(),
                    sender: Some(h1),
                };
                Ok(h1::Answer::Parsed(
                    resp.map(|inner| boxed(PooledBody { inner, giveback })),
                ))
            }
            Sender::Lean(conn) => {
                let (parts, _) = req.into_parts();
                let pool = Arc::downgrade(self);
                let (back, connector) = (key.clone(), connector.clone());
                let give_back = Box::new(move |conn| {
                    if let Some(pool) = pool.upgrade() {
                        pool.checkin(back, &connector, Sender::Lean(conn));
                    }
                });
                let answer = if verbatim {
                    conn.exchange_answer(&parts, give_back).await
                } else {
                    conn.exchange(&parts, give_back)
                        .await
                        .map(h1::Answer::Parsed)
                };
                answer.map_err(|source| {
                    self.prune(&key);
                    UpstreamError::Exchange { addr, source }
                })
            }
        }
    }

    /// Opens a connection for `key`'s protocol: HTTP/2 (shared from now
    /// on), HTTP/1.1 driven by the caller for a request without a body,
    /// else hyper's HTTP/1.1 client.
    async fn connect(
        &self,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        key: &Key,
        lean: bool,
    ) -> Result<Sender, UpstreamError> {
        Ok(match protocol {
            UpstreamProtocol::Http2 => {
                let h2 = self.connect_h2(connector, addr).await?;
                self.checkin(key.clone(), connector, Sender::H2(h2.clone()));
                Sender::H2(h2)
            }
            UpstreamProtocol::Http1 if lean => {
                let io = self.open(connector, addr).await?.into_inner();
                Sender::Lean(h1::Connection::new(io))
            }
            UpstreamProtocol::Http1 => Sender::H1(self.connect_h1(connector, addr, false).await?),
        })
    }

    /// Sends an upgrade request (HTTP/1.1 `Upgrade`) over a new connection
    /// that will hand its IO over on `101 Switching Protocols`.
    pub async fn send_upgrade(
        &self,
        connector: &Arc<dyn UpstreamConnector>,
        addr: SocketAddr,
        req: Request<HttpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut h1 = self.connect_h1(connector, addr, true).await?;
        h1.send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })
    }
}

/// Returns an HTTP/1.1 connection to the pool once it is ready again.
struct GiveBack {
    pool: Weak<Pool>,
    key: Key,
    connector: Arc<dyn UpstreamConnector>,
    sender: Option<http1::SendRequest<HttpBody>>,
}

impl GiveBack {
    /// Returns the connection (once); later calls and the drop do nothing.
    fn give_back(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        // Usually the connection is ready again by the time the response
        // body has ended: back at once, without a task per request.
        if sender.is_ready() {
            if let Some(pool) = self.pool.upgrade() {
                pool.checkin(self.key.clone(), &self.connector, Sender::H1(sender));
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool.clone();
        let key = self.key.clone();
        let connector = self.connector.clone();
        runtime.spawn(async move {
            // Ready once the previous exchange completed; an error means the
            // connection closed (e.g. the body was dropped before its end).
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                pool.checkin(key, &connector, Sender::H1(sender));
            }
        });
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A response body over a pooled HTTP/1.1 connection.
struct PooledBody {
    inner: Incoming,
    giveback: GiveBack,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            // Hand the connection back as soon as the body is complete.
            self.giveback.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
