//! The CNI operations. Each takes the validated environment and
//! configuration and returns what goes to stdout; failures are [`CniError`]s.
//!
//! - [`add`]: ask the proxy, write the rules, hand off the netns, print
//!   `prevResult` unchanged.
//! - [`del`]: remove rules, tell the proxy, drop state; idempotent.
//! - [`check`]: the rules are still exactly what ADD wrote.
//! - [`status`]: can ADD be served (is the proxy up, who depends on it)?
//! - [`gc`]: tear down attachments the runtime no longer lists.
//! - VERSION is answered in [`crate::run`] before any configuration is parsed.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use std::path::Path;

use crate::cni::error::netns_error;
use crate::cni::{CniEnv, CniError, NetConf};
use crate::netns::{Netns, NetnsError};
use crate::nft::{Nft, delete_ruleset};
use crate::proxy_client::ProxyEndpoint;
use crate::state::{AttachmentKey, AttachmentState, StateStore};

/// What a successful command prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// A JSON document.
    Print(String),
    /// Nothing (DEL, CHECK, STATUS, GC).
    Nothing,
}

/// One plugin invocation.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The `CNI_*` variables.
    pub env: &'a CniEnv,
    /// stdin.
    pub conf: &'a NetConf,
}

impl Invocation<'_> {
    /// The attachment's state key (ADD, DEL, CHECK only).
    pub fn key(&self) -> Option<AttachmentKey> {
        Some(AttachmentKey {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone()?,
            ifname: self.env.ifname.clone()?,
        })
    }

    /// The node proxy.
    pub fn proxy(&self) -> ProxyEndpoint<'_> {
        ProxyEndpoint {
            socket: &self.conf.plugin.socket_path,
            timeout: self.conf.plugin.proxy_timeout,
            run_dir: &self.conf.plugin.run_dir,
        }
    }

    /// The state store.
    pub fn store(&self) -> StateStore {
        StateStore::new(&self.conf.plugin.run_dir)
    }

    /// The `nft` binary.
    pub fn nft(&self) -> Nft {
        Nft::locate(self.conf.plugin.nft_path.as_deref())
    }

    /// Undoes an attachment: deletes the table if the netns still exists,
    /// tells the proxy (best effort: it also learns of deleted pods from the
    /// control plane),
    /// then drops the record. Safe to repeat.
    pub fn teardown(
        &self,
        key: &AttachmentKey,
        state: &AttachmentState,
        netns_path: Option<&Path>,
    ) -> Result<(), CniError> {
        // The node proxy first: it stops accepting and starts draining the
        // pod's connections while the redirection is still in place, so
        // connections already redirected finish through it.
        if let Err(e) = self.proxy().notify_del(Some(&state.pod), key) {
            tracing::warn!(error = %e, "could not tell the node proxy; it drops the pod once the control plane reports it gone");
        }
        let path = netns_path.unwrap_or(&state.netns_path);
        match Netns::open(path) {
            Ok(ns) => {
                let nft = self.nft();
                ns.run(|| nft.apply(&delete_ruleset(), "deleting the hawser table"))
                    .map_err(|e| netns_error(e, "CNI_NETNS"))??;
                tracing::info!(netns = %path.display(), "removed redirection rules");
            }
            Err(NetnsError::NotFound(_)) => {
                tracing::info!(netns = %path.display(), "netns already gone, rules went with it");
            }
            Err(e) => {
                // Not a netns we may touch (or not one at all): nothing of
                // ours can be in it.
                tracing::warn!(netns = %path.display(), error = %e, "not touching the netns");
            }
        }
        self.store().remove(key)?;
        Ok(())
    }
}
