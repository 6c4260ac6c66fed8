//! The `hawser-control-plane` binary.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = hawser_control_plane::args::Args::parse();
    hawser_api::tls::install_crypto_provider();
    match hawser_control_plane::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
