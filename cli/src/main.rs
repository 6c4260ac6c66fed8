//! `hawser`: the user's command.
//!
//! `hawser lab up|down|status|exec` runs a local multi-node mesh in network namespaces.
//! `hawser status routes|manifests|nodes` shows what the control plane reports.
//! `hawser demo identity` runs the identity flow on loopback and narrates it.
//! `hawser cert inspect` shows whose identity a certificate carries and
//! whether it verifies against a trust bundle, with the same verifier the node
//! proxies use, so an operator can check an SVID exactly as the mesh would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hawser_api::tls::{TrustBundle, uri_sans, verify_peer};
use hawser_api::{SpiffeId, TrustDomain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

#[macro_use]
mod out;

mod demo;
mod lab;
mod status;
mod verify;

/// Hawser, a sidecarless service mesh.
#[derive(Debug, Parser)]
#[command(name = "hawser", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A local multi-node mesh in network namespaces (root).
    Lab {
        #[command(flatten)]
        opts: lab::LabOpts,
        #[command(subcommand)]
        command: lab::LabCmd,
    },
    /// Demonstrations that run on this machine without a cluster.
    Demo {
        #[command(subcommand)]
        command: DemoCmd,
    },
    /// Status from the control plane's admin API.
    Status {
        /// What to show.
        #[arg(value_enum)]
        topic: status::Topic,
        /// The admin API address [default: 127.0.0.1:15014, then the
        /// control plane of a lab that is up on this machine].
        #[arg(long, env = "HAWSER_ADMIN_ADDR")]
        admin: Option<std::net::SocketAddr>,
        #[command(flatten)]
        lab: lab::LabOpts,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a request from a lab pod to a Service while capturing the
    /// node-to-node link: TLS version and cipher, both SPIFFE IDs, and
    /// whether any plaintext crossed. Exits 1 when it was not mTLS.
    VerifyMtls(verify::VerifyArgs),
    /// Certificates.
    Cert {
        #[command(subcommand)]
        command: CertCmd,
    },
}

#[derive(Debug, Subcommand)]
enum DemoCmd {
    /// Start a control plane (CA) on loopback, bootstrap a node, obtain
    /// workload certificates, and run mTLS between them.
    Identity {
        /// Where to leave the certificates for `openssl` (kept after the demo).
        #[arg(long, default_value = "hawser-demo")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// Show a certificate chain's SPIFFE ID and validity, and verify it.
    Inspect {
        /// PEM file: the leaf first, then any intermediates.
        chain: PathBuf,
        /// PEM trust bundle to verify against (e.g. the CA's trust-bundle.pem).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Require this SPIFFE ID.
        #[arg(long)]
        expect: Option<SpiffeId>,
        /// Trust domain the identity must belong to.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
    },
}

fn main() -> ExitCode {
    hawser_api::tls::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing more to
        // say, and the exit status a shell gives a command SIGPIPE ended
        // (128 + 13), never a success a check may not have earned.
        Err(e) if e.downcast_ref::<out::StdoutClosed>().is_some() => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-separated, each said once: a cause whose
/// text its parent already carries (an error that formats its source into
/// its own message) is not repeated.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Demo {
            command: DemoCmd::Identity { out },
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(demo::identity(&out))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lab { opts, command } => lab::run(opts, command),
        Cmd::Status {
            topic,
            admin,
            lab,
            json,
        } => {
            status::show(admin, &lab.config(), topic, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::VerifyMtls(args) => verify::run(args),
        Cmd::Cert {
            command:
                CertCmd::Inspect {
                    chain,
                    bundle,
                    expect,
                    trust_domain,
                },
        } => inspect(&chain, bundle.as_deref(), expect.as_ref(), &trust_domain),
    }
}

fn inspect(
    chain_path: &std::path::Path,
    bundle: Option<&std::path::Path>,
    expect: Option<&SpiffeId>,
    td: &TrustDomain,
) -> anyhow::Result<ExitCode> {
    let data =
        std::fs::read(chain_path).with_context(|| format!("reading {}", chain_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", chain_path.display()))?;
    let leaf = chain
        .first()
        .with_context(|| format!("{} holds no certificate", chain_path.display()))?;
    let uris = uri_sans(leaf)?;
    outln!(
        "URI SANs:     {}",
        if uris.is_empty() {
            "(none)".into()
        } else {
            uris.join(", ")
        }
    )?;
    outln!("chain length: {}", chain.len())?;
    let Some(bundle_path) = bundle else {
        return Ok(ExitCode::SUCCESS);
    };
    let bundle = TrustBundle::from_pem(
        &std::fs::read(bundle_path)
            .with_context(|| format!("reading {}", bundle_path.display()))?,
    )?;
    match verify_peer(&bundle, td, leaf, &chain[1..], UnixTime::now(), expect) {
        Ok(id) => {
            outln!("verified:     yes, as {id}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            outln!("verified:     NO: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::causes;

    /// An error that writes its source into its own message (as
    /// `LabError::Io` does), wrapped in context: each text once.
    #[derive(Debug, thiserror::Error)]
    #[error("/x/nope.yaml: {source}")]
    struct Io {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_an_error_already_says_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(Io { source: io }).context("applying the manifests");
        assert_eq!(
            format!("{e:#}"),
            "applying the manifests: /x/nope.yaml: No such file or directory: No such file or directory",
            "anyhow alone repeats it"
        );
        assert_eq!(
            causes(&e),
            "applying the manifests: /x/nope.yaml: No such file or directory"
        );
    }
}
