//! Command-line and environment configuration of the control plane binary,
//! parsed once into typed values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hawser_api::TrustDomain;

use crate::ca::{CaSource, RootRotation, SvidProfile};

/// The Hawser control plane.
#[derive(Debug, Parser)]
#[command(name = "hawser-control-plane", version, about)]
pub struct Args {
    /// Trust domain of every SPIFFE ID the mesh issues.
    #[arg(long, env = "HAWSER_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: TrustDomain,

    /// Directory of the self-signed root CA (created with mode 0700 on first start).
    #[arg(long, env = "HAWSER_CA_DIR", default_value = "/var/lib/hawser/ca")]
    pub ca_dir: PathBuf,

    /// Operator-supplied intermediate CA certificate (PEM). With --ca-key and
    /// --ca-chain, replaces the self-signed root.
    #[arg(long, env = "HAWSER_CA_CERT", requires_all = ["ca_key", "ca_chain"])]
    pub ca_cert: Option<PathBuf>,

    /// Private key of --ca-cert (PEM, mode 0600).
    #[arg(long, env = "HAWSER_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Certificates above --ca-cert, ending with the operator's root (PEM).
    #[arg(long, env = "HAWSER_CA_CHAIN", requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,

    /// Validity of a newly generated root.
    #[arg(long, default_value = "87600h", value_parser = parse_duration)]
    pub root_lifetime: Duration,

    /// Validity of issued workload and node certificates.
    #[arg(long, env = "HAWSER_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,

    /// How far issued certificates are backdated for clock skew.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub cert_backdate: Duration,

    /// Directory of per-node bootstrap tokens: one file per node, named after
    /// the node, holding its token.
    #[arg(
        long,
        env = "HAWSER_BOOTSTRAP_TOKENS",
        default_value = "/var/lib/hawser/bootstrap-tokens"
    )]
    pub bootstrap_token_dir: PathBuf,

    /// Directory of Kubernetes manifests (multi-document YAML) to serve the
    /// mesh from, watched for changes: the source used without a cluster.
    #[arg(long, env = "HAWSER_MANIFESTS")]
    pub manifests: Option<PathBuf>,

    /// Address of the gRPC (TLS) server: identity, discovery.
    #[arg(long, env = "HAWSER_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin API (plain HTTP: status of routes, manifests and
    /// node streams). Keep it on localhost.
    #[arg(long, env = "HAWSER_ADMIN_ADDR", default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,

    /// Sustained certificate requests per second allowed per node.
    #[arg(long, default_value_t = 50)]
    pub node_rate_limit: u32,

    /// Burst of certificate requests allowed per node.
    #[arg(long, default_value_t = 200)]
    pub node_rate_burst: u32,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "HAWSER_LOG", default_value = "info")]
    pub log: String,

    /// Log as JSON lines.
    #[arg(long, env = "HAWSER_LOG_JSON")]
    pub log_json: bool,

    /// An operation to run instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operations besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Root rotation steps on the self-signed CA in --ca-dir (see ARCHITECTURE.md).
    RotateRoot {
        /// prepare, activate or finish.
        #[arg(value_enum)]
        step: RootRotation,
    },
}

impl Args {
    /// Where the CA's signing key comes from.
    pub fn ca_source(&self) -> CaSource {
        match (&self.ca_cert, &self.ca_key, &self.ca_chain) {
            (Some(cert), Some(key), Some(chain)) => CaSource::Intermediate {
                cert: cert.clone(),
                key: key.clone(),
                chain: chain.clone(),
            },
            _ => CaSource::SelfSigned {
                dir: self.ca_dir.clone(),
                root_lifetime: self.root_lifetime,
            },
        }
    }

    /// The leaf certificate profile.
    pub fn profile(&self) -> SvidProfile {
        SvidProfile {
            lifetime: self.cert_lifetime,
            backdate: self.cert_backdate,
        }
    }
}

pub use hawser_api::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intermediate_flags_go_together() {
        assert!(Args::try_parse_from(["cp", "--ca-cert", "a.pem"]).is_err());
        let args =
            Args::try_parse_from(["cp", "--ca-cert", "a", "--ca-key", "b", "--ca-chain", "c"])
                .unwrap();
        assert!(matches!(args.ca_source(), CaSource::Intermediate { .. }));
    }
}
