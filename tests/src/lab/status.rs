//! `hawser lab status`: what the lab is made of and how its processes are.
//! Enrollment is read from the node proxies themselves (`/pods` on their
//! admin API), so "enrolled" means "this pod's traffic is in the mesh now",
//! not "its namespace carries the label".

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;

use super::{Lab, NODE_PROXY_ADMIN_ADDR, sys};

/// The lab as `hawser lab status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Pods.
    pub pods: Vec<PodStatus>,
    /// Services (ClusterIP and ports).
    pub services: Vec<ServiceStatus>,
    /// Background processes.
    pub processes: Vec<ProcessStatus>,
    /// The mesh's trust bundle.
    pub trust_bundle: PathBuf,
    /// The manifests the control plane serves.
    pub manifests: PathBuf,
    /// The control plane's gRPC address (on the underlay).
    pub control_plane: String,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// The node proxy's admin address (inside the node's namespace).
    pub proxy_admin: String,
    /// `ready`, or why not (`not ready: …`, `down: …`).
    pub proxy_health: String,
}

/// One pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// IP.
    pub ip: Option<Ipv4Addr>,
    /// Whether its node proxy serves it (its traffic is in the mesh).
    pub enrolled: bool,
}

/// One Service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP (`None`: headless).
    pub cluster_ip: Option<Ipv4Addr>,
    /// `port → targetPort`.
    pub ports: Vec<String>,
}

/// One background process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Role.
    pub role: String,
    /// Pid.
    pub pid: u32,
    /// Whether it runs.
    pub alive: bool,
    /// Log file.
    pub log: PathBuf,
}

impl Lab {
    /// Gathers the status, asking each node proxy for its health and pods.
    pub fn status(&self) -> LabStatus {
        let mut served = BTreeSet::new();
        let nodes = self
            .state()
            .nodes
            .iter()
            .map(|n| {
                let proxy_health = match self.node_proxy_get(&n.name, "/ready") {
                    Ok((200, _)) => "ready".to_owned(),
                    Ok((_, body)) => body.trim().to_owned(),
                    Err(e) => format!("down: {e}"),
                };
                if let Ok((200, body)) = self.node_proxy_get(&n.name, "/pods")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                {
                    for p in v["pods"].as_array().into_iter().flatten() {
                        served.insert((
                            p["namespace"].as_str().unwrap_or_default().to_owned(),
                            p["name"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
                NodeStatus {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    underlay_ip: n.underlay_ip,
                    pod_cidr: n.pod_cidr.clone(),
                    proxy_admin: NODE_PROXY_ADMIN_ADDR.to_owned(),
                    proxy_health,
                }
            })
            .collect();
        let pods = self
            .state()
            .pods
            .iter()
            .map(|p| PodStatus {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                ip: p.ip,
                enrolled: served.contains(&(p.namespace.clone(), p.name.clone())),
            })
            .collect();
        let services = self
            .state()
            .services
            .iter()
            .map(|s| ServiceStatus {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cluster_ip: s.cluster_ip,
                ports: s
                    .ports
                    .iter()
                    .map(|(port, target)| format!("{port}→{target}"))
                    .collect(),
            })
            .collect();
        let processes = self
            .state()
            .processes
            .iter()
            .map(|p| ProcessStatus {
                role: p.role.clone(),
                pid: p.pid,
                alive: sys::alive(p.pid),
                log: p.log.clone(),
            })
            .collect();
        LabStatus {
            nodes,
            pods,
            services,
            processes,
            trust_bundle: self.trust_bundle(),
            manifests: self.manifests_dir(),
            control_plane: format!("{}:15012", super::CONTROL_PLANE_IP),
        }
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes:")?;
        for n in &self.nodes {
            writeln!(
                f,
                "  {:<8} netns {:<14} underlay {:<15} pods {:<15} proxy {} ({})",
                n.name, n.netns, n.underlay_ip, n.pod_cidr, n.proxy_admin, n.proxy_health
            )?;
        }
        writeln!(f, "pods:")?;
        if self.pods.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for p in &self.pods {
            let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            let mesh = if p.enrolled { "enrolled" } else { "-" };
            writeln!(
                f,
                "  {:<28} {:<8} {:<15} {mesh}",
                format!("{}/{}", p.namespace, p.name),
                p.node,
                ip
            )?;
        }
        writeln!(f, "services:")?;
        if self.services.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for s in &self.services {
            let vip = s
                .cluster_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "None (headless)".into());
            writeln!(
                f,
                "  {:<28} {:<15} {}",
                format!("{}/{}", s.namespace, s.name),
                vip,
                s.ports.join(", ")
            )?;
        }
        writeln!(f, "processes:")?;
        for p in &self.processes {
            let state = if p.alive { "running" } else { "DEAD" };
            writeln!(
                f,
                "  {:<18} pid {:<8} {state:<8} log {}",
                p.role,
                p.pid,
                p.log.display()
            )?;
        }
        writeln!(
            f,
            "control plane: {} (admin {} inside the underlay namespace)",
            self.control_plane,
            super::ADMIN_ADDR
        )?;
        writeln!(f, "trust bundle:  {}", self.trust_bundle.display())?;
        write!(f, "manifests:     {}", self.manifests.display())
    }
}
