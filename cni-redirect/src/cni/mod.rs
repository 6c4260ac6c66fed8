//! The CNI specification as this plugin sees it: the `CNI_*` environment
//! ([`env`]), the network configuration on stdin ([`config`]), the pod
//! identity in `CNI_ARGS` ([`k8s_args`]) and the error result ([`error`]).
//! Nothing here touches the network; the commands live in
//! [`crate::commands`].

pub mod config;
pub mod env;
pub mod error;
pub mod k8s_args;

pub use config::{NetConf, SUPPORTED_VERSIONS};
pub use env::{CniEnv, Command, ContainerId, IfName};
pub use error::{CniError, ErrorCode};
pub use k8s_args::PodIdentity;
