//! The L7 mesh end to end, in the lab: the timeout and retry routes of
//! `conformance/gamma/gateway-reference/` translated to Service
//! parents (GAMMA), with the upstream conformance tests' requests and
//! expectations, plus how many attempts reached the backend and when the
//! answer came; and the whole GAMMA conformance suite of
//! `conformance/gamma/` through the runner `hawser lab
//! conformance` uses. Runs as root (CI does); fails, never skips, when it
//! cannot set up.
//!
//! Backend hits are counted by the echo backend itself: every request that
//! carries `responseCode=…&succeedAfter=…&uuid=<key>` is counted under its
//! key when it arrives (before any delay), and a probe sent straight to the
//! pod with the same key and `succeedAfter=PROBES` fails exactly
//! `PROBES - hits` times.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hawser_tests::echo::client::Outcome;
use hawser_tests::lab::conformance::{self, Options};
use hawser_tests::lab::{Lab, LabConfig};

/// The tests share a 2-core machine: timing assertions are only meaningful
/// when one lab runs at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Removes the lab even when an assertion fails.
use hawser_tests::lab::LabGuard as Guard;

const NS: &str = "l7";

/// A two-node lab in a fresh directory. Bind the result as `(dir, guard)`:
/// locals drop in reverse order, so the lab (and its processes, which write
/// into the directory) is gone before the directory is removed.
fn up(tag: &str) -> (tempfile::TempDir, Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("l7{}{tag}", std::process::id() % 10000);
    let lab = Lab::up(LabConfig::new(&name, 2, dir.path().join("lab"))).expect("lab up");
    (dir, Guard(Some(lab)))
}

/// An enrolled namespace: Service `echo` (HTTP, port 80) backed by one echo
/// pod on node-2; Service `flaky` backed by an echo pod and a pod that
/// listens on nothing (connections to it are refused), both on node-2; the
/// client on node-1.
fn app() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
  labels:
    hawser.dev/mesh: enabled
---
apiVersion: v1
kind: Pod
metadata:
  name: echo
  namespace: {NS}
  labels: {{app: echo}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    image: hawser/echo
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: {NS}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: flaky-healthy
  namespace: {NS}
  labels: {{app: flaky}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    image: hawser/echo
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: flaky-broken
  namespace: {NS}
  labels: {{app: flaky}}
  annotations: {{lab.hawser.dev/command: "sleep infinity"}}
spec:
  nodeName: node-2
  containers:
  - name: main
    image: busybox
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: flaky
  namespace: {NS}
spec:
  selector: {{app: flaky}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NS}
  annotations: {{lab.hawser.dev/command: "sleep infinity"}}
spec:
  nodeName: node-1
  containers: [{{name: main, image: busybox}}]
"#
    )
}

/// `httproute-timeout-request.yaml` and `httproute-timeout-backend-request.yaml`
/// with Service `echo` as parent and backend.
fn timeout_routes() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: request-timeout
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /request-timeout}}
    backendRefs:
    - {{name: echo, port: 80}}
    timeouts:
      request: 500ms
  - matches:
    - path: {{type: PathPrefix, value: /disable-request-timeout}}
    backendRefs:
    - {{name: echo, port: 80}}
    timeouts:
      request: "0s"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: backend-request-timeout
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /backend-timeout}}
    backendRefs:
    - {{name: echo, port: 80}}
    timeouts:
      backendRequest: 500ms
  - matches:
    - path: {{type: PathPrefix, value: /disable-backend-timeout}}
    backendRefs:
    - {{name: echo, port: 80}}
    timeouts:
      backendRequest: "0s"
"#
    )
}

/// `httproute-retry.yaml` with Service `echo` as parent and backend.
fn retry_route() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: retries
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /retry/code-500-attempts-3}}
    retry:
      codes: [500]
      attempts: 3
    backendRefs:
    - {{name: echo, port: 80}}
  - matches:
    - path: {{type: PathPrefix, value: /retry/code-all-attempts-2}}
    retry:
      codes: [500, 502, 503, 504]
      attempts: 2
    backendRefs:
    - {{name: echo, port: 80}}
"#
    )
}

/// `httproute-retry-with-timeouts.yaml` with Service `echo` as parent and
/// backend.
fn retry_with_timeouts_route() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: retries-with-timeouts
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /retry/backend-request-timeout-200ms}}
    retry:
      attempts: 2
    timeouts:
      backendRequest: 200ms
    backendRefs:
    - {{name: echo, port: 80}}
  - matches:
    - path: {{type: PathPrefix, value: /retry/request-timeout-200ms}}
    retry:
      codes: [500]
      attempts: 5
    timeouts:
      backendRequest: 200ms
      request: 400ms
    backendRefs:
    - {{name: echo, port: 80}}
"#
    )
}

/// `httproute-retry-connection-error.yaml` with Service `echo` (whose
/// backend drops connections on request) as parent and backend; and, as
/// upstream's current version of that test, a rule retrying up to 100 times
/// on Service `flaky`, one of whose two endpoints refuses connections (so a
/// run is very unlikely to miss the healthy one), plus a rule without
/// retries to show the refusals.
fn connection_error_routes() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: retries-connection-error
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /retry/no-status-code-attempts-3}}
    retry:
      attempts: 3
    backendRefs:
    - {{name: echo, port: 80}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: retries-connection-refused
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: flaky, port: 80}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /retry-on-connection-errors}}
    retry:
      attempts: 100
    backendRefs:
    - {{name: flaky, port: 80}}
  - matches:
    - path: {{type: PathPrefix, value: /no-retry}}
    backendRefs:
    - {{name: flaky, port: 80}}
"#
    )
}

fn apply(lab: &mut Lab, dir: &Path, file: &str, yaml: &str) {
    let path = dir.join(file);
    std::fs::write(&path, yaml).expect("write manifest");
    let report = lab.apply(&path).expect("apply");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// Runs the echo client in the client pod: `count` requests to `url` over
/// kept-alive connections.
fn send(lab: &Lab, url: &str, count: u32) -> Vec<Outcome> {
    let pod = lab.pod(NS, "client").expect("client pod");
    let args: Vec<String> = ["client", "--json", "--timeout", "10s", "--count"]
        .into_iter()
        .map(str::to_owned)
        .chain([count.to_string(), url.to_owned()])
        .collect();
    let outcomes =
        conformance::echo_client(lab, pod, &args).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(outcomes.len(), count as usize, "{outcomes:?}");
    outcomes
}

/// One request: its outcome.
fn one(lab: &Lab, url: &str) -> Outcome {
    send(lab, url, 1).remove(0)
}

/// A key no other request used.
fn fresh_key() -> String {
    format!("k{:016x}", rand::random::<u64>())
}

/// Probes sent by [`hits`]: more than any case sends under one key.
const PROBES: u32 = 20;

/// How many requests with simulation key `key` reached pod `pod`'s echo
/// backend so far.
fn hits(lab: &Lab, pod: &str, key: &str) -> u32 {
    let ip = lab.pod(NS, pod).expect("echo pod").ip.expect("pod IP");
    let url = format!("http://{ip}:8080/probe?responseCode=418&succeedAfter={PROBES}&uuid={key}");
    let outcomes = send(lab, &url, PROBES);
    let failed = outcomes.iter().filter(|o| o.status == Some(418)).count();
    assert!(
        outcomes.iter().all(|o| matches!(o.status, Some(200 | 418))),
        "{outcomes:?}"
    );
    let hits = PROBES - u32::try_from(failed).expect("count");
    assert!(hits < PROBES, "more than {PROBES} hits under {key}");
    hits
}

/// A counter of node `node`'s proxy (`name` with its labels, as exposed).
fn metric(lab: &Lab, node: &str, series: &str) -> u64 {
    let (status, body) = lab.node_proxy_get(node, "/metrics").expect("metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .trim()
        .parse()
        .expect("a counter")
}

const RETRIES: &str = r#"hawser_outbound_http_retries_total{outcome="sent"}"#;
const BUDGET_SPENT: &str = r#"hawser_outbound_http_retries_total{outcome="budget_exhausted"}"#;
const TIMEOUTS: &str = "hawser_outbound_http_timeouts_total";

/// The client-side proxy's retry and timeout counters.
fn counters(lab: &Lab) -> (u64, u64) {
    (
        metric(lab, "node-1", RETRIES),
        metric(lab, "node-1", TIMEOUTS),
    )
}

fn ms(outcome: &Outcome) -> Duration {
    Duration::from_secs_f64(outcome.elapsed_ms / 1000.0)
}

/// The routed Service answers (the routes are in force on node-1).
fn wait_answering(lab: &Lab, url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = one(lab, url);
        if o.status == Some(200) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{o:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slack on top of a timeout for the answer to reach the client (debug
/// build, 2 cores, every request through two proxies and mTLS).
const SLACK: Duration = Duration::from_millis(300);

#[test]
fn request_and_backend_request_timeouts_hold_with_a_service_parent() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (dir, mut guard) = up("t");
    let lab = guard.lab();
    apply(lab, dir.path(), "app.yaml", &app());
    apply(lab, dir.path(), "routes.yaml", &timeout_routes());
    wait_answering(lab, "http://echo.l7/request-timeout");
    let (_, timeouts_before) = counters(lab);

    for (path, timeout) in [
        ("request-timeout", "request"),
        ("backend-timeout", "backendRequest"),
    ] {
        // Fast enough: 200 (also with a delay under the timeout).
        for query in ["", "?delay=200ms"] {
            let o = one(lab, &format!("http://echo.l7/{path}{query}"));
            assert_eq!(o.status, Some(200), "{timeout} {query}: {o:?}");
            assert_eq!(o.hostname.as_deref(), Some("echo"), "{o:?}");
        }
        // Slower than the 500ms timeout: 504 when it passes, one attempt.
        let key = fresh_key();
        let o = one(
            lab,
            &format!("http://echo.l7/{path}?delay=1s&responseCode=500&succeedAfter=0&uuid={key}"),
        );
        assert_eq!(o.status, Some(504), "{timeout} 500ms, delay 1s: {o:?}");
        let took = ms(&o);
        assert!(
            took >= Duration::from_millis(490) && took < Duration::from_millis(500) + SLACK,
            "{timeout} 500ms answered after {took:?}"
        );
        assert_eq!(hits(lab, "echo", &key), 1, "{timeout}: no retry");
        // `0s` disables the timeout.
        let o = one(lab, &format!("http://echo.l7/disable-{path}?delay=1s"));
        assert_eq!(o.status, Some(200), "{timeout} 0s: {o:?}");
        assert!(ms(&o) >= Duration::from_secs(1), "{o:?}");
    }
    let (_, timeouts_after) = counters(lab);
    assert_eq!(timeouts_after - timeouts_before, 2, "two 504s counted");
}

#[test]
fn retries_follow_the_listed_codes_and_attempts_with_a_service_parent() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (dir, mut guard) = up("r");
    let lab = guard.lab();
    apply(lab, dir.path(), "app.yaml", &app());
    apply(lab, dir.path(), "routes.yaml", &retry_route());
    wait_answering(lab, "http://echo.l7/retry/code-500-attempts-3");
    let (retries_before, _) = counters(lab);

    // (path, failure code, failures before success, expected status, hits)
    let mut cases = vec![
        // Succeeds after 2 retries on 500 with at most 3.
        ("code-500-attempts-3", 500, 2, 200, 3),
        // Needs 4 retries, 3 allowed: the last 500.
        ("code-500-attempts-3", 500, 4, 500, 4),
        // 503 is not listed: not retried.
        ("code-500-attempts-3", 503, 2, 503, 1),
    ];
    for code in [500, 502, 503, 504] {
        // Succeeds after 1 retry; fails with the code when 3 were needed.
        cases.push(("code-all-attempts-2", code, 1, 200, 2));
        cases.push(("code-all-attempts-2", code, 3, code, 3));
    }
    let mut expected_retries = 0;
    for (path, code, fail, status, expected_hits) in cases {
        // Twice each (a fresh key each time), as upstream probes until consistent.
        for _ in 0..2 {
            let key = fresh_key();
            let url = format!(
                "http://echo.l7/retry/{path}?responseCode={code}&succeedAfter={fail}&uuid={key}"
            );
            let o = one(lab, &url);
            let what = format!("{path}, {code} for the first {fail}");
            assert_eq!(o.status, Some(status), "{what}: {o:?}");
            if status == 200 {
                assert_eq!(o.hostname.as_deref(), Some("echo"), "{o:?}");
            }
            assert_eq!(
                hits(lab, "echo", &key),
                expected_hits,
                "{what}: backend hits"
            );
            expected_retries += u64::from(expected_hits - 1);
        }
    }
    let (retries_after, _) = counters(lab);
    assert_eq!(retries_after - retries_before, expected_retries);
    assert_eq!(
        metric(lab, "node-1", BUDGET_SPENT),
        0,
        "the budget allowed all"
    );
}

#[test]
fn retries_stay_within_the_request_and_backend_request_timeouts() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (dir, mut guard) = up("w");
    let lab = guard.lab();
    apply(lab, dir.path(), "app.yaml", &app());
    apply(lab, dir.path(), "routes.yaml", &retry_with_timeouts_route());
    wait_answering(lab, "http://echo.l7/retry/request-timeout-200ms");

    let per_try = "http://echo.l7/retry/backend-request-timeout-200ms";
    let whole = "http://echo.l7/retry/request-timeout-200ms";
    for _ in 0..2 {
        // Each failing attempt answers after 1s, past the 200ms per-attempt
        // timeout: a timed-out attempt is retried (a retry stanza retries
        // timeouts even with no code listed). Two timeouts, then success.
        let key = fresh_key();
        let o = one(
            lab,
            &format!("{per_try}?responseCode=500&succeedAfter=2&delayRetry=1s&uuid={key}"),
        );
        assert_eq!(
            o.status,
            Some(200),
            "succeeds after 2 timed-out attempts: {o:?}"
        );
        assert!(
            ms(&o) >= Duration::from_millis(400) && ms(&o) < Duration::from_millis(400) + SLACK * 2,
            "two 200ms attempts, then the answer: {o:?}"
        );
        assert_eq!(hits(lab, "echo", &key), 3);

        // Three needed, two retries allowed: 504.
        let key = fresh_key();
        let o = one(
            lab,
            &format!("{per_try}?responseCode=500&succeedAfter=3&delayRetry=1s&uuid={key}"),
        );
        assert_eq!(o.status, Some(504), "every attempt timed out: {o:?}");
        assert!(
            ms(&o) >= Duration::from_millis(600) && ms(&o) < Duration::from_millis(600) + SLACK * 2,
            "three 200ms attempts: {o:?}"
        );
        assert_eq!(hits(lab, "echo", &key), 3);

        // Four fast 500s and a 200 fit in the 400ms request timeout.
        let key = fresh_key();
        let o = one(
            lab,
            &format!("{whole}?responseCode=500&succeedAfter=4&uuid={key}"),
        );
        assert_eq!(o.status, Some(200), "4 retries within 400ms: {o:?}");
        assert!(ms(&o) < Duration::from_millis(400) + SLACK, "{o:?}");
        assert_eq!(hits(lab, "echo", &key), 5);

        // With 100ms per failure the 400ms request timeout passes first: 504
        // when it does, whatever retries were left.
        let key = fresh_key();
        let o = one(
            lab,
            &format!("{whole}?responseCode=500&succeedAfter=4&delayRetry=100ms&uuid={key}"),
        );
        assert_eq!(o.status, Some(504), "request timeout before success: {o:?}");
        assert!(
            ms(&o) >= Duration::from_millis(390) && ms(&o) < Duration::from_millis(400) + SLACK,
            "{o:?}"
        );
        let h = hits(lab, "echo", &key);
        assert!((2..=4).contains(&h), "{h} attempts in 400ms");
    }
    assert_eq!(
        metric(lab, "node-1", BUDGET_SPENT),
        0,
        "the budget allowed all"
    );
}

#[test]
fn connection_errors_are_retried_with_a_service_parent() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (dir, mut guard) = up("c");
    let lab = guard.lab();
    apply(lab, dir.path(), "app.yaml", &app());
    apply(lab, dir.path(), "routes.yaml", &connection_error_routes());
    wait_answering(lab, "http://echo.l7/retry/no-status-code-attempts-3");

    // A backend that drops the connection without answering: retried.
    let url = "http://echo.l7/retry/no-status-code-attempts-3?close=true";
    let key = fresh_key();
    let o = one(lab, &format!("{url}&succeedAfter=3&uuid={key}"));
    assert_eq!(o.status, Some(200), "3 dropped, the 4th answered: {o:?}");
    assert_eq!(hits(lab, "echo", &key), 4);
    let key = fresh_key();
    let o = one(lab, &format!("{url}&succeedAfter=4&uuid={key}"));
    assert_eq!(
        o.status,
        Some(503),
        "4 dropped with 3 retries: unavailable, as Envoy answers: {o:?}"
    );
    assert_eq!(hits(lab, "echo", &key), 4, "no fifth attempt");

    // Without retries, the endpoint that refuses fails some requests.
    let outcomes = send(lab, "http://flaky.l7/no-retry", 20);
    let refused = outcomes.iter().filter(|o| o.status != Some(200)).count();
    assert!(
        refused > 0,
        "one of two endpoints refuses: 20 requests all answered? {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| matches!(o.status, Some(200 | 503))),
        "{outcomes:?}"
    );

    // With retries on connection errors, every request is answered by the
    // healthy endpoint (10 in a row, as upstream requires), and the refused
    // attempts were retried.
    let (retries_before, _) = counters(lab);
    let outcomes = send(lab, "http://flaky.l7/retry-on-connection-errors", 20);
    for o in &outcomes {
        assert_eq!(o.status, Some(200), "{o:?}");
        assert_eq!(o.hostname.as_deref(), Some("flaky-healthy"), "{o:?}");
    }
    let (retries_after, _) = counters(lab);
    assert!(
        retries_after > retries_before,
        "20 requests over two endpoints and no retry of a refused one?"
    );
}

#[test]
fn the_whole_gamma_conformance_suite_passes() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (_dir, mut guard) = up("s");
    let lab = guard.lab();
    let suite = conformance::default_dir().expect("the gamma suite is in the repository");
    let options = Options::new(&suite);
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    let report = conformance::run(lab, &options, &mut |l| lines.push(l.to_owned()))
        .expect("conformance run");
    let table = report.table();
    assert_eq!(report.failed, 0, "{table}\nprogress:\n{}", lines.join("\n"));
    let expected: usize = {
        let text = std::fs::read_to_string(suite.join("expectations.json")).expect("suite");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["tests"]
            .as_array()
            .expect("tests")
            .iter()
            .map(|t| t["cases"].as_array().map_or(0, Vec::len))
            .sum()
    };
    assert_eq!(report.results.len(), expected, "every case ran:\n{table}");
    eprintln!(
        "conformance: {expected} cases passed in {:.0?}",
        started.elapsed()
    );
}
