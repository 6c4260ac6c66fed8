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

/// Fetches `topic` from the admin API at `admin` and prints it.
pub async fn show(admin: SocketAddr, topic: Topic, json: bool) -> anyhow::Result<()> {
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
    let body = get(admin, &format!("{path}{query}")).await?;
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    Ok(())
}

async fn get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| {
        format!("cannot reach the control plane's admin API at {addr} (is the control plane running? --admin)")
    })?;
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
