//! From Kubernetes types (k8s-openapi, gateway-api, our CRD) to the model.
//!
//! This is the edge every source goes through: the manifest directory today,
//! the Kubernetes API later. Each conversion checks what the API server's
//! schema and CEL rules would have rejected, plus what the mesh cannot
//! represent, and reports every problem as a [`FieldError`].

mod core;
mod error;
mod filters;
mod routes;

pub use self::core::{endpoint_slice, namespace, pod, service};
pub use error::FieldError;
pub use routes::{grpc_route, http_route};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::Meta;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Converts namespaced object metadata; name and namespace are required.
fn meta(m: &ObjectMeta, errors: &mut Vec<FieldError>) -> Meta {
    let name = m.name.clone().unwrap_or_default();
    let namespace = m.namespace.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "is required"));
    }
    if namespace.is_empty() {
        errors.push(FieldError::new("metadata.namespace", "is required"));
    }
    Meta {
        key: crate::model::ObjectKey::new(namespace, name),
        uid: m.uid.clone().unwrap_or_default(),
        generation: m.generation.unwrap_or(0),
        created: m
            .creation_timestamp
            .as_ref()
            .map(|t| std::time::SystemTime::from(t.0)),
        labels: m.labels.clone().unwrap_or_default(),
    }
}

fn port(value: i32, field: String, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errors.push(FieldError::new(
                field,
                format!("{value} is not a port (1-65535)"),
            ));
            None
        }
    }
}

fn done<T>(value: T, errors: Vec<FieldError>) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}
