//! The echo body format: one `Key=value` line per fact the backend saw
//! (`Hostname=`, `Method=`, `URL=`, `Host=`, `Proto=`, one
//! `RequestHeader=Name:value` per header value, ...), as Istio's echo writes
//! it. [`EchoBody`] writes it, [`parse`] reads it back into an
//! [`EchoResponse`]; the parser takes any text and never fails, so it can be
//! fed arbitrary bytes (fuzzing, a proxy's error page, a truncated body).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// `Hostname=`: the pod that answered.
pub const HOSTNAME: &str = "Hostname";
/// `Namespace=`: the namespace of the pod that answered, when known.
pub const NAMESPACE: &str = "Namespace";
/// `ServiceVersion=`: the backend's version label, when set.
pub const SERVICE_VERSION: &str = "ServiceVersion";
/// `ServicePort=`: the local port the request arrived on.
pub const SERVICE_PORT: &str = "ServicePort";
/// `Host=`: the Host header (HTTP/1) or `:authority` (HTTP/2, gRPC).
pub const HOST: &str = "Host";
/// `URL=`: the request target as received (path and query).
pub const URL: &str = "URL";
/// `Method=`: the request method.
pub const METHOD: &str = "Method";
/// `Proto=`: `HTTP/1.1`, `HTTP/1.0`, `HTTP/2.0` or `GRPC`.
pub const PROTO: &str = "Proto";
/// `IP=`: the peer address the backend saw.
pub const IP: &str = "IP";
/// `RequestHeader=Name:value`: one line per request header value.
pub const REQUEST_HEADER: &str = "RequestHeader";
/// `Echo=`: the message of a gRPC `EchoRequest`.
pub const ECHO: &str = "Echo";
/// `Error=`: why the backend refused a request's echo directives.
pub const ERROR: &str = "Error";

/// Writes an echo body, line by line.
#[derive(Debug, Default, Clone)]
pub struct EchoBody {
    text: String,
}

impl EchoBody {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value`. Line breaks in `value` are replaced by spaces so
    /// one field is always one line.
    pub fn field(&mut self, key: &str, value: &str) -> &mut Self {
        self.text.push_str(key);
        self.text.push('=');
        for c in value.chars() {
            self.text.push(if c == '\n' || c == '\r' { ' ' } else { c });
        }
        self.text.push('\n');
        self
    }

    /// Appends `key=value` unless `value` is empty.
    pub fn field_non_empty(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.field(key, value);
        }
        self
    }

    /// Appends `RequestHeader=Name:value`.
    pub fn request_header(&mut self, name: &str, value: &str) -> &mut Self {
        let mut kv = String::with_capacity(name.len() + value.len() + 1);
        let _ = write!(kv, "{name}:{value}");
        self.field(REQUEST_HEADER, &kv)
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The finished body.
    pub fn into_string(self) -> String {
        self.text
    }
}

/// A parsed echo body: every `key=value` line in order, and the lines that
/// were not `key=value`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoResponse {
    /// `(key, value)` for each `key=value` line, in body order. The value is
    /// everything after the first `=`.
    pub fields: Vec<(String, String)>,
    /// Non-empty lines without a `=` (or with an empty key), e.g. a proxy's
    /// error text.
    pub other_lines: Vec<String>,
}

/// Parses an echo body. Accepts `\n` and `\r\n` line ends; never fails.
pub fn parse(body: &str) -> EchoResponse {
    let mut out = EchoResponse::default();
    for line in body.lines() {
        match line.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                out.fields.push((key.to_owned(), value.to_owned()));
            }
            _ if line.trim().is_empty() => {}
            _ => out.other_lines.push(line.to_owned()),
        }
    }
    out
}

/// Parses an echo body given as bytes (invalid UTF-8 is replaced, never fatal).
pub fn parse_bytes(body: &[u8]) -> EchoResponse {
    parse(&String::from_utf8_lossy(body))
}

impl EchoResponse {
    /// The first value of `key` (exact, case-sensitive as the format is).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in body order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `Hostname=`: the pod that answered.
    pub fn hostname(&self) -> Option<&str> {
        self.get(HOSTNAME)
    }

    /// `Host=`.
    pub fn host(&self) -> Option<&str> {
        self.get(HOST)
    }

    /// `URL=`.
    pub fn url(&self) -> Option<&str> {
        self.get(URL)
    }

    /// `Method=`.
    pub fn method(&self) -> Option<&str> {
        self.get(METHOD)
    }

    /// `Proto=`.
    pub fn proto(&self) -> Option<&str> {
        self.get(PROTO)
    }

    /// `Namespace=`.
    pub fn namespace(&self) -> Option<&str> {
        self.get(NAMESPACE)
    }

    /// `ServicePort=` as a number.
    pub fn service_port(&self) -> Option<u16> {
        self.get(SERVICE_PORT).and_then(|p| p.parse().ok())
    }

    /// Every `RequestHeader=Name:value` line as `(Name, value)`, in order.
    /// A line without `:` is skipped.
    pub fn request_headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.get_all(REQUEST_HEADER).filter_map(|kv| {
            kv.split_once(':')
                .map(|(name, value)| (name.trim(), value.trim_start()))
        })
    }

    /// The values the backend saw for header `name` (ASCII case-insensitive),
    /// in the order they arrived.
    pub fn request_header(&self, name: &str) -> Vec<&str> {
        self.request_headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The values of header `name` joined with `,` as upstream conformance
    /// compares them; `None` if the backend did not see the header.
    pub fn request_header_joined(&self, name: &str) -> Option<String> {
        let values = self.request_header(name);
        (!values.is_empty()).then(|| values.join(","))
    }

    /// Every field as a map of key to values (body order within a key).
    pub fn to_multimap(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &self.fields {
            map.entry(k.clone()).or_default().push(v.clone());
        }
        map
    }
}

/// Writes a header name the way Go's `net/http` (and so upstream echo)
/// prints it: the first letter and every letter after a `-` upper case, the
/// rest lower case (`x-header-set` → `X-Header-Set`).
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_parses_back() {
        let mut body = EchoBody::new();
        body.field(HOSTNAME, "echo-v1-abc")
            .field(URL, "/path?a=b=c")
            .request_header("X-Multi", "one")
            .request_header("X-Multi", "two")
            .field_non_empty(NAMESPACE, "");
        let parsed = parse(body.as_str());
        assert_eq!(parsed.hostname(), Some("echo-v1-abc"));
        assert_eq!(parsed.url(), Some("/path?a=b=c"));
        assert_eq!(parsed.request_header("x-multi"), vec!["one", "two"]);
        assert_eq!(
            parsed.request_header_joined("X-MULTI").as_deref(),
            Some("one,two")
        );
        assert_eq!(parsed.namespace(), None);
        assert!(parsed.other_lines.is_empty());
    }

    #[test]
    fn a_value_with_a_line_break_stays_one_line() {
        let mut body = EchoBody::new();
        body.field(ECHO, "two\nlines");
        assert_eq!(parse(body.as_str()).get(ECHO), Some("two lines"));
    }

    #[test]
    fn tolerates_garbage_and_crlf() {
        let parsed = parse("upstream connect error\r\nHostname=x\r\n=novalue\r\n\r\n");
        assert_eq!(parsed.hostname(), Some("x"));
        assert_eq!(
            parsed.other_lines,
            vec!["upstream connect error".to_owned(), "=novalue".to_owned()]
        );
        let bytes = parse_bytes(b"Hostname=\xff\xfe\n");
        assert_eq!(bytes.hostname(), Some("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn canonicalises_like_go() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("USER-AGENT"), "User-Agent");
        assert_eq!(canonical_header_name("te"), "Te");
    }
}
