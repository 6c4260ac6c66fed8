//! Test PKI: a throwaway root that issues good SVIDs and, on purpose, each kind
//! of bad certificate the verifiers must refuse. The one source of test
//! certificates in the workspace (enabled by the `testing` feature).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{Svid, TrustBundle};

/// A root CA for tests.
pub struct TestPki {
    trust_domain: TrustDomain,
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// A fresh P-256 root for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "hawser test root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(86400 * 365);
        let cert = params.self_signed(&key).unwrap();
        Self {
            trust_domain: TrustDomain::new(trust_domain).unwrap(),
            root_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn trust_domain(&self) -> TrustDomain {
        self.trust_domain.clone()
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_der(vec![self.root_der()]).unwrap()
    }

    pub fn bundle_arc(&self) -> Arc<TrustBundle> {
        Arc::new(self.bundle())
    }

    fn leaf_params(uris: &[&str], lifetime: (OffsetDateTime, OffsetDateTime)) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = lifetime.0;
        p.not_after = lifetime.1;
        p
    }

    fn sign(&self, params: &CertificateParams) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), key)
    }

    /// A valid SVID for `id`, valid for an hour.
    pub fn leaf(&self, id: &SpiffeId) -> Svid {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(
            id,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }

    /// An SVID for `id` with the given validity.
    pub fn leaf_valid(
        &self,
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Svid {
        let (der, key) = self.sign(&Self::leaf_params(&[id.as_str()], (not_before, not_after)));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Svid::new(vec![der], key).unwrap()
    }

    /// Signs the public key of `csr_der` as an SVID for `id` with the given validity.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> CertificateDer<'static> {
        let csr =
            rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
        let params = Self::leaf_params(&[id.as_str()], (not_before, not_after));
        params
            .signed_by(&csr.public_key, &self.issuer)
            .unwrap()
            .der()
            .clone()
    }

    /// An SVID (with key) for `id` that expired an hour ago.
    pub fn expired_svid(&self, id: &SpiffeId) -> Svid {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(
            id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
    }

    /// An intermediate CA certificate (cA=true) carrying `id`, with its key, to
    /// present as if it were a workload certificate.
    pub fn ca_as_leaf_svid(&self, id: &SpiffeId) -> Svid {
        let mut p = Self::leaf_params(&[id.as_str()], Self::hour());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (der, key) = self.sign(&p);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Svid::new(vec![der], key).unwrap()
    }

    /// A leaf for `id` that expired an hour ago.
    pub fn expired_leaf(&self, id: &SpiffeId) -> CertificateDer<'static> {
        let now = OffsetDateTime::now_utc();
        let lifetime = (
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        self.sign(&Self::leaf_params(&[id.as_str()], lifetime)).0
    }

    /// A leaf carrying `id` and a second URI SAN.
    pub fn leaf_with_two_uri_sans(&self, id: &SpiffeId) -> CertificateDer<'static> {
        let second = format!("{id}-twin");
        self.sign(&Self::leaf_params(&[id.as_str(), &second], Self::hour()))
            .0
    }

    /// A leaf whose URI SAN is `uri` verbatim (to test non-canonical IDs).
    pub fn leaf_with_raw_uri(&self, uri: &str) -> CertificateDer<'static> {
        self.sign(&Self::leaf_params(&[uri], Self::hour())).0
    }

    /// An intermediate CA certificate (cA=true) carrying `id`, used as a leaf.
    pub fn ca_as_leaf(&self, id: &SpiffeId) -> CertificateDer<'static> {
        let mut p = Self::leaf_params(&[id.as_str()], Self::hour());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        self.sign(&p).0
    }

    /// Writes an intermediate CA signed by this root into `dir` as an operator
    /// would hand it over: `ca-cert.pem`, `ca-key.pem` (0600) and `cert-chain.pem`
    /// (the root). Returns the three paths.
    pub fn write_intermediate(&self, dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        use std::os::unix::fs::PermissionsExt;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "operator intermediate");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(3600);
        p.not_after = now + Duration::from_secs(86400 * 30);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let paths = [
            dir.join("ca-cert.pem"),
            dir.join("ca-key.pem"),
            dir.join("cert-chain.pem"),
        ];
        std::fs::write(&paths[0], cert.pem()).unwrap();
        std::fs::write(&paths[1], key.serialize_pem()).unwrap();
        std::fs::set_permissions(&paths[1], std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&paths[2], self.bundle().to_pem()).unwrap();
        paths
    }

    fn hour() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }
}

/// A DER CSR for a fresh P-256 key that asks for `requested_uri` (which a CA
/// must ignore) and claims to be a CA in its subject.
pub fn p256_csr(requested_uri: &str) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(requested_uri.try_into().unwrap())];
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "please make me admin");
    let csr = p.serialize_request(&key).unwrap();
    (csr.der().to_vec(), key)
}

/// A DER CSR for an Ed25519 key (a key type the mesh profile does not allow).
pub fn ed25519_csr() -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.serialize_request(&key).unwrap().der().to_vec()
}
