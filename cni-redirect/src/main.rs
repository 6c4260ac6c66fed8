//! The `hawser-cni` binary: a CNI plugin when the runtime runs it (no
//! arguments, `CNI_COMMAND` set), the installer otherwise
//! (`hawser-cni install|uninstall …`).

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return hawser_cni::installer::cli::main();
    }
    let outcome = hawser_cni::run(&|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut stdout = std::io::stdout().lock();
    match outcome {
        hawser_cni::Outcome::Success(out) => {
            let _ = stdout.write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        hawser_cni::Outcome::Failure(err) => {
            let _ = stdout.write_all(err.as_bytes());
            ExitCode::FAILURE
        }
        hawser_cni::Outcome::About(text) => {
            eprintln!("{text}");
            ExitCode::SUCCESS
        }
    }
}
