//! The inbound handler against a real app socket (in this test's network
//! namespace, over loopback) with policies from a node config.

use hawser_api::proto::discovery::{
    self as pb, AuthorizationAction, AuthorizationRule, Resource, ResourceName, Snapshot, Source,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn config(policies: Vec<AuthorizationPolicy>) -> Arc<NodeConfig> {
    let names = policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut resources = vec![res(
        ResourceType::Workload,
        "uid-api",
        Kind::Workload(pb::Workload {
            uid: "uid-api".into(),
            namespace: "shop".into(),
            name: "api".into(),
            ips: vec!["127.0.0.1".into()],
            enrolled: true,
            authorization_policies: names,
            ..Default::default()
        }),
    )];
    for p in policies {
        let name = format!("{}/{}", p.namespace, p.name);
        resources.push(res(
            ResourceType::AuthorizationPolicy,
            &name,
            Kind::AuthorizationPolicy(p),
        ));
    }
    Arc::new(
        NodeConfig::from_snapshot(Snapshot {
            version: 1,
            resources,
        })
        .expect("config"),
    )
}

fn deny_web() -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: "shop".into(),
        name: "deny-web".into(),
        action: AuthorizationAction::Deny as i32,
        mode: 0,
        rules: vec![AuthorizationRule {
            from: vec![Source {
                namespace: "shop".into(),
                service_account: "web".into(),
                ..Default::default()
            }],
            to: None,
        }],
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).expect("id")
}

#[tokio::test]
async fn admits_connects_to_the_app_and_applies_policy_changes_at_once() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app");
    let target = app.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            let _ = s.write_all(b"hello from the app").await;
        }
    });
    let (tx, rx) = watch::channel(config(vec![]));
    let inbound = PodInbound::new(
        "uid-api",
        vec!["127.0.0.1".parse().expect("ip")],
        NetnsHandle::current().expect("netns"),
        rx,
    );
    let peer_addr: SocketAddr = "10.244.1.5:40000".parse().expect("addr");

    let mut up = inbound
        .connect(&id("web"), peer_addr, target)
        .await
        .expect("admitted");
    let mut got = String::new();
    up.read_to_string(&mut got).await.expect("read");
    assert_eq!(got, "hello from the app");

    // A policy arrives: the next connection from web is refused, others pass.
    tx.send_replace(config(vec![deny_web()]));
    match inbound.connect(&id("web"), peer_addr, target).await {
        Err(Refusal::Denied(reason)) => assert!(reason.contains("shop/deny-web"), "{reason}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(inbound.connect(&id("api"), peer_addr, target).await.is_ok());
    let stats = inbound.stats();
    assert_eq!(stats.denied.load(Ordering::Relaxed), 1);
    assert_eq!(stats.allowed.load(Ordering::Relaxed), 2);

    // Not this pod's address: refused before any policy or connect.
    let elsewhere: SocketAddr = "10.244.9.9:80".parse().expect("addr");
    assert!(matches!(
        inbound.connect(&id("api"), peer_addr, elsewhere).await,
        Err(Refusal::UnknownTarget(_))
    ));
    // Nothing listening: unreachable, with the address in the reason.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    match inbound.connect(&id("api"), peer_addr, closed).await {
        Err(Refusal::Unreachable(reason)) => {
            assert!(reason.contains(&closed.to_string()), "{reason}")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn plaintext_is_allowed_unless_a_policy_needs_an_identity() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app");
    let target = app.local_addr().expect("addr");
    tokio::spawn(async move { while app.accept().await.is_ok() {} });
    let allow_api = AuthorizationPolicy {
        namespace: "shop".into(),
        name: "allow-api".into(),
        action: AuthorizationAction::Allow as i32,
        mode: 0,
        rules: vec![AuthorizationRule {
            from: vec![Source {
                service_account: "api".into(),
                namespace: "shop".into(),
                ..Default::default()
            }],
            to: None,
        }],
    };
    let mut allow_block = allow_api.clone();
    allow_block.name = "allow-nodes".into();
    allow_block.rules[0].from = vec![Source {
        ip_block: "10.244.1.0/24".into(),
        ..Default::default()
    }];
    let (tx, rx) = watch::channel(config(vec![]));
    let inbound = PodInbound::new(
        "uid-api",
        vec!["127.0.0.1".parse().expect("ip")],
        NetnsHandle::current().expect("netns"),
        rx,
    );
    let outside: SocketAddr = "10.244.1.7:5000".parse().expect("addr");
    assert!(
        inbound.admit_plaintext(outside, target).await.is_ok(),
        "no policy: allowed"
    );
    tx.send_replace(config(vec![allow_api.clone()]));
    assert!(
        matches!(
            inbound.admit_plaintext(outside, target).await,
            Err(Refusal::Denied(_))
        ),
        "an identity allow-list refuses plaintext"
    );
    tx.send_replace(config(vec![allow_api, allow_block]));
    assert!(
        inbound.admit_plaintext(outside, target).await.is_ok(),
        "an ipBlock admits it"
    );
}

/// Two Services map port 8080 of the pod, each with an upgrade allow-list:
/// the port allows what both allow; a port no listing Service maps keeps
/// the node's default (no entry).
#[test]
fn services_upgrade_lists_intersect_per_port() {
    let service = |name: &str, target: u32, protocols: &[&str]| {
        res(
            ResourceType::Service,
            &format!("shop/{name}"),
            Kind::Service(pb::Service {
                namespace: "shop".into(),
                name: name.into(),
                vips: vec![],
                ports: vec![pb::ServicePort {
                    name: "http".into(),
                    port: 80,
                    ..Default::default()
                }],
                endpoints: vec![pb::Endpoint {
                    workload_uid: "uid-api".into(),
                    addresses: vec!["127.0.0.1".into()],
                    ports: std::collections::HashMap::from([(80, target)]),
                    ready: true,
                    node: String::new(),
                }],
                upgrades: (!protocols.is_empty()).then(|| pb::UpgradePolicy {
                    protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
                }),
            }),
        )
    };
    let config = NodeConfig::from_snapshot(Snapshot {
        version: 1,
        resources: vec![
            service("a", 8080, &["websocket", "h2c"]),
            service("b", 8080, &["websocket"]),
            service("c", 9090, &[]),
        ],
    })
    .expect("config");
    let (ports, upgrades) = pod_ports(&config, "uid-api", &[]);
    assert_eq!(ports.keys().copied().collect::<Vec<_>>(), [8080, 9090]);
    assert_eq!(
        upgrades.get(&8080).map(|l| l.to_vec()),
        Some(vec![Box::from("websocket")])
    );
    assert!(!upgrades.contains_key(&9090));
}
