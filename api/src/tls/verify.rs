//! Peer verification: the chain leads to a root in the trust bundle, the leaf is
//! an end entity with exactly one URI SAN holding a canonical SPIFFE ID in our
//! trust domain, and, where the caller expects someone, it is that identity.
//!
//! Every failure is a distinct [`PeerVerifyError`], surfaced through rustls as
//! `CertificateError::Other`, so logs say *why* a peer was refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use super::TrustBundle;
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a peer certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerVerifyError {
    /// The chain does not lead to any root in the trust bundle.
    #[error("certificate is not issued by any root in the mesh trust bundle (foreign CA?)")]
    UnknownIssuer,
    /// The leaf (or a certificate in its chain) has expired.
    #[error("certificate expired at {not_after} (unix seconds), now is {now}")]
    Expired {
        /// Expiry, unix seconds.
        not_after: u64,
        /// The verifier's current time, unix seconds.
        now: u64,
    },
    /// The leaf is not valid yet.
    #[error("certificate is not valid until {not_before} (unix seconds), now is {now}")]
    NotYetValid {
        /// Start of validity, unix seconds.
        not_before: u64,
        /// The verifier's current time, unix seconds.
        now: u64,
    },
    /// A CA certificate (basicConstraints cA=true) was presented as the leaf.
    #[error("a CA certificate was presented as a workload certificate")]
    CaUsedAsLeaf,
    /// The leaf lacks the extended key usage for this side of the connection.
    #[error("certificate lacks the required extended key usage ({0})")]
    WrongKeyUsage(&'static str),
    /// The leaf has no URI SAN.
    #[error("certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a canonical SPIFFE ID.
    #[error("certificate URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[from] SpiffeIdError),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("peer {actual} is not in trust domain {expected}")]
    WrongTrustDomain {
        /// Our trust domain.
        expected: String,
        /// The peer's identity.
        actual: SpiffeId,
    },
    /// The peer is a valid mesh member, but not the one expected.
    #[error("peer is {actual}, expected {expected}")]
    IdentityMismatch {
        /// Whom we expected.
        expected: SpiffeId,
        /// Whom we got.
        actual: SpiffeId,
    },
    /// Only a workload may connect here, and the peer is a mesh component
    /// (a node proxy, the control plane) or otherwise not a workload.
    #[error("peer {0} is not a workload (/ns/<namespace>/sa/<service-account>)")]
    NotAWorkload(SpiffeId),
    /// The certificate bytes are not a well-formed X.509 certificate.
    #[error("certificate is malformed: {0}")]
    Malformed(String),
    /// Any other chain validation failure.
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
}

impl From<PeerVerifyError> for rustls::Error {
    fn from(e: PeerVerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

impl PeerVerifyError {
    /// Finds the verification error inside a rustls (or I/O-wrapped rustls) error.
    pub fn from_rustls(err: &rustls::Error) -> Option<&Self> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
                e.downcast_ref::<Self>()
            }
            _ => None,
        }
    }
}

/// Which extended key usage a peer's leaf must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
}

/// Verifies `end_entity` (+ `intermediates`) against `bundle` at `now` and returns
/// the peer's SPIFFE ID, which must be in `trust_domain` and, if `expected` is
/// given, equal to it.
pub fn verify_peer(
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    expected: Option<&SpiffeId>,
) -> Result<SpiffeId, PeerVerifyError> {
    verify_for(
        bundle,
        trust_domain,
        end_entity,
        intermediates,
        now,
        expected,
        Usage::Server,
    )
}

fn verify_for(
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    expected: Option<&SpiffeId>,
    usage: Usage,
) -> Result<SpiffeId, PeerVerifyError> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| PeerVerifyError::Malformed(e.to_string()))?;
    let ku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(
        algorithms().all,
        bundle.anchors(),
        intermediates,
        now,
        ku,
        None,
        None,
    )
    .map_err(|e| map_webpki(e, usage))?;

    let (id, _, _) = leaf_identity(end_entity)?;
    if id.trust_domain() != trust_domain.as_str() {
        return Err(PeerVerifyError::WrongTrustDomain {
            expected: trust_domain.to_string(),
            actual: id,
        });
    }
    if let Some(expected) = expected.filter(|e| **e != id) {
        return Err(PeerVerifyError::IdentityMismatch {
            expected: expected.clone(),
            actual: id,
        });
    }
    Ok(id)
}

fn map_webpki(e: webpki::Error, usage: Usage) -> PeerVerifyError {
    use webpki::Error as W;
    match e {
        // A root with the issuer's name exists but did not sign this certificate:
        // to us that is the same as a foreign CA (two meshes may name roots alike).
        W::UnknownIssuer | W::InvalidSignatureForPublicKey => PeerVerifyError::UnknownIssuer,
        W::CertExpired { time, not_after } => PeerVerifyError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        W::CertNotValidYet { time, not_before } => PeerVerifyError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        W::CaUsedAsEndEntity => PeerVerifyError::CaUsedAsLeaf,
        W::RequiredEkuNotFoundContext(_) => PeerVerifyError::WrongKeyUsage(match usage {
            Usage::Server => "serverAuth",
            Usage::Client => "clientAuth",
        }),
        other => PeerVerifyError::Chain(format!("{other:?}")),
    }
}

/// Every URI SAN of a certificate, in order.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, PeerVerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PeerVerifyError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerVerifyError::Malformed(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE ID and validity of a leaf, without checking its chain.
pub(crate) fn leaf_identity(
    der: &[u8],
) -> Result<(SpiffeId, SystemTime, SystemTime), PeerVerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PeerVerifyError::Malformed(e.to_string()))?;
    let validity = cert.validity();
    let to_system = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let (nb, na) = (
        to_system(&validity.not_before),
        to_system(&validity.not_after),
    );
    let uris = uri_sans(der)?;
    match uris.as_slice() {
        [] => Err(PeerVerifyError::NoUriSan),
        [one] => Ok((SpiffeId::parse(one)?, nb, na)),
        many => Err(PeerVerifyError::MultipleUriSans(many.len())),
    }
}

/// The already-verified peer's SPIFFE ID of an established TLS connection.
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    leaf_identity(leaf).ok().map(|(id, _, _)| id)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

/// Verifies servers (used by TLS clients): the server's SPIFFE ID, never its DNS name.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    trust_domain: TrustDomain,
    expected: Option<SpiffeId>,
}

impl SpiffeServerVerifier {
    /// A verifier accepting any server in `trust_domain` chaining to `bundle`,
    /// or only `expected` when given.
    pub fn new(
        bundle: Arc<TrustBundle>,
        trust_domain: TrustDomain,
        expected: Option<SpiffeId>,
    ) -> Self {
        Self {
            bundle,
            trust_domain,
            expected,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_for(
            &self.bundle,
            &self.trust_domain,
            end_entity,
            intermediates,
            now,
            self.expected.as_ref(),
            Usage::Server,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Whether a TLS server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Handshakes without a client certificate fail (HBONE, discovery).
    Required,
    /// A client may connect without one; one it does present is fully verified
    /// (the CA's bootstrap call).
    Optional,
}

/// Verifies clients (used by TLS servers).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    trust_domain: TrustDomain,
    expected: Option<SpiffeId>,
    auth: ClientAuth,
    workloads_only: bool,
}

impl SpiffeClientVerifier {
    /// A verifier accepting any client in `trust_domain` chaining to `bundle`,
    /// or only `expected` when given.
    pub fn new(
        bundle: Arc<TrustBundle>,
        trust_domain: TrustDomain,
        expected: Option<SpiffeId>,
        auth: ClientAuth,
    ) -> Self {
        Self {
            bundle,
            trust_domain,
            expected,
            auth,
            workloads_only: false,
        }
    }

    /// Accepts only workload identities (a pod's HBONE port: node proxies
    /// and the control plane are not pod peers).
    pub fn workloads_only(mut self) -> Self {
        self.workloads_only = true;
        self
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = verify_for(
            &self.bundle,
            &self.trust_domain,
            end_entity,
            intermediates,
            now,
            self.expected.as_ref(),
            Usage::Client,
        )?;
        if self.workloads_only && !id.is_workload() {
            return Err(PeerVerifyError::NotAWorkload(id).into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn accepts_issued_leaf_and_extracts_identity() {
        let pki = TestPki::new("cluster.local");
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let leaf = pki.leaf(&me);
        let got = verify_peer(
            &pki.bundle(),
            &pki.trust_domain(),
            &leaf.chain()[0],
            &[],
            now(),
            Some(&me),
        )
        .unwrap();
        assert_eq!(got, me);
    }

    #[test]
    fn a_workloads_only_verifier_refuses_mesh_components() {
        let pki = TestPki::new("cluster.local");
        let td = pki.trust_domain();
        let verifier = SpiffeClientVerifier::new(
            Arc::new(pki.bundle()),
            td.clone(),
            None,
            ClientAuth::Required,
        )
        .workloads_only();
        let check = |who: &SpiffeId| {
            let leaf = pki.leaf(who);
            verifier
                .verify_client_cert(&leaf.chain()[0], &[], now())
                .map(drop)
                .map_err(|e| PeerVerifyError::from_rustls(&e).cloned())
        };
        assert_eq!(
            check(&id("spiffe://cluster.local/ns/default/sa/web")),
            Ok(())
        );
        for component in [
            SpiffeId::node(&td, "node-1").expect("node id"),
            SpiffeId::control_plane(&td),
        ] {
            assert_eq!(
                check(&component),
                Err(Some(PeerVerifyError::NotAWorkload(component.clone())))
            );
        }
    }

    #[test]
    fn each_bad_certificate_has_its_own_error() {
        let pki = TestPki::new("cluster.local");
        let other = TestPki::new("cluster.local");
        let td = pki.trust_domain();
        let bundle = pki.bundle();
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let check = |der: &CertificateDer<'_>, expected: Option<&SpiffeId>| {
            verify_peer(&bundle, &td, der, &[], now(), expected).unwrap_err()
        };

        assert_eq!(
            check(&other.leaf(&me).chain()[0], None),
            PeerVerifyError::UnknownIssuer
        );
        assert!(matches!(
            check(&pki.expired_leaf(&me), None),
            PeerVerifyError::Expired { .. }
        ));
        assert_eq!(
            check(&pki.leaf_with_two_uri_sans(&me), None),
            PeerVerifyError::MultipleUriSans(2)
        );
        assert_eq!(
            check(&pki.ca_as_leaf(&me), None),
            PeerVerifyError::CaUsedAsLeaf
        );
        assert_eq!(
            check(&CertificateDer::from(pki.root_der().to_vec()), None),
            PeerVerifyError::CaUsedAsLeaf
        );
        let them = id("spiffe://cluster.local/ns/default/sa/other");
        assert_eq!(
            check(&pki.leaf(&them).chain()[0], Some(&me)),
            PeerVerifyError::IdentityMismatch {
                expected: me.clone(),
                actual: them
            }
        );
        let foreign_td = id("spiffe://evil.example/ns/default/sa/web");
        assert!(matches!(
            check(&pki.leaf(&foreign_td).chain()[0], None),
            PeerVerifyError::WrongTrustDomain { .. }
        ));

        // The messages differ, so the logs tell the cases apart.
        let messages: std::collections::HashSet<String> = [
            check(&other.leaf(&me).chain()[0], None),
            check(&pki.expired_leaf(&me), None),
            check(&pki.leaf_with_two_uri_sans(&me), None),
            check(&pki.ca_as_leaf(&me), None),
        ]
        .iter()
        .map(|e| {
            e.to_string()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
    }

    #[test]
    fn non_canonical_san_is_rejected() {
        let pki = TestPki::new("cluster.local");
        let der = pki.leaf_with_raw_uri("spiffe://cluster.local/ns/../sa/web");
        assert!(matches!(
            verify_peer(&pki.bundle(), &pki.trust_domain(), &der, &[], now(), None),
            Err(PeerVerifyError::InvalidSpiffeId(SpiffeIdError::DotSegment(
                _
            )))
        ));
    }
}
