//! Generated gRPC code for Hawser's protocols (see `api/proto/`).

/// The certificate authority protocol (`hawser.identity.v1`).
#[allow(missing_docs, clippy::all, unreachable_pub, rust_2018_idioms)]
pub mod identity {
    tonic::include_proto!("hawser.identity.v1");
}

/// The CNI plugin ↔ node proxy protocol (`hawser.cni.v1`); see [`crate::cni`].
#[allow(missing_docs, clippy::all, unreachable_pub, rust_2018_idioms)]
pub mod cni {
    tonic::include_proto!("hawser.cni.v1");
}
