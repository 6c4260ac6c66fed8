//! The lab's kube-proxy stand-in: ClusterIPs allocated from the service CIDR
//! and, in every node's namespace, an nftables table that DNATs each Service
//! VIP:port to a random ready endpoint, so pods outside the mesh reach
//! Services as they would on Kubernetes (like kube-proxy's nftables mode:
//! a `numgen random` verdict map over one chain per endpoint). Connections
//! DNATed to a pod on the same node are masqueraded so the reply comes back
//! through the node (the hairpin case).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;

use super::{Lab, LabError, LabService, sys};

/// The table in each node namespace.
pub const TABLE: &str = "hawser-lab-kubeproxy";
/// Where ClusterIPs come from (the Kubernetes default).
const SERVICE_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 16);

impl Lab {
    /// A free ClusterIP (10.96.0.10 upwards; .1 is the API server's by convention).
    pub(crate) fn allocate_cluster_ip(&self) -> Result<Ipv4Addr, LabError> {
        let used: std::collections::BTreeSet<Ipv4Addr> = self
            .state()
            .services
            .iter()
            .filter_map(|s| s.cluster_ip)
            .collect();
        let base = u32::from(SERVICE_CIDR.0);
        (10..(1u32 << (32 - SERVICE_CIDR.1)) - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| LabError::Invalid {
                what: "service CIDR".into(),
                reason: "no ClusterIP left in 10.96.0.0/16".into(),
            })
    }

    /// The ruleset for the current Services and pods.
    pub fn kube_proxy_rules(&self) -> String {
        let mut out = format!("table ip {TABLE} {{\n");
        let mut dispatch = String::new();
        for (si, svc) in self.state().services.iter().enumerate() {
            let (Some(vip), Some(selector)) = (svc.cluster_ip, &svc.selector) else {
                continue;
            };
            let endpoints: Vec<_> = self
                .state()
                .pods
                .iter()
                .filter(|p| p.namespace == svc.namespace && p.ip.is_some())
                .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .collect();
            for (pi, (port, target)) in svc.ports.iter().enumerate() {
                let targets: Vec<(Ipv4Addr, u16)> = endpoints
                    .iter()
                    .filter_map(|p| {
                        let tp = target
                            .parse()
                            .ok()
                            .or_else(|| p.ports.get(target).copied())?;
                        Some((p.ip?, tp))
                    })
                    .collect();
                if targets.is_empty() {
                    // No endpoint: refuse at once, as kube-proxy does.
                    let _ = writeln!(
                        dispatch,
                        "    ip daddr {vip} tcp dport {port} reject with tcp reset"
                    );
                    continue;
                }
                let mut map = Vec::new();
                for (ei, (ip, tp)) in targets.iter().enumerate() {
                    let chain = format!("svc{si}-{pi}-ep{ei}");
                    let _ = writeln!(
                        out,
                        "  chain {chain} {{\n    meta l4proto tcp dnat to {ip}:{tp}\n  }}"
                    );
                    map.push(format!("{ei} : goto {chain}"));
                }
                let _ = writeln!(
                    dispatch,
                    "    ip daddr {vip} tcp dport {port} numgen random mod {} vmap {{ {} }}",
                    targets.len(),
                    map.join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "  chain services {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dispatch}  }}"
        );
        let _ = writeln!(
            out,
            "  chain hairpin {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct status dnat oifname \"cni0\" masquerade\n  }}"
        );
        out.push_str("}\n");
        out
    }

    /// The cluster DNS records for the current Services: the ClusterIP, or a
    /// headless Service's pod IPs.
    pub fn dns_records(&self) -> super::dns::Records {
        let mut records = super::dns::Records::new();
        for svc in &self.state().services {
            let fqdn = format!(
                "{}.{}.svc.{}",
                svc.name,
                svc.namespace,
                super::dns::CLUSTER_DOMAIN
            );
            let ips = match (svc.cluster_ip, &svc.selector) {
                (Some(ip), _) => vec![ip],
                (None, Some(selector)) => self
                    .state()
                    .pods
                    .iter()
                    .filter(|p| p.namespace == svc.namespace)
                    .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                    .filter_map(|p| p.ip)
                    .collect(),
                (None, None) => Vec::new(),
            };
            records.insert(fqdn.to_ascii_lowercase(), ips);
        }
        records
    }

    /// Where the DNS server reads its records.
    pub fn dns_records_file(&self) -> std::path::PathBuf {
        self.config().state_dir.join("dns-records.json")
    }

    /// Brings the kube-proxy tables in every node namespace and the DNS
    /// records up to date with the current Services and pods.
    pub fn sync_kube_proxy(&self) -> Result<(), LabError> {
        let file = self.dns_records_file();
        let tmp = file.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&self.dns_records()).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &file).map_err(|e| LabError::io(&file, e))?;
        let rules = self.kube_proxy_rules();
        for node in &self.state().nodes {
            // Delete and recreate in one transaction: never a half-written table.
            let mut script = String::new();
            if sys::netns_exec(&node.netns, "nft", ["list", "table", "ip", TABLE]).is_ok() {
                let _ = writeln!(script, "delete table ip {TABLE}");
            }
            script.push_str(&rules);
            sys::run_with(
                Command::new("ip").args(["netns", "exec", &node.netns, "nft", "-f", "-"]),
                Some(script.as_bytes()),
            )?;
        }
        Ok(())
    }

    /// Records a Service (allocating its ClusterIP unless headless or given).
    pub(crate) fn upsert_service(&mut self, mut svc: LabService) -> Result<LabService, LabError> {
        let existing = self
            .state()
            .services
            .iter()
            .position(|s| s.namespace == svc.namespace && s.name == svc.name);
        if let Some(i) = existing {
            if svc.cluster_ip.is_none() {
                svc.cluster_ip = self.state().services[i].cluster_ip;
            }
            self.state_mut().services[i] = svc.clone();
        } else {
            self.state_mut().services.push(svc.clone());
        }
        self.save()?;
        Ok(svc)
    }
}

/// `Some(ip)` to allocate, or the spec's ClusterIP (`None` when headless).
pub(crate) fn cluster_ip_of(spec: &serde_json::Value) -> Result<Option<Option<Ipv4Addr>>, String> {
    match spec["clusterIP"].as_str() {
        None | Some("") => Ok(None),
        Some("None") => Ok(Some(None)),
        Some(ip) => ip
            .parse()
            .map(|ip| Some(Some(ip)))
            .map_err(|_| format!("spec.clusterIP {ip:?} is not an IPv4 address")),
    }
}

/// The lab's view of a Service document.
pub(crate) fn service_of(doc: &serde_json::Value, ns: &str, name: &str) -> LabService {
    let selector = doc["spec"]["selector"].as_object().map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    });
    let ports = doc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p["port"].as_u64()?).ok()?;
            let target = match &p["targetPort"] {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                _ => port.to_string(),
            };
            Some((port, target))
        })
        .collect();
    LabService {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        cluster_ip: None,
        selector,
        ports,
    }
}
