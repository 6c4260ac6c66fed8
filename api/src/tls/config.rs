//! TLS 1.3 client and server configs with SPIFFE verification, and a
//! swappable certificate slot so renewals apply without rebuilding configs.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::{SpiffeClientVerifier, SpiffeServerVerifier, Svid};

/// The one crypto provider Hawser uses: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs aws-lc-rs as the process-wide rustls provider. Binaries call this
/// first thing in `main`; calling it twice is harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The current certificate of one identity, replaced in place on renewal.
///
/// Serves as both client and server certificate resolver: connections opened
/// after [`CertSlot::set`] present the new certificate.
#[derive(Default)]
pub struct CertSlot {
    current: RwLock<Option<Svid>>,
}

impl CertSlot {
    /// A slot holding `svid`.
    pub fn new(svid: Svid) -> Self {
        Self {
            current: RwLock::new(Some(svid)),
        }
    }

    /// Replaces the certificate.
    pub fn set(&self, svid: Svid) {
        // A poisoned lock only means a writer panicked mid-assignment of an Option;
        // the value is still a whole Svid or None.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(svid);
    }

    /// The current certificate, if any.
    pub fn get(&self) -> Option<Svid> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Only the rustls key, for every handshake (no copy of the SVID).
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Svid::certified_key)
    }
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("id", &self.get().map(|s| s.id().clone()))
            .finish()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// A TLS 1.3 server config presenting `cert`, verifying clients with `verifier`,
/// offering `alpn` protocols.
pub fn server_config(
    cert: Arc<dyn ResolvesServerCert>,
    verifier: Arc<SpiffeClientVerifier>,
    alpn: &[&[u8]],
) -> ServerConfig {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The provider is fixed and supports TLS 1.3, so this cannot fail.
        .unwrap_or_else(|e| unreachable!("aws-lc-rs supports TLS 1.3: {e}"))
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A TLS 1.3 client config verifying servers with `verifier`, presenting
/// `cert` when given, offering `alpn` protocols.
pub fn client_config(
    cert: Option<Arc<dyn ResolvesClientCert>>,
    verifier: Arc<SpiffeServerVerifier>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| unreachable!("aws-lc-rs supports TLS 1.3: {e}"))
        .dangerous()
        // Not dangerous in fact: the SPIFFE verifier checks the chain and identity
        // instead of a DNS name, as every SPIFFE implementation does.
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}
