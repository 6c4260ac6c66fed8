//! Startup: load the CA, start the config source feeding the index, then
//! serve identity and discovery over TLS until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hawser_api::SpiffeId;
use hawser_api::tls::{CertSlot, ClientAuth, SpiffeClientVerifier, server_config};
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::args::{Args, Command};
use crate::ca::{Ca, store};
use crate::discovery::DiscoveryService;
use crate::identity::{self, BootstrapTokens, IdentityService, RateLimiter};
use crate::index::{IndexConfig, SharedIndex};
use crate::sources::manifests::{ManifestConfig, ManifestSource};

/// Runs the control plane as configured by `args`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    init_tracing(&args)?;
    if let Some(Command::RotateRoot { step }) = args.command {
        store::rotate(&args.ca_dir, &args.trust_domain, step, args.root_lifetime)?;
        println!(
            "root rotation step {step:?} done in {}; restart the control plane to apply it",
            args.ca_dir.display()
        );
        return Ok(());
    }

    let ca = Arc::new(
        Ca::load(args.trust_domain.clone(), &args.ca_source(), args.profile())
            .context("loading the certificate authority")?,
    );
    tracing::info!(trust_domain = %args.trust_domain, roots = ca.bundle().roots().len(), "certificate authority ready");

    let Some(manifests) = args.manifests.clone() else {
        anyhow::bail!(
            "no config source: pass --manifests DIR (a directory of Kubernetes manifests); \
             the Kubernetes API source is not available yet"
        );
    };
    let index = SharedIndex::new(IndexConfig {
        trust_domain: args.trust_domain.to_string(),
        ..IndexConfig::default()
    });
    let (stop_source, source_stopped) = tokio::sync::watch::channel(false);
    let source = ManifestSource::new(ManifestConfig::new(&manifests), index.clone());
    let manifest_report = source.report();
    tracing::info!(dir = %manifests.display(), "watching manifests");
    let source = tokio::spawn(source.run(source_stopped.clone()));

    let identity = IdentityService::new(
        ca.clone(),
        Arc::new(BootstrapTokens::new(&args.bootstrap_token_dir)),
        // The index knows where pods are scheduled: the impersonation check's truth.
        Arc::new(index.clone()),
        RateLimiter::new(args.node_rate_limit, args.node_rate_burst),
    );
    let listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", args.grpc_addr))?;
    let discovery = DiscoveryService::new(index.clone());
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    tracing::info!(addr = %args.admin_addr, "serving the admin API");
    let mut admin_stopped = source_stopped;
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            index,
            discovery: discovery.clone(),
            manifests: manifest_report,
        },
        async move {
            let _ = admin_stopped.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(addr = %args.grpc_addr, "serving identity and discovery over TLS");
    let result = serve(listener, ca, identity, discovery, shutdown_signal()).await;
    let _ = stop_source.send(true);
    let _ = source.await;
    let _ = admin.await;
    result
}

/// Serves the gRPC API on `listener` with a control-plane certificate issued
/// by `ca` (renewed at half-life) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    ca: Arc<Ca>,
    identity: IdentityService,
    discovery: DiscoveryService,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let own_id = SpiffeId::control_plane(ca.trust_domain());
    let slot = Arc::new(CertSlot::new(
        ca.issue_with_new_key(&own_id)
            .context("issuing the control plane's serving certificate")?,
    ));
    let renewal = tokio::spawn(renew_own_cert(ca.clone(), own_id, slot.clone()));
    let verifier = Arc::new(SpiffeClientVerifier::new(
        ca.bundle(),
        ca.trust_domain().clone(),
        None,
        // The bootstrap call comes before the node has a certificate.
        ClientAuth::Optional,
    ));
    let tls = Arc::new(server_config(slot, verifier, &[b"h2"]));
    let closer = discovery.clone();
    let shutdown = async move {
        shutdown.await;
        // Open discovery streams never end by themselves: end them so the
        // graceful shutdown can complete.
        closer.close();
    };
    let result = tonic::transport::Server::builder()
        .add_service(identity.into_server())
        .add_service(discovery.into_server())
        .serve_with_incoming_shutdown(identity::tls::incoming(listener, tls), shutdown)
        .await
        .context("gRPC server failed");
    renewal.abort();
    result
}

async fn renew_own_cert(ca: Arc<Ca>, id: SpiffeId, slot: Arc<CertSlot>) {
    loop {
        let half = slot
            .get()
            .map(|s| s.lifetime() / 2)
            .unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(half).await;
        match ca.issue_with_new_key(&id) {
            Ok(svid) => slot.set(svid),
            Err(e) => tracing::error!(error = %e, "renewing the control plane certificate failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    tracing::info!("shutting down");
}

fn init_tracing(args: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid log filter {:?}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
