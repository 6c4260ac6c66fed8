//! Certificate manager behaviour under a paused clock, against a CA that
//! really signs the CSRs it is sent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hawser_api::testing::TestPki;
use hawser_api::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::*;

struct FakeCa {
    pki: TestPki,
    lifetime: Duration,
    calls: AtomicUsize,
    failing: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    gate: Option<Arc<Notify>>,
}

impl FakeCa {
    fn new(lifetime: Duration) -> Self {
        Self {
            pki: TestPki::new("cluster.local"),
            lifetime,
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            gate: None,
        }
    }
}

#[async_trait]
impl CaClient for FakeCa {
    async fn sign_workload(
        &self,
        workload: &WorkloadRef,
        csr_der: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now_in = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(CaClientError("control plane unreachable".into()));
        }
        let id =
            SpiffeId::workload(&TrustDomain::default(), &workload.namespace, "default").unwrap();
        let now = OffsetDateTime::now_utc();
        Ok(vec![self.pki.sign_csr(
            &csr_der,
            &id,
            now,
            now + self.lifetime,
        )])
    }
}

fn pod(name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: "default".into(),
        pod_name: name.into(),
        pod_uid: format!("uid-{name}"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// Lets spawned tasks run after a clock advance.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life() {
    let ca = Arc::new(FakeCa::new(HOUR));
    let mgr = CertManager::new(ca.clone(), CertManagerConfig::default());
    let first = mgr.fetch(&pod("a")).await.unwrap();
    assert_eq!(
        first.id().as_str(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);

    // Jitter is ±5 % of the lifetime: no renewal before 27 min …
    tokio::time::advance(26 * MINUTE).await;
    settle().await;
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    assert_eq!(mgr.fetch(&pod("a")).await.unwrap().chain(), first.chain());
    // … and one by 33 min.
    tokio::time::advance(8 * MINUTE).await;
    settle().await;
    assert_eq!(ca.calls.load(Ordering::SeqCst), 2);
    let second = mgr.fetch(&pod("a")).await.unwrap();
    assert_ne!(second.chain(), first.chain(), "a new certificate");
    let info = mgr.certificates();
    assert_eq!(info.len(), 1);
    assert!(info[0].last_error.is_none());
    assert!(info[0].next_attempt.unwrap() > Instant::now());
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_keeps_old_certificate_until_expiry_with_backoff() {
    let ca = Arc::new(FakeCa::new(HOUR));
    let mgr = CertManager::new(ca.clone(), CertManagerConfig::default());
    let first = mgr.fetch(&pod("a")).await.unwrap();
    ca.failing.store(true, Ordering::SeqCst);

    tokio::time::advance(34 * MINUTE).await;
    settle().await;
    let calls_at_failure = ca.calls.load(Ordering::SeqCst);
    assert_eq!(calls_at_failure, 2, "renewal attempted once");
    // Still served: the old certificate is valid.
    assert_eq!(mgr.fetch(&pod("a")).await.unwrap().chain(), first.chain());
    let info = &mgr.certificates()[0];
    assert_eq!(
        info.last_error.as_deref(),
        Some("control plane unreachable")
    );
    assert!(info.svid.is_some());

    // Exponential backoff from 1 s: within 16 s, retries at ~1, 3, 7, 15 s.
    for _ in 0..16 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let retries = ca.calls.load(Ordering::SeqCst) - calls_at_failure;
    assert!((3..=5).contains(&retries), "{retries} retries in 16 s");
    // Capped at 60 s (±10 %): at most 2 attempts in any later 2-minute window.
    tokio::time::advance(10 * MINUTE).await;
    settle().await;
    let before = ca.calls.load(Ordering::SeqCst);
    for _ in 0..120 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let in_window = ca.calls.load(Ordering::SeqCst) - before;
    assert!(
        (1..=3).contains(&in_window),
        "{in_window} attempts in 2 min"
    );

    // Past expiry (60 min after issue) the certificate is gone.
    tokio::time::advance(20 * MINUTE).await;
    settle().await;
    let err = mgr.fetch(&pod("a")).await.unwrap_err();
    assert!(
        err.to_string().contains("control plane unreachable"),
        "{err}"
    );
    assert!(mgr.certificates()[0].svid.is_none());

    // The CA comes back: the next retry restores a certificate.
    ca.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(2 * MINUTE).await;
    settle().await;
    assert!(mgr.fetch(&pod("a")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_reported() {
    let ca = Arc::new(FakeCa::new(HOUR));
    ca.failing.store(true, Ordering::SeqCst);
    let mgr = CertManager::new(ca, CertManagerConfig::default());
    let err = mgr.fetch(&pod("a")).await.unwrap_err();
    assert!(matches!(err, CertError::Unavailable { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_are_bounded_and_deduplicated() {
    let gate = Arc::new(Notify::new());
    let mut fake = FakeCa::new(HOUR);
    fake.gate = Some(gate.clone());
    let ca = Arc::new(fake);
    let mgr = CertManager::new(
        ca.clone(),
        CertManagerConfig {
            max_concurrent: 3,
            ..Default::default()
        },
    );
    let mut waiters = Vec::new();
    for i in 0..10 {
        for _ in 0..2 {
            // Two fetches per pod share one request.
            let (mgr, w) = (mgr.clone(), pod(&format!("p{i}")));
            waiters.push(tokio::spawn(async move { mgr.fetch(&w).await }));
        }
    }
    settle().await;
    assert_eq!(ca.in_flight.load(Ordering::SeqCst), 3);
    while ca.calls.load(Ordering::SeqCst) < 10 || ca.in_flight.load(Ordering::SeqCst) > 0 {
        gate.notify_waiters();
        settle().await;
    }
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(ca.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(ca.calls.load(Ordering::SeqCst), 10, "one request per pod");
    assert_eq!(mgr.certificates().len(), 10);
    mgr.forget(&pod("p0"));
    assert_eq!(mgr.certificates().len(), 9);
}
