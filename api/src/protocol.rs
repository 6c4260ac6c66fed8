//! Which Service ports carry HTTP: the node proxies parse those per request
//! (routes, L7 authorization) and the control plane reports policy fields
//! that cannot be enforced on the others. Both sides must agree, so the rule
//! lives here.

/// Whether a Service port carries HTTP: `appProtocol` `http`,
/// `kubernetes.io/http`, `kubernetes.io/h2c`, `h2c`, `http2`, `grpc` or
/// `kubernetes.io/ws` (case-insensitive); or, when `appProtocol` is unset or
/// empty, a port name starting with `http` or `grpc` (Istio's convention).
/// An explicit non-HTTP `appProtocol` wins over the name.
pub fn is_http(app_protocol: Option<&str>, port_name: &str) -> bool {
    match app_protocol.filter(|p| !p.is_empty()) {
        Some(p) => matches!(
            p.to_ascii_lowercase().as_str(),
            "http"
                | "kubernetes.io/http"
                | "kubernetes.io/h2c"
                | "h2c"
                | "http2"
                | "grpc"
                | "kubernetes.io/ws"
        ),
        None => {
            let name = port_name.to_ascii_lowercase();
            name.starts_with("http") || name.starts_with("grpc")
        }
    }
}

/// Whether an HTTP Service port speaks HTTP/2 with prior knowledge:
/// `appProtocol` `kubernetes.io/h2c`, `h2c`, `http2` or `grpc`
/// (case-insensitive); or, when `appProtocol` is unset or empty, a port name
/// starting with `grpc`.
pub fn is_h2(app_protocol: Option<&str>, port_name: &str) -> bool {
    match app_protocol.filter(|p| !p.is_empty()) {
        Some(p) => matches!(
            p.to_ascii_lowercase().as_str(),
            "kubernetes.io/h2c" | "h2c" | "http2" | "grpc"
        ),
        None => port_name.to_ascii_lowercase().starts_with("grpc"),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_h2, is_http};

    #[test]
    fn h2_by_app_protocol_then_by_grpc_name() {
        assert!(is_h2(Some("GRPC"), "http"));
        assert!(is_h2(Some("kubernetes.io/h2c"), ""));
        assert!(is_h2(None, "grpc-api"));
        assert!(is_h2(Some(""), "grpc"));
        assert!(
            !is_h2(Some("http"), "grpc-api"),
            "explicit appProtocol wins"
        );
        assert!(!is_h2(None, "http"));
    }

    #[test]
    fn app_protocol_wins_then_the_port_name() {
        assert!(is_http(Some("kubernetes.io/h2c"), "tcp"));
        assert!(is_http(Some("GRPC"), ""));
        assert!(
            !is_http(Some("tcp"), "http-web"),
            "explicit appProtocol wins"
        );
        assert!(is_http(Some(""), "http-web"), "empty means unset");
        assert!(is_http(None, "grpc-api"));
        assert!(is_http(None, "HTTP"));
        assert!(!is_http(None, "tcp-echo"));
        assert!(!is_http(None, ""));
    }
}
