//! Counters of the outbound HTTP engine, as plain atomics; the metrics
//! endpoint reads them through [`HttpMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_class: [AtomicU64; 5],
    retries: AtomicU64,
    retries_denied_by_budget: AtomicU64,
    timeouts: AtomicU64,
    mirrored: AtomicU64,
    upgrades: AtomicU64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses_by_class: [u64; 5],
    /// Retries sent.
    pub retries: u64,
    /// Retries not sent because the retry budget was spent.
    pub retries_denied_by_budget: u64,
    /// Requests answered 504 (request or backend request timeout).
    pub timeouts: u64,
    /// Mirrored copies sent.
    pub mirrored: u64,
    /// Upgraded connections (e.g. WebSocket) passed through.
    pub upgrades: u64,
}

impl MetricsSnapshot {
    /// Responses with status `class`xx (1 to 5).
    pub fn responses(&self, class: usize) -> u64 {
        class
            .checked_sub(1)
            .and_then(|i| self.responses_by_class.get(i))
            .copied()
            .unwrap_or(0)
    }
}

impl HttpMetrics {
    pub(crate) fn response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry_denied(&self) {
        self.retries_denied_by_budget
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn mirror(&self) {
        self.mirrored.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upgrade(&self) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            responses_by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            retries: self.retries.load(Ordering::Relaxed),
            retries_denied_by_budget: self.retries_denied_by_budget.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            mirrored: self.mirrored.load(Ordering::Relaxed),
            upgrades: self.upgrades.load(Ordering::Relaxed),
        }
    }
}
