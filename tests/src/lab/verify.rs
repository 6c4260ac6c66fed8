//! `hawser verify-mtls`: proof, from the wire, that a request between two lab
//! pods travelled as mTLS.
//!
//! A request carrying two random tokens (one in the path, one in a header)
//! goes from a client pod to a Service while `tcpdump` captures the underlay
//! bridge `br0`, which every node-to-node packet crosses. The capture then
//! answers three questions:
//!
//! - was there TLS to port 15008 (HBONE), and which version and cipher suite
//!   did its ServerHello choose;
//! - did either token cross the link in the clear, on any flow;
//! - who were the peers: TLS 1.3 encrypts certificates, so each 15008 flow's
//!   4-tuple is matched to the node proxies' own record of it (their admin
//!   API's `GET /connections`, outbound on the client's node, inbound on the
//!   server's), which names both SPIFFE IDs and lets the capture's cipher be
//!   cross-checked against what the proxies negotiated.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::pcap::{self, Direction, Flow, FlowKey, Protocol};
use super::{Lab, LabError, sys};
use crate::echo::client::Report as EchoReport;

/// The HBONE port: mTLS between node proxies.
pub const HBONE_PORT: u16 = 15008;
/// The header carrying the second token.
pub const TOKEN_HEADER: &str = "x-hawser-verify";
/// The bridge every node-to-node packet crosses, in the underlay netns.
pub const UNDERLAY_BRIDGE: &str = "br0";

/// `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::str::FromStr for ObjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?}: expected <namespace>/<name>")),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The pod that sends the request.
    pub client: ObjectRef,
    /// The Service it is sent to.
    pub service: ObjectRef,
    /// The Service port; its first port when `None`.
    pub port: Option<u16>,
    /// How many requests may be sent until one is answered by a pod on
    /// another node than the client's (only those cross the link).
    pub attempts: u32,
    /// Per-request limit.
    pub timeout: Duration,
    /// Keep the capture in this file.
    pub pcap_out: Option<PathBuf>,
}

impl VerifyOptions {
    /// Defaults: the Service's first port, up to 5 attempts of 5 s each, the
    /// capture not kept.
    pub fn new(client: ObjectRef, service: ObjectRef) -> Self {
        Self {
            client,
            service,
            port: None,
            attempts: 5,
            timeout: Duration::from_secs(5),
            pcap_out: None,
        }
    }
}

// ---------------------------------------------------------------------------
// The node proxies' admin API: `GET /connections`.

pub use hawser_api::admin::{ConnectionDirection, ConnectionsDump, HboneConnection};

/// What one node's proxy answered (or why it did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConnections {
    /// The node.
    pub node: String,
    /// Its connections, or why they could not be read.
    pub dump: Result<ConnectionsDump, String>,
}

impl NodeConnections {
    fn find(
        &self,
        direction: ConnectionDirection,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<&HboneConnection> {
        self.dump
            .as_ref()
            .ok()?
            .connections
            .iter()
            .filter(|c| c.direction == direction && c.local == local && c.peer == peer)
            // The 4-tuple may have been reused: the newest is the one seen.
            .max_by_key(|c| c.opened_unix_ms)
    }
}

/// Reads `GET /connections` from the node proxy admin API inside `netns`.
pub fn fetch_connections(netns: &str) -> Result<ConnectionsDump, String> {
    let (code, body) = sys::in_netns(netns, || {
        super::http_get(super::NODE_PROXY_ADMIN_ADDR, "/connections")
    })
    .and_then(|r| r)
    .map_err(|e| format!("{e} (is the node proxy running?)"))?;
    if code != 200 {
        return Err(format!("GET /connections: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET /connections: {e}"))
}

// ---------------------------------------------------------------------------
// Capturing.

/// `tcpdump` writing a pcap of one interface of a netns to a pipe.
#[derive(Debug)]
pub struct Tcpdump {
    child: Child,
    stdout: Option<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>,
    stderr: mpsc::Receiver<String>,
}

/// What a stopped `tcpdump` left.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The pcap file's bytes.
    pub pcap: Vec<u8>,
    /// Packets the kernel dropped (tcpdump's own count at exit).
    pub dropped: Option<u64>,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Tcpdump {
    /// Starts `tcpdump -i <iface>` inside `netns` (packet-buffered, every
    /// packet written as it arrives) and returns once it is listening.
    pub fn start(netns: &str, iface: &str) -> Result<Self, LabError> {
        let command = format!("ip netns exec {netns} tcpdump -i {iface} -w - -U");
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface])
            .args(["-w", "-", "-U", "--immediate-mode", "-n", "-B", "8192"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Command {
                command: command.clone(),
                output: format!("{e} (install tcpdump)"),
            })?;
        let (Some(mut out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Command {
                command,
                output: "no pipes to tcpdump".into(),
            });
        };
        let stdout = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            out.read_to_end(&mut bytes).map(|_| bytes)
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tcpdump = Self {
            child,
            stdout: Some(stdout),
            stderr: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tcpdump.stderr.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(tcpdump),
                Ok(line) => said.push(line),
                Err(_) => {
                    tcpdump.terminate();
                    said.extend(tcpdump.stderr.try_iter());
                    return Err(LabError::Command {
                        command,
                        output: format!("did not start listening: {}", said.join("; ")),
                    });
                }
            }
        }
    }

    /// Stops it (SIGTERM, then waits) and returns the capture. Packets
    /// already sent are in its buffer; it gets a moment to write them first.
    pub fn stop(mut self) -> Result<Captured, LabError> {
        std::thread::sleep(Duration::from_millis(100));
        let status = self.terminate();
        let pcap = self
            .stdout
            .take()
            .map(|t| t.join())
            .and_then(Result::ok)
            .and_then(Result::ok)
            .unwrap_or_default();
        // Its stderr closed when it exited; everything it said is queued.
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        let dropped = stderr.iter().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")
                .or_else(|| l.strip_suffix(" packet dropped by kernel"))
                .and_then(|n| n.trim().parse().ok())
        });
        let stderr = stderr.join("\n");
        match status {
            Some(s) if s.success() || s.code().is_none() || !pcap.is_empty() => Ok(Captured {
                pcap,
                dropped,
                stderr,
            }),
            other => Err(LabError::Command {
                command: "tcpdump".into(),
                output: format!("exited with {other:?}: {stderr}"),
            }),
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; returns its exit status.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            self.terminate();
        }
    }
}

// ---------------------------------------------------------------------------
// Judging the capture.

/// A secret sent with the request, which must never be seen in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    /// Where it was sent (`path`, `header x-hawser-verify`).
    pub carried_in: String,
    /// The random value.
    pub value: String,
}

impl Token {
    /// A fresh random token carried in `carried_in`.
    pub fn random(carried_in: &str) -> Self {
        Self {
            carried_in: carried_in.to_owned(),
            value: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

/// A token seen in the clear on the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaintextHit {
    /// The flow that carried it.
    pub flow: FlowKey,
    /// Which way.
    pub direction: Direction,
    /// Which token (`path`, …).
    pub token: String,
}

/// The pod that sent the request, as the judge needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientPod {
    /// `<namespace>/<name>`.
    pub pod: ObjectRef,
    /// Its node.
    pub node: String,
    /// Its IP.
    pub ip: Option<Ipv4Addr>,
}

/// One HBONE connection that carried the request, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MtlsFlow {
    /// Its endpoints.
    pub flow: FlowKey,
    /// The client's node.
    pub client_node: Option<String>,
    /// The server's node.
    pub server_node: Option<String>,
    /// Whether its ClientHello and ServerHello were in the capture (not when
    /// the connection was pooled from before the capture started).
    pub handshake_captured: bool,
    /// Negotiated version (`TLSv1_3`).
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher: Option<String>,
    /// Where version and cipher were read: `capture` or `proxies`.
    pub negotiated_from: &'static str,
    /// ALPN protocols the ClientHello offered.
    pub alpn_offered: Vec<String>,
    /// ALPN protocol the proxies negotiated.
    pub alpn: Option<String>,
    /// The client's SPIFFE ID.
    pub client_identity: Option<String>,
    /// The server's SPIFFE ID.
    pub server_identity: Option<String>,
    /// TLS application-data records client → server.
    pub encrypted_records_to_server: usize,
    /// TLS application-data records server → client.
    pub encrypted_records_to_client: usize,
    /// Payload bytes both ways.
    pub bytes: usize,
    /// What is wrong with it (empty: verified mTLS).
    pub problems: Vec<String>,
}

/// The capture judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    /// HBONE connections from the client that carried bytes during the capture.
    pub hbone: Vec<MtlsFlow>,
    /// Other connections to :15008 seen (other pods' traffic).
    pub other_hbone_flows: usize,
    /// Tokens seen in the clear.
    pub plaintext: Vec<PlaintextHit>,
    /// Why this is not verified mTLS (empty: it is).
    pub failures: Vec<String>,
}

/// Judges `flows`: TLS to :15008 from `client`, matched to the proxies'
/// records; `tokens` nowhere in the clear. `node_of` names the node an
/// address belongs to.
pub fn judge(
    flows: &[Flow],
    tokens: &[Token],
    client: &ClientPod,
    proxies: &[NodeConnections],
    node_of: &dyn Fn(IpAddr) -> Option<String>,
) -> Judgement {
    let mut plaintext = Vec::new();
    for flow in flows {
        for token in tokens {
            for direction in flow.find(token.value.as_bytes()) {
                plaintext.push(PlaintextHit {
                    flow: flow.key,
                    direction,
                    token: token.carried_in.clone(),
                });
            }
        }
    }
    let client_pod = client.pod.to_string();
    let mut hbone = Vec::new();
    let mut other_hbone_flows = 0;
    for flow in flows.iter().filter(|f| {
        f.key.protocol == Protocol::Tcp
            && f.key.server.port() == HBONE_PORT
            && f.to_server.stream.len() + f.to_server.segments.len() > 0
    }) {
        let client_node = node_of(flow.key.client.ip());
        let server_node = node_of(flow.key.server.ip());
        let outbound = proxies.iter().find_map(|n| {
            n.find(
                ConnectionDirection::Outbound,
                flow.key.client,
                flow.key.server,
            )
        });
        let inbound = proxies.iter().find_map(|n| {
            n.find(
                ConnectionDirection::Inbound,
                flow.key.server,
                flow.key.client,
            )
        });
        let from_client = match outbound {
            Some(o) => o.pod == client_pod,
            None => client.ip.map(IpAddr::V4) == Some(flow.key.client.ip()),
        };
        if !from_client {
            other_hbone_flows += 1;
            continue;
        }
        hbone.push(check_flow(
            flow,
            client_node,
            server_node,
            outbound,
            inbound,
        ));
    }

    let mut failures = Vec::new();
    if hbone.is_empty() {
        let ip = client.ip.map_or_else(|| "?".into(), |ip| ip.to_string());
        failures.push(format!(
            "no TLS to port {HBONE_PORT} from {client_pod} ({ip}) crossed the link"
        ));
    }
    for f in &hbone {
        for p in &f.problems {
            failures.push(format!("{}: {p}", f.flow));
        }
    }
    for hit in &plaintext {
        failures.push(format!(
            "plaintext of the request ({}) crossed the link on {}, {}",
            hit.token, hit.flow, hit.direction
        ));
    }
    Judgement {
        hbone,
        other_hbone_flows,
        plaintext,
        failures,
    }
}

fn check_flow(
    flow: &Flow,
    client_node: Option<String>,
    server_node: Option<String>,
    outbound: Option<&HboneConnection>,
    inbound: Option<&HboneConnection>,
) -> MtlsFlow {
    let tls = flow.tls();
    let mut problems = Vec::new();
    if !tls.is_tls() {
        problems.push(format!("the bytes to :{HBONE_PORT} are not TLS records"));
    }
    let hello = tls.server_hello;
    let node = |n: &Option<String>| n.clone().unwrap_or_else(|| "?".into());
    if outbound.is_none() {
        problems.push(format!(
            "the client's node proxy ({}) lists no outbound connection {} → {}",
            node(&client_node),
            flow.key.client,
            flow.key.server
        ));
    }
    if inbound.is_none() {
        problems.push(format!(
            "the server's node proxy ({}) lists no inbound connection from {} on {}",
            node(&server_node),
            flow.key.client,
            flow.key.server
        ));
    }
    if let (Some(o), Some(i)) = (outbound, inbound) {
        if o.local_identity != i.peer_identity {
            problems.push(format!(
                "the proxies disagree on the client's identity: {} (outbound) vs {} (inbound)",
                o.local_identity, i.peer_identity
            ));
        }
        if o.peer_identity != i.local_identity {
            problems.push(format!(
                "the proxies disagree on the server's identity: {} (outbound) vs {} (inbound)",
                o.peer_identity, i.local_identity
            ));
        }
    }
    let reports: Vec<(&str, &HboneConnection)> = [("outbound", outbound), ("inbound", inbound)]
        .into_iter()
        .filter_map(|(side, c)| Some((side, c?)))
        .collect();
    let (tls_version, cipher, negotiated_from) = match hello {
        Some(sh) => (Some(sh.version_name()), Some(sh.cipher_name()), "capture"),
        None => (
            reports.first().map(|(_, c)| c.tls_version.clone()),
            reports.first().map(|(_, c)| c.cipher.clone()),
            "proxies",
        ),
    };
    for (side, c) in &reports {
        if tls_version.as_deref().is_some_and(|v| v != c.tls_version) {
            problems.push(format!(
                "the {side} proxy reports {} but the {negotiated_from} shows {}",
                c.tls_version,
                tls_version.as_deref().unwrap_or_default()
            ));
        }
        if cipher.as_deref().is_some_and(|v| v != c.cipher) {
            problems.push(format!(
                "the {side} proxy reports cipher {} but the {negotiated_from} shows {}",
                c.cipher,
                cipher.as_deref().unwrap_or_default()
            ));
        }
    }
    MtlsFlow {
        flow: flow.key,
        client_node,
        server_node,
        handshake_captured: hello.is_some(),
        tls_version,
        cipher,
        negotiated_from,
        alpn_offered: tls.client_hello.map(|ch| ch.alpn).unwrap_or_default(),
        alpn: outbound.or(inbound).and_then(|c| c.alpn.clone()),
        // The client's identity is what the server verified, and vice versa.
        client_identity: inbound
            .map(|c| c.peer_identity.to_string())
            .or_else(|| outbound.map(|c| c.local_identity.to_string())),
        server_identity: outbound
            .map(|c| c.peer_identity.to_string())
            .or_else(|| inbound.map(|c| c.local_identity.to_string())),
        encrypted_records_to_server: tls.to_server.application_data,
        encrypted_records_to_client: tls.to_client.application_data,
        bytes: flow.payload_bytes(),
        problems,
    }
}

// ---------------------------------------------------------------------------
// Running it in the lab.

/// One request sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestResult {
    /// HTTP status, when answered.
    pub status: Option<u16>,
    /// The pod that answered (`Hostname=`).
    pub answered_by: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// Why it got no answer.
    pub error: Option<String>,
}

/// The capture itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureSummary {
    /// Where it ran.
    pub netns: String,
    /// On which interface.
    pub interface: String,
    /// TCP/UDP packets in it.
    pub packets: usize,
    /// Flows in it.
    pub flows: usize,
    /// Packets the kernel dropped.
    pub dropped: Option<u64>,
    /// Where it was kept.
    pub pcap: Option<PathBuf>,
}

/// Whether a node proxy's connections could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    /// The node.
    pub node: String,
    /// HBONE connections it listed.
    pub connections: Option<usize>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Everything `hawser verify-mtls` found (its `--json` output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The sender.
    pub client: ClientPod,
    /// The Service.
    pub service: ObjectRef,
    /// The URL requested (with the path token).
    pub url: String,
    /// The tokens searched for.
    pub tokens: Vec<Token>,
    /// Each request sent.
    pub requests: Vec<RequestResult>,
    /// The capture.
    pub capture: CaptureSummary,
    /// The node proxies' admin APIs.
    pub proxies: Vec<ProxyStatus>,
    /// What the capture shows.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Whether the request travelled as mTLS.
    pub mtls: bool,
}

/// Sends a request from `opts.client` to `opts.service` while capturing the
/// underlay, and judges the capture.
pub fn verify_mtls(lab: &Lab, opts: &VerifyOptions) -> Result<VerifyReport, LabError> {
    let state = lab.state();
    let invalid = |what: &ObjectRef, kind: &str, reason: String| LabError::Invalid {
        what: format!("{kind} {what}"),
        reason,
    };
    let pod = lab
        .pod(&opts.client.namespace, &opts.client.name)
        .ok_or_else(|| invalid(&opts.client, "pod", "is not in the lab".into()))?;
    let service = state
        .services
        .iter()
        .find(|s| s.namespace == opts.service.namespace && s.name == opts.service.name)
        .ok_or_else(|| invalid(&opts.service, "service", "is not in the lab".into()))?;
    let port = match opts.port {
        Some(p) => p,
        None => service
            .ports
            .first()
            .map(|(p, _)| *p)
            .ok_or_else(|| invalid(&opts.service, "service", "has no ports".into()))?,
    };
    let underlay = state
        .underlay
        .clone()
        .ok_or_else(|| LabError::NotUp(lab.config().state_dir.clone()))?;
    let echo = lab.config().bin_dir.join("hawser-echo");
    if !echo.is_file() {
        return Err(LabError::Missing(format!(
            "{} (build it: cargo build -p hawser-tests)",
            echo.display()
        )));
    }
    let client = ClientPod {
        pod: opts.client.clone(),
        node: pod.node.clone(),
        ip: pod.ip,
    };
    let path_token = Token::random("path");
    let header_token = Token::random(&format!("header {TOKEN_HEADER}"));
    let url = format!(
        "http://{}.{}.svc.cluster.local:{port}/hawser-verify/{}",
        service.name, service.namespace, path_token.value
    );
    let header = format!("{TOKEN_HEADER}: {}", header_token.value);
    let timeout = format!("{}ms", opts.timeout.as_millis());
    let args = [
        "client",
        "--json",
        "--timeout",
        &timeout,
        "-H",
        &header,
        &url,
    ];

    let tcpdump = Tcpdump::start(&underlay, UNDERLAY_BRIDGE)?;
    let mut requests = Vec::new();
    for _ in 0..opts.attempts.max(1) {
        let result = send(
            lab,
            pod,
            &echo.display().to_string(),
            &args,
            &service.namespace,
        );
        let crossed = result.node.as_ref().is_some_and(|n| *n != pod.node);
        let answered = result.status.is_some();
        requests.push(result);
        if crossed || !answered {
            break;
        }
    }
    // The last packets (the response's ACKs, the connection's FINs) are on
    // their way.
    std::thread::sleep(Duration::from_millis(200));
    let captured = tcpdump.stop()?;
    if let Some(path) = &opts.pcap_out {
        std::fs::write(path, &captured.pcap).map_err(|e| LabError::io(path, e))?;
    }
    let capture = pcap::parse(&captured.pcap).map_err(|e| LabError::Invalid {
        what: "the capture".into(),
        reason: e.to_string(),
    })?;
    let flows = capture.flows();

    let proxies: Vec<NodeConnections> = state
        .nodes
        .iter()
        .map(|n| NodeConnections {
            node: n.name.clone(),
            dump: fetch_connections(&n.netns),
        })
        .collect();
    let node_of = |ip: IpAddr| node_of(lab, ip);
    let mut judgement = judge(
        &flows,
        &[path_token.clone(), header_token.clone()],
        &client,
        &proxies,
        &node_of,
    );
    let mut early = Vec::new();
    match requests.last() {
        Some(RequestResult { error: Some(e), .. }) => {
            early.push(format!("the request got no answer: {e}"))
        }
        Some(RequestResult { node: Some(n), .. }) if *n == pod.node => early.push(format!(
            "every answer came from a pod on {n}, the client's own node, so nothing crossed the \
             link; send more requests (--attempts) or use a client on a node without endpoints \
             of the Service"
        )),
        _ => {}
    }
    if let Some(d) = captured.dropped.filter(|d| *d > 0) {
        early.push(format!(
            "tcpdump dropped {d} packets, so the plaintext check is incomplete"
        ));
    }
    early.append(&mut judgement.failures);
    judgement.failures = early;
    Ok(VerifyReport {
        mtls: judgement.failures.is_empty(),
        client,
        service: opts.service.clone(),
        url,
        tokens: vec![path_token, header_token],
        requests,
        capture: CaptureSummary {
            netns: underlay,
            interface: UNDERLAY_BRIDGE.into(),
            packets: capture.packets.len(),
            flows: flows.len(),
            dropped: captured.dropped,
            pcap: opts.pcap_out.clone(),
        },
        proxies: proxies
            .iter()
            .map(|p| ProxyStatus {
                node: p.node.clone(),
                connections: p.dump.as_ref().ok().map(|d| d.connections.len()),
                error: p.dump.as_ref().err().cloned(),
            })
            .collect(),
        judgement,
    })
}

/// Sends the request from `pod` with the echo client.
fn send(lab: &Lab, pod: &super::Pod, echo: &str, args: &[&str], svc_ns: &str) -> RequestResult {
    let mut result = RequestResult {
        status: None,
        answered_by: None,
        node: None,
        error: None,
    };
    let out = match lab.exec(&pod.namespace, &pod.name, echo, args) {
        Ok(out) => out,
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    let report: EchoReport = match serde_json::from_str(&out) {
        Ok(r) => r,
        Err(e) => {
            result.error = Some(format!("unreadable echo client output: {e}"));
            return result;
        }
    };
    let Some(outcome) = report.outcomes.into_iter().next() else {
        result.error = Some("the echo client sent nothing".into());
        return result;
    };
    result.status = outcome.status;
    result.error = outcome.error;
    result.node = outcome
        .hostname
        .as_ref()
        .and_then(|h| lab.pod(svc_ns, h))
        .map(|p| p.node.clone());
    result.answered_by = outcome.hostname.map(|h| format!("{svc_ns}/{h}"));
    result
}

/// The node an address belongs to: a pod's node, a node's underlay address,
/// or the node whose pod CIDR holds it.
fn node_of(lab: &Lab, ip: IpAddr) -> Option<String> {
    let IpAddr::V4(v4) = ip else { return None };
    let state = lab.state();
    if let Some(p) = state.pods.iter().find(|p| p.ip == Some(v4)) {
        return Some(p.node.clone());
    }
    state
        .nodes
        .iter()
        .find(|n| {
            n.underlay_ip == v4 || {
                let o = v4.octets();
                n.pod_cidr == format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
        })
        .map(|n| n.name.clone())
}

/// The report as the CLI prints it.
pub fn render_text(r: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let ip = r.client.ip.map_or_else(|| "-".into(), |ip| ip.to_string());
    let _ = writeln!(
        s,
        "client     {} ({}, {ip})\nrequest    GET {}\n           {TOKEN_HEADER}: <random>",
        r.client.pod, r.client.node, r.url
    );
    for req in &r.requests {
        let _ = match (&req.status, &req.error) {
            (_, Some(e)) => writeln!(s, "answer     none: {e}"),
            (Some(status), None) => writeln!(
                s,
                "answer     {status} from {} ({})",
                req.answered_by.as_deref().unwrap_or("?"),
                req.node.as_deref().unwrap_or("?")
            ),
            (None, None) => writeln!(s, "answer     none"),
        };
    }
    let _ = writeln!(
        s,
        "capture    {} in {}: {} packets, {} flows{}{}",
        r.capture.interface,
        r.capture.netns,
        r.capture.packets,
        r.capture.flows,
        r.capture
            .dropped
            .map_or_else(String::new, |d| format!(", {d} dropped")),
        r.capture
            .pcap
            .as_ref()
            .map_or_else(String::new, |p| format!(", saved to {}", p.display())),
    );
    for p in r.proxies.iter().filter(|p| p.error.is_some()) {
        let _ = writeln!(
            s,
            "proxy      {}: {}",
            p.node,
            p.error.as_deref().unwrap_or_default()
        );
    }
    let none = || "-".to_owned();
    for f in &r.judgement.hbone {
        let _ = writeln!(
            s,
            "\nflow       {} → {} ({} → {})",
            f.flow.client,
            f.flow.server,
            f.client_node.clone().unwrap_or_else(none),
            f.server_node.clone().unwrap_or_else(none)
        );
        let source = if f.handshake_captured {
            "from the captured ServerHello"
        } else {
            "from the proxies: the handshake was before the capture"
        };
        let _ = writeln!(
            s,
            "TLS        {} {} ({source})",
            f.tls_version.clone().unwrap_or_else(none),
            f.cipher.clone().unwrap_or_else(none)
        );
        let offered = if f.alpn_offered.is_empty() {
            String::new()
        } else {
            format!(" (offered: {})", f.alpn_offered.join(", "))
        };
        let _ = writeln!(
            s,
            "ALPN       {}{offered}",
            f.alpn.clone().unwrap_or_else(none)
        );
        let _ = writeln!(
            s,
            "client ID  {}\nserver ID  {}\nencrypted  {} records →, {} records ←, {} bytes",
            f.client_identity.clone().unwrap_or_else(none),
            f.server_identity.clone().unwrap_or_else(none),
            f.encrypted_records_to_server,
            f.encrypted_records_to_client,
            f.bytes
        );
    }
    if r.judgement.other_hbone_flows > 0 {
        let _ = writeln!(
            s,
            "({} other connections to :{HBONE_PORT} were not this client's)",
            r.judgement.other_hbone_flows
        );
    }
    let _ = writeln!(s);
    if r.judgement.plaintext.is_empty() {
        let _ = writeln!(s, "plaintext of the request on the link: none");
    } else {
        let _ = writeln!(s, "plaintext of the request on the link: FOUND");
        for hit in &r.judgement.plaintext {
            let _ = writeln!(s, "  {} {}: {}", hit.flow, hit.direction, hit.token);
        }
    }
    if r.mtls {
        let _ = writeln!(s, "mTLS: yes");
    } else {
        let _ = writeln!(s, "mTLS: NO");
        for f in &r.judgement.failures {
            let _ = writeln!(s, "  - {f}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::pcap::testing::{Segment, client_hello, record, server_hello, write_pcap};

    const CLIENT: &str = "10.244.1.5:40112";
    const SERVER: &str = "10.244.2.7:15008";

    /// What a node proxy pair reports for the connection CLIENT → SERVER
    /// (the admin API's documented example).
    const OUTBOUND_JSON: &str = r#"{"connections":[
        {"direction":"outbound","pod":"default/client-0","local":"10.244.1.5:40112","peer":"10.244.2.7:15008",
         "local_identity":"spiffe://cluster.local/ns/default/sa/client","peer_identity":"spiffe://cluster.local/ns/default/sa/echo",
         "tls_version":"TLSv1_3","cipher":"TLS13_AES_256_GCM_SHA384","alpn":"h2",
         "opened_unix_ms":1764140000000,"closed_unix_ms":null,"streams":3},
        {"direction":"outbound","pod":"default/other","local":"10.244.1.9:40000","peer":"10.244.2.7:15008",
         "local_identity":"spiffe://cluster.local/ns/default/sa/other","peer_identity":"spiffe://cluster.local/ns/default/sa/echo",
         "tls_version":"TLSv1_3","cipher":"TLS13_AES_128_GCM_SHA256","alpn":"h2",
         "opened_unix_ms":1764140000001,"closed_unix_ms":1764140000500,"streams":1}]}"#;
    const INBOUND_JSON: &str = r#"{"connections":[
        {"direction":"inbound","pod":"default/echo-1","local":"10.244.2.7:15008","peer":"10.244.1.5:40112",
         "local_identity":"spiffe://cluster.local/ns/default/sa/echo","peer_identity":"spiffe://cluster.local/ns/default/sa/client",
         "tls_version":"TLSv1_3","cipher":"TLS13_AES_256_GCM_SHA384","alpn":"h2",
         "opened_unix_ms":1764140000002,"closed_unix_ms":null,"streams":3}]}"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxies(outbound: &str, inbound: &str) -> Vec<NodeConnections> {
        vec![
            NodeConnections {
                node: "node-1".into(),
                dump: Ok(serde_json::from_str(outbound).unwrap()),
            },
            NodeConnections {
                node: "node-2".into(),
                dump: Ok(serde_json::from_str(inbound).unwrap()),
            },
        ]
    }

    fn client() -> ClientPod {
        ClientPod {
            pod: "default/client-0".parse().unwrap(),
            node: "node-1".into(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
        }
    }

    fn node_of(ip: IpAddr) -> Option<String> {
        match ip {
            IpAddr::V4(v4) => Some(format!("node-{}", v4.octets()[2])),
            IpAddr::V6(_) => None,
        }
    }

    fn tokens() -> Vec<Token> {
        vec![
            Token {
                carried_in: "path".into(),
                value: "0123456789abcdef".into(),
            },
            Token {
                carried_in: "header x-hawser-verify".into(),
                value: "fedcba9876543210".into(),
            },
        ]
    }

    /// A capture of an HBONE connection CLIENT → SERVER whose handshake chose
    /// `suite`, with encrypted records both ways; plus `extra` segments.
    fn capture(suite: u16, with_handshake: bool, extra: &[Segment<'_>]) -> Vec<Flow> {
        let (c, s) = (addr(CLIENT), addr(SERVER));
        let hello = client_hello();
        let mut to_client = server_hello(suite, [5; 32]);
        to_client.extend(record(20, &[1]));
        to_client.extend(record(23, &[0xee; 90]));
        let app_data = record(23, &[0xdd; 120]);
        let (to_server, to_client) = if with_handshake {
            (hello.clone(), to_client)
        } else {
            (app_data.clone(), record(23, &[0xcc; 60]))
        };
        let mut segments = vec![
            Segment {
                src: c,
                dst: s,
                seq: 100,
                flags: 0x18,
                payload: &to_server,
            },
            Segment {
                src: s,
                dst: c,
                seq: 900,
                flags: 0x18,
                payload: &to_client,
            },
        ];
        if with_handshake {
            segments.insert(
                0,
                Segment {
                    src: c,
                    dst: s,
                    seq: 99,
                    flags: 0x02,
                    payload: b"",
                },
            );
            segments.push(Segment {
                src: c,
                dst: s,
                seq: 100 + u32::try_from(hello.len()).unwrap(),
                flags: 0x18,
                payload: &app_data,
            });
        }
        segments.extend(extra.iter().copied());
        pcap::parse(&write_pcap(&segments)).unwrap().flows()
    }

    #[test]
    fn admin_api_example_parses_and_rejects_non_canonical_ids() {
        let dump: ConnectionsDump = serde_json::from_str(OUTBOUND_JSON).unwrap();
        assert_eq!(dump.connections.len(), 2);
        let c = &dump.connections[0];
        assert_eq!(c.direction, ConnectionDirection::Outbound);
        assert_eq!(c.peer, addr(SERVER));
        assert_eq!(c.closed_unix_ms, None);
        assert_eq!(c.alpn.as_deref(), Some("h2"));
        let bad = OUTBOUND_JSON.replace("ns/default/sa/client", "ns/default/sa/client/");
        let err = serde_json::from_str::<ConnectionsDump>(&bad).unwrap_err();
        assert!(err.to_string().contains("sa/client/"), "{err}");
    }

    /// The documented example: the flow matches the outbound record on the
    /// client's node and the inbound one on the server's; both IDs reported,
    /// the captured cipher agrees.
    #[test]
    fn flow_matches_both_proxies_records() {
        let flows = capture(0x1302, true, &[]);
        let j = judge(
            &flows,
            &tokens(),
            &client(),
            &proxies(OUTBOUND_JSON, INBOUND_JSON),
            &node_of,
        );
        assert_eq!(j.failures, Vec::<String>::new());
        assert_eq!(j.hbone.len(), 1);
        let f = &j.hbone[0];
        assert!(f.handshake_captured);
        assert_eq!(f.tls_version.as_deref(), Some("TLSv1_3"));
        assert_eq!(f.cipher.as_deref(), Some("TLS13_AES_256_GCM_SHA384"));
        assert_eq!(f.negotiated_from, "capture");
        assert_eq!(f.alpn_offered, ["h2"]);
        assert_eq!(f.alpn.as_deref(), Some("h2"));
        assert_eq!(
            f.client_identity.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/client")
        );
        assert_eq!(
            f.server_identity.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/echo")
        );
        assert_eq!(f.client_node.as_deref(), Some("node-1"));
        assert_eq!(f.server_node.as_deref(), Some("node-2"));
        assert_eq!(f.encrypted_records_to_server, 1);
    }

    /// A capture showing a different cipher from what the proxies say fails.
    #[test]
    fn cipher_disagreement_with_the_proxies_fails() {
        let flows = capture(0x1301, true, &[]);
        let j = judge(
            &flows,
            &tokens(),
            &client(),
            &proxies(OUTBOUND_JSON, INBOUND_JSON),
            &node_of,
        );
        assert_eq!(j.failures.len(), 2, "{:?}", j.failures);
        assert!(j.failures[0].contains("outbound proxy reports cipher TLS13_AES_256_GCM_SHA384"));
        assert!(j.failures[0].contains("capture shows TLS13_AES_128_GCM_SHA256"));
    }

    /// A pooled connection (handshake before the capture): version and
    /// cipher come from the proxies, the records still have to be TLS.
    #[test]
    fn pooled_connection_takes_the_negotiation_from_the_proxies() {
        let flows = capture(0x1302, false, &[]);
        let j = judge(
            &flows,
            &tokens(),
            &client(),
            &proxies(OUTBOUND_JSON, INBOUND_JSON),
            &node_of,
        );
        assert_eq!(j.failures, Vec::<String>::new());
        let f = &j.hbone[0];
        assert!(!f.handshake_captured);
        assert_eq!(f.negotiated_from, "proxies");
        assert_eq!(f.cipher.as_deref(), Some("TLS13_AES_256_GCM_SHA384"));
    }

    /// Without the proxies' records there are no peer identities: not mTLS.
    #[test]
    fn no_proxy_records_means_no_identities() {
        let flows = capture(0x1302, true, &[]);
        let unreachable = vec![
            NodeConnections {
                node: "node-1".into(),
                dump: Err("admin API 127.0.0.1:15000: connection refused".into()),
            },
            NodeConnections {
                node: "node-2".into(),
                dump: Ok(ConnectionsDump {
                    connections: vec![],
                }),
            },
        ];
        let j = judge(&flows, &tokens(), &client(), &unreachable, &node_of);
        assert_eq!(j.hbone.len(), 1, "the client's IP still picks the flow");
        assert_eq!(j.hbone[0].client_identity, None);
        assert_eq!(j.failures.len(), 2, "{:?}", j.failures);
        assert!(j.failures[0].contains("(node-1) lists no outbound connection"));
        assert!(j.failures[1].contains("(node-2) lists no inbound connection"));
    }

    /// The proxies disagreeing on who the client was is a failure.
    #[test]
    fn identity_disagreement_between_proxies_fails() {
        let flows = capture(0x1302, true, &[]);
        let inbound = INBOUND_JSON.replace("sa/client", "sa/impostor");
        let j = judge(
            &flows,
            &tokens(),
            &client(),
            &proxies(OUTBOUND_JSON, &inbound),
            &node_of,
        );
        assert_eq!(j.failures.len(), 1, "{:?}", j.failures);
        assert!(j.failures[0].contains("disagree on the client's identity"));
    }

    /// The request sent straight to the pod, in the clear: both tokens are
    /// found on that flow, and with no :15008 flow it is not mTLS.
    #[test]
    fn plaintext_request_on_the_link_fails() {
        let request =
            b"GET /hawser-verify/0123456789abcdef HTTP/1.1\r\nx-hawser-verify: fedcba9876543210\r\n\r\n";
        let segments = [Segment {
            src: addr("10.244.1.5:40200"),
            dst: addr("10.244.2.7:8080"),
            seq: 1,
            flags: 0x18,
            payload: request,
        }];
        let flows = pcap::parse(&write_pcap(&segments)).unwrap().flows();
        let j = judge(&flows, &tokens(), &client(), &[], &node_of);
        assert!(j.hbone.is_empty());
        assert_eq!(j.plaintext.len(), 2);
        assert_eq!(j.plaintext[0].flow.server, addr("10.244.2.7:8080"));
        assert_eq!(j.plaintext[0].direction, Direction::ToServer);
        assert!(j.failures[0].starts_with("no TLS to port 15008 from default/client-0"));
        assert!(j.failures[1].contains("(path) crossed the link on 10.244.1.5:40200"));
    }

    /// Other pods' HBONE connections are neither blamed nor credited.
    #[test]
    fn other_clients_flows_are_set_aside() {
        let other = record(23, &[0xab; 50]);
        let extra = [Segment {
            src: addr("10.244.1.9:40000"),
            dst: addr(SERVER),
            seq: 7,
            flags: 0x18,
            payload: &other,
        }];
        let flows = capture(0x1302, true, &extra);
        let j = judge(
            &flows,
            &tokens(),
            &client(),
            &proxies(OUTBOUND_JSON, INBOUND_JSON),
            &node_of,
        );
        assert_eq!(j.other_hbone_flows, 1);
        assert_eq!(j.hbone.len(), 1);
        assert_eq!(j.failures, Vec::<String>::new());
    }

    #[test]
    fn object_refs_parse() {
        let r: ObjectRef = "default/client-0".parse().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("default", "client-0")
        );
        assert!("client-0".parse::<ObjectRef>().is_err());
        assert!("a/b/c".parse::<ObjectRef>().is_err());
        assert!("/b".parse::<ObjectRef>().is_err());
    }
}
