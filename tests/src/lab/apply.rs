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

/// How `apply` treats the documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Check every document, then apply the valid ones.
    #[default]
    Apply,
    /// Check every document and say what applying would change; change nothing.
    DryRun,
}

/// Namespaces every cluster has.
const BUILTIN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The kinds `lab apply` takes, with their API versions.
const LAB_KINDS: &str = "Namespace, Service, Pod (v1), Deployment (apps/v1), EndpointSlice \
     (discovery.k8s.io/v1), HTTPRoute, GRPCRoute (gateway.networking.k8s.io/v1), \
     AuthorizationPolicy (policy.hawser.dev/v1alpha1)";

/// Kinds a Kubernetes API server serves that the lab does not run.
const KINDS_NOT_RUN: [&str; 27] = [
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Endpoints",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "ReplicationController",
    "LimitRange",
    "ResourceQuota",
    "Node",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "Ingress",
    "IngressClass",
    "NetworkPolicy",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Gateway",
    "GatewayClass",
    "ReferenceGrant",
];

/// One document, checked and ready to apply.
enum Planned {
    Deployment(Box<Deployment>),
    Pod(Box<K8sPod>),
    /// An object the control plane reads (Namespace, Service, routes, policies).
    Object {
        kind: String,
        namespace: String,
        name: String,
        doc: Value,
    },
}

impl Lab {
    /// Applies a manifest file, or every `*.yaml`/`*.yml` file of a directory
    /// (see [`Lab::apply_with`]).
    pub fn apply(&mut self, path: &Path) -> Result<ApplyReport, LabError> {
        self.apply_with(path, Mode::Apply)
    }

    /// Applies a manifest file, or every `*.yaml`/`*.yml` file of a directory.
    /// Every document is checked as the API server would check it before
    /// anything of it is applied; a refused document is reported and nothing
    /// of it applies, while the valid ones do. In [`Mode::DryRun`] nothing
    /// changes and the report says what would.
    pub fn apply_with(&mut self, path: &Path, mode: Mode) -> Result<ApplyReport, LabError> {
        let mut report = ApplyReport::default();
        let mut namespaces = self.namespaces();
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| LabError::io(&file, e))?;
            self.apply_file(&file, &text, mode, &mut namespaces, &mut report)?;
        }
        if mode == Mode::Apply {
            self.sync_kube_proxy()?;
            self.wait_synced()?;
        }
        Ok(report)
    }

    /// The namespaces that exist: the built-in ones and those applied.
    fn namespaces(&self) -> std::collections::BTreeSet<String> {
        let prefix = "namespace-_-";
        let applied = std::fs::read_dir(self.manifests_dir().join("applied"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                Some(name.strip_prefix(prefix)?.strip_suffix(".yaml")?.to_owned())
            });
        BUILTIN_NAMESPACES
            .iter()
            .map(|n| (*n).to_owned())
            .chain(applied)
            .collect()
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
        mode: Mode,
        namespaces: &mut std::collections::BTreeSet<String>,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        // The control plane's verdict on every mesh document (strict fields,
        // YAML errors with their place), by document number.
        let parsed = hawser_control_plane::sources::manifests::parse(file, text);
        // Refusals by document number, reported in the file's order.
        let mut refused: Vec<(usize, String)> = parsed
            .errors
            .iter()
            .map(|e| (e.document, e.to_string()))
            .collect();
        let bad: std::collections::BTreeSet<usize> =
            parsed.errors.iter().map(|e| e.document).collect();
        // The documents the control plane took as mesh objects (its table
        // of kinds and versions is the one the lab goes by).
        let mesh: std::collections::BTreeSet<usize> =
            parsed.objects.iter().map(|(number, _)| *number).collect();
        let docs = hawser_control_plane::sources::manifests::document::documents(text);
        for (i, doc) in docs.into_iter().enumerate() {
            let number = i + 1;
            // YAML errors are among the control plane's errors.
            let Ok(doc) = doc else { continue };
            if bad.contains(&number) || doc.is_null() {
                continue;
            }
            let where_ = format!("{}: document {number}", file.display());
            let planned = match self.check(doc, mesh.contains(&number), namespaces) {
                Ok(p) => p,
                Err(reason) => {
                    refused.push((number, format!("{where_}{reason}")));
                    continue;
                }
            };
            self.apply_planned(planned, mode, namespaces, report)?;
        }
        refused.sort_by_key(|(number, _)| *number);
        report.errors.extend(refused.into_iter().map(|(_, e)| e));
        Ok(())
    }

    /// Checks one document as the API server would (kind, fields, namespace)
    /// without changing anything; the error is `" (Kind ns/name): field: reason"`.
    fn check(
        &self,
        doc: Value,
        mesh_object: bool,
        namespaces: &std::collections::BTreeSet<String>,
    ) -> Result<Planned, String> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let (api_version, kind) = (text(&doc["apiVersion"]), text(&doc["kind"]));
        let name = text(&doc["metadata"]["name"]);
        let cluster_scoped = kind == "Namespace";
        let namespace = if cluster_scoped {
            String::new()
        } else {
            doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        };
        let what = format!(" ({kind} {})", object_name(&kind, &namespace, &name));
        let field_error = |errors: Vec<hawser_control_plane::convert::FieldError>| {
            let errors: Vec<String> = errors
                .into_iter()
                .map(|e| match e.field.as_str() {
                    "" => e.reason,
                    f => format!("{f}: {}", e.reason),
                })
                .collect();
            format!("{what}: {}", errors.join("; "))
        };
        let planned = match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => {
                let d: Deployment =
                    hawser_control_plane::sources::manifests::typed(&doc).map_err(field_error)?;
                if d.spec.is_none() {
                    return Err(format!("{what}: spec: is required"));
                }
                Planned::Deployment(Box::new(d))
            }
            // The control plane's parser has read these, strictly.
            (_, "Pod") if mesh_object => Planned::Pod(Box::new(
                serde_json::from_value(doc).map_err(|e| format!("{what}: {e}"))?,
            )),
            _ if mesh_object => Planned::Object {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                doc,
            },
            (_, "Deployment") => {
                return Err(format!(
                    "{what}: apiVersion: {api_version:?} is not a version of Deployment the lab serves (apps/v1)"
                ));
            }
            (_, k) if KINDS_NOT_RUN.contains(&k) => {
                return Err(format!(
                    "{what}: kind: the lab does not run {k} objects (it takes {LAB_KINDS})"
                ));
            }
            _ => {
                return Err(format!(
                    "{what}: kind: no matches for kind {kind:?} in version {api_version:?} (the lab takes {LAB_KINDS})"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("{what}: metadata.name: is required"));
        }
        if !cluster_scoped && !namespaces.contains(&namespace) {
            return Err(format!(
                "{what}: metadata.namespace: namespace {namespace:?} not found (apply a Namespace named {namespace} first)"
            ));
        }
        if let Planned::Object { kind, doc, .. } = &planned
            && kind == "Service"
            && let Err(reason) = super::kubeproxy::cluster_ip_of(&doc["spec"])
        {
            return Err(format!("{what}: {reason}"));
        }
        Ok(planned)
    }

    fn apply_planned(
        &mut self,
        planned: Planned,
        mode: Mode,
        namespaces: &mut std::collections::BTreeSet<String>,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        let dry = if mode == Mode::DryRun {
            " (dry run)"
        } else {
            ""
        };
        match planned {
            Planned::Deployment(d) => self.apply_deployment(&d, mode, report),
            Planned::Pod(p) => {
                let ns = p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let name = p.metadata.name.clone().unwrap_or_default();
                let spec = p.spec.clone().unwrap_or_default();
                if mode == Mode::DryRun || self.pod(&ns, &name).is_some() {
                    let verb = if self.pod(&ns, &name).is_some() {
                        "unchanged"
                    } else {
                        "created"
                    };
                    report.applied.push(format!("pod {ns}/{name} {verb}{dry}"));
                    return Ok(());
                }
                self.run_pod(&ns, &name, &p.metadata, &spec, report)
            }
            Planned::Object {
                kind,
                namespace,
                name,
                mut doc,
            } => {
                let out_dir = self.manifests_dir().join("applied");
                let target = out_dir.join(object_file(&kind, &namespace, &name));
                let existing: Option<Value> = std::fs::read_to_string(&target)
                    .ok()
                    .and_then(|t| serde_yaml_ng::from_str(&t).ok());
                let mut service = None;
                if kind == "Service" {
                    let mut svc = super::kubeproxy::service_of(&doc, &namespace, &name);
                    // As the API server does: a ClusterIP, once allocated, is
                    // part of the object and stays across applies.
                    let given = super::kubeproxy::cluster_ip_of(&doc["spec"]);
                    svc.cluster_ip = match given {
                        Ok(Some(given)) => given,
                        _ => self
                            .state()
                            .services
                            .iter()
                            .find(|s| s.namespace == namespace && s.name == name)
                            .and_then(|s| s.cluster_ip),
                    };
                    if let Some(ip) = svc.cluster_ip {
                        doc["spec"]["clusterIP"] = json!(ip.to_string());
                    }
                    // Headless (`None`) or given: nothing to allocate.
                    let allocate = matches!(given, Ok(None)) && svc.cluster_ip.is_none();
                    service = Some((svc, allocate));
                }
                let verb = match &existing {
                    None => "created",
                    Some(old) if *old == doc => "unchanged",
                    Some(_) => "configured",
                };
                let line = format!(
                    "{} {} {verb}{dry}",
                    kind.to_lowercase(),
                    object_name(&kind, &namespace, &name)
                );
                if kind == "Namespace" {
                    namespaces.insert(name.clone());
                }
                if mode == Mode::Apply {
                    if let Some((mut svc, allocate)) = service {
                        if allocate {
                            let ip = self.allocate_cluster_ip()?;
                            svc.cluster_ip = Some(ip);
                            doc["spec"]["clusterIP"] = json!(ip.to_string());
                        }
                        self.upsert_service(svc)?;
                    }
                    std::fs::create_dir_all(&out_dir).map_err(|e| LabError::io(&out_dir, e))?;
                    write_yaml(&target, &doc)?;
                }
                report.applied.push(line);
                Ok(())
            }
        }
    }

    /// Deletes what the manifests in `path` describe: Deployments' and Pods'
    /// pods (stopped, CNI DEL, netns removed, Pod objects withdrawn) and the
    /// mesh objects. Documents that name nothing the lab holds are reported.
    pub fn delete(&mut self, path: &Path) -> Result<ApplyReport, LabError> {
        let mut report = ApplyReport::default();
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| LabError::io(&file, e))?;
            let docs = hawser_control_plane::sources::manifests::document::documents(&text);
            // As kubectl: a file that does not parse deletes nothing.
            let invalid: Vec<String> = docs
                .iter()
                .filter_map(|d| d.as_ref().err())
                .map(|e| format!("{}: document {}: {e}", file.display(), e.document))
                .collect();
            if !invalid.is_empty() {
                report.errors.extend(invalid);
                report.errors.push(format!(
                    "{}: nothing of this file was deleted",
                    file.display()
                ));
                continue;
            }
            for (i, doc) in docs.into_iter().flatten().enumerate() {
                if doc.is_null() {
                    continue;
                }
                let where_ = format!("{}: document {}", file.display(), i + 1);
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
                            Ok(()) => report.applied.push(format!(
                                "{} {} deleted",
                                kind.to_lowercase(),
                                object_name(&kind, &ns, &name)
                            )),
                            Err(_) => report.errors.push(format!(
                                "{where_}: {kind} {} is not in the lab",
                                object_name(&kind, &ns, &name)
                            )),
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
                    report.applied.push(format!("pod {ns}/{pod} deleted"));
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
        mode: Mode,
        report: &mut ApplyReport,
    ) -> Result<(), LabError> {
        let ns = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = d.metadata.name.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        let running = (0..replicas)
            .filter(|i| self.pod(&ns, &format!("{name}-{i}")).is_some())
            .count();
        let verb = match running {
            0 => "created",
            n if n == replicas => "unchanged",
            _ => "configured",
        };
        let dry = if mode == Mode::DryRun {
            " (dry run)"
        } else {
            ""
        };
        let plural = if replicas == 1 { "replica" } else { "replicas" };
        report.applied.push(format!(
            "deployment {ns}/{name} {verb} ({replicas} {plural}){dry}"
        ));
        if mode == Mode::DryRun {
            return Ok(());
        }
        let template_meta = spec.template.metadata.clone().unwrap_or_default();
        let pod_spec = spec.template.spec.clone().unwrap_or_default();
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            if self.pod(&ns, &pod_name).is_some() {
                continue;
            }
            self.run_pod(&ns, &pod_name, &template_meta, &pod_spec, report)?;
        }
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
            "pod {ns}/{name} created on {node} ({})",
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

/// How an object is named in messages: `ns/name`, or `name` for a
/// cluster-scoped kind.
fn object_name(kind: &str, ns: &str, name: &str) -> String {
    if kind == "Namespace" {
        name.to_owned()
    } else {
        format!("{ns}/{name}")
    }
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
