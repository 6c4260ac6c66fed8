//! A control plane serving identity and discovery on a loopback port, with its
//! CA directory, bootstrap tokens and pod table in a temporary directory, and
//! optionally a watched manifest directory as its config source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hawser_api::SpiffeId;
use hawser_api::TrustDomain;
use hawser_api::tls::TrustBundle;
use hawser_api::tls::{
    ClientAuth, SpiffeClientVerifier, SpiffeServerVerifier, Svid, client_config, peer_identity,
    server_config,
};
use hawser_control_plane::ca::{Ca, CaSource, SvidProfile};
use hawser_control_plane::discovery::DiscoveryService;
use hawser_control_plane::identity::{
    BootstrapTokens, IdentityService, PodIdentity, PodSource, RateLimiter, StaticPods,
};
use hawser_control_plane::index::{IndexConfig, SharedIndex};
use hawser_control_plane::sources::manifests::{ManifestConfig, ManifestReport, ManifestSource};
use hawser_node_proxy::identity::{ControlPlaneClient, ControlPlaneConfig, ControlPlaneError};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Where a local control plane's config comes from.
enum Config<'a> {
    /// No config; pods from [`LocalControlPlane::add_pod`].
    Static,
    /// A watched manifest directory.
    Manifests(&'a Path),
    /// An index the caller fills.
    Index(SharedIndex),
}

/// A running control plane. Stops when dropped.
pub struct LocalControlPlane {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The CA.
    pub ca: Arc<Ca>,
    /// Pods the impersonation check knows (when not serving from manifests).
    pub pods: Arc<StaticPods>,
    /// The config index discovery serves.
    pub index: SharedIndex,
    /// The manifest source's report, when serving from a manifest directory.
    pub manifest_report: Option<tokio::sync::watch::Receiver<Arc<ManifestReport>>>,
    /// Holds the CA directory and token files.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl LocalControlPlane {
    /// Starts a control plane with a fresh self-signed root and the given
    /// per-node rate limit.
    pub async fn start(rate_per_second: u32, burst: u32) -> anyhow::Result<Self> {
        Self::start_with(rate_per_second, burst, Config::Static).await
    }

    /// Starts a control plane serving the mesh from the manifests in
    /// `manifests` (watched); the index is then also the pod source of the
    /// impersonation check, as in the real binary.
    pub async fn with_manifests(manifests: &Path) -> anyhow::Result<Self> {
        Self::start_with(100, 100, Config::Manifests(manifests)).await
    }

    /// Starts a control plane serving `index` (filled by the caller), which is
    /// also its pod source.
    pub async fn with_index(index: SharedIndex) -> anyhow::Result<Self> {
        Self::start_with(1000, 1000, Config::Index(index)).await
    }

    async fn start_with(
        rate_per_second: u32,
        burst: u32,
        config: Config<'_>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("tokens"))?;
        let ca = Arc::new(Ca::load(
            TrustDomain::default(),
            &CaSource::SelfSigned {
                dir: dir.path().join("ca"),
                root_lifetime: std::time::Duration::from_secs(86400 * 365),
            },
            SvidProfile::default(),
        )?);
        let pods = Arc::new(StaticPods::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_source, source_stopped) = tokio::sync::watch::channel(false);
        let (index, pod_source, manifest_report): (_, Arc<dyn PodSource>, _) = match config {
            Config::Manifests(m) => {
                let index = SharedIndex::new(IndexConfig::default());
                let source = ManifestSource::new(ManifestConfig::new(m), index.clone());
                let report = source.report();
                tokio::spawn(source.run(source_stopped));
                (index.clone(), Arc::new(index), Some(report))
            }
            Config::Index(index) => (index.clone(), Arc::new(index), None),
            Config::Static => (SharedIndex::new(IndexConfig::default()), pods.clone(), None),
        };
        let service = IdentityService::new(
            ca.clone(),
            Arc::new(BootstrapTokens::new(dir.path().join("tokens"))),
            pod_source,
            RateLimiter::new(rate_per_second, burst),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(hawser_control_plane::serve(
            listener,
            ca.clone(),
            service,
            DiscoveryService::new(index.clone()),
            async move {
                let _ = stopped.await;
                let _ = stop_source.send(true);
            },
        ));
        Ok(Self {
            addr,
            ca,
            pods,
            index,
            manifest_report,
            dir,
            stop: Some(stop),
        })
    }

    /// Registers `node` with bootstrap token `token`; returns the token file a
    /// node proxy would be given.
    pub fn add_node(&self, node: &str, token: &str) -> anyhow::Result<PathBuf> {
        hawser_api::secret::write_secret(&self.dir.path().join("tokens").join(node), token)?;
        let node_side = self.dir.path().join(format!("{node}.token"));
        hawser_api::secret::write_secret(&node_side, token)?;
        Ok(node_side)
    }

    /// Schedules pod `namespace/name` on `node` with service account `sa`.
    pub fn add_pod(&self, namespace: &str, name: &str, node: &str, sa: &str) {
        self.pods.insert(
            namespace,
            name,
            PodIdentity {
                uid: format!("uid-{name}"),
                node: node.to_owned(),
                service_account: sa.to_owned(),
            },
        );
    }

    /// The trust bundle file the CA wrote (what `openssl verify -CAfile` reads).
    pub fn bundle_file(&self) -> PathBuf {
        self.dir.path().join("ca").join("trust-bundle.pem")
    }

    /// The bundle as a node proxy would load it from that file.
    pub fn bundle(&self) -> anyhow::Result<Arc<TrustBundle>> {
        Ok(Arc::new(TrustBundle::from_pem(&std::fs::read(
            self.bundle_file(),
        )?)?))
    }

    /// Bootstraps a node client with the token in `token_file`.
    pub async fn node_client(
        &self,
        node: &str,
        token_file: PathBuf,
    ) -> Result<Arc<ControlPlaneClient>, ControlPlaneError> {
        ControlPlaneClient::bootstrap(ControlPlaneConfig {
            addr: self.addr.to_string(),
            node_name: node.to_owned(),
            token_file,
            trust_bundle: self
                .bundle()
                .map_err(|e| ControlPlaneError::BadResponse(e.to_string()))?,
            trust_domain: TrustDomain::default(),
        })
        .await
    }
}

impl Drop for LocalControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What each side of a handshake saw of the other: its SPIFFE ID, or the error.
pub type HandshakeOutcome = (
    Result<SpiffeId, std::io::Error>,
    Result<SpiffeId, std::io::Error>,
);

/// Runs one TLS 1.3 mTLS handshake over loopback between `server` and `client`
/// (each trusting its bundle; the client requiring `client_expects` if given),
/// exchanges a few bytes, and returns (what the server saw, what the client saw).
pub async fn handshake(
    server: &Svid,
    server_trusts: Arc<TrustBundle>,
    client: &Svid,
    client_trusts: Arc<TrustBundle>,
    client_expects: Option<SpiffeId>,
) -> std::io::Result<HandshakeOutcome> {
    let td = TrustDomain::default();
    let server_cfg = server_config(
        Arc::new(SingleCertAndKey::from(server.certified_key())),
        Arc::new(SpiffeClientVerifier::new(
            server_trusts,
            td.clone(),
            None,
            ClientAuth::Required,
        )),
        &[b"h2"],
    );
    let client_cfg = client_config(
        Some(Arc::new(SingleCertAndKey::from(client.certified_key()))),
        Arc::new(SpiffeServerVerifier::new(client_trusts, td, client_expects)),
        &[b"h2"],
    );
    let no_identity = || std::io::Error::other("peer presented no SPIFFE ID");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        peer_identity(tls.get_ref().1).ok_or_else(no_identity)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        let name = ServerName::try_from("unused").map_err(std::io::Error::other)?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        peer_identity(tls.get_ref().1).ok_or_else(no_identity)
    }
    .await;
    let server_side = server_side.await.map_err(std::io::Error::other)?;
    Ok((server_side, client_side))
}
