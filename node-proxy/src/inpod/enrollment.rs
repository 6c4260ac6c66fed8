//! Which pods are captured, decided from the node's configuration, and the
//! enrolled-namespaces file the CNI plugin falls back on while the proxy is
//! down.
//!
//! A pod is captured when the control plane marks its workload enrolled, or
//! when any workload of its namespace is enrolled (the mark comes from the
//! namespace label, so every pod of a namespace shares it). The control plane
//! learns of a pod when it is scheduled, slightly before kubelet runs CNI, so
//! an unknown pod gets a bounded wait for the config to catch up before the
//! namespace alone decides. Until the first configuration arrives, the last
//! persisted list decides, so a restarting proxy does not let pods of
//! enrolled namespaces start outside the mesh.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hawser_api::cni::enrolled::EnrolledNamespaces;
use hawser_api::cni::proto::PodRef;
use hawser_api::proto::discovery::{ResourceType, Workload, resource::Kind};
use tokio::sync::watch;

use crate::discovery::NodeConfig;

/// Delay before retrying a failed write of the enrolled-namespaces file.
const WRITE_RETRY: Duration = Duration::from_secs(2);

/// The namespaces with at least one enrolled workload.
pub fn enrolled_namespaces(config: &NodeConfig) -> BTreeSet<String> {
    config
        .workloads()
        .filter(|w| w.enrolled)
        .map(|w| w.namespace.clone())
        .collect()
}

/// An enrollment answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the pod is captured.
    pub enrolled: bool,
    /// Why, for the plugin's log.
    pub reason: String,
    /// Whether more configuration could change the answer (the pod is not
    /// known yet and its namespace is not enrolled).
    pub provisional: bool,
}

fn find_workload<'a>(config: &'a NodeConfig, pod: &PodRef) -> Option<&'a Workload> {
    if !pod.uid.is_empty() {
        return match config
            .get(ResourceType::Workload, &pod.uid)
            .and_then(|r| r.kind.as_ref())
        {
            Some(Kind::Workload(w)) => Some(w),
            _ => None,
        };
    }
    config
        .workloads()
        .find(|w| w.namespace == pod.namespace && w.name == pod.name)
}

/// Decides for `pod` with the configuration at hand. `last_known` is the
/// list persisted by a previous run, used only while no configuration has
/// arrived (version 0).
pub fn decide(config: &NodeConfig, last_known: &EnrolledNamespaces, pod: &PodRef) -> Decision {
    let ns = &pod.namespace;
    let who = if pod.uid.is_empty() {
        format!("pod {ns}/{}", pod.name)
    } else {
        format!("pod {ns}/{} (uid {})", pod.name, pod.uid)
    };
    let version = config.version();
    if version == 0 {
        let enrolled = last_known.contains(ns);
        let verdict = if enrolled { "is" } else { "is not" };
        return Decision {
            enrolled,
            reason: format!(
                "no configuration from the control plane yet; namespace {ns} {verdict} enrolled per the last persisted list"
            ),
            provisional: !enrolled,
        };
    }
    let ns_enrolled = config.workloads().any(|w| w.enrolled && &w.namespace == ns);
    match find_workload(config, pod) {
        Some(w) if w.enrolled => Decision {
            enrolled: true,
            reason: format!("{who} is enrolled (config version {version})"),
            provisional: false,
        },
        Some(_) if ns_enrolled => Decision {
            enrolled: true,
            reason: format!(
                "{who} is not marked enrolled but namespace {ns} has enrolled workloads (config version {version})"
            ),
            provisional: false,
        },
        Some(_) => Decision {
            enrolled: false,
            reason: format!(
                "{who} is not enrolled: namespace {ns} is not in the mesh (config version {version})"
            ),
            provisional: false,
        },
        None if ns_enrolled => Decision {
            enrolled: true,
            reason: format!(
                "{who} is not known yet; namespace {ns} has enrolled workloads (config version {version})"
            ),
            provisional: false,
        },
        None => Decision {
            enrolled: false,
            reason: format!(
                "{who} is unknown to the control plane and namespace {ns} has no enrolled workloads (config version {version})"
            ),
            provisional: true,
        },
    }
}

/// Decides for `pod`, waiting up to `wait` (polling every `poll`) while the
/// answer is provisional. Blocks the calling thread: it runs on the CNI
/// conversation's own thread.
pub fn decide_waiting(
    config: &watch::Receiver<Arc<NodeConfig>>,
    last_known: &EnrolledNamespaces,
    pod: &PodRef,
    wait: Duration,
    poll: Duration,
) -> Decision {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let current = config.borrow().clone();
        let mut d = decide(&current, last_known, pod);
        if !d.provisional {
            return d;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            d.reason.push_str(&format!(" after waiting {wait:?}"));
            return d;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Keeps `<run dir>/enrolled-namespaces.json` equal to the namespaces
/// enrolled in the current configuration; runs until the configuration
/// sender is dropped. Nothing is written before the first configuration
/// arrives, so a restarting proxy never replaces the last known list with an
/// empty one.
pub async fn maintain_enrolled_file(mut config: watch::Receiver<Arc<NodeConfig>>, path: PathBuf) {
    let mut written: Option<BTreeSet<String>> = None;
    loop {
        let (version, namespaces) = {
            let c = config.borrow_and_update();
            (c.version(), enrolled_namespaces(&c))
        };
        let mut failed = false;
        if version > 0 && written.as_ref() != Some(&namespaces) {
            let list = EnrolledNamespaces::new(namespaces.iter().cloned());
            let target = path.clone();
            match tokio::task::spawn_blocking(move || list.store(&target)).await {
                Ok(Ok(())) => {
                    tracing::info!(path = %path.display(), version, namespaces = ?namespaces, "enrolled namespaces persisted");
                    written = Some(namespaces);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot persist the enrolled namespaces; retrying");
                    failed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "enrolled-namespaces writer failed; retrying");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(WRITE_RETRY) => {}
            }
        } else if config.changed().await.is_err() {
            return;
        }
    }
}
