//! The node proxy process: flags, start-up order, the admin API, shutdown.
//!
//! Start-up:
//! 1. the node certificate, from the control plane's CA with the bootstrap
//!    token (retried with backoff until the control plane answers);
//! 2. the discovery stream (the node's configuration) and the workload
//!    certificate manager;
//! 3. the admin API (so `/ready` can be watched from here on);
//! 4. the first configuration (bounded wait), then the pods persisted by
//!    the previous run are served again;
//! 5. the CNI socket: from now on new pods are enrolled.
//!
//! On SIGTERM or SIGINT the CNI socket closes, every pod drains (records are
//! kept, so the next start restores them) and the process exits.

pub mod admin;
pub mod args;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use hawser_api::cni::server::CniServer;
use hawser_api::tls::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::dataplane::{DataPlane, DataPlaneSettings};
use crate::discovery::{DiscoveryClient, NodeConfig};
use crate::identity::{CertManager, CertManagerConfig, ControlPlaneClient, ControlPlaneConfig};
use crate::inpod::probes::{KubeletProbes, PROBE_SOURCE_V4, PROBE_SOURCE_V6};
use crate::inpod::{InPod, InPodSettings};
use admin::{AdminState, Readiness, SetLogFilter};
use args::Args;

/// How long start-up waits for the first configuration before serving
/// restored pods anyway (their connections then go to the original
/// destination as plain TCP until the configuration arrives).
const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(30);

/// Runs the node proxy until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (log_filter, set_log_filter) = init_tracing(&args)?;
    hawser_api::tls::install_crypto_provider();
    let pem = std::fs::read(&args.trust_bundle)
        .with_context(|| format!("reading the trust bundle {}", args.trust_bundle.display()))?;
    let bundle = Arc::new(TrustBundle::from_pem(&pem).with_context(|| {
        format!(
            "the trust bundle {} is not usable",
            args.trust_bundle.display()
        )
    })?);
    let token = args.bootstrap_token_file.clone();
    if !token.is_file() {
        anyhow::bail!(
            "the bootstrap token file {} does not exist",
            token.display()
        );
    }
    tracing::info!(node = %args.node_name, control_plane = %args.control_plane, worker_threads = args.worker_threads(), "starting");

    let control_plane = tokio::select! {
        cp = bootstrap(ControlPlaneConfig {
            addr: args.control_plane.clone(),
            node_name: args.node_name.clone(),
            token_file: token,
            trust_bundle: bundle.clone(),
            trust_domain: args.trust_domain.clone(),
        }) => cp,
        () = shutdown_signal() => return Ok(()),
    };
    let _renewal = control_plane.spawn_node_renewal();

    let discovery = DiscoveryClient::new(control_plane.channel(), args.node_name.clone());
    let mut config = discovery.config();
    let (stop, stopped) = watch::channel(false);
    let discovery_task = tokio::spawn(discovery.run(stopped.clone()));

    let max_files = raise_file_limit();
    let connection_caps = args.connection_caps(max_files);
    tracing::info!(max_files, ?connection_caps, "connection caps");
    let certs = CertManager::new(control_plane.clone(), CertManagerConfig::default());
    let dataplane = DataPlane::new(
        DataPlaneSettings {
            idle_timeout: args.idle_timeout,
            connect_timeout: args.connect_timeout,
            connection_caps,
            header_read_timeout: args.header_read_timeout,
            path_normalization: args.path_normalization(),
            allowed_upgrades: args
                .allowed_upgrades
                .iter()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(Box::from)
                .collect(),
            ..DataPlaneSettings::default()
        },
        certs.clone(),
        bundle,
        args.trust_domain.clone(),
        config.clone(),
    );
    let kubelet_probes = kubelet_probes(&args.kubelet_cgroup);
    let settings = InPodSettings {
        probe_sources: if kubelet_probes.is_some() {
            vec![PROBE_SOURCE_V4.into(), PROBE_SOURCE_V6.into()]
        } else {
            Vec::new()
        },
        kubelet_probes,
        drain_grace: args.drain_grace,
        ..InPodSettings::new(&args.run_dir)
    };
    tracing::info!(probe_sources = ?settings.probe_sources, run_dir = %args.run_dir.display(), "in-pod settings");
    let inpod = InPod::new(settings, config.clone(), Arc::new(dataplane.clone()))
        .context("starting the in-pod layer")?;

    let readiness = Arc::new(Readiness::default());
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            node_name: args.node_name.clone(),
            control_plane,
            config: config.clone(),
            certs,
            inpod: inpod.clone(),
            dataplane,
            readiness: readiness.clone(),
            log_filter,
            set_log_filter,
        },
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(addr = %args.admin_addr, "serving the admin API");

    wait_first_config(&mut config).await;
    // The in-pod layer logs what it restored, dropped or could not restore.
    inpod.restore().await;
    let socket = args.cni_socket();
    let cni = CniServer::bind(&socket, Arc::new(inpod.clone()))
        .with_context(|| format!("serving the CNI socket {}", socket.display()))?;
    readiness.pods_restored.store(true, Ordering::Relaxed);
    tracing::info!(socket = %socket.display(), "serving the CNI plugin");

    shutdown_signal().await;
    drop(cni);
    inpod.shutdown();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), discovery_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// The node certificate, retried with capped backoff: a node proxy may start
/// before its control plane.
async fn bootstrap(config: ControlPlaneConfig) -> Arc<ControlPlaneClient> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match ControlPlaneClient::bootstrap(config.clone()).await {
            Ok(cp) => return cp,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "no node certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn wait_first_config(config: &mut watch::Receiver<Arc<NodeConfig>>) {
    let first = tokio::time::timeout(FIRST_CONFIG_WAIT, config.wait_for(|c| c.version() > 0)).await;
    match first {
        Ok(Ok(c)) => tracing::info!(version = c.version(), "first configuration received"),
        _ => tracing::warn!(
            waited_s = FIRST_CONFIG_WAIT.as_secs(),
            "no configuration from the control plane yet; serving restored pods anyway"
        ),
    }
}

/// The host rules for kubelet's probes, or `None` (with the reason logged)
/// when there is no kubelet cgroup to match: then no connection from the
/// node skips authorization.
fn kubelet_probes(cgroup: &str) -> Option<Arc<KubeletProbes>> {
    if cgroup.trim().is_empty() {
        tracing::info!("no kubelet cgroup: kubelet's probes are judged like any node traffic");
        return None;
    }
    match KubeletProbes::install(cgroup) {
        Ok(probes) => Some(Arc::new(probes)),
        Err(e) => {
            tracing::error!(cgroup, error = %e, "kubelet's probes cannot be told apart: they are judged like any node traffic (pods whose policies refuse plaintext fail their probes)");
            None
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Installs the log subscriber with a filter the admin API can change.
fn init_tracing(args: &Args) -> anyhow::Result<(Arc<parking_lot::Mutex<String>>, SetLogFilter)> {
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid log filter {:?}", args.log))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if args.log_json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    let current = Arc::new(parking_lot::Mutex::new(args.log.clone()));
    let set: SetLogFilter = {
        let current = current.clone();
        Arc::new(move |spec: &str| {
            let filter = EnvFilter::try_new(spec)
                .map_err(|e| format!("invalid log filter {spec:?}: {e}"))?;
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log filter: {e}"))?;
            *current.lock() = spec.to_owned();
            Ok(spec.to_owned())
        })
    };
    Ok((current, set))
}

/// Raises the soft open-files limit to the hard one (each proxied connection
/// holds two descriptors) and returns the limit now in force.
fn raise_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            1024
        }
    }
}
