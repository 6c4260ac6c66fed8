//! Outbound resolution table tests.

use hawser_api::proto::discovery::{
    self as pb, Resource, ResourceName, ResourceType, Snapshot, resource::Kind,
};

use super::*;

fn res(kind: ResourceType, name: &str, k: Kind) -> Resource {
    Resource {
        name: Some(ResourceName {
            r#type: kind as i32,
            name: name.into(),
        }),
        version: 1,
        kind: Some(k),
    }
}

fn workload(uid: &str, ip: &str, enrolled: bool) -> Resource {
    res(
        ResourceType::Workload,
        uid,
        Kind::Workload(pb::Workload {
            uid: uid.into(),
            namespace: "shop".into(),
            name: uid.into(),
            ips: vec![ip.into()],
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/echo".into(),
            enrolled,
            ready: true,
            ..Default::default()
        }),
    )
}

fn endpoint(uid: &str, ip: &str, ready: bool) -> pb::Endpoint {
    pb::Endpoint {
        workload_uid: uid.into(),
        addresses: vec![ip.into()],
        ports: [(80, 8080)].into_iter().collect(),
        ready,
        node: "node-2".into(),
    }
}

fn config(endpoints: Vec<pb::Endpoint>) -> NodeConfig {
    let service = res(
        ResourceType::Service,
        "shop/echo",
        Kind::Service(pb::Service {
            namespace: "shop".into(),
            name: "echo".into(),
            vips: vec!["10.96.0.10".into()],
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port: 80,
                app_protocol: "http".into(),
                protocol: 0,
                ..Default::default()
            }],
            endpoints,
            upgrades: None,
        }),
    );
    NodeConfig::from_snapshot(Snapshot {
        version: 1,
        resources: vec![
            service,
            workload("a", "10.244.2.5", true),
            workload("b", "10.244.2.6", false),
        ],
    })
    .expect("valid config")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[test]
fn vip_resolves_to_a_ready_endpoint_over_hbone() {
    let d = Destinations::new(&config(vec![
        endpoint("a", "10.244.2.5", true),
        endpoint("gone", "10.244.2.9", false),
    ]));
    let balancer = Balancer::default();
    for _ in 0..20 {
        let (route, in_flight) = d.resolve(addr("10.96.0.10:80"), &balancer).expect("route");
        assert!(in_flight.is_some());
        assert_eq!(
            route,
            Route::Hbone {
                target: addr("10.244.2.5:8080"),
                proxy: addr("10.244.2.5:15008"),
                identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/echo").expect("id"),
            }
        );
    }
}

#[test]
fn unenrolled_and_unknown_destinations_are_plain() {
    let d = Destinations::new(&config(vec![endpoint("b", "10.244.2.6", true)]));
    let balancer = Balancer::default();
    let (route, _) = d.resolve(addr("10.96.0.10:80"), &balancer).expect("route");
    assert_eq!(route, Route::Plain(addr("10.244.2.6:8080")));
    // A pod IP dialled directly: used as is.
    let (route, lb) = d
        .resolve(addr("10.244.2.5:9000"), &balancer)
        .expect("route");
    assert!(matches!(route, Route::Hbone { target, .. } if target == addr("10.244.2.5:9000")));
    assert!(lb.is_none());
    let (route, _) = d.resolve(addr("192.0.2.1:443"), &balancer).expect("route");
    assert_eq!(route, Route::Plain(addr("192.0.2.1:443")));
    // Another port of the VIP is not a Service port: passed through.
    let (route, _) = d.resolve(addr("10.96.0.10:81"), &balancer).expect("route");
    assert_eq!(route, Route::Plain(addr("10.96.0.10:81")));
}

#[test]
fn no_ready_endpoint_is_an_error() {
    let d = Destinations::new(&config(vec![endpoint("a", "10.244.2.5", false)]));
    assert_eq!(
        d.resolve(addr("10.96.0.10:80"), &Balancer::default())
            .unwrap_err(),
        OutboundError::NoEndpoints {
            service: "shop/echo".into(),
            port: 80
        }
    );
}

#[test]
fn power_of_two_choices_spreads_load_and_releases_it() {
    let eps: Vec<Endpoint> = (1..=4)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 244, 2, i], 8080)),
            workload_uid: format!("w{i}"),
        })
        .collect();
    let balancer = Balancer::default();
    let held: Vec<_> = (0..400)
        .map(|_| balancer.pick(&eps).expect("pick").1)
        .collect();
    let loads: Vec<usize> = eps.iter().map(|e| balancer.in_flight(e.addr)).collect();
    assert_eq!(loads.iter().sum::<usize>(), 400);
    // P2C keeps every endpoint within a few connections of the mean (100).
    assert!(loads.iter().all(|l| (90..=110).contains(l)), "{loads:?}");
    drop(held);
    assert!(eps.iter().all(|e| balancer.in_flight(e.addr) == 0));
    assert!(balancer.pick(&[]).is_none());
}

#[test]
fn a_retry_pick_skips_the_failed_endpoint_unless_it_is_the_only_one() {
    let eps: Vec<Endpoint> = (1..=3)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 244, 2, i], 8080)),
            workload_uid: format!("w{i}"),
        })
        .collect();
    let balancer = Balancer::default();
    let failed = eps[1].addr;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (e, _) = balancer.pick_excluding(&eps, Some(failed)).expect("pick");
        assert_ne!(e.addr, failed);
        seen.insert(e.addr);
    }
    assert_eq!(seen.len(), 2, "both other endpoints are used");
    let (only, _) = balancer
        .pick_excluding(&eps[1..2], Some(failed))
        .expect("the only endpoint");
    assert_eq!(only.addr, failed);
    assert!(balancer.pick_excluding(&[], Some(failed)).is_none());
}

#[test]
fn counters_of_endpoints_that_went_are_dropped_once_idle() {
    let eps: Vec<Endpoint> = (1..=2)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 244, 2, i], 8080)),
            workload_uid: format!("w{i}"),
        })
        .collect();
    let balancer = Balancer::default();
    let held = balancer.pick(&eps[..1]).expect("pick").1;
    let _ = balancer.pick(&eps[1..]).expect("pick");
    assert_eq!(balancer.tracked(), 2);
    // Neither is live any more; the one with a connection in flight stays.
    balancer.retain(|_| false);
    assert_eq!(balancer.tracked(), 1);
    drop(held);
    balancer.retain(|_| false);
    assert_eq!(balancer.tracked(), 0);
}
