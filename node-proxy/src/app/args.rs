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

    /// Relayed connections idle this long are closed, and HTTP client
    /// connections that wait on their client this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Connections the proxy holds at once on all pods' listeners; more are
    /// reset when accepted and counted (default: from the open-files limit,
    /// two descriptors a connection).
    #[arg(long, env = "HAWSER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Of those, from one source address (default: a quarter of the total).
    #[arg(long, env = "HAWSER_MAX_CONNECTIONS_PER_SOURCE")]
    pub max_connections_per_source: Option<usize>,

    /// How long an HTTP request head may take to arrive once its first byte
    /// has (Envoy's request_headers_timeout); a slower one gets a 408.
    #[arg(long, env = "HAWSER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// The protocols clients may upgrade HTTP connections to, comma
    /// separated (Envoy's and Istio's default: websocket). A request asking
    /// for another (h2c, …) is served as plain HTTP/1.1, its upgrade
    /// fields removed, so no request escapes authorization after a `101`.
    #[arg(
        long,
        env = "HAWSER_ALLOWED_UPGRADES",
        default_value = "websocket",
        value_delimiter = ','
    )]
    pub allowed_upgrades: Vec<String>,

    /// How request paths are normalized before inbound authorization, with
    /// Istio's names: `base` (RFC 3986, `\` as `/`), `merge-slashes` (also
    /// `//` as `/`), `decode-and-merge-slashes` (also `%2F`/`%5C` decoded).
    #[arg(
        long,
        env = "HAWSER_PATH_NORMALIZATION",
        value_enum,
        default_value = "base"
    )]
    pub path_normalization: PathNormalizationArg,

    /// Refuse (400) paths with `%2F` or `%5C` instead of keeping them (Envoy's
    /// `path_with_escaped_slashes_action: REJECT_REQUEST`); not with
    /// `decode-and-merge-slashes`, which decodes them.
    #[arg(long, env = "HAWSER_REJECT_ESCAPED_SLASHES")]
    pub reject_escaped_slashes: bool,

    /// Kubelet's cgroup, below the cgroup v2 root: its probes to enrolled
    /// pods, and only they, skip authorization (sent from 169.254.7.127).
    /// Empty: no connection from the node skips it.
    #[arg(
        long,
        env = "HAWSER_KUBELET_CGROUP",
        default_value = "system.slice/kubelet.service"
    )]
    pub kubelet_cgroup: String,

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

    /// Threads that run the data plane (default: half the CPUs this
    /// process may use, at least 1: the proxy shares the node with its
    /// pods). `1` runs everything on one thread, which costs the least CPU
    /// per request (no wake-ups across threads) while one core keeps up.
    #[arg(long, env = "HAWSER_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl Args {
    /// How many threads run the data plane (see `--worker-threads`).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || {
                default_worker_threads(
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                )
            },
            std::num::NonZeroUsize::get,
        )
    }

    /// The runtime the proxy runs on: one thread, or a multi-threaded one
    /// (see `--worker-threads`).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads() {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        builder.thread_name("hawser-proxy").enable_all().build()
    }

    /// The connection caps: the flags, or defaults for `max_files` open
    /// files.
    pub fn connection_caps(&self, max_files: u64) -> crate::dataplane::limits::ConnectionCaps {
        let defaults = crate::dataplane::limits::ConnectionCaps::for_file_limit(max_files);
        let total = self.max_connections.unwrap_or(defaults.total);
        crate::dataplane::limits::ConnectionCaps {
            total,
            per_source: self
                .max_connections_per_source
                .unwrap_or(defaults.per_source.min(total)),
        }
    }

    /// The CNI socket path.
    pub fn cni_socket(&self) -> PathBuf {
        self.cni_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("cni.sock"))
    }
}

/// `--path-normalization`, with Istio's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathNormalizationArg {
    /// RFC 3986 normalization and `\` as `/` (Istio's BASE).
    Base,
    /// BASE, and `//` merged (Istio's MERGE_SLASHES).
    MergeSlashes,
    /// MERGE_SLASHES, and `%2F`/`%5C` decoded first (Istio's
    /// DECODE_AND_MERGE_SLASHES).
    DecodeAndMergeSlashes,
}

impl Args {
    /// The path normalization the flags ask for.
    pub fn path_normalization(&self) -> crate::authz::PathNormalization {
        use crate::authz::{EscapedSlashes, PathNormalization};
        let escaped = if self.reject_escaped_slashes {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        };
        match self.path_normalization {
            PathNormalizationArg::Base => PathNormalization {
                merge_slashes: false,
                escaped_slashes: escaped,
            },
            PathNormalizationArg::MergeSlashes => PathNormalization {
                merge_slashes: true,
                escaped_slashes: escaped,
            },
            PathNormalizationArg::DecodeAndMergeSlashes => PathNormalization {
                merge_slashes: true,
                escaped_slashes: EscapedSlashes::DecodeAndMerge,
            },
        }
    }
}

/// The default worker threads for `cpus` usable CPUs: half, at least one
/// (the load generators and apps of the node need the rest).
fn default_worker_threads(cpus: usize) -> usize {
    (cpus / 2).max(1)
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
        // Default: half the CPUs this process may use, at least one.
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(args.worker_threads(), super::default_worker_threads(cpus));
        let defaults: Vec<usize> = [1, 2, 3, 8].map(super::default_worker_threads).into();
        assert_eq!(defaults, [1, 1, 1, 4]);
        let base = [
            "hawser-node-proxy",
            "--node-name",
            "n",
            "--control-plane",
            "cp:1",
        ];
        let threads = |n: &str| {
            Args::try_parse_from(base.iter().copied().chain(["--worker-threads", n]))
                .map(|a| a.worker_threads())
        };
        assert_eq!(threads("3").unwrap(), 3);
        assert!(threads("0").is_err(), "zero threads is refused");
        assert!(
            Args::try_parse_from(["hawser-node-proxy"]).is_err(),
            "node name is required"
        );
    }
}
