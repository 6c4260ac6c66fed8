//! Authorization of inbound traffic against the `AuthorizationPolicy`
//! resources that apply to the destination workload: per connection (L4) on
//! TCP ports, per request (L4 and L7 parts together) on HTTP ports.
//!
//! Evaluation, as DESIGN.md states it: any matching Deny denies; if any Allow
//! applies to the workload, one of them must match; otherwise the traffic
//! is allowed. Audit-mode policies are evaluated and reported but never
//! change the decision.
//!
//! A rule matches when every part present matches: a source in `from`, the
//! port, and on HTTP requests ([`Connection::request`] set) the method (exact,
//! case-sensitive, as RFC 9110 tokens: a rule naming `GET` does not cover
//! `HEAD`, as in Envoy and Istio; name `HEAD` too) and the path (exact, or
//! element-wise prefix: `/api` matches `/api`, `/api/` and `/api/x`, not
//! `/apix`; the prefix `/`, written `/*` in the CRD, matches every path).
//! Paths are compared after [`normalize`].
//!
//! Without a request (a TCP port, or an HTTP port whose bytes are relayed) a
//! rule naming methods or paths cannot be checked, so it fails closed, as
//! ztunnel does: such an Allow rule does not match (the connection is denied
//! unless another rule allows it), such a Deny rule matches (once its sources
//! and ports match). The control plane reports such rules in the policy's
//! status, so this never happens silently.

use std::borrow::Borrow;
use std::net::IpAddr;

use hawser_api::SpiffeId;
use hawser_api::cni::redirect::Cidr;
use hawser_api::proto::discovery::{
    AuthorizationAction, AuthorizationMode, AuthorizationPolicy, AuthorizationRule, Destination,
    PathMatch, Source, path_match,
};

/// What is known about inbound traffic: the connection, and on HTTP ports
/// the request.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The verified peer identity (None: plaintext, from outside the mesh).
    pub peer: Option<&'a SpiffeId>,
    /// The peer's address.
    pub peer_ip: IpAddr,
    /// The destination port on the workload.
    pub port: u16,
    /// The HTTP request, when one is evaluated (None: at L4, where rules
    /// naming methods or paths fail closed).
    pub request: Option<HttpRequest<'a>>,
}

/// The parts of an HTTP request that policies match.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method as sent (`GET`).
    pub method: &'a str,
    /// The path without query, normalized by [`normalize`].
    pub path: &'a str,
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
/// Allocates nothing unless something is denied (it runs per request on
/// HTTP ports).
pub fn evaluate<P: Borrow<AuthorizationPolicy>>(
    policies: &[P],
    conn: &Connection<'_>,
) -> Evaluation {
    let audit_denials = match decide(policies, AuthorizationMode::Audit, conn) {
        Decision::Deny { reason } => vec![reason],
        Decision::Allow => Vec::new(),
    };
    Evaluation {
        decision: decide(policies, AuthorizationMode::Enforce, conn),
        audit_denials,
    }
}

/// The decision of the policies in `mode`: any matching Deny denies; else
/// it is allowed when no Allow policy applies or one matches.
fn decide<P: Borrow<AuthorizationPolicy>>(
    policies: &[P],
    mode: AuthorizationMode,
    conn: &Connection<'_>,
) -> Decision {
    let of_action = |action: AuthorizationAction| {
        policies
            .iter()
            .map(Borrow::borrow)
            .filter(move |p: &&AuthorizationPolicy| p.mode() == mode && p.action() == action)
    };
    if let Some(p) = of_action(AuthorizationAction::Deny).find(|p| policy_matches(p, conn)) {
        return Decision::Deny {
            reason: format!("denied by policy {}/{}", p.namespace, p.name),
        };
    }
    let mut allows = of_action(AuthorizationAction::Allow).peekable();
    if allows.peek().is_none() || allows.any(|p| policy_matches(p, conn)) {
        return Decision::Allow;
    }
    let names: Vec<String> = of_action(AuthorizationAction::Allow)
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    Decision::Deny {
        reason: format!("no allow policy matched (applicable: {})", names.join(", ")),
    }
}

/// Whether deciding a connection to `port` under `policies` needs its HTTP
/// requests: some rule that can apply to the port names methods or paths.
/// When none does, every request of a connection gets the connection's L4
/// decision, so the connection can be decided once and its bytes relayed.
pub fn needs_requests<P: Borrow<AuthorizationPolicy>>(policies: &[P], port: u16) -> bool {
    policies.iter().flat_map(|p| &p.borrow().rules).any(|rule| {
        rule.to
            .as_ref()
            .is_some_and(|to| covers_port(to, port) && asks_requests(to))
    })
}

/// Whether a rule's destination covers `port` (no ports listed: all).
fn covers_port(to: &Destination, port: u16) -> bool {
    to.ports.is_empty() || to.ports.contains(&u32::from(port))
}

/// Whether a rule's destination asks about requests (methods or paths),
/// which only an HTTP port can answer.
fn asks_requests(to: &Destination) -> bool {
    !to.methods.is_empty() || !to.paths.is_empty()
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
    if !covers_port(to, conn.port) {
        return false;
    }
    if !asks_requests(to) {
        return true;
    }
    let Some(req) = conn.request else {
        // Not decidable without a request: fail closed (module docs).
        return action == AuthorizationAction::Deny;
    };
    if !to.methods.is_empty() && !to.methods.iter().any(|m| m == req.method) {
        return false;
    }
    to.paths.is_empty() || to.paths.iter().any(|p| path_matches(p, req.path))
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match &m.kind {
        Some(path_match::Kind::Exact(exact)) => path == exact,
        Some(path_match::Kind::Prefix(prefix)) => {
            let prefix = prefix.trim_end_matches('/');
            match path.strip_prefix(prefix) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            }
        }
        // A path condition of an unknown kind matches nothing.
        None => false,
    }
}

/// How request paths are normalized before they are authorized (and then
/// forwarded, so the app routes on the path that was judged). Istio's
/// `meshConfig.pathNormalization` names the same choices: the default is
/// `BASE`; `merge_slashes` is `MERGE_SLASHES`; `escaped_slashes:
/// DecodeAndMerge` is `DECODE_AND_MERGE_SLASHES`; `Reject` is Envoy's
/// `path_with_escaped_slashes_action: REJECT_REQUEST`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathNormalization {
    /// `//` becomes `/` (apps such as Tomcat and Spring merge them).
    pub merge_slashes: bool,
    /// What happens to `%2F` and `%5C` (escaped `/` and `\`).
    pub escaped_slashes: EscapedSlashes,
}

/// What happens to escaped slashes (`%2F`, `%5C`) in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Kept as sent (Envoy's and Istio's default): `/admin%2Fx` is one
    /// segment to the policy, so an app that decodes it (gunicorn, Django)
    /// routes on a path the policy did not see.
    #[default]
    Keep,
    /// The request is refused with `400`.
    Reject,
    /// Decoded, and slashes then merged.
    DecodeAndMerge,
}

/// A path after [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// Already normal: judged and forwarded as sent.
    Unchanged,
    /// Judged, and forwarded, as this path.
    Changed(String),
    /// Refused with `400`, for this reason.
    Rejected(&'static str),
}

/// The path policies are matched against, normalized as Envoy's
/// `normalize_path` does it (RFC 3986 §6.2.2) and as `how` asks:
/// - `%00` is refused (no app has a use for a NUL in a path);
/// - escaped slashes are kept, refused or decoded ([`EscapedSlashes`]);
/// - percent-encoded unreserved characters are decoded (`%2E` → `.`,
///   `%61` → `a`), until decoding changes nothing (`%%32e` is `.`, not an
///   escape left for the app to decode), other escapes kept as sent;
/// - `\` becomes `/` (Windows servers and some frameworks read it so);
/// - a dot segment with parameters (`..;`, `.;x`) is refused: Tomcat reads
///   `/api/..;/admin` as `/admin`;
/// - `.` and `..` segments are removed (`/api/../admin` is `/admin`);
/// - with `merge_slashes`, `//` becomes `/`.
///
/// An empty path is `/`. Paths are case-sensitive, as in Istio: a rule for
/// `/admin` does not cover `/ADMIN` (list both for an app that routes
/// without case, such as Express or ASP.NET by default). `;` parameters stay
/// in the path the app gets; rules are matched without them
/// ([`policy_path`]).
pub fn normalize(path: &str, how: &PathNormalization) -> Normalized {
    let merge = how.merge_slashes || how.escaped_slashes == EscapedSlashes::DecodeAndMerge;
    let suspicious = path.is_empty()
        || path.contains(['%', '\\'])
        || (merge && path.contains("//"))
        || path.split('/').any(is_dot_segment);
    if !suspicious {
        return Normalized::Unchanged;
    }
    // Decoded until nothing changes: `%%32e` is `%2e` once decoded, which an
    // app would read as `.`; what is judged must not hide an escape.
    let mut decoded = decode_unreserved(path);
    loop {
        let again = decode_unreserved(&decoded);
        if again == decoded {
            break;
        }
        decoded = again;
    }
    let has = |escape: &str| {
        decoded
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(escape.as_bytes()))
    };
    if has("%00") {
        return Normalized::Rejected("the path has an escaped NUL (%00)");
    }
    if has("%2f") || has("%5c") {
        match how.escaped_slashes {
            EscapedSlashes::Keep => {}
            EscapedSlashes::Reject => {
                return Normalized::Rejected("the path has an escaped slash (%2F or %5C)");
            }
            EscapedSlashes::DecodeAndMerge => {
                decoded = decode_escaped_slashes(&decoded);
            }
        }
    }
    let decoded = decoded.replace('\\', "/");
    let segments: Vec<&str> = decoded.split('/').collect();
    if segments
        .iter()
        .any(|s| !matches!(*s, "." | "..") && is_dot_segment(s))
    {
        return Normalized::Rejected("the path has a dot segment with parameters (..;)");
    }
    let mut out: Vec<&str> = Vec::new();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." && out.len() > 1 {
                    out.pop();
                }
                // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    // As Envoy: slashes are merged after the dot segments are removed.
    if merge {
        while joined.contains("//") {
            joined = joined.replace("//", "/");
        }
    }
    if joined == path {
        Normalized::Unchanged
    } else {
        Normalized::Changed(joined)
    }
}

/// The path a policy's path rules are matched against: the normalized path
/// with each segment's `;` parameters left out, as Tomcat and Spring route
/// (`/admin;jsessionid=1` is `/admin` to them, so to the policy too). The
/// request still goes to the app with its parameters.
pub fn policy_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    std::borrow::Cow::Owned(
        path.split('/')
            .map(|segment| segment.split(';').next().unwrap_or(segment))
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// `.` or `..`, with or without `;` parameters (`;` also escaped, `%3B`:
/// an app that decodes it and then drops parameters reads `..%3B` as `..`).
fn is_dot_segment(segment: &str) -> bool {
    let first = segment.split(';').next().unwrap_or(segment);
    let before_escape = first
        .as_bytes()
        .windows(3)
        .position(|w| w.eq_ignore_ascii_case(b"%3b"))
        .map_or(first, |i| &first[..i]);
    matches!(before_escape, "." | "..")
}

/// The path under the default normalization, `None` when it is unchanged
/// or refused (see [`normalize`]); for tests.
#[cfg(test)]
pub(crate) fn normalize_path(path: &str) -> Option<String> {
    match normalize(path, &PathNormalization::default()) {
        Normalized::Changed(p) => Some(p),
        Normalized::Unchanged | Normalized::Rejected(_) => None,
    }
}

/// Decodes `%2F` and `%5C` (either case).
fn decode_escaped_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 3);
        if bytes[i] == b'%' && escape.is_some_and(|e| e.eq_ignore_ascii_case(b"2f")) {
            out.push(b'/');
            i += 3;
        } else if bytes[i] == b'%' && escape.is_some_and(|e| e.eq_ignore_ascii_case(b"5c")) {
            out.push(b'\\');
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII escapes were replaced by ASCII bytes: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Decodes `%XX` escapes of unreserved characters (ALPHA, DIGIT, `-._~`).
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(b));
            i += 3;
            continue;
        }
        // Copies one UTF-8 character (the path is a &str, so boundaries hold).
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    out
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
        return s
            .ip_block
            .parse::<Cidr>()
            .is_ok_and(|c| c.contains(conn.peer_ip));
    }
    true
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
