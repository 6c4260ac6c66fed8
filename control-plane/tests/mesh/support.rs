//! Test support: a mesh built from manifest files (through the real
//! manifest source and index), its per-node config as protobuf, and a
//! reference evaluation of a request against that config, following the
//! contract documented in `api/proto/discovery.proto`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use hawser_api::proto::discovery as pb;
use hawser_control_plane::index::{IndexConfig, SharedIndex};
use hawser_control_plane::model::{ObjectKey, RouteKind, RouteRef};
use hawser_control_plane::sources::manifests::{ManifestConfig, ManifestReport, ManifestSource};
use hawser_control_plane::status::{Condition, ConditionType, RouteStatus};
use hawser_control_plane::translate;

/// A mesh read from a temporary manifest directory.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub index: SharedIndex,
    pub source: ManifestSource,
}

impl Mesh {
    /// Writes `files` and scans them.
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write manifest");
        }
        let index = SharedIndex::new(IndexConfig::default());
        let mut source = ManifestSource::new(ManifestConfig::new(dir.path()), index.clone());
        source.scan();
        Self { dir, index, source }
    }

    /// Replaces (or adds) one file and rescans.
    pub fn write(&mut self, name: &str, contents: &str) -> u64 {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write manifest");
        // Make the change visible even within one mtime tick.
        self.source.scan()
    }

    /// Removes one file and rescans.
    pub fn remove(&mut self, name: &str) -> u64 {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove manifest");
        self.source.scan()
    }

    pub fn report(&self) -> ManifestReport {
        (*self.source.report().borrow()).as_ref().clone()
    }

    /// The config node `node` would receive, decoded.
    pub fn view(&self, node: &str) -> View {
        let snapshot = translate::snapshot(&self.index.read().snapshot(node));
        // Through the wire encoding, as a node proxy would get it.
        let bytes = prost::Message::encode_to_vec(&snapshot);
        let snapshot: pb::Snapshot =
            prost::Message::decode(bytes.as_slice()).expect("decode snapshot");
        View::from_snapshot(&snapshot)
    }

    pub fn status(&self, kind: RouteKind, ns: &str, name: &str) -> RouteStatus {
        let r = RouteRef {
            kind,
            key: ObjectKey::new(ns, name),
        };
        self.index
            .read()
            .route_status(&r)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {r}"))
    }

    pub fn http_status(&self, ns: &str, name: &str) -> RouteStatus {
        self.status(RouteKind::Http, ns, name)
    }
}

/// The condition `kind` of the first parent of `status`.
pub fn condition(status: &RouteStatus, kind: ConditionType) -> Condition {
    status
        .parents
        .first()
        .and_then(|p| p.condition(kind))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} condition in\n{status}"))
}

/// A node's decoded config.
#[derive(Debug, Default)]
pub struct View {
    pub services: BTreeMap<(String, String), pb::Service>,
    pub routes: BTreeMap<(String, String), pb::ServiceRoutes>,
    pub workloads: BTreeMap<String, pb::Workload>,
    pub policies: BTreeMap<(String, String), pb::AuthorizationPolicy>,
    pub version: u64,
}

/// A request as a client pod sends it.
#[derive(Debug, Clone)]
pub struct Request {
    pub client_ns: String,
    /// Destination IP (a VIP or a pod IP) and port.
    pub ip: String,
    pub port: u32,
    /// `Host` (for redirects).
    pub host: String,
    pub method: String,
    /// Path with query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub grpc: bool,
}

/// Where a share of requests ends up.
#[derive(Debug, Clone, PartialEq)]
pub enum Leg {
    /// No rule matched (404 / gRPC UNIMPLEMENTED).
    NotFound,
    /// Answered with a redirect.
    Redirect { status: u32, location: String },
    /// 500: invalid backend or nothing to forward to.
    ServerError(String),
    /// Forwarded.
    Backend(Box<Forwarded>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// The Service the request went to (None: straight to a pod IP).
    pub service: Option<(String, String)>,
    pub port: u32,
    /// Names of the pods that may answer.
    pub pods: Vec<String>,
    /// Request headers as the backend sees them (lower-case names, in order).
    pub headers: Vec<(String, String)>,
    /// Path (with query) as the backend sees it.
    pub path: String,
    /// Response headers the proxy sets/adds (lower-case names).
    pub response_headers: Vec<(String, String)>,
    pub removed_response_headers: Vec<String>,
    /// The rule that matched (None: no route).
    pub rule: Option<pb::Rule>,
    /// Mirrors: (service namespace, name, port, numerator, denominator).
    pub mirrors: Vec<(String, String, u32, u32, u32)>,
}

impl Forwarded {
    /// The header as the backend sees it, values joined with ','.
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        joined(&self.response_headers, name)
    }
}

fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

impl View {
    pub fn from_snapshot(s: &pb::Snapshot) -> Self {
        let mut v = View {
            version: s.version,
            ..View::default()
        };
        for r in &s.resources {
            match r.kind.clone().expect("resource kind") {
                pb::resource::Kind::Workload(w) => {
                    v.workloads.insert(w.uid.clone(), w);
                }
                pb::resource::Kind::Service(svc) => {
                    v.services
                        .insert((svc.namespace.clone(), svc.name.clone()), svc);
                }
                pb::resource::Kind::ServiceRoutes(rt) => {
                    v.routes.insert((rt.namespace.clone(), rt.name.clone()), rt);
                }
                pb::resource::Kind::AuthorizationPolicy(p) => {
                    v.policies.insert((p.namespace.clone(), p.name.clone()), p);
                }
            }
        }
        v
    }

    pub fn service(&self, ns: &str, name: &str) -> &pb::Service {
        self.services
            .get(&(ns.into(), name.into()))
            .unwrap_or_else(|| panic!("no service {ns}/{name}"))
    }

    pub fn vip(&self, ns: &str, name: &str) -> String {
        self.service(ns, name)
            .vips
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("{ns}/{name} has no VIP"))
    }

    pub fn workload_by_name(&self, ns: &str, name: &str) -> Option<&pb::Workload> {
        self.workloads
            .values()
            .find(|w| w.namespace == ns && w.name == name)
    }

    /// The table a client in `client_ns` uses for `service`:`port` (None: no route).
    pub fn table(
        &self,
        ns: &str,
        name: &str,
        port: u32,
        client_ns: &str,
    ) -> Option<&pb::RouteTable> {
        let routes = self.routes.get(&(ns.into(), name.into()))?;
        let port = routes.ports.iter().find(|p| p.port == port)?;
        port.consumers
            .iter()
            .find(|c| c.namespace == client_ns)
            .and_then(|c| c.table.as_ref())
            .or(port.producer.as_ref())
    }

    fn pods_of(&self, ns: &str, name: &str) -> Vec<String> {
        let Some(svc) = self.services.get(&(ns.into(), name.into())) else {
            return Vec::new();
        };
        let mut pods: Vec<String> = svc
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| self.workloads.get(&e.workload_uid).map(|w| w.name.clone()))
            .collect();
        pods.sort();
        pods
    }

    /// Evaluates `req`: every leg with its share of requests.
    pub fn send(&self, req: &Request) -> Vec<(f64, Leg)> {
        let service = self
            .services
            .values()
            .find(|s| s.vips.contains(&req.ip) && s.ports.iter().any(|p| p.port == req.port));
        let Some(service) = service else {
            // Not a Service: straight to the pod with that IP, no route.
            let pods = self
                .workloads
                .values()
                .filter(|w| w.ips.contains(&req.ip))
                .map(|w| w.name.clone())
                .collect();
            return vec![(1.0, Leg::Backend(Box::new(plain(req, None, pods))))];
        };
        let key = (service.namespace.clone(), service.name.clone());
        let Some(table) = self.table(&key.0, &key.1, req.port, &req.client_ns) else {
            let pods = self.pods_of(&key.0, &key.1);
            return vec![(1.0, Leg::Backend(Box::new(plain(req, Some(key), pods))))];
        };
        let Some((entry, prefix)) = table
            .matches
            .iter()
            .find_map(|m| matches(m, req).map(|p| (m, p)))
        else {
            return vec![(1.0, Leg::NotFound)];
        };
        let rule = &table.rules[entry.rule as usize];
        let mut state = plain(req, None, Vec::new());
        state.rule = Some(rule.clone());
        for f in &rule.filters {
            if let Some(leg) = apply_filter(f, req, &prefix, &mut state) {
                return vec![(1.0, leg)];
            }
        }
        let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return vec![(1.0, Leg::ServerError("no backend with weight > 0".into()))];
        }
        rule.backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| {
                let share = f64::from(b.weight) / total as f64;
                let leg = match b.target.as_ref().expect("backend target") {
                    pb::weighted_backend::Target::Invalid(i) => Leg::ServerError(i.reason.clone()),
                    pb::weighted_backend::Target::Service(s) => {
                        let mut fwd = state.clone();
                        fwd.service = Some((s.namespace.clone(), s.name.clone()));
                        fwd.port = s.port;
                        fwd.pods = self.pods_of(&s.namespace, &s.name);
                        let mut leg = None;
                        for f in &b.filters {
                            if let Some(l) = apply_filter(f, req, &prefix, &mut fwd) {
                                leg = Some(l);
                            }
                        }
                        leg.unwrap_or(Leg::Backend(Box::new(fwd)))
                    }
                };
                (share, leg)
            })
            .collect()
    }

    /// The single leg of a request (panics if it splits).
    pub fn send_one(&self, req: &Request) -> Leg {
        let mut legs = self.send(req);
        assert_eq!(legs.len(), 1, "request splits across {legs:?}");
        legs.remove(0).1
    }

    /// The single forwarded leg (panics otherwise).
    pub fn forward(&self, req: &Request) -> Forwarded {
        match self.send_one(req) {
            Leg::Backend(f) => *f,
            other => panic!("expected a forwarded request for {req:?}, got {other:?}"),
        }
    }
}

fn plain(req: &Request, service: Option<(String, String)>, pods: Vec<String>) -> Forwarded {
    Forwarded {
        service,
        port: req.port,
        pods,
        headers: req
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect(),
        path: req.path.clone(),
        response_headers: Vec::new(),
        removed_response_headers: Vec::new(),
        rule: None,
        mirrors: Vec::new(),
    }
}

fn split_path(path: &str) -> (&str, &str) {
    match path.split_once('?') {
        Some((p, q)) => (if p.is_empty() { "/" } else { p }, q),
        None => (if path.is_empty() { "/" } else { path }, ""),
    }
}

fn first_header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn normalize(prefix: &str) -> &str {
    let t = prefix.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// Whether `entry` matches; Some(matched prefix) if so.
fn matches(entry: &pb::MatchEntry, req: &Request) -> Option<String> {
    match entry.kind.as_ref()? {
        pb::match_entry::Kind::Http(m) => {
            if req.grpc {
                return None;
            }
            let (path, query) = split_path(&req.path);
            let prefix = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(pb::path_match::Kind::Exact(e)) => {
                    if path != e {
                        return None;
                    }
                    e.clone()
                }
                Some(pb::path_match::Kind::Prefix(p)) => {
                    let p = normalize(p);
                    let ok = p == "/" || path == p || path.starts_with(&format!("{p}/"));
                    if !ok {
                        return None;
                    }
                    p.to_string()
                }
                None => "/".into(),
            };
            if !m.method.is_empty() && m.method != req.method {
                return None;
            }
            for h in &m.headers {
                if first_header(req, &h.name) != Some(h.value.as_str()) {
                    return None;
                }
            }
            for q in &m.query_params {
                let first = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| *k == q.name)
                    .map(|(_, v)| v);
                if first != Some(q.value.as_str()) {
                    return None;
                }
            }
            Some(prefix)
        }
        pb::match_entry::Kind::Grpc(m) => {
            if !req.grpc {
                return None;
            }
            let (path, _) = split_path(&req.path);
            let mut parts = path.trim_start_matches('/').splitn(2, '/');
            let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if (!m.service.is_empty() && m.service != service)
                || (!m.method.is_empty() && m.method != method)
            {
                return None;
            }
            for h in &m.headers {
                if first_header(req, &h.name) != Some(h.value.as_str()) {
                    return None;
                }
            }
            Some("/".into())
        }
    }
}

fn modify(headers: &mut Vec<(String, String)>, m: &pb::HeaderModifier) {
    for h in &m.set {
        headers.retain(|(n, _)| *n != h.name);
        headers.push((h.name.clone(), h.value.clone()));
    }
    for h in &m.add {
        headers.push((h.name.clone(), h.value.clone()));
    }
    for r in &m.remove {
        headers.retain(|(n, _)| n != r);
    }
}

fn rewrite(path_and_query: &str, m: &pb::PathModifier, prefix: &str) -> String {
    let (path, query) = split_path(path_and_query);
    let new = match m.kind.as_ref() {
        Some(pb::path_modifier::Kind::ReplaceFullPath(p)) => p.clone(),
        Some(pb::path_modifier::Kind::ReplacePrefixMatch(r)) => {
            let rest = if prefix == "/" {
                path
            } else {
                &path[prefix.len().min(path.len())..]
            };
            let base = r.trim_end_matches('/');
            if rest.is_empty() || rest == "/" {
                if base.is_empty() {
                    "/".to_string()
                } else {
                    base.to_string()
                }
            } else {
                format!(
                    "{base}{}",
                    if rest.starts_with('/') {
                        rest.to_string()
                    } else {
                        format!("/{rest}")
                    }
                )
            }
        }
        None => path.to_string(),
    };
    if query.is_empty() {
        new
    } else {
        format!("{new}?{query}")
    }
}

fn apply_filter(f: &pb::Filter, req: &Request, prefix: &str, fwd: &mut Forwarded) -> Option<Leg> {
    match f.kind.as_ref().expect("filter kind") {
        pb::filter::Kind::RequestHeaderModifier(m) => modify(&mut fwd.headers, m),
        pb::filter::Kind::ResponseHeaderModifier(m) => {
            modify(&mut fwd.response_headers, m);
            fwd.removed_response_headers
                .extend(m.remove.iter().cloned());
        }
        pb::filter::Kind::UrlRewrite(r) => {
            if !r.hostname.is_empty() {
                fwd.headers.retain(|(n, _)| n != "host");
                fwd.headers.push(("host".into(), r.hostname.clone()));
            }
            if let Some(p) = &r.path {
                fwd.path = rewrite(&fwd.path, p, prefix);
            }
        }
        pb::filter::Kind::RequestMirror(m) => {
            let b = m.backend.as_ref().expect("mirror backend");
            fwd.mirrors.push((
                b.namespace.clone(),
                b.name.clone(),
                b.port,
                m.numerator,
                m.denominator,
            ));
        }
        pb::filter::Kind::RequestRedirect(r) => {
            let scheme = if r.scheme.is_empty() {
                "http"
            } else {
                r.scheme.as_str()
            };
            let (host, req_port) = match req.host.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().unwrap_or(req.port)),
                None => (req.host.clone(), req.port),
            };
            let host = if r.hostname.is_empty() {
                host
            } else {
                r.hostname.clone()
            };
            let port = match r.port {
                Some(p) => p,
                None if !r.scheme.is_empty() => {
                    if scheme == "https" {
                        443
                    } else {
                        80
                    }
                }
                None => req_port,
            };
            let default = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
            let path = match &r.path {
                Some(p) => rewrite(&req.path, p, prefix),
                None => req.path.clone(),
            };
            let authority = if default {
                host
            } else {
                format!("{host}:{port}")
            };
            return Some(Leg::Redirect {
                status: r.status_code,
                location: format!("{scheme}://{authority}{path}"),
            });
        }
    }
    None
}

/// A plain HTTP GET from `client_ns` to `ip`:`port`.
pub fn get(client_ns: &str, ip: &str, port: u32, path: &str) -> Request {
    Request {
        client_ns: client_ns.into(),
        ip: ip.into(),
        port,
        host: "svc".into(),
        method: "GET".into(),
        path: path.into(),
        headers: Vec::new(),
        grpc: false,
    }
}

impl Request {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    pub fn grpc(mut self) -> Self {
        self.grpc = true;
        self
    }
}

/// Shares per backend Service name (invalid backends under "<500>").
pub fn shares(legs: &[(f64, Leg)]) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (share, leg) in legs {
        let k = match leg {
            Leg::Backend(f) => f.service.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
            Leg::ServerError(_) => "<500>".into(),
            Leg::NotFound => "<404>".into(),
            Leg::Redirect { .. } => "<redirect>".into(),
        };
        *out.entry(k).or_insert(0.0) += share;
    }
    out
}
