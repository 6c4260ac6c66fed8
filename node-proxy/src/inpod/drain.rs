//! The per-pod drain signal.
//!
//! When a pod leaves the node (CNI DEL) or the proxy shuts down, its
//! [`DrainTrigger`] fires once with a deadline. Every task serving that pod
//! holds a [`DrainWatch`]: listeners stop accepting as soon as
//! [`DrainWatch::signaled`] resolves, connections finish what they are doing
//! (e.g. the HTTP request in flight) and close, and whatever is still open at
//! [`DrainWatch::forced`] is closed without ceremony. Dropping a watch tells
//! the trigger that task is done ([`DrainTrigger::drained`]).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The signal as a connection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draining {
    /// When connections still open must be closed forcibly.
    pub force_at: Instant,
}

/// The sending side, owned by the in-pod registry.
#[derive(Debug)]
pub struct DrainTrigger {
    tx: watch::Sender<Option<Draining>>,
}

/// The receiving side; clone one into every task serving the pod.
#[derive(Clone, Debug)]
pub struct DrainWatch {
    rx: watch::Receiver<Option<Draining>>,
}

impl DrainTrigger {
    /// A new, not yet fired, signal and its first watch.
    pub fn new() -> (Self, DrainWatch) {
        let (tx, rx) = watch::channel(None);
        (Self { tx }, DrainWatch { rx })
    }

    /// Starts draining: connections get `grace` before being closed
    /// forcibly. Firing twice keeps the first deadline.
    pub fn start(&self, grace: Duration) -> Draining {
        let fresh = Draining {
            force_at: Instant::now() + grace,
        };
        let mut fired = fresh;
        self.tx.send_if_modified(|state| match state {
            Some(existing) => {
                fired = *existing;
                false
            }
            None => {
                *state = Some(fresh);
                true
            }
        });
        fired
    }

    /// Whether [`Self::start`] was called.
    pub fn is_started(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// Number of watches still alive (tasks still serving the pod).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Resolves once every watch has been dropped.
    pub async fn drained(&self) {
        self.tx.closed().await;
    }
}

impl DrainWatch {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Resolves when draining starts. If the trigger is dropped without
    /// firing, it resolves at once with an immediate deadline: nothing owns
    /// the pod any more.
    pub async fn signaled(&self) -> Draining {
        let mut rx = self.rx.clone();
        match rx.wait_for(Option::is_some).await {
            // `wait_for` only returns a state that satisfies the predicate.
            Ok(state) => (*state).unwrap_or(Draining {
                force_at: Instant::now(),
            }),
            Err(_) => Draining {
                force_at: Instant::now(),
            },
        }
    }

    /// Resolves at the forced-close deadline (never before draining starts).
    pub async fn forced(&self) {
        let d = self.signaled().await;
        tokio::time::sleep_until(d.force_at).await;
    }
}
