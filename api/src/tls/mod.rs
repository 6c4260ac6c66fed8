//! SPIFFE-aware TLS for every Hawser connection: the trust bundle, X.509-SVIDs
//! (certificate chain + key), rustls verifiers that check the chain *and* the
//! peer's SPIFFE ID, and builders for TLS 1.3 client and server configs.
//!
//! Verification never looks at DNS names: a peer is who its single URI SAN says,
//! provided the chain leads to a root in the bundle.

mod bundle;
mod config;
mod svid;
mod verify;

pub use bundle::{TrustBundle, TrustBundleError};
pub use config::{CertSlot, client_config, install_crypto_provider, provider, server_config};
pub use svid::{Svid, SvidError};
pub use verify::{
    ClientAuth, PeerVerifyError, SpiffeClientVerifier, SpiffeServerVerifier, peer_identity,
    uri_sans, verify_peer,
};
