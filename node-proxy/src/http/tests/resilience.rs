//! End to end: timeouts, retries, the retry budget, replayable bodies,
//! request-level load balancing and connection reuse.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hawser_api::proto::discovery as pb;
use http_body_util::Full;
use tokio::time::Instant;

use super::support::*;
use crate::http::{BudgetSettings, HttpSettings};

const VIP: &str = "10.96.0.1:80";

fn retrying(codes: &[u32], attempts: Option<u32>) -> pb::Rule {
    let mut r = rule(vec![to("echo", 80, 1)]);
    r.retry = Some(pb::Retry {
        codes: codes.to_vec(),
        attempts,
        backoff_ms: Some(1),
    });
    r
}

fn mesh_with(backend: &Backend, r: pb::Rule) -> Mesh {
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[backend]);
    mesh.routes(
        "echo",
        80,
        Some(table(vec![r], vec![prefix(0, "/")])),
        vec![],
    );
    mesh
}

#[tokio::test]
async fn listed_codes_are_retried_until_success() {
    let backend = Backend::start("echo", |s| match s.hit {
        1 | 2 => Reply::status(503),
        _ => Reply::ok(),
    })
    .await;
    let h = Harness::new(&mesh_with(&backend, retrying(&[503], Some(3))));
    let answer = h.h1(NS, VIP).await.get("/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(backend.hits(), 3);
    assert_eq!(h.outbound.metrics().retries, 2);
}

#[tokio::test]
async fn attempts_bound_the_retries_and_other_codes_are_not_retried() {
    let backend = Backend::start("echo", |s| match s.path.as_str() {
        "/404" => Reply::status(404),
        _ => Reply::status(500),
    })
    .await;
    let h = Harness::new(&mesh_with(&backend, retrying(&[500], Some(2))));
    let mut client = h.h1(NS, VIP).await;
    assert_eq!(client.get("/").await.status, 500);
    assert_eq!(backend.hits(), 3, "first try plus two retries");
    assert_eq!(client.get("/404").await.status, 404);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn connection_errors_are_retried() {
    let backend = Backend::ok("echo").await;
    let h = Harness::new(&mesh_with(&backend, retrying(&[], Some(3))));
    h.connector.fail_next.store(2, Ordering::SeqCst);
    let answer = h.h1(NS, VIP).await.get("/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(backend.hits(), 1);
    assert_eq!(h.connector.connects.load(Ordering::SeqCst), 3);

    // Without retries, a refused connection is a 503.
    let h = Harness::new(&mesh_with(&backend, rule(vec![to("echo", 80, 1)])));
    h.connector.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 503);
}

#[tokio::test]
async fn bodies_are_replayed_on_retry_only_within_the_bound() {
    let backend = Backend::start("echo", |s| {
        if s.hit % 2 == 1 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let h = Harness::new(&mesh_with(&backend, retrying(&[503], Some(1))));
    let mut client = h.h1(NS, VIP).await;
    let small = Bytes::from(vec![b'a'; 10 * 1024]);
    let answer = client
        .send(request("POST", "/").body(Full::new(small.clone())).unwrap())
        .await;
    assert_eq!(answer.status, 200);
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.body == small),
        "both attempts got the whole body"
    );

    let large = Bytes::from(vec![b'b'; 100 * 1024]);
    let answer = client
        .send(request("POST", "/").body(Full::new(large.clone())).unwrap())
        .await;
    assert_eq!(answer.status, 503, "a body over 64 KiB is not retried");
    assert_eq!(backend.hits(), 3);
    assert_eq!(backend.last().body, large);
}

#[tokio::test]
async fn backend_request_timeout_gives_504_and_is_retried_without_listing_504() {
    let backend = Backend::start("echo", |_| Reply::ok().delay(Duration::from_secs(5))).await;
    let mut r = retrying(&[], Some(2));
    r.backend_request_timeout_ms = Some(100);
    let h = Harness::new(&mesh_with(&backend, r));
    let started = Instant::now();
    let answer = h.h1(NS, VIP).await.get("/").await;
    assert_eq!(answer.status, 504);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(backend.hits(), 3);
    let metrics = h.outbound.metrics();
    assert_eq!((metrics.timeouts, metrics.retries), (1, 2));
}

#[tokio::test]
async fn request_timeout_covers_every_attempt() {
    // As gateway-reference retry-with-timeouts: request 400ms, backendRequest
    // 200ms, retry 500 up to 5 times, against a backend that answers late.
    let backend =
        Backend::start("echo", |_| Reply::status(500).delay(Duration::from_secs(5))).await;
    let mut r = retrying(&[500, 504], Some(5));
    r.backend_request_timeout_ms = Some(200);
    r.request_timeout_ms = Some(400);
    let h = Harness::new(&mesh_with(&backend, r));
    let started = Instant::now();
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 504);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(390) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(backend.hits() <= 2, "{} attempts", backend.hits());
}

#[tokio::test]
async fn a_retry_the_request_timeout_would_cut_short_gives_its_504() {
    // The wait before the retry passes the request timeout: the answer is
    // the timeout's 504 when it passes, not the failed attempt's 500.
    let backend = Backend::start("echo", |_| Reply::status(500)).await;
    let mut r = retrying(&[500], Some(5));
    r.retry.as_mut().unwrap().backoff_ms = Some(300);
    r.request_timeout_ms = Some(100);
    let h = Harness::new(&mesh_with(&backend, r));
    let started = Instant::now();
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 504);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(95) && elapsed < Duration::from_millis(290),
        "{elapsed:?}"
    );
    assert_eq!(backend.hits(), 1);
    assert_eq!(h.outbound.metrics().retries, 0);
}

#[tokio::test]
async fn zero_timeouts_are_disabled() {
    let backend = Backend::start("echo", |_| Reply::ok().delay(Duration::from_millis(150))).await;
    let mut r = rule(vec![to("echo", 80, 1)]);
    r.request_timeout_ms = Some(0);
    r.backend_request_timeout_ms = Some(0);
    let h = Harness::new(&mesh_with(&backend, r));
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 200);

    // And a request timeout shorter than the answer gives 504.
    let mut r = rule(vec![to("echo", 80, 1)]);
    r.request_timeout_ms = Some(50);
    let h = Harness::new(&mesh_with(&backend, r));
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 504);
}

#[tokio::test]
async fn the_retry_budget_caps_extra_load() {
    let backend = Backend::start("echo", |_| Reply::status(503)).await;
    let settings = HttpSettings {
        retry_budget: BudgetSettings {
            ratio: 0.2,
            min_per_second: 0,
            window: Duration::from_secs(10),
        },
        ..HttpSettings::default()
    };
    let h = Harness::with_settings(&mesh_with(&backend, retrying(&[503], Some(3))), settings);
    let mut client = h.h1(NS, VIP).await;
    for _ in 0..50 {
        assert_eq!(client.get("/").await.status, 503);
    }
    let metrics = h.outbound.metrics();
    // Without the budget: 150 retries. With it: at most 20 % of 50.
    assert!(
        (5..=10).contains(&metrics.retries),
        "{} retries",
        metrics.retries
    );
    assert_eq!(backend.hits() as u64, 50 + metrics.retries);
    assert!(metrics.retries_denied_by_budget > 0);
}

#[tokio::test]
async fn requests_prefer_the_endpoint_with_fewer_in_flight() {
    let slow = Backend::start("slow", |_| Reply::ok().delay(Duration::from_secs(3))).await;
    let fast = Backend::ok("fast").await;
    let mut mesh = Mesh::default();
    mesh.service(
        "echo",
        "10.96.0.1",
        80,
        "http",
        "kubernetes.io/h2c",
        &[&slow, &fast],
    );
    let h = Harness::new(&mesh);
    let client = h.h2(NS, VIP).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.get("/").await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Random choice would send about 20 to the slow endpoint; two choices
    // on requests in flight stop once it holds more than the fast one.
    assert!(slow.hits() <= 8, "slow endpoint got {}", slow.hits());
    assert!(fast.hits() >= 32, "fast endpoint got {}", fast.hits());
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let backend = Backend::ok("echo").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    mesh.service("grpc", "10.96.0.2", 7070, "grpc", "", &[&backend]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    for _ in 0..50 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // HTTP/1.1 upstream, requests without a body: the request's own task
    // reads the response, and the connection is back in the pool when its
    // body ends, before the next request comes.
    assert_eq!(h.outbound.upstream_connects(), 1);
    assert_eq!(backend.last().version, http::Version::HTTP_11);
    // A response without a body (HEAD) gives it back at once.
    for _ in 0..3 {
        let head = client
            .send(request("HEAD", "/").body(Full::default()).unwrap())
            .await;
        assert_eq!((head.status, head.body.as_str()), (200, ""));
    }
    assert_eq!(backend.last().method, "HEAD");
    // A request with a body takes the idle connection over (hyper's
    // client writes the body), and later requests keep using it.
    let post = request("POST", "/upload").body(Full::new(Bytes::from_static(b"payload")));
    assert_eq!(client.send(post.unwrap()).await.status, 200);
    assert_eq!(backend.last().body, Bytes::from_static(b"payload"));
    assert_eq!(client.get("/after").await.status, 200);
    assert_eq!(h.outbound.upstream_connects(), 1);

    // HTTP/2 upstream (grpc port): one connection for concurrent requests.
    let before = h.outbound.upstream_connects();
    let client = h.h2(NS, "10.96.0.2:7070").await;
    let _ = client.clone().get("/warm").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.get("/").await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.outbound.upstream_connects() - before, 1);
    assert_eq!(backend.last().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_while_idle_is_not_used() {
    let backend = Backend::closing_after("echo", Duration::from_millis(20)).await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    for i in 1..=3u64 {
        let answer = client.get("/").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "echo"));
        assert_eq!(h.outbound.upstream_connects(), i);
        // The backend closes the kept-alive connection meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_connection_the_server_closes_after_its_response_is_not_pooled() {
    let backend = Backend::start("echo", |_| Reply::ok().header("connection", "close")).await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(h.outbound.upstream_connects(), 3);
    assert_eq!(h.outbound.upstream_idle(), 0);
}

#[tokio::test]
async fn client_connections_idle_for_the_client_idle_timeout_are_closed() {
    let backend = Backend::ok("echo").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    // Long enough against a loaded machine's late wake-ups.
    let idle = Duration::from_secs(1);
    let settings = HttpSettings {
        client_idle_timeout: idle,
        ..HttpSettings::default()
    };
    let h = Harness::with_settings(&mesh, settings);
    for h2 in [false, true] {
        let mut client = if h2 {
            h.h2(NS, VIP).await
        } else {
            h.h1(NS, VIP).await
        };
        // Requests less than the timeout apart keep the connection.
        for _ in 0..3 {
            assert_eq!(client.get("/").await.status, 200);
            tokio::time::sleep(idle / 4).await;
        }
        let deadline = Instant::now() + idle * 10;
        while !client.is_closed() {
            assert!(
                Instant::now() < deadline,
                "the idle client connection was kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_connection_given_back_after_its_client_was_forgotten_is_closed() {
    let backend = Backend::start("echo", |_| Reply::ok().delay(Duration::from_millis(300))).await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(h.outbound.upstream_idle(), 1, "pooled after its answer");
    // The pod goes while a request of its is under way on that connection.
    let pending = tokio::spawn(async move { client.get("/").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let connector: std::sync::Arc<dyn crate::http::UpstreamConnector> = h.connector.clone();
    h.outbound.forget_client(&connector);
    assert_eq!(pending.await.unwrap(), 200, "the request still completes");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.outbound.upstream_idle(),
        0,
        "its connection is not pooled again"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let backend = Backend::ok("echo").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    let settings = HttpSettings {
        idle_timeout: Duration::from_millis(200),
        ..HttpSettings::default()
    };
    let h = Harness::with_settings(&mesh, settings);
    let mut client = h.h1(NS, VIP).await;
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(h.outbound.upstream_idle(), 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.outbound.upstream_idle() > 0 {
        assert!(Instant::now() < deadline, "the idle connection was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request opens a new connection and succeeds.
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(h.outbound.upstream_connects(), 2);
}
