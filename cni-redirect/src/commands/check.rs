//! CHECK: the pod's redirection is exactly what ADD left.
//!
//! For a redirected pod the `inet hawser` table must exist in the pod netns
//! and list exactly as it did right after ADD (kernel handles aside); a
//! missing or edited table means the pod's traffic no longer goes where the
//! mesh expects, which the runtime should treat as a broken pod. A pod that
//! was not redirected has nothing to check.

use super::{Invocation, Output};
use crate::cni::error::netns_error;
use crate::cni::{CniError, ErrorCode};
use crate::netns::Netns;

/// Runs CHECK.
pub fn run(inv: &Invocation<'_>) -> Result<Output, CniError> {
    inv.conf.require_prev_result()?;
    let key = inv.key().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_CONTAINERID and CNI_IFNAME are required for CHECK",
            "the container runtime must set the CNI_* variables",
        )
    })?;
    let Some(state) = inv.store().load(&key)? else {
        tracing::debug!("pod is not redirected; nothing to check");
        return Ok(Output::Nothing);
    };
    let damaged = |what: String| {
        CniError::new(
            ErrorCode::RulesDamaged,
            what,
            "the pod's traffic bypasses or blackholes the mesh; delete the pod so its sandbox \
             is re-created, and find what edits nftables inside pod network namespaces",
        )
    };
    let (Some(expected), true) = (&state.rules, state.handed_off) else {
        return Err(damaged(format!(
            "ADD of {} never completed (rules written: {}, netns handed to the proxy: {})",
            state.pod,
            state.rules.is_some(),
            state.handed_off
        )));
    };
    let netns_path = inv.env.netns.as_deref().unwrap_or(&state.netns_path);
    let netns = Netns::open(netns_path).map_err(|e| netns_error(e, "CNI_NETNS"))?;
    let nft = inv.nft();
    let actual = netns
        .run(|| nft.read_table())
        .map_err(|e| netns_error(e, "CNI_NETNS"))??;
    match actual {
        None => Err(damaged(format!(
            "table inet {} is missing from {}",
            crate::nft::TABLE,
            netns_path.display()
        ))),
        Some(actual) if &actual != expected => Err(damaged(format!(
            "table inet {} in {} was modified since ADD",
            crate::nft::TABLE,
            netns_path.display()
        ))),
        Some(_) => Ok(Output::Nothing),
    }
}
