//! The node proxy's admin API types that other programs read: both ends
//! (the proxy writing, `hawser verify-mtls` and the lab reading) use these,
//! so the schema is declared once.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// `GET /connections`: the proxy's live and recently closed HBONE
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsDump {
    /// One per connection.
    pub connections: Vec<HboneConnection>,
}

/// Which end of an HBONE connection a proxy was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionDirection {
    /// The proxy opened it for a client pod on its node.
    Outbound,
    /// The proxy accepted it on a server pod's 15008.
    Inbound,
}

/// One HBONE connection as a node proxy records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HboneConnection {
    /// Outbound (client's node) or inbound (server's node).
    pub direction: ConnectionDirection,
    /// The pod on this proxy's node it serves, `<namespace>/<name>`.
    pub pod: String,
    /// This end's address (the pod's IP: tunnels leave from and arrive in
    /// the pod's namespace; inbound, its `:15008`).
    pub local: SocketAddr,
    /// The other end's address.
    pub peer: SocketAddr,
    /// The identity this end presented.
    #[serde(with = "spiffe_id_serde")]
    pub local_identity: SpiffeId,
    /// The identity the other end presented, as verified.
    #[serde(with = "spiffe_id_serde")]
    pub peer_identity: SpiffeId,
    /// Negotiated version, as rustls names it (`TLSv1_3`).
    pub tls_version: String,
    /// Negotiated cipher suite, as rustls names it (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: String,
    /// Negotiated ALPN protocol.
    #[serde(default)]
    pub alpn: Option<String>,
    /// When it was opened, ms since the epoch.
    pub opened_unix_ms: u64,
    /// When it was closed; `None` while open.
    #[serde(default)]
    pub closed_unix_ms: Option<u64>,
    /// Streams (HTTP/2 CONNECTs) it has carried.
    #[serde(default)]
    pub streams: u64,
}

mod spiffe_id_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::SpiffeId;

    pub fn serialize<S: Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}
