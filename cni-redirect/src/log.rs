//! Logging to a file: stdout is the CNI protocol and stderr is easily lost,
//! so every line goes to the configured `logFile`, appended with one
//! `write(2)` per line (`O_APPEND`) so concurrent plugin processes never
//! interleave. Each line carries the invocation's span: command, container
//! and pod (`cni{cmd=ADD container=… pod=shop/web-0}: …`).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;

use crate::cni::config::LogLevel;

/// Installs the global subscriber writing to `path`; falls back to stderr
/// (and says so there) when the file cannot be opened.
pub fn init(path: &Path, level: LogLevel) {
    let filter = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(filter);
    let installed = match OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => {
            tracing::subscriber::set_global_default(builder.with_writer(Mutex::new(file)).finish())
        }
        Err(e) => {
            eprintln!(
                "hawser-cni: cannot open log file {}: {e}; logging to stderr",
                path.display()
            );
            tracing::subscriber::set_global_default(builder.with_writer(std::io::stderr).finish())
        }
    };
    // A second init in the same process (tests) keeps the first subscriber.
    drop(installed);
}
