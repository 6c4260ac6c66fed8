//! `hawser-node-proxy`: the one proxy per node. See [`hawser_node_proxy::app`].

use clap::Parser as _;
use hawser_node_proxy::app::{self, args::Args};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match args.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hawser-node-proxy: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hawser-node-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
