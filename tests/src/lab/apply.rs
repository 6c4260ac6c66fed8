//! `lab apply`: what the API server, the scheduler, the Deployment controller
//! and kubelet would do with a set of manifests, on the lab.
//!
//! Every document is checked first with the control plane's own parser, so an
//! invalid one is reported (file, document, field, reason) and skipped while
//! the rest applies. Deployments become `replicas` Pods; Pods are scheduled
//! round-robin onto nodes (or onto `spec.nodeName`), created like kubelet
//! would (netns, CNI chain), their containers started inside the pod netns,
//! and the Pod object — with its node, IP and Ready condition, as kubelet
//! reports it — is written into the control plane's manifest directory.
//! Mesh objects (Namespaces, Services, routes, policies) go there unchanged.
//!
//! Containers: an image whose name contains `echo` runs the built-in echo
//! backend on its container ports; the annotation `lab.hawser.dev/command`
//! runs any command (`sh -c`) instead.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod as K8sPod, PodSpec};
use serde_json::{Value, json};

use super::{Lab, LabError};

/// Annotation naming the command a lab container runs.
pub const COMMAND_ANNOTATION: &str = "lab.hawser.dev/command";

/// What one `apply` did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// What was applied, one line each (`created pod demo/echo-0 on node-1 (10.244.1.2)`).
    pub applied: Vec<String>,
    /// Documents that were refused, with file, document number, field and reason.
    pub errors: Vec<String>,
}

impl Lab {
    /// Applies a manifest file, or every `*.yaml`/`*.yml` file of a directory.
    pub fn apply(&mut self, path: &Path) -> Result<ApplyReport, LabError> {
        let mut report = ApplyReport::default();
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| LabError::io(&file, e))?;
            self.apply_file(&file, &text, &mut report)?;
        }
        self.sync_kube_proxy()?;
        self.wait_synced()?;
        Ok(report)
    }

    /// Waits until the control plane has read every manifest written so far
    /// and every connected node proxy has acknowledged the resulting
    /// configuration, as `kubectl apply` followed by a rollout wait would:
    /// when `apply` returns, the change is in force on the nodes.
    ///
    /// A marker object (a ConfigMap, which the mesh ignores) is written last;
    /// once the control plane lists it among the ignored documents, the scan
    /// that read it has also read everything written before it.
    pub fn wait_synced(&mut self) -> Result<(), LabError> {
        self.state_mut().next_sync += 1;
        let marker = format!("lab-sync-{}", self.state().next_sync);
        self.save()?;
        let path = self.manifests_dir().join("zz-lab-sync.yaml");
        let doc = format!(
            "# Written by the lab after each apply/delete; see Lab::wait_synced.\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {marker}\n  namespace: default\n"
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, doc).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut last;
        loop {
            let scanned = matches!(self.admin_get("/status/manifests"),
                Ok((200, body)) if body.contains(&format!("{marker}\"")));
            last = if !scanned {
                "the control plane has not read the new manifests yet".into()
            } else {
                match self.admin_get("/status/nodes") {
                    Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                        Ok(status) => {
                            let lagging = lagging_nodes(&status);
                            if lagging.is_empty() {
                                return Ok(());
                            }
                            lagging.join("; ")
                        }
                        Err(e) => format!("/status/nodes: {e}"),
                    },
                    Ok((code, body)) => format!("/status/nodes answered {code}: {body}"),
                    Err(e) => e.to_string(),
                }
            };
            if std::time::Instant::now() > deadline {
                return Err(LabError::Command {
                    command: "waiting for the mesh to apply the change".into(),
                    output: last,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn apply_file(
        &mut self,
        file: &Path,
        text: &str,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        // The control plane's verdict on every mesh document, by document number.
        let parsed = hawser_control_plane::sources::manifests::parse(file, text);
        for e in &parsed.errors {
            report.errors.push(e.to_string());
        }
        let bad: std::collections::BTreeSet<usize> =
            parsed.errors.iter().map(|e| e.document).collect();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or(Value::Null))
            .collect();
        let out_dir = self.manifests_dir().join("applied");
        std::fs::create_dir_all(&out_dir).map_err(|e| LabError::io(&out_dir, e))?;
        for (i, doc) in docs.into_iter().enumerate() {
            let number = i + 1;
            if bad.contains(&number) || doc.is_null() {
                continue;
            }
            let where_ = format!("{}: document {number}", file.display());
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Deployment" => match serde_json::from_value::<Deployment>(doc) {
                    Ok(d) => self.apply_deployment(&d, &where_, report)?,
                    Err(e) => report.errors.push(format!("{where_} (Deployment): {e}")),
                },
                "Pod" => match serde_json::from_value::<K8sPod>(doc) {
                    Ok(p) => {
                        let ns = p
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into());
                        let name = p.metadata.name.clone().unwrap_or_default();
                        let spec = p.spec.clone().unwrap_or_default();
                        self.run_pod(&ns, &name, &p.metadata, &spec, report)?;
                    }
                    Err(e) => report.errors.push(format!("{where_} (Pod): {e}")),
                },
                _ => {
                    let mut doc = doc;
                    let ns = doc["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_owned();
                    let name = doc["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if kind == "Service" {
                        let mut svc = super::kubeproxy::service_of(&doc, &ns, &name);
                        svc.cluster_ip = match super::kubeproxy::cluster_ip_of(&doc["spec"]) {
                            Ok(Some(given)) => given,
                            Ok(None) => match self
                                .state()
                                .services
                                .iter()
                                .find(|s| s.namespace == ns && s.name == name)
                                .and_then(|s| s.cluster_ip)
                            {
                                Some(ip) => Some(ip),
                                None => Some(self.allocate_cluster_ip()?),
                            },
                            Err(reason) => {
                                report
                                    .errors
                                    .push(format!("{where_} (Service {ns}/{name}): {reason}"));
                                continue;
                            }
                        };
                        // As the API server does: the allocated ClusterIP is part of the object.
                        if let Some(ip) = svc.cluster_ip {
                            doc["spec"]["clusterIP"] = json!(ip.to_string());
                        }
                        self.upsert_service(svc)?;
                    }
                    write_yaml(&out_dir.join(object_file(&kind, &ns, &name)), &doc)?;
                    report
                        .applied
                        .push(format!("{} {ns}/{name}", kind.to_lowercase()));
                }
            }
        }
        Ok(())
    }

    /// Deletes what the manifests in `path` describe: Deployments' and Pods'
    /// pods (stopped, CNI DEL, netns removed, Pod objects withdrawn) and the
    /// mesh objects. Documents that name nothing the lab holds are reported.
    pub fn delete(&mut self, path: &Path) -> Result<ApplyReport, LabError> {
        let mut report = ApplyReport::default();
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| LabError::io(&file, e))?;
            for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
                let where_ = format!("{}: document {}", file.display(), i + 1);
                let Ok(doc) = <Value as serde::Deserialize>::deserialize(doc) else {
                    report.errors.push(format!("{where_}: invalid YAML"));
                    break;
                };
                let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned();
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let pods: Vec<String> = match kind.as_str() {
                    "Pod" => vec![name.clone()],
                    "Deployment" => {
                        let prefix = format!("{name}-");
                        self.state()
                            .pods
                            .iter()
                            .filter(|p| {
                                p.namespace == ns
                                    && p.name
                                        .strip_prefix(&prefix)
                                        .is_some_and(|n| n.parse::<usize>().is_ok())
                            })
                            .map(|p| p.name.clone())
                            .collect()
                    }
                    _ => {
                        let target = self
                            .manifests_dir()
                            .join("applied")
                            .join(object_file(&kind, &ns, &name));
                        if kind == "Service" {
                            self.state_mut()
                                .services
                                .retain(|s| !(s.namespace == ns && s.name == name));
                            self.save()?;
                        }
                        match std::fs::remove_file(&target) {
                            Ok(()) => report
                                .applied
                                .push(format!("deleted {} {ns}/{name}", kind.to_lowercase())),
                            Err(_) => report
                                .errors
                                .push(format!("{where_}: {kind} {ns}/{name} is not in the lab")),
                        }
                        continue;
                    }
                };
                if pods.is_empty() || pods.iter().any(|p| self.pod(&ns, p).is_none()) {
                    report
                        .errors
                        .push(format!("{where_}: {kind} {ns}/{name} is not in the lab"));
                    continue;
                }
                for pod in pods {
                    let object = self
                        .manifests_dir()
                        .join("pods")
                        .join(format!("{ns}-{pod}.yaml"));
                    // Withdraw the object first, as the API server would mark it deleting.
                    let _ = std::fs::remove_file(&object);
                    self.delete_pod(&ns, &pod)?;
                    report.applied.push(format!("deleted pod {ns}/{pod}"));
                }
            }
        }
        self.sync_kube_proxy()?;
        self.wait_synced()?;
        Ok(report)
    }

    fn apply_deployment(
        &mut self,
        d: &Deployment,
        where_: &str,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        let ns = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &d.spec else {
            report
                .errors
                .push(format!("{where_} (Deployment {ns}/{name}): spec: missing"));
            return Ok(());
        };
        let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        let template_meta = spec.template.metadata.clone().unwrap_or_default();
        let pod_spec = spec.template.spec.clone().unwrap_or_default();
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            if self.pod(&ns, &pod_name).is_some() {
                continue;
            }
            self.run_pod(&ns, &pod_name, &template_meta, &pod_spec, report)?;
        }
        report
            .applied
            .push(format!("deployment {ns}/{name} ({replicas} replicas)"));
        Ok(())
    }

    /// Schedules, creates and starts one pod, then publishes its Pod object.
    fn run_pod(
        &mut self,
        ns: &str,
        name: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: &PodSpec,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        if self.pod(ns, name).is_some() {
            report.applied.push(format!("pod {ns}/{name} unchanged"));
            return Ok(());
        }
        let node = match &spec.node_name {
            Some(n) => n.clone(),
            None => {
                let nodes = &self.state().nodes;
                let index = self.state().next_pod as usize % nodes.len().max(1);
                nodes
                    .get(index)
                    .map(|n| n.name.clone())
                    .ok_or_else(|| LabError::NotUp(self.config().state_dir.clone()))?
            }
        };
        let uid = format!("{:032x}", rand::random::<u128>());
        // The Pod exists (scheduled) before kubelet creates its sandbox, as in
        // a cluster: node proxies learn of it before CNI ADD asks about it.
        let mut object = pod_object(ns, name, &uid, meta, spec, &node, None);
        let path = self
            .manifests_dir()
            .join("pods")
            .join(format!("{ns}-{name}.yaml"));
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| LabError::io(&path, e))?;
        write_yaml(&path, &object)?;
        let pod = match self.add_pod(ns, name, &uid, &node) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let ip = pod.ip.map(|i| i.to_string());
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let labels = meta.labels.clone().unwrap_or_default();
        if let Some(p) = self
            .state_mut()
            .pods
            .iter_mut()
            .find(|p| p.netns == pod.netns)
        {
            p.labels = labels;
            p.ports = ports;
        }
        self.save()?;
        self.start_containers(ns, name, meta, spec, &pod.netns)?;
        object = pod_object(ns, name, &uid, meta, spec, &node, ip.as_deref());
        write_yaml(&path, &object)?;
        report.applied.push(format!(
            "pod {ns}/{name} on {node} ({})",
            ip.as_deref().unwrap_or("no IP")
        ));
        Ok(())
    }

    fn start_containers(
        &mut self,
        ns: &str,
        name: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: &PodSpec,
        netns: &str,
    ) -> Result<(), LabError> {
        let role = format!("pod {ns}/{name}");
        let env = vec![
            ("POD_NAME".to_owned(), name.to_owned()),
            ("POD_NAMESPACE".to_owned(), ns.to_owned()),
        ];
        if let Some(cmd) = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMMAND_ANNOTATION))
        {
            self.spawn(
                &role,
                netns,
                Path::new("/bin/sh"),
                &["-c".to_owned(), cmd.clone()],
                &env,
            )?;
            return Ok(());
        }
        for c in &spec.containers {
            if !c.image.as_deref().unwrap_or_default().contains("echo") {
                continue;
            }
            let mut args = vec!["serve".to_owned()];
            // Ports named `tcp*` are raw TCP echo, `grpc*` gRPC-only; the
            // rest serve HTTP/1.1, h2c, gRPC and WebSocket.
            let mut http = 0;
            for p in c.ports.iter().flatten() {
                let flag = match p.name.as_deref().unwrap_or_default() {
                    n if n.starts_with("tcp") => "--tcp-port",
                    n if n.starts_with("grpc") => "--grpc-port",
                    _ => {
                        http += 1;
                        "--port"
                    }
                };
                args.extend([flag.to_owned(), p.container_port.to_string()]);
            }
            if http == 0 {
                args.extend(["--port".to_owned(), "8080".to_owned()]);
            }
            let bin = self.config().bin_dir.join("hawser-echo");
            self.spawn(&format!("{role} {}", c.name), netns, &bin, &args, &env)?;
        }
        Ok(())
    }
}

/// Connected nodes of a `/status/nodes` answer that have not acknowledged
/// its version, each named with its last NACK if any.
pub fn lagging_nodes(status: &Value) -> Vec<String> {
    let version = status["version"].as_u64().unwrap_or(0);
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["connected"] == Value::Bool(true))
        .filter_map(|n| {
            let acked = n["ackedVersion"].as_u64().unwrap_or(0);
            (acked < version).then(|| {
                let mut s = format!(
                    "node {} acknowledged config version {acked} of {version}",
                    n["node"].as_str().unwrap_or("?")
                );
                if let Some(nack) = n["lastNack"]["error"].as_str() {
                    s.push_str(&format!(" (last NACK: {nack})"));
                }
                s
            })
        })
        .collect()
}

/// The Pod object as the API server would hold it once kubelet reports it.
fn pod_object(
    ns: &str,
    name: &str,
    uid: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &PodSpec,
    node: &str,
    ip: Option<&str>,
) -> Value {
    let mut spec = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    spec["nodeName"] = json!(node);
    let mut status = json!({ "phase": if ip.is_some() { "Running" } else { "Pending" } });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["conditions"] = json!([{ "type": "Ready", "status": "True" }]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "labels": meta.labels,
            "annotations": meta.annotations,
        },
        "spec": spec,
        "status": status,
    })
}

/// The file a mesh object is kept in (one object per file).
fn object_file(kind: &str, ns: &str, name: &str) -> String {
    let ns = if kind == "Namespace" { "_" } else { ns };
    format!("{}-{ns}-{name}.yaml", kind.to_lowercase())
}

fn write_yaml(path: &Path, doc: &Value) -> Result<(), LabError> {
    let text = serde_yaml_ng::to_string(doc).map_err(|e| LabError::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(|e| LabError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LabError::io(path, e))
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LabError> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let dir = std::fs::read_dir(path).map_err(|e| LabError::io(path, e))?;
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::lagging_nodes;

    #[test]
    fn nodes_behind_the_index_are_named() {
        let status = serde_json::json!({"version": 7, "nodes": [
            {"node": "node-1", "connected": true, "ackedVersion": 7},
            {"node": "node-2", "connected": true, "ackedVersion": 5, "lastNack": {"version": 6, "error": "bad route"}},
            {"node": "node-3", "connected": false, "ackedVersion": 1},
        ]});
        assert_eq!(
            lagging_nodes(&status),
            ["node node-2 acknowledged config version 5 of 7 (last NACK: bad route)"]
        );
    }
}
