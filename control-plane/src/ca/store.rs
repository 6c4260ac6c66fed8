//! Where the CA's keys live: a self-signed root persisted in a directory
//! (generated on first start, reused after), or an operator-supplied
//! intermediate. Also the root rotation operation.
//!
//! Directory layout of a self-signed CA (`--ca-dir`):
//!
//! | file | what |
//! |---|---|
//! | `root-cert.pem`, `root-key.pem` (0600) | the root that signs now |
//! | `next-root-cert.pem`, `next-root-key.pem` (0600) | a staged root during rotation |
//! | `previous-root-cert.pem` | the retired root, still trusted until `finish` |
//! | `trust-bundle.pem` | every trusted root, rewritten on each start (what node proxies and `openssl verify` read) |
//!
//! Rotation is three steps, each followed by a control-plane restart:
//! `prepare` (stage a new root; the bundle now holds both, so every proxy learns
//! the new root before anything is signed by it), `activate` (the new root signs;
//! the old one stays in the bundle while leaves it signed are alive, at least one
//! leaf lifetime), `finish` (drop the old root).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hawser_api::TrustDomain;
use hawser_api::tls::TrustBundle;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const NEXT_CERT: &str = "next-root-cert.pem";
const NEXT_KEY: &str = "next-root-key.pem";
const PREVIOUS_CERT: &str = "previous-root-cert.pem";
/// The bundle file written into the CA directory on every start.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Why CA material could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is readable by group or others.
    #[error(
        "{path} has mode {mode:o}; a CA key must not be readable by group or others (chmod 600)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A file's contents are not what they must be.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The material is inconsistent as a whole.
    #[error("CA is misconfigured: {0}")]
    Invalid(String),
    /// A rotation step was asked for out of order.
    #[error("root rotation: {0}")]
    Rotation(String),
}

/// Where the signing key comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A self-signed root kept in `dir`, created on first start.
    SelfSigned {
        /// The CA directory.
        dir: PathBuf,
        /// Validity of a newly generated root (default 10 years).
        root_lifetime: Duration,
    },
    /// An operator-supplied intermediate; issued leaves chain to the operator's root.
    Intermediate {
        /// The intermediate CA certificate (PEM).
        cert: PathBuf,
        /// Its private key (PEM PKCS#8, mode 0600).
        key: PathBuf,
        /// The certificates above the intermediate, ending with the root (PEM).
        chain: PathBuf,
    },
}

/// Loaded CA material.
pub(crate) struct Material {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) issuer_not_after: OffsetDateTime,
    pub(crate) intermediates: Vec<CertificateDer<'static>>,
    pub(crate) bundle: TrustBundle,
}

impl CaSource {
    pub(crate) fn load_or_create(&self, td: &TrustDomain) -> Result<Material, StoreError> {
        match self {
            Self::SelfSigned { dir, root_lifetime } => load_self_signed(dir, td, *root_lifetime),
            Self::Intermediate { cert, key, chain } => load_intermediate(cert, key, chain),
        }
    }
}

fn load_self_signed(
    dir: &Path,
    td: &TrustDomain,
    lifetime: Duration,
) -> Result<Material, StoreError> {
    create_private_dir(dir)?;
    let (cert_path, key_path) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => {
            let (cert_pem, key_pem) = generate_root(td, lifetime)?;
            // Key first: a crash in between leaves a key without a cert, which
            // the next start reports instead of silently minting a second root.
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), "generated a new self-signed mesh root");
        }
        (true, true) => {}
        (cert, _) => {
            let missing = if cert { &key_path } else { &cert_path };
            return Err(StoreError::Invalid(format!(
                "{} is missing but its pair exists; restore it or remove both to generate a new root",
                missing.display()
            )));
        }
    }
    let root = read_one_cert(&cert_path)?;
    let key = read_key(&key_path)?;
    check_key_matches(&cert_path, &root, &key)?;
    let issuer_not_after = not_after(&cert_path, &root)?;
    let issuer = Issuer::from_ca_cert_der(&root, key).map_err(|e| StoreError::BadFile {
        path: cert_path.clone(),
        reason: e.to_string(),
    })?;

    let mut roots = vec![root];
    for extra in [NEXT_CERT, PREVIOUS_CERT] {
        let path = dir.join(extra);
        if path.exists() {
            roots.push(read_one_cert(&path)?);
        }
    }
    let bundle = TrustBundle::from_der(roots).map_err(|e| StoreError::Invalid(e.to_string()))?;
    write_atomic(
        &dir.join(TRUST_BUNDLE_FILE),
        bundle.to_pem().as_bytes(),
        0o644,
    )?;
    Ok(Material {
        issuer,
        issuer_not_after,
        intermediates: Vec::new(),
        bundle,
    })
}

fn load_intermediate(
    cert_path: &Path,
    key_path: &Path,
    chain_path: &Path,
) -> Result<Material, StoreError> {
    let cert = read_one_cert(cert_path)?;
    let key = read_key(key_path)?;
    check_key_matches(cert_path, &cert, &key)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).map_err(|e| bad(cert_path, e))?;
    if !parsed.is_ca() {
        return Err(StoreError::BadFile {
            path: cert_path.to_owned(),
            reason: "not a CA certificate (basicConstraints cA is not true)".into(),
        });
    }
    let mut chain = read_certs(chain_path)?;
    // Accept a chain file that starts with the intermediate itself (Istio's cert-chain.pem does).
    if chain.first() == Some(&cert) {
        chain.remove(0);
    }
    let root = chain.pop().ok_or_else(|| StoreError::BadFile {
        path: chain_path.to_owned(),
        reason: "holds no certificate above the intermediate; it must end with the root".into(),
    })?;
    let (_, parsed_root) =
        x509_parser::parse_x509_certificate(&root).map_err(|e| bad(chain_path, e))?;
    if parsed_root.subject() != parsed_root.issuer() {
        return Err(StoreError::BadFile {
            path: chain_path.to_owned(),
            reason: "its last certificate is not self-signed; the chain must end with the root"
                .into(),
        });
    }
    let issuer_not_after = not_after(cert_path, &cert)?;
    let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad(cert_path, e))?;
    let mut intermediates = vec![cert];
    intermediates.extend(chain);
    let bundle =
        TrustBundle::from_der(vec![root]).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(Material {
        issuer,
        issuer_not_after,
        intermediates,
        bundle,
    })
}

/// The root rotation steps (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootRotation {
    /// Stage a new root; the bundle trusts old and new.
    Prepare,
    /// Sign with the staged root; the old one stays trusted.
    Activate,
    /// Stop trusting the old root.
    Finish,
}

/// Runs one rotation step on a self-signed CA directory.
pub fn rotate(
    dir: &Path,
    td: &TrustDomain,
    step: RootRotation,
    root_lifetime: Duration,
) -> Result<(), StoreError> {
    let p = |f: &str| dir.join(f);
    if !p(ROOT_CERT).exists() {
        return Err(StoreError::Rotation(format!(
            "{} has no active root; start the control plane once first",
            dir.display()
        )));
    }
    match step {
        RootRotation::Prepare => {
            if p(NEXT_CERT).exists() {
                return Err(StoreError::Rotation(
                    "a new root is already staged; run activate".into(),
                ));
            }
            if p(PREVIOUS_CERT).exists() {
                return Err(StoreError::Rotation(
                    "the previous rotation is not finished; run finish first".into(),
                ));
            }
            let (cert, key) = generate_root(td, root_lifetime)?;
            write_atomic(&p(NEXT_KEY), key.as_bytes(), 0o600)?;
            write_atomic(&p(NEXT_CERT), cert.as_bytes(), 0o644)?;
        }
        RootRotation::Activate => {
            if !p(NEXT_CERT).exists() || !p(NEXT_KEY).exists() {
                return Err(StoreError::Rotation(
                    "no staged root; run prepare first".into(),
                ));
            }
            // Check the staged pair before touching the active one.
            let next = read_one_cert(&p(NEXT_CERT))?;
            check_key_matches(&p(NEXT_CERT), &next, &read_key(&p(NEXT_KEY))?)?;
            rename(&p(ROOT_CERT), &p(PREVIOUS_CERT))?;
            rename(&p(NEXT_KEY), &p(ROOT_KEY))?;
            rename(&p(NEXT_CERT), &p(ROOT_CERT))?;
        }
        RootRotation::Finish => {
            if p(NEXT_CERT).exists() {
                return Err(StoreError::Rotation(
                    "a staged root is not active yet; run activate".into(),
                ));
            }
            if !p(PREVIOUS_CERT).exists() {
                return Err(StoreError::Rotation("no previous root to retire".into()));
            }
            fs::remove_file(p(PREVIOUS_CERT)).map_err(|e| io(&p(PREVIOUS_CERT), e))?;
        }
    }
    Ok(())
}

fn generate_root(td: &TrustDomain, lifetime: Duration) -> Result<(String, String), StoreError> {
    let gen_err = |e: rcgen::Error| StoreError::Invalid(format!("generating the root: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Hawser");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Hawser mesh root {td}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + lifetime;
    params.serial_number = Some(super::random_serial());
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))
}

/// Writes `path` via a temporary file and rename, created with `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path, e)
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|e| io(from, e))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let data = fs::read(path).map_err(|e| io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(StoreError::BadFile {
            path: path.to_owned(),
            reason: "holds no PEM CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn read_one_cert(path: &Path) -> Result<CertificateDer<'static>, StoreError> {
    let mut certs = read_certs(path)?;
    if certs.len() != 1 {
        return Err(StoreError::BadFile {
            path: path.to_owned(),
            reason: format!(
                "holds {} certificates; exactly one was expected",
                certs.len()
            ),
        });
    }
    Ok(certs.remove(0))
}

fn read_key(path: &Path) -> Result<KeyPair, StoreError> {
    let meta = fs::metadata(path).map_err(|e| io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = fs::read_to_string(path).map_err(|e| io(path, e))?;
    KeyPair::from_pem(&pem).map_err(|e| bad(path, e))
}

fn check_key_matches(
    cert_path: &Path,
    cert: &CertificateDer<'_>,
    key: &KeyPair,
) -> Result<(), StoreError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| bad(cert_path, e))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(StoreError::BadFile {
            path: cert_path.to_owned(),
            reason: "its public key does not match the private key".into(),
        });
    }
    Ok(())
}

fn not_after(path: &Path, cert: &CertificateDer<'_>) -> Result<OffsetDateTime, StoreError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| bad(path, e))?;
    Ok(parsed.validity().not_after.to_datetime())
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
