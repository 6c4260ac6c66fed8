//! The node's mesh configuration, kept current from the control plane.
//!
//! [`DiscoveryClient`] holds one stream to the control plane's discovery
//! service: it subscribes (resuming from the version it holds), applies each
//! snapshot or delta to a copy of its [`NodeConfig`], validates the result,
//! and only then publishes it and ACKs; anything it cannot apply is NACKed
//! with the reason and the previous config stays in force. When the control
//! plane is unreachable it reconnects with capped, jittered backoff and keeps
//! serving the last good config.

mod config;

use std::sync::Arc;
use std::time::Duration;

use hawser_api::proto::discovery::discovery_client::DiscoveryClient as GrpcClient;
use hawser_api::proto::discovery::{
    Ack, DiscoveryRequest, DiscoveryResponse, Nack, Subscribe, discovery_request::Kind as Req,
    discovery_response::Kind as Resp,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

pub use config::{ConfigError, NodeConfig};

/// Largest snapshot accepted: a 10k-Service, 50k-pod mesh encodes to about
/// 10 MiB, far over gRPC's 4 MiB default.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Reconnect backoff bounds.
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Keeps a [`NodeConfig`] in sync with the control plane.
pub struct DiscoveryClient {
    channel: Channel,
    node_name: String,
    config: watch::Sender<Arc<NodeConfig>>,
}

impl DiscoveryClient {
    /// A client for `node_name` over `channel` (an mTLS channel presenting the
    /// node certificate; see [`crate::identity::ControlPlaneClient::channel`]).
    pub fn new(channel: Channel, node_name: impl Into<String>) -> Self {
        Self {
            channel,
            node_name: node_name.into(),
            config: watch::Sender::new(Arc::new(NodeConfig::default())),
        }
    }

    /// The current config and its changes.
    pub fn config(&self) -> watch::Receiver<Arc<NodeConfig>> {
        self.config.subscribe()
    }

    /// Runs until `shutdown` turns true: stream, and on any failure reconnect
    /// with backoff, resuming from the version held.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let outcome = tokio::select! {
                r = self.stream_once() => r,
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
            };
            match outcome {
                // The stream delivered config before it ended: start over quickly.
                Ok(true) => backoff = BACKOFF_INITIAL,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(node = %self.node_name, error = %e, "discovery stream failed")
                }
            }
            let delay = backoff.mul_f64(0.8 + rand::random::<f64>() * 0.4);
            tracing::info!(node = %self.node_name, retry_in_ms = delay.as_millis() as u64, held_version = self.config.borrow().version(), "reconnecting to the control plane");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One stream. Ok(true) if it applied at least one version.
    async fn stream_once(&self) -> Result<bool, tonic::Status> {
        let held = self.config.borrow().version();
        let (tx, rx) = mpsc::channel(4);
        let send = |kind| DiscoveryRequest { kind: Some(kind) };
        // The receiver lives until the stream ends, so this cannot fail.
        let _ = tx
            .send(send(Req::Subscribe(Subscribe {
                node_name: self.node_name.clone(),
                resume_from_version: held,
            })))
            .await;
        let mut inbound = GrpcClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut applied_any = false;
        while let Some(msg) = inbound.message().await? {
            let current = self.config.borrow().clone();
            match apply(&current, msg) {
                Ok(next) => {
                    let version = next.version();
                    tracing::info!(node = %self.node_name, version, resources = next.len(), "configuration applied");
                    self.config.send_replace(Arc::new(next));
                    applied_any = true;
                    if tx.send(send(Req::Ack(Ack { version }))).await.is_err() {
                        break;
                    }
                }
                Err(rejected) => {
                    tracing::warn!(node = %self.node_name, version = rejected.version, kept_version = current.version(), error = %rejected.error, "configuration rejected; keeping the current one");
                    let nack = Nack {
                        version: rejected.version,
                        kept_version: current.version(),
                        error: rejected.error.to_string(),
                        resource: rejected.error.resource(),
                    };
                    let _ = tx.send(send(Req::Nack(nack))).await;
                    if rejected.resync {
                        // Our version and the control plane's idea of it have
                        // diverged: a new stream resumes from what we hold.
                        return Ok(applied_any);
                    }
                }
            }
        }
        Ok(applied_any)
    }
}

/// An update that could not be applied.
struct Rejected {
    version: u64,
    error: ConfigError,
    /// Whether a new stream is needed to get back in step.
    resync: bool,
}

fn apply(current: &NodeConfig, msg: DiscoveryResponse) -> Result<NodeConfig, Rejected> {
    match msg.kind {
        Some(Resp::Snapshot(s)) => {
            let version = s.version;
            NodeConfig::from_snapshot(s).map_err(|error| Rejected {
                version,
                error,
                resync: false,
            })
        }
        Some(Resp::Delta(d)) => {
            let version = d.version;
            let resync = d.from_version != current.version();
            current.with_delta(d).map_err(|error| Rejected {
                version,
                error,
                resync,
            })
        }
        None => Err(Rejected {
            version: 0,
            error: ConfigError::Empty,
            resync: true,
        }),
    }
}
