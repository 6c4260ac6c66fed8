//! The `hawser-control-plane` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = hawser_control_plane::args::Args::parse();
    hawser_api::tls::install_crypto_provider();
    hawser_control_plane::run(args).await
}
