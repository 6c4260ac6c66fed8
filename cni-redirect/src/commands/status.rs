//! STATUS (CNI 1.1): can this plugin serve ADD right now?
//!
//! ADD depends on the node proxy only for pods in enrolled namespaces, so:
//! proxy answering → ready; proxy down and some pods on this node already
//! redirected → 51 (those pods' TCP has nowhere to go); proxy down and some
//! namespace enrolled (or the list unreadable) → 50; proxy down and nothing
//! enrolled → ready (every ADD passes pods through untouched).

use hawser_api::cni::enrolled::EnrolledNamespaces;

use super::{Invocation, Output};
use crate::cni::{CniError, ErrorCode};

/// Runs STATUS.
pub fn run(inv: &Invocation<'_>) -> Result<Output, CniError> {
    let err = match inv.proxy().ping() {
        Ok(pong) => {
            tracing::debug!(pods = pong.pods, "node proxy is serving");
            return Ok(Output::Nothing);
        }
        Err(e) => e,
    };
    let redirected = inv.store().list(&inv.conf.name)?.len();
    if redirected > 0 {
        return Err(CniError::new(
            ErrorCode::LimitedConnectivity,
            format!(
                "node proxy unavailable ({err}) while {redirected} pod attachment(s) on this node are redirected into it"
            ),
            "their outbound and inbound TCP fails until the hawser-node-proxy pod on this node runs again",
        ));
    }
    let list_path = EnrolledNamespaces::path_in(&inv.conf.plugin.run_dir);
    match EnrolledNamespaces::load(&list_path) {
        Ok(Some(list)) if !list.namespaces.is_empty() => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            format!(
                "node proxy unavailable ({err}); pods in enrolled namespaces ({}) cannot be added",
                list.namespaces
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "start the hawser-node-proxy pod on this node",
        )),
        Ok(_) => Ok(Output::Nothing),
        Err(e) => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            format!("node proxy unavailable ({err}) and {e}"),
            "start the hawser-node-proxy pod on this node; it rewrites the list",
        )),
    }
}
