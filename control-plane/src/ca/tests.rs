//! CA tests; certificates are checked with the real `openssl` binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use hawser_api::testing::{TestPki, ed25519_csr, p256_csr};
use hawser_api::tls::{PeerVerifyError, verify_peer};
use rustls_pki_types::UnixTime;

use super::store::{TRUST_BUNDLE_FILE, rotate};
use super::*;

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn self_signed(dir: &Path) -> CaSource {
    CaSource::SelfSigned {
        dir: dir.to_owned(),
        root_lifetime: Duration::from_secs(10 * 365 * 86400),
    }
}

fn web() -> SpiffeId {
    SpiffeId::workload(&td(), "default", "web").unwrap()
}

fn pem(der: &[u8]) -> String {
    hawser_api::tls::TrustBundle::from_der(vec![CertificateDer::from(der.to_vec())])
        .map(|b| b.to_pem())
        .unwrap_or_else(|_| {
            // Leaves are not trust anchors only when malformed; tests never pass those.
            unreachable!()
        })
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary must be installed (.ci/run installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn issued_svid_verifies_with_openssl_and_has_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    let (csr, _key) = p256_csr("spiffe://cluster.local/ns/kube-system/sa/admin");
    let issued = ca.issue(&csr, &web()).unwrap();
    assert_eq!(issued.chain.len(), 1);

    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, pem(&issued.chain[0])).unwrap();
    let bundle = dir.path().join(TRUST_BUNDLE_FILE);
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "openssl verify failed: {out}");
    assert!(out.contains(": OK"), "{out}");

    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", leaf.to_str().unwrap()]);
    assert!(ok, "{text}");
    // Exactly one URI SAN, the authorised identity (not what the CSR asked for).
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/web"),
        "{text}"
    );
    assert!(!text.contains("kube-system"), "{text}");
    assert!(!text.contains("please make me admin"), "{text}");
    // cA=false, critical.
    assert!(
        text.contains("X509v3 Basic Constraints: critical"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    // Critical key usage digitalSignature only.
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    let ku = text
        .split("X509v3 Key Usage: critical")
        .nth(1)
        .and_then(|s| s.lines().nth(1))
        .unwrap()
        .trim();
    assert_eq!(ku, "Digital Signature", "{text}");
    let eku = text
        .split("X509v3 Extended Key Usage:")
        .nth(1)
        .and_then(|s| s.lines().nth(1))
        .unwrap()
        .trim();
    assert_eq!(
        eku, "TLS Web Server Authentication, TLS Web Client Authentication",
        "{text}"
    );
    assert!(text.contains("ASN1 OID: prime256v1"), "{text}");

    // 24 h lifetime with a 5 min backdate.
    let dates = |flag: &str| {
        let (_, out) = openssl(&["x509", "-noout", flag, "-in", leaf.to_str().unwrap()]);
        out
    };
    let (nb, na) = (dates("-startdate"), dates("-enddate"));
    let lifetime = issued
        .not_after
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs();
    assert!(
        (24 * 3600 - 120..=24 * 3600).contains(&lifetime),
        "{lifetime}"
    );
    assert!(nb.starts_with("notBefore=") && na.starts_with("notAfter="));
    let (ok, _) = openssl(&[
        "x509",
        "-noout",
        "-checkend",
        &(23 * 3600).to_string(),
        "-in",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "leaf must be valid for at least 23 h more");
}

#[test]
fn lifetime_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let profile = SvidProfile {
        lifetime: Duration::from_secs(3600),
        backdate: Duration::from_secs(60),
    };
    let ca = Ca::load(td(), &self_signed(dir.path()), profile).unwrap();
    let svid = ca.issue_with_new_key(&web()).unwrap();
    assert_eq!(svid.lifetime(), Duration::from_secs(3660));
}

#[test]
fn root_persists_across_restarts_with_private_key_mode() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    let key_mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let second = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    assert_eq!(first.bundle().roots(), second.bundle().roots());

    // A leaf from the first process verifies against the second's bundle.
    let svid = first.issue_with_new_key(&web()).unwrap();
    verify_peer(
        &second.bundle(),
        &td(),
        &svid.chain()[0],
        &[],
        UnixTime::now(),
        Some(&web()),
    )
    .unwrap();
}

#[test]
fn refuses_world_readable_key_and_half_present_root() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    let key = dir.path().join("root-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("root-key.pem"), "{err}");

    std::fs::remove_file(&key).unwrap();
    let err = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap_err();
    assert!(err.to_string().contains("root-key.pem is missing"), "{err}");
}

#[test]
fn rejects_bad_csrs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    assert!(matches!(
        ca.issue(b"not a csr", &web()),
        Err(CaError::BadCsr(_))
    ));
    // A CSR whose signature does not verify: flip a byte of the signature.
    let (mut csr, _) = p256_csr("spiffe://cluster.local/ns/default/sa/web");
    let last = csr.len() - 3;
    csr[last] ^= 0xff;
    assert!(matches!(ca.issue(&csr, &web()), Err(CaError::BadCsr(_))));
    assert!(matches!(
        ca.issue(&ed25519_csr(), &web()),
        Err(CaError::WrongKeyType(_))
    ));
    let (csr, _) = p256_csr("spiffe://x/y");
    let foreign = SpiffeId::parse("spiffe://other.domain/ns/a/sa/b").unwrap();
    assert!(matches!(
        ca.issue(&csr, &foreign),
        Err(CaError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn operator_intermediate_chains_to_operator_root() {
    let dir = tempfile::tempdir().unwrap();
    let operator = TestPki::new("cluster.local");
    let [cert, key, chain] = operator.write_intermediate(dir.path());
    let ca = Ca::load(
        td(),
        &CaSource::Intermediate {
            cert: cert.clone(),
            key,
            chain,
        },
        SvidProfile::default(),
    )
    .unwrap();
    assert_eq!(ca.bundle().roots(), operator.bundle().roots());
    let (csr, _) = p256_csr("spiffe://ignored/x");
    let issued = ca.issue(&csr, &web()).unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf + intermediate");

    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, pem(&issued.chain[0])).unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, operator.bundle().to_pem()).unwrap();
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        cert.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    // Without the intermediate the leaf does not verify: it really chains through it.
    let (ok, _) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok);
}

#[test]
fn intermediate_from_another_root_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let operator = TestPki::new("cluster.local");
    let stranger = TestPki::new("cluster.local");
    let [cert, key, chain] = operator.write_intermediate(dir.path());
    std::fs::write(&chain, stranger.bundle().to_pem()).unwrap();
    let err = Ca::load(
        td(),
        &CaSource::Intermediate { cert, key, chain },
        SvidProfile::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("do not verify against its trust bundle"),
        "{err}"
    );
}

#[test]
fn root_rotation_keeps_old_leaves_valid_until_finish() {
    let dir = tempfile::tempdir().unwrap();
    let src = self_signed(dir.path());
    let lifetime = Duration::from_secs(365 * 86400);
    let old = Ca::load(td(), &src, SvidProfile::default()).unwrap();
    let old_leaf = old.issue_with_new_key(&web()).unwrap();
    let verify = |ca: &Ca, svid: &Svid| {
        verify_peer(
            &ca.bundle(),
            &td(),
            &svid.chain()[0],
            &[],
            UnixTime::now(),
            None,
        )
    };

    assert!(rotate(dir.path(), &td(), RootRotation::Activate, lifetime).is_err());
    rotate(dir.path(), &td(), RootRotation::Prepare, lifetime).unwrap();
    let staged = Ca::load(td(), &src, SvidProfile::default()).unwrap();
    assert_eq!(staged.bundle().roots().len(), 2);
    assert_eq!(
        staged.bundle().roots()[0],
        old.bundle().roots()[0],
        "old root still signs"
    );
    let bundle_file = std::fs::read_to_string(dir.path().join(TRUST_BUNDLE_FILE)).unwrap();
    assert_eq!(bundle_file.matches("BEGIN CERTIFICATE").count(), 2);

    rotate(dir.path(), &td(), RootRotation::Activate, lifetime).unwrap();
    let new = Ca::load(td(), &src, SvidProfile::default()).unwrap();
    assert_ne!(
        new.bundle().roots()[0],
        old.bundle().roots()[0],
        "new root signs"
    );
    let new_leaf = new.issue_with_new_key(&web()).unwrap();
    verify(&new, &new_leaf).unwrap();
    verify(&new, &old_leaf).unwrap();
    // Proxies still holding only the old bundle would refuse new leaves, which is
    // why `prepare` publishes the new root before `activate`.
    assert_eq!(verify(&old, &new_leaf), Err(PeerVerifyError::UnknownIssuer));

    rotate(dir.path(), &td(), RootRotation::Finish, lifetime).unwrap();
    let done = Ca::load(td(), &src, SvidProfile::default()).unwrap();
    assert_eq!(done.bundle().roots().len(), 1);
    verify(&done, &new_leaf).unwrap();
    assert_eq!(
        verify(&done, &old_leaf),
        Err(PeerVerifyError::UnknownIssuer)
    );
    assert!(rotate(dir.path(), &td(), RootRotation::Finish, lifetime).is_err());
}

#[test]
fn the_mesh_components_identities_are_never_issued_from_a_csr() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load(td(), &self_signed(dir.path()), SvidProfile::default()).unwrap();
    let (csr, _key) = p256_csr("spiffe://cluster.local/ns/default/sa/web");
    for reserved in [
        SpiffeId::control_plane(&td()),
        SpiffeId::parse("spiffe://cluster.local/hawser/anything").unwrap(),
        SpiffeId::parse("spiffe://cluster.local/other/shape").unwrap(),
    ] {
        match ca.issue(&csr, &reserved) {
            Err(CaError::Reserved(id)) => assert_eq!(id, reserved),
            other => panic!("{reserved}: {other:?}"),
        }
    }
    // Workloads and node proxies are.
    ca.issue(&csr, &web()).expect("workload");
    ca.issue(&csr, &SpiffeId::node(&td(), "node-1").unwrap())
        .expect("node proxy");
    // The control plane's own certificate is made here, not from a CSR.
    let own = ca
        .issue_with_new_key(&SpiffeId::control_plane(&td()))
        .expect("control plane");
    assert_eq!(own.id(), &SpiffeId::control_plane(&td()));
    // A pod in hawser-system with the control plane's service account gets
    // a workload identity, which is not the control plane's.
    let lookalike = SpiffeId::workload(&td(), "hawser-system", "hawser-control-plane").unwrap();
    assert!(lookalike.is_workload() && !lookalike.is_reserved());
    assert_ne!(lookalike, SpiffeId::control_plane(&td()));
}
