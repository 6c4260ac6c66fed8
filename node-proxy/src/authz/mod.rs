//! Connection-level (L4) authorization of inbound traffic against the
//! `AuthorizationPolicy` resources that apply to the destination workload.
//!
//! Evaluation, as DESIGN.md states it: any matching Deny denies; if any Allow
//! applies to the workload, one of them must match; otherwise the connection
//! is allowed. Audit-mode policies are evaluated and reported but never
//! change the decision.
//!
//! At L4 a rule that also names HTTP methods or paths cannot be checked (the
//! request is not parsed yet), so it is treated conservatively, as ztunnel
//! does: such an Allow rule does not match, such a Deny rule does. The HTTP
//! layer evaluates those fields per request on HTTP ports.

use std::net::IpAddr;

use hawser_api::SpiffeId;
use hawser_api::cni::redirect::Cidr;
use hawser_api::proto::discovery::{
    AuthorizationAction, AuthorizationMode, AuthorizationPolicy, AuthorizationRule, Source,
};

/// What is known about an inbound connection at L4.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The verified peer identity (None: plaintext, from outside the mesh).
    pub peer: Option<&'a SpiffeId>,
    /// The peer's address.
    pub peer_ip: IpAddr,
    /// The destination port on the workload.
    pub port: u16,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Refuse it; `reason` names the policy (or its absence).
    Deny {
        /// Why, for the log and the counter.
        reason: String,
    },
}

/// A decision plus what audit-mode policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The enforced decision.
    pub decision: Decision,
    /// Audit policies that would have denied, with why.
    pub audit_denials: Vec<String>,
}

/// Evaluates `policies` (those applying to the destination workload).
pub fn evaluate(policies: &[&AuthorizationPolicy], conn: &Connection<'_>) -> Evaluation {
    let enforce = |p: &&&AuthorizationPolicy| p.mode() == AuthorizationMode::Enforce;
    let audit = |p: &&&AuthorizationPolicy| p.mode() == AuthorizationMode::Audit;
    let audit_policies: Vec<&AuthorizationPolicy> =
        policies.iter().filter(audit).copied().collect();
    let enforced: Vec<&AuthorizationPolicy> = policies.iter().filter(enforce).copied().collect();
    let audit_denials = match decide(&audit_policies, conn) {
        Decision::Deny { reason } => vec![reason],
        Decision::Allow => Vec::new(),
    };
    Evaluation {
        decision: decide(&enforced, conn),
        audit_denials,
    }
}

fn decide(policies: &[&AuthorizationPolicy], conn: &Connection<'_>) -> Decision {
    for p in policies
        .iter()
        .filter(|p| p.action() == AuthorizationAction::Deny)
    {
        if policy_matches(p, conn) {
            return Decision::Deny {
                reason: format!("denied by policy {}/{}", p.namespace, p.name),
            };
        }
    }
    let allows: Vec<_> = policies
        .iter()
        .filter(|p| p.action() == AuthorizationAction::Allow)
        .collect();
    if allows.is_empty() || allows.iter().any(|p| policy_matches(p, conn)) {
        return Decision::Allow;
    }
    let names: Vec<String> = allows
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    Decision::Deny {
        reason: format!("no allow policy matched (applicable: {})", names.join(", ")),
    }
}

fn policy_matches(p: &AuthorizationPolicy, conn: &Connection<'_>) -> bool {
    if p.rules.is_empty() {
        // No rules: Allow matches nothing, Deny matches everything.
        return p.action() == AuthorizationAction::Deny;
    }
    p.rules.iter().any(|r| rule_matches(r, p.action(), conn))
}

fn rule_matches(
    rule: &AuthorizationRule,
    action: AuthorizationAction,
    conn: &Connection<'_>,
) -> bool {
    if !rule.from.is_empty() && !rule.from.iter().any(|s| source_matches(s, conn)) {
        return false;
    }
    let Some(to) = &rule.to else { return true };
    if !to.ports.is_empty() && !to.ports.contains(&u32::from(conn.port)) {
        return false;
    }
    if !to.methods.is_empty() || !to.paths.is_empty() {
        // Not decidable at L4: see the module docs.
        return action == AuthorizationAction::Deny;
    }
    true
}

fn source_matches(s: &Source, conn: &Connection<'_>) -> bool {
    let needs_identity =
        !s.namespace.is_empty() || !s.service_account.is_empty() || !s.spiffe_id.is_empty();
    if needs_identity {
        // A plaintext peer has no identity, so it never matches these.
        let Some(peer) = conn.peer else { return false };
        if !s.spiffe_id.is_empty() && peer.as_str() != s.spiffe_id {
            return false;
        }
        if !s.namespace.is_empty() && peer.namespace() != Some(s.namespace.as_str()) {
            return false;
        }
        if !s.service_account.is_empty()
            && peer.service_account() != Some(s.service_account.as_str())
        {
            return false;
        }
    }
    if !s.ip_block.is_empty() {
        return parse_cidr(&s.ip_block).is_some_and(|c| c.contains(conn.peer_ip));
    }
    true
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse().ok()?, l.parse().ok()?),
        None => {
            let a: IpAddr = s.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    Cidr::new(addr, len).ok()
}

#[cfg(test)]
mod tests;
