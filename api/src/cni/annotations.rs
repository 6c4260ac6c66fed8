//! The pod annotations that tune in-pod redirection, and their parser.
//!
//! Kubelet does not pass annotations to CNI plugins, so the node proxy (which
//! learns pods from the control plane) parses them with
//! [`redirect_spec_from_annotations`] and sends the result in
//! [`AddReply.redirection`](super::proto::AddReply). Every value is a
//! comma-separated list; blanks around items are ignored.
//!
//! | annotation | items | effect |
//! |---|---|---|
//! | `hawser.dev/exclude-inbound-ports` | ports | inbound TCP to these pod ports is not captured |
//! | `hawser.dev/exclude-outbound-ports` | ports | outbound TCP to these ports is not captured |
//! | `hawser.dev/exclude-outbound-cidrs` | CIDRs or addresses | outbound TCP to these destinations is not captured |
//! | `hawser.dev/exclude-inbound-cidrs` | CIDRs or addresses | inbound TCP from these sources is not captured |

use std::collections::BTreeMap;

use super::redirect::{Cidr, RedirectSpec};

/// Pod ports whose inbound TCP bypasses the proxy.
pub const EXCLUDE_INBOUND_PORTS: &str = "hawser.dev/exclude-inbound-ports";
/// Destination ports whose outbound TCP bypasses the proxy.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "hawser.dev/exclude-outbound-ports";
/// Destination networks whose outbound TCP bypasses the proxy.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "hawser.dev/exclude-outbound-cidrs";
/// Source networks whose inbound TCP bypasses the proxy.
pub const EXCLUDE_INBOUND_CIDRS: &str = "hawser.dev/exclude-inbound-cidrs";

/// A redirection annotation with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {item:?} {problem}")]
pub struct AnnotationError {
    /// The annotation key.
    pub annotation: &'static str,
    /// The offending list item.
    pub item: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Builds the redirection settings from a pod's annotations (other
/// annotations are ignored). `probe_sources` is left empty: it comes from the
/// node, not the pod.
pub fn redirect_spec_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<RedirectSpec, AnnotationError> {
    let mut spec = RedirectSpec::default();
    if let Some(v) = annotations.get(EXCLUDE_INBOUND_PORTS) {
        spec.exclude_inbound_ports = ports(EXCLUDE_INBOUND_PORTS, v)?;
    }
    if let Some(v) = annotations.get(EXCLUDE_OUTBOUND_PORTS) {
        spec.exclude_outbound_ports = ports(EXCLUDE_OUTBOUND_PORTS, v)?;
    }
    if let Some(v) = annotations.get(EXCLUDE_OUTBOUND_CIDRS) {
        spec.exclude_outbound_cidrs = cidrs(EXCLUDE_OUTBOUND_CIDRS, v)?;
    }
    if let Some(v) = annotations.get(EXCLUDE_INBOUND_CIDRS) {
        spec.exclude_inbound_cidrs = cidrs(EXCLUDE_INBOUND_CIDRS, v)?;
    }
    Ok(spec)
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports<C: FromIterator<u16>>(
    annotation: &'static str,
    value: &str,
) -> Result<C, AnnotationError> {
    items(value)
        .map(|item| match item.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(AnnotationError {
                annotation,
                item: item.to_string(),
                problem: "is not a TCP port (1-65535)".into(),
            }),
        })
        .collect()
}

fn cidrs<C: FromIterator<Cidr>>(
    annotation: &'static str,
    value: &str,
) -> Result<C, AnnotationError> {
    items(value)
        .map(|item| {
            item.parse::<Cidr>().map_err(|e| AnnotationError {
                annotation,
                item: item.to_string(),
                problem: format!("is not a CIDR ({e})"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_names_the_bad_annotation() {
        let mut a = BTreeMap::new();
        a.insert(EXCLUDE_INBOUND_PORTS.to_string(), "8080, 9090,".to_string());
        a.insert(
            EXCLUDE_OUTBOUND_CIDRS.to_string(),
            "10.96.0.0/12,169.254.169.254".to_string(),
        );
        a.insert("unrelated".to_string(), "x".to_string());
        let spec = redirect_spec_from_annotations(&a).unwrap();
        assert_eq!(
            spec.exclude_inbound_ports.into_iter().collect::<Vec<_>>(),
            [8080, 9090]
        );
        assert_eq!(spec.exclude_outbound_cidrs.len(), 2);

        a.insert(EXCLUDE_OUTBOUND_PORTS.to_string(), "443,https".to_string());
        let err = redirect_spec_from_annotations(&a).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation hawser.dev/exclude-outbound-ports: \"https\" is not a TCP port (1-65535)"
        );
    }
}
