//! Bad inputs: each one gets a spec-conformant error result with the right
//! code and leaves no rules and no state behind (run as root).

#![allow(clippy::unwrap_used)] // test helpers, like #[test] bodies, may unwrap

mod common;

use common::{FakeProxy, Node, PLUGIN, Pod};
use serde_json::{Value, json};

/// A node with a proxy that would enroll the pod, and a pod whose primary
/// network is configured, so that any rule hawser-cni wrote would be seen.
fn setup() -> (Node, Pod, Value) {
    let mut node = Node::new();
    node.start_proxy(FakeProxy::enrolling(&["mesh"]));
    let pod = Pod::new("mesh", "bad-0");
    let prev: Value = serde_json::from_str(&pod.primary_add(&node)).unwrap();
    (node, pod, prev)
}

fn assert_untouched(node: &Node, pod: &Pod) {
    assert_eq!(pod.ns.hawser_table(), None, "rules left behind");
    assert!(!pod.state_file(node).exists(), "state left behind");
    let (proxy, _) = node.proxy.as_ref().unwrap();
    assert!(proxy.seen.lock().unwrap().handoffs.is_empty());
}

#[test]
fn malformed_stdin_is_a_decoding_error() {
    let (node, pod, _) = setup();
    let netns = pod.netns_path();
    let args = pod.cni_args();
    let run = node.exec(
        PLUGIN,
        b"{\"cniVersion\": \"1.0.0\", ",
        &pod.env("ADD", &netns, &args),
    );
    let err = run.error(6);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .starts_with("stdin is not a JSON network configuration"),
        "{err}"
    );
    assert_untouched(&node, &pod);
}

#[test]
fn missing_prev_result_is_an_invalid_config() {
    let (node, pod, _) = setup();
    let err = pod
        .cni(&node, PLUGIN, "ADD", &node.hawser_conf(None))
        .error(7);
    assert!(err["msg"].as_str().unwrap().contains("prevResult"), "{err}");
    assert_untouched(&node, &pod);
}

#[test]
fn unsupported_cni_version_is_incompatible() {
    let (node, pod, prev) = setup();
    let mut conf = node.hawser_conf(Some(&prev));
    conf["cniVersion"] = json!("0.4.0");
    let err = pod.cni(&node, PLUGIN, "ADD", &conf).error(1);
    assert_eq!(err["cniVersion"], "0.4.0");
    assert!(err["msg"].as_str().unwrap().contains("\"0.4.0\""), "{err}");
    assert_untouched(&node, &pod);
}

#[test]
fn nonexistent_netns_is_named() {
    let (node, pod, prev) = setup();
    let args = pod.cni_args();
    let missing = format!("/var/run/netns/{}-missing", pod.ns.name);
    let run = node.exec(
        PLUGIN,
        node.hawser_conf(Some(&prev)).to_string().as_bytes(),
        &pod.env("ADD", &missing, &args),
    );
    let err = run.error(4);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("CNI_NETNS") && msg.contains(&missing), "{err}");
    assert_untouched(&node, &pod);

    // The plugin's own (node) netns is refused too: never rules on the host.
    let own = format!("/var/run/netns/{}", node.ns.name);
    let run = node.exec(
        PLUGIN,
        node.hawser_conf(Some(&prev)).to_string().as_bytes(),
        &pod.env("ADD", &own, &args),
    );
    let err = run.error(4);
    assert!(err["msg"].as_str().unwrap().contains("own"), "{err}");
    assert_eq!(node.ns.hawser_table(), None);
}

#[test]
fn missing_cni_args_names_what_is_needed() {
    let (node, pod, prev) = setup();
    let netns = pod.netns_path();
    for args in ["", "K8S_POD_NAME=bad-0"] {
        let env: Vec<(&str, &str)> = pod
            .env("ADD", &netns, args)
            .into_iter()
            .filter(|(k, v)| *k != "CNI_ARGS" || !v.is_empty())
            .collect();
        let run = node.exec(
            PLUGIN,
            node.hawser_conf(Some(&prev)).to_string().as_bytes(),
            &env,
        );
        let err = run.error(4);
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("CNI_ARGS") && msg.contains("K8S_POD_NAMESPACE"),
            "{err}"
        );
    }
    assert_untouched(&node, &pod);
}

#[test]
fn missing_environment_and_unknown_command() {
    let (node, pod, prev) = setup();
    let conf = node.hawser_conf(Some(&prev)).to_string();
    let run = node.exec(
        PLUGIN,
        conf.as_bytes(),
        &[("CNI_COMMAND", "ADD"), ("CNI_PATH", common::CNI_BIN)],
    );
    let err = run.error(4);
    assert!(
        err["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{err}"
    );
    let run = node.exec(PLUGIN, conf.as_bytes(), &[("CNI_COMMAND", "FROB")]);
    run.error(4);
    // No CNI_COMMAND at all: a person ran it; explain, exit 0.
    let run = node.exec(PLUGIN, b"", &[]);
    assert_eq!(run.code, 0);
    assert!(
        run.stderr
            .contains("CNI protocol versions supported: 1.0.0, 1.1.0"),
        "{run:?}"
    );
    assert_untouched(&node, &pod);
}

#[test]
fn version_reports_supported_versions() {
    let node = Node::new();
    let run = node.exec(
        PLUGIN,
        br#"{"cniVersion":"1.0.0"}"#,
        &[("CNI_COMMAND", "VERSION")],
    );
    run.ok();
    assert_eq!(
        run.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let run = node.exec(PLUGIN, b"", &[("CNI_COMMAND", "VERSION")]);
    assert_eq!(run.json()["cniVersion"], "1.1.0");
}
