//! The trust bundle: every root certificate the mesh currently trusts.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustBundleError {
    /// No root certificate was given.
    #[error("trust bundle has no root certificates")]
    Empty,
    /// A PEM block could not be read.
    #[error("trust bundle PEM is malformed: {0}")]
    Pem(String),
    /// A root is not a usable trust anchor.
    #[error("trust bundle root #{index} is not a valid certificate: {reason}")]
    BadRoot {
        /// Position in the bundle, from 0.
        index: usize,
        /// What was wrong.
        reason: String,
    },
}

/// The roots peers are verified against (old and new ones during a root rotation).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER certificates.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, TrustBundleError> {
        if roots.is_empty() {
            return Err(TrustBundleError::Empty);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| TrustBundleError::BadRoot {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots, anchors })
    }

    /// Builds a bundle from concatenated PEM `CERTIFICATE` blocks.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustBundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustBundleError::Pem(e.to_string()))?;
        Self::from_der(roots)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The roots as concatenated PEM, as `openssl verify -CAfile` reads them.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }
}

/// Encodes DER as one PEM block with the given label.
pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;

    #[test]
    fn pem_round_trip() {
        let a = TestPki::new("cluster.local");
        let b = TestPki::new("cluster.local");
        let bundle = TrustBundle::from_der(vec![a.root_der(), b.root_der()]).unwrap();
        let again = TrustBundle::from_pem(bundle.to_pem().as_bytes()).unwrap();
        assert_eq!(again.roots(), bundle.roots());
        assert_eq!(again.anchors().len(), 2);
    }

    #[test]
    fn rejects_empty_and_garbage() {
        assert!(matches!(
            TrustBundle::from_pem(b""),
            Err(TrustBundleError::Empty)
        ));
        let err = TrustBundle::from_der(vec![CertificateDer::from(vec![1, 2, 3])]).unwrap_err();
        assert!(err.to_string().contains("root #0"), "{err}");
    }
}
