//! `hawser-lab-dns`: the lab's cluster DNS server (see `hawser_tests::lab::dns`).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The lab's cluster DNS.
#[derive(Debug, Parser)]
struct Args {
    /// UDP address to answer on.
    #[arg(long)]
    listen: SocketAddr,
    /// The records file the lab writes (JSON: name → addresses).
    #[arg(long)]
    records: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = match UdpSocket::bind(args.listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot bind {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match hawser_tests::lab::dns::serve(&socket, &args.records) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
