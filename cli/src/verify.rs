//! `hawser verify-mtls`: sends a request from a lab pod to a Service while
//! capturing the node-to-node link, and shows whether it travelled as mTLS
//! (TLS version and cipher, both SPIFFE IDs, plaintext on the link). The
//! work is `hawser_tests::lab::verify`; this is its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hawser_tests::lab::verify::{ObjectRef, VerifyOptions, render_text, verify_mtls};
use hawser_tests::lab::{Lab, LabConfig};

/// `hawser verify-mtls <ns>/<pod> <ns>/<service>`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The pod that sends the request, `<namespace>/<pod>`.
    client: ObjectRef,
    /// The Service it goes to, `<namespace>/<service>`.
    service: ObjectRef,
    /// The Service port (default: its first port).
    #[arg(long)]
    port: Option<u16>,
    /// Requests to send until one is answered by a pod on another node.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    attempts: u32,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// Keep the capture in this pcap file (for Wireshark or tcpdump -r).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Print the whole report as JSON.
    #[arg(long)]
    json: bool,
    /// The lab's state directory (as for `hawser lab`).
    #[arg(long, env = "HAWSER_LAB_DIR", default_value = "/var/run/hawser-lab")]
    state_dir: PathBuf,
}

/// Runs the check and prints the report. Exit status 0 when the request
/// travelled as mTLS, 1 when it did not.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let lab = Lab::load(&LabConfig::new("", 0, &args.state_dir))?;
    let mut opts = VerifyOptions::new(args.client, args.service);
    opts.port = args.port;
    opts.attempts = args.attempts;
    opts.timeout = Duration::from_secs(args.timeout_secs);
    opts.pcap_out = args.pcap;
    let report = verify_mtls(&lab, &opts)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", render_text(&report))?;
    }
    Ok(if report.mtls {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
