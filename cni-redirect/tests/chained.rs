//! hawser-cni chained after Debian's real `bridge` + `host-local` +
//! `loopback` plugins, in network namespaces the tests create (run as root).

#![allow(clippy::unwrap_used)] // test helpers, like #[test] bodies, may unwrap

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{FakeProxy, Node, PLUGIN, Pod, inode};
use hawser_api::cni::enrolled::EnrolledNamespaces;
use hawser_api::cni::proto;
use serde_json::{Value, json};

/// ADD printed exactly the `prevResult` it was given (the harness embeds
/// the bridge result in stdin as compact JSON), which is the bridge's result.
fn assert_passed_through(add: &common::Run, bridge_result: &str) {
    add.ok();
    let prev: Value = serde_json::from_str(bridge_result).unwrap();
    assert_eq!(add.stdout, serde_json::to_string(&prev).unwrap());
    assert_eq!(add.json(), prev);
}

/// A match's right-hand side is `v` or a set holding `v` (nft lists a
/// one-element set as the bare value).
fn matches_value(right: &Value, v: &Value) -> bool {
    right == v || right["set"].as_array().is_some_and(|s| s.contains(v))
}

fn rules_with(table: &Value, pred: impl Fn(&Value) -> bool) -> usize {
    table
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| pred(&r["rule"]))
        .count()
}

#[test]
fn chained_add_redirects_and_del_leaves_nothing() {
    let mut node = Node::new();
    let proxy = node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    let pod = Pod::new("mesh", "web-0");

    let (prev, add) = pod.chained_add(&node);
    add.ok();
    assert_passed_through(&add, &prev);

    // The rules are in the pod netns.
    let table = pod
        .ns
        .hawser_table()
        .expect("inet hawser table in the pod netns");
    let redirect_to = |port: u64| {
        rules_with(&table, |r| {
            r["expr"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["redirect"]["port"] == json!(port))
        })
    };
    assert_eq!(redirect_to(15001), 1, "{table:#}");
    assert_eq!(redirect_to(15006), 1, "{table:#}");
    assert_eq!(
        rules_with(&table, |r| r["chain"] == "prerouting"
            && r["expr"][0]["match"]["left"]["payload"]["field"] == "dport"
            && matches_value(&r["expr"][0]["match"]["right"], &json!(15008))),
        1,
        "15008 is exempt: {table:#}"
    );
    assert_eq!(
        rules_with(&table, |r| r["expr"][0]["match"]["left"]["meta"]["key"]
            == "mark"
            && r["expr"][0]["match"]["right"] == json!(0x539)),
        2,
        "both chains skip the proxy mark: {table:#}"
    );
    // The bridge gateway is the node, not a probe: traffic from it is
    // captured (only the proxy's probe address is exempt).
    let gateway = serde_json::from_str::<Value>(&prev).unwrap()["ips"][0]["gateway"].clone();
    assert_eq!(
        rules_with(&table, |r| r["chain"] == "prerouting"
            && r["expr"][0]["match"]["left"]["payload"]["field"] == "saddr"
            && matches_value(&r["expr"][0]["match"]["right"], &gateway)),
        0,
        "the node's gateway {gateway} is not exempt: {table:#}"
    );

    // The node proxy got the pod's netns itself.
    {
        let seen = proxy.seen.lock().unwrap();
        assert_eq!(seen.adds.len(), 1);
        let add = &seen.adds[0];
        assert_eq!(add.pod.as_ref().unwrap().name, "web-0");
        assert_eq!(add.pod.as_ref().unwrap().uid, "uid-web-0");
        assert_eq!(add.attachment.as_ref().unwrap().ifname, "eth0");
        assert_eq!(add.pod_ips.len(), 1);
        assert_eq!(
            seen.handoffs,
            vec![(pod.container_id.clone(), inode(&pod.ns.path()))]
        );
    }
    assert!(pod.state_file(&node).exists());

    // From inside the pod, a connection to an arbitrary address lands on
    // 15001 with SO_ORIGINAL_DST = the address dialled.
    let listener = pod.ns.run(|| TcpListener::bind("0.0.0.0:15001").unwrap());
    listener.set_nonblocking(true).unwrap();
    let dialled = SocketAddr::from(([10, 99, 0, 1], 80));
    let client = pod
        .ns
        .run(|| TcpStream::connect_timeout(&dialled, Duration::from_secs(5)))
        .expect("connect is redirected to the local listener");
    let deadline = Instant::now() + Duration::from_secs(5);
    let accepted = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("nothing reached 15001: {e}"),
        }
    };
    let orig =
        nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::OriginalDst).unwrap();
    let orig = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(orig.sin_addr.s_addr)),
        u16::from_be(orig.sin_port),
    );
    assert_eq!(SocketAddr::V4(orig), dialled);
    drop((client, accepted, listener));

    // CHECK passes on intact rules.
    let prev_v: Value = serde_json::from_str(&prev).unwrap();
    pod.cni(&node, PLUGIN, "CHECK", &node.hawser_conf(Some(&prev_v)))
        .ok();

    // Every log line of this pod names it.
    let log = std::fs::read_to_string(node.log_file()).unwrap();
    assert!(log.contains("pod=mesh/web-0"), "{log}");
    assert!(log.lines().all(|l| l.contains("pod=mesh/web-0")), "{log}");

    // DEL: no table, no state, the proxy is told.
    pod.chained_del(&node, &prev).ok();
    assert_eq!(pod.ns.hawser_table(), None);
    assert!(!pod.state_file(&node).exists());
    assert_eq!(
        proxy.seen.lock().unwrap().dels,
        vec![pod.container_id.clone()]
    );

    // DEL again: still fine, nothing more happens.
    pod.cni(&node, PLUGIN, "DEL", &node.hawser_conf(Some(&prev_v)))
        .ok();
    assert_eq!(proxy.seen.lock().unwrap().dels.len(), 1);
}

#[test]
fn check_detects_a_tampered_or_missing_table() {
    let mut node = Node::new();
    node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    let pod = Pod::new("mesh", "api-0");
    let (prev, add) = pod.chained_add(&node);
    add.ok();
    let prev_v: Value = serde_json::from_str(&prev).unwrap();
    let conf = node.hawser_conf(Some(&prev_v));

    // Drop the outbound redirect rule.
    let out = pod
        .ns
        .exec("nft", &["-a", "list", "chain", "inet", "hawser", "output"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let handle = listing
        .lines()
        .find(|l| l.contains("redirect to :15001"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    assert!(
        pod.ns
            .exec(
                "nft",
                &[
                    "delete", "rule", "inet", "hawser", "output", "handle", &handle
                ]
            )
            .status
            .success()
    );
    let err = pod.cni(&node, PLUGIN, "CHECK", &conf).error(101);
    assert!(err["msg"].as_str().unwrap().contains("modified"), "{err}");

    assert!(
        pod.ns
            .exec("nft", &["delete", "table", "inet", "hawser"])
            .status
            .success()
    );
    let err = pod.cni(&node, PLUGIN, "CHECK", &conf).error(101);
    assert!(err["msg"].as_str().unwrap().contains("missing"), "{err}");

    // CHECK without prevResult is a config error.
    pod.cni(&node, PLUGIN, "CHECK", &node.hawser_conf(None))
        .error(7);
    pod.chained_del(&node, &prev).ok();
}

#[test]
fn pods_outside_enrolled_namespaces_pass_untouched() {
    let mut node = Node::new();
    let proxy = node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    let pod = Pod::new("plain", "db-0");
    let (prev, add) = pod.chained_add(&node);
    assert_passed_through(&add, &prev);
    assert_eq!(pod.ns.hawser_table(), None);
    assert!(!pod.state_file(&node).exists());
    assert!(proxy.seen.lock().unwrap().handoffs.is_empty());
    let prev_v: Value = serde_json::from_str(&prev).unwrap();
    pod.cni(&node, PLUGIN, "CHECK", &node.hawser_conf(Some(&prev_v)))
        .ok();
    pod.chained_del(&node, &prev).ok();
}

#[test]
fn per_pod_exclusions_from_the_proxy_are_programmed() {
    let mut node = Node::new();
    let mut fake = FakeProxy::enrolling(&["mesh"]);
    fake.redirection = proto::Redirection {
        exclude_inbound_ports: vec![9090],
        exclude_outbound_ports: vec![5432],
        exclude_outbound_cidrs: vec!["10.96.0.0/12".into()],
        exclude_inbound_cidrs: vec!["192.168.7.0/24".into()],
        probe_source_addresses: vec!["172.31.0.9".into()],
    };
    node.start_proxy(fake);
    let pod = Pod::new("mesh", "excl-0");
    let (prev, add) = pod.chained_add(&node);
    add.ok();
    let out = pod.ns.exec("nft", &["list", "table", "inet", "hawser"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "tcp dport { 9090, 15008 } return",
        "tcp dport 5432 return",
        "ip daddr 10.96.0.0/12 return",
        "ip saddr 192.168.7.0/24 return",
        "172.31.0.9",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    pod.chained_del(&node, &prev).ok();
}

#[test]
fn node_proxy_down_fails_enrolled_namespaces_with_try_again_only() {
    let node = Node::new();
    EnrolledNamespaces::new(["mesh"])
        .store(&EnrolledNamespaces::path_in(&node.run_dir()))
        .unwrap();

    let enrolled = Pod::new("mesh", "web-1");
    let (prev, add) = enrolled.chained_add(&node);
    let err = add.error(11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("namespace mesh is enrolled"),
        "{err}"
    );
    assert_eq!(enrolled.ns.hawser_table(), None);
    assert!(!enrolled.state_file(&node).exists());
    enrolled.chained_del(&node, &prev).ok();

    let other = Pod::new("plain", "db-1");
    let (prev, add) = other.chained_add(&node);
    assert_passed_through(&add, &prev);
    assert_eq!(other.ns.hawser_table(), None);
    other.chained_del(&node, &prev).ok();

    // An unreadable list fails closed.
    std::fs::write(EnrolledNamespaces::path_in(&node.run_dir()), "{garbage").unwrap();
    let third = Pod::new("plain", "db-2");
    let (prev, add) = third.chained_add(&node);
    add.error(11);
    third.chained_del(&node, &prev).ok();
}

#[test]
fn refused_handoff_rolls_the_rules_back() {
    let mut node = Node::new();
    let mut fake = FakeProxy::enrolling(&["mesh"]);
    fake.refuse_handoff = true;
    let proxy = node.start_proxy(fake);
    let pod = Pod::new("mesh", "web-2");
    let (prev, add) = pod.chained_add(&node);
    let err = add.error(11);
    assert!(
        err["msg"].as_str().unwrap().contains("test proxy refuses"),
        "{err}"
    );
    assert_eq!(pod.ns.hawser_table(), None, "no half-configured pod");
    assert!(!pod.state_file(&node).exists());
    assert_eq!(
        proxy.seen.lock().unwrap().dels,
        vec![pod.container_id.clone()],
        "proxy told to forget"
    );
    pod.chained_del(&node, &prev).ok();
}

#[test]
fn del_is_idempotent_without_add_and_after_the_netns_is_gone() {
    let mut node = Node::new();
    let proxy = node.start_proxy(FakeProxy::enrolling(&["mesh"]));

    // Without ADD, without netns, without prevResult.
    let stranger = Pod::new("mesh", "never-added");
    stranger
        .cni(&node, PLUGIN, "DEL", &node.hawser_conf(None))
        .ok();
    let args = stranger.cni_args();
    let env: Vec<(&str, &str)> = stranger
        .env("DEL", "", &args)
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    node.exec(PLUGIN, node.hawser_conf(None).to_string().as_bytes(), &env)
        .ok();

    // After ADD, the netns disappears before DEL.
    let pod = Pod::new("mesh", "gone-0");
    let (_prev, add) = pod.chained_add(&node);
    add.ok();
    let netns = pod.netns_path();
    drop(proxy.held.lock().unwrap().drain(..));
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &pod.ns.name])
        .status();
    assert!(!std::path::Path::new(&netns).exists());
    pod.cni(&node, PLUGIN, "DEL", &node.hawser_conf(None)).ok();
    assert!(!pod.state_file(&node).exists());
    pod.cni(&node, PLUGIN, "DEL", &node.hawser_conf(None)).ok();
    assert_eq!(
        proxy.seen.lock().unwrap().dels,
        vec![pod.container_id.clone()]
    );
}

#[test]
fn gc_tears_down_attachments_not_listed() {
    let mut node = Node::new();
    node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    let keep = Pod::new("mesh", "keep-0");
    let stale = Pod::new("mesh", "stale-0");
    let (keep_prev, add) = keep.chained_add(&node);
    add.ok();
    let (stale_prev, add) = stale.chained_add(&node);
    add.ok();

    let mut conf = node.hawser_conf(None);
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] =
        json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", common::CNI_BIN)];
    node.exec(PLUGIN, conf.to_string().as_bytes(), &gc_env).ok();
    assert!(keep.ns.hawser_table().is_some());
    assert!(keep.state_file(&node).exists());
    assert_eq!(stale.ns.hawser_table(), None);
    assert!(!stale.state_file(&node).exists());

    // GC without the list is refused rather than deleting everything.
    node.exec(
        PLUGIN,
        node.hawser_conf(None).to_string().as_bytes(),
        &gc_env,
    )
    .error(7);
    assert!(keep.state_file(&node).exists());

    keep.chained_del(&node, &keep_prev).ok();
    stale.chained_del(&node, &stale_prev).ok();
}

#[test]
fn status_reports_what_depends_on_the_node_proxy() {
    let mut node = Node::new();
    let mut conf = node.hawser_conf(None);
    conf["cniVersion"] = json!("1.1.0");
    let status = |node: &Node| {
        node.exec(
            PLUGIN,
            conf.to_string().as_bytes(),
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", common::CNI_BIN)],
        )
    };
    // Nothing enrolled, no proxy: ADD works for every pod.
    status(&node).ok();
    // Enrolled namespaces and no proxy: 50.
    EnrolledNamespaces::new(["mesh"])
        .store(&EnrolledNamespaces::path_in(&node.run_dir()))
        .unwrap();
    let err = status(&node).error(50);
    assert!(err["msg"].as_str().unwrap().contains("mesh"), "{err}");
    // Proxy up: ready.
    node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    status(&node).ok();
    // A redirected pod, then the proxy dies: 51.
    let pod = Pod::new("mesh", "web-3");
    let (prev, add) = pod.chained_add(&node);
    add.ok();
    node.stop_proxy();
    status(&node).error(51);
    pod.chained_del(&node, &prev).ok();
}
