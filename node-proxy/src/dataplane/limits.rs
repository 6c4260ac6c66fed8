//! Connection caps: how many connections the proxy holds at once, in all
//! and from one source address, across every pod's listeners. A connection
//! over either cap is reset as soon as it is accepted, and counted; the
//! connections already served are untouched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The caps (see the node proxy's `--max-connections` and
/// `--max-connections-per-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Connections accepted and still open, on every listener of every pod.
    pub total: usize,
    /// Of those, from one source address.
    pub per_source: usize,
}

impl ConnectionCaps {
    /// Default caps for a process that may open `max_files` descriptors: a
    /// relayed connection holds two (the client's and the upstream's), and a
    /// reserve is kept for pods' listeners, the control plane and the admin
    /// API; at most 131 072 in all. One source may hold a quarter of the
    /// whole, at most 8192, so one noisy client cannot take the node's pods
    /// offline. (A relayed connection's buffers take up to 128 KiB: the
    /// caps bound the memory too.)
    pub fn for_file_limit(max_files: u64) -> Self {
        let usable = usize::try_from(max_files.saturating_sub(1024) / 2).unwrap_or(usize::MAX);
        let total = usable.clamp(256, 1 << 17);
        Self {
            total,
            per_source: (total / 4).clamp(64, 8192),
        }
    }
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The proxy's total.
    Total,
    /// The source address's share.
    Source,
}

/// The counts the caps are checked against; shared by every listener.
#[derive(Debug)]
pub struct ConnectionLimits {
    caps: ConnectionCaps,
    open: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused by the total cap.
    pub refused_total: AtomicU64,
    /// Connections refused by the per-source cap.
    pub refused_source: AtomicU64,
}

impl ConnectionLimits {
    /// Counts under `caps`.
    pub fn new(caps: ConnectionCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            refused_total: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
        })
    }

    /// The caps in force.
    pub fn caps(&self) -> ConnectionCaps {
        self.caps
    }

    /// Connections open now (all sources).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits one more connection from `source`, or says which cap it would
    /// exceed (and counts the refusal). The permit gives the place back when
    /// dropped.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Permit, Exceeded> {
        let mut by_source = self.by_source.lock();
        if self.open.load(Ordering::Relaxed) >= self.caps.total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Exceeded::Total);
        }
        let from_source = by_source.entry(source).or_default();
        if *from_source >= self.caps.per_source {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Exceeded::Source);
        }
        *from_source += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            source,
        })
    }
}

/// One admitted connection's place under the caps.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut by_source = self.limits.by_source.lock();
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_all_and_places_come_back() {
        let limits = ConnectionLimits::new(ConnectionCaps {
            total: 3,
            per_source: 2,
        });
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let a1 = limits.admit(a).expect("a1");
        let _a2 = limits.admit(a).expect("a2");
        assert_eq!(limits.admit(a).unwrap_err(), Exceeded::Source);
        let _b1 = limits.admit(b).expect("b1");
        assert_eq!(limits.admit(c).unwrap_err(), Exceeded::Total);
        assert_eq!(limits.open(), 3);
        drop(a1);
        let _c1 = limits.admit(c).expect("a place came back");
        assert_eq!(limits.refused_source.load(Ordering::Relaxed), 1);
        assert_eq!(limits.refused_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn defaults_follow_the_file_limit() {
        assert_eq!(
            ConnectionCaps::for_file_limit(1024 * 1024),
            ConnectionCaps {
                total: 131_072,
                per_source: 8192
            }
        );
        assert_eq!(
            ConnectionCaps::for_file_limit(20_000),
            ConnectionCaps {
                total: 9488,
                per_source: 2372
            }
        );
        // A small limit still serves a node.
        assert_eq!(ConnectionCaps::for_file_limit(1024).total, 256);
    }
}
