//! Where pods are scheduled: the source of truth for the impersonation check.
//!
//! The config index implements [`PodSource`] once it knows the cluster's pods;
//! [`StaticPods`] is an in-memory table for tests and embedding.

use std::collections::HashMap;
use std::sync::RwLock;

/// What the CA needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's UID.
    pub uid: String,
    /// The node the pod is scheduled on.
    pub node: String,
    /// The pod's ServiceAccount (its identity).
    pub service_account: String,
}

/// Looks pods up by namespace and name.
pub trait PodSource: Send + Sync + 'static {
    /// The pod `namespace/name`, if it exists.
    fn pod(&self, namespace: &str, name: &str) -> Option<PodIdentity>;
}

/// An in-memory pod table.
#[derive(Debug, Default)]
pub struct StaticPods {
    pods: RwLock<HashMap<(String, String), PodIdentity>>,
}

impl StaticPods {
    /// Adds or replaces a pod.
    pub fn insert(&self, namespace: &str, name: &str, pod: PodIdentity) {
        self.pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_owned(), name.to_owned()), pod);
    }

    /// Removes a pod.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

impl PodSource for StaticPods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodIdentity> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}
