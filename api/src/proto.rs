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

/// Per-node mesh configuration pushed by the control plane (`hawser.discovery.v1`).
#[allow(missing_docs, clippy::all, unreachable_pub, rust_2018_idioms)]
pub mod discovery {
    tonic::include_proto!("hawser.discovery.v1");
}

/// The lab's echo backend (`hawser.echo.v1`); served by `hawser-echo`.
#[allow(missing_docs, clippy::all, unreachable_pub, rust_2018_idioms)]
pub mod echo {
    tonic::include_proto!("hawser.echo.v1");
}
