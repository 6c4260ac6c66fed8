//! DEL: undo ADD. Idempotent by construction: without a record there is
//! nothing of ours to undo (the record is written before any rule), so DEL
//! after DEL, DEL without ADD and DEL of a pod that was never enrolled all
//! succeed without touching anything; a netns that is already gone took its
//! rules with it.

use super::{Invocation, Output};
use crate::cni::{CniError, ErrorCode};

/// Runs DEL.
pub fn run(inv: &Invocation<'_>) -> Result<Output, CniError> {
    let key = inv.key().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_CONTAINERID and CNI_IFNAME are required for DEL",
            "the container runtime must set the CNI_* variables",
        )
    })?;
    match inv.store().load(&key)? {
        None => {
            tracing::info!("no redirection recorded for this attachment; nothing to undo");
            Ok(Output::Nothing)
        }
        Some(state) => {
            inv.teardown(&key, &state, inv.env.netns.as_deref())?;
            tracing::info!("attachment removed");
            Ok(Output::Nothing)
        }
    }
}
