//! Per-attachment state: what the plugin did to a pod, so DEL, CHECK and GC
//! can undo or verify it without the node proxy.
//!
//! One JSON file per attachment, keyed as the spec asks by
//! `(network name, CNI_CONTAINERID, CNI_IFNAME)`:
//! `<runDir>/cni/attachments/<network>/<container id>/<ifname>.json`.
//! A record is written *before* any rule touches the pod netns and removed
//! only after the rules are gone, so a plugin killed halfway leaves a record
//! that DEL or GC finishes.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hawser_api::cni::redirect::RedirectSpec;
use serde::{Deserialize, Serialize};

use crate::cni::{ContainerId, IfName, PodIdentity};

/// The spec's primary key for plugin state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// The network (conflist) name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: ContainerId,
    /// `CNI_IFNAME`.
    pub ifname: IfName,
}

/// What the plugin did to one attachment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentState {
    /// The pod.
    pub pod: PodIdentity,
    /// `CNI_NETNS` at ADD.
    pub netns_path: PathBuf,
    /// The pod's addresses.
    pub pod_ips: Vec<IpAddr>,
    /// The redirection the rules implement (probe sources include the
    /// gateways).
    pub redirect: RedirectSpec,
    /// The table as `nft` listed it right after ADD (handles removed);
    /// `None` until the rules are written.
    pub rules: Option<serde_json::Value>,
    /// Whether the node proxy accepted the netns.
    pub handed_off: bool,
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File system failure.
    #[error("attachment state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A record is not valid JSON.
    #[error("attachment state {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: serde_json::Error,
    },
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// The store under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            root: run_dir.join("cni").join("attachments"),
        }
    }

    fn dir(&self, key: &AttachmentKey) -> PathBuf {
        self.root.join(&key.network).join(key.container_id.as_str())
    }

    /// The record's file.
    pub fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir(key).join(format!("{}.json", key.ifname))
    }

    /// Reads a record; `None` if there is none.
    pub fn load(&self, key: &AttachmentKey) -> Result<Option<AttachmentState>, StateError> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes a record atomically.
    pub fn store(&self, key: &AttachmentKey, state: &AttachmentState) -> Result<(), StateError> {
        let dir = self.dir(key);
        let path = self.path(key);
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err)?;
        tmp.write_all(&json).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// Deletes a record (no error if it is already gone) and its container
    /// directory once empty.
    pub fn remove(&self, key: &AttachmentKey) -> Result<(), StateError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path, source }),
        }
        // Fails harmlessly while other interfaces of the container remain.
        let _ = std::fs::remove_dir(self.dir(key));
        Ok(())
    }

    /// Every attachment recorded for `network`.
    pub fn list(&self, network: &str) -> Result<Vec<AttachmentKey>, StateError> {
        let net_dir = self.root.join(network);
        let mut keys = Vec::new();
        let containers = match std::fs::read_dir(&net_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(keys),
            Err(source) => {
                return Err(StateError::Io {
                    path: net_dir,
                    source,
                });
            }
        };
        for entry in containers {
            let entry = entry.map_err(|source| StateError::Io {
                path: net_dir.clone(),
                source,
            })?;
            let Some(container_id) = entry
                .file_name()
                .to_str()
                .and_then(|s| ContainerId::parse(s).ok())
            else {
                continue;
            };
            let files = std::fs::read_dir(entry.path()).map_err(|source| StateError::Io {
                path: entry.path(),
                source,
            })?;
            for file in files.flatten() {
                let name = file.file_name();
                let Some(ifname) = name
                    .to_str()
                    .and_then(|s| s.strip_suffix(".json"))
                    .and_then(|s| IfName::parse(s).ok())
                else {
                    continue;
                };
                keys.push(AttachmentKey {
                    network: network.into(),
                    container_id: container_id.clone(),
                    ifname,
                });
            }
        }
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey {
            network: "pods".into(),
            container_id: ContainerId::parse(c).unwrap(),
            ifname: IfName::parse(i).unwrap(),
        }
    }

    #[test]
    fn store_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let state = AttachmentState {
            pod: PodIdentity {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: None,
            },
            netns_path: "/var/run/netns/x".into(),
            pod_ips: vec!["10.0.0.5".parse().unwrap()],
            redirect: RedirectSpec::default(),
            rules: None,
            handed_off: false,
        };
        assert_eq!(store.list("pods").unwrap(), vec![]);
        store.store(&key("c1", "eth0"), &state).unwrap();
        store.store(&key("c2", "eth0"), &state).unwrap();
        assert_eq!(store.load(&key("c1", "eth0")).unwrap().unwrap(), state);
        assert_eq!(
            store.list("pods").unwrap(),
            vec![key("c1", "eth0"), key("c2", "eth0")]
        );
        assert_eq!(store.list("other").unwrap(), vec![]);
        store.remove(&key("c1", "eth0")).unwrap();
        store.remove(&key("c1", "eth0")).unwrap();
        assert_eq!(store.load(&key("c1", "eth0")).unwrap(), None);
        assert!(!dir.path().join("cni/attachments/pods/c1").exists());
        assert_eq!(store.list("pods").unwrap(), vec![key("c2", "eth0")]);
    }
}
