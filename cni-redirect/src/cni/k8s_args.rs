//! The pod identity kubelet passes in `CNI_ARGS`
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{CniError, ErrorCode};

/// Namespace, name and uid of the pod being attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`; older kubelets omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl fmt::Display for PodIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why `CNI_ARGS` does not identify a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `CNI_ARGS` is not set at all.
    #[error("CNI_ARGS is not set, so the pod is unknown (need K8S_POD_NAMESPACE and K8S_POD_NAME)")]
    Unset,
    /// An entry is not `KEY=VALUE`.
    #[error("CNI_ARGS entry {0:?} is not KEY=VALUE")]
    Malformed(String),
    /// A required key is missing or empty.
    #[error("CNI_ARGS has no {0} (got {1:?})")]
    Missing(&'static str, String),
}

impl From<ArgsError> for CniError {
    fn from(e: ArgsError) -> Self {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            e.to_string(),
            "hawser-cni needs the pod identity kubelet passes in CNI_ARGS \
             (K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..); other callers must pass the same",
        )
    }
}

/// Parses `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`) into the pod's
/// identity. Unknown keys (`IgnoreUnknown`, `K8S_POD_INFRA_CONTAINER_ID`, …)
/// are ignored.
pub fn pod_identity(cni_args: Option<&str>) -> Result<PodIdentity, ArgsError> {
    let raw = cni_args.ok_or(ArgsError::Unset)?;
    let (mut namespace, mut name, mut uid) = (None, None, None);
    for entry in raw.split(';').filter(|e| !e.is_empty()) {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| ArgsError::Malformed(entry.into()))?;
        match k {
            "K8S_POD_NAMESPACE" => namespace = Some(v.to_string()),
            "K8S_POD_NAME" => name = Some(v.to_string()),
            "K8S_POD_UID" => uid = Some(v.to_string()),
            _ => {}
        }
    }
    let namespace = namespace
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ArgsError::Missing("K8S_POD_NAMESPACE", raw.into()))?;
    let name = name
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ArgsError::Missing("K8S_POD_NAME", raw.into()))?;
    Ok(PodIdentity {
        namespace,
        name,
        uid: uid.filter(|v| !v.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_args() {
        let p = pod_identity(Some(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234",
        ))
        .unwrap();
        assert_eq!(p.to_string(), "shop/web-0");
        assert_eq!(p.uid.as_deref(), Some("1234"));
    }

    #[test]
    fn missing_pieces_are_named() {
        assert_eq!(pod_identity(None).unwrap_err(), ArgsError::Unset);
        assert_eq!(
            pod_identity(Some("K8S_POD_NAME=x")).unwrap_err(),
            ArgsError::Missing("K8S_POD_NAMESPACE", "K8S_POD_NAME=x".into())
        );
        assert_eq!(
            pod_identity(Some("K8S_POD_NAME")).unwrap_err(),
            ArgsError::Malformed("K8S_POD_NAME".into())
        );
    }
}
