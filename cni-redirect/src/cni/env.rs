//! The `CNI_*` environment variables: which command, which container, which
//! netns and interface, parsed and validated once.

use std::fmt;
use std::path::PathBuf;

use super::error::{CniError, ErrorCode};

/// The CNI operation requested in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove the container from the network.
    Del,
    /// Verify the container's networking.
    Check,
    /// Report whether ADD can be served (CNI 1.1).
    Status,
    /// Drop state of attachments the runtime no longer knows (CNI 1.1).
    Gc,
    /// Report supported spec versions.
    Version,
}

impl Command {
    /// The spelling used in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }
}

/// Why the environment is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `CNI_COMMAND` is not set (the binary was run by hand).
    #[error("CNI_COMMAND is not set")]
    NoCommand,
    /// `CNI_COMMAND` names an unknown operation.
    #[error("CNI_COMMAND {0:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    UnknownCommand(String),
    /// A variable the command needs is missing or empty.
    #[error("{var} is required for {command} but is not set")]
    Missing {
        /// The variable.
        var: &'static str,
        /// The command.
        command: &'static str,
    },
    /// A variable has a value the spec forbids.
    #[error("{var} {value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

impl From<EnvError> for CniError {
    fn from(e: EnvError) -> Self {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            e.to_string(),
            "hawser-cni is invoked by the container runtime with the CNI_* variables of the CNI \
             specification; run it through the runtime (or set them as the spec describes)",
        )
    }
}

/// A validated `CNI_CONTAINERID`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    /// Validates per the spec: alphanumeric first, then alphanumerics, `_`,
    /// `.` or `-`.
    pub fn parse(s: &str) -> Result<Self, EnvError> {
        let invalid = |reason| EnvError::Invalid {
            var: "CNI_CONTAINERID",
            value: s.into(),
            reason,
        };
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(invalid("it must start with a letter or digit"));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(invalid(
                "only letters, digits, '_', '.' and '-' are allowed",
            ));
        }
        Ok(Self(s.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated `CNI_IFNAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    /// Validates per the spec (Linux interface name rules).
    pub fn parse(s: &str) -> Result<Self, EnvError> {
        let invalid = |reason| EnvError::Invalid {
            var: "CNI_IFNAME",
            value: s.into(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.len() > 15 {
            return Err(invalid("interface names are at most 15 bytes"));
        }
        if s == "." || s == ".." {
            return Err(invalid("'.' and '..' are not interface names"));
        }
        if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(invalid("'/', ':' and whitespace are not allowed"));
        }
        Ok(Self(s.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parsed environment.
#[derive(Clone, Debug)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: Option<ContainerId>,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: Option<IfName>,
    /// `CNI_ARGS`, raw.
    pub args: Option<String>,
}

impl CniEnv {
    /// Reads and validates the variables `get` returns (empty counts as
    /// unset, as in the reference implementation).
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND").as_deref() {
            None => return Err(EnvError::NoCommand),
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => return Err(EnvError::UnknownCommand(other.into())),
        };
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &'static str| {
            var(name).ok_or(EnvError::Missing {
                var: name,
                command: command.as_str(),
            })
        };
        let (container_id, ifname) = if attachment {
            (
                Some(ContainerId::parse(&required("CNI_CONTAINERID")?)?),
                Some(IfName::parse(&required("CNI_IFNAME")?)?),
            )
        } else {
            (None, None)
        };
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            Command::Del => var("CNI_NETNS").map(PathBuf::from),
            _ => None,
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args: var("CNI_ARGS"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::parse(&move |k| map.get(k).cloned())
    }

    #[test]
    fn required_variables_depend_on_the_command() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI_NETNS is required for ADD but is not set"
        );
        let ok = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(ok.netns, None);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).unwrap_err().to_string(),
            "CNI_COMMAND \"FROB\" is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
        );
    }

    #[test]
    fn ids_and_ifnames_follow_the_spec() {
        assert!(ContainerId::parse("a1_b.c-d").is_ok());
        assert!(ContainerId::parse("-abc").is_err());
        assert!(ContainerId::parse("ab/c").is_err());
        assert!(IfName::parse("eth0").is_ok());
        assert!(IfName::parse("0123456789abcdef").is_err());
        assert!(IfName::parse("..").is_err());
        assert!(IfName::parse("eth:0").is_err());
    }
}
