//! `hawser status`: what the control plane's admin API reports (route status
//! per Service parent, AuthorizationPolicy status, invalid manifests, node
//! streams), as text or JSON.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// What to show.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Topic {
    /// HTTPRoute/GRPCRoute status per Service parent (Accepted, ResolvedRefs).
    Routes,
    /// AuthorizationPolicy status: HTTP fields (methods, paths) that cannot
    /// be enforced on the ports they apply to.
    Policies,
    /// Manifest documents that are invalid or ignored.
    Manifests,
    /// Node proxies' discovery streams (versions sent and acknowledged, NACKs).
    Nodes,
}

/// The control plane's admin API when `--admin` is not given.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15014);

/// Fetches `topic` from the admin API at `admin` and prints it. Without
/// `admin`, the default address is tried first, then the control plane of a
/// lab that is up on this machine (its admin API listens inside the lab's
/// underlay namespace, out of reach from the host's).
pub fn show(
    admin: Option<SocketAddr>,
    lab: &hawser_tests::lab::LabConfig,
    topic: Topic,
    json: bool,
) -> anyhow::Result<()> {
    let path = match topic {
        Topic::Routes => "/status/routes",
        Topic::Policies => "/status/policies",
        Topic::Manifests => "/status/manifests",
        Topic::Nodes => "/status/nodes",
    };
    // Nodes are JSON only: it is a table of numbers either way.
    let query = if json || matches!(topic, Topic::Nodes) {
        ""
    } else {
        "?format=text"
    };
    let path_and_query = format!("{path}{query}");
    let runtime = tokio::runtime::Runtime::new()?;
    let body = match admin {
        Some(addr) => runtime.block_on(get(addr, &path_and_query))?,
        None => match runtime.block_on(get(DEFAULT_ADMIN, &path_and_query)) {
            Ok(body) => body,
            Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
                from_lab(lab, &path_and_query)
                    .map_err(|lab_error| anyhow::anyhow!("{e}; {lab_error}"))?
            }
            Err(e) => return Err(e),
        },
    };
    out!("{body}")?;
    if !body.ends_with('\n') {
        outln!()?;
    }
    Ok(())
}

/// Nothing listens at the admin address.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the control plane's admin API at {0} (is the control plane running? --admin ADDR)"
)]
struct Unreachable(SocketAddr);

/// `GET path_and_query` on the admin API of the lab's control plane.
fn from_lab(config: &hawser_tests::lab::LabConfig, path_and_query: &str) -> Result<String, String> {
    let lab = hawser_tests::lab::Lab::load(config).map_err(|e| e.to_string())?;
    match lab.admin_get(path_and_query) {
        Ok((200, body)) => Ok(body),
        Ok((code, body)) => Err(format!(
            "the lab's control plane answered {code}: {}",
            body.trim()
        )),
        Err(e) => Err(format!("the lab's control plane: {e}")),
    }
}

async fn get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| Unreachable(addr))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP handshake with the admin API")?;
    tokio::spawn(conn);
    let req = http::Request::get(path_and_query)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("admin API request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("admin API response")?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("admin API answered {status}: {}", body.trim());
    }
    Ok(body)
}
