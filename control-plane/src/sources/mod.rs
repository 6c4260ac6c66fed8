//! Where the mesh's objects come from. Each source converts its objects into
//! the [`model`](crate::model) at the edge (through [`convert`](crate::convert))
//! and feeds the same [`index`](crate::index):
//!
//! - [`manifests`]: a watched directory of YAML manifests (lab, tests, demos).
//!
//! The Kubernetes API source (kube watchers) plugs in here the same way.

pub mod manifests;
