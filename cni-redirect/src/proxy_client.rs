//! Talking to the node proxy (protocol in `api/proto/cni.proto`), and what to
//! do when it cannot be reached.
//!
//! Fail closed for enrolled namespaces, open for the rest: when the proxy is
//! unreachable, the plugin reads the proxy's last persisted list of enrolled
//! namespaces. A pod in a listed namespace fails with "try again later" (code
//! 11, kubelet retries the sandbox) rather than starting outside the mesh; a
//! pod elsewhere passes untouched. An unreadable list counts as "enrolled".

use std::path::Path;
use std::time::Duration;

use hawser_api::cni::client::{ClientError, CniClient};
use hawser_api::cni::enrolled::EnrolledNamespaces;
use hawser_api::cni::proto;
use hawser_api::cni::redirect::RedirectSpec;

use crate::cni::{CniError, ErrorCode, PodIdentity};
use crate::state::AttachmentKey;

/// The answer to "should this pod be redirected?".
#[derive(Debug)]
pub enum AddDecision {
    /// Leave the pod alone.
    PassThrough {
        /// Why, for the log.
        reason: String,
    },
    /// Redirect it; `client` is the open conversation for the handoff.
    Redirect {
        /// The connection the handoff must use.
        client: CniClient,
        /// How to redirect.
        spec: RedirectSpec,
    },
}

/// Where the proxy is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct ProxyEndpoint<'a> {
    /// The socket.
    pub socket: &'a Path,
    /// Bound on each exchange.
    pub timeout: Duration,
    /// The run directory holding the enrolled-namespaces file.
    pub run_dir: &'a Path,
}

fn pod_ref(pod: &PodIdentity) -> proto::PodRef {
    proto::PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone().unwrap_or_default(),
    }
}

fn attachment(key: &AttachmentKey) -> proto::Attachment {
    proto::Attachment {
        container_id: key.container_id.to_string(),
        ifname: key.ifname.to_string(),
        network_name: key.network.clone(),
    }
}

fn protocol_error(e: &ClientError) -> CniError {
    CniError::new(
        ErrorCode::ProxyProtocol,
        format!("node proxy conversation failed: {e}"),
        "the node proxy and hawser-cni disagree on the protocol; make sure both come from \
         the same Hawser release (the installer copies the plugin from the node proxy's image)",
    )
}

impl ProxyEndpoint<'_> {
    /// Asks the proxy about a new pod (with the fail-closed fallback).
    pub fn ask_add(
        &self,
        pod: &PodIdentity,
        key: &AttachmentKey,
        netns_path: &Path,
        pod_ips: &[std::net::IpAddr],
    ) -> Result<AddDecision, CniError> {
        let req = proto::AddPod {
            pod: Some(pod_ref(pod)),
            attachment: Some(attachment(key)),
            netns_path: netns_path.display().to_string(),
            pod_ips: pod_ips.iter().map(ToString::to_string).collect(),
        };
        let answer = CniClient::connect(self.socket, self.timeout)
            .and_then(|mut c| c.add(req).map(|reply| (c, reply)));
        let (client, reply) = match answer {
            Ok(ok) => ok,
            Err(e) if e.is_unavailable() => return self.fallback(pod, &e),
            Err(e) => return Err(protocol_error(&e)),
        };
        if !reply.enrolled {
            return Ok(AddDecision::PassThrough {
                reason: if reply.reason.is_empty() {
                    "node proxy says the pod is not enrolled".into()
                } else {
                    format!("node proxy says the pod is not enrolled: {}", reply.reason)
                },
            });
        }
        let spec = RedirectSpec::try_from(&reply.redirection.unwrap_or_default()).map_err(|e| {
            CniError::new(
                ErrorCode::ProxyProtocol,
                format!("node proxy sent an unusable redirection for {pod}: {e}"),
                "check the pod's hawser.dev/exclude-* annotations and the node proxy's log",
            )
        })?;
        Ok(AddDecision::Redirect { client, spec })
    }

    fn fallback(&self, pod: &PodIdentity, err: &ClientError) -> Result<AddDecision, CniError> {
        let list_path = EnrolledNamespaces::path_in(self.run_dir);
        let retry = |why: String| {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!("node proxy unavailable ({err}) and {why}"),
                "the pod is held back until the node proxy on this node is running again \
                 (kubelet retries); check the hawser-node-proxy pod on this node",
            )
        };
        match EnrolledNamespaces::load(&list_path) {
            Ok(Some(list)) if list.contains(&pod.namespace) => Err(retry(format!(
                "namespace {} is enrolled per {}",
                pod.namespace,
                list_path.display()
            ))),
            Ok(_) => Ok(AddDecision::PassThrough {
                reason: format!(
                    "node proxy unavailable ({err}); namespace {} is not in the enrolled list {}",
                    pod.namespace,
                    list_path.display()
                ),
            }),
            Err(e) => Err(retry(format!(
                "the enrolled-namespaces list cannot be read ({e})"
            ))),
        }
    }

    /// Hands the netns to the proxy on the ADD conversation.
    pub fn handoff(
        client: &mut CniClient,
        pod: &PodIdentity,
        key: &AttachmentKey,
        pod_ips: &[std::net::IpAddr],
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), CniError> {
        let req = proto::NetnsHandoff {
            pod: Some(pod_ref(pod)),
            attachment: Some(attachment(key)),
            pod_ips: pod_ips.iter().map(ToString::to_string).collect(),
        };
        match client.handoff(req, netns) {
            Ok(r) if r.accepted => Ok(()),
            Ok(r) => Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!("node proxy refused the netns of {pod}: {}", r.message),
                "the redirection rules were removed again; kubelet retries the sandbox",
            )),
            Err(e) if e.is_unavailable() => Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!("node proxy went away during the netns handoff of {pod}: {e}"),
                "the redirection rules were removed again; kubelet retries once the node proxy is back",
            )),
            Err(e) => Err(protocol_error(&e)),
        }
    }

    /// Tells the proxy an attachment is gone.
    pub fn notify_del(
        &self,
        pod: Option<&PodIdentity>,
        key: &AttachmentKey,
    ) -> Result<(), ClientError> {
        let req = proto::DelPod {
            pod: pod.map(pod_ref),
            attachment: Some(attachment(key)),
        };
        CniClient::connect(self.socket, self.timeout)?.del(req)
    }

    /// Checks the proxy answers.
    pub fn ping(&self) -> Result<proto::Pong, ClientError> {
        CniClient::connect(self.socket, self.timeout)?.ping()
    }
}
