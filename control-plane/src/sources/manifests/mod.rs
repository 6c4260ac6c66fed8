//! The manifest-directory source: a directory of YAML files (multi-document)
//! kept in the index as `kubectl apply --prune` would keep a cluster.
//!
//! The directory is scanned every `poll_interval` (default 200 ms, so an
//! edit reaches the index well within a second) on a blocking thread; only
//! files whose size, modification time or content changed are re-read. Each
//! scan that changes anything is applied as one index batch. An invalid
//! document is reported ([`ManifestError`]: file, document, field, reason)
//! and skipped; the rest of the file applies, and the last valid version of
//! the object it describes stays in force. Objects whose documents disappear
//! are deleted. Kinds the mesh does not use (Deployments, ConfigMaps, …) are
//! ignored.

mod apiserver;
pub mod document;
mod parse;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use apiserver::ServiceCidr;
pub use parse::{ManifestError, ParsedFile, parse, typed};

use crate::index::{SharedIndex, Update};
use crate::model::{Object, ObjectRef};
use apiserver::ApiServer;

/// Settings of the manifest source.
#[derive(Debug, Clone)]
pub struct ManifestConfig {
    /// The directory (scanned recursively; hidden entries skipped).
    pub dir: PathBuf,
    /// How often to scan.
    pub poll_interval: Duration,
    /// Where ClusterIPs of Services without one are allocated.
    pub service_cidr: ServiceCidr,
}

impl ManifestConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll_interval: Duration::from_millis(200),
            service_cidr: ServiceCidr::default(),
        }
    }
}

/// What the last scan found wrong or skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestReport {
    /// Invalid documents, by file then document.
    pub errors: Vec<ManifestError>,
    /// Documents of kinds the mesh does not use: `file: apiVersion kind name`.
    pub ignored: Vec<String>,
    /// The directory itself could not be read.
    pub dir_error: Option<String>,
}

#[derive(Debug)]
struct FileState {
    stamp: (u64, Option<SystemTime>),
    content_hash: u64,
    objects: BTreeMap<ObjectRef, Object>,
    errors: Vec<ManifestError>,
    ignored: Vec<String>,
}

/// The source: call [`ManifestSource::scan`] (blocking) or [`ManifestSource::run`].
#[derive(Debug)]
pub struct ManifestSource {
    config: ManifestConfig,
    index: SharedIndex,
    files: BTreeMap<PathBuf, FileState>,
    /// Which file defines each object.
    owners: HashMap<ObjectRef, PathBuf>,
    api: ApiServer,
    report: watch::Sender<Arc<ManifestReport>>,
}

impl ManifestSource {
    /// A source feeding `index` from `config.dir`.
    pub fn new(config: ManifestConfig, index: SharedIndex) -> Self {
        let api = ApiServer::new(config.service_cidr);
        Self {
            config,
            index,
            files: BTreeMap::new(),
            owners: HashMap::new(),
            api,
            report: watch::Sender::new(Arc::new(ManifestReport::default())),
        }
    }

    /// The report of the latest scan (errors are also logged when they appear).
    pub fn report(&self) -> watch::Receiver<Arc<ManifestReport>> {
        self.report.subscribe()
    }

    /// Scans until `shutdown` turns true (or its sender is dropped). File I/O
    /// runs on the blocking pool.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.config.poll_interval;
        loop {
            let joined = tokio::task::spawn_blocking(move || {
                self.scan();
                self
            })
            .await;
            self = match joined {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "manifest scan panicked; the manifest source stops");
                    return;
                }
            };
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// One scan (blocking): re-reads changed files and applies the
    /// difference as one batch. Returns the index version after it.
    pub fn scan(&mut self) -> u64 {
        let mut dir_error = None;
        let mut paths = Vec::new();
        if let Err(e) = walk(&self.config.dir, &mut paths) {
            dir_error = Some(format!("cannot read {}: {e}", self.config.dir.display()));
        }
        let present: HashSet<&PathBuf> = paths.iter().collect();
        let mut updates = Vec::new();
        let mut touched = false;

        // Files that disappeared: their objects go.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                touched = true;
                for r in state.objects.into_keys() {
                    if self.owners.get(&r) == Some(&path) {
                        self.owners.remove(&r);
                        self.api.forget(&r);
                        updates.push(Update::Delete(r));
                    }
                }
            }
        }

        for path in &paths {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let stamp = (meta.len(), meta.modified().ok());
            if self.files.get(path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let contents = match std::fs::read_to_string(path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read manifest");
                    continue;
                }
            };
            let content_hash = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                contents.hash(&mut h);
                h.finish()
            };
            if let Some(f) = self.files.get_mut(path)
                && f.content_hash == content_hash
            {
                f.stamp = stamp;
                continue;
            }
            touched = true;
            self.reload(path, &contents, stamp, content_hash, &mut updates);
        }

        // The index first, then the report: whoever sees a document in the
        // report can rely on the index holding this scan's objects.
        let version = if updates.is_empty() {
            self.index.read().version()
        } else {
            self.index.update(updates)
        };
        if touched || dir_error.is_some() {
            let report = ManifestReport {
                errors: self
                    .files
                    .values()
                    .flat_map(|f| f.errors.iter().cloned())
                    .collect(),
                ignored: self
                    .files
                    .values()
                    .flat_map(|f| f.ignored.iter().cloned())
                    .collect(),
                dir_error,
            };
            self.report.send_if_modified(|old| {
                if **old == report {
                    return false;
                }
                *old = Arc::new(report);
                true
            });
        }
        version
    }

    fn reload(
        &mut self,
        path: &Path,
        contents: &str,
        stamp: (u64, Option<SystemTime>),
        content_hash: u64,
        updates: &mut Vec<Update>,
    ) {
        let parsed = parse(path, contents);
        let previous = self
            .files
            .remove(path)
            .map(|f| f.objects)
            .unwrap_or_default();
        let mut errors = parsed.errors;
        for e in &errors {
            tracing::warn!(error = %e, "invalid manifest skipped");
        }
        let mut objects: BTreeMap<ObjectRef, Object> = BTreeMap::new();
        for (document, mut object) in parsed.objects {
            let r = object.object_ref();
            if let Some(owner) = self.owners.get(&r).filter(|o| o.as_path() != path) {
                let e = ManifestError {
                    file: path.to_path_buf(),
                    document,
                    object: Some(r.clone()),
                    field: String::new(),
                    reason: format!("{r} is already defined in {}", owner.display()),
                };
                tracing::warn!(error = %e, "duplicate manifest skipped");
                errors.push(e);
                continue;
            }
            if objects.contains_key(&r) {
                errors.push(ManifestError {
                    file: path.to_path_buf(),
                    document,
                    object: Some(r.clone()),
                    field: String::new(),
                    reason: format!("{r} is defined twice in this file; the first one applies"),
                });
                continue;
            }
            self.api.admit(&mut object);
            objects.insert(r, object);
        }
        // The last valid version of an object whose document is now invalid
        // stays in force; so does everything when a document could not even
        // be attributed to an object.
        let keep: Vec<ObjectRef> = if parsed.unattributed_errors {
            previous.keys().cloned().collect()
        } else {
            parsed.invalid
        };
        for r in keep {
            if let Some(old) = previous.get(&r)
                && !objects.contains_key(&r)
            {
                objects.insert(r, old.clone());
            }
        }
        for (r, object) in &objects {
            if previous.get(r) != Some(object) {
                self.owners.insert(r.clone(), path.to_path_buf());
                updates.push(Update::Apply(object.clone()));
            }
        }
        for r in previous.keys() {
            if !objects.contains_key(r) && self.owners.get(r).is_some_and(|o| o == path) {
                self.owners.remove(r);
                self.api.forget(r);
                updates.push(Update::Delete(r.clone()));
            }
        }
        let ignored = parsed
            .ignored
            .into_iter()
            .map(|i| format!("{}: {i}", path.display()))
            .collect();
        self.files.insert(
            path.to_path_buf(),
            FileState {
                stamp,
                content_hash,
                objects,
                errors,
                ignored,
            },
        );
    }
}

/// Manifest files under `dir` (`.yaml`, `.yml`, `.json`), sorted; hidden
/// entries skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // An unreadable subdirectory is skipped; the rest still applies.
            let _ = walk(&path, out);
        } else if path
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}
