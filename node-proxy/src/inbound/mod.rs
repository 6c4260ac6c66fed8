//! Inbound: the destination side of HBONE (and the 15006 plaintext path).
//! For each CONNECT arriving on a pod's 15008 (after mTLS verified the peer), check that the target is this
//! pod, evaluate the pod's AuthorizationPolicies at L4, and connect to the app
//! inside the pod's network namespace with the bypass mark. Denials are
//! logged with their reason and counted.

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use hawser_api::SpiffeId;
use hawser_api::cni::PROXY_MARK;
use hawser_api::proto::discovery::{AuthorizationPolicy, ResourceType, resource::Kind};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::authz::{self, Connection, Decision};
use crate::discovery::NodeConfig;
use crate::inpod::NetnsHandle;
use crate::tunnel::{HboneHandler, Refusal};

/// Counters of one pod's inbound side.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Streams admitted.
    pub allowed: AtomicU64,
    /// Streams refused by authorization.
    pub denied: AtomicU64,
}

/// The HBONE handler of one pod.
pub struct PodInbound {
    uid: String,
    ips: Vec<IpAddr>,
    netns: NetnsHandle,
    config: watch::Receiver<Arc<NodeConfig>>,
    stats: Arc<InboundStats>,
}

impl PodInbound {
    /// The handler for pod `uid` with addresses `ips` in `netns`.
    pub fn new(
        uid: impl Into<String>,
        ips: Vec<IpAddr>,
        netns: NetnsHandle,
        config: watch::Receiver<Arc<NodeConfig>>,
    ) -> Self {
        Self {
            uid: uid.into(),
            ips,
            netns,
            config,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<InboundStats> {
        self.stats.clone()
    }

    /// The policies that apply to this pod in `config` (borrowed, not copied:
    /// this runs for every connection).
    fn policies<'c>(&self, config: &'c NodeConfig) -> Vec<&'c AuthorizationPolicy> {
        let Some(Kind::Workload(w)) = config
            .get(ResourceType::Workload, &self.uid)
            .and_then(|r| r.kind.as_ref())
        else {
            return Vec::new();
        };
        w.authorization_policies
            .iter()
            .filter_map(|name| {
                match config
                    .get(ResourceType::AuthorizationPolicy, name)?
                    .kind
                    .as_ref()?
                {
                    Kind::AuthorizationPolicy(p) => Some(p),
                    _ => None,
                }
            })
            .collect()
    }

    /// A plaintext connection captured on 15006 (from outside the mesh): no
    /// peer identity, so it is allowed unless a policy requires one (or
    /// otherwise denies it), then connected like an HBONE stream.
    pub async fn admit_plaintext(
        &self,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        self.admit(None, peer_addr, target).await
    }

    async fn admit(
        &self,
        peer: Option<&SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        if !self.ips.contains(&target.ip()) {
            return Err(Refusal::UnknownTarget(format!(
                "{target} is not an address of pod {}",
                self.uid
            )));
        }
        // Evaluated under the config borrow (no await inside): the policy in
        // force is the one the latest config carries, with nothing copied.
        let eval = {
            let config = self.config.borrow();
            authz::evaluate(
                &self.policies(&config),
                &Connection {
                    peer,
                    peer_ip: peer_addr.ip(),
                    port: target.port(),
                },
            )
        };
        // Only formatted when something is logged.
        let who = || peer.map_or_else(|| "plaintext".to_owned(), ToString::to_string);
        for audit in &eval.audit_denials {
            tracing::info!(pod = %self.uid, peer = %who(), %target, reason = %audit, "audit: would deny");
        }
        if let Decision::Deny { reason } = eval.decision {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pod = %self.uid, peer = %who(), %peer_addr, %target, %reason, "connection denied");
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
        self.admit(Some(peer), peer_addr, target).await
    }
}
