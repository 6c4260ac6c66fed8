//! The control plane's identity service as seen from a node: bootstrap with the
//! node's token, hold (and renew) the node certificate, and sign workload CSRs
//! over an mTLS channel that requires the control plane's own SPIFFE ID.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hawser_api::proto::identity::identity_client::IdentityClient;
use hawser_api::proto::identity::{
    NodeCertificateRequest, WorkloadCertificateRequest, WorkloadRef as WorkloadRefMsg,
};
use hawser_api::tls::{CertSlot, SpiffeServerVerifier, Svid, TrustBundle, client_config};
use hawser_api::{SpiffeId, TrustDomain};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{CaClient, CaClientError, WorkloadRef, generate_key_and_csr};

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// `host:port` of the control plane's gRPC server.
    pub addr: String,
    /// This node's name.
    pub node_name: String,
    /// File holding this node's bootstrap token.
    pub token_file: PathBuf,
    /// Roots to verify the control plane with.
    pub trust_bundle: Arc<TrustBundle>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
}

/// Why talking to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The token file could not be read.
    #[error("cannot read bootstrap token {path}: {source}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The address is not usable.
    #[error("control plane address {0:?} is invalid: {1}")]
    Address(String, String),
    /// The control plane refused or failed the call.
    #[error("control plane refused the node certificate request: {0}")]
    Refused(tonic::Status),
    /// The answer is not a usable certificate.
    #[error("control plane returned an unusable node certificate: {0}")]
    BadResponse(String),
    /// Key generation failed.
    #[error("generating the node key failed: {0}")]
    Key(String),
}

/// A node's authenticated connection to the control plane.
pub struct ControlPlaneClient {
    config: ControlPlaneConfig,
    node_cert: Arc<CertSlot>,
    channel: Channel,
}

impl ControlPlaneClient {
    /// Obtains a node certificate with the bootstrap token, then opens (lazily)
    /// an mTLS channel presenting it.
    pub async fn bootstrap(config: ControlPlaneConfig) -> Result<Arc<Self>, ControlPlaneError> {
        let svid = node_certificate(&config).await?;
        tracing::info!(spiffe_id = %svid.id(), "obtained node certificate");
        let node_cert = Arc::new(CertSlot::new(svid));
        let channel = tls_channel(&config, Some(node_cert.clone()))?;
        Ok(Arc::new(Self {
            config,
            node_cert,
            channel,
        }))
    }

    /// This node's current certificate.
    pub fn node_certificate(&self) -> Option<Svid> {
        self.node_cert.get()
    }

    /// The authenticated channel, for other control-plane services (discovery).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Renews the node certificate at half its lifetime, retrying with capped
    /// backoff; the current one keeps serving meanwhile.
    pub fn spawn_node_renewal(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let half = this
                    .node_cert
                    .get()
                    .map(|s| s.lifetime() / 2)
                    .unwrap_or_default();
                tokio::time::sleep(half).await;
                let mut backoff = Duration::from_secs(1);
                loop {
                    match node_certificate(&this.config).await {
                        Ok(svid) => {
                            this.node_cert.set(svid);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "node certificate renewal failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            }
        })
    }
}

#[async_trait]
impl CaClient for ControlPlaneClient {
    async fn sign_workload(
        &self,
        workload: &WorkloadRef,
        csr_der: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let resp = IdentityClient::new(self.channel.clone())
            .create_workload_certificate(WorkloadCertificateRequest {
                workload: Some(WorkloadRefMsg {
                    namespace: workload.namespace.clone(),
                    pod_name: workload.pod_name.clone(),
                    pod_uid: workload.pod_uid.clone(),
                }),
                csr_der,
            })
            .await
            .map_err(|s| CaClientError(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        Ok(resp
            .cert_chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect())
    }
}

async fn node_certificate(config: &ControlPlaneConfig) -> Result<Svid, ControlPlaneError> {
    let path = config.token_file.clone();
    let token = tokio::task::spawn_blocking(move || hawser_api::secret::read_secret(&path))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| ControlPlaneError::Token {
            path: config.token_file.clone(),
            source,
        })?;
    let kc = generate_key_and_csr().map_err(|e| ControlPlaneError::Key(e.to_string()))?;
    let channel = tls_channel(config, None)?;
    let resp = IdentityClient::new(channel)
        .create_node_certificate(NodeCertificateRequest {
            node_name: config.node_name.clone(),
            credential: token.trim().to_owned(),
            csr_der: kc.csr_der,
        })
        .await
        .map_err(ControlPlaneError::Refused)?
        .into_inner();
    let chain = resp
        .cert_chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let svid =
        Svid::new(chain, kc.key).map_err(|e| ControlPlaneError::BadResponse(e.to_string()))?;
    let expected = SpiffeId::node(&config.trust_domain, &config.node_name)
        .map_err(|e| ControlPlaneError::BadResponse(e.to_string()))?;
    if *svid.id() != expected {
        return Err(ControlPlaneError::BadResponse(format!(
            "certificate names {}, expected {expected}",
            svid.id()
        )));
    }
    Ok(svid)
}

/// A lazily connecting gRPC channel over TLS 1.3 that accepts only the control
/// plane's SPIFFE ID, presenting `client_cert` when given.
fn tls_channel(
    config: &ControlPlaneConfig,
    client_cert: Option<Arc<CertSlot>>,
) -> Result<Channel, ControlPlaneError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        config.trust_bundle.clone(),
        config.trust_domain.clone(),
        Some(SpiffeId::control_plane(&config.trust_domain)),
    ));
    let cert = client_cert.map(|c| c as Arc<dyn rustls::client::ResolvesClientCert>);
    let tls = TlsConnector::from(Arc::new(client_config(cert, verifier, &[b"h2"])));
    let addr = config.addr.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (tls, addr) = (tls.clone(), addr.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked (the SPIFFE verifier checks the identity);
            // rustls only needs one for SNI.
            let name = ServerName::try_from("hawser-control-plane")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{}", config.addr))
        .map_err(|e| ControlPlaneError::Address(config.addr.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    Ok(endpoint.connect_with_connector_lazy(connector))
}
