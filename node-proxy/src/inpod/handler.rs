//! [`InPod`]: the node proxy's side of the CNI conversation, and the registry
//! of the pods it serves.
//!
//! - `add`: decide enrollment ([`super::enrollment`]) and remember the
//!   netns path for the handoff that follows.
//! - `handoff`: take the namespace descriptor, open 15001/15006/15008 inside
//!   it on the pod's namespace thread, persist the pod, register it and give
//!   the listeners to the data plane ([`PodServer`]).
//! - `del`: shut the listeners down, signal drain, forget the record.
//! - [`InPod::restore`]: at startup, serve again every persisted pod whose
//!   namespace still exists.
//!
//! Every mutation runs under one lock (`ops`): CNI requests are rare and
//! each takes milliseconds, and serializing them makes replacement and
//! removal simple to reason about. The registry itself sits behind its own
//! short-held lock so readers never wait on a handoff.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hawser_api::cni::enrolled::EnrolledNamespaces;
use hawser_api::cni::proto;
use hawser_api::cni::server::CniHandler;
use hawser_api::cni::{HBONE_INBOUND_PORT, INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT};
use nix::sys::socket::{Shutdown, shutdown};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::drain::DrainTrigger;
use super::enrollment::{decide_waiting, maintain_enrolled_file};
use super::netns::{NetnsError, NetnsHandle, NetnsId};
use super::persist::{AttachmentRecord, POD_RECORD_VERSION, PersistError, PodRecord, PodStore};
use super::pod::{ContainerId, ContainerIdError, PodContext, PodServer, PodSockets};
use crate::discovery::NodeConfig;
use crate::identity::WorkloadRef;

/// How long an `add` waits for an unknown pod to appear in the config (the
/// Pod exists before kubelet asks CNI for its network, so this is the
/// control plane's propagation delay; it must stay below the plugin's
/// `proxyTimeoutMs`).
pub const DEFAULT_ENROLLMENT_WAIT: Duration = Duration::from_secs(10);

/// How long a removed pod's connections get before they are closed.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often a waiting `add` looks at the config again.
const ENROLLMENT_POLL: Duration = Duration::from_millis(25);

/// How long an `add` is remembered for its handoff.
const PENDING_TTL: Duration = Duration::from_secs(600);

/// How the in-pod layer behaves.
#[derive(Clone, Debug)]
pub struct InPodSettings {
    /// The run directory shared with the CNI plugin: holds
    /// `enrolled-namespaces.json` and `pods/`.
    pub run_dir: PathBuf,
    /// Sent as `probe_source_addresses`: connections from them reach the
    /// pod uncaptured (kubelet's probes, SNATed to the probe address).
    pub probe_sources: Vec<IpAddr>,
    /// The host rules that send kubelet's probes from the probe address;
    /// each served pod's addresses are added to them.
    pub kubelet_probes: Option<Arc<super::probes::KubeletProbes>>,
    /// Bound on the wait for an unknown pod in `add`.
    pub enrollment_wait: Duration,
    /// Grace period of a removed pod's connections.
    pub drain_grace: Duration,
}

impl InPodSettings {
    /// Defaults for `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            probe_sources: Vec::new(),
            kubelet_probes: None,
            enrollment_wait: DEFAULT_ENROLLMENT_WAIT,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// Why the in-pod layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum InPodError {
    /// [`InPod::new`] was called outside a tokio runtime.
    #[error("the in-pod layer must be created inside a tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}

/// Why a pod could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The handoff names no valid container.
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    /// A handoff without the `AddPod` that must precede it.
    #[error("no AddPod was received for container {0} before its handoff")]
    NoAdd(ContainerId),
    /// A pod address is not an IP address.
    #[error("pod address {0:?} is not an IP address")]
    BadIp(String),
    /// The descriptor cannot be inspected.
    #[error("cannot inspect the handed-over netns descriptor: {0}")]
    Inspect(io::Error),
    /// The namespace cannot be used.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A listener could not be opened.
    #[error("cannot open listener {addr} in the pod network namespace {netns}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The namespace.
        netns: NetnsId,
        /// The failure.
        source: io::Error,
    },
    /// The record could not be written.
    #[error("cannot persist the pod, so it could not be restored after a restart: {0}")]
    Persist(#[from] PersistError),
}

/// What [`InPod::restore`] did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Pods served again.
    pub restored: Vec<ContainerId>,
    /// Records removed, with why (namespace gone or replaced, unreadable).
    pub dropped: Vec<(PathBuf, String)>,
    /// Pods whose namespace exists but could not be served; their records
    /// are kept for the next attempt.
    pub failed: Vec<(ContainerId, String)>,
}

/// An `add` waiting for its handoff.
struct PendingAdd {
    pod: proto::PodRef,
    netns_path: PathBuf,
    at: Instant,
}

/// A pod being served.
struct Served {
    ctx: Arc<PodContext>,
    record: PodRecord,
    trigger: DrainTrigger,
    /// Second descriptors of the three listening sockets, to stop them
    /// whatever the data plane does with its own.
    listeners: Vec<OwnedFd>,
}

struct Inner {
    settings: InPodSettings,
    config: watch::Receiver<Arc<NodeConfig>>,
    last_known: EnrolledNamespaces,
    server: Arc<dyn PodServer>,
    runtime: Handle,
    store: PodStore,
    ops: Mutex<()>,
    pending: Mutex<BTreeMap<ContainerId, PendingAdd>>,
    pods: Mutex<BTreeMap<ContainerId, Served>>,
    writer: JoinHandle<()>,
}

/// The in-pod layer; implements [`CniHandler`]. Cheap to clone. When the
/// last clone is dropped every pod is shut down as by [`InPod::shutdown`]
/// (records are kept for the next start).
#[derive(Clone)]
pub struct InPod {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPod")
            .field("run_dir", &self.inner.settings.run_dir)
            .field("pods", &self.inner.pods.lock().len())
            .finish()
    }
}

impl InPod {
    /// Starts the in-pod layer: loads the last persisted enrolled list (the
    /// fallback until the first configuration arrives) and starts keeping
    /// that file current from `config`. Must be called inside a tokio
    /// runtime; pods are handed to `server` in that runtime's context. Call
    /// [`Self::restore`] before serving the CNI socket.
    pub fn new(
        settings: InPodSettings,
        config: watch::Receiver<Arc<NodeConfig>>,
        server: Arc<dyn PodServer>,
    ) -> Result<Self, InPodError> {
        let runtime = Handle::try_current()?;
        let list_path = EnrolledNamespaces::path_in(&settings.run_dir);
        let last_known = match EnrolledNamespaces::load(&list_path) {
            Ok(list) => list.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the persisted enrolled namespaces");
                EnrolledNamespaces::default()
            }
        };
        let writer = runtime.spawn(maintain_enrolled_file(config.clone(), list_path));
        Ok(Self {
            inner: Arc::new(Inner {
                store: PodStore::new(&settings.run_dir),
                settings,
                config,
                last_known,
                server,
                runtime,
                ops: Mutex::new(()),
                pending: Mutex::default(),
                pods: Mutex::default(),
                writer,
            }),
        })
    }

    /// The pods currently served.
    pub fn pods(&self) -> Vec<Arc<PodContext>> {
        self.inner
            .pods
            .lock()
            .values()
            .map(|s| s.ctx.clone())
            .collect()
    }

    /// The pod served for `container`.
    pub fn pod(&self, container: &ContainerId) -> Option<Arc<PodContext>> {
        self.inner.pods.lock().get(container).map(|s| s.ctx.clone())
    }

    /// Number of pods served.
    pub fn len(&self) -> usize {
        self.inner.pods.lock().len()
    }

    /// Whether no pod is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves again every persisted pod whose network namespace still
    /// exists and is the one recorded at handoff; removes the records of the
    /// others. Runs on a blocking thread.
    pub async fn restore(&self) -> RestoreReport {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.inner.restore()).await {
            Ok(report) => report,
            // A panic in restore is a bug: surface it where it happened.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: nothing is served anyway.
            Err(_) => RestoreReport::default(),
        }
    }

    /// Stops serving every pod: listeners shut down, drain signaled. The
    /// records stay, so the next start restores the pods.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.abort();
        self.shutdown();
    }
}

fn pod_ips(list: &[String]) -> Result<Vec<IpAddr>, ServeError> {
    list.iter()
        .map(|s| s.parse().map_err(|_| ServeError::BadIp(s.clone())))
        .collect()
}

impl Inner {
    fn handoff(&self, req: proto::NetnsHandoff, fd: OwnedFd) -> Result<ContainerId, ServeError> {
        let attachment = req.attachment.unwrap_or_default();
        let id = ContainerId::new(attachment.container_id)?;
        let ips = pod_ips(&req.pod_ips)?;
        let netns_id = NetnsId::of(fd.as_fd()).map_err(ServeError::Inspect)?;
        let _op = self.ops.lock();
        let pending = self
            .pending
            .lock()
            .remove(&id)
            .ok_or_else(|| ServeError::NoAdd(id.clone()))?;
        let pod = match req.pod {
            Some(p) if !p.namespace.is_empty() => p,
            _ => pending.pod,
        };
        let this_attachment = AttachmentRecord {
            ifname: attachment.ifname,
            network: attachment.network_name,
        };

        // Another interface of a sandbox already served: same namespace,
        // same listeners; only the record grows.
        let existing = self
            .pods
            .lock()
            .get(&id)
            .map(|s| (s.record.netns, s.record.clone()));
        if let Some((served_netns, mut record)) = existing {
            if served_netns == netns_id {
                record.attachments.insert(this_attachment);
                self.store.store(&id, &record)?;
                if let Some(s) = self.pods.lock().get_mut(&id) {
                    s.record = record;
                }
                return Ok(id);
            }
            self.remove(
                &id,
                "its sandbox was handed over again with another namespace",
                true,
            );
        }
        // A pod has one live sandbox: an older one of the same pod was
        // deleted while nobody told us.
        if !pod.uid.is_empty() {
            let stale: Vec<ContainerId> = self
                .pods
                .lock()
                .iter()
                .filter(|(_, s)| s.record.uid == pod.uid)
                .map(|(k, _)| k.clone())
                .collect();
            for old in stale {
                self.remove(
                    &old,
                    "a newer sandbox of the same pod was handed over",
                    true,
                );
            }
        }

        let record = PodRecord {
            version: POD_RECORD_VERSION,
            container_id: id.to_string(),
            uid: pod.uid,
            namespace: pod.namespace,
            name: pod.name,
            ips,
            netns_path: pending.netns_path,
            netns: netns_id,
            attachments: [this_attachment].into_iter().collect(),
        };
        let netns = NetnsHandle::from_fd(fd)?;
        self.serve(id.clone(), record, netns, true)?;
        Ok(id)
    }

    /// Opens the listeners, persists (when `persist`), registers, and hands
    /// the pod to the data plane.
    fn serve(
        &self,
        id: ContainerId,
        record: PodRecord,
        netns: NetnsHandle,
        persist: bool,
    ) -> Result<(), ServeError> {
        let open = |port: u16| -> Result<(TcpListener, OwnedFd), ServeError> {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let err = |source| ServeError::Listen {
                addr,
                netns: netns.id(),
                source,
            };
            let listener = netns.bind_std(addr).map_err(err)?;
            let second = listener.as_fd().try_clone_to_owned().map_err(err)?;
            let _rt = self.runtime.enter();
            Ok((TcpListener::from_std(listener).map_err(err)?, second))
        };
        // The hop marker: connections the proxy opens in the pod and that
        // reach its own listeners are recognised by their mark.
        match netns.run(super::netns::mark_accepted_connections) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(netns = %netns.id(), error = %e, "no hop marker in this pod: loops are cut by the port checks alone");
            }
        }
        let (outbound, out_fd) = open(OUTBOUND_CAPTURE_PORT)?;
        let (inbound_plain, in_fd) = open(INBOUND_CAPTURE_PORT)?;
        let (hbone, hbone_fd) = open(HBONE_INBOUND_PORT)?;
        let sockets = PodSockets {
            outbound,
            inbound_plain,
            hbone,
        };
        let dups = vec![out_fd, in_fd, hbone_fd];
        if persist {
            self.store.store(&id, &record)?;
        }
        let (trigger, drain) = DrainTrigger::new();
        let ctx = Arc::new(PodContext {
            workload: WorkloadRef {
                namespace: record.namespace.clone(),
                pod_name: record.name.clone(),
                pod_uid: record.uid.clone(),
            },
            container_id: id.clone(),
            ips: record.ips.clone(),
            netns,
            drain,
        });
        tracing::info!(
            pod = %ctx.workload,
            uid = %record.uid,
            container = %id,
            netns = %ctx.netns.id(),
            ips = ?record.ips,
            "serving pod: listeners open on 15001, 15006, 15008 in its network namespace"
        );
        if let Some(probes) = &self.settings.kubelet_probes
            && let Err(e) = probes.enrolled(&record.ips)
        {
            tracing::error!(pod = %ctx.workload, error = %e, "kubelet's probes to this pod will be judged as node traffic");
        }
        self.pods.lock().insert(
            id,
            Served {
                ctx: ctx.clone(),
                record,
                trigger,
                listeners: dups,
            },
        );
        let _rt = self.runtime.enter();
        self.server.serve(ctx, sockets);
        Ok(())
    }

    /// Stops serving `id`; `forget` also removes its record.
    fn remove(&self, id: &ContainerId, why: &str, forget: bool) {
        let served = self.pods.lock().remove(id);
        if forget && let Err(e) = self.store.remove(id) {
            tracing::error!(container = %id, error = %e, "cannot remove the pod's record; it will be dropped at the next start if its namespace is gone");
        }
        let Some(served) = served else {
            return;
        };
        // shutdown(2) on a listening socket stops it at once: new
        // connections are refused and a pending accept returns an error,
        // whatever the data plane does with its own descriptor.
        for fd in &served.listeners {
            let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
        if let Some(probes) = &self.settings.kubelet_probes
            && let Err(e) = probes.removed(&served.record.ips)
        {
            tracing::warn!(pod = %served.ctx.workload, error = %e, "cannot withdraw the pod's addresses from the probe rules");
        }
        let grace = self.settings.drain_grace;
        let draining = served.trigger.start(grace);
        tracing::info!(pod = %served.ctx.workload, container = %id, reason = why, grace_ms = grace.as_millis() as u64, "pod removed: listeners closed, connections draining");
        let workload = served.ctx.workload.clone();
        let container = id.clone();
        let trigger = served.trigger;
        drop(served.ctx);
        drop(served.listeners);
        self.runtime.spawn(async move {
            tokio::select! {
                _ = trigger.drained() => {
                    tracing::debug!(pod = %workload, container = %container, "pod drained");
                }
                _ = tokio::time::sleep_until(draining.force_at + Duration::from_secs(1)) => {
                    tracing::warn!(pod = %workload, container = %container, holders = trigger.watchers(), "tasks still hold the removed pod after its forced-close deadline");
                }
            }
        });
    }

    fn del(&self, req: proto::DelPod) {
        let attachment = req.attachment.unwrap_or_default();
        let id = match ContainerId::new(attachment.container_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring CNI DEL");
                return;
            }
        };
        let _op = self.ops.lock();
        self.pending.lock().remove(&id);
        let gone = AttachmentRecord {
            ifname: attachment.ifname,
            network: attachment.network_name,
        };
        let remaining = {
            let mut pods = self.pods.lock();
            pods.get_mut(&id).map(|s| {
                let known = s.record.attachments.contains(&gone);
                let mut record = s.record.clone();
                record.attachments.remove(&gone);
                (known, record)
            })
        };
        if let Some((known, record)) = remaining
            && !record.attachments.is_empty()
        {
            if known {
                match self.store.store(&id, &record) {
                    Ok(()) => {
                        if let Some(s) = self.pods.lock().get_mut(&id) {
                            s.record = record;
                        }
                    }
                    Err(e) => {
                        tracing::error!(container = %id, error = %e, "cannot update the pod's record")
                    }
                }
            } else {
                tracing::info!(container = %id, ifname = %gone.ifname, network = %gone.network, "CNI DEL for an attachment never handed over; the pod's other attachments stay served");
            }
            return;
        }
        self.remove(&id, "CNI DEL", true);
    }

    fn shutdown(&self) {
        let _op = self.ops.lock();
        let ids: Vec<ContainerId> = self.pods.lock().keys().cloned().collect();
        for id in ids {
            self.remove(&id, "node proxy shutting down", false);
        }
    }

    fn restore(&self) -> RestoreReport {
        let _op = self.ops.lock();
        let mut report = RestoreReport::default();
        let records = match self.store.load_all() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the persisted pods");
                report
                    .dropped
                    .push((self.store.dir().to_path_buf(), format!("unreadable: {e}")));
                return report;
            }
        };
        for (path, loaded) in records {
            let (id, record) = match loaded {
                Ok(ok) => ok,
                Err(e) => {
                    self.drop_record(&mut report, &path, e.to_string());
                    continue;
                }
            };
            if self.pods.lock().contains_key(&id) {
                continue;
            }
            let netns = match NetnsHandle::open(&record.netns_path) {
                Ok(n) => n,
                Err(e @ (NetnsError::NotFound(_) | NetnsError::NotNetns { .. })) => {
                    self.drop_record(&mut report, &path, format!("the pod is gone: {e}"));
                    continue;
                }
                Err(e) => {
                    tracing::error!(container = %id, error = %e, "cannot reopen a persisted pod's namespace");
                    report.failed.push((id, e.to_string()));
                    continue;
                }
            };
            if netns.id() != record.netns {
                let why = format!(
                    "{} now names {}, not the pod's namespace {}: the sandbox was replaced",
                    record.netns_path.display(),
                    netns.id(),
                    record.netns
                );
                self.drop_record(&mut report, &path, why);
                continue;
            }
            match self.serve(id.clone(), record, netns, false) {
                Ok(()) => report.restored.push(id),
                Err(e) => {
                    tracing::error!(container = %id, error = %e, "cannot serve a persisted pod again");
                    report.failed.push((id, e.to_string()));
                }
            }
        }
        tracing::info!(
            restored = report.restored.len(),
            dropped = report.dropped.len(),
            failed = report.failed.len(),
            "persisted pods restored"
        );
        report
    }

    fn drop_record(&self, report: &mut RestoreReport, path: &std::path::Path, why: String) {
        tracing::info!(record = %path.display(), reason = %why, "dropping a persisted pod");
        if let Err(e) = self.store.remove_file(path) {
            tracing::error!(error = %e, "cannot remove a persisted pod");
        }
        report.dropped.push((path.to_path_buf(), why));
    }

    fn add(&self, req: proto::AddPod) -> proto::AddReply {
        let pod = req.pod.clone().unwrap_or_default();
        if pod.namespace.is_empty() {
            return proto::AddReply {
                enrolled: false,
                redirection: None,
                reason: "the request names no pod namespace (CNI_ARGS without K8S_POD_NAMESPACE)"
                    .into(),
            };
        }
        let decision = decide_waiting(
            &self.config,
            &self.last_known,
            &pod,
            self.settings.enrollment_wait,
            ENROLLMENT_POLL,
        );
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), uid = %pod.uid, enrolled = decision.enrolled, reason = %decision.reason, "CNI ADD");
        if !decision.enrolled {
            return proto::AddReply {
                enrolled: false,
                redirection: None,
                reason: decision.reason,
            };
        }
        let attachment = req.attachment.unwrap_or_default();
        let id = match ContainerId::new(attachment.container_id) {
            Ok(id) => id,
            Err(e) => {
                return proto::AddReply {
                    enrolled: false,
                    redirection: None,
                    reason: format!("{}; the pod cannot be served: {e}", decision.reason),
                };
            }
        };
        {
            let mut pending = self.pending.lock();
            pending.retain(|_, p| p.at.elapsed() < PENDING_TTL);
            pending.insert(
                id,
                PendingAdd {
                    pod,
                    netns_path: PathBuf::from(req.netns_path),
                    at: Instant::now(),
                },
            );
        }
        proto::AddReply {
            enrolled: true,
            redirection: Some(proto::Redirection {
                probe_source_addresses: self
                    .settings
                    .probe_sources
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                ..Default::default()
            }),
            reason: decision.reason,
        }
    }
}

impl CniHandler for InPod {
    fn add(&self, req: proto::AddPod) -> proto::AddReply {
        self.inner.add(req)
    }

    fn handoff(&self, req: proto::NetnsHandoff, netns: OwnedFd) -> proto::HandoffReply {
        let container = req
            .attachment
            .as_ref()
            .map(|a| a.container_id.clone())
            .unwrap_or_default();
        match self.inner.handoff(req, netns) {
            Ok(_) => proto::HandoffReply {
                accepted: true,
                message: String::new(),
            },
            Err(e) => {
                tracing::warn!(container = %container, error = %e, "netns handoff refused");
                proto::HandoffReply {
                    accepted: false,
                    message: e.to_string(),
                }
            }
        }
    }

    fn del(&self, req: proto::DelPod) {
        self.inner.del(req);
    }

    fn ping(&self) -> proto::Pong {
        proto::Pong {
            pods: u32::try_from(self.len()).unwrap_or(u32::MAX),
        }
    }
}
