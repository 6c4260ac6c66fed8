//! `hawser-node-proxy`: the one proxy per node. See [`hawser_node_proxy::app`].

use clap::Parser as _;
use hawser_node_proxy::app::{self, args::Args};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match app::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hawser-node-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
