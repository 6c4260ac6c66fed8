//! The one place where the engine's failures become wire responses: an HTTP
//! status with a short text body, or for gRPC requests a trailers-only
//! response carrying the matching `grpc-status`.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::body::{HttpBody, full};
use super::pool::UpstreamError;
use super::routes::ServiceKey;

/// Why the engine answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No match entry selected a rule.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The selected rule has no backend with a weight above 0.
    #[error("rule {rule} has no backend with a weight above 0")]
    NoBackends {
        /// The rule (`route#index`).
        rule: String,
    },
    /// The chosen backend does not resolve.
    #[error("invalid backend: {0}")]
    InvalidBackend(String),
    /// The chosen backend names a Service port this node does not know.
    #[error("backend service {service} port {port} is unknown")]
    UnknownBackend {
        /// The Service.
        service: ServiceKey,
        /// Its port.
        port: u16,
    },
    /// The Service port has no ready endpoint.
    #[error("service {service} port {port} has no ready endpoints")]
    NoEndpoints {
        /// The Service.
        service: ServiceKey,
        /// Its port.
        port: u16,
    },
    /// `timeouts.request` elapsed.
    #[error("request timeout of {0:?} elapsed")]
    RequestTimeout(Duration),
    /// `timeouts.backendRequest` elapsed on the last attempt.
    #[error("backend request timeout of {0:?} elapsed")]
    BackendTimeout(Duration),
    /// The upstream connection failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The request cannot be forwarded as received.
    #[error("invalid request: {0}")]
    BadRequest(String),
}

impl HttpError {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::NoBackends { .. } | Self::InvalidBackend(_) | Self::UnknownBackend { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // Refused, reset or closed before a response: unavailable, as
            // Envoy answers (and the Gateway API's retry tests expect); a
            // response that is not HTTP is a bad gateway.
            Self::Upstream(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::RequestTimeout(_) | Self::BackendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status answered to gRPC requests.
    pub fn grpc_status(&self) -> u32 {
        match self {
            Self::NoRoute { .. } => 12,
            Self::NoBackends { .. } | Self::InvalidBackend(_) | Self::UnknownBackend { .. } => 13,
            Self::NoEndpoints { .. } | Self::Upstream(_) => 14,
            Self::RequestTimeout(_) | Self::BackendTimeout(_) => 4,
            Self::BadRequest(_) => 3,
        }
    }
}

/// Percent-encodes a `grpc-message` (gRPC over HTTP/2 spec).
fn grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The response for `err`: for gRPC requests a trailers-only `200` with
/// `grpc-status`, otherwise its HTTP status with the message as body.
pub fn error_response(err: &HttpError, grpc: bool) -> Response<HttpBody> {
    if grpc {
        let mut resp = Response::new(super::body::empty());
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(err.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&err.to_string())) {
            headers.insert("grpc-message", v);
        }
        return resp;
    }
    let mut resp = Response::new(full(format!("{err}\n")));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A redirect answered by a `RequestRedirect` filter.
pub fn redirect_response(status: StatusCode, location: &str) -> Response<HttpBody> {
    let mut resp = Response::new(super::body::empty());
    *resp.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(http::header::LOCATION, v);
            resp
        }
        Err(_) => error_response(
            &HttpError::BadRequest(format!(
                "redirect location {location:?} is not a valid header"
            )),
            false,
        ),
    }
}
