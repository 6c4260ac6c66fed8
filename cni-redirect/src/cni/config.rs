//! The network configuration on stdin: spec fields (`cniVersion`, `name`,
//! `prevResult`, `cni.dev/valid-attachments`) and Hawser's own plugin keys,
//! parsed once into typed values.
//!
//! Plugin keys (all optional), as they appear in the conflist entry:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `socketPath` | `/var/run/hawser/cni.sock` | the node proxy's CNI socket |
//! | `runDir` | `/var/run/hawser` | holds `enrolled-namespaces.json` (written by the proxy) and the plugin's attachment state |
//! | `logFile` | `/var/log/hawser-cni.log` | where the plugin logs (stdout is the CNI protocol) |
//! | `logLevel` | `info` | `error`, `warn`, `info` or `debug` |
//! | `proxyTimeoutMs` | `15000` | bound on each exchange with the node proxy (1–60000); above the proxy's 10 s wait for a pod it does not know yet |
//! | `nftPath` | `nft` from `PATH`, else `/usr/sbin/nft` | the `nft` binary used to program the pod netns |

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::{CniError, ErrorCode};

/// Spec versions this plugin accepts (Debian's plugins speak 1.0.0).
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// The version used when the input names none we could read.
pub const LATEST_VERSION: &str = "1.1.0";

/// Default log file.
pub const DEFAULT_LOG_FILE: &str = "/var/log/hawser-cni.log";

/// Default bound on each exchange with the node proxy.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_millis(15000);

/// Why the configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// stdin is not a JSON object.
    #[error("stdin is not a JSON network configuration: {0}")]
    NotJson(String),
    /// `cniVersion` is missing.
    #[error("the network configuration has no cniVersion")]
    NoVersion,
    /// `cniVersion` is not one this plugin speaks.
    #[error("cniVersion {0:?} is not supported (hawser-cni speaks 1.0.0 and 1.1.0)")]
    UnsupportedVersion(String),
    /// A field has the wrong type or value.
    #[error("{field}: {problem}")]
    Field {
        /// The key.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// ADD or CHECK without `prevResult`.
    #[error("the network configuration has no prevResult")]
    NoPrevResult,
    /// GC without the list of valid attachments.
    #[error("GC input has no cni.dev/valid-attachments")]
    NoValidAttachments,
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        let (code, details) = match &e {
            ConfigError::NotJson(_) => (
                ErrorCode::DecodingFailure,
                "the runtime must pass the plugin's network configuration as JSON on stdin",
            ),
            ConfigError::NoVersion => (
                ErrorCode::InvalidConfig,
                "set \"cniVersion\": \"1.0.0\" or \"1.1.0\" in the conflist",
            ),
            ConfigError::UnsupportedVersion(_) => (
                ErrorCode::IncompatibleVersion,
                "set the conflist's cniVersion to 1.0.0 or 1.1.0 (upgrade the primary CNI \
                 plugins if they only speak older versions)",
            ),
            ConfigError::Field { .. } => (
                ErrorCode::InvalidConfig,
                "fix the hawser-cni entry in the conflist (see cni-redirect/README.md for its keys)",
            ),
            ConfigError::NoPrevResult => (
                ErrorCode::InvalidConfig,
                "hawser-cni is a chained plugin: it must be the last entry of a conflist whose \
                 earlier plugins (e.g. bridge + host-local) produce a result",
            ),
            ConfigError::NoValidAttachments => (
                ErrorCode::InvalidConfig,
                "the runtime must list the attachments it still knows in \
                 cni.dev/valid-attachments (CNI 1.1 GC)",
            ),
        };
        CniError::new(code, e.to_string(), details)
    }
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operation.
    Info,
    /// Everything.
    Debug,
}

/// Hawser's own keys of the conflist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    /// The node proxy's CNI socket.
    pub socket_path: PathBuf,
    /// Run directory shared with the node proxy.
    pub run_dir: PathBuf,
    /// Log file.
    pub log_file: PathBuf,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Bound on each exchange with the node proxy.
    pub proxy_timeout: Duration,
    /// The `nft` binary, when configured explicitly.
    pub nft_path: Option<PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            socket_path: hawser_api::cni::DEFAULT_SOCKET_PATH.into(),
            run_dir: hawser_api::cni::DEFAULT_RUN_DIR.into(),
            log_file: DEFAULT_LOG_FILE.into(),
            log_level: LogLevel::Info,
            proxy_timeout: DEFAULT_PROXY_TIMEOUT,
            nft_path: None,
        }
    }
}

/// One `(containerID, ifname)` pair of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct GcAttachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// An address the primary CNI assigned, from `prevResult.ips`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevIp {
    /// The pod's address (prefix length dropped).
    pub address: IpAddr,
    /// The gateway, when the primary CNI set one.
    pub gateway: Option<IpAddr>,
}

/// The previous plugin's result: kept byte for byte (ADD prints it back
/// unchanged) plus the parts Hawser reads.
#[derive(Clone, Debug)]
pub struct PrevResult {
    /// The exact JSON text received.
    pub raw: Box<RawValue>,
    /// `ips[]`.
    pub ips: Vec<PrevIp>,
}

impl PrevResult {
    /// The pod's addresses.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|ip| ip.address).collect()
    }

    /// The gateways (host side of bridge-style networks).
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.ips.iter().filter_map(|ip| ip.gateway).collect()
    }
}

/// The parsed stdin.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// One of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// The network name (`name` of the conflist).
    pub name: String,
    /// Hawser's keys.
    pub plugin: PluginConfig,
    /// `prevResult`, if any.
    pub prev_result: Option<PrevResult>,
    /// `cni.dev/valid-attachments`, if any (GC).
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

#[derive(Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<Value>,
    name: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Box<RawValue>>,
    #[serde(rename = "socketPath")]
    socket_path: Option<Value>,
    #[serde(rename = "runDir")]
    run_dir: Option<Value>,
    #[serde(rename = "logFile")]
    log_file: Option<Value>,
    #[serde(rename = "logLevel")]
    log_level: Option<Value>,
    #[serde(rename = "proxyTimeoutMs")]
    proxy_timeout_ms: Option<Value>,
    #[serde(rename = "nftPath")]
    nft_path: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Value>,
    // libcni sends the same list under this older key too.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Value>,
}

/// Best-effort `cniVersion` of a possibly invalid input, for error results.
pub fn version_hint(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok()?.v
}

fn string(field: &'static str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(ConfigError::Field {
            field,
            problem: "must not be empty".into(),
        }),
        other => Err(ConfigError::Field {
            field,
            problem: format!("must be a string, got {other}"),
        }),
    }
}

fn network_name(v: &Value) -> Result<String, ConfigError> {
    let name = string("name", v)?;
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(ConfigError::Field {
            field: "name",
            problem: format!(
                "{name:?} is not a valid network name (letters, digits, '_', '.', '-'; \
                 starting with a letter or digit)"
            ),
        });
    }
    Ok(name)
}

fn prev_result(raw: Box<RawValue>) -> Result<Option<PrevResult>, ConfigError> {
    #[derive(Deserialize)]
    struct Ip {
        address: Option<Value>,
        gateway: Option<Value>,
    }
    #[derive(Deserialize)]
    struct Result_ {
        #[serde(default)]
        ips: Vec<Ip>,
    }
    if raw.get() == "null" {
        return Ok(None);
    }
    let parsed: Result_ = serde_json::from_str(raw.get()).map_err(|e| ConfigError::Field {
        field: "prevResult",
        problem: format!("is not a CNI result: {e}"),
    })?;
    let mut ips = Vec::new();
    for ip in parsed.ips {
        let address = match &ip.address {
            Some(Value::String(s)) => s,
            other => {
                return Err(ConfigError::Field {
                    field: "prevResult",
                    problem: format!("ips[].address must be a CIDR string, got {other:?}"),
                });
            }
        };
        let addr = address
            .split_once('/')
            .map_or(address.as_str(), |(a, _)| a)
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::Field {
                field: "prevResult",
                problem: format!("ips[].address {address:?} is not an address in CIDR notation"),
            })?;
        let gateway = match &ip.gateway {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) => {
                Some(g.parse::<IpAddr>().map_err(|_| ConfigError::Field {
                    field: "prevResult",
                    problem: format!("ips[].gateway {g:?} is not an IP address"),
                })?)
            }
            Some(other) => {
                return Err(ConfigError::Field {
                    field: "prevResult",
                    problem: format!("ips[].gateway must be a string, got {other}"),
                });
            }
        };
        ips.push(PrevIp {
            address: addr,
            gateway,
        });
    }
    Ok(Some(PrevResult { raw, ips }))
}

impl NetConf {
    /// Parses and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ConfigError::NotJson(format!(
                "expected a JSON object, got {}",
                kind(&value)
            )));
        }
        let raw: RawConf =
            serde_json::from_slice(stdin).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let cni_version = match &raw.cni_version {
            None | Some(Value::Null) => return Err(ConfigError::NoVersion),
            Some(v) => string("cniVersion", v)?,
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(ConfigError::UnsupportedVersion(cni_version));
        }
        let name = match &raw.name {
            None | Some(Value::Null) => {
                return Err(ConfigError::Field {
                    field: "name",
                    problem: "is required (the network name)".into(),
                });
            }
            Some(v) => network_name(v)?,
        };
        let mut plugin = PluginConfig::default();
        if let Some(v) = &raw.socket_path {
            plugin.socket_path = absolute("socketPath", v)?;
        }
        if let Some(v) = &raw.run_dir {
            plugin.run_dir = absolute("runDir", v)?;
        }
        if let Some(v) = &raw.log_file {
            plugin.log_file = absolute("logFile", v)?;
        }
        if let Some(v) = &raw.nft_path {
            plugin.nft_path = Some(absolute("nftPath", v)?);
        }
        if let Some(v) = &raw.log_level {
            plugin.log_level = match string("logLevel", v)?.as_str() {
                "error" => LogLevel::Error,
                "warn" => LogLevel::Warn,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                other => {
                    return Err(ConfigError::Field {
                        field: "logLevel",
                        problem: format!("{other:?} is not one of error, warn, info, debug"),
                    });
                }
            };
        }
        if let Some(v) = &raw.proxy_timeout_ms {
            plugin.proxy_timeout = match v.as_u64() {
                Some(ms @ 1..=60_000) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Field {
                        field: "proxyTimeoutMs",
                        problem: format!("{v} is not a number of milliseconds between 1 and 60000"),
                    });
                }
            };
        }
        let prev_result = match raw.prev_result {
            Some(r) => prev_result(r)?,
            None => None,
        };
        let valid_attachments = match raw.valid_attachments.or(raw.attachments) {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v).map_err(|e| ConfigError::Field {
                field: "cni.dev/valid-attachments",
                problem: format!("must be a list of {{\"containerID\", \"ifname\"}}: {e}"),
            })?),
        };
        Ok(Self {
            cni_version,
            name,
            plugin,
            prev_result,
            valid_attachments,
        })
    }

    /// `prevResult`, which ADD and CHECK require.
    pub fn require_prev_result(&self) -> Result<&PrevResult, ConfigError> {
        self.prev_result.as_ref().ok_or(ConfigError::NoPrevResult)
    }
}

fn absolute(field: &'static str, v: &Value) -> Result<PathBuf, ConfigError> {
    let s = string(field, v)?;
    if !s.starts_with('/') {
        return Err(ConfigError::Field {
            field,
            problem: format!("{s:?} must be an absolute path"),
        });
    }
    Ok(s.into())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"10.250.3.5/24","gateway":"10.250.3.1"}],"dns":{}}"#;

    #[test]
    fn parses_plugin_keys_and_keeps_prev_result_verbatim() {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"pods","type":"hawser-cni","socketPath":"/run/h/cni.sock",
               "runDir":"/run/h","logLevel":"debug","proxyTimeoutMs":250,"prevResult":{PREV}}}"#
        );
        let c = NetConf::parse(conf.as_bytes()).unwrap();
        assert_eq!(c.plugin.socket_path, PathBuf::from("/run/h/cni.sock"));
        assert_eq!(c.plugin.proxy_timeout, Duration::from_millis(250));
        assert_eq!(c.plugin.log_level, LogLevel::Debug);
        let prev = c.require_prev_result().unwrap();
        assert_eq!(prev.raw.get(), PREV);
        assert_eq!(
            prev.pod_ips(),
            vec!["10.250.3.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            prev.gateways(),
            vec!["10.250.3.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn bad_inputs_get_the_right_code_and_name_the_problem() {
        let code = |s: &str| CniError::from(NetConf::parse(s.as_bytes()).unwrap_err());
        assert_eq!(code("{nope").code, ErrorCode::DecodingFailure);
        assert_eq!(code("[1]").code, ErrorCode::DecodingFailure);
        assert_eq!(code(r#"{"name":"n"}"#).code, ErrorCode::InvalidConfig);
        let e = code(r#"{"cniVersion":"0.4.0","name":"n"}"#);
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.msg.contains("\"0.4.0\""), "{}", e.msg);
        let e = code(r#"{"cniVersion":"1.0.0","name":"n","proxyTimeoutMs":"fast"}"#);
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.starts_with("proxyTimeoutMs: "), "{}", e.msg);
        let e = code(r#"{"cniVersion":"1.0.0","name":"n","socketPath":"relative.sock"}"#);
        assert!(e.msg.contains("absolute"), "{}", e.msg);
        let e = code(r#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"x"}]}}"#);
        assert!(e.msg.contains("\"x\""), "{}", e.msg);
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert_eq!(
            CniError::from(c.require_prev_result().unwrap_err()).code,
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn reads_valid_attachments_under_either_key() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }
}
