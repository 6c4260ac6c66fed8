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
        Ok(report)
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
            let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
            for p in if ports.is_empty() { vec![8080] } else { ports } {
                args.extend(["--port".to_owned(), p.to_string()]);
            }
            let bin = self.config().bin_dir.join("hawser-echo");
            self.spawn(&format!("{role} {}", c.name), netns, &bin, &args, &env)?;
        }
        Ok(())
    }
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
