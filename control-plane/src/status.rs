//! Status as data. Routes: one entry per Service parent with `Accepted` and
//! `ResolvedRefs` conditions, as the Gateway API defines them (a Kubernetes
//! source writes the same data into `status.parents`). AuthorizationPolicies:
//! an `Accepted` condition and the fields that cannot be enforced on which
//! ports ([`PolicyStatus`]). Printable for the CLI and the admin API
//! (Display, and serde for JSON).

use std::fmt;

use serde::Serialize;

use crate::model::{ObjectKey, ParentRef, RouteRef};

/// `controllerName` Hawser writes in every parent status.
pub const CONTROLLER_NAME: &str = "hawser.dev/mesh";

/// The status of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    /// Which route.
    pub route: RouteRef,
    /// One entry per distinct Service `parentRef` (Gateway parents are not ours).
    pub parents: Vec<ParentStatus>,
}

/// The status of a route for one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    /// The `parentRef` as written.
    pub parent_ref: ParentRef,
    /// Always [`CONTROLLER_NAME`].
    pub controller_name: &'static str,
    /// `Accepted` then `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

impl ParentStatus {
    /// The condition of type `kind`.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

/// Condition types Hawser sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionType {
    /// The route attaches to the parent; the policy is enforced as written.
    Accepted,
    /// Every reference of the route resolves.
    ResolvedRefs,
}

/// Condition reasons, named as in the Gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// Accepted=True.
    Accepted,
    /// The parent Service (or its port / section) does not exist or cannot be a parent.
    NoMatchingParent,
    /// The route uses a value Hawser does not support.
    UnsupportedValue,
    /// Another route type wins every port of this parent (GEP-1294).
    Conflicted,
    /// ResolvedRefs=True.
    ResolvedRefs,
    /// A backendRef names a Service (or port) that does not exist.
    BackendNotFound,
    /// A backendRef names something other than a core Service.
    InvalidKind,
    /// An AuthorizationPolicy names HTTP fields (methods, paths) for ports
    /// that do not carry HTTP, where they cannot be enforced.
    UnenforceableFields,
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ConditionType,
    /// `True` or `False`.
    pub status: bool,
    /// Why.
    pub reason: Reason,
    /// Details naming what is wrong.
    pub message: String,
    /// The route generation this was computed from.
    pub observed_generation: i64,
}

/// `Type=True|False Reason (generation N)[: message]`, on one line.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} {} (generation {})",
            self.kind,
            if self.status { "True" } else { "False" },
            self.reason,
            self.observed_generation
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for RouteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.route)?;
        if self.parents.is_empty() {
            writeln!(f, "  no Service parent")?;
        }
        for p in &self.parents {
            writeln!(f, "  parent {} ({})", p.parent_ref, p.controller_name)?;
            for c in &p.conditions {
                writeln!(f, "    {c}")?;
            }
        }
        Ok(())
    }
}

/// The status of one AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// Which policy.
    pub policy: ObjectKey,
    /// `Accepted`: `False` (reason [`Reason::UnenforceableFields`]) when
    /// [`Self::unenforceable`] is not empty.
    pub conditions: Vec<Condition>,
    /// What cannot be enforced where.
    pub unenforceable: Vec<Unenforceable>,
}

/// Fields of one rule that cannot be enforced on a port. They are enforced
/// fail-closed there: an Allow rule never matches, a Deny rule matches once
/// its sources do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unenforceable {
    /// The fields, as paths into the spec (`spec.rules[0].to.methods`).
    pub fields: Vec<String>,
    /// The port (on the workloads). `None`: the rule names no port and no
    /// workload the policy applies to has an HTTP port.
    pub port: Option<u16>,
    /// Why, for people.
    pub message: String,
}

impl fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "AuthorizationPolicy {}", self.policy)?;
        for c in &self.conditions {
            writeln!(f, "  {c}")?;
        }
        for u in &self.unenforceable {
            writeln!(f, "    {}", u.message)?;
        }
        Ok(())
    }
}
