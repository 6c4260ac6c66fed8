//! The Gateway API mesh conformance runner (`hawser lab conformance`): the
//! upstream mesh cases kept in the repository's `conformance/gamma` (see its README),
//! run against a lab that is up.
//!
//! For each test the runner applies the base manifests (their Namespaces
//! labelled as upstream's `--namespace-labels` would, so the mesh enrols
//! them) and the test's own manifests, waits until the control plane reports
//! the test's routes, the node proxies have acknowledged the index version
//! and every pod accepts connections on its container ports, then sends each
//! case's requests from the named client pod with `hawser-echo client --json`
//! (method, headers, `--count`; redirects are never followed). Every
//! expectation is checked, the `*_NOT_CHECKED_UPSTREAM` ones (redirect
//! `Location`, the path the backend saw after a rewrite) included. As
//! upstream does, a case is retried until it passes 3 times in a row within
//! 30 s (polling every 100 ms); a weight case passes when one batch of its
//! requests lands within the tolerance, over at most `maxAttempts` batches.
//! Then the test's manifests are deleted again, and after the last test the
//! base manifests too (unless asked to keep them).
//!
//! The checks are pure functions over the echo client's parsed outcomes
//! ([`check_response`], [`check_distribution`]); each mismatch names what
//! was expected and what came back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Lab, LabError, Pod};
use crate::echo::client::{Outcome, Report};

/// Where the cases are in the repository (and so relative to the current
/// directory when run from its root).
pub const DEFAULT_DIR: &str = "conformance/gamma";

/// Passes in a row a case needs (upstream `RequiredConsecutiveSuccesses`).
pub const REQUIRED_CONSECUTIVE_PASSES: u32 = 3;

/// Why the runner could not run at all (a test that fails is not an error).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// No case directory was given and none was found.
    #[error("no conformance cases found (tried {tried}); pass the directory explicitly")]
    NoDir {
        /// The directories looked at.
        tried: String,
    },
    /// A file of the suite could not be read (or the runner's copy written).
    #[error("cannot access {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file of the suite is not what the runner understands.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--test` named a test the suite does not have.
    #[error("no test named {name:?}; the suite has: {known}")]
    UnknownTest {
        /// The name given.
        name: String,
        /// The tests there are.
        known: String,
    },
    /// The lab failed underneath.
    #[error(transparent)]
    Lab(#[from] LabError),
}

// ---------------------------------------------------------------------------
// The cases, as `expectations.json` writes them.

/// `expectations.json`: every test as data.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suite {
    /// The namespaces the tests use.
    pub namespaces: SuiteNamespaces,
    /// The tests, in the order they run.
    pub tests: Vec<TestSpec>,
}

/// The suite's namespaces.
#[derive(Debug, Clone, Deserialize)]
pub struct SuiteNamespaces {
    /// The producer namespace (where the echo Services live).
    pub mesh: String,
    /// The consumer namespace.
    pub consumer: String,
}

/// One upstream test.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestSpec {
    /// Upstream's `ShortName` (what `--test` selects).
    pub short_name: String,
    /// What it tests.
    #[serde(default)]
    pub description: String,
    /// Its manifests, relative to the suite directory (applied over the base).
    pub case_file: PathBuf,
    /// The pod requests are sent from, unless a case names its own.
    #[serde(default)]
    pub client: Option<ClientSpec>,
    /// Its cases, in order.
    pub cases: Vec<CaseSpec>,
}

/// Which pod sends a case's requests: the first (by name) in `namespace`
/// whose labels include `pod_selector`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// Labels the pod must carry.
    pub pod_selector: BTreeMap<String, String>,
    /// The container (lab pods have one network namespace, so informative).
    #[serde(default)]
    pub container: Option<String>,
    /// The echo image's subcommand upstream (`client`).
    #[serde(default)]
    pub command: Option<String>,
}

/// One case. Unknown fields are refused: an expectation the runner does not
/// know must not pass unchecked.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaseSpec {
    /// What it is called in the table.
    pub name: String,
    /// The request.
    pub request: RequestSpec,
    /// What every response must show (absent: status 200).
    #[serde(default)]
    pub expect: Option<Expect>,
    /// The client pod, when not the test's.
    #[serde(default)]
    pub client: Option<ClientSpec>,
    /// Send this many requests in one client run (kept-alive connections).
    #[serde(default)]
    pub batch: Option<Batch>,
    /// Share of the batch each backend must answer (name prefix → share).
    #[serde(default)]
    pub expect_weights: Option<BTreeMap<String, f64>>,
    /// Allowed distance of each share from its weight (default 0.05).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Batches tried before a weight case fails (default 10).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How upstream names a backend from a pod's hostname. The lab names
    /// pods `<deployment>-<i>`, so the runner matches weight keys as name
    /// prefixes instead ([`backend_of`]).
    #[serde(default)]
    pub backend_name_from: Option<String>,
}

/// A weight case's batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Requests in the batch.
    pub count: u32,
    /// How upstream sends it (informative).
    #[serde(default)]
    pub via: Option<String>,
}

/// The protocol of a case's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// gRPC (the echo service's `Echo` call).
    Grpc,
}

/// A case's request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP or gRPC.
    pub protocol: Protocol,
    /// `name[:port]`, or `<deployment podIP>:port` for the first pod of a
    /// Deployment of the mesh namespace (default `echo`).
    #[serde(default)]
    pub host: String,
    /// Path and query (may be empty).
    #[serde(default)]
    pub path: String,
    /// HTTP method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers (`Host` replaces the URL's authority).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// What a response must show. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    /// Any of these statuses (gRPC OK counts as 200); empty means 200.
    #[serde(default)]
    pub status_codes: Vec<u16>,
    /// The answering pod's name starts with this (empty: any pod).
    #[serde(default)]
    pub backend_pod_prefix: Option<String>,
    /// Headers the backend saw, values joined with `,`.
    #[serde(default)]
    pub backend_sees_headers: BTreeMap<String, String>,
    /// Headers the backend must not have seen.
    #[serde(default)]
    pub backend_sees_headers_absent: Vec<String>,
    /// Response headers the client got, values joined with `,`.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Response headers the client must not get.
    #[serde(default)]
    pub response_headers_absent: Vec<String>,
    /// The redirect's `Location` (required by the spec, not checked upstream).
    #[serde(default, rename = "location_NOT_CHECKED_UPSTREAM")]
    pub location: Option<String>,
    /// The path the backend saw, after a rewrite (required by the spec, not
    /// checked upstream).
    #[serde(default, rename = "backendSeesPath_NOT_CHECKED_UPSTREAM")]
    pub backend_sees_path: Option<String>,
}

impl Suite {
    /// Reads `expectations.json` of `dir`.
    pub fn load(dir: &Path) -> Result<Self, ConformanceError> {
        let path = dir.join("expectations.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConformanceError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ConformanceError::Parse {
            path,
            reason: e.to_string(),
        })
    }

    /// The tests named in `names` (every test when empty), in suite order.
    pub fn select(&self, names: &[String]) -> Result<Vec<&TestSpec>, ConformanceError> {
        for name in names {
            if !self.tests.iter().any(|t| &t.short_name == name) {
                return Err(ConformanceError::UnknownTest {
                    name: name.clone(),
                    known: self
                        .tests
                        .iter()
                        .map(|t| t.short_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(self
            .tests
            .iter()
            .filter(|t| names.is_empty() || names.contains(&t.short_name))
            .collect())
    }
}

impl RequestSpec {
    /// The URL the echo client requests: `http://` or `grpc://`, the host
    /// (default `echo`; `:80` dropped for HTTP, as upstream's harness does)
    /// with `<deployment podIP>` replaced through `pod_ip`, then the path.
    pub fn url(&self, pod_ip: impl Fn(&str) -> Option<Ipv4Addr>) -> Result<String, String> {
        let host = if self.host.is_empty() {
            "echo"
        } else {
            self.host.as_str()
        };
        let mut host = substitute_pod_ip(host, pod_ip)?;
        let scheme = match self.protocol {
            Protocol::Http => {
                if let Some(stripped) = host.strip_suffix(":80") {
                    host = stripped.to_owned();
                }
                "http"
            }
            Protocol::Grpc => "grpc",
        };
        Ok(format!("{scheme}://{host}{}", self.path))
    }

    /// The `hawser-echo` arguments that send `count` such requests to `url`
    /// and print the JSON report.
    pub fn client_args(&self, url: &str, count: u32) -> Vec<String> {
        let mut args = vec![
            "client".to_owned(),
            url.to_owned(),
            "--json".into(),
            "--count".into(),
            count.max(1).to_string(),
        ];
        if self.protocol == Protocol::Http {
            args.extend([
                "-X".to_owned(),
                self.method.clone().unwrap_or_else(|| "GET".into()),
            ]);
        }
        for (name, value) in &self.headers {
            args.extend(["-H".to_owned(), format!("{name}: {value}")]);
        }
        args
    }
}

/// Replaces `<name podIP>` in `host` with `pod_ip(name)`.
fn substitute_pod_ip(
    host: &str,
    pod_ip: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Result<String, String> {
    let Some((before, rest)) = host.split_once('<') else {
        return Ok(host.to_owned());
    };
    let (inside, after) = rest
        .split_once('>')
        .ok_or_else(|| format!("host {host:?}: unclosed '<'"))?;
    let name = inside
        .strip_suffix(" podIP")
        .ok_or_else(|| format!("host {host:?}: expected <deployment podIP>"))?;
    let ip = pod_ip(name).ok_or_else(|| format!("host {host:?}: no pod of {name} has an IP"))?;
    Ok(format!("{before}{ip}{after}"))
}

// ---------------------------------------------------------------------------
// The checks: pure functions over the echo client's outcomes.

/// The status a response shows as upstream compares it: the HTTP status, or
/// 200 for a gRPC call that ended OK. `Err` describes anything else.
fn observed_status(outcome: &Outcome, grpc: bool) -> Result<u16, String> {
    let Some(http) = outcome.status else {
        return Err(format!(
            "no response: {}",
            outcome.error.as_deref().unwrap_or("unknown error")
        ));
    };
    if !grpc {
        return Ok(http);
    }
    match outcome.grpc_status {
        Some(0) => Ok(200),
        Some(code) => Err(format!(
            "gRPC status {code}{}",
            outcome
                .grpc_message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )),
        None => Err(format!("HTTP {http} without grpc-status")),
    }
}

fn joined(values: &[&str]) -> Option<String> {
    (!values.is_empty()).then(|| values.join(","))
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"))
}

/// Every way `outcome` misses `expect` (empty: it passes), each naming what
/// was expected and what came back. A wrong status is reported alone (with
/// the answering pod or the redirect target), since the rest then says
/// nothing more.
pub fn check_response(expect: &Expect, outcome: &Outcome, grpc: bool) -> Vec<String> {
    let want: &[u16] = if expect.status_codes.is_empty() {
        &[200]
    } else {
        &expect.status_codes
    };
    let want_text = want
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    let got = match observed_status(outcome, grpc) {
        Ok(code) => code,
        Err(e) => return vec![format!("status: expected {want_text}, got {e}")],
    };
    if !want.contains(&got) {
        let mut detail = String::new();
        if let Some(host) = &outcome.hostname {
            let _ = write!(detail, " (answered by {host})");
        }
        if let Some(location) = joined(&outcome.header("location")) {
            let _ = write!(detail, " (Location {location:?})");
        }
        return vec![format!("status: expected {want_text}, got {got}{detail}")];
    }
    let mut misses = Vec::new();
    if let Some(e) = &outcome.error {
        misses.push(format!("response: {e}"));
    }
    if let Some(prefix) = expect
        .backend_pod_prefix
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        match outcome.hostname.as_deref() {
            Some(h) if h.starts_with(prefix) => {}
            Some(h) => misses.push(format!("backend: expected a pod {prefix}*, got {h}")),
            None => misses.push(format!(
                "backend: expected a pod {prefix}*, got no Hostname= in the response body"
            )),
        }
    }
    for (name, value) in &expect.backend_sees_headers {
        let got = outcome.body.request_header_joined(name);
        if got.as_deref() != Some(value.as_str()) {
            misses.push(format!(
                "backend header {name}: expected {value:?}, got {}",
                shown(got.as_deref())
            ));
        }
    }
    for name in &expect.backend_sees_headers_absent {
        if let Some(got) = outcome.body.request_header_joined(name) {
            misses.push(format!(
                "backend header {name}: expected absent, got {got:?}"
            ));
        }
    }
    for (name, value) in &expect.response_headers {
        let got = joined(&outcome.header(name));
        if got.as_deref() != Some(value.as_str()) {
            misses.push(format!(
                "response header {name}: expected {value:?}, got {}",
                shown(got.as_deref())
            ));
        }
    }
    for name in &expect.response_headers_absent {
        if let Some(got) = joined(&outcome.header(name)) {
            misses.push(format!(
                "response header {name}: expected absent, got {got:?}"
            ));
        }
    }
    if let Some(location) = &expect.location {
        let got = joined(&outcome.header("location"));
        if got.as_deref() != Some(location.as_str()) {
            misses.push(format!(
                "Location: expected {location:?}, got {}",
                shown(got.as_deref())
            ));
        }
    }
    if let Some(path) = &expect.backend_sees_path {
        let got = outcome
            .body
            .url()
            .map(|u| u.split_once('?').map_or(u, |(p, _)| p));
        if got != Some(path.as_str()) {
            misses.push(format!(
                "backend path: expected {path:?}, got {}",
                got.map_or_else(
                    || "no URL= in the response body".to_owned(),
                    |p| format!("{p:?}")
                )
            ));
        }
    }
    misses
}

/// Which backend of `names` a pod is: the longest name equal to the
/// hostname or followed in it by `-` (`echo-v1-0` is `echo-v1`, not `echo`).
pub fn backend_of<'a>(hostname: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter(|n| {
            hostname == *n
                || hostname
                    .strip_prefix(*n)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|n| n.len())
}

/// Every way a batch misses its weights (empty: it passes): every request
/// must succeed (status 200 / gRPC OK), no pod outside the weighted
/// backends may answer, a backend of weight 0 must get nothing, and each
/// backend's share must be within `tolerance` of its weight.
pub fn check_distribution(
    weights: &BTreeMap<String, f64>,
    tolerance: f64,
    outcomes: &[Outcome],
    grpc: bool,
) -> Vec<String> {
    let mut misses = Vec::new();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match observed_status(o, grpc) {
            Ok(200) => None,
            Ok(code) => Some(format!("status {code}")),
            Err(e) => Some(e),
        })
        .collect();
    if let Some(first) = failed.first() {
        misses.push(format!(
            "{} of {} requests did not succeed (first: {first})",
            failed.len(),
            outcomes.len()
        ));
    }
    let mut counts: BTreeMap<&str, usize> = weights.keys().map(|k| (k.as_str(), 0)).collect();
    let mut strangers: BTreeMap<String, usize> = BTreeMap::new();
    let mut answered = 0usize;
    for o in outcomes {
        if !matches!(observed_status(o, grpc), Ok(200)) {
            continue;
        }
        answered += 1;
        let host = o.hostname.as_deref().unwrap_or("(no Hostname=)");
        match backend_of(host, weights.keys().map(String::as_str)) {
            Some(b) => *counts.entry(b).or_default() += 1,
            None => *strangers.entry(host.to_owned()).or_default() += 1,
        }
    }
    if !strangers.is_empty() {
        let list: Vec<String> = strangers
            .iter()
            .map(|(h, n)| format!("{h} ({n})"))
            .collect();
        misses.push(format!(
            "answered by pods outside the weighted backends: {}",
            list.join(", ")
        ));
    }
    if answered == 0 {
        if misses.is_empty() {
            misses.push("no request was sent".into());
        }
        return misses;
    }
    for (name, weight) in weights {
        let n = counts.get(name.as_str()).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)] // request counts are far below 2^52
        let share = n as f64 / answered as f64;
        let off = if *weight == 0.0 {
            n > 0
        } else {
            (share - weight).abs() > tolerance
        };
        if off {
            misses.push(format!(
                "{name}: expected {:.0}% ±{:.0}%, got {:.1}% ({n} of {answered})",
                weight * 100.0,
                tolerance * 100.0,
                share * 100.0
            ));
        }
    }
    misses
}

// ---------------------------------------------------------------------------
// Results.

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseResult {
    /// The test's short name.
    pub test: String,
    /// The case's name.
    pub case: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (every mismatch of the last attempt, expected vs got).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It passed, but failed again after having passed before: what
    /// answers varies (e.g. a random backend), rather than converging.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flaky: Option<String>,
    /// Client runs made.
    pub attempts: u32,
    /// Time spent on the case.
    pub elapsed_ms: u64,
}

/// Every case's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SuiteReport {
    /// One per case, in suite order.
    pub results: Vec<CaseResult>,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl SuiteReport {
    fn push(&mut self, result: CaseResult) {
        if result.passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.results.push(result);
    }

    /// The table: test, case, result, reason when failed; then the line
    /// `N passed, M failed`.
    pub fn table(&self) -> String {
        let width = |f: fn(&CaseResult) -> &str, title: &str| {
            self.results
                .iter()
                .map(|r| f(r).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let tw = width(|r| &r.test, "TEST");
        let cw = width(|r| &r.case, "CASE");
        let mut out = String::new();
        let _ = writeln!(out, "{:<tw$}  {:<cw$}  RESULT  REASON", "TEST", "CASE");
        for r in &self.results {
            let result = if r.passed { "pass" } else { "FAIL" };
            let reason = match (&r.reason, &r.flaky) {
                (Some(reason), _) => reason.clone(),
                (None, Some(flaky)) => format!("flaky: {flaky}"),
                (None, None) => String::new(),
            };
            let line = format!("{:<tw$}  {:<cw$}  {result:<6}  {reason}", r.test, r.case);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

// ---------------------------------------------------------------------------
// The runner.

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct Options {
    /// The suite directory (`expectations.json`, `base-manifests.yaml`, `mesh/`).
    pub dir: PathBuf,
    /// Only these tests (short names); all when empty.
    pub tests: Vec<String>,
    /// How long a case may take to pass [`REQUIRED_CONSECUTIVE_PASSES`]
    /// times in a row (upstream `MaxTimeToConsistency`, 30 s).
    pub consistency_window: Duration,
    /// Pause between attempts (upstream 100 ms).
    pub poll_interval: Duration,
    /// How long to wait for pods to accept connections and for the control
    /// plane to report routes.
    pub setup_timeout: Duration,
    /// Labels added to the base manifests' Namespaces (upstream
    /// `--namespace-labels`); default `hawser.dev/mesh=enabled`.
    pub namespace_labels: BTreeMap<String, String>,
    /// Leave the base manifests applied after the run.
    pub keep_base: bool,
}

impl Options {
    /// Upstream's settings for the suite in `dir`, enrolling its namespaces.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        use hawser_control_plane::model::Namespace;
        Self {
            dir: dir.into(),
            tests: Vec::new(),
            consistency_window: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            setup_timeout: Duration::from_secs(30),
            namespace_labels: BTreeMap::from([(
                Namespace::MESH_LABEL.to_owned(),
                Namespace::MESH_ENABLED.to_owned(),
            )]),
            keep_base: false,
        }
    }
}

/// Runs `hawser-echo` with `args` (e.g. `client --json … URL`) inside
/// `pod`'s network namespace and returns the outcomes of its JSON report.
/// The client exits 1 when a request got no response; its report says which
/// and why, so that exit is not an error here.
pub fn echo_client(lab: &Lab, pod: &Pod, args: &[String]) -> Result<Vec<Outcome>, String> {
    let echo = lab.config().bin_dir.join("hawser-echo");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(&echo)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {} in {}: {e}", echo.display(), pod.name))?;
    serde_json::from_slice::<Report>(&out.stdout)
        .map(|r| r.outcomes)
        .map_err(|_| {
            format!(
                "echo client in {}/{} failed ({}): {}",
                pod.namespace,
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// The suite directory when none is given: [`DEFAULT_DIR`] from the current
/// directory, then the one of the repository whose package cargo runs this
/// from (tests), then the one of the source tree this was built from.
pub fn default_dir() -> Result<PathBuf, ConformanceError> {
    let mut candidates = vec![PathBuf::from(DEFAULT_DIR)];
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        candidates.push(Path::new(&dir).join("..").join(DEFAULT_DIR));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEFAULT_DIR),
    );
    candidates
        .iter()
        .find(|d| d.join("expectations.json").is_file())
        .cloned()
        .ok_or_else(|| ConformanceError::NoDir {
            tried: candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A Kubernetes object a manifest file names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    kind: String,
    namespace: String,
    name: String,
    /// Container ports of a Deployment's or Pod's containers.
    ports: Vec<u16>,
}

/// The objects of a multi-document YAML text (empty documents skipped).
fn objects_of(text: &str) -> Result<Vec<Object>, String> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = Value::deserialize(doc).map_err(|e| e.to_string())?;
        let Some(kind) = doc["kind"].as_str() else {
            continue;
        };
        let spec = if kind == "Deployment" {
            &doc["spec"]["template"]["spec"]
        } else {
            &doc["spec"]
        };
        let ports = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        objects.push(Object {
            kind: kind.to_owned(),
            namespace: doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            name: doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ports,
        });
    }
    Ok(objects)
}

/// `text` with `labels` added to every Namespace document.
fn label_namespaces(text: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut doc = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if doc.is_null() {
            continue;
        }
        if doc["kind"] == "Namespace" {
            for (k, v) in labels {
                doc["metadata"]["labels"][k] = Value::String(v.clone());
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// A route as `(kind, namespace, name)`.
type RouteKey = (String, String, String);

/// The route kinds the control plane reports status for.
fn is_route(kind: &str) -> bool {
    kind == "HTTPRoute" || kind == "GRPCRoute"
}

/// `GET path` on the control plane's admin API, as JSON.
fn admin_get(lab: &Lab, path: &str) -> Result<Value, String> {
    match lab.admin_get(path).map_err(|e| e.to_string())? {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("admin API {path}: {e}")),
        (code, body) => Err(format!("admin API {path}: {code} {}", body.trim())),
    }
}

/// The routes `/status/routes` lists, as `(kind, namespace, name)`, each
/// with its conditions that are not True.
fn reported_routes(lab: &Lab) -> Result<BTreeMap<RouteKey, Vec<String>>, String> {
    let status = admin_get(lab, "/status/routes")?;
    let mut routes = BTreeMap::new();
    for r in status["routes"].as_array().into_iter().flatten() {
        let kind = match r["route"]["kind"].as_str() {
            Some("Http") => "HTTPRoute",
            Some("Grpc") => "GRPCRoute",
            _ => continue,
        };
        let key = &r["route"]["key"];
        let mut bad = Vec::new();
        for p in r["parents"].as_array().into_iter().flatten() {
            for c in p["conditions"].as_array().into_iter().flatten() {
                if c["status"] != Value::Bool(true) {
                    bad.push(format!(
                        "{}=False {}: {}",
                        c["type"].as_str().unwrap_or("?"),
                        c["reason"].as_str().unwrap_or("?"),
                        c["message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        routes.insert(
            (
                kind.to_owned(),
                key["namespace"].as_str().unwrap_or_default().to_owned(),
                key["name"].as_str().unwrap_or_default().to_owned(),
            ),
            bad,
        );
    }
    Ok(routes)
}

/// Runs the selected tests on `lab`; `progress` gets one line per step.
pub fn run(
    lab: &mut Lab,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, ConformanceError> {
    let suite = Suite::load(&options.dir)?;
    let tests = suite.select(&options.tests)?;
    let base_path = options.dir.join("base-manifests.yaml");
    let base_text =
        std::fs::read_to_string(&base_path).map_err(|source| ConformanceError::Read {
            path: base_path.clone(),
            source,
        })?;
    let parse = |reason| ConformanceError::Parse {
        path: base_path.clone(),
        reason,
    };
    let base_objects = objects_of(&base_text).map_err(parse)?;
    let labelled = label_namespaces(&base_text, &options.namespace_labels).map_err(parse)?;
    let work = lab.config().state_dir.join("conformance");
    std::fs::create_dir_all(&work).map_err(|source| ConformanceError::Read {
        path: work.clone(),
        source,
    })?;
    let base = work.join("base-manifests.yaml");
    std::fs::write(&base, labelled).map_err(|source| ConformanceError::Read {
        path: base.clone(),
        source,
    })?;

    let mut runner = Runner {
        lab,
        options,
        suite: &suite,
        progress,
    };
    let mut report = SuiteReport::default();
    for test in tests {
        for result in runner.run_test(test, &base, &base_objects) {
            report.push(result);
        }
    }
    if !options.keep_base {
        (runner.progress)("deleting the base manifests");
        let deleted = runner.lab.delete(&base)?;
        for e in deleted.errors {
            (runner.progress)(&format!("  warning: {e}"));
        }
    }
    Ok(report)
}

struct Runner<'a> {
    lab: &'a mut Lab,
    options: &'a Options,
    suite: &'a Suite,
    progress: &'a mut dyn FnMut(&str),
}

impl Runner<'_> {
    fn say(&mut self, line: &str) {
        (self.progress)(line);
    }

    /// Sets the test up, runs its cases, deletes its manifests.
    fn run_test(
        &mut self,
        test: &TestSpec,
        base: &Path,
        base_objects: &[Object],
    ) -> Vec<CaseResult> {
        let started = Instant::now();
        let case_file = self.options.dir.join(&test.case_file);
        self.say(&format!("{}: setting up", test.short_name));
        let objects = match self.set_up(base, base_objects, &case_file) {
            Ok(objects) => objects,
            Err(reason) => {
                self.say(&format!("{}: setup failed: {reason}", test.short_name));
                let elapsed_ms = elapsed_ms(started);
                let _ = self.tear_down(&case_file, &[]);
                return test
                    .cases
                    .iter()
                    .map(|c| CaseResult {
                        test: test.short_name.clone(),
                        case: c.name.clone(),
                        passed: false,
                        reason: Some(format!("setup: {reason}")),
                        flaky: None,
                        attempts: 0,
                        elapsed_ms,
                    })
                    .collect();
            }
        };
        let notes = self.convergence_notes(&objects);
        let mut results = Vec::new();
        for case in &test.cases {
            let mut result = self.run_case(test, case);
            if let Some(reason) = result.reason.as_mut().filter(|_| !notes.is_empty()) {
                let _ = write!(reason, " [{}]", notes.join("; "));
            }
            let verdict = if result.passed { "pass" } else { "FAIL" };
            self.say(&format!(
                "  {verdict} {} ({} attempts, {:.1}s){}",
                case.name,
                result.attempts,
                Duration::from_millis(result.elapsed_ms).as_secs_f64(),
                result
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
            results.push(result);
        }
        if let Err(e) = self.tear_down(&case_file, &objects) {
            self.say(&format!("{}: teardown: {e}", test.short_name));
        }
        results
    }

    /// Applies the base and the test's manifests and waits until the lab is
    /// ready for them. Returns the test's own objects.
    fn set_up(
        &mut self,
        base: &Path,
        base_objects: &[Object],
        case_file: &Path,
    ) -> Result<Vec<Object>, String> {
        let text = std::fs::read_to_string(case_file)
            .map_err(|e| format!("{}: {e}", case_file.display()))?;
        let objects = objects_of(&text).map_err(|e| format!("{}: {e}", case_file.display()))?;
        let mut refused = Vec::new();
        let base_report = self.lab.apply(base).map_err(|e| e.to_string())?;
        refused.extend(base_report.errors);
        if !objects.is_empty() {
            let report = self.lab.apply(case_file).map_err(|e| e.to_string())?;
            refused.extend(report.errors);
        }
        if !refused.is_empty() {
            return Err(format!("the lab refused: {}", refused.join("; ")));
        }
        let deadline = Instant::now() + self.options.setup_timeout;
        // `apply` returned once every node proxy runs the routes; what is
        // left is the pods' apps listening.
        self.wait_pods_ready(base_objects.iter().chain(&objects), deadline)?;
        Ok(objects)
    }

    /// Deletes the test's manifests (`delete` returns once the nodes run
    /// without them).
    fn tear_down(&mut self, case_file: &Path, objects: &[Object]) -> Result<(), String> {
        if objects.is_empty() {
            return Ok(());
        }
        let report = self.lab.delete(case_file).map_err(|e| e.to_string())?;
        if report.errors.is_empty() {
            Ok(())
        } else {
            Err(report.errors.join("; "))
        }
    }

    /// Waits until every pod of the Deployments and Pods in `objects` has an
    /// IP and accepts connections on each container port (from the underlay).
    fn wait_pods_ready<'o>(
        &self,
        objects: impl Iterator<Item = &'o Object>,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut targets: Vec<(String, Option<Ipv4Addr>, Vec<u16>)> = Vec::new();
        for o in objects {
            let pods: Vec<&Pod> = match o.kind.as_str() {
                "Deployment" => self
                    .lab
                    .state()
                    .pods
                    .iter()
                    .filter(|p| p.namespace == o.namespace && is_replica_of(&p.name, &o.name))
                    .collect(),
                "Pod" => self.lab.pod(&o.namespace, &o.name).into_iter().collect(),
                _ => continue,
            };
            if pods.is_empty() {
                return Err(format!(
                    "{} {}/{} has no pods in the lab",
                    o.kind, o.namespace, o.name
                ));
            }
            let ports = if o.ports.is_empty() {
                vec![8080]
            } else {
                o.ports.clone()
            };
            for p in pods {
                targets.push((format!("{}/{}", p.namespace, p.name), p.ip, ports.clone()));
            }
        }
        loop {
            let mut waiting = Vec::new();
            for (name, ip, ports) in &targets {
                let Some(ip) = *ip else {
                    waiting.push(format!("pod {name} has no IP"));
                    continue;
                };
                let ports = ports.clone();
                let closed = self
                    .lab
                    .in_underlay(move || {
                        ports
                            .into_iter()
                            .filter(|port| {
                                let addr = SocketAddr::from((ip, *port));
                                TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                                    .is_err()
                            })
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| e.to_string())?;
                if !closed.is_empty() {
                    waiting.push(format!(
                        "pod {name} ({ip}) does not accept connections on port {closed:?}"
                    ));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(waiting.join("; "));
            }
            std::thread::sleep(self.options.poll_interval);
        }
    }

    /// What could explain failures: the test's routes whose conditions are
    /// not True.
    fn convergence_notes(&self, objects: &[Object]) -> Vec<String> {
        let mut notes = Vec::new();
        match reported_routes(self.lab) {
            Ok(reported) => {
                for o in objects.iter().filter(|o| is_route(&o.kind)) {
                    let key = (o.kind.clone(), o.namespace.clone(), o.name.clone());
                    for c in reported.get(&key).into_iter().flatten() {
                        notes.push(format!("{} {}/{}: {c}", o.kind, o.namespace, o.name));
                    }
                }
            }
            Err(e) => notes.push(e),
        }
        // A node that did not acknowledge the change made `apply` fail
        // before any case ran.
        notes
    }

    /// The first pod (by name) `client` selects.
    fn client_pod(&self, client: &ClientSpec) -> Result<Pod, String> {
        let mut pods: Vec<&Pod> = self
            .lab
            .state()
            .pods
            .iter()
            .filter(|p| {
                p.namespace == client.namespace
                    && client
                        .pod_selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods.first().map(|p| (*p).clone()).ok_or_else(|| {
            let selector: Vec<String> = client
                .pod_selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "no pod in {} matches {}",
                client.namespace,
                selector.join(",")
            )
        })
    }

    /// The first pod's IP of Deployment `name` in the mesh namespace.
    fn deployment_pod_ip(&self, name: &str) -> Option<Ipv4Addr> {
        let mut pods: Vec<&Pod> = self
            .lab
            .state()
            .pods
            .iter()
            .filter(|p| p.namespace == self.suite.namespaces.mesh && is_replica_of(&p.name, name))
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods.first().and_then(|p| p.ip)
    }

    /// Runs the echo client in `pod` and parses its report.
    fn send(&self, pod: &Pod, args: &[String]) -> Result<Vec<Outcome>, String> {
        echo_client(self.lab, pod, args)
    }

    fn run_case(&mut self, test: &TestSpec, case: &CaseSpec) -> CaseResult {
        let started = Instant::now();
        let mut result = CaseResult {
            test: test.short_name.clone(),
            case: case.name.clone(),
            passed: false,
            reason: None,
            flaky: None,
            attempts: 0,
            elapsed_ms: 0,
        };
        let prepared = (|| {
            let client = case
                .client
                .as_ref()
                .or(test.client.as_ref())
                .ok_or_else(|| "the case names no client pod".to_owned())?;
            let pod = self.client_pod(client)?;
            let url = case.request.url(|name| self.deployment_pod_ip(name))?;
            Ok::<_, String>((pod, url))
        })();
        let (pod, url) = match prepared {
            Ok(p) => p,
            Err(e) => {
                result.reason = Some(e);
                result.elapsed_ms = elapsed_ms(started);
                return result;
            }
        };
        let grpc = case.request.protocol == Protocol::Grpc;
        let deadline = started + self.options.consistency_window;
        let outcome = match &case.expect_weights {
            Some(weights) => {
                let count = case.batch.as_ref().map_or(500, |b| b.count);
                let args = case.request.client_args(&url, count);
                let tolerance = case.tolerance.unwrap_or(0.05);
                let max_attempts = case.max_attempts.unwrap_or(10).max(1);
                let retry = Retry {
                    deadline,
                    poll: self.options.poll_interval,
                    max_attempts: Some(max_attempts),
                    needed: 1,
                };
                until_pass(retry, &mut result.attempts, || {
                    self.send(&pod, &args)
                        .map(|o| check_distribution(weights, tolerance, &o, grpc))
                        .unwrap_or_else(|e| vec![e])
                })
            }
            None => {
                let expect = case.expect.clone().unwrap_or_default();
                let count = case.batch.as_ref().map_or(1, |b| b.count);
                let args = case.request.client_args(&url, count);
                let retry = Retry {
                    deadline,
                    poll: self.options.poll_interval,
                    max_attempts: None,
                    needed: REQUIRED_CONSECUTIVE_PASSES,
                };
                until_pass(retry, &mut result.attempts, || {
                    match self.send(&pod, &args) {
                        Ok(outcomes) if outcomes.is_empty() => {
                            vec!["the echo client reported no request".to_owned()]
                        }
                        Ok(outcomes) => outcomes
                            .iter()
                            .flat_map(|o| check_response(&expect, o, grpc))
                            .collect(),
                        Err(e) => vec![e],
                    }
                })
            }
        };
        match outcome {
            Ok(flaky) => {
                result.passed = true;
                result.flaky = flaky;
            }
            Err(reason) => result.reason = Some(reason),
        }
        result.elapsed_ms = elapsed_ms(started);
        result
    }
}

/// When a case's attempts stop: `needed` passes in a row, `deadline` (after
/// at least one attempt), or `max_attempts`.
#[derive(Debug, Clone, Copy)]
struct Retry {
    deadline: Instant,
    poll: Duration,
    max_attempts: Option<u32>,
    needed: u32,
}

/// Runs `attempt` (which returns its mismatches) as `retry` says, counting
/// in `attempts`. On failure the reason is the last failed attempt's
/// mismatches, and how often the case passed at all when it did. A pass
/// that had failed again after passing before is not convergence but
/// chance (e.g. a random backend): it comes with a note (`Ok(Some(..))`).
fn until_pass(
    retry: Retry,
    attempts: &mut u32,
    mut attempt: impl FnMut() -> Vec<String>,
) -> Result<Option<String>, String> {
    let mut in_a_row = 0;
    let mut passes = 0;
    let mut failures = 0;
    let mut relapse: Option<String> = None;
    let mut last_failure: Option<String> = None;
    loop {
        *attempts += 1;
        let misses = attempt();
        if misses.is_empty() {
            in_a_row += 1;
            passes += 1;
            if in_a_row >= retry.needed {
                return Ok(relapse.map(|last| {
                    format!(
                        "failed {failures} of {attempts} attempts, also after passing (last: {last})"
                    )
                }));
            }
        } else {
            in_a_row = 0;
            failures += 1;
            let joined = misses.join("; ");
            if passes > 0 {
                relapse = Some(joined.clone());
            }
            last_failure = Some(joined);
        }
        let out_of_attempts = retry.max_attempts.is_some_and(|m| *attempts >= m);
        if Instant::now() >= retry.deadline || out_of_attempts {
            return Err(match last_failure {
                Some(last) if passes > 0 => {
                    format!("{last} (passed {passes} of {attempts} attempts)")
                }
                Some(last) => last,
                None => format!(
                    "passed {passes} times, never {} in a row before the deadline",
                    retry.needed
                ),
            });
        }
        std::thread::sleep(retry.poll);
    }
}

/// Whether `pod` is a replica `<deployment>-<n>` of Deployment `deployment`.
fn is_replica_of(pod: &str, deployment: &str) -> bool {
    pod.strip_prefix(deployment)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::response;

    /// An answered HTTP request: status, response headers, echo body lines.
    fn answered(status: u16, headers: &[(&str, &str)], body: &str) -> Outcome {
        let body = response::parse(body);
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, v) in headers {
            map.entry(n.to_ascii_lowercase())
                .or_default()
                .push((*v).to_owned());
        }
        Outcome {
            index: 0,
            connection: Some(0),
            url: "http://echo/".into(),
            status: Some(status),
            grpc_status: None,
            grpc_message: None,
            headers: map,
            trailers: BTreeMap::new(),
            hostname: body.hostname().map(str::to_owned),
            body,
            error: None,
            elapsed_ms: 1.0,
        }
    }

    fn from_pod(pod: &str) -> Outcome {
        answered(200, &[], &format!("Hostname={pod}\nURL=/\n"))
    }

    fn expect(json: Value) -> Expect {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn status_passes_when_listed_and_names_what_came_instead() {
        let e = expect(serde_json::json!({"statusCodes": [200]}));
        assert!(check_response(&e, &from_pod("echo-v1-0"), false).is_empty());
        // No statusCodes means 200.
        assert!(check_response(&Expect::default(), &from_pod("echo-v1-0"), false).is_empty());
        assert_eq!(
            check_response(&Expect::default(), &answered(404, &[], ""), false),
            ["status: expected 200, got 404"]
        );
        let e = expect(serde_json::json!({"statusCodes": [302]}));
        assert_eq!(
            check_response(&e, &from_pod("echo-v1-0"), false),
            ["status: expected 302, got 200 (answered by echo-v1-0)"],
            "a wrong status is reported alone"
        );
        let e = expect(serde_json::json!({"statusCodes": [301, 308]}));
        assert_eq!(
            check_response(&e, &answered(302, &[("Location", "http://x/")], ""), false),
            ["status: expected 301 or 308, got 302 (Location \"http://x/\")"]
        );
    }

    #[test]
    fn no_response_is_a_failure_with_the_client_error() {
        let mut o = answered(200, &[], "");
        o.status = None;
        o.error = Some("connect to 10.96.0.10:80: Connection refused".into());
        assert_eq!(
            check_response(&Expect::default(), &o, false),
            ["status: expected 200, got no response: connect to 10.96.0.10:80: Connection refused"]
        );
    }

    #[test]
    fn grpc_ok_counts_as_200_and_other_codes_fail() {
        let mut o = from_pod("echo-v1-0");
        o.grpc_status = Some(0);
        assert!(check_response(&Expect::default(), &o, true).is_empty());
        o.grpc_status = Some(12);
        o.grpc_message = Some("unknown method".into());
        assert_eq!(
            check_response(&Expect::default(), &o, true),
            ["status: expected 200, got gRPC status 12 (unknown method)"]
        );
        o.grpc_status = None;
        o.status = Some(404);
        assert_eq!(
            check_response(&Expect::default(), &o, true),
            ["status: expected 200, got HTTP 404 without grpc-status"]
        );
    }

    #[test]
    fn backend_prefix() {
        let e = expect(serde_json::json!({"backendPodPrefix": "echo-v2"}));
        assert!(check_response(&e, &from_pod("echo-v2-0"), false).is_empty());
        assert_eq!(
            check_response(&e, &from_pod("echo-v1-0"), false),
            ["backend: expected a pod echo-v2*, got echo-v1-0"]
        );
        assert_eq!(
            check_response(&e, &answered(200, &[], "not an echo body"), false),
            ["backend: expected a pod echo-v2*, got no Hostname= in the response body"]
        );
        // An empty prefix is any pod.
        let any = expect(serde_json::json!({"backendPodPrefix": ""}));
        assert!(check_response(&any, &answered(200, &[], ""), false).is_empty());
    }

    #[test]
    fn backend_headers_join_values_and_ignore_name_case() {
        let e = expect(serde_json::json!({
            "backendSeesHeaders": {"X-Header-Add": "some-other-value,add-appends-values"},
            "backendSeesHeadersAbsent": ["X-Header-Remove"],
        }));
        let good = from_pod_with(
            "RequestHeader=x-header-add:some-other-value\nRequestHeader=X-Header-Add:add-appends-values\n",
        );
        assert!(check_response(&e, &good, false).is_empty());
        // In-place comma join passes too.
        let joined =
            from_pod_with("RequestHeader=X-Header-Add:some-other-value,add-appends-values\n");
        assert!(check_response(&e, &joined, false).is_empty());
        let bad = from_pod_with(
            "RequestHeader=X-Header-Add:some-other-value\nRequestHeader=X-Header-Remove:val\n",
        );
        assert_eq!(
            check_response(&e, &bad, false),
            [
                "backend header X-Header-Add: expected \"some-other-value,add-appends-values\", got \"some-other-value\"",
                "backend header X-Header-Remove: expected absent, got \"val\"",
            ]
        );
        let missing = from_pod_with("");
        assert_eq!(
            check_response(&e, &missing, false),
            [
                "backend header X-Header-Add: expected \"some-other-value,add-appends-values\", got none"
            ]
        );
    }

    fn from_pod_with(lines: &str) -> Outcome {
        answered(200, &[], &format!("Hostname=echo-v1-0\nURL=/\n{lines}"))
    }

    #[test]
    fn response_headers() {
        let e = expect(serde_json::json!({"responseHeaders": {"X-Header-Set": "set"}}));
        assert!(
            check_response(&e, &answered(200, &[("x-header-set", "set")], ""), false).is_empty()
        );
        assert_eq!(
            check_response(&e, &answered(200, &[], ""), false),
            ["response header X-Header-Set: expected \"set\", got none"]
        );
        assert_eq!(
            check_response(&e, &answered(200, &[("X-Header-Set", "v1")], ""), false),
            ["response header X-Header-Set: expected \"set\", got \"v1\""]
        );
        let absent = expect(serde_json::json!({"responseHeadersAbsent": ["X-Header-Set"]}));
        assert!(check_response(&absent, &answered(200, &[], ""), false).is_empty());
        assert_eq!(
            check_response(
                &absent,
                &answered(200, &[("X-Header-Set", "set")], ""),
                false
            ),
            ["response header X-Header-Set: expected absent, got \"set\""]
        );
    }

    #[test]
    fn redirect_location_is_checked() {
        let e = expect(serde_json::json!({
            "statusCodes": [302],
            "location_NOT_CHECKED_UPSTREAM": "http://example.org/hostname-redirect",
        }));
        let right = answered(
            302,
            &[("Location", "http://example.org/hostname-redirect")],
            "",
        );
        assert!(check_response(&e, &right, false).is_empty());
        let wrong = answered(302, &[("Location", "http://echo/hostname-redirect")], "");
        assert_eq!(
            check_response(&e, &wrong, false),
            [
                "Location: expected \"http://example.org/hostname-redirect\", got \"http://echo/hostname-redirect\""
            ]
        );
        assert_eq!(
            check_response(&e, &answered(302, &[], ""), false),
            ["Location: expected \"http://example.org/hostname-redirect\", got none"]
        );
    }

    #[test]
    fn rewritten_path_is_checked_without_the_query() {
        let e = expect(serde_json::json!({"backendSeesPath_NOT_CHECKED_UPSTREAM": "/one/two"}));
        let right = answered(200, &[], "Hostname=echo-v1-0\nURL=/one/two?x=1\n");
        assert!(check_response(&e, &right, false).is_empty());
        let wrong = answered(200, &[], "Hostname=echo-v1-0\nURL=/prefix/one/two\n");
        assert_eq!(
            check_response(&e, &wrong, false),
            ["backend path: expected \"/one/two\", got \"/prefix/one/two\""]
        );
        assert_eq!(
            check_response(&e, &answered(200, &[], ""), false),
            ["backend path: expected \"/one/two\", got no URL= in the response body"]
        );
    }

    #[test]
    fn every_mismatch_is_reported() {
        let e = expect(serde_json::json!({
            "backendPodPrefix": "echo-v2",
            "responseHeaders": {"X-Header-Set": "set"},
        }));
        assert_eq!(check_response(&e, &from_pod("echo-v1-0"), false).len(), 2);
    }

    #[test]
    fn unknown_expectations_are_refused() {
        let e = serde_json::from_value::<Expect>(serde_json::json!({"backendSeesQuery": "x"}));
        assert!(e.unwrap_err().to_string().contains("backendSeesQuery"));
    }

    #[test]
    fn backends_are_matched_by_the_longest_name_prefix() {
        let names = ["echo", "echo-v1", "echo-v2"];
        assert_eq!(backend_of("echo-v1-0", names), Some("echo-v1"));
        assert_eq!(backend_of("echo-v2", names), Some("echo-v2"));
        assert_eq!(backend_of("echo-3", names), Some("echo"));
        assert_eq!(backend_of("echo-v10-0", ["echo-v1"]), None);
        assert_eq!(backend_of("other-0", names), None);
    }

    fn batch(v1: usize, v2: usize) -> Vec<Outcome> {
        (0..v1)
            .map(|_| from_pod("echo-v1-0"))
            .chain((0..v2).map(|_| from_pod("echo-v2-0")))
            .collect()
    }

    fn weights(v1: f64, v2: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("echo-v1".to_owned(), v1), ("echo-v2".to_owned(), v2)])
    }

    #[test]
    fn distribution_within_tolerance_passes() {
        assert!(check_distribution(&weights(0.7, 0.3), 0.05, &batch(350, 150), false).is_empty());
        assert!(check_distribution(&weights(0.7, 0.3), 0.05, &batch(370, 130), false).is_empty());
    }

    #[test]
    fn distribution_outside_tolerance_fails_per_backend() {
        assert_eq!(
            check_distribution(&weights(0.7, 0.3), 0.05, &batch(250, 250), false),
            [
                "echo-v1: expected 70% ±5%, got 50.0% (250 of 500)",
                "echo-v2: expected 30% ±5%, got 50.0% (250 of 500)",
            ]
        );
    }

    #[test]
    fn distribution_fails_on_errors_strangers_and_zero_weights() {
        let mut outcomes = batch(7, 3);
        outcomes.push(answered(503, &[], ""));
        outcomes.push(from_pod("echo-v3-0"));
        let misses = check_distribution(&weights(0.7, 0.3), 0.05, &outcomes, false);
        assert_eq!(
            misses[0],
            "1 of 12 requests did not succeed (first: status 503)"
        );
        assert_eq!(
            misses[1],
            "answered by pods outside the weighted backends: echo-v3-0 (1)"
        );
        let mut w = weights(1.0, 0.0);
        assert_eq!(
            check_distribution(&w, 0.05, &batch(99, 1), false),
            ["echo-v2: expected 0% ±5%, got 1.0% (1 of 100)"],
            "a backend of weight 0 gets nothing"
        );
        w.insert("echo-v2".into(), 0.3);
        assert_eq!(
            check_distribution(&w, 0.05, &[], false),
            ["no request was sent"]
        );
    }

    #[test]
    fn urls_follow_upstream_host_rules() {
        let req = |json: Value| serde_json::from_value::<RequestSpec>(json).unwrap();
        let none = |_: &str| None;
        assert_eq!(
            req(serde_json::json!({"protocol": "http", "host": "echo", "path": ""}))
                .url(none)
                .unwrap(),
            "http://echo"
        );
        assert_eq!(
            req(serde_json::json!({"protocol": "http", "host": "echo:80", "path": "/?a=b"}))
                .url(none)
                .unwrap(),
            "http://echo/?a=b"
        );
        assert_eq!(
            req(serde_json::json!({"protocol": "http", "path": "/x"}))
                .url(none)
                .unwrap(),
            "http://echo/x"
        );
        assert_eq!(
            req(serde_json::json!({"protocol": "grpc", "host": "echo:7070", "path": ""}))
                .url(none)
                .unwrap(),
            "grpc://echo:7070"
        );
        let ip = |name: &str| (name == "echo-v2").then_some(Ipv4Addr::new(10, 244, 2, 3));
        let spec = req(serde_json::json!({"protocol": "http", "host": "<echo-v2 podIP>:8080"}));
        assert_eq!(spec.url(ip).unwrap(), "http://10.244.2.3:8080");
        let spec = req(serde_json::json!({"protocol": "http", "host": "<echo-v9 podIP>:8080"}));
        assert!(spec.url(ip).unwrap_err().contains("no pod of echo-v9"));
    }

    #[test]
    fn client_args_carry_method_headers_and_count() {
        let spec: RequestSpec = serde_json::from_value(serde_json::json!({
            "protocol": "http", "host": "echo", "path": "/", "method": "POST",
            "headers": {"Host": "echo-v1", "Version": "two"},
        }))
        .unwrap();
        assert_eq!(
            spec.client_args("http://echo/", 3),
            [
                "client",
                "http://echo/",
                "--json",
                "--count",
                "3",
                "-X",
                "POST",
                "-H",
                "Host: echo-v1",
                "-H",
                "Version: two"
            ]
        );
        let grpc: RequestSpec =
            serde_json::from_value(serde_json::json!({"protocol": "grpc", "host": "echo:7070"}))
                .unwrap();
        assert_eq!(
            grpc.client_args("grpc://echo:7070", 1),
            ["client", "grpc://echo:7070", "--json", "--count", "1"]
        );
    }

    #[test]
    fn the_suite_in_the_repository_parses() {
        let dir = default_dir().unwrap();
        let suite = Suite::load(&dir).unwrap();
        assert!(suite.tests.len() >= 20, "{}", suite.tests.len());
        for t in &suite.tests {
            assert!(
                dir.join(&t.case_file).is_file(),
                "{}",
                t.case_file.display()
            );
            for c in &t.cases {
                assert!(
                    c.client.is_some() || t.client.is_some(),
                    "{} / {}: no client",
                    t.short_name,
                    c.name
                );
            }
        }
        assert!(suite.select(&["MeshBasic".into()]).unwrap().len() == 1);
        let err = suite.select(&["Nope".into()]).unwrap_err().to_string();
        assert!(
            err.contains("\"Nope\"") && err.contains("MeshBasic"),
            "{err}"
        );
    }

    #[test]
    fn namespaces_are_labelled_and_objects_listed() {
        let text = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    x: y\n\
                    ---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  namespace: a\n\
                    spec:\n  template:\n    spec:\n      containers:\n      - name: c\n        ports:\n        - containerPort: 8080\n        - containerPort: 7070\n";
        let labels = BTreeMap::from([("hawser.dev/mesh".to_owned(), "enabled".to_owned())]);
        let out = label_namespaces(text, &labels).unwrap();
        let objects = objects_of(&out).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].ports, [8080, 7070]);
        assert_eq!(
            (objects[1].kind.as_str(), objects[1].namespace.as_str()),
            ("Deployment", "a")
        );
        let ns: Value = serde_yaml_ng::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(ns["metadata"]["labels"]["hawser.dev/mesh"], "enabled");
        assert_eq!(ns["metadata"]["labels"]["x"], "y", "existing labels stay");
        assert!(objects_of("# only a comment\n").unwrap().is_empty());
    }

    /// Runs `until_pass` over scripted attempt results (`true` = pass).
    fn retried(
        script: &[bool],
        needed: u32,
        max: Option<u32>,
    ) -> (Result<Option<String>, String>, u32) {
        let retry = Retry {
            deadline: Instant::now() + Duration::from_secs(60),
            poll: Duration::ZERO,
            max_attempts: max,
            needed,
        };
        let mut attempts = 0;
        let mut next = script.iter().enumerate();
        let result = until_pass(retry, &mut attempts, || match next.next() {
            Some((_, true)) => Vec::new(),
            Some((i, false)) => vec![format!("miss {}", i + 1)],
            None => vec!["script ended".to_owned()],
        });
        (result, attempts)
    }

    #[test]
    fn a_case_converges_after_three_passes_in_a_row() {
        // Failures before the first pass are convergence, not flakiness.
        assert_eq!(
            retried(&[false, false, true, true, true], 3, None),
            (Ok(None), 5)
        );
        // A failure after a pass restarts the count and is noted.
        let (result, attempts) = retried(&[true, false, true, true, true], 3, None);
        assert_eq!(attempts, 5);
        assert_eq!(
            result,
            Ok(Some(
                "failed 1 of 5 attempts, also after passing (last: miss 2)".into()
            ))
        );
    }

    #[test]
    fn a_case_that_never_converges_fails_with_its_last_mismatch() {
        let (result, attempts) = retried(&[true, true, false, true, false], 3, Some(5));
        assert_eq!(attempts, 5);
        assert_eq!(result, Err("miss 5 (passed 3 of 5 attempts)".into()));
        assert_eq!(retried(&[false; 4], 1, Some(4)), (Err("miss 4".into()), 4));
        // A weight case passes on its first good batch.
        assert_eq!(retried(&[false, true], 1, Some(10)), (Ok(None), 2));
        // The deadline ends it, after at least one attempt.
        let retry = Retry {
            deadline: Instant::now(),
            poll: Duration::ZERO,
            max_attempts: None,
            needed: 3,
        };
        let mut attempts = 0;
        let result = until_pass(retry, &mut attempts, Vec::new);
        assert_eq!(attempts, 1);
        assert_eq!(
            result,
            Err("passed 1 times, never 3 in a row before the deadline".into())
        );
    }

    #[test]
    fn replicas_are_recognised_by_name() {
        assert!(is_replica_of("echo-v1-0", "echo-v1"));
        assert!(is_replica_of("echo-v1-12", "echo-v1"));
        assert!(!is_replica_of("echo-v1-0", "echo"));
        assert!(!is_replica_of("echo-v1", "echo-v1"));
    }

    #[test]
    fn table_lists_every_case_and_ends_with_the_totals() {
        let mut report = SuiteReport::default();
        report.push(CaseResult {
            test: "MeshBasic".into(),
            case: "GET http://echo".into(),
            passed: true,
            reason: None,
            flaky: None,
            attempts: 3,
            elapsed_ms: 300,
        });
        report.push(CaseResult {
            test: "MeshHTTPRoute303Redirect".into(),
            case: "/redirect".into(),
            passed: false,
            reason: Some("status: expected 303, got 200".into()),
            flaky: None,
            attempts: 300,
            elapsed_ms: 30_000,
        });
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("TEST "), "{table}");
        assert!(
            lines[1].contains("MeshBasic") && lines[1].ends_with("pass"),
            "{table}"
        );
        assert!(
            lines[2].contains("FAIL") && lines[2].ends_with("status: expected 303, got 200"),
            "{table}"
        );
        assert_eq!(lines[3], "1 passed, 1 failed");
    }
}
