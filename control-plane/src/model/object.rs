//! The objects sources feed into the index, and their references.

use std::fmt;

use super::{AuthorizationPolicy, EndpointSlice, Namespace, ObjectKey, Pod, Route, Service};

/// Every kind of object the index accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Namespace` (cluster-scoped: its key has an empty namespace).
    Namespace,
    /// `v1/Pod`.
    Pod,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `gateway.networking.k8s.io/v1/HTTPRoute`.
    HttpRoute,
    /// `gateway.networking.k8s.io/v1/GRPCRoute`.
    GrpcRoute,
    /// `policy.hawser.dev/v1alpha1/AuthorizationPolicy`.
    AuthorizationPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        })
    }
}

/// Names one object: kind plus key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// Namespace (empty for a Namespace) and name.
    pub key: ObjectKey,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.key.name)
        } else {
            write!(f, "{} {}", self.kind, self.key)
        }
    }
}

/// One object, converted from its source into the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A namespace and its labels (mesh opt-in).
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
    /// A Service.
    Service(Service),
    /// An EndpointSlice of a Service.
    EndpointSlice(EndpointSlice),
    /// An HTTPRoute or GRPCRoute.
    Route(Route),
    /// A Hawser AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
}

impl Object {
    /// The object's reference.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, key) = match self {
            Object::Namespace(ns) => (Kind::Namespace, ObjectKey::new("", ns.name.clone())),
            Object::Pod(p) => (Kind::Pod, p.meta.key.clone()),
            Object::Service(s) => (Kind::Service, s.meta.key.clone()),
            Object::EndpointSlice(s) => (Kind::EndpointSlice, s.meta.key.clone()),
            Object::Route(r) => (r.kind.object_kind(), r.meta.key.clone()),
            Object::AuthorizationPolicy(p) => (Kind::AuthorizationPolicy, p.key.clone()),
        };
        ObjectRef { kind, key }
    }
}
