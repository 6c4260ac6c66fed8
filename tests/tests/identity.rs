//! The identity flow end to end over loopback: a control plane CA, node
//! proxies bootstrapping with tokens, workload certificates, and mTLS between
//! the identities issued. Certificates are checked with the real `openssl`.

use std::process::Command;

use hawser_api::SpiffeId;
use hawser_api::testing::TestPki;
use hawser_api::tls::{PeerVerifyError, TrustBundle};
use hawser_node_proxy::identity::{CertManager, CertManagerConfig, ControlPlaneError, WorkloadRef};
use hawser_tests::identity::{LocalControlPlane, handshake};

fn pod(name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: "default".into(),
        pod_name: name.into(),
        pod_uid: format!("uid-{name}"),
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

#[tokio::test]
async fn node_obtains_identities_of_its_own_pods_only() {
    hawser_api::tls::install_crypto_provider();
    let cp = LocalControlPlane::start(100, 100).await.unwrap();
    let token = cp.add_node("node-1", "token-for-node-1").unwrap();
    cp.add_node("node-2", "token-for-node-2").unwrap();
    cp.add_pod("default", "web-1", "node-1", "web");
    cp.add_pod("default", "api-1", "node-2", "api");

    let client = cp.node_client("node-1", token).await.unwrap();
    assert_eq!(
        client.node_certificate().unwrap().id().as_str(),
        "spiffe://cluster.local/hawser/node/node-1"
    );
    let certs = CertManager::new(client, CertManagerConfig::default());

    // Own pod: issued, with the pod's service account as identity.
    let svid = certs.fetch(&pod("web-1")).await.unwrap();
    assert_eq!(
        svid.id().as_str(),
        "spiffe://cluster.local/ns/default/sa/web"
    );
    let leaf = cp.dir.path().join("web-1.pem");
    std::fs::write(
        &leaf,
        TrustBundle::from_der(vec![svid.chain()[0].clone()])
            .unwrap()
            .to_pem(),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(cp.bundle_file())
        .arg(&leaf)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A pod on another node: the impersonation check refuses it.
    let err = certs.fetch(&pod("api-1")).await.unwrap_err().to_string();
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains("scheduled on node \"node-2\""), "{err}");
    // An unknown pod, and a known pod under a stale uid, are refused too.
    let err = certs.fetch(&pod("ghost")).await.unwrap_err().to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("not known"),
        "{err}"
    );
    let stale = WorkloadRef {
        pod_uid: "uid-of-a-deleted-pod".into(),
        ..pod("web-1")
    };
    certs.forget(&pod("web-1"));
    let err = certs.fetch(&stale).await.unwrap_err().to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("has uid"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_bootstrap_tokens_are_refused() {
    hawser_api::tls::install_crypto_provider();
    let cp = LocalControlPlane::start(100, 100).await.unwrap();
    cp.add_node("node-1", "the-real-token").unwrap();
    let wrong = cp.dir.path().join("wrong.token");
    hawser_api::secret::write_secret(&wrong, "a-guessed-token").unwrap();

    for node in ["node-1", "node-9"] {
        match cp.node_client(node, wrong.clone()).await {
            Err(ControlPlaneError::Refused(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
                // The caller learns nothing about why.
                assert_eq!(status.message(), "node authentication failed");
            }
            Err(other) => panic!("unexpected error for {node}: {other}"),
            Ok(_) => panic!("{node} authenticated with a wrong token"),
        }
    }
}

#[tokio::test]
async fn certificate_requests_are_rate_limited_per_node() {
    hawser_api::tls::install_crypto_provider();
    let cp = LocalControlPlane::start(1, 3).await.unwrap();
    let token = cp.add_node("node-1", "t1").unwrap();
    let client = cp.node_client("node-1", token).await.unwrap();
    for i in 0..4 {
        cp.add_pod("default", &format!("p{i}"), "node-1", "web");
    }
    // Someone guessing tokens under node-1's name exhausts the bucket of its
    // own address (the bootstrap bucket), not node-1's.
    let wrong = cp.dir.path().join("wrong.token");
    hawser_api::secret::write_secret(&wrong, "guess").unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        match cp.node_client("node-1", wrong.clone()).await {
            Err(ControlPlaneError::Refused(s)) => codes.push(s.code()),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a wrong token authenticated"),
        }
    }
    assert_eq!(
        codes,
        [
            tonic::Code::Unauthenticated,
            tonic::Code::Unauthenticated,
            tonic::Code::ResourceExhausted
        ],
        "the bootstrap bucket (1 taken by the real bootstrap) runs out"
    );
    // The authenticated node keeps its own burst of 3.
    let certs = CertManager::new(client, CertManagerConfig::default());
    for p in ["p0", "p1", "p2"] {
        certs.fetch(&pod(p)).await.unwrap();
    }
    let err = certs.fetch(&pod("p3")).await.unwrap_err().to_string();
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(err.contains("node node-1"), "{err}");
}

fn verify_error(e: &std::io::Error) -> Option<PeerVerifyError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(PeerVerifyError::from_rustls)
        .cloned()
}

#[tokio::test]
async fn mtls_between_issued_identities() {
    hawser_api::tls::install_crypto_provider();
    let cp = LocalControlPlane::start(100, 100).await.unwrap();
    let token = cp.add_node("node-1", "t1").unwrap();
    cp.add_pod("default", "web-1", "node-1", "web");
    cp.add_pod("default", "api-1", "node-1", "api");
    let certs = CertManager::new(
        cp.node_client("node-1", token).await.unwrap(),
        CertManagerConfig::default(),
    );
    let web = certs.fetch(&pod("web-1")).await.unwrap();
    let api = certs.fetch(&pod("api-1")).await.unwrap();
    let bundle = cp.bundle().unwrap();

    let (server_saw, client_saw) = handshake(
        &api,
        bundle.clone(),
        &web,
        bundle.clone(),
        Some(api.id().clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        server_saw.unwrap(),
        id("spiffe://cluster.local/ns/default/sa/web")
    );
    assert_eq!(
        client_saw.unwrap(),
        id("spiffe://cluster.local/ns/default/sa/api")
    );

    // The client expected someone else: it refuses the server.
    let (_, client_saw) = handshake(
        &api,
        bundle.clone(),
        &web,
        bundle.clone(),
        Some(id("spiffe://cluster.local/ns/default/sa/db")),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            verify_error(client_saw.as_ref().unwrap_err()),
            Some(PeerVerifyError::IdentityMismatch { .. })
        ),
        "{client_saw:?}"
    );
}

#[tokio::test]
async fn mtls_refuses_foreign_expired_and_ca_certificates() {
    hawser_api::tls::install_crypto_provider();
    let mesh = TestPki::new("cluster.local");
    let foreign = TestPki::new("cluster.local");
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let api = id("spiffe://cluster.local/ns/default/sa/api");
    let server = mesh.leaf(&api);
    let bundle = mesh.bundle_arc();

    let cases = [
        (
            "foreign CA",
            foreign.leaf(&web),
            PeerVerifyError::UnknownIssuer,
        ),
        (
            "CA as leaf",
            mesh.ca_as_leaf_svid(&web),
            PeerVerifyError::CaUsedAsLeaf,
        ),
    ];
    for (what, client, expected) in cases {
        let (server_saw, _) = handshake(&server, bundle.clone(), &client, bundle.clone(), None)
            .await
            .unwrap();
        let err = server_saw.expect_err(what);
        assert_eq!(verify_error(&err), Some(expected), "{what}: {err}");
    }
    let (server_saw, _) = handshake(
        &server,
        bundle.clone(),
        &mesh.expired_svid(&web),
        bundle.clone(),
        None,
    )
    .await
    .unwrap();
    let err = server_saw.unwrap_err();
    assert!(
        matches!(verify_error(&err), Some(PeerVerifyError::Expired { .. })),
        "{err}"
    );
    // And from the client's side: an expired server is refused.
    let (_, client_saw) = handshake(
        &mesh.expired_svid(&api),
        bundle.clone(),
        &mesh.leaf(&web),
        bundle.clone(),
        None,
    )
    .await
    .unwrap();
    let err = client_saw.unwrap_err();
    assert!(
        matches!(verify_error(&err), Some(PeerVerifyError::Expired { .. })),
        "{err}"
    );
}
