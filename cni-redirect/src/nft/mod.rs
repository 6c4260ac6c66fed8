//! nftables in the pod netns: [`rules`] builds the `inet hawser` table,
//! [`Nft`] applies and reads it by running `nft -j` (the process inherits the
//! calling thread's network namespace, see [`crate::netns::Netns::run`]).

pub mod rules;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nftables::schema::Nftables;
use serde_json::Value;

pub use rules::{TABLE, delete_ruleset, redirect_ruleset};

/// Why `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be run.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The binary.
        program: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// `nft` rejected the request.
    #[error("{program} failed while {action}: {stderr}")]
    Failed {
        /// The binary.
        program: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// Its error output.
        stderr: String,
    },
    /// `nft -j` printed something that is not JSON.
    #[error("{program} printed invalid JSON while listing the ruleset: {source}")]
    Json {
        /// The binary.
        program: PathBuf,
        /// The failure.
        source: serde_json::Error,
    },
}

/// The `nft` binary.
#[derive(Clone, Debug)]
pub struct Nft {
    program: PathBuf,
}

impl Nft {
    /// Uses `configured`, else `nft` from `PATH`, else `/usr/sbin/nft`
    /// (runtimes often exec plugins with a minimal `PATH`).
    pub fn locate(configured: Option<&Path>) -> Self {
        let program = configured.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("nft"))
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/nft"))
        });
        Self { program }
    }

    /// Applies a batch atomically (`nft -j -f -`).
    pub fn apply(&self, batch: &Nftables<'_>, action: &'static str) -> Result<(), NftError> {
        let payload = serde_json::to_vec(batch).map_err(|source| NftError::Json {
            program: self.program.clone(),
            source,
        })?;
        let mut child = Command::new(&self.program)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.exec_error(source))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&payload)
                .map_err(|source| self.exec_error(source))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| self.exec_error(source))?;
        if !out.status.success() {
            return Err(NftError::Failed {
                program: self.program.clone(),
                action,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Reads the `inet hawser` table: `None` when absent, else its chains and
    /// rules as JSON with the kernel-assigned handles removed, so two
    /// listings of the same rules compare equal.
    pub fn read_table(&self) -> Result<Option<Value>, NftError> {
        let raw = nftables::helper::get_current_ruleset_raw(
            Some(&OsString::from(&self.program)),
            ["list", "ruleset"],
        )
        .map_err(|e| NftError::Failed {
            program: self.program.clone(),
            action: "listing the ruleset",
            stderr: e.to_string(),
        })?;
        let listing: Value = serde_json::from_str(&raw).map_err(|source| NftError::Json {
            program: self.program.clone(),
            source,
        })?;
        Ok(extract_table(&listing))
    }

    fn exec_error(&self, source: std::io::Error) -> NftError {
        NftError::Exec {
            program: self.program.clone(),
            source,
        }
    }
}

/// Picks our table's objects out of a `nft -j list ruleset` document.
fn extract_table(listing: &Value) -> Option<Value> {
    let objects = listing.get("nftables")?.as_array()?;
    let ours = |o: &Value| o["family"] == "inet" && (o["name"] == TABLE || o["table"] == TABLE);
    let mut found_table = false;
    let mut items = Vec::new();
    for obj in objects {
        let Some((kind, body)) = obj.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "table" if ours(body) && body["name"] == TABLE => found_table = true,
            "chain" | "rule" | "set" | "map"
                if body["table"] == TABLE && body["family"] == "inet" =>
            {
                let mut body = body.clone();
                if let Some(m) = body.as_object_mut() {
                    m.remove("handle");
                }
                items.push(serde_json::json!({ kind.clone(): body }));
            }
            _ => {}
        }
    }
    found_table.then_some(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_only_our_table_without_handles() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"table": {"family": "inet", "name": "hawser", "handle": 2}},
            {"chain": {"family": "inet", "table": "hawser", "name": "output", "handle": 1, "hook": "output"}},
            {"rule": {"family": "inet", "table": "hawser", "chain": "output", "handle": 4, "expr": [{"return": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "x", "handle": 5, "expr": []}},
        ]});
        let got = extract_table(&listing).unwrap();
        assert_eq!(
            got,
            json!([
                {"chain": {"family": "inet", "table": "hawser", "name": "output", "hook": "output"}},
                {"rule": {"family": "inet", "table": "hawser", "chain": "output", "expr": [{"return": null}]}},
            ])
        );
        let none = json!({"nftables": [{"metainfo": {}}]});
        assert_eq!(extract_table(&none), None);
    }
}
