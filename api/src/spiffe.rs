//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, parsed strictly.
//!
//! Hawser names workloads `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
//! (Istio-compatible), node proxies `spiffe://<trust-domain>/hawser/node/<node>`
//! and the control plane `spiffe://<trust-domain>/hawser/control-plane`. The
//! `/hawser/` paths are the mesh's own and outside the workload space: no
//! pod's namespace and service account can name them.
//! Parsing follows the SPIFFE ID specification and rejects anything that is not
//! already in canonical form (uppercase trust domains, `.`/`..` segments,
//! percent-encoding, empty segments, trailing slashes, …) instead of normalising
//! it: two spellings of one identity must never both verify.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// The first path segment of the mesh's own identities (nodes, the control
/// plane), which no workload identity has.
pub const RESERVED_SEGMENT: &str = "hawser";

/// Why a string is not a canonical SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The input is longer than [`MAX_ID_LEN`].
    #[error("spiffe id is {0} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    /// The scheme is not exactly `spiffe://`.
    #[error("spiffe id {0:?} does not start with \"spiffe://\"")]
    WrongScheme(String),
    /// The trust domain is empty.
    #[error("spiffe id {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain of {0:?} is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong(String),
    /// The trust domain has a character outside `[a-z0-9._-]` (uppercase, port, userinfo, …).
    #[error(
        "trust domain of {id:?} has the character {ch:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar {
        /// The whole input.
        id: String,
        /// The offending character.
        ch: char,
    },
    /// A path segment is empty (`//`) or the path ends with `/`.
    #[error("spiffe id {0:?} has an empty path segment or a trailing slash")]
    EmptySegment(String),
    /// A path segment is `.` or `..`.
    #[error("spiffe id {0:?} has a '.' or '..' path segment")]
    DotSegment(String),
    /// A path character is outside `[a-zA-Z0-9._-]` (percent-encoding, query, fragment, …).
    #[error(
        "path of {id:?} has the character {ch:?}; only letters, digits, '.', '-' and '_' are allowed"
    )]
    BadPathChar {
        /// The whole input.
        id: String,
        /// The offending character.
        ch: char,
    },
    /// The ID is not of the shape Hawser expects for its use (e.g. no `/ns/<ns>/sa/<sa>`).
    #[error("spiffe id {id:?} is not a {expected} identity")]
    WrongShape {
        /// The whole input.
        id: String,
        /// What shape was expected.
        expected: &'static str,
    },
}

/// A trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (the part between `spiffe://` and the path).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let id = format!("{SCHEME}{name}");
        check_trust_domain(name, &id)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// `cluster.local`, as Istio and Kubernetes use.
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A canonical SPIFFE ID with a non-empty path.
///
/// Stored as its canonical string, so formatting is free and equality is exact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path (starting with `/`) begins.
    path_start: usize,
}

impl SpiffeId {
    /// Parses `s`, accepting only canonical SPIFFE IDs with a path.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::WrongScheme(s.to_owned()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td, s)?;
        if path.is_empty() {
            // A bare trust-domain ID names no workload; Hawser never uses one.
            return Err(SpiffeIdError::WrongShape {
                id: s.to_owned(),
                expected: "workload or node",
            });
        }
        // `path` starts with '/': every segment after it must be non-empty and canonical.
        for seg in path[1..].split('/') {
            if seg.is_empty() {
                return Err(SpiffeIdError::EmptySegment(s.to_owned()));
            }
            if seg == "." || seg == ".." {
                return Err(SpiffeIdError::DotSegment(s.to_owned()));
            }
            if let Some(ch) = seg.chars().find(|c| !is_path_char(*c)) {
                return Err(SpiffeIdError::BadPathChar {
                    id: s.to_owned(),
                    ch,
                });
            }
        }
        Ok(Self {
            id: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// The workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{td}/ns/{namespace}/sa/{service_account}"))
    }

    /// The node proxy identity `spiffe://<td>/hawser/node/<node>`.
    pub fn node(td: &TrustDomain, node: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{td}/hawser/node/{node}"))
    }

    /// The control plane's identity, `spiffe://<td>/hawser/control-plane`,
    /// which node proxies require of the server they fetch certificates and
    /// config from. It is outside the workload space, so no pod (whatever its
    /// namespace and service account) can be issued it.
    pub fn control_plane(td: &TrustDomain) -> Self {
        // Constant, canonical segments under an already validated trust domain.
        Self::parse(&format!("{SCHEME}{td}/{RESERVED_SEGMENT}/control-plane"))
            .unwrap_or_else(|e| unreachable!("constant control plane identity: {e}"))
    }

    /// Whether this is a workload identity (`/ns/<namespace>/sa/<sa>`), the
    /// only kind a pod may present or be issued.
    pub fn is_workload(&self) -> bool {
        self.workload_parts().is_some()
    }

    /// Whether this identity is in the mesh's own space (`/hawser/…`: node
    /// proxies, the control plane).
    pub fn is_reserved(&self) -> bool {
        self.path()[1..].split('/').next() == Some(RESERVED_SEGMENT)
    }

    /// Parses `s` and requires the workload shape `/ns/<ns>/sa/<sa>`.
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.workload_parts().is_none() {
            return Err(SpiffeIdError::WrongShape {
                id: s.to_owned(),
                expected: "workload (/ns/<namespace>/sa/<service-account>)",
            });
        }
        Ok(id)
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The canonical string form.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// `(namespace, service_account)` for a workload identity.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segs = self.path()[1..].split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of a workload identity.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The service account of a workload identity.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }

    /// The node name of a node proxy identity.
    pub fn node_name(&self) -> Option<&str> {
        let mut segs = self.path()[1..].split('/');
        match (segs.next(), segs.next(), segs.next(), segs.next()) {
            (Some("hawser"), Some("node"), Some(node), None) => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn check_trust_domain(td: &str, id: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain(id.to_owned()));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(id.to_owned()));
    }
    if let Some(ch) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar {
            id: id.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_workload_identity() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.workload_parts(), Some(("default", "web")));
        assert_eq!(id.node_name(), None);
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn builds_node_identity() {
        let id = SpiffeId::node(&TrustDomain::default(), "node-1").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/hawser/node/node-1");
        assert_eq!(id.node_name(), Some("node-1"));
        assert_eq!(id.workload_parts(), None);
    }

    #[test]
    fn rejects_non_canonical_ids() {
        use SpiffeIdError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::WrongScheme(_))
            }),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::WrongScheme(_))
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, E::EmptyTrustDomain(_))
            }),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::BadTrustDomainChar { ch: 'C', .. })
            }),
            ("spiffe://cluster.local:443/ns/a/sa/b", |e| {
                matches!(e, E::BadTrustDomainChar { ch: ':', .. })
            }),
            ("spiffe://user@cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::BadTrustDomainChar { ch: '@', .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://cluster.local/", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://cluster.local/ns/./sa/b", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://cluster.local/ns/../sa/b", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://cluster.local/ns/a%2Fb/sa/b", |e| {
                matches!(e, E::BadPathChar { ch: '%', .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
                matches!(e, E::BadPathChar { ch: '?', .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b#f", |e| {
                matches!(e, E::BadPathChar { ch: '#', .. })
            }),
            ("spiffe://cluster.local/ns/ä/sa/b", |e| {
                matches!(e, E::BadPathChar { ch: 'ä', .. })
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, E::WrongShape { .. })
            }),
        ];
        for (input, check) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(check(&err), "{input:?} gave the wrong error: {err:?}");
            // Every message names the input, so an operator can find it.
            if !input.is_empty() {
                assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
            }
        }
        let long = format!("spiffe://cluster.local/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(SpiffeId::parse(&long).unwrap_err(), E::TooLong(long.len()));
        let long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        assert!(matches!(
            SpiffeId::parse(&long_td).unwrap_err(),
            E::TrustDomainTooLong(_)
        ));
    }

    #[test]
    fn parse_workload_requires_ns_sa_shape() {
        assert!(SpiffeId::parse_workload("spiffe://td/ns/a/sa/b").is_ok());
        for bad in [
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/hawser/node/n1",
            "spiffe://td/sa/b/ns/a",
        ] {
            assert!(
                matches!(
                    SpiffeId::parse_workload(bad),
                    Err(SpiffeIdError::WrongShape { .. })
                ),
                "{bad}"
            );
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,12}".prop_filter("not a dot segment", |s| s != "." && s != "..")
    }

    fn trust_domain() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,40}"
    }

    proptest! {
        #[test]
        fn canonical_ids_round_trip(td in trust_domain(), segs in prop::collection::vec(segment(), 1..6)) {
            let s = format!("spiffe://{td}/{}", segs.join("/"));
            let id = SpiffeId::parse(&s).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(id.trust_domain(), td.as_str());
            prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        }

        #[test]
        fn workload_ids_round_trip(td in trust_domain(), ns in segment(), sa in segment()) {
            let td = TrustDomain::new(&td).unwrap();
            let id = SpiffeId::workload(&td, &ns, &sa).unwrap();
            prop_assert_eq!(id.workload_parts(), Some((ns.as_str(), sa.as_str())));
            prop_assert_eq!(SpiffeId::parse_workload(&id.to_string()).unwrap(), id);
        }

        /// Any string that parses is already canonical: re-formatting it changes nothing,
        /// and it contains no character the spec forbids.
        #[test]
        fn arbitrary_input_never_normalised(s in "spiffe://[a-zA-Z0-9.:@%/_?#-]{0,40}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!s.ends_with('/'));
                prop_assert!(!s["spiffe://".len()..].contains("//"));
                prop_assert!(!s.contains('%') && !s.contains('?') && !s.contains('#'));
                prop_assert!(id.trust_domain().chars().all(|c| !c.is_ascii_uppercase()));
                prop_assert!(id.path()[1..].split('/').all(|seg| seg != "." && seg != ".."));
            }
        }

        /// Inserting one forbidden character anywhere in the path is always rejected.
        #[test]
        fn forbidden_path_chars_rejected(ns in segment(), pos in 0usize..12, ch in prop::sample::select(vec!['%', '?', '#', ' ', '/', '\\', ':', '@', '+', '~'])) {
            let mut ns = ns;
            let pos = pos.min(ns.len());
            ns.insert(pos, ch);
            let s = format!("spiffe://td/ns/{ns}/sa/x");
            if ch == '/' {
                // A slash splits the segment: the result is either an empty segment or a
                // different (longer) path, never the workload shape.
                prop_assert!(SpiffeId::parse_workload(&s).is_err());
            } else {
                prop_assert!(SpiffeId::parse(&s).is_err());
            }
        }
    }
}
