//! Route filters. HTTPRoute and GRPCRoute, rule- and backend-level filters
//! are four generated Rust types of one API shape; each is read through this
//! one shape (via its JSON form) so the checks exist once.

use serde::Deserialize;
use serde::Serialize;

use super::{FieldError, port};
use crate::model::{
    BackendRef, Filter, HeaderModifier, MirrorFilter, PathModifier, RedirectFilter,
    UrlRewriteFilter,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterDoc {
    r#type: String,
    request_header_modifier: Option<HeaderModifierDoc>,
    response_header_modifier: Option<HeaderModifierDoc>,
    request_redirect: Option<RedirectDoc>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RewriteDoc>,
    request_mirror: Option<MirrorDoc>,
    extension_ref: Option<serde_json::Value>,
    cors: Option<serde_json::Value>,
    external_auth: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct HeaderDoc {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct HeaderModifierDoc {
    #[serde(default)]
    set: Vec<HeaderDoc>,
    #[serde(default)]
    add: Vec<HeaderDoc>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifierDoc {
    r#type: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectDoc {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifierDoc>,
    port: Option<i32>,
    status_code: Option<i64>,
}

#[derive(Deserialize)]
struct RewriteDoc {
    hostname: Option<String>,
    path: Option<PathModifierDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BackendRefDoc {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
}

#[derive(Deserialize)]
struct FractionDoc {
    numerator: i32,
    denominator: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorDoc {
    backend_ref: BackendRefDoc,
    percent: Option<i32>,
    fraction: Option<FractionDoc>,
}

/// Which filter types a list may contain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    /// HTTPRoute rules and backendRefs.
    Http,
    /// GRPCRoute rules and backendRefs.
    Grpc,
}

/// Converts a filter list; `field` is its path.
pub(super) fn filters<T: Serialize>(
    list: &[T],
    field: &str,
    context: Context,
    errors: &mut Vec<FieldError>,
) -> Vec<Filter> {
    let mut out = Vec::with_capacity(list.len());
    let mut seen: Vec<String> = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let doc: FilterDoc = match serde_json::to_value(f).and_then(serde_json::from_value) {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(FieldError::new(field, format!("cannot be read: {e}")));
                continue;
            }
        };
        let kind = doc.r#type.clone();
        // Per rule, each core filter type at most once (mirrors and extensions may repeat).
        if !matches!(kind.as_str(), "RequestMirror" | "ExtensionRef") {
            if seen.contains(&kind) {
                errors.push(FieldError::new(
                    format!("{field}.type"),
                    format!("{kind} may appear at most once per filter list"),
                ));
            }
            seen.push(kind.clone());
        }
        if let Some(f) = filter(doc, &field, context, errors) {
            out.push(f);
        }
    }
    if seen.iter().any(|k| k == "RequestRedirect") && seen.iter().any(|k| k == "URLRewrite") {
        errors.push(FieldError::new(
            field,
            "RequestRedirect and URLRewrite cannot be combined in one filter list",
        ));
    }
    out
}

fn filter(
    doc: FilterDoc,
    field: &str,
    context: Context,
    errors: &mut Vec<FieldError>,
) -> Option<Filter> {
    // The config field of the filter's type must be set, and no other.
    let present: Vec<&str> = [
        (
            "RequestHeaderModifier",
            doc.request_header_modifier.is_some(),
        ),
        (
            "ResponseHeaderModifier",
            doc.response_header_modifier.is_some(),
        ),
        ("RequestRedirect", doc.request_redirect.is_some()),
        ("URLRewrite", doc.url_rewrite.is_some()),
        ("RequestMirror", doc.request_mirror.is_some()),
        ("ExtensionRef", doc.extension_ref.is_some()),
        ("CORS", doc.cors.is_some()),
        ("ExternalAuth", doc.external_auth.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.then_some(k))
    .collect();
    let config_field = config_field_name(&doc.r#type);
    if present != [doc.r#type.as_str()] {
        errors.push(FieldError::new(
            field.to_string(),
            format!(
                "type {} requires exactly its own configuration field {config_field} (found: {})",
                doc.r#type,
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ),
        ));
        return None;
    }
    let sub = format!("{field}.{config_field}");
    let grpc_allowed = matches!(
        doc.r#type.as_str(),
        "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror" | "ExtensionRef"
    );
    if context == Context::Grpc && !grpc_allowed {
        errors.push(FieldError::new(
            format!("{field}.type"),
            format!("{} is not a GRPCRoute filter type", doc.r#type),
        ));
        return None;
    }
    Some(match doc.r#type.as_str() {
        "RequestHeaderModifier" => Filter::RequestHeaderModifier(header_modifier(
            doc.request_header_modifier?,
            &sub,
            errors,
        )),
        "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(header_modifier(
            doc.response_header_modifier?,
            &sub,
            errors,
        )),
        "RequestRedirect" => {
            let r = doc.request_redirect?;
            Filter::RequestRedirect(RedirectFilter {
                scheme: r.scheme,
                hostname: r.hostname,
                path: r
                    .path
                    .and_then(|p| path_modifier(p, &format!("{sub}.path"), errors)),
                port: r.port.and_then(|p| port(p, format!("{sub}.port"), errors)),
                status_code: r.status_code.unwrap_or(302),
            })
        }
        "URLRewrite" => {
            let r = doc.url_rewrite?;
            Filter::UrlRewrite(UrlRewriteFilter {
                hostname: r.hostname,
                path: r
                    .path
                    .and_then(|p| path_modifier(p, &format!("{sub}.path"), errors)),
            })
        }
        "RequestMirror" => {
            let m = doc.request_mirror?;
            let (numerator, denominator) = match (m.percent, m.fraction) {
                (Some(_), Some(_)) => {
                    errors.push(FieldError::new(
                        sub.clone(),
                        "percent and fraction are exclusive",
                    ));
                    return None;
                }
                (Some(p), None) if (0..=100).contains(&p) => (p.unsigned_abs(), 100),
                (Some(p), None) => {
                    errors.push(FieldError::new(
                        format!("{sub}.percent"),
                        format!("{p} is not 0-100"),
                    ));
                    return None;
                }
                (None, Some(f)) => {
                    let d = f.denominator.unwrap_or(100);
                    if d <= 0 || f.numerator < 0 || f.numerator > d {
                        errors.push(FieldError::new(
                            format!("{sub}.fraction"),
                            format!("{}/{d} is not a fraction between 0 and 1", f.numerator),
                        ));
                        return None;
                    }
                    (f.numerator.unsigned_abs(), d.unsigned_abs())
                }
                (None, None) => (100, 100),
            };
            Filter::RequestMirror(MirrorFilter {
                backend: backend_ref(m.backend_ref, &format!("{sub}.backendRef"), errors)?,
                numerator,
                denominator,
            })
        }
        other @ ("ExtensionRef" | "CORS" | "ExternalAuth") => {
            Filter::Unsupported(other.to_string())
        }
        other => {
            errors.push(FieldError::new(
                format!("{field}.type"),
                format!("{other:?} is not a filter type"),
            ));
            return None;
        }
    })
}

fn config_field_name(kind: &str) -> &'static str {
    match kind {
        "RequestHeaderModifier" => "requestHeaderModifier",
        "ResponseHeaderModifier" => "responseHeaderModifier",
        "RequestRedirect" => "requestRedirect",
        "URLRewrite" => "urlRewrite",
        "RequestMirror" => "requestMirror",
        "ExtensionRef" => "extensionRef",
        "CORS" => "cors",
        "ExternalAuth" => "externalAuth",
        _ => "<unknown>",
    }
}

/// Converts a backendRef (group/kind default to core Service; a Service
/// needs a port).
pub(super) fn backend_ref(
    b: BackendRefDoc,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<BackendRef> {
    let r = BackendRef {
        group: b.group.unwrap_or_default(),
        kind: b.kind.unwrap_or_else(|| "Service".into()),
        namespace: b.namespace,
        name: b.name,
        port: match b.port {
            Some(p) => Some(port(p, format!("{field}.port"), errors)?),
            None => None,
        },
    };
    if r.name.is_empty() {
        errors.push(FieldError::new(format!("{field}.name"), "is required"));
        return None;
    }
    if r.is_service() && r.port.is_none() {
        errors.push(FieldError::new(
            format!("{field}.port"),
            "is required when referring to a Service",
        ));
        return None;
    }
    Some(r)
}

/// Reads any backendRef-shaped value.
pub(super) fn backend_ref_of<T: Serialize>(
    value: &T,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<BackendRef> {
    match serde_json::to_value(value).and_then(serde_json::from_value::<BackendRefDoc>) {
        Ok(doc) => backend_ref(doc, field, errors),
        Err(e) => {
            errors.push(FieldError::new(
                field.to_string(),
                format!("cannot be read: {e}"),
            ));
            None
        }
    }
}

fn path_modifier(
    p: PathModifierDoc,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<PathModifier> {
    let (value, other, modifier): (Option<String>, bool, fn(String) -> PathModifier) =
        match p.r#type.as_str() {
            "ReplaceFullPath" => (
                p.replace_full_path,
                p.replace_prefix_match.is_some(),
                PathModifier::FullPath,
            ),
            "ReplacePrefixMatch" => (
                p.replace_prefix_match,
                p.replace_full_path.is_some(),
                PathModifier::PrefixMatch,
            ),
            other => {
                errors.push(FieldError::new(
                    format!("{field}.type"),
                    format!("{other:?} is not a path modifier type"),
                ));
                return None;
            }
        };
    if other {
        errors.push(FieldError::new(
            field.to_string(),
            format!("type {} allows only its own field", p.r#type),
        ));
        return None;
    }
    let Some(value) = value else {
        errors.push(FieldError::new(
            field.to_string(),
            format!("type {} requires its value", p.r#type),
        ));
        return None;
    };
    if !value.starts_with('/') {
        errors.push(FieldError::new(
            field.to_string(),
            format!("{value:?} must start with /"),
        ));
        return None;
    }
    Some(modifier(value))
}

fn header_modifier(
    m: HeaderModifierDoc,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> HeaderModifier {
    let mut out = HeaderModifier::default();
    for (list, name, target) in [("set", m.set, &mut out.set), ("add", m.add, &mut out.add)] {
        for (i, h) in name.into_iter().enumerate() {
            let lower = h.name.to_ascii_lowercase();
            if !is_header_name(&h.name) {
                errors.push(FieldError::new(
                    format!("{field}.{list}[{i}].name"),
                    format!("{:?} is not a valid header name", h.name),
                ));
            } else if target.iter().any(|(n, _)| *n == lower) {
                errors.push(FieldError::new(
                    format!("{field}.{list}[{i}].name"),
                    format!("{:?} is listed twice (names are case-insensitive)", h.name),
                ));
            } else {
                target.push((lower, h.value));
            }
        }
    }
    for (i, r) in m.remove.into_iter().enumerate() {
        let lower = r.to_ascii_lowercase();
        if !is_header_name(&r) {
            errors.push(FieldError::new(
                format!("{field}.remove[{i}]"),
                format!("{r:?} is not a valid header name"),
            ));
        } else if out.remove.contains(&lower) {
            errors.push(FieldError::new(
                format!("{field}.remove[{i}]"),
                format!("{r:?} is listed twice (names are case-insensitive)"),
            ));
        } else {
            out.remove.push(lower);
        }
    }
    out
}

/// An HTTP header name (RFC 7230 token).
pub(super) fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
