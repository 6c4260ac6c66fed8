//! Hawser's `AuthorizationPolicy` custom resource (`policy.hawser.dev/v1alpha1`):
//! the Rust type its CRD is generated from, its validation into the model,
//! and its status. Fields that cannot be enforced are rejected with the
//! field and the reason, never dropped: invalid ones at validation, HTTP
//! fields on ports that do not carry HTTP in the status ([`status`]).

pub mod status;
mod validate;

#[cfg(test)]
mod tests;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use validate::to_model;

/// Which traffic to a namespace's workloads is allowed or denied.
///
/// Applies to the pods selected by `selector` (`{}`: every pod of the
/// namespace) or to the pods behind the Services in `targetRefs`. Evaluation
/// per inbound connection or request: any matching Deny denies; if any Allow
/// applies to the workload, one must match; otherwise the traffic is allowed.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.hawser.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "hap",
    namespaced,
    derive = "PartialEq",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Services whose pods the policy applies to (same namespace). Exclusive
    /// with `selector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Pods the policy applies to, by label (`{}`: the whole namespace).
    /// Exclusive with `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    /// `Allow` (default) or `Deny`.
    #[serde(default)]
    pub action: PolicyAction,
    /// `Enforce` (default) or `Audit` (log and count only).
    #[serde(default)]
    pub mode: PolicyMode,
    /// The policy matches traffic matching any rule. No rules: an Allow
    /// policy matches nothing (denies all), a Deny policy matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// A Service in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// API group: `""` (core).
    #[serde(default)]
    pub group: String,
    /// Kind: `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
}

/// A label selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<PolicySelectorRequirement>,
}

/// One label requirement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// What a matching policy does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PolicyAction {
    /// Allow matching traffic; once any Allow applies, only matching traffic is allowed.
    #[default]
    Allow,
    /// Deny matching traffic.
    Deny,
}

/// Whether decisions are enforced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PolicyMode {
    /// Enforce decisions.
    #[default]
    Enforce,
    /// Only log and count decisions.
    Audit,
}

/// A rule: matches when a source in `from` (any, if empty) sends traffic
/// matching `to` (any, if absent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Sources; one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicySource>,
    /// The destination condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<PolicyDestination>,
}

/// A source: every field set must match the peer; at least one is required.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySource {
    /// The peer's ServiceAccount; with no `namespace`, in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The peer's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The peer's exact SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// A CIDR the peer's address must be in (`10.0.0.0/8`, `fd00::/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<String>,
}

/// A destination: every field set must match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDestination {
    /// Destination ports on the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    /// HTTP methods, upper-case (`GET`); only on HTTP ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP paths: exact (`/healthz`) or element-wise prefix ending in `/*`
    /// (`/api/*`); only on HTTP ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The CRD as YAML, as written to `crds/authorizationpolicies.policy.hawser.dev.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let yaml = serde_yaml_ng::to_string(&AuthorizationPolicy::crd())?;
    Ok(format!(
        "# Generated from hawser-control-plane's authz::AuthorizationPolicySpec. Do not edit:\n\
         # run `HAWSER_UPDATE_CRDS=1 cargo test -p hawser-control-plane crd` to regenerate.\n{yaml}"
    ))
}
