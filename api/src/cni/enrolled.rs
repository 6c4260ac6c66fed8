//! The enrolled-namespaces file: the node proxy's last known list of
//! namespaces whose pods are captured, persisted under the run directory.
//!
//! The node proxy rewrites it (atomically) whenever the list changes. The CNI
//! plugin reads it only when the proxy is unreachable, to fail closed: a pod
//! in a listed namespace gets "try again later" instead of starting without
//! the mesh, while pods elsewhere start normally.
//!
//! Format (`<run dir>/enrolled-namespaces.json`):
//!
//! ```json
//! {"version": 1, "namespaces": ["default", "shop"]}
//! ```

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the list inside the run directory.
pub const ENROLLED_NAMESPACES_FILE: &str = "enrolled-namespaces.json";

/// The only format version defined so far.
pub const ENROLLED_NAMESPACES_VERSION: u32 = 1;

/// The persisted list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledNamespaces {
    /// Always [`ENROLLED_NAMESPACES_VERSION`].
    pub version: u32,
    /// The enrolled namespaces.
    pub namespaces: BTreeSet<String>,
}

/// Why the list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EnrolledError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not the documented JSON.
    #[error("{path} is not a valid enrolled-namespaces file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: serde_json::Error,
    },
    /// The file has a version this build does not know.
    #[error(
        "{path} has format version {version}; this build understands version {ENROLLED_NAMESPACES_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
}

impl EnrolledNamespaces {
    /// A list holding `namespaces`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        Self {
            version: ENROLLED_NAMESPACES_VERSION,
            namespaces: namespaces.into_iter().map(Into::into).collect(),
        }
    }

    /// Where the list lives inside `run_dir`.
    pub fn path_in(run_dir: &Path) -> PathBuf {
        run_dir.join(ENROLLED_NAMESPACES_FILE)
    }

    /// Whether `namespace` is enrolled.
    pub fn contains(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    /// Reads the list; `Ok(None)` when the file does not exist (no proxy has
    /// run on this node since the run directory was created).
    pub fn load(path: &Path) -> Result<Option<Self>, EnrolledError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EnrolledError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let list: Self = serde_json::from_slice(&bytes).map_err(|source| EnrolledError::Parse {
            path: path.into(),
            source,
        })?;
        if list.version != ENROLLED_NAMESPACES_VERSION {
            return Err(EnrolledError::Version {
                path: path.into(),
                version: list.version,
            });
        }
        Ok(Some(list))
    }

    /// Writes the list atomically (temporary file in the same directory,
    /// fsync, rename), so a concurrent reader sees the old or the new list,
    /// never a torn one.
    pub fn store(&self, path: &Path) -> Result<(), EnrolledError> {
        let io_err = |source| EnrolledError::Io {
            path: path.into(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
        let json = serde_json::to_vec(self).map_err(|source| EnrolledError::Parse {
            path: path.into(),
            source,
        })?;
        tmp.write_all(&json).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_and_strict_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = EnrolledNamespaces::path_in(dir.path());
        assert_eq!(EnrolledNamespaces::load(&path).unwrap(), None);
        let list = EnrolledNamespaces::new(["shop", "default"]);
        list.store(&path).unwrap();
        let read = EnrolledNamespaces::load(&path).unwrap().unwrap();
        assert!(read.contains("shop"));
        assert!(!read.contains("kube-system"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"version":1,"namespaces":["default","shop"]}"#
        );

        std::fs::write(&path, r#"{"version":2,"namespaces":[]}"#).unwrap();
        assert!(matches!(
            EnrolledNamespaces::load(&path),
            Err(EnrolledError::Version { version: 2, .. })
        ));
        std::fs::write(&path, "[not json").unwrap();
        assert!(matches!(
            EnrolledNamespaces::load(&path),
            Err(EnrolledError::Parse { .. })
        ));
    }
}
