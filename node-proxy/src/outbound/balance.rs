//! Endpoint choice: power of two choices over connections in flight, which
//! keeps load even without global state and avoids herding onto one endpoint
//! the way "least connections" does when many proxies decide at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Endpoint;

/// Counts connections in flight per endpoint address.
#[derive(Debug, Default)]
pub struct Balancer {
    load: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One connection counted against an endpoint; uncounted when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        self.load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Connections in flight to `addr`.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.counter(addr).load(Ordering::Relaxed)
    }

    /// Forgets the counters of endpoints for which `live` is false and
    /// that have nothing in flight (called when the endpoints change).
    pub fn retain(&self, live: impl Fn(&SocketAddr) -> bool) {
        self.load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, count| live(addr) || count.load(Ordering::Relaxed) > 0);
    }

    /// Number of endpoints with a counter.
    pub fn tracked(&self) -> usize {
        self.load.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Picks one of `endpoints`: two at random, the less loaded of them.
    /// One lock, no allocation: this runs for every connection and request.
    pub fn pick<'e>(&self, endpoints: &'e [Endpoint]) -> Option<(&'e Endpoint, InFlight)> {
        self.pick_excluding(endpoints, None)
    }

    /// Like [`Self::pick`], but never `exclude` when there is another
    /// endpoint (a retry goes elsewhere than the attempt that failed, as
    /// Envoy's previous-hosts predicate does).
    pub fn pick_excluding<'e>(
        &self,
        endpoints: &'e [Endpoint],
        exclude: Option<SocketAddr>,
    ) -> Option<(&'e Endpoint, InFlight)> {
        let skip = exclude
            .filter(|_| endpoints.len() > 1)
            .and_then(|addr| endpoints.iter().position(|e| e.addr == addr));
        let n = endpoints.len() - usize::from(skip.is_some());
        // The i-th candidate, stepping over the excluded one.
        let at = |i: usize| match skip {
            Some(s) if i >= s => &endpoints[i + 1],
            _ => &endpoints[i],
        };
        let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        let mut counter = |addr: SocketAddr| load.entry(addr).or_default().clone();
        let (chosen, count) = match n {
            0 => return None,
            1 => (at(0), counter(at(0).addr)),
            n => {
                let a = rand::random_range(0..n);
                // A second, different index.
                let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                let (ea, eb) = (at(a), at(b));
                let (ca, cb) = (counter(ea.addr), counter(eb.addr));
                if cb.load(Ordering::Relaxed) < ca.load(Ordering::Relaxed) {
                    (eb, cb)
                } else {
                    (ea, ca)
                }
            }
        };
        count.fetch_add(1, Ordering::Relaxed);
        Some((chosen, InFlight(count)))
    }
}
