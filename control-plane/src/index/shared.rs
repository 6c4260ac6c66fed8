//! The index shared between sources (writers) and the discovery server
//! (readers): a lock around [`Index`] and a watch of its version. Readers
//! wait on [`SharedIndex::subscribe`], then take a snapshot or a delta under
//! a short read lock; no lock is held across an `.await`.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use super::{Index, IndexConfig, Update};

/// A cloneable handle to one index.
#[derive(Debug, Clone)]
pub struct SharedIndex {
    index: Arc<RwLock<Index>>,
    version: watch::Sender<u64>,
}

impl SharedIndex {
    /// A new, empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            index: Arc::new(RwLock::new(Index::new(config))),
            version: watch::Sender::new(0),
        }
    }

    /// Applies a batch as one version and wakes subscribers if it changed anything.
    pub fn update(&self, updates: impl IntoIterator<Item = Update>) -> u64 {
        let version = {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            index.update(updates)
        };
        self.version.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        version
    }

    /// Read access (keep it short: never across an `.await`).
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the index version, updated after every changing batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
