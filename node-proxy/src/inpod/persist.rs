//! What the proxy remembers about each served pod across restarts.
//!
//! One JSON file per pod sandbox, `<run dir>/pods/<container id>.json`,
//! written atomically (temporary file, fsync, rename) when the pod is handed
//! over and removed on CNI DEL. At startup each record is reopened by its
//! netns path and checked against the namespace identity recorded at handoff
//! (see [`super::InPod::restore`]).
//!
//! ```json
//! {"version":1,"containerId":"9f1c…","uid":"3c5e…","namespace":"shop",
//!  "name":"web-0","ips":["10.244.1.7"],"netnsPath":"/var/run/netns/cni-…",
//!  "netns":{"dev":4,"ino":4026532801},
//!  "attachments":[{"ifname":"eth0","network":"k8s-pod-network"}]}
//! ```

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::netns::NetnsId;
use super::pod::ContainerId;

/// Directory of the records inside the run directory.
pub const PODS_DIR: &str = "pods";

/// The only record format version defined so far.
pub const POD_RECORD_VERSION: u32 = 1;

/// One CNI attachment of a pod (a sandbox may have several interfaces on
/// which the plugin runs; they share one namespace and one set of listeners).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachmentRecord {
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The conflist name.
    pub network: String,
}

/// A served pod, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRecord {
    /// Always [`POD_RECORD_VERSION`].
    pub version: u32,
    /// `CNI_CONTAINERID` (also the file name).
    pub container_id: String,
    /// The pod's UID (may be empty).
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// `CNI_NETNS` as the runtime passed it at ADD.
    pub netns_path: PathBuf,
    /// The namespace the handed-over descriptor referred to.
    pub netns: NetnsId,
    /// The attachments handed over for this sandbox.
    pub attachments: BTreeSet<AttachmentRecord>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// File system failure.
    #[error("pod record {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not a valid record.
    #[error("pod record {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: serde_json::Error,
    },
    /// The record has an unknown format version.
    #[error(
        "pod record {path} has format version {version}; this build understands version {POD_RECORD_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The container id inside does not match the file name, or is invalid.
    #[error(
        "pod record {path} holds container id {container_id:?}, which does not match its file name"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The id inside.
        container_id: String,
    },
}

/// The records directory.
#[derive(Clone, Debug)]
pub struct PodStore {
    dir: PathBuf,
}

impl PodStore {
    /// The store under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join(PODS_DIR),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the record of `id` lives.
    pub fn path(&self, id: &ContainerId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` atomically.
    pub fn store(&self, id: &ContainerId, record: &PodRecord) -> Result<(), PersistError> {
        let path = self.path(id);
        let io_err = |source| PersistError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err)?;
        let json = serde_json::to_vec(record).map_err(|source| PersistError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err)?;
        tmp.write_all(&json).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// Removes the record of `id` (nothing to do if there is none).
    pub fn remove(&self, id: &ContainerId) -> Result<(), PersistError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PersistError::Io { path, source }),
        }
    }

    /// Removes a file found by [`Self::load_all`] that could not be parsed.
    pub fn remove_file(&self, path: &Path) -> Result<(), PersistError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PersistError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Every record with its file, each parsed on its own: one bad file does
    /// not hide the others. Leftover temporary files from an interrupted write are
    /// removed. A missing directory means no records.
    #[allow(clippy::type_complexity)]
    pub fn load_all(
        &self,
    ) -> Result<Vec<(PathBuf, Result<(ContainerId, PodRecord), PersistError>)>, PersistError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(PersistError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PersistError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let loaded = load_one(&path, stem);
            out.push((path, loaded));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn load_one(path: &Path, stem: &str) -> Result<(ContainerId, PodRecord), PersistError> {
    let bytes = std::fs::read(path).map_err(|source| PersistError::Io {
        path: path.into(),
        source,
    })?;
    let record: PodRecord =
        serde_json::from_slice(&bytes).map_err(|source| PersistError::Parse {
            path: path.into(),
            source,
        })?;
    if record.version != POD_RECORD_VERSION {
        return Err(PersistError::Version {
            path: path.into(),
            version: record.version,
        });
    }
    let mismatch = || PersistError::Mismatch {
        path: path.into(),
        container_id: record.container_id.clone(),
    };
    let id = ContainerId::new(record.container_id.clone()).map_err(|_| mismatch())?;
    if id.as_str() != stem {
        return Err(mismatch());
    }
    Ok((id, record))
}
