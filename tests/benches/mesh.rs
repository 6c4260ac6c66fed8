//! The mesh data-plane benchmark, in the lab: a client pod on node-1 talks to
//! a Service whose only endpoint is a pod on node-2, three ways:
//!
//! - **direct**: both pods in a namespace that is not enrolled; the lab's
//!   kube-proxy stand-in DNATs the ClusterIP, no proxy is on the path;
//! - **mesh L4**: both pods enrolled, a Service port named `tcp*`: the node
//!   proxies relay the bytes over HBONE (mTLS, HTTP/2 CONNECT) untouched;
//! - **mesh L7**: both pods enrolled, a Service port named `http`: the
//!   node-1 proxy parses and routes every request, then HBONE as above;
//!   node-2 relays the stream (no policy of the server looks at requests);
//! - **mesh L7 + L7 authz**: the same on another `http` port that an
//!   AuthorizationPolicy with paths covers (a Deny of `/forbidden`, which
//!   the load never asks for): node-2 also parses and authorizes every
//!   request.
//!
//! For each path (where it means something) it measures HTTP req/s with 1
//! and 16 connections (wrk, with its p50/p99; for the L7/L4 CPU cost at 16
//! connections also three rounds of 4 s, the mesh routes in another order
//! each round, pooled), latency at fixed rates (1000
//! req/s on 8 connections, and 15 000 req/s on 16, where L4 and L7 are
//! compared at the same offered load; an open-loop generator in this file
//! that measures from each request's scheduled send time, so a stall is not
//! hidden by coordinated omission; four rounds of 4 s, the routes in another
//! order each round, pooled, with the L7/L4 cost also given per round),
//! one-stream throughput (iperf3), new connections per second, and the CPU
//! seconds and RSS of both node proxies over each run. It prints markdown
//! tables with ratios against direct and the L7/L4 CPU cost per request.
//!
//! Needs root, wrk, iperf3, and Hawser's release binaries:
//!
//! ```text
//! export CARGO_TARGET_DIR=/var/tmp/hawser-target
//! cargo build --release -p hawser-node-proxy -p hawser-control-plane -p hawser-cni -p hawser-tests --bins
//! cargo bench -p hawser-tests --bench mesh
//! ```
//!
//! `HAWSER_BENCH_ONLY=wrk,fixed,iperf,connect` runs only the named sections
//! (all by default). `HAWSER_BENCH_HOLD=<seconds>` keeps the lab up that
//! long after the warm-up, printing the proxies' pids, the client netns and
//! the addresses, so a profiler can be attached by hand.
//!
//! `HAWSER_BENCH_QUICKACK=1` turns delayed ACKs off in every pod (a
//! diagnostic: latency tails near 40 ms that vanish with it come from Nagle
//! meeting delayed ACKs on a socket without `TCP_NODELAY`).
//!
//! Every load generator runs inside the client pod's network namespace and
//! all traffic stays inside the lab's namespaces. The lab is removed when
//! the run ends, also on failure. The whole run takes about 5
//! minutes.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hawser_tests::lab::{Lab, LabConfig, LabGuard, sys};

/// The whole benchmark must finish within this (lab setup included).
const BUDGET: Duration = Duration::from_secs(420);
/// How long a closed-loop wrk run lasts.
const WRK_DURATION: Duration = Duration::from_secs(10);
/// The open-loop runs, (req/s, connections): a light load, and a heavy one
/// that every mesh path still keeps up with, so L4 and L7 are compared at
/// the same offered load (closed-loop wrk compares them at different ones).
const FIXED_RUNS: [(u32, u32); 2] = [(1000, 8), (15_000, 16)];
/// The closed-loop CPU comparison at 16 connections: rounds of wrk runs,
/// each round the mesh routes once, in another order (so each runs once in
/// each place), pooled. One 10 s run per route (the table of closed-loop
/// runs) swings the L7/L4 cost by several percent between bench runs.
const WRK_ROUNDS: usize = MESH_ROUTES.len();
const WRK_ROUND_DURATION: Duration = Duration::from_secs(4);
/// The routes through the mesh.
const MESH_ROUTES: [Route; 3] = [Route::L4, Route::L7, Route::L7Authz];
/// How long each route runs at each fixed rate, per round.
const FIXED_RATE_DURATION: Duration = Duration::from_secs(4);
/// Rounds of the fixed-rate runs: one per route. Each round runs every
/// route once, the order rotated by one each round, so each route runs once
/// in each place: a steady drift of the machine (its other load, its clock)
/// falls on every route alike instead of on whichever ran last. The L7/L4 cost is given pooled over the rounds and
/// per round, so its spread shows.
const FIXED_ROUNDS: usize = Route::ALL.len();
/// How long one iperf3 stream runs.
const IPERF_SECONDS: u32 = 10;
/// The new-connections run: duration and concurrent connectors.
const CONNECT_DURATION: Duration = Duration::from_secs(5);
const CONNECT_THREADS: u32 = 4;
/// Per-socket limit for the generators in this file.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The namespaces the two halves of the comparison live in.
const DIRECT_NS: &str = "bench-direct";
const MESH_NS: &str = "bench-mesh";

/// Service ports (all on Service `server`, one set per namespace).
const HTTP_PORT: u16 = 80; // named `http`: L7 in the mesh
const HTTP_AUTHZ_PORT: u16 = 81; // named `http-authz`: L7, and a policy with paths on node-2
const HTTP_L4_PORT: u16 = 8080; // named `tcp`: the same HTTP server, L4 in the mesh
const ECHO_PORT: u16 = 9000; // `tcp-echo`: raw TCP echo
const IPERF_PORT: u16 = 5201; // `tcp-iperf`

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    preflight()?;
    let dir = tempfile::tempdir().context("create a state directory")?;
    let name = format!("hb{}", std::process::id() % 10000);
    let config = LabConfig::new(&name, 2, dir.path().join("lab"));
    check_binaries(&config.bin_dir)?;
    eprintln!(
        "bench: bringing up lab {name} (binaries from {})",
        config.bin_dir.display()
    );
    let lab = Lab::up(config).context("bring up the lab (the benchmark needs root)")?;
    // Removes the lab however the run ends (error or panic).
    let mut guard = LabGuard(Some(lab));
    let result = run(guard.lab(), dir.path(), started);
    eprintln!("bench: tearing down the lab");
    drop(guard);
    let tables = result?;
    println!("{tables}");
    eprintln!("bench: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Fails loudly when something the benchmark needs is missing.
fn preflight() -> anyhow::Result<()> {
    for (tool, hint) in [
        ("wrk", "apt-get install -y wrk"),
        ("iperf3", "apt-get install -y iperf3"),
        ("ip", "apt-get install -y iproute2"),
        ("timeout", "coreutils"),
        ("getconf", "libc-bin"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ensure!(found, "the benchmark needs `{tool}` on PATH ({hint})");
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark builds a lab of network namespaces and needs root"
    );
    Ok(())
}

fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        "hawser-node-proxy",
        "hawser-control-plane",
        "hawser-cni",
        "hawser-echo",
    ]
    .into_iter()
    .filter(|b| !bin_dir.join(b).is_file())
    .collect();
    ensure!(
        missing.is_empty(),
        "missing {missing:?} in {}; build them first: cargo build --release -p hawser-node-proxy \
         -p hawser-control-plane -p hawser-cni -p hawser-tests --bins",
        bin_dir.display()
    );
    Ok(())
}

/// Which way the traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    L4,
    L7,
    L7Authz,
}

impl Route {
    const ALL: [Route; 4] = [Route::Direct, Route::L4, Route::L7, Route::L7Authz];

    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::L4 => "mesh L4",
            Route::L7 => "mesh L7",
            Route::L7Authz => "mesh L7 + L7 authz",
        }
    }

    /// The Service port HTTP load goes to on this route.
    fn http_port(self) -> u16 {
        match self {
            Route::Direct | Route::L7 => HTTP_PORT,
            Route::L7Authz => HTTP_AUTHZ_PORT,
            Route::L4 => HTTP_L4_PORT,
        }
    }
}

/// One namespace's worth of pods and Service: the server on node-2 runs the
/// echo backend (HTTP on 8080, TCP echo on 9000, its pid written to
/// `pid_dir`) and an iperf3 server; the client on node-1 only sleeps (the
/// load comes from this process and from wrk/iperf3 in its netns).
fn manifests(bin_dir: &Path, pid_dir: &Path) -> String {
    let echo = bin_dir.join("hawser-echo");
    let mut yaml = String::new();
    for (ns, enrolled) in [(DIRECT_NS, false), (MESH_NS, true)] {
        let labels = if enrolled {
            "\n  labels: {hawser.dev/mesh: enabled}"
        } else {
            ""
        };
        let pid_file = pid_dir.join(format!("{ns}-echo.pid"));
        let server = format!(
            "RUST_LOG=warn {} serve --port 8080 --port 8081 --port 8082 --tcp-port 9000 & echo $! > {}; exec iperf3 -s -p {IPERF_PORT}",
            echo.display(),
            pid_file.display()
        );
        let _ = write!(
            yaml,
            r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}{labels}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: {ns}
  labels: {{app: server}}
  annotations: {{lab.hawser.dev/command: "{server}"}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers: [{{name: main, image: busybox}}]
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: {ns}
spec:
  selector: {{app: server}}
  ports:
  - {{name: http, port: {HTTP_PORT}, targetPort: 8080}}
  - {{name: tcp, port: {HTTP_L4_PORT}, targetPort: 8081}}
  - {{name: http-authz, port: {HTTP_AUTHZ_PORT}, targetPort: 8082}}
  - {{name: tcp-echo, port: {ECHO_PORT}, targetPort: 9000}}
  - {{name: tcp-iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {ns}
  annotations: {{lab.hawser.dev/command: "sleep infinity"}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{{name: main, image: busybox}}]
---
"#
        );
    }
    // The L7 + authz route: a policy with paths on the server's port 8082
    // only, so node-2 parses that port's requests and relays the others.
    let _ = write!(
        yaml,
        r#"apiVersion: policy.hawser.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-forbidden
  namespace: {MESH_NS}
spec:
  targetRefs:
    - {{group: "", kind: Service, name: server}}
  action: Deny
  rules:
    - to:
        ports: [8082]
        paths: ["/forbidden"]
---
"#
    );
    yaml
}

/// What the runs need to know about the lab.
struct Setup {
    /// node-1's and node-2's proxy pids.
    proxies: [u32; 2],
    /// The echo server's pid per namespace (direct, mesh).
    echo: [u32; 2],
    /// The client pod's netns per namespace (direct, mesh).
    client_netns: [String; 2],
    /// The Service ClusterIP per namespace (direct, mesh).
    vip: [Ipv4Addr; 2],
    started: Instant,
}

impl Setup {
    fn index(route: Route) -> usize {
        usize::from(route != Route::Direct)
    }

    fn netns(&self, route: Route) -> &str {
        &self.client_netns[Self::index(route)]
    }

    fn addr(&self, route: Route, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip[Self::index(route)], port)
    }

    fn echo_pid(&self, route: Route) -> u32 {
        self.echo[Self::index(route)]
    }

    /// Fails the benchmark (and so tears the lab down) once over budget.
    fn check_budget(&self, next: &str) -> anyhow::Result<()> {
        let spent = self.started.elapsed();
        ensure!(
            spent < BUDGET.saturating_sub(Duration::from_secs(20)),
            "out of time before {next}: {spent:.0?} of the {BUDGET:?} budget spent"
        );
        eprintln!("bench: [{:>5.1}s] {next}", spent.as_secs_f64());
        Ok(())
    }

    /// Runs `f` and returns its result with what both proxies and the
    /// route's echo server used meanwhile.
    fn measure<T>(
        &self,
        route: Route,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Usage)> {
        let echo = self.echo_pid(route);
        let before = [
            cpu_ns(self.proxies[0])?,
            cpu_ns(self.proxies[1])?,
            cpu_ns(echo)?,
        ];
        let out = f()?;
        let after = [
            cpu_ns(self.proxies[0])?,
            cpu_ns(self.proxies[1])?,
            cpu_ns(echo)?,
        ];
        let secs = |i: usize| ran_between(&before[i], &after[i]) as f64 / 1e9;
        let mem = [memory(self.proxies[0])?, memory(self.proxies[1])?];
        Ok((
            out,
            Usage {
                proxy_cpu: [secs(0), secs(1)],
                server_cpu: secs(2),
                rss_kib: [mem[0].0, mem[1].0],
                hwm_kib: [mem[0].1, mem[1].1],
            },
        ))
    }
}

/// What the node proxies (and the echo server) used during one run.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// CPU seconds (user + system) of node-1's and node-2's proxy.
    proxy_cpu: [f64; 2],
    /// CPU seconds of the route's echo server.
    server_cpu: f64,
    /// VmRSS at the end of the run, KiB.
    rss_kib: [u64; 2],
    /// VmHWM (peak RSS since the proxy started) at the end of the run, KiB.
    hwm_kib: [u64; 2],
}

impl Usage {
    /// Adds another run's CPU; memory is the later run's (RSS) and the
    /// larger peak.
    fn add(&mut self, later: &Usage) {
        for i in 0..2 {
            self.proxy_cpu[i] += later.proxy_cpu[i];
            self.rss_kib[i] = later.rss_kib[i];
            self.hwm_kib[i] = self.hwm_kib[i].max(later.hwm_kib[i]);
        }
        self.server_cpu += later.server_cpu;
    }

    fn proxy_total(&self) -> f64 {
        self.proxy_cpu[0] + self.proxy_cpu[1]
    }

    /// `node-1 / node-2 / sum` CPU seconds per 1000 `units`.
    fn per_thousand(&self, units: u64) -> [f64; 3] {
        let per = |cpu: f64| {
            if units == 0 {
                f64::NAN
            } else {
                cpu * 1000.0 / units as f64
            }
        };
        [
            per(self.proxy_cpu[0]),
            per(self.proxy_cpu[1]),
            per(self.proxy_total()),
        ]
    }
}

/// How long each of `pid`'s threads has run on a CPU, in ns, by thread id:
/// each thread's `/proc/<pid>/task/<tid>/schedstat` (the scheduler's own
/// clock; `/proc/<pid>/stat` counts in 10 ms ticks, too coarse for a few
/// seconds at 1000 req/s).
fn cpu_ns(pid: u32) -> anyhow::Result<std::collections::HashMap<u32, u64>> {
    let dir = format!("/proc/{pid}/task");
    let tasks =
        std::fs::read_dir(&dir).with_context(|| format!("list {dir} (did the process die?)"))?;
    let mut threads = std::collections::HashMap::new();
    for task in tasks {
        let task = task.with_context(|| format!("list {dir}"))?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path().join("schedstat");
        let stat = match std::fs::read_to_string(&path) {
            Ok(stat) => stat,
            // The thread ended between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {}: {stat:?}", path.display()))?;
        threads.insert(tid, ns);
    }
    ensure!(
        !threads.is_empty(),
        "no thread of {pid} has a readable schedstat in {dir} (a kernel without CONFIG_SCHED_INFO?)"
    );
    Ok(threads)
}

/// The CPU time `pid`'s threads used between two [`cpu_ns`] readings: each
/// thread's own difference (a thread started meanwhile counts whole; one
/// that ended meanwhile is missed, not subtracted: the proxies' and the
/// echo servers' threads live as long as they do).
fn ran_between(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn setup(lab: &mut Lab, dir: &Path, started: Instant) -> anyhow::Result<Setup> {
    let pid_dir = dir.join("pids");
    std::fs::create_dir_all(&pid_dir).context("create the pid directory")?;
    let manifest = dir.join("bench.yaml");
    std::fs::write(&manifest, manifests(&lab.config().bin_dir, &pid_dir))
        .context("write the manifests")?;
    let report = lab.apply(&manifest).context("apply the manifests")?;
    ensure!(
        report.errors.is_empty(),
        "manifests refused: {:?}",
        report.errors
    );

    let proxy = |node: &str| -> anyhow::Result<u32> {
        let role = Lab::node_proxy_role(node);
        let pid = lab
            .state()
            .processes
            .iter()
            .find(|p| p.role == role)
            .map(|p| p.pid)
            .with_context(|| format!("no process with role {role:?} in the lab state"))?;
        // The lab starts it through `ip netns exec`, which execs in place.
        let name = comm(pid);
        ensure!(
            name.starts_with("hawser-node"),
            "pid {pid} of {role:?} is {name:?}, not the node proxy: its CPU would not be measured"
        );
        Ok(pid)
    };
    let proxies = [proxy("node-1")?, proxy("node-2")?];

    let vip = |ns: &str| -> anyhow::Result<Ipv4Addr> {
        lab.state()
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == "server")
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("no ClusterIP for {ns}/server"))
    };
    let netns = |ns: &str| -> anyhow::Result<String> {
        Ok(lab
            .pod(ns, "client")
            .with_context(|| format!("no pod {ns}/client"))?
            .netns
            .clone())
    };
    let echo_pid = |ns: &str| -> anyhow::Result<u32> {
        let file = pid_dir.join(format!("{ns}-echo.pid"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                return Ok(pid);
            }
            ensure!(
                Instant::now() < deadline,
                "the echo server of {ns}/server did not start (no {})",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let client_netns = [netns(DIRECT_NS)?, netns(MESH_NS)?];
    let quickack = std::env::var_os(QUICKACK_ENV).is_some_and(|v| v == "1");
    for ns in [DIRECT_NS, MESH_NS] {
        for pod in ["client", "server"] {
            let netns = &lab
                .pod(ns, pod)
                .with_context(|| format!("no pod {ns}/{pod}"))?
                .netns;
            // Lab-only, per-netns: room for the new-connections run's TIME_WAITs.
            sys::netns_sysctl(netns, "net.ipv4.ip_local_port_range", "1024 65000")?;
            sys::netns_sysctl(netns, "net.ipv4.tcp_tw_reuse", "1")?;
            if quickack {
                quickack_routes(netns)?;
            }
        }
    }
    Ok(Setup {
        proxies,
        echo: [echo_pid(DIRECT_NS)?, echo_pid(MESH_NS)?],
        client_netns,
        vip: [vip(DIRECT_NS)?, vip(MESH_NS)?],
        started,
    })
}

/// Set to `1`, the pods' routes get `quickack 1` (no delayed ACKs): a
/// diagnostic for latency tails caused by Nagle meeting delayed ACKs on a
/// socket without `TCP_NODELAY`. Off by default; the tables say when it is on.
const QUICKACK_ENV: &str = "HAWSER_BENCH_QUICKACK";

/// Turns delayed ACKs off on every route of `netns` (see [`QUICKACK_ENV`]).
fn quickack_routes(netns: &str) -> anyhow::Result<()> {
    for route in sys::ip(["-n", netns, "route", "show"])?.lines() {
        let mut args = vec!["-n", netns, "route", "change"];
        args.extend(route.split_whitespace());
        args.extend(["quickack", "1"]);
        sys::ip(args)?;
    }
    Ok(())
}

/// Waits until every route answers: HTTP on its port, and the TCP echo.
fn wait_ready(setup: &Setup) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for route in Route::ALL {
        let addr = setup.addr(route, route.http_port());
        let echo = setup.addr(route, ECHO_PORT);
        let last = loop {
            let attempt = sys::in_netns(setup.netns(route), move || -> std::io::Result<()> {
                let mut conn = HttpConn::connect(addr)?;
                let status = conn.get()?;
                if status != 200 {
                    return Err(std::io::Error::other(format!("HTTP {status}")));
                }
                if route == Route::L7Authz {
                    let status = conn.request(GET_FORBIDDEN)?;
                    if status != 403 {
                        return Err(std::io::Error::other(format!(
                            "/forbidden answered {status}, not the policy's 403"
                        )));
                    }
                }
                tcp_exchange(echo)
            })?;
            match attempt {
                Ok(()) => break None,
                Err(e) if Instant::now() > deadline => break Some(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        if let Some(e) = last {
            bail!(
                "{} is not answering after 20 s (HTTP {addr}, TCP {echo}): {e}",
                route.label()
            );
        }
    }
    Ok(())
}

/// Runs `program args…` in `netns` under `timeout`, returning stdout; fails
/// with its output when it exits non-zero.
fn netns_tool(
    netns: &str,
    limit: Duration,
    program: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "timeout", "-k", "5"])
        .arg(format!("{}", limit.as_secs()))
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// What wrk reported.
#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    errors: u64,
}

fn wrk(
    netns: &str,
    addr: SocketAddrV4,
    threads: u32,
    conns: u32,
    d: Duration,
) -> anyhow::Result<WrkResult> {
    let args = vec![
        format!("-t{threads}"),
        format!("-c{conns}"),
        format!("-d{}s", d.as_secs()),
        "--latency".into(),
        format!("http://{addr}/"),
    ];
    let out = netns_tool(netns, d + Duration::from_secs(20), "wrk", &args)?;
    parse_wrk(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let value_after = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = value_after("Requests/sec:")
        .context("no Requests/sec")?
        .parse()?;
    let requests: u64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .context("no request count")?
        .parse()?;
    let p50_ms = parse_wrk_duration(value_after("50%").context("no p50")?)?;
    let p99_ms = parse_wrk_duration(value_after("99%").context("no p99")?)?;
    let mut errors = 0;
    if let Some(socket) = value_after("Socket errors:") {
        // "connect 0, read 0, write 0, timeout 0"
        for part in socket.split(',') {
            errors += part
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    if let Some(non2xx) = value_after("Non-2xx or 3xx responses:") {
        errors += non2xx.parse::<u64>()?;
    }
    Ok(WrkResult {
        rps,
        requests,
        p50_ms,
        p99_ms,
        errors,
    })
}

/// `104.00us`, `1.23ms`, `2.00s` → milliseconds.
fn parse_wrk_duration(s: &str) -> anyhow::Result<f64> {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("wrk duration {s:?}")
    };
    Ok(n.parse::<f64>()? * scale)
}

/// What one iperf3 stream achieved.
#[derive(Debug, Clone, Copy)]
struct IperfResult {
    bits_per_second: f64,
    bytes: f64,
    retransmits: u64,
}

fn iperf3(netns: &str, addr: SocketAddrV4) -> anyhow::Result<IperfResult> {
    let args = vec![
        "-c".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-t".into(),
        IPERF_SECONDS.to_string(),
        "-J".into(),
    ];
    let out = netns_tool(
        netns,
        Duration::from_secs(u64::from(IPERF_SECONDS) + 20),
        "iperf3",
        &args,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let received = &v["end"]["sum_received"];
    Ok(IperfResult {
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .context("iperf3: no end.sum_received.bits_per_second")?,
        bytes: received["bytes"].as_f64().unwrap_or(0.0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// A kept-alive HTTP/1.1 connection with a tiny client: GET /, read the
/// Content-Length body.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: server\r\nUser-Agent: hawser-bench\r\n\r\n";
/// The path the "L7 + L7 authz" route's policy denies (the load never asks
/// for it): proves node-2 authorizes that route's requests.
const GET_FORBIDDEN: &[u8] =
    b"GET /forbidden HTTP/1.1\r\nHost: server\r\nUser-Agent: hawser-bench\r\n\r\n";
const GET_CLOSE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: server\r\nUser-Agent: hawser-bench\r\nConnection: close\r\n\r\n";

impl HttpConn {
    fn connect(addr: SocketAddrV4) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one GET and reads the whole response; returns its status.
    fn get(&mut self) -> std::io::Result<u16> {
        self.request(GET)
    }

    /// Sends `req` (a whole request without a body); the answer's status.
    fn request(&mut self, req: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(req)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let mut head: Option<(u16, usize)> = None;
        loop {
            if head.is_none() {
                head = parse_head(&self.buf)?;
            }
            if let Some((status, total)) = head
                && self.buf.len() >= total
            {
                return Ok(status);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `(status, head + body length)` once the head is complete. Only
/// Content-Length bodies (what the echo backend sends).
fn parse_head(buf: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| bad("response without Content-Length"))?;
    Ok(Some((status, end + 4 + length)))
}

/// The open-loop run's result.
#[derive(Debug, Clone, Default)]
struct FixedRateResult {
    /// Latency of each answered request from its scheduled send time, µs.
    latencies_us: Vec<f64>,
    /// Requests that failed (I/O error or non-200).
    errors: u64,
    /// Mean delay from scheduled to actual send, µs: the generator's wake-up
    /// plus any wait behind the connection's previous (slow) answer.
    send_lateness_us: f64,
    /// Wall time from the first scheduled send to the last answer.
    elapsed: Duration,
}

impl FixedRateResult {
    /// Pools another run (at the same rate) into this one.
    fn add(&mut self, other: FixedRateResult) {
        let (n, m) = (
            self.latencies_us.len() as f64,
            other.latencies_us.len() as f64,
        );
        if n + m > 0.0 {
            self.send_lateness_us =
                (self.send_lateness_us * n + other.send_lateness_us * m) / (n + m);
        }
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us
            .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.iter().sum::<f64>() / self.latencies_us.len() as f64 / 1000.0
    }

    fn achieved_rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `p` in 0..=1 of sorted `v` (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `rate` GET/s for `duration` over `conns` kept-alive connections, opened
/// in `netns` before the clock starts. Connection `k` sends request `j` at
/// `t0 + (j·conns + k)/rate` (or as soon as its previous answer is in, if
/// later); latency is measured from that scheduled time, as wrk2 does, so a
/// slow answer also counts against the requests queued behind it.
fn fixed_rate(
    netns: &str,
    addr: SocketAddrV4,
    rate: u32,
    conns: u32,
    duration: Duration,
) -> anyhow::Result<FixedRateResult> {
    let t0 = Instant::now() + Duration::from_millis(300);
    let interval = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let workers: Vec<_> = (0..conns)
        .map(|k| {
            let netns = netns.to_owned();
            std::thread::spawn(move || {
                sys::in_netns(&netns, move || {
                    open_loop_connection(
                        addr,
                        t0 + Duration::from_secs_f64(f64::from(k) / f64::from(rate)),
                        interval,
                        t0 + duration,
                    )
                })
            })
        })
        .collect();
    let mut total = FixedRateResult::default();
    let mut lateness = 0.0;
    for w in workers {
        let part = w
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))???;
        lateness += part.send_lateness_us * part.latencies_us.len() as f64;
        total.latencies_us.extend(part.latencies_us);
        total.errors += part.errors;
        total.elapsed = total.elapsed.max(part.elapsed);
    }
    total
        .latencies_us
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    total.send_lateness_us = lateness / total.latencies_us.len().max(1) as f64;
    Ok(total)
}

/// One connection of [`fixed_rate`]: requests at `first + j·interval`
/// until `end`; reconnects after an error.
fn open_loop_connection(
    addr: SocketAddrV4,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> anyhow::Result<FixedRateResult> {
    // Sleeps wake within a few µs of the schedule instead of the default 50 µs slack.
    nix::sys::prctl::set_timerslack(1).context("set the timer slack")?;
    let t0 = first;
    let mut conn = Some(HttpConn::connect(addr).with_context(|| format!("connect to {addr}"))?);
    let mut out = FixedRateResult::default();
    let mut lateness = 0.0;
    let mut j = 0u32;
    loop {
        let scheduled = first + interval * j;
        if scheduled >= end {
            break;
        }
        j += 1;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let sent = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.get(),
            None => HttpConn::connect(addr).and_then(|mut c| {
                let r = c.get();
                conn = Some(c);
                r
            }),
        };
        match result {
            Ok(200) => {
                out.latencies_us
                    .push(scheduled.elapsed().as_secs_f64() * 1e6);
                lateness += sent.duration_since(scheduled).as_secs_f64() * 1e6;
            }
            Ok(_) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
    }
    out.elapsed = t0.elapsed();
    out.send_lateness_us = lateness / out.latencies_us.len().max(1) as f64;
    Ok(out)
}

/// What to do on each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// Write 4 bytes, read them back, close (the TCP echo port).
    Tcp,
    /// `GET /` with `Connection: close`, read to EOF.
    Http,
}

/// The new-connections run's result.
#[derive(Debug, Clone, Default)]
struct ConnectResult {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Time of each successful connect → exchange → close, µs, sorted.
    times_us: Vec<f64>,
    /// SYNs the client's netns sent again (each waits the 1 s initial RTO).
    syn_retransmits: u64,
    /// SYNs that met a TIME_WAIT socket of the same addresses and ports and
    /// were refused on their timestamp (PAWS), in the client's netns; `None`
    /// on a kernel without that counter (before 6.16).
    paws_time_wait: Option<u64>,
}

/// A PAWS count for the tables, `n/a` where the kernel has none.
fn paws(count: Option<u64>) -> String {
    count.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

/// The client netns's `TcpExt` counters a connection-rate run reads.
fn syn_counters(netns: &str) -> anyhow::Result<(u64, Option<u64>)> {
    sys::in_netns(netns, || {
        // This thread's netns (`/proc/net` would be the process's).
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no TcpExt lines in /proc/thread-self/net/netstat");
        };
        let find = |field: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == field)
                .map(|(_, value)| value.parse::<u64>())
                .ok_or_else(|| anyhow::anyhow!("no TcpExt {field}"))?
                .map_err(anyhow::Error::from)
        };
        Ok((find("TCPSynRetrans")?, find("PAWSTimewait").ok()))
    })?
}

impl ConnectResult {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.times_us, p) / 1000.0
    }
}

fn tcp_exchange(addr: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(b"ping")?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back)?;
    if &back != b"ping" {
        return Err(std::io::Error::other("echo answered other bytes"));
    }
    Ok(())
}

fn http_close_exchange(addr: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(GET_CLOSE)?;
    let mut response = Vec::with_capacity(1024);
    s.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200 response"));
    }
    Ok(())
}

/// `threads` loops in `netns` each doing connect → exchange → close for
/// `duration` (closed loop: as many as the path allows).
fn new_connections(
    netns: &str,
    addr: SocketAddrV4,
    exchange: Exchange,
    threads: u32,
    duration: Duration,
) -> anyhow::Result<ConnectResult> {
    let (retransmits_before, paws_before) = syn_counters(netns)?;
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let netns = netns.to_owned();
            std::thread::spawn(move || {
                sys::in_netns(&netns, move || {
                    let mut r = ConnectResult::default();
                    while Instant::now() < end {
                        let begun = Instant::now();
                        let done = match exchange {
                            Exchange::Tcp => tcp_exchange(addr),
                            Exchange::Http => http_close_exchange(addr),
                        };
                        match done {
                            Ok(()) => {
                                r.ok += 1;
                                r.times_us.push(begun.elapsed().as_secs_f64() * 1e6);
                            }
                            Err(_) => r.errors += 1,
                        }
                    }
                    r
                })
            })
        })
        .collect();
    let mut total = ConnectResult::default();
    for w in workers {
        let part = w
            .join()
            .map_err(|_| anyhow::anyhow!("a connect thread panicked"))??;
        total.ok += part.ok;
        total.errors += part.errors;
        total.times_us.extend(part.times_us);
    }
    total.elapsed = start.elapsed();
    let (retransmits, paws) = syn_counters(netns)?;
    total.syn_retransmits = retransmits.saturating_sub(retransmits_before);
    total.paws_time_wait = paws.zip(paws_before).map(|(a, b)| a.saturating_sub(b));
    total
        .times_us
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(total)
}

/// Everything measured, for the tables.
#[derive(Default)]
struct Results {
    wrk: Vec<(Route, u32, WrkResult, Usage)>,
    /// Each route's fixed-rate runs, pooled over the rounds.
    fixed: Vec<(Route, u32, u32, FixedRateResult, Usage)>,
    /// The fixed-rate runs one by one.
    fixed_rounds: Vec<Round>,
    /// The closed-loop CPU comparison's runs one by one.
    wrk_rounds: Vec<Round>,
    iperf: Vec<(Route, IperfResult, Usage)>,
    connect: Vec<(Route, Exchange, ConnectResult, Usage)>,
    /// `(run, usage)` in run order (a fixed-rate route once, after its last
    /// round), for the memory table.
    memory: Vec<(String, Usage)>,
}

/// One route's run in one round of a comparison.
#[derive(Debug)]
struct Round {
    route: Route,
    /// The fixed rate (0: closed loop).
    rate: u32,
    conns: u32,
    round: usize,
    answered: u64,
    usage: Usage,
}

/// `routes`, starting at the `round`-th (mod their number).
fn rotated<const N: usize>(mut routes: [Route; N], round: usize) -> [Route; N] {
    let n = routes.len();
    routes.rotate_left(round % n);
    routes
}

fn run(lab: &mut Lab, dir: &Path, started: Instant) -> anyhow::Result<String> {
    let mut setup = setup(lab, dir, started)?;
    setup.check_budget("waiting for every route to answer")?;
    wait_ready(&setup)?;
    let mut results = Results::default();
    let (_, baseline) = setup.measure(Route::Direct, || Ok(()))?;
    results.memory.push(("idle, after setup".into(), baseline));

    // Warm up every route (HBONE pools, certificates, page cache) unmeasured.
    for route in Route::ALL {
        setup.check_budget(&format!("warm-up {}", route.label()))?;
        wrk(
            setup.netns(route),
            setup.addr(route, route.http_port()),
            2,
            16,
            Duration::from_secs(1),
        )?;
    }

    if let Some(hold) = env_secs(HOLD_ENV)? {
        for route in Route::ALL {
            eprintln!(
                "bench: {}: client netns {}, http {}",
                route.label(),
                setup.netns(route),
                setup.addr(route, route.http_port())
            );
        }
        eprintln!(
            "bench: node proxies: node-1 pid {}, node-2 pid {}; holding the lab for {hold:?}",
            setup.proxies[0], setup.proxies[1]
        );
        std::thread::sleep(hold);
        // The hold does not count against the run's time budget.
        setup.started += hold;
    }
    let only = Sections::from_env()?;

    for route in Route::ALL.into_iter().filter(|_| only.wrk) {
        let addr = setup.addr(route, route.http_port());
        for (threads, conns) in [(1, 1), (2, 16)] {
            let what = format!("wrk {} -c{conns}", route.label());
            setup.check_budget(&what)?;
            let (r, usage) = setup.measure(route, || {
                wrk(setup.netns(route), addr, threads, conns, WRK_DURATION)
            })?;
            eprintln!(
                "bench:   {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
                r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            results.wrk.push((route, conns, r, usage));
            results.memory.push((what, usage));
        }
    }

    for round in (0..WRK_ROUNDS).filter(|_| only.wrk) {
        for route in rotated(MESH_ROUTES, round) {
            let what = format!(
                "wrk {} -c16 (CPU round {} of {WRK_ROUNDS})",
                route.label(),
                round + 1
            );
            setup.check_budget(&what)?;
            let addr = setup.addr(route, route.http_port());
            let (r, usage) = setup.measure(route, || {
                wrk(setup.netns(route), addr, 2, 16, WRK_ROUND_DURATION)
            })?;
            eprintln!("bench:   {:.0} req/s, {} errors", r.rps, r.errors);
            results.wrk_rounds.push(Round {
                route,
                rate: 0,
                conns: 16,
                round,
                answered: r.requests,
                usage,
            });
        }
    }

    for (rate, conns) in FIXED_RUNS.into_iter().filter(|_| only.fixed) {
        let mut pooled: Vec<(Route, FixedRateResult, Usage)> = Vec::new();
        for round in 0..FIXED_ROUNDS {
            for route in rotated(Route::ALL, round) {
                let what = format!(
                    "{rate} req/s -c{conns} {} (round {} of {FIXED_ROUNDS})",
                    route.label(),
                    round + 1
                );
                setup.check_budget(&what)?;
                let addr = setup.addr(route, route.http_port());
                let (r, usage) = setup.measure(route, || {
                    fixed_rate(setup.netns(route), addr, rate, conns, FIXED_RATE_DURATION)
                })?;
                eprintln!(
                    "bench:   {:.0} req/s answered, mean {:.3} ms, p99 {:.3} ms, {} errors",
                    r.achieved_rps(),
                    r.mean_ms(),
                    r.percentile_ms(0.99),
                    r.errors
                );
                results.fixed_rounds.push(Round {
                    route,
                    rate,
                    conns,
                    round,
                    answered: r.latencies_us.len() as u64,
                    usage,
                });
                match pooled.iter_mut().find(|(rt, _, _)| *rt == route) {
                    Some((_, total, total_usage)) => {
                        total.add(r);
                        total_usage.add(&usage);
                    }
                    None => pooled.push((route, r, usage)),
                }
            }
        }
        for (route, r, usage) in pooled {
            let what = format!("{rate} req/s -c{conns} {}", route.label());
            results.memory.push((what, usage));
            results.fixed.push((route, rate, conns, r, usage));
        }
    }

    for route in [Route::Direct, Route::L4]
        .into_iter()
        .filter(|_| only.iperf)
    {
        let what = format!("iperf3 {}", route.label());
        setup.check_budget(&what)?;
        let (r, usage) = setup.measure(route, || {
            iperf3(setup.netns(route), setup.addr(route, IPERF_PORT))
        })?;
        eprintln!("bench:   {:.2} Gbit/s", r.bits_per_second / 1e9);
        results.iperf.push((route, r, usage));
        results.memory.push((what, usage));
    }

    for (route, exchange, port) in [
        (Route::Direct, Exchange::Tcp, ECHO_PORT),
        (Route::L4, Exchange::Tcp, ECHO_PORT),
        (Route::Direct, Exchange::Http, HTTP_PORT),
        (Route::L4, Exchange::Http, HTTP_L4_PORT),
        (Route::L7, Exchange::Http, HTTP_PORT),
    ]
    .into_iter()
    .filter(|_| only.connect)
    {
        let what = format!("new connections {} {exchange:?}", route.label());
        setup.check_budget(&what)?;
        let (r, usage) = setup.measure(route, || {
            new_connections(
                setup.netns(route),
                setup.addr(route, port),
                exchange,
                CONNECT_THREADS,
                CONNECT_DURATION,
            )
        })?;
        eprintln!(
            "bench:   {:.0} conn/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, {} SYNs again ({} PAWS)",
            r.per_second(),
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
            r.errors,
            r.syn_retransmits,
            paws(r.paws_time_wait)
        );
        results.connect.push((route, exchange, r, usage));
        results.memory.push((what, usage));
    }

    sanity_check(&results);
    Ok(render(&results))
}

const ONLY_ENV: &str = "HAWSER_BENCH_ONLY";
const HOLD_ENV: &str = "HAWSER_BENCH_HOLD";

/// Which sections run (`HAWSER_BENCH_ONLY`; all when unset).
struct Sections {
    wrk: bool,
    fixed: bool,
    iperf: bool,
    connect: bool,
}

impl Sections {
    fn from_env() -> anyhow::Result<Self> {
        let Ok(list) = std::env::var(ONLY_ENV) else {
            return Ok(Self {
                wrk: true,
                fixed: true,
                iperf: true,
                connect: true,
            });
        };
        let mut only = Self {
            wrk: false,
            fixed: false,
            iperf: false,
            connect: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "wrk" => only.wrk = true,
                "fixed" => only.fixed = true,
                "iperf" => only.iperf = true,
                "connect" => only.connect = true,
                other => bail!(
                    "{ONLY_ENV}: unknown section {other:?} (expected wrk, fixed, iperf or connect)"
                ),
            }
        }
        Ok(only)
    }
}

/// A whole number of seconds from the environment variable `name`, if set.
fn env_secs(name: &str) -> anyhow::Result<Option<Duration>> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .with_context(|| format!("{name}={v:?}: expected whole seconds"))
        })
        .transpose()
}

/// Warns when the numbers say a route did not take the path it should.
fn sanity_check(results: &Results) {
    for (route, conns, _, usage) in &results.wrk {
        let busy = usage.proxy_total() > 0.05;
        match route {
            Route::Direct if busy => eprintln!(
                "bench: WARNING: the node proxies used {:.2} CPU s during direct -c{conns}: is the direct namespace redirected?",
                usage.proxy_total()
            ),
            Route::L4 | Route::L7 | Route::L7Authz if !busy => eprintln!(
                "bench: WARNING: the node proxies were idle during {} -c{conns}: did the traffic bypass the mesh?",
                route.label()
            ),
            _ => {}
        }
    }
}

// ---- tables ----

fn ratio(value: f64, direct: Option<f64>) -> String {
    match direct {
        Some(d) if d > 0.0 && value.is_finite() => format!("{:.2}×", value / d),
        _ => "—".into(),
    }
}

fn cpu_pair(u: &Usage) -> String {
    format!("{:.2} / {:.2}", u.proxy_cpu[0], u.proxy_cpu[1])
}

fn per_k(u: &Usage, units: u64) -> String {
    let [a, b, sum] = u.per_thousand(units);
    format!("{a:.3} / {b:.3} / {sum:.3}")
}

fn render(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", machine());
    if std::env::var_os(QUICKACK_ENV).is_some_and(|v| v == "1") {
        let _ = writeln!(
            s,
            "\n**Diagnostic run: {QUICKACK_ENV}=1, delayed ACKs are off in every pod.**"
        );
    }

    let _ = writeln!(
        s,
        "\n### HTTP closed loop (wrk, {}s, GET / → echo backend)\n",
        WRK_DURATION.as_secs()
    );
    let _ = writeln!(
        s,
        "| path | conns | req/s | vs direct | p50 ms | p99 ms | p99 vs direct | errors | proxy CPU s (n1 / n2) | proxy CPU s per 1k req (n1 / n2 / sum) | server CPU s |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (route, conns, w, u) in &r.wrk {
        let direct = r
            .wrk
            .iter()
            .find(|(rt, c, _, _)| *rt == Route::Direct && c == conns)
            .map(|(_, _, d, _)| *d);
        let _ = writeln!(
            s,
            "| {} | {conns} | {:.0} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {:.2} |",
            route.label(),
            w.rps,
            ratio(w.rps, direct.map(|d| d.rps)),
            w.p50_ms,
            w.p99_ms,
            ratio(w.p99_ms, direct.map(|d| d.p99_ms)),
            w.errors,
            cpu_pair(u),
            per_k(u, w.requests),
            u.server_cpu,
        );
    }

    let _ = writeln!(
        s,
        "\n### Latency at fixed rates (open loop, keep-alive connections, {} rounds of {}s pooled, from scheduled send time)\n",
        FIXED_ROUNDS,
        FIXED_RATE_DURATION.as_secs()
    );
    let _ = writeln!(
        s,
        "| path | offered req/s (conns) | answered req/s | mean ms | p50 ms | p99 ms | max ms | mean vs direct | p99 vs direct | errors | proxy CPU s (n1 / n2) | proxy CPU s per 1k req (n1 / n2 / sum) | mean send delay µs |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (route, rate, conns, f, u) in &r.fixed {
        let direct = r
            .fixed
            .iter()
            .find(|(rt, ra, c, _, _)| *rt == Route::Direct && ra == rate && c == conns)
            .map(|(_, _, _, d, _)| d);
        let _ = writeln!(
            s,
            "| {} | {rate} ({conns}) | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {:.0} |",
            route.label(),
            f.achieved_rps(),
            f.mean_ms(),
            f.percentile_ms(0.5),
            f.percentile_ms(0.99),
            f.percentile_ms(1.0),
            ratio(f.mean_ms(), direct.map(FixedRateResult::mean_ms)),
            ratio(f.percentile_ms(0.99), direct.map(|d| d.percentile_ms(0.99))),
            f.errors,
            cpu_pair(u),
            per_k(u, f.latencies_us.len() as u64),
            f.send_lateness_us,
        );
    }

    let _ = writeln!(s, "\n### One TCP stream (iperf3 -t {IPERF_SECONDS})\n");
    let _ = writeln!(
        s,
        "| path | Gbit/s | vs direct | retransmits | proxy CPU s (n1 / n2) | proxy CPU s per GB (sum) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let direct = r
        .iperf
        .iter()
        .find(|(rt, _, _)| *rt == Route::Direct)
        .map(|(_, d, _)| d.bits_per_second);
    for (route, i, u) in &r.iperf {
        let per_gb = if i.bytes > 0.0 {
            u.proxy_total() / (i.bytes / 1e9)
        } else {
            f64::NAN
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {} | {:.3} |",
            route.label(),
            i.bits_per_second / 1e9,
            ratio(i.bits_per_second, direct),
            i.retransmits,
            cpu_pair(u),
            per_gb,
        );
    }

    let _ = writeln!(
        s,
        "\n### New connections per second ({CONNECT_THREADS} closed-loop connectors, {}s; connect, one exchange, close)\n",
        CONNECT_DURATION.as_secs()
    );
    let _ = writeln!(
        s,
        "SYNs again: SYNs and SYN-ACKs retransmitted in the client's netns (a SYN after the 1 s initial RTO). PAWS: SYNs refused by a TIME_WAIT socket with the same addresses and ports on their timestamp, each then sent again: the client reused a source port for another destination address or port while the proxy's socket of the earlier connection (both redirected to 127.0.0.1:15001) was in TIME_WAIT, and the new connection's timestamps start elsewhere (n/a: a kernel without the counter). The runs go one after another, so a run meets the TIME_WAIT sockets of the runs before it.\n"
    );
    let _ = writeln!(
        s,
        "| path | exchange | conn/s | vs direct | per-conn p50 ms | p99 ms | max ms | errors | SYNs again (PAWS) | proxy CPU s (n1 / n2) | proxy CPU s per 1k conns (n1 / n2 / sum) | server CPU s |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (route, exchange, c, u) in &r.connect {
        let direct = r
            .connect
            .iter()
            .find(|(rt, e, _, _)| *rt == Route::Direct && e == exchange)
            .map(|(_, _, d, _)| d.per_second());
        let exchange = match exchange {
            Exchange::Tcp => "TCP echo 4 B",
            Exchange::Http => "HTTP GET, Connection: close",
        };
        let _ = writeln!(
            s,
            "| {} | {exchange} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {} | {} ({}) | {} | {} | {:.2} |",
            route.label(),
            c.per_second(),
            ratio(c.per_second(), direct),
            c.percentile_ms(0.5),
            c.percentile_ms(0.99),
            c.percentile_ms(1.0),
            c.errors,
            c.syn_retransmits,
            paws(c.paws_time_wait),
            cpu_pair(u),
            per_k(u, c.ok),
            u.server_cpu,
        );
    }

    let _ = writeln!(
        s,
        "\n### L7 vs L4: proxy CPU seconds per 1000 requests (both proxies; goal L7 ≤ 1.25× L4)\n"
    );
    let _ = writeln!(
        s,
        "| run | L4 | L7 | L7 / L4 | L7 / L4 per round | within goal |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
    // (run, L4, L7, the per-round ratios of a fixed-rate run)
    let mut pairs: Vec<(String, f64, f64, Vec<f64>)> = Vec::new();
    // (L4, L7, the per-round ratios) from one comparison's rounds.
    let compare = |rounds: &[Round], l7_route: Route, rate: u32, conns: u32| {
        let of = |route: Route| {
            rounds
                .iter()
                .filter(move |f| f.route == route && f.rate == rate && f.conns == conns)
        };
        let pooled = |route| {
            let (cpu, answered) = of(route).fold((0.0, 0), |(cpu, n), f| {
                (cpu + f.usage.proxy_total(), n + f.answered)
            });
            (answered > 0).then(|| cpu * 1000.0 / answered as f64)
        };
        let per_round: Vec<f64> = of(l7_route)
            .filter_map(|l7| {
                let l4 = of(Route::L4).find(|l4| l4.round == l7.round)?;
                Some(l7.usage.per_thousand(l7.answered)[2] / l4.usage.per_thousand(l4.answered)[2])
            })
            .collect();
        Some((pooled(Route::L4)?, pooled(l7_route)?, per_round))
    };
    for (l7_route, suffix) in [(Route::L7, ""), (Route::L7Authz, ", L7 + L7 authz")] {
        let one_run = |route| {
            r.wrk
                .iter()
                .find(|(rt, c, _, _)| *rt == route && *c == 1)
                .map(|(_, _, w, u)| u.per_thousand(w.requests)[2])
        };
        if let (Some(l4), Some(l7)) = (one_run(Route::L4), one_run(l7_route)) {
            pairs.push((format!("wrk -c1{suffix}"), l4, l7, Vec::new()));
        }
        if let Some((l4, l7, rounds)) = compare(&r.wrk_rounds, l7_route, 0, 16) {
            pairs.push((
                format!(
                    "wrk -c16{suffix} ({WRK_ROUNDS} rounds of {}s pooled)",
                    WRK_ROUND_DURATION.as_secs()
                ),
                l4,
                l7,
                rounds,
            ));
        }
        for (rate, conns) in FIXED_RUNS {
            if let Some((l4, l7, rounds)) = compare(&r.fixed_rounds, l7_route, rate, conns) {
                pairs.push((
                    format!(
                        "{rate} req/s, {conns} conns{suffix} ({FIXED_ROUNDS} rounds of {}s pooled)",
                        FIXED_RATE_DURATION.as_secs()
                    ),
                    l4,
                    l7,
                    rounds,
                ));
            }
        }
    }
    let conn = |route| {
        r.connect
            .iter()
            .find(|(rt, e, _, _)| *rt == route && *e == Exchange::Http)
            .map(|(_, _, c, u)| u.per_thousand(c.ok)[2])
    };
    if let (Some(l4), Some(l7)) = (conn(Route::L4), conn(Route::L7)) {
        pairs.push(("new connections (HTTP)".into(), l4, l7, Vec::new()));
    }
    for (run, l4, l7, rounds) in pairs {
        let within = if l7 <= l4 * 1.25 { "yes" } else { "no" };
        let rounds = if rounds.is_empty() {
            "—".to_owned()
        } else {
            let each: Vec<String> = rounds.iter().map(|x| format!("{x:.2}")).collect();
            each.join(" / ")
        };
        let _ = writeln!(
            s,
            "| {run} | {l4:.3} | {l7:.3} | {} | {rounds} | {within} |",
            ratio(l7, Some(l4))
        );
    }

    let _ = writeln!(s, "\n### Node proxy memory after each run (MiB)\n");
    let _ = writeln!(
        s,
        "| after | node-1 RSS | node-1 peak | node-2 RSS | node-2 peak |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let mib = |k: u64| k as f64 / 1024.0;
    for (what, u) in &r.memory {
        let _ = writeln!(
            s,
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib(u.rss_kib[0]),
            mib(u.hwm_kib[0]),
            mib(u.rss_kib[1]),
            mib(u.hwm_kib[1]),
        );
    }
    s
}

/// One line about the machine: every process of the lab (load generators,
/// servers, both proxies, the control plane) shares these cores.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs ({model}), Linux {kernel}. The load generators, the servers, both node \
         proxies and the control plane all share these CPUs; release build."
    )
}
