//! Where pods are scheduled: the source of truth for the impersonation check.
//!
//! The config index ([`crate::index::SharedIndex`]) is the pod source of a
//! running control plane; [`StaticPods`] is an in-memory table for tests.

use std::collections::HashMap;
use std::sync::RwLock;

pub use crate::model::PodIdentity;

/// Looks pods up by namespace and name.
pub trait PodSource: Send + Sync + 'static {
    /// The pod `namespace/name`, if it exists.
    fn pod(&self, namespace: &str, name: &str) -> Option<PodIdentity>;
}

impl PodSource for crate::index::SharedIndex {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodIdentity> {
        self.read().pod_identity(namespace, name)
    }
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
