//! `hawser-cni`: the chained CNI plugin that redirects enrolled pods into
//! Hawser's node proxy, and the installer that chains it into the node's
//! primary CNI configuration.
//!
//! # Traffic redirection
//!
//! The plugin runs last in the pod network's conflist (after e.g. `bridge` +
//! `host-local`). On ADD it asks the node proxy over its Unix socket whether
//! the pod is enrolled (protocol: `api/proto/cni.proto`,
//! [`hawser_api::cni`]); if so it writes the `inet hawser` nftables table
//! into the pod's netns ([`nft::rules`]) and hands the netns to the proxy as a
//! file descriptor over `SCM_RIGHTS`. Inside the pod:
//!
//! - outbound TCP → `15001`, inbound TCP → `15006`, except to `15008` (HBONE);
//! - packets carrying the proxy's mark `0x539` are never redirected (the
//!   proxy's own connections);
//! - loopback is never redirected;
//! - per-pod excluded ports and CIDRs (pod annotations, relayed by the proxy)
//!   bypass the proxy.
//!
//! # Kubelet health probes
//!
//! Kubelet probes a pod from the node's own network namespace. The node
//! proxy SNATs kubelet's connections to enrolled pods (and no other
//! process's: it matches kubelet's cgroup) to the link-local
//! `169.254.7.127` (`hawser_api::cni::PROBE_SOURCE_V4`), and hands that
//! address to the plugin as the pod's probe source (`probe_source_addresses`).
//! Inbound TCP from it is not captured and reaches the app directly, as
//! without a mesh. Everything else from the node (host-network pods, node
//! processes, NodePort traffic SNATed to a node address) is captured like
//! any plaintext connection and judged by the pod's policies. The plugin adds
//! no source of its own (not the bridge gateway, which is the node).
//!
//! # Failure behaviour
//!
//! When the proxy is unreachable, pods in namespaces on the proxy's last
//! persisted enrolled list fail with CNI code 11 (kubelet retries); other pods
//! pass untouched ([`proxy_client`]). A failure after rules were written
//! removes them again ([`commands::add`]).
//!
//! # Modules
//!
//! - [`cni`]: spec types (environment, configuration, errors);
//! - [`commands`]: ADD, DEL, CHECK, STATUS, GC;
//! - [`nft`]: rule generation and the `nft` runner;
//! - [`netns`]: opening and entering the pod netns;
//! - [`proxy_client`]: the conversation with the node proxy;
//! - [`state`]: per-attachment records for DEL, CHECK and GC;
//! - [`installer`]: `hawser-cni install` / `uninstall`;
//! - [`log`]: the log file.

pub mod cni;
pub mod commands;
pub mod installer;
pub mod log;
pub mod netns;
pub mod nft;
pub mod proxy_client;
pub mod state;

use std::io::Read;

use cni::config::{LATEST_VERSION, version_hint};
use cni::env::EnvError;
use cni::{CniEnv, CniError, Command, ErrorCode, NetConf, SUPPORTED_VERSIONS};
use commands::{Invocation, Output};

/// Largest stdin accepted (a conflist entry plus prevResult is a few KiB).
const MAX_STDIN: u64 = 1 << 20;

/// What the plugin process should do on exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Print `stdout` (possibly empty) and exit 0.
    Success(String),
    /// Print the error JSON and exit 1.
    Failure(String),
    /// Run by hand without `CNI_COMMAND`: print this to stderr, exit 0.
    About(String),
}

/// Runs one CNI invocation: environment through `get_env`, configuration on
/// `stdin`.
pub fn run(get_env: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut input = Vec::new();
    let read = stdin.take(MAX_STDIN + 1).read_to_end(&mut input);
    // Errors echo the configuration's cniVersion, as the spec asks.
    let hint = version_hint(&input);
    let version = hint.clone().unwrap_or_else(|| LATEST_VERSION.to_string());
    let env = match CniEnv::parse(get_env) {
        Ok(env) => env,
        Err(EnvError::NoCommand) => return Outcome::About(about()),
        Err(e) => return Outcome::Failure(CniError::from(e).to_json(&version)),
    };
    if env.command == Command::Version {
        let reported = hint
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST_VERSION.to_string());
        let json = serde_json::json!({
            "cniVersion": reported,
            "supportedVersions": SUPPORTED_VERSIONS,
        });
        return Outcome::Success(json.to_string());
    }
    if let Err(e) = read {
        let err = CniError::new(
            ErrorCode::IoFailure,
            format!("cannot read the network configuration from stdin: {e}"),
            "the runtime must pass the configuration on stdin",
        );
        return Outcome::Failure(err.to_json(&version));
    }
    if input.len() as u64 > MAX_STDIN {
        let err = CniError::new(
            ErrorCode::DecodingFailure,
            format!("the network configuration on stdin is larger than {MAX_STDIN} bytes"),
            "pass only the plugin's configuration (with prevResult)",
        );
        return Outcome::Failure(err.to_json(&version));
    }
    let conf = match NetConf::parse(&input) {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(CniError::from(e).to_json(&version)),
    };
    log::init(&conf.plugin.log_file, conf.plugin.log_level);
    let inv = Invocation {
        env: &env,
        conf: &conf,
    };
    let pod = cni::k8s_args::pod_identity(env.args.as_deref()).ok();
    let span = tracing::info_span!(
        "cni",
        cmd = env.command.as_str(),
        container = env.container_id.as_ref().map_or("-", |c| c.as_str()),
        pod = %pod.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
    );
    let _enter = span.enter();
    let result = match env.command {
        Command::Add => {
            commands::add::pod_identity(&inv).and_then(|p| commands::add::run(&inv, &p))
        }
        Command::Del => commands::del::run(&inv),
        Command::Check => commands::check::run(&inv),
        Command::Status => commands::status::run(&inv),
        Command::Gc => commands::gc::run(&inv),
        Command::Version => Ok(Output::Nothing),
    };
    match result {
        Ok(Output::Print(s)) => Outcome::Success(s),
        Ok(Output::Nothing) => Outcome::Success(String::new()),
        Err(e) => {
            tracing::error!(code = e.code.code(), msg = %e.msg, "failed");
            Outcome::Failure(e.to_json(&conf.cni_version))
        }
    }
}

fn about() -> String {
    format!(
        "hawser-cni {}: chained CNI plugin redirecting enrolled pods into the Hawser node proxy\n\
         CNI protocol versions supported: {}\n\
         Installer: hawser-cni install --help",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.join(", ")
    )
}
