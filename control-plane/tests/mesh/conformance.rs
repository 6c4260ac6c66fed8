//! The Gateway API mesh conformance cases (conformance/gamma in the repository),
//! decided against the translated per-node config: which backend answers,
//! which status code, which headers the backend and the client see, where a
//! redirect points, what path the backend sees, and weight shares.
//! The route statuses the cases imply are checked too.

use serde_json::{Value, json};

use hawser_control_plane::status::{ConditionType, Reason};

use crate::support::{Leg, Mesh, Request, View, condition, shares};

/// The conformance data of this checkout. The package directory
/// is read at run time (cargo and nextest set it), not baked in at build
/// time: a test binary reused from another checkout would read that one's.
fn gamma() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{dir}/../conformance/gamma")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", gamma()))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Pods for the base manifests' Deployments (2 replicas each, Ready, on two
/// nodes), as the lab would create them.
fn pods_yaml(base: &str) -> String {
    let mut docs = Vec::new();
    let mut n = 0u32;
    for doc in serde_yaml_ng::Deserializer::from_str(base) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("base manifest");
        if v["kind"] != "Deployment" {
            continue;
        }
        let ns = v["metadata"]["namespace"].as_str().expect("namespace");
        let name = v["metadata"]["name"].as_str().expect("name");
        let template = &v["spec"]["template"];
        for replica in ["a", "b"] {
            n += 1;
            let pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": format!("{name}-6d4c8b7f9-{replica}"),
                    "namespace": ns,
                    "labels": template["metadata"]["labels"],
                },
                "spec": {
                    "nodeName": if replica == "a" { "node-a" } else { "node-b" },
                    "containers": template["spec"]["containers"],
                },
                "status": {
                    "phase": "Running",
                    "podIP": format!("10.244.0.{n}"),
                    "podIPs": [{"ip": format!("10.244.0.{n}")}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            });
            docs.push(serde_yaml_ng::to_string(&pod).expect("pod yaml"));
        }
    }
    docs.join("---\n")
}

fn mesh_for(case_file: &str) -> Mesh {
    let base = read("base-manifests.yaml");
    let pods = pods_yaml(&base);
    let case = read(case_file);
    let mesh = Mesh::new(&[
        ("base.yaml", &base),
        ("pods.yaml", &pods),
        ("case.yaml", &case),
    ]);
    let report = mesh.report();
    assert!(
        report.errors.is_empty(),
        "{case_file}: manifest errors: {:#?}",
        report.errors
    );
    mesh
}

/// Resolves a case's host the way cluster DNS and the harness would.
fn request(view: &View, client_ns: &str, req: &Value) -> Request {
    let host = req["host"].as_str().expect("host");
    let grpc = req["protocol"] == "grpc";
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u32>().expect("port")),
        None => (host.to_string(), 80),
    };
    let ip = if name == "<echo-v2 podIP>" {
        // The first pod matching app=echo,version=v2 in the mesh namespace.
        view.workload_by_name("gateway-conformance-mesh", "echo-v2-6d4c8b7f9-a")
            .expect("echo-v2 pod")
            .ips[0]
            .clone()
    } else {
        let (svc, ns) = match name.split_once('.') {
            Some((s, ns)) => (s.to_string(), ns.to_string()),
            None => (name.clone(), client_ns.to_string()),
        };
        view.vip(&ns, &svc)
    };
    let path = req["path"].as_str().unwrap_or("");
    let path = if grpc {
        "/grpc.testing.TestService/UnaryCall".to_string()
    } else if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(h) = req["headers"].as_object() {
        for (k, v) in h {
            headers.push((k.clone(), v.as_str().expect("header value").to_string()));
        }
    }
    let host_header = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            if port == 80 {
                name.clone()
            } else {
                host.to_string()
            }
        });
    Request {
        client_ns: client_ns.to_string(),
        ip,
        port,
        host: host_header,
        method: req["method"].as_str().unwrap_or("GET").to_string(),
        path,
        headers,
        grpc,
    }
}

fn check_case(test: &str, view: &View, client_ns: &str, case: &Value) {
    let name = format!("{test} / {}", case["name"].as_str().unwrap_or("?"));
    let req = request(view, client_ns, &case["request"]);
    let legs = view.send(&req);

    if let Some(weights) = case["expectWeights"].as_object() {
        let got = shares(&legs);
        let tolerance = case["tolerance"].as_f64().unwrap_or(0.05);
        for (backend, want) in weights {
            let want = want.as_f64().expect("weight");
            let have = got.get(backend).copied().unwrap_or(0.0);
            assert!(
                (have - want).abs() <= tolerance,
                "{name}: {backend} gets {have}, want {want} ({got:?})"
            );
        }
        let total: f64 = weights
            .keys()
            .map(|b| got.get(b).copied().unwrap_or(0.0))
            .sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "{name}: traffic outside the expected backends: {got:?}"
        );
        return;
    }

    // Every share of a split request must meet the expectation.
    for (_, leg) in &legs {
        check_leg(&name, case, leg);
    }
}

fn check_leg(name: &str, case: &Value, leg: &Leg) {
    let expect = &case["expect"];
    let codes: Vec<u64> = expect["statusCodes"]
        .as_array()
        .expect("statusCodes")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    match leg {
        Leg::NotFound => assert!(codes.contains(&404), "{name}: got 404, want {codes:?}"),
        Leg::ServerError(e) => panic!("{name}: got 500 ({e}), want {codes:?}"),
        Leg::Redirect { status, location } => {
            assert!(
                codes.contains(&u64::from(*status)),
                "{name}: got redirect {status}, want {codes:?}"
            );
            if let Some(want) = expect["location_NOT_CHECKED_UPSTREAM"].as_str() {
                assert_eq!(location, want, "{name}: Location");
            }
        }
        Leg::Backend(f) => {
            assert!(codes.contains(&200), "{name}: forwarded, want {codes:?}");
            assert!(
                !f.pods.is_empty(),
                "{name}: backend {:?} has no ready pod",
                f.service
            );
            if let Some(prefix) = expect["backendPodPrefix"].as_str() {
                for pod in &f.pods {
                    assert!(
                        pod.starts_with(prefix),
                        "{name}: pod {pod} may answer, want prefix {prefix} (all: {:?})",
                        f.pods
                    );
                }
            }
            if let Some(want) = expect["backendSeesHeaders"].as_object() {
                for (h, v) in want {
                    assert_eq!(
                        f.header(h).as_deref(),
                        v.as_str(),
                        "{name}: backend header {h}"
                    );
                }
            }
            for h in expect["backendSeesHeadersAbsent"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let h = h.as_str().expect("header");
                assert_eq!(f.header(h), None, "{name}: backend must not see {h}");
            }
            if let Some(want) = expect["responseHeaders"].as_object() {
                for (h, v) in want {
                    assert_eq!(
                        f.response_header(h).as_deref(),
                        v.as_str(),
                        "{name}: response header {h}"
                    );
                }
            }
            for h in expect["responseHeadersAbsent"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let h = h.as_str().expect("header");
                assert_eq!(
                    f.response_header(h),
                    None,
                    "{name}: response must not carry {h}"
                );
            }
            if let Some(path) = expect["backendSeesPath_NOT_CHECKED_UPSTREAM"].as_str() {
                assert_eq!(f.path, path, "{name}: path seen by the backend");
            }
        }
    }
}

fn case_file_route_names(case: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(case) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("case manifest");
        if v.is_null() {
            continue;
        }
        out.push((
            v["kind"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    out
}

#[test]
fn every_conformance_case_holds_against_the_translation() {
    let expectations: Value =
        serde_json::from_str(&read("expectations.json")).expect("expectations.json");
    let tests = expectations["tests"].as_array().expect("tests");
    assert!(
        tests.len() >= 20,
        "expected the full mesh suite, found {} tests",
        tests.len()
    );
    let mut cases = 0;
    for test in tests {
        let short = test["shortName"].as_str().expect("shortName");
        let case_file = test["caseFile"].as_str().expect("caseFile");
        let mesh = mesh_for(case_file);

        // Every route of the case attaches; only dangling backends leave refs unresolved.
        for (kind, ns, name) in case_file_route_names(&read(case_file)) {
            let kind = match kind.as_str() {
                "HTTPRoute" => hawser_control_plane::model::RouteKind::Http,
                "GRPCRoute" => hawser_control_plane::model::RouteKind::Grpc,
                _ => continue,
            };
            let status = mesh.status(kind, &ns, &name);
            assert_eq!(status.parents.len(), 1, "{short}: {status}");
            let accepted = condition(&status, ConditionType::Accepted);
            assert!(accepted.status, "{short}: route not accepted:\n{status}");
            let resolved = condition(&status, ConditionType::ResolvedRefs);
            if short == "MeshGRPCRouteWeight" {
                assert!(
                    !resolved.status,
                    "{short}: echo-v3 does not exist:\n{status}"
                );
                assert_eq!(resolved.reason, Reason::BackendNotFound);
                assert!(resolved.message.contains("echo-v3"), "{}", resolved.message);
            } else {
                assert!(resolved.status, "{short}:\n{status}");
            }
        }

        for node in ["node-a", "node-b"] {
            let view = mesh.view(node);
            for case in test["cases"].as_array().expect("cases") {
                let client = if case["client"].is_object() {
                    &case["client"]
                } else {
                    &test["client"]
                };
                let client_ns = client["namespace"].as_str().expect("client namespace");
                check_case(short, &view, client_ns, case);
                cases += 1;
            }
        }
    }
    assert!(cases > 100, "only {cases} cases checked");
}
