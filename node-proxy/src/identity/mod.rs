//! Workload identities on this node.
//!
//! [`CertManager`] holds one X.509-SVID per local workload. Keys are generated
//! here and never leave the node; the CA ([`CaClient`], the control plane over
//! gRPC in production) only sees CSRs. Each certificate is renewed at half its
//! lifetime (with jitter, so a node's certificates do not all renew at once);
//! a failed renewal is retried with capped exponential backoff while the old
//! certificate keeps serving until it expires. At most a bounded number of
//! requests are in flight, so a node starting hundreds of pods cannot flood
//! the CA.

mod client;
mod csr;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hawser_api::tls::Svid;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

pub use client::{ControlPlaneClient, ControlPlaneConfig, ControlPlaneError};
pub use csr::{KeyAndCsr, generate_key_and_csr};

/// Names one pod, as the CA knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's UID.
    pub pod_uid: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod_name)
    }
}

/// Why the CA did not sign.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CaClientError(pub String);

/// A certificate authority that signs workload CSRs.
#[async_trait]
pub trait CaClient: Send + Sync + 'static {
    /// Signs `csr_der` for `workload`; returns the chain, leaf first.
    async fn sign_workload(
        &self,
        workload: &WorkloadRef,
        csr_der: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError>;
}

/// Why no certificate is available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    /// Fetching failed and no still-valid certificate is held.
    #[error("no valid certificate for {workload}: {reason}")]
    Unavailable {
        /// The workload.
        workload: WorkloadRef,
        /// The last failure.
        reason: String,
    },
    /// The workload was forgotten while waiting.
    #[error("workload {0} was removed")]
    Removed(WorkloadRef),
}

/// Tuning of the certificate manager.
#[derive(Debug, Clone, Copy)]
pub struct CertManagerConfig {
    /// Certificate requests in flight at once.
    pub max_concurrent: usize,
    /// Fraction of the lifetime after which a certificate is renewed.
    pub renew_at: f64,
    /// Renewal jitter, as a fraction of the lifetime (± this much).
    pub jitter: f64,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for CertManagerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 8,
            renew_at: 0.5,
            jitter: 0.05,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// One held certificate, for the admin endpoint.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Whose certificate.
    pub workload: WorkloadRef,
    /// The certificate, if one is valid now.
    pub svid: Option<Svid>,
    /// When the next renewal is due (or the next retry, after a failure).
    pub next_attempt: Option<Instant>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Clone)]
struct State {
    /// The current certificate and the instant it expires (on the tokio clock,
    /// derived once from the wall clock when it arrived).
    current: Option<(Svid, Instant)>,
    last_error: Option<String>,
    next_attempt: Option<Instant>,
    /// Whether the first attempt has finished, so waiters can stop waiting.
    settled: bool,
}

impl State {
    fn valid(&self) -> Option<Svid> {
        self.current
            .as_ref()
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(svid, _)| svid.clone())
    }
}

struct Entry {
    state: watch::Receiver<State>,
    driver: tokio::task::JoinHandle<()>,
}

/// Holds and renews the certificates of this node's workloads.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<dyn CaClient>,
    config: CertManagerConfig,
    in_flight: Semaphore,
    entries: Mutex<HashMap<WorkloadRef, Entry>>,
}

impl CertManager {
    /// A manager obtaining certificates from `ca`.
    pub fn new(ca: Arc<dyn CaClient>, config: CertManagerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca,
                in_flight: Semaphore::new(config.max_concurrent.max(1)),
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The workload's current certificate, fetching it first if needed.
    pub async fn fetch(&self, workload: &WorkloadRef) -> Result<Svid, CertError> {
        let mut rx = self.track(workload);
        loop {
            {
                let state = rx.borrow_and_update();
                if let Some(svid) = state.valid() {
                    return Ok(svid);
                }
                if state.settled {
                    return Err(CertError::Unavailable {
                        workload: workload.clone(),
                        reason: state
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "certificate expired".into()),
                    });
                }
            }
            if rx.changed().await.is_err() {
                return Err(CertError::Removed(workload.clone()));
            }
        }
    }

    /// Starts managing `workload` (if not yet) and returns its state channel.
    fn track(&self, workload: &WorkloadRef) -> watch::Receiver<State> {
        let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(workload) {
            return e.state.clone();
        }
        let (tx, rx) = watch::channel(State {
            current: None,
            last_error: None,
            next_attempt: None,
            settled: false,
        });
        let driver = tokio::spawn(drive(Arc::downgrade(&self.inner), workload.clone(), tx));
        entries.insert(
            workload.clone(),
            Entry {
                state: rx.clone(),
                driver,
            },
        );
        rx
    }

    /// Stops managing `workload` (its pod is gone) and drops its key.
    pub fn forget(&self, workload: &WorkloadRef) {
        let removed = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(workload);
        if let Some(e) = removed {
            e.driver.abort();
        }
    }

    /// Every managed workload's certificate state.
    pub fn certificates(&self) -> Vec<CertInfo> {
        let entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = entries
            .iter()
            .map(|(w, e)| {
                let s = e.state.borrow();
                CertInfo {
                    workload: w.clone(),
                    svid: s.valid(),
                    next_attempt: s.next_attempt,
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for e in self
            .entries
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            e.driver.abort();
        }
    }
}

/// Keeps one workload's certificate fresh until it is forgotten.
async fn drive(inner: std::sync::Weak<Inner>, workload: WorkloadRef, tx: watch::Sender<State>) {
    let mut backoff = None::<Duration>;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.config;
        let result = request(&strong, &workload).await;
        drop(strong);
        let now = Instant::now();
        let wait = match result {
            Ok(svid) => {
                backoff = None;
                let wall = SystemTime::now();
                let remaining = svid.not_after().duration_since(wall).unwrap_or_default();
                let lifetime = svid.lifetime().as_secs_f64();
                let jitter = (rand::random::<f64>() * 2.0 - 1.0) * config.jitter * lifetime;
                let renew_wall = svid.not_before()
                    + Duration::from_secs_f64((lifetime * config.renew_at + jitter).max(0.0));
                let wait = renew_wall.duration_since(wall).unwrap_or_default();
                tracing::info!(%workload, spiffe_id = %svid.id(), renew_in_s = wait.as_secs(), "workload certificate ready");
                tx.send_modify(|s| {
                    s.current = Some((svid, now + remaining));
                    s.last_error = None;
                    s.settled = true;
                    s.next_attempt = Some(now + wait);
                });
                wait
            }
            Err(reason) => {
                let delay =
                    backoff.map_or(config.backoff_initial, |b| (b * 2).min(config.backoff_max));
                backoff = Some(delay);
                // ±10 % so retries from many workloads spread out.
                let delay = delay.mul_f64(0.9 + rand::random::<f64>() * 0.2);
                tracing::warn!(%workload, %reason, retry_in_ms = delay.as_millis() as u64, "workload certificate request failed");
                tx.send_modify(|s| {
                    if s.valid().is_none() {
                        s.current = None;
                    }
                    s.last_error = Some(reason);
                    s.settled = true;
                    s.next_attempt = Some(now + delay);
                });
                delay
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn request(inner: &Inner, workload: &WorkloadRef) -> Result<Svid, String> {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = inner
        .in_flight
        .acquire()
        .await
        .map_err(|e| format!("request limiter closed: {e}"))?;
    let KeyAndCsr { key, csr_der } = generate_key_and_csr().map_err(|e| e.to_string())?;
    let chain = inner
        .ca
        .sign_workload(workload, csr_der)
        .await
        .map_err(|e| e.to_string())?;
    let svid =
        Svid::new(chain, key).map_err(|e| format!("CA returned an unusable certificate: {e}"))?;
    if svid.id().namespace() != Some(workload.namespace.as_str()) {
        return Err(format!(
            "CA returned identity {} for a pod in namespace {}",
            svid.id(),
            workload.namespace
        ));
    }
    Ok(svid)
}
