//! The gRPC identity service: node proxies exchange a bootstrap credential for
//! a node certificate, then use it to obtain workload certificates for the pods
//! scheduled on their node, and nothing else (the impersonation check).
//!
//! Refusals are logged here with their reason; callers get a gRPC status
//! (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT).

pub mod auth;
pub mod pods;
pub mod rate_limit;
pub mod tls;

use std::sync::Arc;

use hawser_api::SpiffeId;
use hawser_api::proto::identity::identity_server::{Identity, IdentityServer};
use hawser_api::proto::identity::{
    CertificateResponse, NodeCertificateRequest, TrustBundle as TrustBundleMsg, TrustBundleRequest,
    WorkloadCertificateRequest,
};
use tonic::{Request, Response, Status};

pub use auth::{AuthError, BootstrapTokens, NodeAuthenticator};
pub use pods::{PodIdentity, PodSource, StaticPods};
pub use rate_limit::RateLimiter;
pub use tls::{PeerInfo, calling_node};

use crate::ca::{Ca, CaError, Issued};

/// The identity service.
pub struct IdentityService {
    ca: Arc<Ca>,
    auth: Arc<dyn NodeAuthenticator>,
    pods: Arc<dyn PodSource>,
    limits: RateLimiter,
}

impl IdentityService {
    /// A service issuing from `ca`, authenticating nodes with `auth`, and
    /// checking pod placement against `pods`.
    pub fn new(
        ca: Arc<Ca>,
        auth: Arc<dyn NodeAuthenticator>,
        pods: Arc<dyn PodSource>,
        limits: RateLimiter,
    ) -> Self {
        Self {
            ca,
            auth,
            pods,
            limits,
        }
    }

    /// The tonic service to mount on a server.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    /// Takes a token from the bucket of `who` (an authenticated node, or the
    /// source address of a bootstrap call).
    fn rate_limit(&self, who: &str) -> Result<(), Status> {
        self.limits.check(who).map_err(|wait| {
            tracing::warn!(
                who,
                retry_after_ms = wait.as_millis() as u64,
                "certificate request rate limited"
            );
            Status::resource_exhausted(format!(
                "too many certificate requests from {who}; retry in {} ms",
                wait.as_millis().max(1)
            ))
        })
    }

    fn respond(&self, id: &SpiffeId, issued: Issued) -> Response<CertificateResponse> {
        Response::new(CertificateResponse {
            cert_chain_der: issued.chain.into_iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self.bundle_der(),
            spiffe_id: id.to_string(),
        })
    }

    fn bundle_der(&self) -> Vec<Vec<u8>> {
        self.ca
            .bundle()
            .roots()
            .iter()
            .map(|c| c.to_vec())
            .collect()
    }
}

fn issue_error(e: CaError) -> Status {
    match e {
        CaError::BadCsr(_) | CaError::WrongKeyType(_) | CaError::ForeignTrustDomain { .. } => {
            Status::invalid_argument(e.to_string())
        }
        CaError::Reserved(_) => Status::permission_denied(e.to_string()),
        CaError::IssuerExpired | CaError::Sign(_) | CaError::Unusable(_) => {
            tracing::error!(error = %e, "the CA cannot sign");
            Status::unavailable("the CA cannot sign right now")
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn create_node_certificate(
        &self,
        req: Request<NodeCertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let remote = req.extensions().get::<PeerInfo>().map(|p| p.remote);
        let req = req.into_inner();
        // Before authentication the node name is only a claim: keyed by it,
        // anyone could exhaust a real node's bucket with wrong tokens. The
        // caller's address is what it cannot choose.
        let bucket = match remote {
            Some(addr) => format!("bootstrap from {}", addr.ip()),
            None => format!("bootstrap as {}", req.node_name),
        };
        self.rate_limit(&bucket)?;
        let node = match self
            .auth
            .authenticate(&req.node_name, &req.credential)
            .await
        {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(claimed_node = %req.node_name, ?remote, reason = %e, "node authentication refused");
                return Err(Status::unauthenticated("node authentication failed"));
            }
        };
        let id = SpiffeId::node(self.ca.trust_domain(), &node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = self.ca.issue(&req.csr_der, &id).map_err(issue_error)?;
        tracing::info!(node, spiffe_id = %id, "issued node certificate");
        Ok(self.respond(&id, issued))
    }

    async fn create_workload_certificate(
        &self,
        req: Request<WorkloadCertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let node = calling_node(&req)?;
        self.rate_limit(&format!("node {node}"))?;
        let req = req.into_inner();
        let w = req
            .workload
            .ok_or_else(|| Status::invalid_argument("request names no workload"))?;
        let deny = |reason: String| {
            tracing::warn!(node, namespace = %w.namespace, pod = %w.pod_name, %reason, "workload certificate refused");
            Status::permission_denied(reason)
        };
        let Some(pod) = self.pods.pod(&w.namespace, &w.pod_name) else {
            return Err(deny(format!(
                "pod {}/{} is not known",
                w.namespace, w.pod_name
            )));
        };
        if pod.node != node {
            return Err(deny(format!(
                "node {node} may not obtain the identity of pod {}/{}, which is scheduled on node {:?}",
                w.namespace, w.pod_name, pod.node
            )));
        }
        if pod.uid != w.pod_uid {
            return Err(deny(format!(
                "pod {}/{} has uid {}, not {}",
                w.namespace, w.pod_name, pod.uid, w.pod_uid
            )));
        }
        let id = SpiffeId::workload(self.ca.trust_domain(), &w.namespace, &pod.service_account)
            .map_err(|e| deny(format!("pod identity is not a valid SPIFFE ID: {e}")))?;
        let issued = self.ca.issue(&req.csr_der, &id).map_err(issue_error)?;
        tracing::info!(node, namespace = %w.namespace, pod = %w.pod_name, spiffe_id = %id, "issued workload certificate");
        Ok(self.respond(&id, issued))
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleMsg>, Status> {
        Ok(Response::new(TrustBundleMsg {
            roots_der: self.bundle_der(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaSource, SvidProfile};

    #[tokio::test]
    async fn workload_request_without_node_certificate_is_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load(
            hawser_api::TrustDomain::default(),
            &CaSource::SelfSigned {
                dir: dir.path().to_owned(),
                root_lifetime: std::time::Duration::from_secs(86400),
            },
            SvidProfile::default(),
        )
        .unwrap();
        let pods = Arc::new(StaticPods::default());
        pods.insert(
            "default",
            "web-1",
            PodIdentity {
                uid: "u1".into(),
                node: "node-1".into(),
                service_account: "web".into(),
            },
        );
        let svc = IdentityService::new(
            Arc::new(ca),
            Arc::new(BootstrapTokens::new(dir.path())),
            pods,
            RateLimiter::new(10, 10),
        );
        let (csr, _) = hawser_api::testing::p256_csr("spiffe://x/y");
        let request = |peer: Option<SpiffeId>| {
            let mut req = Request::new(WorkloadCertificateRequest {
                workload: Some(hawser_api::proto::identity::WorkloadRef {
                    namespace: "default".into(),
                    pod_name: "web-1".into(),
                    pod_uid: "u1".into(),
                }),
                csr_der: csr.clone(),
            });
            req.extensions_mut().insert(PeerInfo {
                remote: "127.0.0.1:1".parse().unwrap(),
                identity: peer,
            });
            req
        };
        let td = hawser_api::TrustDomain::default();
        // No client certificate, or a workload's rather than a node's: refused.
        for peer in [
            None,
            Some(SpiffeId::workload(&td, "default", "web").unwrap()),
        ] {
            let err = svc
                .create_workload_certificate(request(peer))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
        let ok = svc
            .create_workload_certificate(request(Some(SpiffeId::node(&td, "node-1").unwrap())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.spiffe_id, "spiffe://cluster.local/ns/default/sa/web");
        let err = svc
            .create_workload_certificate(request(Some(SpiffeId::node(&td, "node-2").unwrap())))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
}
