//! The node proxy's admin API (plain HTTP, bound to `127.0.0.1:15000` in the
//! node's namespace by default, like ztunnel's):
//!
//! | path | answer |
//! |---|---|
//! | `GET /ready` | 200 once the node certificate, the first configuration and the restored pods are in place; 503 naming what is missing |
//! | `GET /config_dump` | the configuration in force (JSON): version and every resource |
//! | `GET /certs` | the node certificate and each workload certificate: SPIFFE ID, validity, seconds to expiry, renewal state |
//! | `GET /pods` | the enrolled pods served |
//! | `GET /connections` | HBONE connections open and recently closed: addresses, both SPIFFE IDs, TLS version, cipher, ALPN, streams |
//! | `GET /metrics` | Prometheus text |
//! | `GET /logging` | the log filter in force; `POST /logging?level=<filter>` changes it |

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hawser_api::proto::discovery::ResourceType;
use hawser_api::tls::Svid;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dataplane::{DataPlane, Stats};
use crate::discovery::NodeConfig;
use crate::identity::{CertManager, ControlPlaneClient};
use crate::inpod::InPod;

/// Changes the log filter at run time.
pub type SetLogFilter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Startup milestones `/ready` waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Pods persisted by the previous run were restored and the CNI socket
    /// is served.
    pub pods_restored: AtomicBool,
}

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// This node's name.
    pub node_name: String,
    /// The control plane connection (node certificate).
    pub control_plane: Arc<ControlPlaneClient>,
    /// The configuration in force.
    pub config: watch::Receiver<Arc<NodeConfig>>,
    /// Workload certificates.
    pub certs: CertManager,
    /// Enrolled pods.
    pub inpod: InPod,
    /// The data plane (connections, counters).
    pub dataplane: DataPlane,
    /// Startup milestones.
    pub readiness: Arc<Readiness>,
    /// The log filter in force.
    pub log_filter: Arc<parking_lot::Mutex<String>>,
    /// Changes it.
    pub set_log_filter: SetLogFilter,
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
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/ready") => ready(state),
        (&Method::GET, "/config_dump") => json_response(&config_dump(&state.config.borrow())),
        (&Method::GET, "/certs") => json_response(&certs(state)),
        (&Method::GET, "/pods") => json_response(&pods(state)),
        (&Method::GET, "/connections") => {
            let dump = hawser_api::admin::ConnectionsDump {
                connections: state
                    .dataplane
                    .connections()
                    .snapshot()
                    .iter()
                    .map(|c| c.to_admin())
                    .collect(),
            };
            json_response(&json!(dump))
        }
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(state)),
        (&Method::GET, "/logging") => text(
            StatusCode::OK,
            format!("{}\n", state.log_filter.lock().as_str()),
        ),
        (&Method::POST, "/logging") => {
            let level = req.uri().query().and_then(query_level);
            let Some(level) = level else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing ?level=<filter>, e.g. level=info,hawser_node_proxy=debug\n".into(),
                );
            };
            match (state.set_log_filter)(&level) {
                Ok(now) => {
                    tracing::info!(filter = %now, "log filter changed");
                    text(StatusCode::OK, format!("{now}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (_, "/ready" | "/config_dump" | "/certs" | "/pods" | "/connections" | "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready /config_dump /certs /pods /connections /metrics /logging\n"
                .into(),
        ),
    }
}

/// The `level` parameter of a query string, decoded.
fn query_level(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find_map(|(k, v)| (k == "level").then(|| v.into_owned()))
}

fn ready(state: &AdminState) -> Response<Full<Bytes>> {
    let mut missing = Vec::new();
    if state.control_plane.node_certificate().is_none() {
        missing.push("node certificate");
    }
    if state.config.borrow().version() == 0 {
        missing.push("first configuration from the control plane");
    }
    if !state.readiness.pods_restored.load(Ordering::Relaxed) {
        missing.push("restoring enrolled pods");
    }
    if missing.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", missing.join(", ")),
        )
    }
}

/// The configuration in force as JSON.
pub fn config_dump(config: &NodeConfig) -> Value {
    let resources: Vec<Value> = config
        .resources()
        .map(|r| {
            let (kind, name) = r.name.as_ref().map_or(("", ""), |n| {
                (
                    ResourceType::try_from(n.r#type).map_or("unknown", |t| t.as_str_name()),
                    n.name.as_str(),
                )
            });
            json!({ "type": kind, "name": name, "version": r.version, "resource": r.kind })
        })
        .collect();
    json!({ "version": config.version(), "resources": resources })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn svid_json(svid: &Svid) -> Value {
    let now = SystemTime::now();
    json!({
        "spiffe_id": svid.id().to_string(),
        "not_before_unix": unix(svid.not_before()),
        "not_after_unix": unix(svid.not_after()),
        "expires_in_s": svid.not_after().duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
        "chain_length": svid.chain().len(),
    })
}

fn certs(state: &AdminState) -> Value {
    let now = tokio::time::Instant::now();
    let workloads: Vec<Value> = state
        .certs
        .certificates()
        .into_iter()
        .map(|c| {
            json!({
                "pod": format!("{}/{}", c.workload.namespace, c.workload.pod_name),
                "uid": c.workload.pod_uid,
                "certificate": c.svid.as_ref().map(svid_json),
                "next_attempt_in_s": c.next_attempt.map(|t| t.saturating_duration_since(now).as_secs()),
                "last_error": c.last_error,
            })
        })
        .collect();
    json!({
        "node": {
            "name": state.node_name,
            "certificate": state.control_plane.node_certificate().as_ref().map(svid_json),
        },
        "workloads": workloads,
    })
}

fn pods(state: &AdminState) -> Value {
    let pods: Vec<Value> = state
        .inpod
        .pods()
        .iter()
        .map(|p| {
            json!({
                "namespace": p.workload.namespace,
                "name": p.workload.pod_name,
                "uid": p.workload.pod_uid,
                "container_id": p.container_id.as_str(),
                "ips": p.ips,
                "netns": { "dev": p.netns.id().dev, "ino": p.netns.id().ino },
                "draining": p.drain.is_draining(),
            })
        })
        .collect();
    json!({ "pods": pods })
}

fn metrics(state: &AdminState) -> String {
    let s: &Stats = &state.dataplane.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let config = state.config.borrow();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, series: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (labels, v) in series {
            if labels.is_empty() {
                out.push_str(&format!("{name} {v}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    };
    counter(
        "hawser_outbound_connections_total",
        "Outbound connections captured, by outcome.",
        &[
            ("outcome=\"http\"", load(&s.outbound_http)),
            ("outcome=\"hbone\"", load(&s.outbound_hbone)),
            ("outcome=\"plain\"", load(&s.outbound_plain)),
            ("outcome=\"no_endpoints\"", load(&s.outbound_no_endpoints)),
            ("outcome=\"denied\"", load(&s.outbound_denied)),
            ("outcome=\"failed\"", load(&s.outbound_failed)),
        ],
    );
    counter(
        "hawser_hbone_connections_total",
        "HBONE connections on pods' 15008, by outcome.",
        &[
            ("outcome=\"accepted\"", load(&s.hbone_accepted)),
            (
                "outcome=\"handshake_failed\"",
                load(&s.hbone_handshake_failed),
            ),
        ],
    );
    counter(
        "hawser_inbound_authorization_total",
        "Inbound streams and plaintext connections, by authorization decision.",
        &[
            ("decision=\"allow\"", load(&s.inbound.allowed)),
            ("decision=\"deny\"", load(&s.inbound.denied)),
        ],
    );
    let limits = state.dataplane.limits();
    counter(
        "hawser_connections_refused_total",
        "Connections reset on accept because the proxy holds its cap of connections, in all or from the source address.",
        &[
            ("limit=\"proxy\"", load(&limits.refused_total)),
            ("limit=\"source\"", load(&limits.refused_source)),
        ],
    );
    counter(
        "hawser_self_targets_refused_total",
        "Connections and HBONE CONNECTs to the node proxy's own ports in a pod, refused \
         (by the port check, or by the hop marker on a connection the proxy opened itself).",
        &[
            (
                "direction=\"outbound\",check=\"port\"",
                load(&s.outbound_self_targets),
            ),
            (
                "direction=\"inbound\",check=\"port\"",
                load(&s.inbound.self_targets),
            ),
            ("check=\"hop_marker\"", load(&s.loops_cut)),
        ],
    );
    counter(
        "hawser_inbound_http_requests_total",
        "Inbound HTTP requests on HTTP ports, by authorization decision.",
        &[
            ("decision=\"allow\"", load(&s.inbound.requests_allowed)),
            ("decision=\"deny\"", load(&s.inbound.requests_denied)),
        ],
    );
    let http = state.dataplane.http().metrics();
    let classes: Vec<(String, u64)> = (1..=5)
        .map(|c| (format!("class=\"{c}xx\""), http.responses(c)))
        .collect();
    let classes: Vec<(&str, u64)> = classes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        "hawser_outbound_http_responses_total",
        "Responses to local pods' HTTP requests through Service routes, by status class.",
        &classes,
    );
    counter(
        "hawser_outbound_http_upgrades_total",
        "Local pods' HTTP connections upgraded (WebSocket, …) through Service routes.",
        &[("", http.upgrades)],
    );
    counter(
        "hawser_outbound_http_retries_total",
        "Retries sent, and retries not sent because the retry budget was spent.",
        &[
            ("outcome=\"sent\"", http.retries),
            (
                "outcome=\"budget_exhausted\"",
                http.retries_denied_by_budget,
            ),
        ],
    );
    counter(
        "hawser_outbound_http_timeouts_total",
        "Requests answered 504 by a request or backend request timeout.",
        &[("", http.timeouts)],
    );
    counter(
        "hawser_outbound_http_mirrored_total",
        "Mirrored request copies sent.",
        &[("", http.mirrored)],
    );
    counter(
        "hawser_relayed_bytes_total",
        "Bytes relayed for local pods' outbound connections.",
        &[
            ("direction=\"sent\"", load(&s.bytes_out)),
            ("direction=\"received\"", load(&s.bytes_in)),
        ],
    );
    out.push_str(&format!(
        "# HELP hawser_config_version The configuration version in force.\n# TYPE hawser_config_version gauge\nhawser_config_version {}\n",
        config.version()
    ));
    out.push_str(&format!(
        "# HELP hawser_pods The enrolled pods served.\n# TYPE hawser_pods gauge\nhawser_pods {}\n",
        state.inpod.len()
    ));
    out.push_str(&format!(
        "# HELP hawser_hbone_open_connections HBONE connections open.\n# TYPE hawser_hbone_open_connections gauge\nhawser_hbone_open_connections {}\n",
        state.dataplane.connections().open()
    ));
    let caps = limits.caps();
    out.push_str(&format!(
        "# HELP hawser_connections_open Connections open on pods' listeners.\n# TYPE hawser_connections_open gauge\nhawser_connections_open {}\n\
         # HELP hawser_connection_cap The connection caps in force.\n# TYPE hawser_connection_cap gauge\n\
         hawser_connection_cap{{limit=\"proxy\"}} {}\nhawser_connection_cap{{limit=\"source\"}} {}\n",
        limits.open(),
        caps.total,
        caps.per_source
    ));
    out
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
