//! The echo client (`hawser-echo client`): sends N requests to one URL over
//! kept-alive connections (one connection for all of them unless the server
//! closes it; weights are per request, so conformance sends them this way),
//! never follows redirects, and reports every request on its own: status,
//! response headers, the echo body's `key=value` lines, or the error
//! (connection refused, reset, timeout). It never panics on what a server
//! does.
//!
//! Protocols: HTTP/1.1, HTTP/2 cleartext with prior knowledge (`--http2`),
//! and gRPC (`grpc://` URLs or `--grpc`), which calls
//! `hawser.echo.v1.EchoTestService/Echo` over a bare HTTP/2 connection so
//! the HTTP status and headers are reported as received.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::grpc;
use super::response::{self, EchoResponse, canonical_header_name};

/// The largest response body read.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// A URL scheme the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `http://`
    Http,
    /// `grpc://` (cleartext HTTP/2)
    Grpc,
}

/// Where requests go, parsed from a URL such as `http://echo/v1?x=y` or
/// `grpc://echo:7070`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The scheme.
    pub scheme: Scheme,
    /// The host as written (name, IPv4, or bracketed IPv6).
    pub host: String,
    /// The port (80 when absent).
    pub port: u16,
    /// Path and query as written (`/` when absent).
    pub path_and_query: String,
}

/// Why a URL is not a usable target. The message names the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL {url:?}: {reason}")]
pub struct TargetError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| TargetError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if !url.contains("://") {
            return Err(err("missing scheme (expected http:// or grpc://)"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(&e.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("grpc") => Scheme::Grpc,
            Some(other) => {
                return Err(err(&format!(
                    "unsupported scheme {other:?} (expected http or grpc; TLS is the mesh's job)"
                )));
            }
            None => return Err(err("missing scheme (expected http:// or grpc://)")),
        };
        let written_authority = url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        if written_authority.contains('@') {
            return Err(err("user info is not supported"));
        }
        let authority = uri.authority().ok_or_else(|| err("missing host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(err("missing host"));
        }
        // The port as written (after the last ':' not inside an IPv6 literal).
        let written_port = written_authority
            .rsplit_once(':')
            .filter(|(_, p)| !p.contains(']'))
            .map(|(_, p)| p);
        let port = match written_port {
            None => 80,
            Some("") => return Err(err("empty port")),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(&format!("invalid port {p:?} (expected 1 to 65535)")))?,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        })
    }
}

impl Target {
    /// The authority a request carries by default: the host, plus the port
    /// unless it is 80 (as Go's client and upstream conformance send it).
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Grpc => "grpc",
        };
        format!("{scheme}://{}{}", self.authority(), self.path_and_query)
    }
}

/// The wire protocol of the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 cleartext, prior knowledge.
    Http2,
    /// gRPC over HTTP/2 cleartext.
    Grpc,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The URL.
    pub target: Target,
    /// The HTTP method (gRPC always uses POST).
    pub method: Method,
    /// Extra headers (gRPC: metadata), in order. A `Host` header replaces the
    /// URL's authority (HTTP/2 and gRPC: the `:authority`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How many requests (at least 1).
    pub count: usize,
    /// HTTP/1.1, h2c or gRPC.
    pub protocol: Protocol,
    /// Limit per request, connecting included.
    pub timeout: Duration,
    /// Dial this address instead of resolving the URL's host (the Host
    /// header still names the URL's host).
    pub connect_to: Option<SocketAddr>,
    /// The HTTP request body.
    pub body: Bytes,
    /// The gRPC `EchoRequest.message`.
    pub message: String,
}

impl ClientOptions {
    /// One GET (or one gRPC `Echo` for `grpc://`) with a 5 s timeout.
    pub fn new(target: Target) -> Self {
        let protocol = match target.scheme {
            Scheme::Http => Protocol::Http1,
            Scheme::Grpc => Protocol::Grpc,
        };
        Self {
            target,
            method: Method::GET,
            headers: Vec::new(),
            count: 1,
            protocol,
            timeout: Duration::from_secs(5),
            connect_to: None,
            body: Bytes::new(),
            message: String::new(),
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// 0-based request number.
    pub index: usize,
    /// Which connection carried it (0-based, in the order they were opened);
    /// absent when none could be opened.
    pub connection: Option<usize>,
    /// The URL requested.
    pub url: String,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The gRPC status (from trailers, or headers for trailers-only answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// The gRPC status message, percent-decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    /// Response headers, lower-case names, values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Response trailers (gRPC), lower-case names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trailers: BTreeMap<String, Vec<String>>,
    /// The echo lines of the body (gRPC: of the message, or of the status
    /// message when the call failed).
    pub body: EchoResponse,
    /// `Hostname=` of the body: the pod that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Why no response arrived (or the gRPC body did not decode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Time from the start of the request to the end of its body.
    pub elapsed_ms: f64,
}

impl Outcome {
    fn failed(index: usize, url: &str, connection: Option<usize>, error: String) -> Self {
        Self {
            index,
            connection,
            url: url.to_owned(),
            status: None,
            grpc_status: None,
            grpc_message: None,
            headers: BTreeMap::new(),
            trailers: BTreeMap::new(),
            body: EchoResponse::default(),
            hostname: None,
            error: Some(error),
            elapsed_ms: 0.0,
        }
    }

    /// The values of response header `name` (any case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

/// Totals over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that got a response.
    pub responses: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Connections opened.
    pub connections: usize,
    /// Responses per HTTP status.
    pub status_codes: BTreeMap<u16, usize>,
    /// Responses per `Hostname=`.
    pub hostnames: BTreeMap<String, usize>,
}

/// The `--json` document: every outcome and the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One per request, in order.
    pub outcomes: Vec<Outcome>,
    /// Totals.
    pub summary: Summary,
}

impl Report {
    /// Builds the report of `outcomes`.
    pub fn new(outcomes: Vec<Outcome>) -> Self {
        let summary = summarize(&outcomes);
        Self { outcomes, summary }
    }
}

/// Totals over `outcomes`.
pub fn summarize(outcomes: &[Outcome]) -> Summary {
    let mut s = Summary {
        requests: outcomes.len(),
        responses: 0,
        errors: 0,
        connections: 0,
        status_codes: BTreeMap::new(),
        hostnames: BTreeMap::new(),
    };
    let mut connections = std::collections::BTreeSet::new();
    for o in outcomes {
        if let Some(c) = o.connection {
            connections.insert(c);
        }
        if o.error.is_some() {
            s.errors += 1;
        }
        if let Some(status) = o.status {
            s.responses += 1;
            *s.status_codes.entry(status).or_default() += 1;
        }
        if let Some(h) = &o.hostname {
            *s.hostnames.entry(h.clone()).or_default() += 1;
        }
    }
    s.connections = connections.len();
    s
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

struct Live {
    id: usize,
    sender: Sender,
}

/// The one kept-alive connection of a run, reopened when the server closes it.
struct Connection {
    live: Option<Live>,
    opened: usize,
}

impl Connection {
    async fn ready(&mut self, opts: &ClientOptions) -> Result<&mut Live, (Option<usize>, String)> {
        if let Some(mut live) = self.live.take() {
            let ready = match &mut live.sender {
                Sender::H1(s) => s.ready().await.is_ok(),
                Sender::H2(s) => s.ready().await.is_ok(),
            };
            if ready {
                return Ok(self.live.insert(live));
            }
        }
        let addr = resolve(opts).await.map_err(|e| (None, e))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| (None, format!("connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let id = self.opened;
        let sender = match opts.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(|e| {
                    (
                        Some(id),
                        format!("HTTP/1.1 handshake with {addr}: {}", chain(&e)),
                    )
                })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended");
                    }
                });
                Sender::H1(sender)
            }
            Protocol::Http2 | Protocol::Grpc => {
                let (sender, conn) =
                    http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| {
                            (
                                Some(id),
                                format!("HTTP/2 handshake with {addr}: {}", chain(&e)),
                            )
                        })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended");
                    }
                });
                Sender::H2(sender)
            }
        };
        self.opened += 1;
        Ok(self.live.insert(Live { id, sender }))
    }
}

async fn resolve(opts: &ClientOptions) -> Result<SocketAddr, String> {
    if let Some(addr) = opts.connect_to {
        return Ok(addr);
    }
    let host = opts
        .target
        .host
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut addrs = tokio::net::lookup_host((host, opts.target.port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("resolve {host}: no addresses"))
}

/// An error and its causes, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            let _ = write!(text, ": {s_text}");
        }
        source = s.source();
    }
    text
}

/// Sends `opts.count` requests, one after the other, and reports each.
pub async fn run(opts: &ClientOptions) -> Vec<Outcome> {
    let mut connection = Connection {
        live: None,
        opened: 0,
    };
    let url = opts.target.url();
    let mut outcomes = Vec::with_capacity(opts.count);
    for index in 0..opts.count.max(1) {
        let started = Instant::now();
        let mut used = None;
        let result = tokio::time::timeout(
            opts.timeout,
            send_one(&mut connection, opts, index, &url, &mut used),
        )
        .await;
        let mut outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                // The connection's state is unknown after a timeout.
                connection.live = None;
                Outcome::failed(
                    index,
                    &url,
                    used,
                    format!(
                        "timed out after {}",
                        super::duration::format_duration(opts.timeout)
                    ),
                )
            }
        };
        outcome.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        outcomes.push(outcome);
    }
    outcomes
}

async fn send_one(
    connection: &mut Connection,
    opts: &ClientOptions,
    index: usize,
    url: &str,
    used: &mut Option<usize>,
) -> Outcome {
    let request = match build_request(opts) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(index, url, None, e),
    };
    let live = match connection.ready(opts).await {
        Ok(live) => live,
        Err((id, e)) => return Outcome::failed(index, url, id, e),
    };
    let id = live.id;
    *used = Some(id);
    let sent = match &mut live.sender {
        Sender::H1(s) => s.send_request(request).await,
        Sender::H2(s) => s.send_request(request).await,
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            connection.live = None;
            return Outcome::failed(index, url, Some(id), chain(&e));
        }
    };
    let (parts, body) = response.into_parts();
    let collected = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
        Ok(c) => c,
        Err(e) => {
            connection.live = None;
            let mut failed = Outcome::failed(
                index,
                url,
                Some(id),
                format!("reading the response body: {}", chain(e.as_ref())),
            );
            failed.status = Some(parts.status.as_u16());
            failed.headers = multimap(&parts.headers);
            return failed;
        }
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let bytes = collected.to_bytes();
    let mut outcome = Outcome {
        index,
        connection: Some(id),
        url: url.to_owned(),
        status: Some(parts.status.as_u16()),
        grpc_status: None,
        grpc_message: None,
        headers: multimap(&parts.headers),
        trailers: multimap(&trailers),
        body: EchoResponse::default(),
        hostname: None,
        error: None,
        elapsed_ms: 0.0,
    };
    if opts.protocol == Protocol::Grpc {
        let grpc_field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        match grpc_field("grpc-status").map(|s| s.trim().parse::<u32>()) {
            Some(Ok(code)) => outcome.grpc_status = Some(code),
            Some(Err(_)) => outcome.error = Some("grpc-status is not a number".to_owned()),
            None => {
                outcome.error = Some(format!(
                    "no grpc-status in the response (HTTP {})",
                    parts.status.as_u16()
                ));
            }
        }
        outcome.grpc_message = grpc_field("grpc-message").map(|m| percent_decode(&m));
        match grpc::decode_response(&bytes) {
            Ok(Some(message)) => outcome.body = response::parse(&message.message),
            Ok(None) => {
                if let Some(m) = &outcome.grpc_message {
                    outcome.body = response::parse(m);
                }
            }
            Err(e) => outcome.error = Some(e.to_string()),
        }
    } else {
        outcome.body = response::parse_bytes(&bytes);
    }
    outcome.hostname = outcome.body.hostname().map(str::to_owned);
    outcome
}

fn build_request(opts: &ClientOptions) -> Result<Request<Full<Bytes>>, String> {
    let host_override = opts
        .headers
        .iter()
        .rev()
        .find(|(n, _)| *n == HOST)
        .map(|(_, v)| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| "the Host header is not text".to_owned())
        })
        .transpose()?;
    let authority = host_override.unwrap_or_else(|| opts.target.authority());
    let grpc = opts.protocol == Protocol::Grpc;
    let path = if grpc && opts.target.path_and_query == "/" {
        grpc::ECHO_PATH
    } else {
        &opts.target.path_and_query
    };
    let uri = match opts.protocol {
        Protocol::Http1 => Uri::try_from(path),
        Protocol::Http2 | Protocol::Grpc => Uri::try_from(format!("http://{authority}{path}")),
    }
    .map_err(|e| format!("cannot request {authority}{path}: {e}"))?;
    let mut builder = Request::builder().uri(uri);
    builder = if grpc {
        builder.method(Method::POST)
    } else {
        builder.method(opts.method.clone())
    };
    let headers = builder
        .headers_mut()
        .ok_or_else(|| "invalid request".to_owned())?;
    if opts.protocol == Protocol::Http1 {
        let value =
            HeaderValue::from_str(&authority).map_err(|_| format!("invalid Host {authority:?}"))?;
        headers.insert(HOST, value);
    }
    headers.insert(USER_AGENT, HeaderValue::from_static("hawser-echo"));
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
    }
    let mut replaced = std::collections::HashSet::new();
    for (name, value) in &opts.headers {
        if *name == HOST {
            continue;
        }
        // A header given on the command line replaces a default one, and
        // repeats append.
        if replaced.insert(name.clone()) {
            headers.remove(name);
        }
        headers.append(name.clone(), value.clone());
    }
    let body = if grpc {
        grpc::encode_request(&opts.message)
    } else {
        opts.body.clone()
    };
    builder
        .body(Full::new(body))
        .map_err(|e| format!("invalid request: {e}"))
}

fn multimap(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    map
}

/// Decodes `%XX` escapes (gRPC's `grpc-message` encoding); anything else is kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a `-H` argument: `Name: value` or `Name:value`.
pub fn parse_header(arg: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| format!("invalid header {arg:?}: expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {:?} in {arg:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid header value {:?} in {arg:?}", value.trim()))?;
    Ok((name, value))
}

/// The text report, as Istio's echo client prints it: `[i] StatusCode=`,
/// `[i] ResponseHeader=Name:value`, `[i body] key=value`, `[i error] ...`,
/// then a summary line.
pub fn format_text(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let i = o.index;
        let _ = writeln!(out, "[{i}] Url={}", o.url);
        if let Some(c) = o.connection {
            let _ = writeln!(out, "[{i}] Connection={c}");
        }
        if let Some(status) = o.status {
            let _ = writeln!(out, "[{i}] StatusCode={status}");
        }
        if let Some(code) = o.grpc_status {
            let _ = writeln!(out, "[{i}] GrpcStatus={code}");
        }
        for (name, values) in o.headers.iter().chain(o.trailers.iter()) {
            for value in values {
                let _ = writeln!(
                    out,
                    "[{i}] ResponseHeader={}:{value}",
                    canonical_header_name(name)
                );
            }
        }
        for (key, value) in &o.body.fields {
            let _ = writeln!(out, "[{i} body] {key}={value}");
        }
        for line in &o.body.other_lines {
            let _ = writeln!(out, "[{i} body] {line}");
        }
        if let Some(e) = &o.error {
            let _ = writeln!(out, "[{i} error] {e}");
        }
    }
    let s = summarize(outcomes);
    let join = |m: Vec<String>| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            m.join(",")
        }
    };
    let codes = join(
        s.status_codes
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect(),
    );
    let hosts = join(
        s.hostnames
            .iter()
            .map(|(h, n)| format!("{h}:{n}"))
            .collect(),
    );
    let _ = writeln!(
        out,
        "Summary: requests={} responses={} errors={} connections={} statusCodes={codes} hostnames={hosts}",
        s.requests, s.responses, s.errors, s.connections
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: Target = "http://echo/v1?x=y".parse().unwrap();
        assert_eq!(
            t,
            Target {
                scheme: Scheme::Http,
                host: "echo".into(),
                port: 80,
                path_and_query: "/v1?x=y".into()
            }
        );
        assert_eq!(t.authority(), "echo");
        let t: Target = "grpc://echo:7070".parse().unwrap();
        assert_eq!(
            (t.scheme, t.port, t.path_and_query.as_str()),
            (Scheme::Grpc, 7070, "/")
        );
        assert_eq!(t.authority(), "echo:7070");
        let t: Target = "http://[::1]:8080/".parse().unwrap();
        assert_eq!(t.authority(), "[::1]:8080");
    }

    #[test]
    fn refuses_bad_targets_naming_them() {
        for (url, why) in [
            ("https://echo/", "unsupported scheme"),
            ("echo/path", "missing scheme"),
            ("http://", "invalid URL"),
            ("http://u@echo/", "user info"),
            ("http://echo:99999/", "invalid port \"99999\""),
            ("http://echo:/", "empty port"),
        ] {
            let e = url.parse::<Target>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }

    #[test]
    fn parses_header_args() {
        let (n, v) = parse_header("X-Test: a b").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-test", "a b"));
        let (n, v) = parse_header("k:v:w").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("k", "v:w"));
        assert!(parse_header("novalue").unwrap_err().contains("novalue"));
        assert!(
            parse_header("bad name: x")
                .unwrap_err()
                .contains("bad name")
        );
    }

    #[test]
    fn decodes_grpc_messages() {
        assert_eq!(percent_decode("a%0Ab%zz%4"), "a\nb%zz%4");
    }

    #[test]
    fn summary_counts_per_status_and_host() {
        let mut a = Outcome::failed(0, "u", Some(0), "x".into());
        a.error = None;
        a.status = Some(200);
        a.hostname = Some("h1".into());
        let mut b = a.clone();
        b.index = 1;
        b.connection = Some(1);
        b.status = Some(503);
        let c = Outcome::failed(2, "u", None, "refused".into());
        let s = summarize(&[a, b, c]);
        assert_eq!(
            (s.requests, s.responses, s.errors, s.connections),
            (3, 2, 1, 2)
        );
        assert_eq!(s.status_codes, BTreeMap::from([(200, 1), (503, 1)]));
        assert_eq!(s.hostnames, BTreeMap::from([("h1".to_owned(), 2)]));
    }
}
