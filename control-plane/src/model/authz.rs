//! AuthorizationPolicy as the mesh enforces it (validated; see [`crate::authz`]).

use std::fmt;
use std::net::IpAddr;

use super::{LabelSelector, ObjectKey};

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationAction {
    /// Matching traffic is allowed (and, once any Allow applies, only it).
    Allow,
    /// Matching traffic is denied.
    Deny,
}

/// Whether decisions are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Enforced.
    Enforce,
    /// Only logged and counted.
    Audit,
}

/// Which workloads a policy applies to (always in its own namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationTarget {
    /// Pods whose labels match (`{}`: the whole namespace).
    Selector(LabelSelector),
    /// The pods behind these Services (`targetRefs`).
    Services(Vec<String>),
}

/// A CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `rules[].from[]`: every present field must match the peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySource {
    /// The peer's namespace.
    pub namespace: Option<String>,
    /// The peer's ServiceAccount.
    pub service_account: Option<String>,
    /// The peer's exact SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// The peer's address range.
    pub ip_block: Option<IpBlock>,
}

/// An HTTP path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPath {
    /// The whole path.
    Exact(String),
    /// Element-wise prefix.
    Prefix(String),
}

/// `rules[].to`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyDestination {
    /// Destination ports; empty: any.
    pub ports: Vec<u16>,
    /// HTTP methods, upper-case; empty: any.
    pub methods: Vec<String>,
    /// HTTP paths; empty: any.
    pub paths: Vec<PolicyPath>,
}

/// One rule: all present parts must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationRule {
    /// Any source; empty: any.
    pub from: Vec<PolicySource>,
    /// Destination; None: any.
    pub to: Option<PolicyDestination>,
}

/// An AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation`.
    pub generation: i64,
    /// Which workloads.
    pub target: AuthorizationTarget,
    /// Allow or Deny.
    pub action: AuthorizationAction,
    /// Enforce or Audit.
    pub mode: AuthorizationMode,
    /// Any rule matching makes the policy match.
    pub rules: Vec<AuthorizationRule>,
}
