//! The discovery server: pushes each node its view of the mesh over a gRPC
//! stream authenticated by the node's certificate.
//!
//! A stream opens with `Subscribe`; the node gets a full snapshot, or a delta
//! from the version it already holds when the index still remembers the
//! changes since then. Afterwards every index change that touches the node is
//! sent as a delta from the last version sent (so a slow node gets one
//! coalesced delta, not a queue of them). The node ACKs or NACKs each version;
//! NACKs are logged with the node's reason and kept for the admin view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hawser_api::proto::discovery::discovery_request::Kind as RequestKind;
use hawser_api::proto::discovery::discovery_server::{Discovery, DiscoveryServer};
use hawser_api::proto::discovery::{
    DiscoveryRequest, DiscoveryResponse, discovery_response::Kind as ResponseKind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::calling_node;
use crate::index::SharedIndex;
use crate::translate;

/// What the control plane knows of one node's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The last version sent.
    pub sent: u64,
    /// The last version the node acknowledged.
    pub acked: Option<u64>,
    /// The last NACK: version and the node's error.
    pub last_nack: Option<(u64, String)>,
    /// Whether a stream is open now.
    pub connected: bool,
    /// When the status last changed.
    pub updated: SystemTime,
}

/// The discovery service over one index.
#[derive(Clone)]
pub struct DiscoveryService {
    index: SharedIndex,
    nodes: Arc<Mutex<HashMap<String, NodeStatus>>>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl DiscoveryService {
    /// Serves `index`.
    pub fn new(index: SharedIndex) -> Self {
        Self {
            index,
            nodes: Arc::default(),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Ends every open stream (the server is shutting down); nodes reconnect
    /// to another control plane or when this one is back.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The tonic service to mount on a server.
    pub fn into_server(self) -> DiscoveryServer<Self> {
        // Snapshots of large meshes exceed gRPC's 4 MiB default (10k Services
        // and 50k pods encode to about 10 MiB).
        DiscoveryServer::new(self).max_encoding_message_size(256 * 1024 * 1024)
    }

    /// Every node that has subscribed, with what it holds.
    pub fn node_statuses(&self) -> Vec<(String, NodeStatus)> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = nodes.iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn record(&self, node: &str, f: impl FnOnce(&mut NodeStatus)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let status = nodes.entry(node.to_owned()).or_insert(NodeStatus {
            sent: 0,
            acked: None,
            last_nack: None,
            connected: false,
            updated: SystemTime::now(),
        });
        f(status);
        status.updated = SystemTime::now();
    }

    /// What to send `node`, which holds `held`: a delta when the index can
    /// produce one, else a snapshot. None when nothing changed for the node.
    /// Returns the message and the version it brings the node to.
    fn next_message(&self, node: &str, held: Option<u64>) -> (Option<DiscoveryResponse>, u64) {
        // The read lock is held only while the message is built, never across an await.
        let index = self.index.read();
        if let Some(delta) = held.and_then(|v| index.delta(node, v)) {
            if delta.is_empty() {
                return (None, delta.version);
            }
            let version = delta.version;
            let msg = DiscoveryResponse {
                kind: Some(ResponseKind::Delta(translate::delta(&delta))),
            };
            return (Some(msg), version);
        }
        let snapshot = index.snapshot(node);
        let version = snapshot.version;
        let msg = DiscoveryResponse {
            kind: Some(ResponseKind::Snapshot(translate::snapshot(&snapshot))),
        };
        (Some(msg), version)
    }

    async fn session(
        self,
        node: String,
        resume_from: u64,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let mut versions = self.index.subscribe();
        versions.mark_unchanged();
        let mut closing = self.closing.subscribe();
        let held = (resume_from > 0).then_some(resume_from);
        let (first, mut sent) = self.next_message(&node, held);
        // Even an unchanged resume gets an (empty) delta so the node knows it is current.
        let first = first.unwrap_or_else(|| DiscoveryResponse {
            kind: Some(ResponseKind::Delta(hawser_api::proto::discovery::Delta {
                from_version: resume_from,
                version: sent,
                upserted: Vec::new(),
                removed: Vec::new(),
            })),
        });
        let kind = match &first.kind {
            Some(ResponseKind::Snapshot(_)) => "snapshot",
            _ => "delta",
        };
        tracing::info!(node, resume_from, version = sent, kind, "node subscribed");
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        self.record(&node, |s| {
            s.sent = sent;
            s.connected = true;
        });
        loop {
            tokio::select! {
                _ = async { closing.wait_for(|c| *c).await.is_ok() } => break,
                changed = versions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (msg, version) = self.next_message(&node, Some(sent));
                    sent = version;
                    if let Some(msg) = msg {
                        if tx.send(Ok(msg)).await.is_err() {
                            break;
                        }
                        self.record(&node, |s| s.sent = sent);
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.handle(&node, req),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(node, error = %e, "discovery stream ended");
                        break;
                    }
                },
            }
        }
        self.record(&node, |s| s.connected = false);
        tracing::info!(node, "node unsubscribed");
    }

    fn handle(&self, node: &str, req: DiscoveryRequest) {
        match req.kind {
            Some(RequestKind::Ack(ack)) => {
                tracing::debug!(node, version = ack.version, "ACK");
                self.record(node, |s| s.acked = Some(ack.version));
            }
            Some(RequestKind::Nack(nack)) => {
                let resource = nack
                    .resource
                    .map(|r| format!("{:?} {}", r.r#type(), r.name))
                    .unwrap_or_default();
                tracing::warn!(
                    node,
                    version = nack.version,
                    kept_version = nack.kept_version,
                    %resource,
                    error = %nack.error,
                    "node rejected a configuration version"
                );
                self.record(node, |s| s.last_nack = Some((nack.version, nack.error)));
            }
            Some(RequestKind::Subscribe(_)) | None => {
                tracing::warn!(
                    node,
                    "unexpected message on an open discovery stream; ignored"
                );
            }
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let node = calling_node(&req)?;
        let mut inbound = req.into_inner();
        let subscribe = match inbound.message().await? {
            Some(DiscoveryRequest {
                kind: Some(RequestKind::Subscribe(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a discovery stream must be Subscribe",
                ));
            }
        };
        if subscribe.node_name != node {
            tracing::warn!(node, claimed = %subscribe.node_name, "discovery subscription for another node refused");
            return Err(Status::permission_denied(format!(
                "node {node} may not subscribe as node {:?}",
                subscribe.node_name
            )));
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(
            self.clone()
                .session(node, subscribe.resume_from_version, inbound, tx),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
