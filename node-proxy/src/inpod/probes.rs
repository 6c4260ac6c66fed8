//! Kubelet's health probes, and only they, reach enrolled pods without
//! authorization.
//!
//! Kubelet probes a pod from the node's own network namespace. The node
//! proxy tells them apart from every other connection of the node by the
//! cgroup of the socket that opens them (kubelet's, `--kubelet-cgroup`):
//! their packets to an enrolled pod are marked, and the mark SNATs them to
//! the link-local [`PROBE_SOURCE_V4`] (IPv6: [`PROBE_SOURCE_V6`]), which is
//! the only source an enrolled pod's rules let through uncaptured (the
//! plugin gets it as the pod's probe source). Any other traffic from the
//! node (host-network pods, node processes, NodePort traffic) keeps its
//! source, is captured like any plaintext connection, and is judged by the
//! pod's policies. Istio ambient SNATs probes to the same address; it picks
//! them by "a local socket exists", which is every process of the node.
//!
//! The host table (`inet hawser-probes`, in the node proxy's namespace):
//!
//! ```text
//! table inet hawser-probes {
//!   set pods4 { type ipv4_addr; }        # enrolled pods on this node
//!   set pods6 { type ipv6_addr; }
//!   chain output {                       # kubelet's packets to them: marked
//!     type filter hook output priority mangle; policy accept;
//!     meta l4proto tcp ip daddr @pods4 socket cgroupv2 level N "<cgroup>" meta mark set meta mark or 0x200000
//!   }
//!   chain postrouting {                  # and sent from the probe address
//!     type nat hook postrouting priority srcnat; policy accept;
//!     meta mark & 0x200000 == 0x200000 ip daddr @pods4 snat ip to 169.254.7.127
//!   }
//! }
//! ```
//!
//! `nft` resolves the cgroup path against a cgroup v2 hierarchy mounted at
//! `/sys/fs/cgroup`; where that is not so (a hybrid host, or a namespace
//! whose `/sys` was mounted anew), it runs in a private mount namespace that
//! mounts one there.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

pub use hawser_api::cni::{PROBE_SOURCE_V4, PROBE_SOURCE_V6};

/// The host table's name (family `inet`).
pub const TABLE: &str = "hawser-probes";

/// The mark bit on kubelet's packets to enrolled pods (apart from the
/// proxy's own [`hawser_api::cni::PROXY_MARK`]).
pub const PROBE_MARK: u32 = 0x0020_0000;

/// Why the probe rules could not be installed or changed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kubelet cgroup path is not a relative cgroup v2 path.
    #[error(
        "kubelet cgroup {0:?} must be a path below the cgroup v2 root, like system.slice/kubelet.service"
    )]
    BadCgroup(String),
    /// `nft` could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// What was run.
        program: &'static str,
        /// Why not.
        source: std::io::Error,
    },
    /// `nft` refused the rules.
    #[error("nft refused the kubelet probe rules: {0}")]
    Nft(String),
}

/// The installed host rules; pods are added as they are enrolled.
#[derive(Debug)]
pub struct KubeletProbes {
    cgroup: String,
}

impl KubeletProbes {
    /// Installs (or replaces) the host table for kubelet in `cgroup` (a path
    /// below the cgroup v2 root), with no pod yet.
    pub fn install(cgroup: &str) -> Result<Self, ProbeError> {
        let cgroup = cgroup.trim_matches('/');
        let valid = !cgroup.is_empty()
            && cgroup
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['"', '\n']));
        if !valid {
            return Err(ProbeError::BadCgroup(cgroup.to_owned()));
        }
        let level = cgroup.split('/').count();
        let kubelet = format!("socket cgroupv2 level {level} \"{cgroup}\"");
        let ruleset = format!(
            "table inet {TABLE} {{}}\n\
             delete table inet {TABLE}\n\
             table inet {TABLE} {{\n\
             \x20 set pods4 {{ type ipv4_addr; }}\n\
             \x20 set pods6 {{ type ipv6_addr; }}\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority mangle; policy accept;\n\
             \x20   meta l4proto tcp ip daddr @pods4 {kubelet} meta mark set meta mark or {PROBE_MARK:#x}\n\
             \x20   meta l4proto tcp ip6 daddr @pods6 {kubelet} meta mark set meta mark or {PROBE_MARK:#x}\n\
             \x20 }}\n\
             \x20 chain postrouting {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   meta mark & {PROBE_MARK:#x} == {PROBE_MARK:#x} ip daddr @pods4 snat ip to {PROBE_SOURCE_V4}\n\
             \x20   meta mark & {PROBE_MARK:#x} == {PROBE_MARK:#x} ip6 daddr @pods6 snat ip6 to {PROBE_SOURCE_V6}\n\
             \x20 }}\n\
             }}\n"
        );
        let mut command = if cgroup_v2_at_sys_fs_cgroup() {
            Command::new("nft")
        } else {
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t cgroup2 none /sys/fs/cgroup && exec nft -f -",
            ]);
            c
        };
        if command.get_program() == "nft" {
            command.args(["-f", "-"]);
        }
        nft(command, &ruleset)?;
        tracing::info!(cgroup, source = %PROBE_SOURCE_V4, "kubelet probes to enrolled pods are sent from the probe address; other node traffic is judged");
        Ok(Self {
            cgroup: cgroup.to_owned(),
        })
    }

    /// The kubelet cgroup the rules match.
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// Kubelet's probes to `ips` (a pod just enrolled) are SNATed from now on.
    pub fn enrolled(&self, ips: &[IpAddr]) -> Result<(), ProbeError> {
        self.elements("add", ips)
    }

    /// `ips` (a pod removed) are no longer probe targets.
    pub fn removed(&self, ips: &[IpAddr]) -> Result<(), ProbeError> {
        self.elements("delete", ips)
    }

    fn elements(&self, verb: &str, ips: &[IpAddr]) -> Result<(), ProbeError> {
        let mut script = String::new();
        for ip in ips {
            let set = if ip.is_ipv4() { "pods4" } else { "pods6" };
            script.push_str(&format!("{verb} element inet {TABLE} {set} {{ {ip} }}\n"));
        }
        if script.is_empty() {
            return Ok(());
        }
        let mut command = Command::new("nft");
        command.args(["-f", "-"]);
        nft(command, &script)
    }
}

/// Runs `command` (nft reading a script on its standard input) with `script`.
fn nft(mut command: Command, script: &str) -> Result<(), ProbeError> {
    let program = if command.get_program() == "nft" {
        "nft"
    } else {
        "unshare (nft in a mount namespace with cgroup v2)"
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProbeError::Spawn { program, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| ProbeError::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ProbeError::Spawn { program, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProbeError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Whether `/sys/fs/cgroup` is a cgroup v2 mount in this mount namespace.
fn cgroup_v2_at_sys_fs_cgroup() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let mut fields = l.split_whitespace();
            matches!(
                (fields.next(), fields.next(), fields.next()),
                (Some(_), Some("/sys/fs/cgroup"), Some("cgroup2"))
            )
        })
    })
}
