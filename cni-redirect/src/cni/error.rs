//! The CNI error result: the one place where failures from every module
//! become the spec's `{cniVersion, code, msg, details}` JSON on stdout.
//!
//! `msg` names what went wrong (with the offending value), `details` tells an
//! operator what to do about it. Codes 1–99 are the spec's well-known codes;
//! 100+ are Hawser's own.

use serde::Serialize;

/// A CNI error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not supported.
    IncompatibleVersion,
    /// 4: a required `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: stdin could not be read.
    IoFailure,
    /// 6: stdin is not JSON.
    DecodingFailure,
    /// 7: the network configuration is invalid.
    InvalidConfig,
    /// 11: a transient condition (node proxy down); the runtime retries.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD.
    PluginNotAvailable,
    /// 51: STATUS: cannot serve ADD, and existing pods have limited
    /// connectivity.
    LimitedConnectivity,
    /// 100: nftables could not be applied or read in the pod netns.
    Nftables,
    /// 101: CHECK found the redirection table missing or modified.
    RulesDamaged,
    /// 102: the node proxy answered something unusable.
    ProxyProtocol,
    /// 103: the pod netns could not be entered.
    Netns,
    /// 104: the plugin's attachment state could not be read or written.
    State,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::PluginNotAvailable => 50,
            Self::LimitedConnectivity => 51,
            Self::Nftables => 100,
            Self::RulesDamaged => 101,
            Self::ProxyProtocol => 102,
            Self::Netns => 103,
            Self::State => 104,
        }
    }
}

/// An error result, ready to print.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("code {}: {msg} ({details})", code.code())]
pub struct CniError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, naming the offending value.
    pub msg: String,
    /// What an operator should do.
    pub details: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    details: &'a str,
}

impl CniError {
    /// Builds an error.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's JSON, with `cni_version` echoing the configuration's.
    pub fn to_json(&self, cni_version: &str) -> String {
        let wire = Wire {
            cni_version,
            code: self.code.code(),
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing a struct of strings and an integer cannot fail.
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"1.1.0","code":{},"msg":"","details":""}}"#,
                self.code.code()
            )
        })
    }
}

impl From<crate::nft::NftError> for CniError {
    fn from(e: crate::nft::NftError) -> Self {
        CniError::new(
            ErrorCode::Nftables,
            e.to_string(),
            "hawser-cni programs the pod netns with the node's nft binary (nftables with JSON \
             support, kernel with nf_tables NAT); install nftables on the node or set nftPath",
        )
    }
}

impl From<crate::state::StateError> for CniError {
    fn from(e: crate::state::StateError) -> Self {
        CniError::new(
            ErrorCode::State,
            e.to_string(),
            "hawser-cni keeps attachment state under its runDir; make sure that directory is \
             writable by the container runtime and not shared between nodes",
        )
    }
}

/// Maps a netns failure for the namespace named by the environment variable
/// `var` (`CNI_NETNS`).
pub fn netns_error(e: crate::netns::NetnsError, var: &str) -> CniError {
    use crate::netns::NetnsError;
    match e {
        NetnsError::NotFound(_)
        | NetnsError::NotNetns(_)
        | NetnsError::IsOwn(_)
        | NetnsError::Open { .. } => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("{var}: {e}"),
            "the runtime must pass the path of the pod sandbox's network namespace",
        ),
        NetnsError::Enter { .. } | NetnsError::Thread(_) => CniError::new(
            ErrorCode::Netns,
            e.to_string(),
            "hawser-cni must run as root (CAP_SYS_ADMIN) to enter the pod's network namespace",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_spec_fields() {
        let e = CniError::new(
            ErrorCode::InvalidConfig,
            "missing prevResult",
            "chain it last",
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0", "code": 7, "msg": "missing prevResult", "details": "chain it last"
            })
        );
    }
}
