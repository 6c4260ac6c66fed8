//! Validation of an `AuthorizationPolicy` into the model: every field the
//! node proxy could not enforce exactly as written is an error.

use std::net::IpAddr;

use hawser_api::SpiffeId;

use crate::convert::FieldError;
use crate::model::{
    self, AuthorizationAction, AuthorizationMode, AuthorizationTarget, IpBlock, LabelSelector,
    ObjectKey, PolicyPath, SelectorOperator, SelectorRequirement,
};

use super::{AuthorizationPolicy, PolicyAction, PolicyMode, PolicySelector};

/// Validates `policy` and converts it; all errors are returned, each naming its field.
pub fn to_model(
    policy: &AuthorizationPolicy,
) -> Result<model::AuthorizationPolicy, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = &policy.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "is required"));
    }
    if namespace.is_empty() {
        errors.push(FieldError::new(
            "metadata.namespace",
            "is required (AuthorizationPolicy is namespaced)",
        ));
    }
    let spec = &policy.spec;

    let target = match (&spec.selector, spec.target_refs.is_empty()) {
        (Some(_), false) => {
            errors.push(FieldError::new(
                "spec",
                "targetRefs and selector are exclusive: set one",
            ));
            None
        }
        (None, true) => {
            errors.push(FieldError::new(
                "spec",
                "one of targetRefs or selector is required (selector: {} selects the whole namespace)",
            ));
            None
        }
        (Some(sel), true) => {
            selector(sel, "spec.selector", &mut errors).map(AuthorizationTarget::Selector)
        }
        (None, false) => {
            let mut names = Vec::new();
            for (i, t) in spec.target_refs.iter().enumerate() {
                let field = format!("spec.targetRefs[{i}]");
                if !t.group.is_empty() || t.kind != "Service" {
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "only core Services can be targeted, not {}/{}",
                            if t.group.is_empty() { "core" } else { &t.group },
                            t.kind
                        ),
                    ));
                } else if t.name.is_empty() {
                    errors.push(FieldError::new(format!("{field}.name"), "is required"));
                } else {
                    names.push(t.name.clone());
                }
            }
            Some(AuthorizationTarget::Services(names))
        }
    };

    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        let mut from = Vec::with_capacity(r.from.len());
        for (j, s) in r.from.iter().enumerate() {
            let field = format!("spec.rules[{i}].from[{j}]");
            if s.service_account.is_none()
                && s.namespace.is_none()
                && s.spiffe_id.is_none()
                && s.ip_block.is_none()
            {
                errors.push(FieldError::new(
                    field.clone(),
                    "is empty: set serviceAccount, namespace, spiffeId or ipBlock",
                ));
            }
            let spiffe_id = match &s.spiffe_id {
                Some(id) => match SpiffeId::parse(id) {
                    Ok(_) => Some(id.clone()),
                    Err(e) => {
                        errors.push(FieldError::new(
                            format!("{field}.spiffeId"),
                            format!("{id:?} is not a SPIFFE ID: {e}"),
                        ));
                        None
                    }
                },
                None => None,
            };
            let ip_block = match &s.ip_block {
                Some(cidr) => match parse_cidr(cidr) {
                    Ok(b) => Some(b),
                    Err(reason) => {
                        errors.push(FieldError::new(format!("{field}.ipBlock"), reason));
                        None
                    }
                },
                None => None,
            };
            if let Some(v) = &s.namespace
                && !is_dns_label(v)
            {
                errors.push(FieldError::new(
                    format!("{field}.namespace"),
                    format!("{v:?} is not a valid name (RFC 1123 label)"),
                ));
            }
            if let Some(v) = &s.service_account
                && !is_dns_subdomain(v)
            {
                errors.push(FieldError::new(
                    format!("{field}.serviceAccount"),
                    format!("{v:?} is not a valid name (RFC 1123 subdomain)"),
                ));
            }
            let source_ns = match (&s.namespace, &s.service_account) {
                (Some(ns), _) => Some(ns.clone()),
                // A ServiceAccount alone is one of the policy's namespace.
                (None, Some(_)) => Some(namespace.clone()),
                (None, None) => None,
            };
            from.push(model::PolicySource {
                namespace: source_ns,
                service_account: s.service_account.clone(),
                spiffe_id,
                ip_block,
            });
        }
        let to = r.to.as_ref().map(|d| {
            let field = format!("spec.rules[{i}].to");
            let mut ports = Vec::new();
            for (k, p) in d.ports.iter().enumerate() {
                match u16::try_from(*p) {
                    Ok(p) if p > 0 => ports.push(p),
                    _ => errors.push(FieldError::new(
                        format!("{field}.ports[{k}]"),
                        format!("{p} is not a port (1-65535)"),
                    )),
                }
            }
            let mut methods = Vec::new();
            for (k, m) in d.methods.iter().enumerate() {
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
                    methods.push(m.clone());
                } else {
                    errors.push(FieldError::new(
                        format!("{field}.methods[{k}]"),
                        format!("{m:?} is not an upper-case HTTP method (e.g. GET)"),
                    ));
                }
            }
            let mut paths = Vec::new();
            for (k, p) in d.paths.iter().enumerate() {
                match parse_policy_path(p) {
                    Ok(path) => paths.push(path),
                    Err(reason) => {
                        errors.push(FieldError::new(format!("{field}.paths[{k}]"), reason));
                    }
                }
            }
            model::PolicyDestination {
                ports,
                methods,
                paths,
            }
        });
        rules.push(model::AuthorizationRule { from, to });
    }

    match (errors.is_empty(), target) {
        (true, Some(target)) => Ok(model::AuthorizationPolicy {
            key: ObjectKey::new(namespace, name),
            generation: meta.generation.unwrap_or(0),
            target,
            action: match spec.action {
                PolicyAction::Allow => AuthorizationAction::Allow,
                PolicyAction::Deny => AuthorizationAction::Deny,
            },
            mode: match spec.mode {
                PolicyMode::Enforce => AuthorizationMode::Enforce,
                PolicyMode::Audit => AuthorizationMode::Audit,
            },
            rules,
        }),
        _ => Err(errors),
    }
}

/// Converts a label selector (shared with the Kubernetes conversions).
pub(crate) fn selector(
    sel: &PolicySelector,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<LabelSelector> {
    let mut out = LabelSelector::from_labels(sel.match_labels.clone());
    let before = errors.len();
    for (i, r) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let operator = match r.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                errors.push(FieldError::new(
                    format!("{f}.operator"),
                    format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                ));
                continue;
            }
        };
        let needs_values = matches!(operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values == r.values.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.values"),
                if needs_values {
                    format!("must be non-empty for operator {}", r.operator)
                } else {
                    format!("must be empty for operator {}", r.operator)
                },
            ));
            continue;
        }
        out.match_expressions.push(SelectorRequirement {
            key: r.key.clone(),
            operator,
            values: r.values.clone(),
        });
    }
    (errors.len() == before).then_some(out)
}

fn parse_cidr(cidr: &str) -> Result<IpBlock, String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR (address/prefix-length)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{cidr:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("{cidr:?}: prefix length {len:?} is not 0-{max}"))?;
    let host_bits_set = match addr {
        IpAddr::V4(a) => {
            let v = u32::from(a);
            prefix_len < 32 && v & (u32::MAX >> prefix_len) != 0
        }
        IpAddr::V6(a) => {
            let v = u128::from(a);
            prefix_len < 128 && v & (u128::MAX >> prefix_len) != 0
        }
    };
    if host_bits_set {
        return Err(format!("{cidr:?} has host bits set after the prefix"));
    }
    Ok(IpBlock { addr, prefix_len })
}

fn parse_policy_path(p: &str) -> Result<PolicyPath, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if let Some(prefix) = p.strip_suffix("/*") {
        if prefix.contains('*') {
            return Err(format!(
                "{p:?}: * is only allowed as a final /* (prefix match)"
            ));
        }
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        return Ok(PolicyPath::Prefix(prefix.to_string()));
    }
    if p.contains('*') {
        return Err(format!(
            "{p:?}: * is only allowed as a final /* (prefix match)"
        ));
    }
    Ok(PolicyPath::Exact(p.to_string()))
}

/// RFC 1123 label: lower-case alphanumerics and '-', 1-63 characters,
/// starting and ending alphanumeric.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}
