//! One manifest file into objects: multi-document YAML, each document read
//! into its Kubernetes type (k8s-openapi, gateway-api, our CRD) and then
//! converted into the model. Every problem names the file, the document
//! number (1-based), the field and the reason.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::document;

use crate::convert::{self, FieldError};
use crate::model::{Kind, Object, ObjectKey, ObjectRef};

/// A document that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// The document within the file, from 1.
    pub document: usize,
    /// The object, when the document says which it is.
    pub object: Option<ObjectRef>,
    /// Path of the offending field (empty: the document as a whole).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ManifestError {}

/// The outcome of reading one file.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Valid objects with their document numbers.
    pub objects: Vec<(usize, Object)>,
    /// Invalid documents.
    pub errors: Vec<ManifestError>,
    /// Objects whose documents are invalid (their last valid version stays).
    pub invalid: Vec<ObjectRef>,
    /// A document could not be attributed to an object (YAML syntax error,
    /// no kind or name): no object of this file may be removed on its account.
    pub unattributed_errors: bool,
    /// Documents of kinds the mesh does not use (e.g. Deployments), as `kind name`.
    pub ignored: Vec<String>,
}

/// Reads `contents` of `file`.
pub fn parse(file: &Path, contents: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (i, value) in document::documents(contents).into_iter().enumerate() {
        let document = i + 1;
        let value = match value {
            Ok(v) if v.is_null() => continue,
            Ok(v) => v,
            Err(e) => {
                out.errors.push(ManifestError {
                    file: file.to_path_buf(),
                    document,
                    object: None,
                    field: String::new(),
                    reason: e.to_string(),
                });
                out.unattributed_errors = true;
                continue;
            }
        };
        match document_object(value) {
            Ok(Some(object)) => out.objects.push((document, object)),
            Ok(None) => {}
            Err(DocError::Ignored(what)) => out.ignored.push(what),
            Err(DocError::Invalid { object, errors }) => {
                match &object {
                    Some(o) => out.invalid.push(o.clone()),
                    None => out.unattributed_errors = true,
                }
                out.errors.extend(errors.into_iter().map(|e| ManifestError {
                    file: file.to_path_buf(),
                    document,
                    object: object.clone(),
                    field: e.field,
                    reason: e.reason,
                }));
            }
        }
    }
    out
}

enum DocError {
    Ignored(String),
    Invalid {
        object: Option<ObjectRef>,
        errors: Vec<FieldError>,
    },
}

fn invalid(object: Option<ObjectRef>, field: &str, reason: impl Into<String>) -> DocError {
    DocError::Invalid {
        object,
        errors: vec![FieldError::new(field, reason)],
    }
}

fn document_object(mut value: serde_json::Value) -> Result<Option<Object>, DocError> {
    let Some(map) = value.as_object_mut() else {
        return Err(invalid(
            None,
            "",
            "a manifest must be a mapping with apiVersion and kind",
        ));
    };
    let text = |map: &serde_json::Map<String, serde_json::Value>, k: &str| {
        map.get(k).and_then(|v| v.as_str()).map(str::to_string)
    };
    let api_version = text(map, "apiVersion");
    let kind_name = text(map, "kind");
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(invalid(None, "", "apiVersion and kind are required"));
    };
    // kubectl semantics: a kind lists are unpacked by their items.
    if kind_name.ends_with("List") && map.contains_key("items") {
        return Err(invalid(
            None,
            "kind",
            format!("{kind_name}: List documents are not supported; write one document per object"),
        ));
    }
    let kind = match (api_version.as_str(), kind_name.as_str()) {
        ("v1", "Namespace") => Kind::Namespace,
        ("v1", "Pod") => Kind::Pod,
        ("v1", "Service") => Kind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
            Kind::HttpRoute
        }
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1alpha2", "GRPCRoute") => {
            Kind::GrpcRoute
        }
        ("policy.hawser.dev/v1alpha1", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
        (
            _,
            "Namespace"
            | "Pod"
            | "Service"
            | "EndpointSlice"
            | "HTTPRoute"
            | "GRPCRoute"
            | "AuthorizationPolicy",
        ) => {
            return Err(invalid(
                None,
                "apiVersion",
                format!("{api_version:?} is not a supported version of {kind_name}"),
            ));
        }
        _ => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("<unnamed>");
            return Err(DocError::Ignored(format!(
                "{api_version} {kind_name} {name}"
            )));
        }
    };
    // Identify the object before reading it, so an invalid document keeps
    // the object's last valid version in force.
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(invalid(None, "metadata", "must be a mapping"));
    };
    let Some(name) = metadata
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
    else {
        return Err(invalid(None, "metadata.name", "is required"));
    };
    let namespace = if kind == Kind::Namespace {
        String::new()
    } else {
        // kubectl semantics: no namespace means `default`.
        let ns = metadata
            .entry("namespace")
            .or_insert_with(|| serde_json::Value::String("default".into()));
        ns.as_str().unwrap_or_default().to_string()
    };
    let object = ObjectRef {
        kind,
        key: ObjectKey::new(namespace, name),
    };
    let converted = match kind {
        Kind::Namespace => read(value, convert::namespace).map(Object::Namespace),
        Kind::Pod => read(value, convert::pod).map(Object::Pod),
        Kind::Service => read(value, convert::service).map(Object::Service),
        Kind::EndpointSlice => read(value, convert::endpoint_slice).map(Object::EndpointSlice),
        Kind::HttpRoute => read(value, convert::http_route).map(Object::Route),
        Kind::GrpcRoute => read(value, convert::grpc_route).map(Object::Route),
        Kind::AuthorizationPolicy => {
            read(value, crate::authz::to_model).map(Object::AuthorizationPolicy)
        }
    };
    match converted {
        Ok(o) => Ok(Some(o)),
        Err(errors) => Err(DocError::Invalid {
            object: Some(object),
            errors,
        }),
    }
}

/// Deserializes into the Kubernetes type `T` (errors name the field path),
/// refuses fields `T` does not have (the API server's strict field
/// validation), then converts.
fn read<T: DeserializeOwned + Serialize, M>(
    value: serde_json::Value,
    convert: impl Fn(&T) -> Result<M, Vec<FieldError>>,
) -> Result<M, Vec<FieldError>> {
    let typed = typed::<T>(&value)?;
    convert(&typed)
}

/// `value` as the Kubernetes type `T`, refused (every field named) when it
/// has a field of the wrong type or one `T` does not have.
pub fn typed<T: DeserializeOwned + Serialize>(
    value: &serde_json::Value,
) -> Result<T, Vec<FieldError>> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![FieldError::new(field, e.into_inner().to_string())]
    })?;
    let known = serde_json::to_value(&typed)
        .map_err(|e| vec![FieldError::new("", format!("cannot be written back: {e}"))])?;
    let unknown = document::unknown_fields(value, &known);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(unknown
            .into_iter()
            .map(|field| FieldError::new(field, "unknown field"))
            .collect())
    }
}
