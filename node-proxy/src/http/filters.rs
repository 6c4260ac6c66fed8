//! The request and response edits of HTTPRoute filters: header modifiers,
//! path rewrites (`ReplaceFullPath`, `ReplacePrefixMatch`) and the
//! `Location` of redirects, built per the Gateway API spec.

use http::HeaderMap;

use super::routes::{HeaderModifier, PathModifier, Redirect};

/// Applies `m` to `headers`: set replaces every value, add appends one
/// (keeping existing values), remove deletes. Names are case-insensitive.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// The path after `m`, given the prefix the request matched (`/` when the
/// match was not a prefix). The query is not part of `path`.
pub fn rewrite_path(path: &str, m: &PathModifier, prefix: &str) -> String {
    match m {
        PathModifier::FullPath(p) => {
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.clone()
            }
        }
        PathModifier::PrefixMatch(replacement) => {
            let rest = if prefix == "/" {
                path
            } else {
                path.get(prefix.len()..).unwrap_or("")
            };
            let base = replacement.trim_end_matches('/');
            match rest {
                "" | "/" if base.is_empty() => "/".to_owned(),
                "" | "/" => base.to_owned(),
                rest if rest.starts_with('/') => format!("{base}{rest}"),
                rest => format!("{base}/{rest}"),
            }
        }
    }
}

/// Joins a path and a raw query.
pub fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// What a redirect needs to know of the request.
#[derive(Debug, Clone, Copy)]
pub struct RedirectSource<'a> {
    /// The request's scheme (`http` inside the mesh).
    pub scheme: &'a str,
    /// The `Host` header (or `:authority`), possibly with a port.
    pub host: &'a str,
    /// The port the request was sent to (the Service port).
    pub port: u16,
    /// The path without query.
    pub path: &'a str,
    /// The raw query (empty when none).
    pub query: &'a str,
    /// The prefix the rule's match selected.
    pub prefix: &'a str,
}

/// Splits `host[:port]` (IPv6 literals in brackets) into host and port.
pub fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&host[..ip.len() + 2], port);
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

/// The `Location` of a redirect: scheme, host, port (omitted when it is the
/// scheme's well-known port), path (rewritten when the filter says so) and
/// the request's query.
///
/// Port: the filter's; else, when the filter sets a scheme, that scheme's
/// well-known port; else the request's port (from `Host`, or the port it
/// was sent to).
pub fn redirect_location(r: &Redirect, req: &RedirectSource<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let (req_host, host_port) = split_host_port(req.host);
    let host = r.hostname.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) if s.eq_ignore_ascii_case("https") => 443,
        (None, Some(_)) => 80,
        (None, None) => host_port.unwrap_or(req.port),
    };
    let well_known = (scheme.eq_ignore_ascii_case("http") && port == 80)
        || (scheme.eq_ignore_ascii_case("https") && port == 443);
    let path = match &r.path {
        Some(m) => rewrite_path(req.path, m, req.prefix),
        None => req.path.to_owned(),
    };
    let path = with_query(&path, req.query);
    if well_known {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}:{port}{path}")
    }
}
