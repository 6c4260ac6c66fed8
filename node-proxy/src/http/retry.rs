//! Retry decisions: which outcomes are retried, the backoff between
//! attempts, and the retry budget that keeps retries from multiplying load
//! (as Finagle's and Linkerd's budgets do): over a sliding window, retries
//! may add at most `ratio` of the requests plus a small floor per second.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed as a share of requests over the window (0.2: 20 %).
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic (low-volume floor).
    pub min_per_second: u32,
    /// How far back requests and retries count.
    pub window: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which window slice this slot currently counts (slice index since `start`).
    slice: u64,
    requests: u64,
    retries: u64,
}

/// A retry budget over a sliding window of ten slices.
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    start: Instant,
    slots: Mutex<[Slot; SLOTS]>,
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(settings: BudgetSettings) -> Self {
        Self {
            settings,
            start: Instant::now(),
            slots: Mutex::new([Slot::default(); SLOTS]),
        }
    }

    fn slice_len(&self) -> Duration {
        (self.settings.window / SLOTS as u32).max(Duration::from_millis(1))
    }

    fn current_slice(&self) -> u64 {
        let elapsed = Instant::now().duration_since(self.start);
        u64::try_from(elapsed.as_nanos() / self.slice_len().as_nanos()).unwrap_or(u64::MAX)
    }

    fn with_slot<T>(&self, f: impl FnOnce(&mut [Slot; SLOTS], usize, u64) -> T) -> T {
        let slice = self.current_slice();
        let index = usize::try_from(slice % SLOTS as u64).unwrap_or(0);
        let mut slots = self.slots.lock();
        if slots[index].slice != slice {
            slots[index] = Slot {
                slice,
                requests: 0,
                retries: 0,
            };
        }
        f(&mut slots, index, slice)
    }

    /// Counts one original request.
    pub fn deposit(&self) {
        self.with_slot(|slots, i, _| slots[i].requests += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let settings = self.settings;
        self.with_slot(|slots, i, slice| {
            let live = |s: &&Slot| slice.saturating_sub(s.slice) < SLOTS as u64;
            let requests: u64 = slots.iter().filter(live).map(|s| s.requests).sum();
            let retries: u64 = slots.iter().filter(live).map(|s| s.retries).sum();
            let floor = f64::from(settings.min_per_second) * settings.window.as_secs_f64();
            let allowed = floor + settings.ratio * requests as f64;
            if (retries as f64) < allowed.floor() {
                slots[i].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

/// The wait before retry number `retry` (1-based): never below `base`, at
/// most `base` doubled per retry (capped at `max`, never below `base`) plus
/// a quarter of `base`. Where it falls in between is random ("jittered"
/// growth), so clients that failed together do not retry together, and a
/// few quick retries fit in a short request timeout (gateway-reference
/// retry-with-timeouts: 4 retries with the default 25ms in 400ms).
pub fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    let ceiling = doubled.min(max.max(base)) + base / 4;
    let spread = u64::try_from((ceiling - base).as_micros()).unwrap_or(u64::MAX);
    let jitter = if spread == 0 {
        0
    } else {
        rand::random_range(0..spread)
    };
    base + Duration::from_micros(jitter)
}

/// The HTTP status gRPC status `code` maps to (as Envoy maps them), for
/// retry codes on gRPC responses.
pub fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}
