//! Command-line and environment configuration of the node proxy binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hawser_api::TrustDomain;
use hawser_api::duration::parse_duration;

/// The Hawser node proxy: one per node.
#[derive(Debug, Clone, Parser)]
#[command(name = "hawser-node-proxy", version, about)]
pub struct Args {
    /// The control plane's gRPC address (identity and discovery), host:port.
    #[arg(
        long,
        env = "HAWSER_CONTROL_PLANE",
        default_value = "hawser-control-plane:15012"
    )]
    pub control_plane: String,

    /// This node's name (Kubernetes: the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The file holding this node's bootstrap token.
    #[arg(
        long,
        env = "HAWSER_BOOTSTRAP_TOKEN_FILE",
        default_value = "/var/run/secrets/hawser/bootstrap-token"
    )]
    pub bootstrap_token_file: PathBuf,

    /// The mesh's trust bundle (PEM roots).
    #[arg(
        long,
        env = "HAWSER_TRUST_BUNDLE",
        default_value = "/var/run/secrets/hawser/trust-bundle.pem"
    )]
    pub trust_bundle: PathBuf,

    /// Trust domain of the mesh's SPIFFE IDs.
    #[arg(long, env = "HAWSER_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: TrustDomain,

    /// Where the proxy keeps its state across restarts (enrolled pods).
    #[arg(long, env = "HAWSER_RUN_DIR", default_value = "/var/run/hawser")]
    pub run_dir: PathBuf,

    /// The Unix socket the CNI plugin talks to (default: `<run-dir>/cni.sock`).
    #[arg(long, env = "HAWSER_CNI_SOCKET")]
    pub cni_socket: Option<PathBuf>,

    /// The admin API's address.
    #[arg(long, env = "HAWSER_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// How long a removed pod's connections may finish before being closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Relayed connections idle this long are closed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long upstream connects may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Log filter (tracing EnvFilter syntax); changeable at run time through
    /// the admin API (`POST /logging?level=...`).
    #[arg(long, env = "HAWSER_LOG", default_value = "info")]
    pub log: String,

    /// Log as JSON lines.
    #[arg(long, env = "HAWSER_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// The CNI socket path.
    pub fn cni_socket(&self) -> PathBuf {
        self.cni_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("cni.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_the_socket_defaults_into_the_run_dir() {
        let args = Args::try_parse_from([
            "hawser-node-proxy",
            "--node-name",
            "node-1",
            "--control-plane",
            "172.31.255.254:15012",
            "--run-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(args.cni_socket(), PathBuf::from("/tmp/x/cni.sock"));
        assert_eq!(args.admin_addr.port(), 15000);
        assert!(
            Args::try_parse_from(["hawser-node-proxy"]).is_err(),
            "node name is required"
        );
    }
}
