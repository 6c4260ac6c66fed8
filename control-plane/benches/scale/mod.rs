//! Objects at the scale (10k Services, 50k pods, 2k HTTPRoutes over
//! 100 namespaces and 100 nodes), shared by the index benchmark and the
//! discovery push benchmark (`tests/benches/discovery_push.rs`).

#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use hawser_control_plane::index::Update;
use hawser_control_plane::model::{
    BackendRef, HttpMatch, Meta, Namespace, Object, ParentRef, PathMatch, Pod, Route, RouteKind,
    RouteMatch, RouteRule, Service, ServicePort, ServiceType, TargetPort, Timeouts,
    WeightedBackendRef,
};

pub const SERVICES: usize = 10_000;
pub const PODS_PER_SERVICE: usize = 5;
pub const ROUTES: usize = 2_000;
pub const NODES: usize = 100;
pub const NAMESPACES: usize = 100;

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + u32::try_from(n).unwrap()))
}

pub fn pod(svc: usize, i: usize, node: usize, ready: bool) -> Object {
    let ns = format!("ns-{}", svc % NAMESPACES);
    let mut meta = Meta::new(ns, format!("svc-{svc}-{i}"));
    meta.uid = format!("uid-{svc}-{i}");
    meta.labels.insert("app".into(), format!("svc-{svc}"));
    Object::Pod(Pod {
        meta,
        node: Some(format!("node-{node}")),
        ips: vec![ip(svc * PODS_PER_SERVICE + i + 1)],
        service_account: format!("sa-{svc}"),
        ready,
        terminated: false,
        container_ports: Vec::new(),
    })
}

pub fn objects() -> Vec<Update> {
    let mut out = Vec::new();
    for n in 0..NAMESPACES {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("hawser.dev/mesh".into(), "enabled".into());
        out.push(Update::Apply(Object::Namespace(Namespace {
            name: format!("ns-{n}"),
            labels,
        })));
    }
    for s in 0..SERVICES {
        let ns = format!("ns-{}", s % NAMESPACES);
        let mut selector = std::collections::BTreeMap::new();
        selector.insert("app".into(), format!("svc-{s}"));
        out.push(Update::Apply(Object::Service(Service {
            meta: Meta::new(ns, format!("svc-{s}")),
            allowed_upgrades: None,
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(
                0x6460_0000u32 + u32::try_from(s).unwrap(),
            ))],
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: TargetPort::Number(8080),
                app_protocol: Some("http".into()),
            }],
            selector: Some(selector),
        })));
        for i in 0..PODS_PER_SERVICE {
            out.push(Update::Apply(pod(
                s,
                i,
                (s * PODS_PER_SERVICE + i) % NODES,
                true,
            )));
        }
    }
    for r in 0..ROUTES {
        let s = r * (SERVICES / ROUTES);
        let ns = format!("ns-{}", s % NAMESPACES);
        let mut meta = Meta::new(ns, format!("route-{r}"));
        meta.created = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(r as u64));
        let backend = |svc: usize, weight| WeightedBackendRef {
            backend: BackendRef {
                group: String::new(),
                kind: "Service".into(),
                namespace: Some(format!("ns-{}", svc % NAMESPACES)),
                name: format!("svc-{svc}"),
                port: Some(80),
            },
            weight,
            filters: Vec::new(),
        };
        out.push(Update::Apply(Object::Route(Route {
            kind: RouteKind::Http,
            meta,
            parents: vec![ParentRef {
                group: String::new(),
                kind: "Service".into(),
                namespace: None,
                name: format!("svc-{s}"),
                port: Some(80),
                section_name: None,
            }],
            rules: vec![
                RouteRule {
                    name: None,
                    matches: vec![RouteMatch::Http(HttpMatch {
                        path: PathMatch::Prefix("/v2".into()),
                        ..HttpMatch::any()
                    })],
                    filters: Vec::new(),
                    backends: vec![backend(s + 1, 90), backend(s + 2, 10)],
                    timeouts: Timeouts::default(),
                    retry: None,
                },
                RouteRule {
                    name: None,
                    matches: vec![RouteMatch::Http(HttpMatch::any())],
                    filters: Vec::new(),
                    backends: vec![backend(s, 1)],
                    timeouts: Timeouts::default(),
                    retry: None,
                },
            ],
        })));
    }
    out
}
