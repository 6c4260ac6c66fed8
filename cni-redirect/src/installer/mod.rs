//! `hawser-cni install` / `uninstall`: put the plugin binary into the CNI bin
//! directory and chain the plugin as the last entry of the node's primary
//! conflist, the way istio-cni's installer does.
//!
//! - The primary conflist is the one the runtime loads: the first file of
//!   the config directory, in lexical order, ending in `.conf`, `.conflist`
//!   or `.json`.
//! - Every write is atomic (temporary file in the same directory, fsync,
//!   rename) and keeps the file's permissions; a file that would not change
//!   is not rewritten, so running install again changes nothing.
//! - The edit is textual ([`conflist`]): everything else in the file keeps
//!   its bytes, and uninstall restores the file exactly.
//! - [`watch`] re-applies the installation whenever the primary CNI rewrites
//!   its configuration (and removes it on shutdown when asked).

pub mod cli;
pub mod conflist;

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

pub use conflist::{ConflistError, PLUGIN_TYPE};

/// Name of the installed binary (the conflist `type`).
pub const BINARY_NAME: &str = "hawser-cni";

/// What to install where.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The runtime's CNI binary directory (e.g. `/opt/cni/bin`).
    pub cni_bin_dir: PathBuf,
    /// The runtime's CNI configuration directory (e.g. `/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// The binary to copy (normally this executable).
    pub source_binary: PathBuf,
    /// The plugin's keys, in order, without `type`.
    pub plugin_keys: Vec<(&'static str, Value)>,
}

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// No CNI configuration to chain into yet.
    #[error(
        "no CNI configuration (*.conf, *.conflist, *.json) in {0}; is the primary CNI installed?"
    )]
    NoPrimary(PathBuf),
    /// The primary configuration cannot be edited.
    #[error("primary CNI configuration {path} {source}")]
    Conflist {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ConflistError,
    },
}

/// What an installation changed.
#[derive(Debug, PartialEq, Eq)]
pub struct InstallReport {
    /// Whether the binary was (re)written.
    pub binary_written: bool,
    /// The conflist the plugin is chained into.
    pub conflist: PathBuf,
    /// Whether the conflist was rewritten.
    pub conflist_written: bool,
}

impl InstallReport {
    /// Whether anything changed on disk.
    pub fn changed(&self) -> bool {
        self.binary_written || self.conflist_written
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Configuration files in the order the runtime considers them.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The conflist the runtime uses.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    config_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary(dir.to_path_buf()))
}

/// Replaces `path` with `contents` atomically, keeping `mode`.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A dot-file without a config extension: runtimes never load it.
    let mut tmp = tempfile::Builder::new()
        .prefix(".hawser-cni-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(contents).map_err(io_err(path))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| InstallError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn copy_binary(opts: &InstallOptions) -> Result<bool, InstallError> {
    let target = opts.cni_bin_dir.join(BINARY_NAME);
    let new = std::fs::read(&opts.source_binary).map_err(io_err(&opts.source_binary))?;
    match std::fs::read(&target) {
        Ok(old) if old == new => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&target)(e)),
    }
    std::fs::create_dir_all(&opts.cni_bin_dir).map_err(io_err(&opts.cni_bin_dir))?;
    write_atomic(&target, &new, 0o755)?;
    Ok(true)
}

fn entry(opts: &InstallOptions) -> Vec<(&'static str, Value)> {
    let mut e = vec![("type", Value::String(PLUGIN_TYPE.into()))];
    e.extend(opts.plugin_keys.iter().cloned());
    e
}

/// Installs (idempotently): binary, then the conflist entry.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    let binary_written = copy_binary(opts)?;
    let path = primary_config(&opts.cni_conf_dir)?;
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let edited =
        conflist::ensure_entry(&text, &entry(opts)).map_err(|source| InstallError::Conflist {
            path: path.clone(),
            source,
        })?;
    let conflist_written = match edited {
        Some(new) => {
            let mode = std::fs::metadata(&path)
                .map_err(io_err(&path))?
                .permissions()
                .mode();
            write_atomic(&path, new.as_bytes(), mode & 0o7777)?;
            true
        }
        None => false,
    };
    Ok(InstallReport {
        binary_written,
        conflist: path,
        conflist_written,
    })
}

/// Removes the entry from every configuration file that has one (byte-exact
/// restore) and deletes the binary. Returns the files it rewrote.
pub fn uninstall(cni_bin_dir: &Path, cni_conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut rewritten = Vec::new();
    let files = match config_files(cni_conf_dir) {
        Ok(f) => f,
        Err(InstallError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        // Files that are not conflists (or not JSON) cannot hold our entry.
        if let Ok(Some(restored)) = conflist::remove_entry(&text) {
            let mode = std::fs::metadata(&path)
                .map_err(io_err(&path))?
                .permissions()
                .mode();
            write_atomic(&path, restored.as_bytes(), mode & 0o7777)?;
            rewritten.push(path);
        }
    }
    let bin = cni_bin_dir.join(BINARY_NAME);
    match std::fs::remove_file(&bin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&bin)(e)),
    }
    Ok(rewritten)
}

/// Keeps the installation in place until `stop` is set: re-applies it every
/// `interval` (a no-op unless something changed, e.g. the primary CNI
/// rewrote its conflist and dropped our entry).
pub fn watch(opts: &InstallOptions, interval: Duration, stop: &AtomicBool) {
    let tick = Duration::from_millis(100).min(interval);
    while !stop.load(Ordering::SeqCst) {
        match install(opts) {
            Ok(r) if r.changed() => tracing::info!(
                conflist = %r.conflist.display(),
                binary_written = r.binary_written,
                conflist_written = r.conflist_written,
                "hawser-cni (re)installed"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot install hawser-cni yet"),
        }
        let mut waited = Duration::ZERO;
        while waited < interval && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(tick);
            waited += tick;
        }
    }
}
