//! Key generation and certificate signing requests. Keys are P-256 and exist
//! only in this process.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A fresh private key and a CSR for it.
pub struct KeyAndCsr {
    /// The private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The DER PKCS#10 request, signed by `key`. It names nothing: the CA
    /// decides the identity.
    pub csr_der: Vec<u8>,
}

/// Generates a P-256 key and a CSR proving possession of it.
pub fn generate_key_and_csr() -> Result<KeyAndCsr, rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        csr_der: csr.der().to_vec(),
    })
}
