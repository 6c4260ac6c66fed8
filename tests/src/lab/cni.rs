//! Runs a CNI plugin chain the way kubelet's container runtime (libcni) does:
//! each plugin of the conflist in turn with `name`, `cniVersion` and the
//! previous plugin's result as `prevResult`; DEL in reverse order with the
//! cached ADD result. Plugins run inside the node's network namespace, so the
//! bridge and routes they create belong to that node.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

use super::LabError;
use super::sys;

/// One pod attachment, as the runtime describes it to the plugins.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The node's network namespace (plugins run there).
    pub node_netns: String,
    /// The container (sandbox) id.
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub pod_netns_path: PathBuf,
    /// The interface name inside the pod.
    pub ifname: String,
    /// `CNI_ARGS`, e.g. `K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=c`.
    pub args: String,
}

/// A network configuration list (`*.conflist`).
#[derive(Debug, Clone)]
pub struct ConfList {
    /// The raw document.
    pub doc: Value,
    /// Where plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
}

impl ConfList {
    /// Reads a conflist file.
    pub fn load(path: &Path, bin_dirs: Vec<PathBuf>) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| LabError::Invalid {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { doc, bin_dirs })
    }

    fn plugins(&self) -> Result<Vec<Map<String, Value>>, LabError> {
        let invalid = |reason: &str| LabError::Invalid {
            what: "CNI conflist".into(),
            reason: reason.into(),
        };
        self.doc
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("has no \"plugins\" array"))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| invalid("a plugin entry is not an object"))
            })
            .collect()
    }

    fn network_name(&self) -> &str {
        self.doc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("hawser-lab")
    }

    fn version(&self) -> &str {
        self.doc
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("1.0.0")
    }

    fn find(&self, plugin_type: &str) -> Result<PathBuf, LabError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                LabError::Missing(format!(
                    "CNI plugin {plugin_type:?} in {:?} (install containernetworking-plugins)",
                    self.bin_dirs
                ))
            })
    }

    fn exec(
        &self,
        command: &str,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        at: &Attachment,
    ) -> Result<Value, LabError> {
        let plugin_type =
            plugin
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| LabError::Invalid {
                    what: "CNI conflist".into(),
                    reason: "a plugin has no \"type\"".into(),
                })?;
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(self.network_name()));
        conf.insert("cniVersion".into(), json!(self.version()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| LabError::Invalid {
            what: "CNI config".into(),
            reason: e.to_string(),
        })?;
        let bin = self.find(plugin_type)?;
        let path = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &at.node_netns])
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &at.container_id)
            .env("CNI_NETNS", &at.pod_netns_path)
            .env("CNI_IFNAME", &at.ifname)
            .env("CNI_ARGS", &at.args)
            .env("CNI_PATH", path);
        let out = sys::run_with(&mut cmd, Some(&stdin)).map_err(|e| match e {
            LabError::Command { output, .. } => LabError::Cni {
                plugin: plugin_type.to_owned(),
                command: command.to_owned(),
                output,
            },
            other => other,
        })?;
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| LabError::Cni {
            plugin: plugin_type.to_owned(),
            command: command.to_owned(),
            output: format!("unparseable result ({e}): {out}"),
        })
    }

    /// ADD through the whole chain; returns the final result. If a plugin
    /// fails, the ones before it are deleted again (as libcni does), so the pod
    /// is never left half attached.
    pub fn add(&self, at: &Attachment) -> Result<Value, LabError> {
        let plugins = self.plugins()?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in plugins.iter().enumerate() {
            match self.exec("ADD", plugin, prev.as_ref(), at) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    for done in plugins[..i].iter().rev() {
                        let _ = self.exec("DEL", done, prev.as_ref(), at);
                    }
                    return Err(e);
                }
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the chain in reverse, with the cached ADD result. Every
    /// plugin is called even if one fails; the first error is returned.
    pub fn del(&self, at: &Attachment, cached: Option<&Value>) -> Result<(), LabError> {
        let mut first = None;
        for plugin in self.plugins()?.iter().rev() {
            if let Err(e) = self.exec("DEL", plugin, cached, at) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The first IPv4 address (without prefix) in a CNI result.
pub fn result_ipv4(result: &Value) -> Option<String> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .find(|a| !a.contains(':'))
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
}
