//! Whether an AuthorizationPolicy can be enforced as written: methods and
//! paths are only checked on HTTP ports (the node proxy parses requests
//! there and relays bytes elsewhere), so a rule naming them for a port that
//! does not carry HTTP is reported in the policy's status, with the fields
//! and the port, instead of being silently weakened. The node proxy
//! enforces such rules fail-closed (an Allow never matches, a Deny matches).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::AuthorizationPolicy;
use crate::status::{Condition, ConditionType, PolicyStatus, Reason, Unenforceable};

/// The ports of the workloads a policy applies to, by whether they carry
/// HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadPorts {
    /// Ports that are HTTP on at least one workload.
    pub http: BTreeSet<u16>,
    /// Ports that are not HTTP on at least one workload.
    pub tcp: BTreeSet<u16>,
}

impl WorkloadPorts {
    /// Adds one workload's ports: target port → whether every Service
    /// mapping it declares it HTTP (see [`is_http_port`]).
    pub fn add_workload(&mut self, ports: &BTreeMap<u16, bool>) {
        for (port, http) in ports {
            if *http {
                self.http.insert(*port);
            } else {
                self.tcp.insert(*port);
            }
        }
    }

    /// Whether HTTP fields can be enforced on `port`: it is HTTP wherever
    /// it is known (a port no Service maps is relayed as TCP).
    fn enforceable(&self, port: u16) -> bool {
        self.http.contains(&port) && !self.tcp.contains(&port)
    }
}

/// Whether a Service port carries HTTP, as the node proxies decide it.
pub use hawser_api::protocol::is_http as is_http_port;

/// The status of `policy` given the ports of the workloads it applies to.
pub fn policy_status(policy: &AuthorizationPolicy, ports: &WorkloadPorts) -> PolicyStatus {
    let mut unenforceable = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let Some(to) = &rule.to else { continue };
        let fields: Vec<String> = [
            ("methods", to.methods.is_empty()),
            ("paths", to.paths.is_empty()),
        ]
        .into_iter()
        .filter(|(_, empty)| !empty)
        .map(|(f, _)| format!("spec.rules[{i}].to.{f}"))
        .collect();
        if fields.is_empty() {
            continue;
        }
        let named = fields.join(" and ");
        let candidates: Vec<u16> = if to.ports.is_empty() {
            if ports.http.is_empty() {
                let known = if ports.tcp.is_empty() {
                    "no port known".to_owned()
                } else {
                    format!("ports: {}", list(&ports.tcp))
                };
                unenforceable.push(Unenforceable {
                    fields: fields.clone(),
                    port: None,
                    message: format!(
                        "{named} cannot be enforced: no workload the policy applies to has an HTTP port ({known})"
                    ),
                });
                continue;
            }
            // The rule applies to every port, the TCP ones too.
            ports.tcp.iter().copied().collect()
        } else {
            to.ports.clone()
        };
        for port in candidates {
            if !ports.enforceable(port) {
                unenforceable.push(Unenforceable {
                    fields: fields.clone(),
                    port: Some(port),
                    message: format!(
                        "{named} cannot be enforced on port {port}: not an HTTP port of the workloads the policy applies to"
                    ),
                });
            }
        }
    }
    let enforceable = unenforceable.is_empty();
    let accepted = Condition {
        kind: ConditionType::Accepted,
        status: enforceable,
        reason: if enforceable {
            Reason::Accepted
        } else {
            Reason::UnenforceableFields
        },
        message: if enforceable {
            String::new()
        } else {
            format!(
                "{} rule field(s) cannot be enforced where they apply; there an Allow rule never matches and a Deny rule always does (set `to.ports` to HTTP ports)",
                unenforceable.len()
            )
        },
        observed_generation: policy.generation,
    };
    PolicyStatus {
        policy: policy.key.clone(),
        conditions: vec![accepted],
        unenforceable,
    }
}

fn list(ports: &BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
