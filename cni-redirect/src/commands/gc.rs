//! GC (CNI 1.1): tear down every attachment of this network that the runtime
//! no longer lists in `cni.dev/valid-attachments` (leftovers of a crash or of
//! a DEL that never came), exactly as DEL would.

use super::{Invocation, Output};
use crate::cni::CniError;
use crate::cni::config::ConfigError;

/// Runs GC.
pub fn run(inv: &Invocation<'_>) -> Result<Output, CniError> {
    let valid = inv
        .conf
        .valid_attachments
        .as_ref()
        .ok_or(ConfigError::NoValidAttachments)?;
    let store = inv.store();
    let mut first_error = None;
    for key in store.list(&inv.conf.name)? {
        let listed = valid.iter().any(|a| {
            a.container_id == key.container_id.as_str() && a.ifname == key.ifname.as_str()
        });
        if listed {
            continue;
        }
        let span = tracing::info_span!("gc", container = %key.container_id, ifname = %key.ifname);
        let _enter = span.enter();
        let result = match store.load(&key) {
            Ok(Some(state)) => {
                tracing::info!(pod = %state.pod, "stale attachment, tearing down");
                inv.teardown(&key, &state, None)
            }
            Ok(None) => Ok(()),
            Err(e) => {
                // An unreadable record cannot point at a netns; drop it.
                tracing::warn!(error = %e, "dropping unreadable attachment record");
                store.remove(&key).map_err(CniError::from)
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "could not tear down stale attachment");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(Output::Nothing),
    }
}
