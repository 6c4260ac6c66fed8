//! ADD: redirect an enrolled pod into the node proxy.
//!
//! 1. Validate everything (prevResult, pod identity, netns) before touching
//!    anything.
//! 2. Ask the proxy ([`ProxyEndpoint::ask_add`]); not enrolled, or proxy
//!    down and namespace not enrolled → print `prevResult` and stop.
//! 3. Record the attachment, write the table in the pod netns, read it back
//!    (the CHECK baseline), hand the netns to the proxy.
//! 4. Any failure in 3 removes the table and the record again, and tells the
//!    proxy to forget the pod: a pod is never left half configured.

use super::{Invocation, Output};
use crate::cni::error::netns_error;
use crate::cni::{CniError, ErrorCode, PodIdentity, k8s_args};
use crate::netns::Netns;
use crate::nft::redirect_ruleset;
use crate::proxy_client::{AddDecision, ProxyEndpoint};
use crate::state::{AttachmentKey, AttachmentState};

/// Runs ADD.
pub fn run(inv: &Invocation<'_>, pod: &PodIdentity) -> Result<Output, CniError> {
    let prev = inv.conf.require_prev_result()?;
    let passthrough = Output::Print(prev.raw.get().to_string());
    let key = inv
        .key()
        .ok_or_else(|| missing("CNI_CONTAINERID/CNI_IFNAME"))?;
    let netns_path = inv
        .env
        .netns
        .as_deref()
        .ok_or_else(|| missing("CNI_NETNS"))?;
    let netns = Netns::open(netns_path).map_err(|e| netns_error(e, "CNI_NETNS"))?;
    let pod_ips = prev.pod_ips();

    let (mut client, spec) = match inv.proxy().ask_add(pod, &key, netns_path, &pod_ips)? {
        AddDecision::PassThrough { reason } => {
            tracing::info!(%reason, "pod passes untouched");
            return Ok(passthrough);
        }
        AddDecision::Redirect { client, spec } => (client, spec),
    };
    let mut state = AttachmentState {
        pod: pod.clone(),
        netns_path: netns_path.to_path_buf(),
        pod_ips: pod_ips.clone(),
        redirect: spec,
        rules: None,
        handed_off: false,
    };
    inv.store().store(&key, &state)?;

    match configure(inv, &key, &netns, &mut state, &mut client) {
        Ok(()) => {
            tracing::info!(ips = ?pod_ips, "pod redirected into the node proxy");
            Ok(passthrough)
        }
        Err(e) => {
            tracing::error!(error = %e, "ADD failed, rolling back");
            rollback(inv, &key, &netns, &state);
            Err(e)
        }
    }
}

fn missing(var: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("{var} is required for ADD but is not set"),
        "the container runtime must set the CNI_* variables",
    )
}

fn configure(
    inv: &Invocation<'_>,
    key: &AttachmentKey,
    netns: &Netns,
    state: &mut AttachmentState,
    client: &mut hawser_api::cni::client::CniClient,
) -> Result<(), CniError> {
    let nft = inv.nft();
    let rules = redirect_ruleset(&state.redirect);
    let listed = netns
        .run(|| -> Result<_, crate::nft::NftError> {
            nft.apply(&rules, "writing the redirection table")?;
            nft.read_table()
        })
        .map_err(|e| netns_error(e, "CNI_NETNS"))??;
    let listed = listed.ok_or_else(|| {
        CniError::new(
            ErrorCode::Nftables,
            format!(
                "the hawser table is missing from {} right after it was written",
                netns.path().display()
            ),
            "another agent is flushing nftables in pod network namespaces; stop it for enrolled pods",
        )
    })?;
    tracing::debug!(rules = %listed, "rules in pod netns");
    state.rules = Some(listed);
    inv.store().store(key, state)?;

    ProxyEndpoint::handoff(client, &state.pod, key, &state.pod_ips, netns.fd())?;
    state.handed_off = true;
    inv.store().store(key, state)?;
    Ok(())
}

/// Best-effort undo of a failed ADD. The record is dropped only when the
/// rules are provably gone, so DEL/GC can finish a rollback that failed.
fn rollback(inv: &Invocation<'_>, key: &AttachmentKey, netns: &Netns, state: &AttachmentState) {
    let nft = inv.nft();
    let removed = netns
        .run(|| {
            nft.apply(
                &crate::nft::delete_ruleset(),
                "removing the redirection table",
            )
        })
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    // The proxy may have taken the netns even if its answer was lost.
    if let Err(e) = inv.proxy().notify_del(Some(&state.pod), key) {
        tracing::debug!(error = %e, "rollback: node proxy not told");
    }
    match removed {
        Ok(()) => {
            if let Err(e) = inv.store().remove(key) {
                tracing::error!(error = %e, "rollback: could not drop the attachment record");
            }
        }
        Err(e) => tracing::error!(
            error = %e,
            "rollback: rules could not be removed; the record stays for DEL/GC"
        ),
    }
}

/// The pod identity for ADD (required).
pub fn pod_identity(inv: &Invocation<'_>) -> Result<PodIdentity, CniError> {
    Ok(k8s_args::pod_identity(inv.env.args.as_deref())?)
}
