//! HBONE over loopback: real TLS 1.3 with test SVIDs, real h2, real TCP.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use hawser_api::SpiffeId;
use hawser_api::testing::TestPki;
use hawser_api::tls::{
    ClientAuth, PeerVerifyError, SpiffeClientVerifier, Svid, peer_identity, server_config,
};
use rustls::sign::SingleCertAndKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::client::ClientConfig;
use super::server::ServerConfig;
use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

struct Upstreams {
    echo: SocketAddr,
    deny: Option<SpiffeId>,
    streams: AtomicUsize,
}

#[async_trait]
impl HboneHandler for Upstreams {
    type Upstream = TcpStream;
    async fn connect(
        &self,
        peer: &SpiffeId,
        _peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        if self.deny.as_ref() == Some(peer) {
            return Err(Refusal::Denied(format!("{peer} is denied")));
        }
        if target.port() != 7 {
            return Err(Refusal::UnknownTarget(target.to_string()));
        }
        TcpStream::connect(self.echo)
            .await
            .map_err(|e| Refusal::Unreachable(e.to_string()))
    }
}

struct Plain;

#[async_trait]
impl Dialer for Plain {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }
}

/// An echo server: copies every byte back, closes its side after EOF.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

struct Harness {
    pki: TestPki,
    hbone: SocketAddr,
    handler: Arc<Upstreams>,
    accepts: Arc<AtomicUsize>,
    conns: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    web: Svid,
    api_id: SpiffeId,
}

async fn harness(deny: Option<SpiffeId>) -> Harness {
    harness_with(deny, ServerConfig::default()).await
}

async fn harness_with(deny: Option<SpiffeId>, config: ServerConfig) -> Harness {
    hawser_api::tls::install_crypto_provider();
    let pki = TestPki::new("cluster.local");
    let api_id = id("spiffe://cluster.local/ns/default/sa/api");
    let web = pki.leaf(&id("spiffe://cluster.local/ns/default/sa/web"));
    let server_cert = pki.leaf(&api_id);
    let handler = Arc::new(Upstreams {
        echo: echo_server().await,
        deny,
        streams: AtomicUsize::new(0),
    });
    let tls = Arc::new(server_config(
        Arc::new(SingleCertAndKey::from(server_cert.certified_key())),
        Arc::new(SpiffeClientVerifier::new(
            pki.bundle_arc(),
            pki.trust_domain(),
            None,
            ClientAuth::Required,
        )),
        &[b"h2"],
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hbone");
    let hbone = listener.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    {
        let (handler, accepts, conns) = (handler.clone(), accepts.clone(), conns.clone());
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            while let Ok((tcp, addr)) = listener.accept().await {
                accepts.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                conns.lock().await.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(peer) = peer_identity(tls.get_ref().1) else {
                        return;
                    };
                    let _ = serve_connection(tls, peer, addr, handler, config).await;
                });
            }
        });
    }
    Harness {
        pki,
        hbone,
        handler,
        accepts,
        conns,
        web,
        api_id,
    }
}

impl Harness {
    fn pool(&self) -> HbonePool {
        HbonePool::new(
            self.pki.bundle_arc(),
            self.pki.trust_domain(),
            Arc::new(Plain),
            ClientConfig::default(),
        )
    }

    fn key(&self, destination_identity: &SpiffeId) -> PoolKey {
        PoolKey {
            source: self.web.id().clone(),
            destination: self.hbone,
            destination_identity: destination_identity.clone(),
        }
    }
}

fn target() -> SocketAddr {
    "10.244.2.7:7".parse().expect("addr")
}

#[tokio::test]
async fn bytes_round_trip_with_half_close() {
    let h = harness(None).await;
    let pool = h.pool();
    let mut s = pool
        .connect(&h.key(&h.api_id), &h.web, target())
        .await
        .expect("tunnel");
    s.write_all(b"hello through the mesh").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read to EOF");
    assert_eq!(back, b"hello through the mesh");
}

#[tokio::test]
async fn many_streams_share_one_connection() {
    let h = harness(None).await;
    let pool = Arc::new(h.pool());
    let mut tasks = JoinSet::new();
    for i in 0..20u32 {
        let (pool, key, web) = (pool.clone(), h.key(&h.api_id), h.web.clone());
        tasks.spawn(async move {
            let mut s = pool.connect(&key, &web, target()).await.expect("tunnel");
            let msg = format!("stream {i}");
            s.write_all(msg.as_bytes()).await.expect("write");
            s.shutdown().await.expect("shutdown");
            let mut back = String::new();
            s.read_to_string(&mut back).await.expect("read");
            assert_eq!(back, msg);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("stream task");
    }
    assert_eq!(h.accepts.load(Ordering::SeqCst), 1, "one TLS connection");
    assert_eq!(h.handler.streams.load(Ordering::SeqCst), 20);
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn large_transfer_respects_flow_control() {
    let h = harness(None).await;
    let pool = h.pool();
    let s = pool
        .connect(&h.key(&h.api_id), &h.web, target())
        .await
        .expect("tunnel");
    let data: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut back = Vec::with_capacity(expected.len());
    r.read_to_end(&mut back).await.expect("read");
    writer.await.expect("writer");
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "content differs");
}

#[tokio::test]
async fn wrong_destination_identity_is_refused_by_the_client() {
    let h = harness(None).await;
    let pool = h.pool();
    let db = id("spiffe://cluster.local/ns/default/sa/db");
    let err = pool
        .connect(&h.key(&db), &h.web, target())
        .await
        .expect_err("must refuse");
    assert!(
        matches!(
            err.verify_error(),
            Some(PeerVerifyError::IdentityMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(
        h.handler.streams.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn denied_and_unknown_targets_get_http_statuses() {
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let h = harness(Some(web)).await;
    let pool = h.pool();
    match pool.connect(&h.key(&h.api_id), &h.web, target()).await {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, http::StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    let h = harness(None).await;
    let pool = h.pool();
    match pool
        .connect(
            &h.key(&h.api_id),
            &h.web,
            "10.244.2.7:9".parse().expect("addr"),
        )
        .await
    {
        Err(TunnelError::Refused { status, .. }) => {
            assert_eq!(status, http::StatusCode::BAD_REQUEST)
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced() {
    let h = harness(None).await;
    let pool = h.pool();
    let key = h.key(&h.api_id);
    drop(pool.connect(&key, &h.web, target()).await.expect("first"));
    // The server side goes away (proxy restart): every connection it served dies.
    h.conns.lock().await.abort_all();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut s = pool.connect(&key, &h.web, target()).await.expect("second");
    s.write_all(b"again").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"again");
    assert_eq!(h.accepts.load(Ordering::SeqCst), 2, "reconnected once");
}

/// A connection that carries no stream for the timeout is closed (GOAWAY);
/// one with a stream open, however quiet, is not; the client's pool then
/// opens a new connection for its next stream.
#[tokio::test]
async fn a_connection_without_streams_is_closed_after_the_timeout() {
    let timeout = std::time::Duration::from_millis(300);
    let h = harness_with(
        None,
        ServerConfig {
            no_stream_timeout: timeout,
            ..ServerConfig::default()
        },
    )
    .await;
    let pool = h.pool();
    let key = h.key(&h.api_id);
    let mut quiet = pool.connect(&key, &h.web, target()).await.expect("first");
    tokio::time::sleep(timeout * 3).await;
    quiet.write_all(b"still").await.expect("write");
    quiet.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    quiet.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"still", "an open stream keeps its connection");
    drop(quiet);
    let closed = tokio::time::timeout(timeout * 10, async {
        let mut conns = h.conns.lock().await;
        conns.join_next().await
    })
    .await;
    assert!(
        matches!(closed, Ok(Some(Ok(())))),
        "the connection without streams was closed: {closed:?}"
    );
    let mut again = pool.connect(&key, &h.web, target()).await.expect("again");
    again.write_all(b"new").await.expect("write");
    again.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    again.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"new");
    assert_eq!(h.accepts.load(Ordering::SeqCst), 2, "a new connection");
}
