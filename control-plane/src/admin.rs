//! The control plane's admin API (plain HTTP, bound to localhost by default):
//! what an operator asks when running without a cluster, where route status
//! cannot be written back into Kubernetes objects.
//!
//! | path | answer |
//! |---|---|
//! | `/ready` | 200 once serving |
//! | `/status/routes` | every HTTPRoute/GRPCRoute's status per Service parent (JSON; `?format=text` for the table `hawser status routes` prints) |
//! | `/status/policies` | every AuthorizationPolicy's `Accepted` condition and the HTTP fields it names that cannot be enforced on which ports (JSON; `?format=text` for `hawser status policies`) |
//! | `/status/manifests` | invalid and ignored manifest documents of the last scan |
//! | `/status/nodes` | each node's discovery stream: version sent, acknowledged, last NACK |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::DiscoveryService;
use crate::index::SharedIndex;
use crate::sources::manifests::ManifestReport;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// The config index.
    pub index: SharedIndex,
    /// The discovery server (node streams).
    pub discovery: DiscoveryService,
    /// The manifest source's last report.
    pub manifests: watch::Receiver<Arc<ManifestReport>>,
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection failed");
            }
        });
    }
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    let as_text = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
    match req.uri().path() {
        "/ready" => text(StatusCode::OK, "ready\n".into()),
        "/status/routes" => {
            let index = state.index.read();
            let statuses = index.route_statuses();
            if as_text {
                let body: String = statuses.iter().map(|s| s.to_string()).collect();
                text(StatusCode::OK, body)
            } else {
                json_response(&json!({ "routes": statuses }))
            }
        }
        "/status/policies" => {
            let statuses = state.index.read().policy_statuses();
            if as_text {
                let mut body: String = statuses.iter().map(|s| s.to_string()).collect();
                if body.is_empty() {
                    body.push_str("no AuthorizationPolicy\n");
                }
                text(StatusCode::OK, body)
            } else {
                json_response(&json!({ "policies": statuses }))
            }
        }
        "/status/manifests" => {
            let report = state.manifests.borrow().clone();
            let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
            if as_text {
                let mut body = String::new();
                if let Some(e) = &report.dir_error {
                    body.push_str(&format!("directory: {e}\n"));
                }
                for e in &errors {
                    body.push_str(&format!("invalid: {e}\n"));
                }
                for i in &report.ignored {
                    body.push_str(&format!("ignored: {i}\n"));
                }
                if body.is_empty() {
                    body.push_str("every manifest document is valid\n");
                }
                text(StatusCode::OK, body)
            } else {
                json_response(&json!({
                    "errors": errors,
                    "ignored": report.ignored,
                    "dirError": report.dir_error,
                }))
            }
        }
        "/status/nodes" => {
            let nodes: Vec<_> = state
                .discovery
                .node_statuses()
                .into_iter()
                .map(|(node, s)| {
                    json!({
                        "node": node,
                        "connected": s.connected,
                        "sentVersion": s.sent,
                        "ackedVersion": s.acked,
                        "lastNack": s.last_nack.map(|(v, e)| json!({"version": v, "error": e})),
                        "updatedUnix": s.updated.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    })
                })
                .collect();
            json_response(&json!({ "version": state.index.read().version(), "nodes": nodes }))
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {other}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
