//! Command line of the installer (`hawser-cni install|uninstall`), run by the
//! node DaemonSet's install container or by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use super::{InstallOptions, install, uninstall, watch};

#[derive(Parser, Debug)]
#[command(
    name = "hawser-cni",
    version,
    about = "Install or remove the hawser-cni chained CNI plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Copy the binary into the CNI bin dir and chain the plugin last in the
    /// primary conflist.
    Install(InstallArgs),
    /// Remove the plugin from every conflist (restoring it exactly) and
    /// delete the binary.
    Uninstall(Dirs),
}

#[derive(Args, Debug)]
struct Dirs {
    /// The container runtime's CNI binary directory.
    #[arg(long, env = "HAWSER_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The container runtime's CNI configuration directory.
    #[arg(long, env = "HAWSER_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Args, Debug)]
struct InstallArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// The binary to install (default: this executable).
    #[arg(long, env = "HAWSER_CNI_SOURCE")]
    source: Option<PathBuf>,
    /// The node proxy's CNI socket (conflist key `socketPath`).
    #[arg(long, env = "HAWSER_CNI_SOCKET", default_value = hawser_api::cni::DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
    /// Run directory shared with the node proxy (conflist key `runDir`).
    #[arg(long, env = "HAWSER_RUN_DIR", default_value = hawser_api::cni::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The plugin's log file (conflist key `logFile`).
    #[arg(long, env = "HAWSER_CNI_LOG_FILE", default_value = crate::cni::config::DEFAULT_LOG_FILE)]
    log_file: PathBuf,
    /// The plugin's log level (conflist key `logLevel`).
    #[arg(long, env = "HAWSER_CNI_LOG_LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug"])]
    log_level: String,
    /// Keep running and re-install whenever the primary CNI rewrites its
    /// configuration (the DaemonSet mode).
    #[arg(long)]
    watch: bool,
    /// With --watch: seconds between checks.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval_secs: u64,
    /// With --watch: uninstall when stopped by SIGTERM/SIGINT.
    #[arg(long)]
    uninstall_on_exit: bool,
}

/// Parses the command line and runs the installer.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Cmd::Uninstall(dirs) => {
            let files = uninstall(&dirs.cni_bin_dir, &dirs.cni_conf_dir)?;
            tracing::info!(restored = ?files, "hawser-cni uninstalled");
            Ok(())
        }
        Cmd::Install(args) => {
            let source = match args.source {
                Some(s) => s,
                None => std::env::current_exe()?,
            };
            let path = |p: &PathBuf| Value::String(p.display().to_string());
            let opts = InstallOptions {
                cni_bin_dir: args.dirs.cni_bin_dir.clone(),
                cni_conf_dir: args.dirs.cni_conf_dir.clone(),
                source_binary: source,
                plugin_keys: vec![
                    ("socketPath", path(&args.socket_path)),
                    ("runDir", path(&args.run_dir)),
                    ("logFile", path(&args.log_file)),
                    ("logLevel", Value::String(args.log_level.clone())),
                ],
            };
            if !args.watch {
                let report = install(&opts)?;
                tracing::info!(
                    conflist = %report.conflist.display(),
                    changed = report.changed(),
                    "hawser-cni installed"
                );
                return Ok(());
            }
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            watch(&opts, Duration::from_secs(args.interval_secs), &stop);
            if args.uninstall_on_exit {
                let files = uninstall(&args.dirs.cni_bin_dir, &args.dirs.cni_conf_dir)?;
                tracing::info!(restored = ?files, "hawser-cni uninstalled on exit");
            }
            Ok(())
        }
    }
}
