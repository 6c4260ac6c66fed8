//! An X.509-SVID: a certificate chain whose leaf carries one SPIFFE ID, with its key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::verify::leaf_identity;
use crate::spiffe::SpiffeId;

/// Why certificate material is not a usable SVID.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// The chain is empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The leaf could not be parsed or has no single valid SPIFFE ID.
    #[error("leaf certificate is not an X.509-SVID: {0}")]
    NotSvid(#[from] super::PeerVerifyError),
    /// The private key does not load or does not match the leaf.
    #[error("private key does not fit the certificate: {0}")]
    Key(rustls::Error),
}

/// A certificate chain (leaf first) with its private key, ready for rustls.
#[derive(Clone, Debug)]
pub struct Svid {
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    key: Arc<CertifiedKey>,
}

impl Svid {
    /// Checks the chain's leaf is an SVID and the key matches it.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, SvidError> {
        let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
        let (id, not_before, not_after) = leaf_identity(leaf)?;
        let key = CertifiedKey::from_der(chain, key, &super::provider()).map_err(SvidError::Key)?;
        Ok(Self {
            id,
            not_before,
            not_after,
            key: Arc::new(key),
        })
    }

    /// The SPIFFE ID in the leaf's URI SAN.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Whether the leaf is still valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    /// The chain and signing key in rustls' form.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }
}
