//! In-process tests of the mesh model: manifests in, per-node config
//! (`hawser.discovery.v1`) out, requests evaluated against that config with
//! no network.

mod conformance;
mod index;
mod semantics;
mod support;
