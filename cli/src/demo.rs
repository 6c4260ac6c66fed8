//! `hawser demo identity`: the mesh's identity flow, narrated, on loopback.

use std::path::Path;

use anyhow::Context as _;
use hawser_api::tls::TrustBundle;
use hawser_node_proxy::identity::{CertManager, CertManagerConfig, WorkloadRef};
use hawser_tests::identity::{LocalControlPlane, handshake};

fn pod(name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: "default".into(),
        pod_name: name.into(),
        pod_uid: format!("uid-{name}"),
    }
}

/// Runs the demo, leaving certificates in `out`.
pub async fn identity(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cp = LocalControlPlane::start(50, 200).await?;
    outln!(
        "control plane (CA) serving on {} (TLS, SPIFFE ID {})",
        cp.addr,
        hawser_api::SpiffeId::control_plane(cp.ca.trust_domain())
    )?;
    let token = cp.add_node("node-1", "demo-token-node-1")?;
    cp.add_pod("default", "web-1", "node-1", "web");
    cp.add_pod("default", "api-1", "node-1", "api");
    cp.add_pod("default", "db-1", "node-2", "db");
    outln!(
        "pods: default/web-1 (sa web) and default/api-1 (sa api) on node-1, default/db-1 (sa db) on node-2"
    )?;

    let client = cp.node_client("node-1", token).await?;
    if let Some(node) = client.node_certificate() {
        outln!("node-1 bootstrapped with its token and holds {}", node.id())?;
    }
    let certs = CertManager::new(client, CertManagerConfig::default());
    let web = certs.fetch(&pod("web-1")).await?;
    let api = certs.fetch(&pod("api-1")).await?;
    for svid in [&web, &api] {
        let expires = svid
            .not_after()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        outln!(
            "issued {} (expires in {} h, renewed at half-life)",
            svid.id(),
            (expires.as_secs() + 1800) / 3600
        )?;
    }
    match certs.fetch(&pod("db-1")).await {
        Ok(svid) => anyhow::bail!("node-1 obtained {} for a pod on node-2", svid.id()),
        Err(e) => outln!("node-1 asking for default/db-1 (on node-2) is refused: {e}")?,
    }

    let bundle = cp.bundle()?;
    let (server_saw, client_saw) =
        handshake(&api, bundle.clone(), &web, bundle, Some(api.id().clone())).await?;
    outln!(
        "mTLS (TLS 1.3): api-1 sees its client as {}, web-1 sees its server as {}",
        server_saw?,
        client_saw?
    )?;

    let leaf = out.join("web-1.pem");
    std::fs::write(&leaf, TrustBundle::from_der(web.chain().to_vec())?.to_pem())?;
    let bundle_file = out.join("trust-bundle.pem");
    std::fs::copy(cp.bundle_file(), &bundle_file)?;
    outln!("\ncertificates written; check them with an independent tool:")?;
    outln!(
        "  openssl verify -CAfile {} {}",
        bundle_file.display(),
        leaf.display()
    )?;
    outln!("  openssl x509 -noout -text -in {}", leaf.display())?;
    outln!(
        "  hawser cert inspect {} --bundle {}",
        leaf.display(),
        bundle_file.display()
    )?;
    Ok(())
}
