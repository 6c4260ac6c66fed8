//! The mesh certificate authority.
//!
//! Signs X.509-SVIDs from CSRs: only the public key is taken from a CSR; the
//! identity comes from the caller's authorised request. The signing key is a
//! self-signed root persisted on disk ([`store`]) or an operator-supplied
//! intermediate. The trust bundle lists every root currently trusted, so a root
//! rotation can publish old and new roots side by side.

pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hawser_api::tls::{Svid, TrustBundle};
use hawser_api::{SpiffeId, TrustDomain};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::OffsetDateTime;

pub use store::{CaSource, RootRotation, StoreError};

/// The shape of issued leaf certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvidProfile {
    /// Validity of an issued certificate (default 24 h).
    pub lifetime: Duration,
    /// How far `notBefore` is set in the past, for peers whose clocks lag (default 5 min).
    pub backdate: Duration,
}

impl Default for SvidProfile {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(5 * 60),
        }
    }
}

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR is not DER PKCS#10 or its self-signature does not verify.
    #[error("certificate signing request is invalid: {0}")]
    BadCsr(String),
    /// The CSR's key is not ECDSA P-256.
    #[error("certificate signing request key must be ECDSA P-256, got {0}")]
    WrongKeyType(String),
    /// The identity to issue is not in this CA's trust domain.
    #[error("cannot issue {id}: this CA serves trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested identity.
        id: SpiffeId,
        /// This CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The identity is the control plane's or in the mesh's own space
    /// (other than a node proxy's): never issued from a CSR.
    #[error("cannot issue {0}: it is reserved for the mesh's own components")]
    Reserved(SpiffeId),
    /// The signing CA expires before a leaf could be useful.
    #[error("the signing CA certificate has expired or expires within a minute")]
    IssuerExpired,
    /// The certificate just issued does not load with its key (a CA bug).
    #[error("the issued certificate is unusable: {0}")]
    Unusable(String),
    /// rcgen failed to build or sign the certificate.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// An issued certificate chain.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then any intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's expiry.
    pub not_after: SystemTime,
}

/// A signing CA: the issuer, its chain, and the trust bundle it belongs to.
pub struct Ca {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    issuer_not_after: OffsetDateTime,
    /// Certificates between the leaf and the root (the operator's intermediate
    /// and its parents); empty when the root signs directly.
    intermediates: Vec<CertificateDer<'static>>,
    bundle: Arc<TrustBundle>,
    profile: SvidProfile,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("issuer_not_after", &self.issuer_not_after)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.bundle.roots().len())
            .finish()
    }
}

impl Ca {
    /// Loads (or, for a self-signed root on first start, creates) the CA.
    pub fn load(
        trust_domain: TrustDomain,
        source: &CaSource,
        profile: SvidProfile,
    ) -> Result<Self, StoreError> {
        let material = source.load_or_create(&trust_domain)?;
        let issuer_not_after = material.issuer_not_after;
        let ca = Self {
            trust_domain,
            issuer: material.issuer,
            issuer_not_after,
            intermediates: material.intermediates,
            bundle: Arc::new(material.bundle),
            profile,
        };
        ca.self_test()?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and verifies it against the bundle, so a CA whose
    /// intermediate does not chain to the configured root fails at startup.
    fn self_test(&self) -> Result<(), StoreError> {
        let probe = SpiffeId::node(&self.trust_domain, "ca-self-test")
            .map_err(|e| StoreError::Invalid(format!("trust domain: {e}")))?;
        let svid = self
            .issue_with_new_key(&probe)
            .map_err(|e| StoreError::Invalid(format!("cannot sign with the CA key: {e}")))?;
        hawser_api::tls::verify_peer(
            &self.bundle,
            &self.trust_domain,
            &svid.chain()[0],
            &svid.chain()[1..],
            rustls_pki_types::UnixTime::now(),
            Some(&probe),
        )
        .map_err(|e| {
            StoreError::Invalid(format!(
                "certificates signed by this CA do not verify against its trust bundle: {e}"
            ))
        })?;
        Ok(())
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Every root currently trusted.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.clone()
    }

    /// The leaf profile.
    pub fn profile(&self) -> SvidProfile {
        self.profile
    }

    /// Signs a leaf for `id` with the public key of `csr_der`. Nothing else in
    /// the CSR (subject, SANs, extensions) is used. Only workload and node
    /// proxy identities are issued from CSRs: the control plane's identity
    /// and any other `/hawser/` path are refused ([`CaError::Reserved`]).
    pub fn issue(&self, csr_der: &[u8], id: &SpiffeId) -> Result<Issued, CaError> {
        if !id.is_workload() && id.node_name().is_none() {
            return Err(CaError::Reserved(id.clone()));
        }
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::WrongKeyType(format!(
                "{:?}",
                csr.public_key.algorithm()
            )));
        }
        self.sign(&csr.public_key, id)
    }

    /// Generates a key here and issues a leaf for it (the control plane's own
    /// serving certificate; node proxies always send CSRs instead).
    pub fn issue_with_new_key(&self, id: &SpiffeId) -> Result<Svid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issued = self.sign(&key, id)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Svid::new(issued.chain, der).map_err(|e| CaError::Unusable(e.to_string()))
    }

    fn sign(&self, key: &impl rcgen::PublicKeyData, id: &SpiffeId) -> Result<Issued, CaError> {
        if id.trust_domain() != self.trust_domain.as_str() {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let now = OffsetDateTime::now_utc();
        if self.issuer_not_after <= now + Duration::from_secs(60) {
            return Err(CaError::IssuerExpired);
        }
        let mut params = CertificateParams::default();
        // An empty subject: the identity is the URI SAN alone (rcgen then marks the
        // SAN extension critical, as RFC 5280 requires).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.as_str()
                .to_owned()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - self.profile.backdate;
        params.not_after = (now + self.profile.lifetime).min(self.issuer_not_after);
        let cert = params.signed_by(key, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(cert.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        Ok(Issued {
            chain,
            not_after: params.not_after.into(),
        })
    }
}

/// A positive 128-bit serial number (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero octet
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests;
